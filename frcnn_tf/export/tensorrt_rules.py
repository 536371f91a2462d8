"""What TensorRT 10.x and 11.x's ONNX parser and builder require of a graph, checked without TensorRT.

Each rule is a small function over a `GraphView` that yields `Violation`s, with its
source in its docstring: onnx-tensorrt's importer (`onnxOpImporters.cpp`,
`onnxOpCheckers.cpp`, `ModelImporter.cpp`, release/10.1-GA commit 96e7811; the same
checks in later revisions) and its `docs/operators.md` (10.1, 11.1), or TensorRT's
`include/NvInfer.h`. The restrictions sit on attributes, shapes, types and constants,
not only on op types: every node of the graph is checked, subgraphs included, because
the parser imports every node, used or not.
"""
import dataclasses
import functools
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from frcnn_tf.errors import FrcnnError
from frcnn_tf.tensorrt_limits import MAX_TOP_K

OPERATORS_FILE = pathlib.Path(__file__).with_name("tensorrt_operators.tsv")
OPSET_RANGE = (9, 20)  # operators.md 10.1: "opset 9 to opset 20"; 11.1: "opset 9 to opset 24"
RESIZE_COORDINATE_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_MODES = {"nearest", "linear"}
WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1}  # op -> index of the weight input
# Ops a Q/DQ pair reaches a Conv through: TensorRT moves DQ past data-movement ops when fusing
# (TensorRT developer guide, "Q/DQ Layer-Placement Recommendations" and "Processing of Q/DQ Networks").
QDQ_TRANSPARENT = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "MaxPool"}
# Inputs that operators.md says "must be an initializer" (a constant), by op -> input index.
CONSTANT_INPUTS = {"Squeeze": 1, "Unsqueeze": 1, "Slice": 3, "ReduceSum": 1, "ReduceSumSquare": 1, "Pad": 3,
                   "CumSum": 1}
TYPE_NAMES = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
              TensorProto.DOUBLE: "DOUBLE", TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8",
              TensorProto.INT16: "INT16", TensorProto.INT32: "INT32", TensorProto.INT64: "INT64",
              TensorProto.BOOL: "BOOL", TensorProto.STRING: "STRING"}


@dataclasses.dataclass(frozen=True)
class Violation:
    node: str
    op_type: str
    rule: str

    def __str__(self):
        return f"node {self.node} ({self.op_type}): {self.rule}"


@functools.cache
def operator_table():
    """{op type: (supported, {element type names of its data input})} from operators.md."""
    table = {}
    for line in OPERATORS_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, supported, types = (line.split("\t") + [""])[:3]
            table[name] = (supported == "Y", set(filter(None, types.split(","))))
    return table


class GraphView:
    """A model with what the rules ask of it: every node (subgraphs included), constants,
    producers, element types and shapes (ONNX shape inference with data propagation)."""

    def __init__(self, model):
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # noqa: BLE001 - an uninferable graph is still checked, with fewer facts
            inferred = model
        self.model = inferred
        self.graph_io = {v.name for v in (*inferred.graph.input, *inferred.graph.output)}
        self.nodes, self.constants, self.values = [], {}, {}
        self._collect(inferred.graph)
        self.producers = {name: node for node in self.nodes for name in node.output}

    def _collect(self, graph):
        for initializer in graph.initializer:
            self.constants[initializer.name] = numpy_helper.to_array(initializer)
            self.values[initializer.name] = (initializer.data_type, list(initializer.dims))
        for value in (*graph.input, *graph.output, *graph.value_info):
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            self.values.setdefault(value.name, (tensor.elem_type, dims if tensor.HasField("shape") else None))
        for node in graph.node:
            self.nodes.append(node)
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(attribute.t)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    self._collect(attribute.g)

    def elem_type(self, name):
        return self.values.get(name, (0, None))[0]

    def dims(self, name):
        return self.values.get(name, (0, None))[1]

    def constant(self, name):
        return self.constants.get(name)

    def source(self, name, through=()):
        """The node producing `name`, looking through ops in `through`."""
        node = self.producers.get(name)
        while node is not None and node.op_type in through:
            node = self.producers.get(node.input[0])
        return node


