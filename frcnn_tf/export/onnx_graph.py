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

from frcnn_tf.errors import FrcnnError
from frcnn_tf.quantize import kernel_digest
from frcnn_tf.tensorrt_limits import MIN_SCALE, WEIGHT_INT8_MAX

BODY_OPS = {"Conv", "Relu", "MaxPool", "GlobalAveragePool", "AveragePool", "BatchNormalization"}
WEIGHTED_OPS = {"MatMul", "Gemm"}  # in the body when input 1 is a weight (the RoI crop's MatMuls are not)
JOIN_OPS = {"Add", "Squeeze"}  # in the body when every data input comes from the body
DATA_INPUTS = {"Squeeze": 1}  # ops whose trailing inputs are not float data (Squeeze's axes)
WEIGHT_AXIS = {"Conv": 0, "MatMul": 1}  # output-channel axis of the weight (input 1)
SHAPE_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity"}  # move values, compute nothing


def _producers(graph):
    return _producers_of(graph.node)


def _producers_of(nodes):
    return {output: node for node in nodes for output in node.output}


def _consumers(graph):
    return _consumers_of(graph.node)


def _consumers_of(nodes):
    """{tensor: [nodes reading it]}; a subgraph's reads of outer tensors count as its node's."""
    found = {}
    for node in nodes:
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

    def pair(self, tensor, scale, output=None):
        """Name of DQ(Q(tensor)) (`output`, default `<tensor>__dq`) for a per-tensor float32 scale."""
        if tensor not in self.made:
            output = output or f"{tensor}__dq"
            inputs = [tensor, self._constant(f"{output}__scale", np.float32(scale)),
                      self._constant(f"{output}__zero_point", np.zeros((), np.int8))]
            self.nodes.append(helper.make_node("QuantizeLinear", inputs, [f"{output}__q"], name=f"{output}__quantize"))
            self.nodes.append(helper.make_node("DequantizeLinear", [f"{output}__q", *inputs[1:]], [output],
                                               name=f"{output}__dequantize"))
            self.made[tensor] = output
        return self.made[tensor]

    def dequantized_bias(self, name, values, scale):
        """Name of DequantizeLinear(INT32 bias, per-channel `scale`) for float `values` [C], or None
        when a value exceeds INT32 (a channel of zero weights has a tiny scale)."""
        steps = np.round(values.astype(np.float64) / scale)
        if np.abs(steps).max(initial=0) > np.iinfo(np.int32).max:
            return None
        inputs = [self._constant(f"{name}__int32", steps.astype(np.int32)),
                  self._constant(f"{name}__int32__scale", scale.astype(np.float32)),
                  self._constant(f"{name}__int32__zero_point", np.zeros(scale.shape, np.int32))]
        self.nodes.append(helper.make_node("DequantizeLinear", inputs, [f"{name}__int32__dq"],
                                           name=f"{name}__int32__dequantize", axis=0))
        return f"{name}__int32__dq"

    def drain(self):
        """The Q/DQ nodes made since the last call (to insert before their consumer)."""
        made, self.nodes = self.nodes, []
        return made

    def dequantized_weight(self, name, values, axis, scale=None):
        """Name of DequantizeLinear(INT8 weight, per-channel scale) for float `values`: the weight is
        stored quantized (a quarter of the size; no runtime QuantizeLinear on constants). `scale`
        [C] None: max|w| / 127 per channel; given (QAT): `values` must be INT8 x scale exactly."""
        if name not in self.made:
            shape = [1] * values.ndim
            shape[axis] = -1
            if scale is None:
                other_axes = tuple(i for i in range(values.ndim) if i != axis)
                scale = np.maximum(np.abs(values).max(axis=other_axes), MIN_SCALE).astype(np.float32) / WEIGHT_INT8_MAX
            integers = np.round(values / scale.reshape(shape))
            if np.abs(integers).max(initial=0) > WEIGHT_INT8_MAX:
                raise FrcnnError(f"{name}: a weight exceeds 127 steps of its scale")
            quantized = integers.astype(np.int8)
            inputs = [self._constant(f"{name}__int8", quantized), self._constant(f"{name}__scale", scale),
                      self._constant(f"{name}__zero_point", np.zeros(scale.shape, np.int8))]
            self.nodes.append(helper.make_node("DequantizeLinear", inputs, [f"{name}__dq"], name=f"{name}__dequantize",
                                               axis=axis))
            self.made[name] = f"{name}__dq"
        return self.made[name]


def _quantize_weights(node, builder, initializers, weight_scales=None):
    """Points a Conv/MatMul's weight input at its per-output-channel INT8 dequantization; whether it
    did. weight_scales (QAT): {quantize.kernel_digest: scale [C]}; a weight without one stays float."""
    weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
    if node.op_type not in WEIGHT_AXIS or weight is None:
        return False
    values, scale = numpy_helper.to_array(weight), None
    if weight_scales is not None:
        scale = weight_scales.get(kernel_digest(values))
        if scale is None:
            return False
    node.input[1] = builder.dequantized_weight(node.input[1], values, WEIGHT_AXIS[node.op_type], scale)
    return True


