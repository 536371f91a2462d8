"""Rewrites of an exported ONNX graph for TensorRT: FP16 network body, INT8 Q/DQ nodes.

The *body* is the convolutional network (backbone, RPN and second-stage convs and
dense layers with their ReLU, pooling and shortcut Adds); proposal decoding, RoI
cropping, NMS and box arithmetic stay in FP32. Explicit quantization follows
TensorRT's Q/DQ rules: symmetric INT8 (zero point 0), per-tensor activations
(QuantizeLinear -> DequantizeLinear), per-output-channel weights stored as INT8
constants behind a DequantizeLinear.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from frcnn_tf.export.calibration import INT8_MAX

BODY_OPS = {"Conv", "Relu", "MaxPool", "GlobalAveragePool", "AveragePool", "BatchNormalization"}
WEIGHTED_OPS = {"MatMul", "Gemm"}  # in the body when input 1 is a weight (the RoI crop's MatMuls are not)
JOIN_OPS = {"Add", "Squeeze"}  # in the body when every data input comes from the body
DATA_INPUTS = {"Squeeze": 1}  # ops whose trailing inputs are not float data (Squeeze's axes)
WEIGHT_AXIS = {"Conv": 0, "MatMul": 1}  # output-channel axis of the weight (input 1)
SHAPE_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity"}  # move values, compute nothing


def _producers(graph):
    return {output: node for node in graph.node for output in node.output}


def _consumers(graph):
    """{tensor: [nodes reading it]}; a subgraph's reads of outer tensors count as its node's."""
    found = {}
    for node in graph.node:
        for name in set(node.input) | _subgraph_reads(node):
            found.setdefault(name, []).append(node)
    return found


def _subgraph_reads(node):
    names = set()
    for attribute in node.attribute:
        for inner in attribute.g.node:
            names |= set(inner.input) | _subgraph_reads(inner)
    return names


def _data_inputs(node):
    return list(node.input[:DATA_INPUTS.get(node.op_type, len(node.input))])


def body_nodes(graph):
    """Names of the nodes of the convolutional body (graph order is topological)."""
    producers, initializers, body = _producers(graph), {i.name for i in graph.initializer}, set()
    for node in graph.node:
        if node.op_type in BODY_OPS or (node.op_type in WEIGHTED_OPS and node.input[1] in initializers):
            body.add(node.name)
        elif node.op_type in JOIN_OPS:
            sources = [producers.get(n) for n in _data_inputs(node) if n not in initializers]
            if sources and all(s is not None and s.name in body for s in sources):
                body.add(node.name)
    return body


def body_tensors(graph):
    """Float activation tensors entering or leaving body nodes (what INT8 calibration measures)."""
    body, initializers, names = body_nodes(graph), {i.name for i in graph.initializer}, []
    for node in graph.node:
        if node.name in body:
            names += [n for n in _data_inputs(node) + list(node.output) if n and n not in initializers]
    return list(dict.fromkeys(names))


def _finish(model, nodes):
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    del model.graph.value_info[:]  # types changed; shape inference rebuilds what it can
    return model  # run_export checks the final graph once


def to_float16(model):
    """Copy of `model` whose body computes in FP16 (weights stored as FP16), with Casts at its
    borders; graph inputs and outputs stay FP32."""
    model = _copy(model)
    graph = model.graph
    body = body_nodes(graph)
    initializers = {i.name: i for i in graph.initializer}
    consumers, graph_outputs = _consumers(graph), {o.name for o in graph.output}
    producers = _producers(graph)
    half_names, nodes = {}, []

    def half_input(name):
        if name not in half_names:
            half_names[name] = f"{name}__fp16"
            if name in initializers:
                value = numpy_helper.to_array(initializers[name])
                graph.initializer.append(numpy_helper.from_array(value.astype(np.float16), half_names[name]))
            else:
                nodes.append(helper.make_node("Cast", [name], [half_names[name]], name=f"{name}__to_fp16",
                                              to=TensorProto.FLOAT16))
        return half_names[name]

    for node in graph.node:
        if node.name not in body:
            nodes.append(node)
            continue
        data = len(_data_inputs(node))
        for index, name in enumerate(node.input[:data]):
            source = producers.get(name)
            if name and not (source is not None and source.name in body):
                node.input[index] = half_input(name)
            elif name:
                node.input[index] = f"{name}__fp16"
        outputs = list(node.output)
        node.output[:] = [f"{name}__fp16" for name in outputs]
        nodes.append(node)
        for name in outputs:
            if name in graph_outputs or any(c.name not in body for c in consumers.get(name, [])):
                nodes.append(helper.make_node("Cast", [f"{name}__fp16"], [name], name=f"{name}__to_fp32",
                                              to=TensorProto.FLOAT))
    return _finish(model, nodes)


def _copy(model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


class _QdqBuilder:
    """Makes Q/DQ pairs (symmetric INT8) and their scale / zero-point initializers."""

    def __init__(self, graph):
        self.graph, self.nodes, self.made = graph, [], {}

    def _constant(self, name, value):
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def pair(self, tensor, amax):
        """Name of DQ(Q(tensor)) for an activation with range [-amax, amax]."""
        if tensor not in self.made:
            scale = np.asarray(max(amax, 1e-12) / INT8_MAX, np.float32)
            inputs = [tensor, self._constant(f"{tensor}__scale", scale),
                      self._constant(f"{tensor}__zero_point", np.zeros((), np.int8))]
            self.nodes.append(helper.make_node("QuantizeLinear", inputs, [f"{tensor}__q"], name=f"{tensor}__quantize"))
            self.nodes.append(helper.make_node("DequantizeLinear", [f"{tensor}__q", *inputs[1:]], [f"{tensor}__dq"],
                                               name=f"{tensor}__dequantize"))
            self.made[tensor] = f"{tensor}__dq"
        return self.made[tensor]

    def drain(self):
        """The Q/DQ nodes made since the last call (to insert before their consumer)."""
        made, self.nodes = self.nodes, []
        return made

    def dequantized_weight(self, name, values, axis):
        """Name of DequantizeLinear(INT8 weight, per-channel scale) for float `values`: the weight is
        stored quantized (a quarter of the size; no runtime QuantizeLinear on constants)."""
        if name not in self.made:
            other_axes = tuple(i for i in range(values.ndim) if i != axis)
            scale = np.maximum(np.abs(values).max(axis=other_axes), 1e-12).astype(np.float32) / INT8_MAX
            shape = [1] * values.ndim
            shape[axis] = -1
            quantized = np.clip(np.round(values / scale.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)
            inputs = [self._constant(f"{name}__int8", quantized), self._constant(f"{name}__scale", scale),
                      self._constant(f"{name}__zero_point", np.zeros(scale.shape, np.int8))]
            self.nodes.append(helper.make_node("DequantizeLinear", inputs, [f"{name}__dq"], name=f"{name}__dequantize",
                                               axis=axis))
            self.made[name] = f"{name}__dq"
        return self.made[name]


def _quantize_weights(node, builder, initializers):
    """Points a Conv/MatMul's weight input at its per-output-channel INT8 dequantization; whether it did."""
    weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
    if node.op_type not in WEIGHT_AXIS or weight is None:
        return False
    node.input[1] = builder.dequantized_weight(node.input[1], numpy_helper.to_array(weight),
                                               WEIGHT_AXIS[node.op_type])
    return True