def _attribute(node, name, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def rule_opset(view):
    """Default-domain opset within 9..20 (operators.md 10.1: "TensorRT 10.0 supports operators in the inclusive
    range of opset 9 to opset 20"; 11.1: 9 to 24)."""
    for opset in view.model.opset_import:
        if opset.domain in ("", "ai.onnx") and not OPSET_RANGE[0] <= opset.version <= OPSET_RANGE[1]:
            yield Violation("graph", "opset", f"opset {opset.version} is outside TensorRT's range "
                                              f"{OPSET_RANGE[0]}..{OPSET_RANGE[1]}")


def rule_operator(view):
    """Op type in TensorRT's operator list with "Y" (operators.md); other domains need a plugin."""
    table = operator_table()
    for node in view.nodes:
        if node.domain not in ("", "ai.onnx"):
            yield Violation(node.name, node.op_type, f"domain {node.domain!r} needs a TensorRT plugin")
        elif not table.get(node.op_type, (False, None))[0]:
            yield Violation(node.name, node.op_type, "not an operator TensorRT's ONNX parser imports")


def rule_input_type(view):
    """The data input's element type is one operators.md lists for the op ("Supported Types"), e.g. no INT64
    into Floor, NonMaxSuppression or QuantizeLinear, no BOOL into Equal; DOUBLE is cast down by the parser."""
    table = operator_table()
    for node in view.nodes:
        supported, types = table.get(node.op_type, (False, set()))
        elem = view.elem_type(node.input[0]) if node.input and node.input[0] else 0
        name = TYPE_NAMES.get(elem)
        if supported and types and name and name != "DOUBLE" and name not in types:
            yield Violation(node.name, node.op_type, f"input {node.input[0]} is {name}; TensorRT takes "
                                                     f"{', '.join(sorted(types))}")


def rule_uint8(view):
    """UINT8 only as a network input or output (operators.md: "UINT8 is only supported as network input or output
    tensor types"; ModelImporter.cpp). A Q/DQ with a UINT8 zero point (or none: ONNX's default is UINT8) makes
    one."""
    for node in view.nodes:
        for name in [*node.input, *node.output]:
            if name and name not in view.graph_io and view.elem_type(name) == TensorProto.UINT8:
                yield Violation(node.name, node.op_type, f"tensor {name} is UINT8 inside the network")
                break


def rule_resize(view):
    """Resize: coordinate_transformation_mode in half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric,
    align_corners (importResize: "Unsupported coordinate transformation mode"; onnxOpCheckers.cpp;
    operators.md: tf_crop_and_resize and half_pixel_symmetric are not); mode nearest or linear; no antialias."""
    for node in view.nodes:
        if node.op_type != "Resize":
            continue
        coordinates = _text(_attribute(node, "coordinate_transformation_mode", "half_pixel"))
        if coordinates not in RESIZE_COORDINATE_MODES:
            yield Violation(node.name, node.op_type, f"coordinate_transformation_mode {coordinates!r} is not "
                                                     f"supported")
        mode = _text(_attribute(node, "mode", "nearest"))
        if mode not in RESIZE_MODES:
            yield Violation(node.name, node.op_type, f"mode {mode!r} is not supported")
        if _attribute(node, "antialias", 0):
            yield Violation(node.name, node.op_type, "antialiasing is not supported")


def rule_eyelike(view):
    """EyeLike: the input must have static dimensions (importEyeLike asserts !isDynamic(dims): "Eyelike does not
    work for dynamically shaped tensors"; operators.md)."""
    for node in view.nodes:
        if node.op_type == "EyeLike":
            dims = view.dims(node.input[0])
            if dims is None or any(d is None or d <= 0 for d in dims):
                yield Violation(node.name, node.op_type, f"input {node.input[0]} has dynamic dimensions {dims}")


def rule_topk(view):
    """TopK: K a constant of at most 3840 (NvInfer.h ITopKLayer::setK "only values up to 3840"; setInput(1):
    "Values larger than 3840 will result in a runtime error"; operators.md) and sorted=1 (operators.md)."""
    for node in view.nodes:
        if node.op_type != "TopK":
            continue
        k = view.constant(node.input[1]) if len(node.input) > 1 else _attribute(node, "k")
        if k is None:
            yield Violation(node.name, node.op_type, f"K ({node.input[1]}) is not a constant, so it cannot be "
                                                     f"shown to be <= {MAX_TOP_K}")
        elif int(np.max(k)) > MAX_TOP_K:
            yield Violation(node.name, node.op_type, f"K = {int(np.max(k))} > {MAX_TOP_K}, TensorRT's TopK limit")
        if not _attribute(node, "sorted", 1):
            yield Violation(node.name, node.op_type, "sorted must be 1")


def rule_loop(view):
    """Loop: "Scan output length cannot be dynamic" (operators.md; importLoop sizes scan outputs by the trip count):
    a Loop with scan outputs needs a constant trip count."""
    for node in view.nodes:
        if node.op_type != "Loop":
            continue
        body = _attribute(node, "body")
        carried = len(node.input) - 2
        scan_outputs = len(body.output) - 1 - carried
        if scan_outputs > 0 and (not node.input[0] or view.constant(node.input[0]) is None):
            yield Violation(node.name, node.op_type, f"{scan_outputs} scan output(s) with a trip count that is not "
                                                     f"a constant")


def rule_constant_inputs(view):
    """Inputs operators.md requires to be initializers: `axes` of Squeeze, Unsqueeze, Slice, ReduceSum(Square),
    Pad and CumSum."""
    for node in view.nodes:
        index = CONSTANT_INPUTS.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] \
                and view.constant(node.input[index]) is None:
            yield Violation(node.name, node.op_type, f"input {index} ({node.input[index]}) must be a constant")