def quantize_for_tensorrt(model, scale_by_tensor):
    """Copy of a float `model` with Q/DQ on each Conv/MatMul's activation input (per-tensor scales
    from `scale_by_tensor`; inputs without one stay float) and on its weights.

    Residual Adds stay float: with Q/DQ on their inputs (TensorRT's placement for fusing the Add
    into the conv) the entropy-calibrated main-job model lost half its mAP (0.0143 -> 0.0071 in
    onnxruntime), so that waits for calibration that measures what it clips (issue 16).
    """
    model = _copy(model)
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    builder, nodes = _QdqBuilder(graph), []
    for node in graph.node:
        if node.op_type in WEIGHT_AXIS and node.input[1] in initializers and node.input[0] in scale_by_tensor:
            node.input[0] = builder.pair(node.input[0], scale_by_tensor[node.input[0]])
        _quantize_weights(node, builder, initializers)
        nodes += builder.drain()
        nodes.append(node)
    return _finish(model, nodes)


def qat_to_qdq(model, weight_scales, activation_scales):
    """Copy of a QAT export (quantize.deployable_model through tf2onnx) in TensorRT's explicit form,
    and {activation tensor: scale}.

    tf2onnx has turned each TensorQuantize into QuantizeLinear -> DequantizeLinear with its trained
    scale (quantize.export_quantize); this checks each scale is one of `activation_scales` exactly
    and each zero point INT8 0, puts a DQ that tf2onnx separated from its Q by a Transpose right
    after the Q, and stores each Conv/MatMul weight INT8 per output channel behind a
    DequantizeLinear with its scale from `weight_scales` ({quantize.kernel_digest: scale [C]}).
    Nothing is re-derived: weights dequantize to the deployable model's kernels bit for bit, and
    activations round as training rounded.
    """
    model = _copy(model)
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    trained = {np.float32(scale).tobytes() for scale in activation_scales}
    scales = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        scale, zero = (numpy_helper.to_array(initializers[name]) for name in node.input[1:3])
        if scale.dtype != np.float32 or scale.ndim or scale.tobytes() not in trained:
            raise FrcnnError(f"QAT export: {node.name} quantizes with scale {scale}, not a trained one")
        if zero.dtype != np.int8 or zero.any():
            raise FrcnnError(f"QAT export: {node.name} has zero point {zero} ({zero.dtype}), not INT8 0")
        scales[node.input[0]] = scale
    builder, nodes = _QdqBuilder(graph), []
    for node in _dequantize_before_shape_ops(list(graph.node), initializers):
        _quantize_weights(node, builder, initializers, weight_scales)
        nodes += builder.drain()
        nodes.append(node)
    unquantized = [n.name for n in nodes if n.op_type in WEIGHT_AXIS and n.input[1] in initializers]
    if unquantized:
        raise FrcnnError(f"QAT export: no trained weight scale for {', '.join(unquantized)}")
    return _finish(model, nodes), scales


def _dequantize_before_shape_ops(nodes, initializers):
    """Nodes with Q -> shape ops -> DQ (tf2onnx's transpose optimizer moves NCHW <-> NHWC Transposes,
    and the Reshape before them, between the pair) reordered as Q -> DQ -> shape ops: the same values
    for a per-tensor scale, and no INT8 tensor into a Transpose or Reshape, whose TensorRT importers
    take float and integer types only (operators.md)."""
    while True:
        reordered = _dequantize_before_one_shape_op(nodes, initializers)
        if reordered == nodes:
            return nodes
        nodes = reordered


def _dequantize_before_one_shape_op(nodes, initializers):
    """One step of _dequantize_before_shape_ops: each DQ moves before the shape op that feeds it."""
    producers = {output: node for node in nodes for output in node.output}
    consumers = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    moved, reordered = {}, []
    for node in nodes:
        source = producers.get(node.input[0]) if node.input else None
        while source is not None and source.op_type in SHAPE_OPS:
            source = producers.get(source.input[0])
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


NON_NEGATIVE_OPS = {"Relu"}  # outputs never below 0
ORDER_KEEPING_OPS = SHAPE_OPS | {"MaxPool"}  # never negative when their input is not
UINT8_OFFSET = 128  # UINT8 zero point with the values of INT8 zero point 0


def _never_negative(name, producers):
    source = producers.get(name)
    while source is not None and source.op_type in ORDER_KEEPING_OPS:
        source = producers.get(source.input[0])
    return source is not None and source.op_type in NON_NEGATIVE_OPS


def never_negative_activations(model):
    """{tensor: scale} of the activations a per-tensor QuantizeLinear quantizes that are never negative
    (ReLU outputs): those for_onnxruntime gives UINT8 zero point 0, where they keep 128-255 steps."""
    graph = model.graph
    initializers, producers = {i.name: i for i in graph.initializer}, _producers(graph)
    return {node.input[0]: float(_scale_value(initializers, node.input[1])) for node in graph.node
            if node.op_type == "QuantizeLinear" and not _scale_value(initializers, node.input[1]).ndim
            and _never_negative(node.input[0], producers)}