def quantize_for_tensorrt(model, amax_by_tensor):
    """Copy of a float `model` with Q/DQ on each Conv/MatMul's activation input (ranges from
    `amax_by_tensor`; inputs without a range stay float) and on its weights.

    Residual Adds stay float: with Q/DQ on their inputs (TensorRT's placement for fusing the Add
    into the conv) the entropy-calibrated main-job model lost half its mAP (0.0143 -> 0.0071 in
    onnxruntime), so that waits for calibration that measures what it clips (issue 16).
    """
    model = _copy(model)
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    builder, nodes = _QdqBuilder(graph), []
    for node in graph.node:
        if node.op_type in WEIGHT_AXIS and node.input[1] in initializers and node.input[0] in amax_by_tensor:
            node.input[0] = builder.pair(node.input[0], amax_by_tensor[node.input[0]])
        _quantize_weights(node, builder, initializers)
        nodes += builder.drain()
        nodes.append(node)
    return _finish(model, nodes)


def symmetric_qat_ranges(model):
    """Copy of a QAT export (tf2onnx writes tfmot's fake-quant as asymmetric UINT8 Q/DQ) with
    each pair made symmetric INT8 over the same range, plus per-channel weight Q/DQ on every
    Conv/MatMul; and the {tensor: amax} of the quantized activations."""
    model = _copy(model)
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    amax_by_tensor, amax_by_scale = {}, {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        scale_name, zero_name = node.input[1], node.input[2]
        if scale_name not in amax_by_scale:  # Q and its DQ share the scale and zero point
            scale = numpy_helper.to_array(initializers[scale_name]).astype(np.float64)
            zero = numpy_helper.to_array(initializers[zero_name]).astype(np.float64)
            qmin, qmax = (0, 255) if initializers[zero_name].data_type == TensorProto.UINT8 else (-128, 127)
            amax_by_scale[scale_name] = amax = float(np.max(np.maximum(np.abs((qmin - zero) * scale),
                                                                       np.abs((qmax - zero) * scale))))
            initializers[scale_name].CopyFrom(numpy_helper.from_array(np.asarray(amax / INT8_MAX, np.float32),
                                                                      scale_name))
            initializers[zero_name].CopyFrom(numpy_helper.from_array(np.asarray(0, np.int8), zero_name))
        amax_by_tensor[node.input[0]] = amax_by_scale[scale_name]
    producers, builder, nodes = _producers(graph), _QdqBuilder(graph), []
    for node in graph.node:
        if _quantize_weights(node, builder, initializers) and not _dequantized(producers, node.input[0]):
            # INT8 weights need an INT8 activation: the float RoI crop feeding block 4 gets its bound
            amax = _convex_bound(producers, initializers, node.input[0])
            if amax is not None:  # else the TensorRT rule check names the conv
                amax_by_tensor[node.input[0]] = amax
                node.input[0] = builder.pair(node.input[0], amax)
        nodes += builder.drain()
        nodes.append(node)
    return _finish(model, _dequantize_before_shape_ops(nodes, initializers)), amax_by_tensor


def _dequantize_before_shape_ops(nodes, initializers):
    """Nodes with Q -> shape op -> DQ (tf2onnx's transpose optimizer moves the NCHW -> NHWC Transpose
    of the RPN outputs between the pair) reordered as Q -> DQ -> shape op: the same values for a
    per-tensor scale, and no INT8 tensor into a Transpose or Reshape, whose TensorRT importers take
    float and integer types only (operators.md)."""
    producers = {output: node for node in nodes for output in node.output}
    consumers = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    moved, reordered = {}, []
    for node in nodes:
        source = producers.get(node.input[0]) if node.input else None
        readers = consumers.get(node.output[0], []) if node.output else []
        if (node.op_type in SHAPE_OPS and source is not None and source.op_type == "QuantizeLinear"
                and len(readers) == 1 and readers[0].op_type == "DequantizeLinear"
                and numpy_helper.to_array(initializers[readers[0].input[1]]).ndim == 0):
            dequantize = readers[0]
            moved[dequantize.name] = node  # emitted after the DQ, which now reads the Q output
            dequantize.input[0], node.input[0] = node.input[0], f"{node.output[0]}__dq"
            node.output[0], dequantize.output[0] = dequantize.output[0], f"{node.output[0]}__dq"
            continue
        reordered.append(node)
        if node.name in moved:
            reordered.append(moved.pop(node.name))
    return reordered


def _dequantized(producers, name):
    """Whether `name` is a DequantizeLinear output, looking through SHAPE_OPS."""
    node = producers.get(name)
    while node is not None and node.op_type in SHAPE_OPS:
        node = producers.get(node.input[0])
    return node is not None and node.op_type == "DequantizeLinear"


def _convex_bound(producers, initializers, name):
    """amax bounding a RoI crop output `name`, or None.

    `crop_rois` computes MatMul(row weights, MatMul(column weights, features)) with
    interpolation weights in [0, 1] that sum to at most 1 per sample, so every crop value
    is a convex combination of feature values and 0: |crop| <= amax(features). The
    features are input 1 of each MatMul; their range is their DequantizeLinear's.
    """
    node, matmuls = producers.get(name), 0
    while node is not None and (node.op_type in SHAPE_OPS or node.op_type == "MatMul"):
        matmuls += node.op_type == "MatMul"
        node = producers.get(node.input[1] if node.op_type == "MatMul" else node.input[0])
    if matmuls != 2 or node is None or node.op_type != "DequantizeLinear":
        return None
    scale = numpy_helper.to_array(initializers[node.input[1]])
    return float(scale) * INT8_MAX if scale.ndim == 0 else None


def with_outputs(model, names):
    """Copy of `model` that also outputs the float tensors `names` (for calibration)."""
    model = _copy(model)
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in names if n not in existing)
    return model


def op_types(model):
    """Op types used in the graph, subgraphs included."""
    found = set()

    def visit(graph):
        for node in graph.node:
            found.add(node.op_type)
            for attribute in node.attribute:
                if attribute.g.node:
                    visit(attribute.g)

    visit(model.graph)
    return found