def rule_qdq(view):
    """Q/DQ: an INT8 zero point that is a constant of zeros (QuantDequantLinearHelper; operators.md "zero point must
    be 0"; NvInfer.h IQuantizeLayer); a per-channel scale is 1-D with dims[axis] entries (the check `dims[axis] ==
    scales`) and only on constants (weights: IQuantizeLayer is per-tensor for activations)."""
    for node in view.nodes:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero = view.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None:
            yield Violation(node.name, node.op_type, "needs a constant INT8 zero point (ONNX's default is UINT8)")
        elif zero.dtype != np.int8 or zero.any():
            yield Violation(node.name, node.op_type, f"zero point must be INT8 zeros, not {zero.dtype} "
                                                     f"{zero.ravel()[:4].tolist()}")
        scale = view.constant(node.input[1])
        if scale is None:
            yield Violation(node.name, node.op_type, "scale must be a constant")
        elif scale.ndim > 1:
            yield Violation(node.name, node.op_type, f"scale has shape {list(scale.shape)}; 0-D or 1-D only")
        elif scale.ndim == 1 and scale.size > 1:
            data = view.constant(node.input[0])
            dims = view.dims(node.input[0])
            axis = _attribute(node, "axis", 1)
            if data is None:
                yield Violation(node.name, node.op_type, "a per-channel scale on an activation (weights only)")
            elif dims is not None and dims[axis] != scale.size:
                yield Violation(node.name, node.op_type, f"{scale.size} scales for {dims[axis]} channels on "
                                                         f"axis {axis}")


def rule_weight_needs_activation(view):
    """INT8 weights (a DQ on a Conv/MatMul/Gemm weight) only where the activation input is dequantized too:
    "TensorRT quantizes activations and weights for INT8 ... Weight-only quantization is supported for INT4"
    ("Working with Quantized Types", 10.11; NVIDIA/TensorRT#2131 "Could not fuse 2nd input (kernel weights)")."""
    for node in view.nodes:
        index = WEIGHT_OPS.get(node.op_type)
        if index is None or len(node.input) <= index:
            continue
        weight = view.source(node.input[index], QDQ_TRANSPARENT)
        if weight is None or weight.op_type != "DequantizeLinear" or view.constant(weight.input[0]) is None:
            continue  # not an INT8 constant: a MatMul of two activations (the RoI crop) may read one DQ
        activation = view.source(node.input[0], QDQ_TRANSPARENT)
        if activation is None or activation.op_type != "DequantizeLinear":
            yield Violation(node.name, node.op_type, f"INT8 weights with a float activation ({node.input[0]}): "
                                                     f"quantize the input too or keep the weights float")


RULES = (rule_opset, rule_operator, rule_input_type, rule_uint8, rule_resize, rule_eyelike, rule_topk, rule_loop,
         rule_constant_inputs, rule_qdq, rule_weight_needs_activation)


def check(model):
    """Every violation of RULES in an onnx.ModelProto, in rule order."""
    view = GraphView(model)
    return [violation for rule in RULES for violation in rule(view)]


def check_file(path):
    """check() of an ONNX file; an unreadable file is a FrcnnError naming it."""
    try:
        model = onnx.load(path)
    except Exception as err:  # noqa: BLE001 - protobuf decode errors have many types
        raise FrcnnError(f"{path}: cannot read the ONNX model ({err})") from None
    if not model.opset_import:  # an empty file decodes as an empty ModelProto
        raise FrcnnError(f"{path}: not an ONNX model (no opset imports, no graph)")
    return check(model)