def _scale_value(initializers, name):
    return numpy_helper.to_array(initializers[name]).astype(np.float32)


def for_onnxruntime(model, output_scales=None, int8_clamped=()):
    """Copy of a TensorRT-form INT8 graph (quantize_for_tensorrt, qat_to_qdq) whose Q/DQ groups
    onnxruntime's CPU QDQ fusion turns into integer kernels (QLinearConv, QLinearAdd), with the
    same scales.

    - Activations become UINT8, what MLAS's u8 x s8 kernels (VNNI/AMX) read: zero point 128 (the
      values of INT8 zero point 0) except on ReLU outputs, which take zero point 0 so that
      onnxruntime drops the ReLU into the conv before it; there values between 127 and 255 steps
      are kept where TensorRT clips them at 127 steps (the only difference in values). The tensors
      named in `int8_clamped` (ReLU outputs that often reach 127 steps) keep zero point 128 and the
      clip: their ReLU and the conv before it run unfused.
    - A quantized Conv's float bias becomes INT32 at scale s_input x s_weight[c] (per output
      channel) behind a DequantizeLinear: onnxruntime fuses a conv only with a quantized bias. A bias
      INT32 cannot hold (a channel of zero weights has a tiny scale) stays float: that conv is not fused.
    - output_scales {tensor: scale} (PTQ: the calibrated ranges) adds a Q/DQ pair on a quantized
      Conv's output that only the body reads and has none (a residual Add's input), or on the ReLU
      after it, so that the conv fuses too; without one that conv runs in float on dequantized
      inputs. Outputs the float parts read (the RPN's logits and deltas) stay float.
    Weights stay INT8 per output channel as they were.
    """
    model = _copy(model)
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    output_scales = output_scales or {}
    builder, after = _QdqBuilder(graph), {}  # after: {node name: Q/DQ nodes to emit right after it}
    producers, consumers = _producers(graph), _consumers(graph)
    for node in graph.node:
        if node.op_type != "Conv" or not _reads_dequantized(node, producers, initializers):
            continue
        output, readers = node.output[0], consumers.get(node.output[0], [])
        if len(readers) == 1 and readers[0].op_type == "Relu":
            output, readers = readers[0].output[0], consumers.get(readers[0].output[0], [])
        if output not in output_scales or any(r.op_type not in BODY_OPS | JOIN_OPS for r in readers):
            continue  # already quantized, or read by float parts (the RPN's logits and deltas stay float)
        made = builder.pair(output, output_scales[output])
        for reader in readers:
            reader.input[:] = [made if name == output else name for name in reader.input]
        after.setdefault(producers[output].name, []).extend(builder.drain())
    nodes = [made for node in graph.node for made in (node, *after.get(node.name, ()))]
    initializers, producers = {i.name: i for i in graph.initializer}, _producers_of(nodes)
    _activations_to_uint8(nodes, graph, initializers, producers, set(int8_clamped))
    for node in nodes:
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] in initializers \
                and _reads_dequantized(node, producers, initializers):
            _quantize_bias(node, producers, initializers, builder)
    return _finish(model, builder.drain() + nodes)


def _reads_dequantized(node, producers, initializers):
    """Whether a Conv/MatMul reads an activation and a weight through DequantizeLinear."""
    sources = [producers.get(name) for name in node.input[:2]]
    return all(s is not None and s.op_type == "DequantizeLinear" for s in sources) \
        and sources[1].input[0] in initializers


def _activations_to_uint8(nodes, graph, initializers, producers, int8_clamped):
    """Rewrites each per-tensor activation Q and its DQs to UINT8 (see for_onnxruntime)."""
    readers = _consumers_of(nodes)
    for node in nodes:
        if node.op_type != "QuantizeLinear" or _scale_value(initializers, node.input[1]).ndim:
            continue
        zero = 0 if node.input[0] not in int8_clamped and _never_negative(node.input[0], producers) else UINT8_OFFSET
        name = f"{node.output[0]}__uint8_zero_point"
        graph.initializer.append(numpy_helper.from_array(np.array(zero, np.uint8), name))
        for user in [node] + [r for r in readers.get(node.output[0], []) if r.op_type == "DequantizeLinear"]:
            user.input[2] = name


def _quantize_bias(conv, producers, initializers, builder):
    """Points a fused-to-be Conv's float bias at an INT32 DequantizeLinear (scale s_x x s_w[c])."""
    activation, weight = (producers[name] for name in conv.input[:2])
    scale = _scale_value(initializers, activation.input[1]) * _scale_value(initializers, weight.input[1])
    dequantized = builder.dequantized_bias(conv.input[2], numpy_helper.to_array(initializers[conv.input[2]]), scale)
    if dequantized:
        conv.input[2] = dequantized


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
