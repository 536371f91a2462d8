"""tf2onnx lowerings of the detection graph's TensorFlow ops, written for TensorRT's ONNX parser.

tf2onnx 1.17 lowers `tf.image.combined_non_max_suppression` with an `EyeLike` on the
dynamic [batch, batch] shape and a `CumSum` over the data-dependent number of
selections; TensorRT's parser rejects EyeLike on dynamic dimensions (onnx-tensorrt
`importEyeLike`: "Eyelike does not work for dynamically shaped tensors"). The lowering
here uses only ops TensorRT 10 and 11 import natively, with a dynamic batch. (The RoI
crop needs no handler: `frcnn_tf.model.layers.crop_rois` is built from MatMuls.)
"""
import numpy as np
from onnx import TensorProto, helper
from tf2onnx import utils
from tf2onnx.graph_builder import GraphBuilder

from frcnn_tf.errors import FrcnnError
from frcnn_tf.tensorrt_limits import MAX_TOP_K

LOWEST_FLOAT32 = float(np.finfo(np.float32).min)


def _constant(ctx, node, input_index, what):
    producer = ctx.get_node_by_output(node.input[input_index])
    if producer is None or not producer.is_const():
        raise FrcnnError(f"{node.name}: the {what} of a combined NMS must be a constant to export it for TensorRT")
    return producer.get_tensor_value(as_list=False)


def combined_nms(ctx, node, name, args):
    """CombinedNonMaxSuppression over one class (boxes [B, N, 1, 4], scores [B, N, 1]) ->
    ONNX NonMaxSuppression, a [B, N] mask of the selected boxes (ScatterND), TopK of the
    masked scores (K = min(max_total_size, N) <= 3840), GatherND of the boxes, zeroed rows
    past each image's count and zero padding up to max_total_size: TensorFlow's outputs
    (boxes [B, K, 4], scores [B, K], classes [B, K] all 0, valid [B] int32) for the same
    selection. Rows are ordered by score; ties go to the lower box index.

    frcnn_tf's detector applies per-class NMS as one NMS over class-shifted boxes, so one
    class is all it needs.
    """
    boxes, scores = node.input[0], node.input[1]
    boxes_shape, scores_shape = ctx.get_shape(boxes), ctx.get_shape(scores)
    if boxes_shape is None or len(boxes_shape) != 4 or boxes_shape[2] != 1 or scores_shape[2] != 1:
        raise FrcnnError(f"{node.name}: only single-class combined NMS is exported (boxes [B, N, 1, 4])")
    num_boxes = boxes_shape[1]
    if num_boxes is None or num_boxes < 1:
        raise FrcnnError(f"{node.name}: the number of NMS candidates must be known at export (fixed input size)")
    max_per_class = int(_constant(ctx, node, 2, "max_output_size_per_class"))
    max_total = int(_constant(ctx, node, 3, "max_total_size"))
    iou_threshold = float(_constant(ctx, node, 4, "iou_threshold"))
    score_threshold = float(_constant(ctx, node, 5, "score_threshold"))
    top_k = min(max_total, num_boxes)
    if top_k > MAX_TOP_K:
        raise FrcnnError(f"{node.name}: {max_total} boxes kept after NMS; TensorRT's TopK takes at most {MAX_TOP_K}")
    if node.get_attr_value("clip_boxes", True) or node.get_attr_value("pad_per_class", False):
        raise FrcnnError(f"{node.name}: export needs combined NMS with clip_boxes=False and pad_per_class=False")

    builder = GraphBuilder(ctx)

    def const(value, dtype):
        return ctx.make_const(utils.make_name(f"{node.name}/const"), np.array(value, dtype)).output[0]

    def op(op_type, inputs, **attr):
        return ctx.make_node(op_type, inputs, attr=attr, op_name_scope=node.name).output[0]

    boxes_3d = builder.make_squeeze({"data": boxes, "axes": [2]})  # [B, N, 4]
    scores_2d = builder.make_squeeze({"data": scores, "axes": [2]})  # [B, N]
    selected = op("NonMaxSuppression", [boxes_3d, builder.make_unsqueeze({"data": scores_2d, "axes": [1]}),
                                        const([max_per_class], np.int64), const([iou_threshold], np.float32),
                                        const([score_threshold], np.float32)])  # [M, 3]: batch, class, box
    batch_and_box = op("Gather", [selected, const([0, 2], np.int64)], axis=1)  # [M, 2]
    zeros = op("ConstantOfShape", [op("Shape", [scores_2d])],
               value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))
    ones = op("ConstantOfShape", [builder.make_slice({"data": op("Shape", [selected]), "starts": [0], "ends": [1],
                                                      "axes": [0]})],
              value=helper.make_tensor("value", TensorProto.FLOAT, [1], [1.0]))
    mask = op("ScatterND", [zeros, batch_and_box, ones])  # [B, N]: 1 where selected
    ranked = op("Where", [op("Greater", [mask, const(0.5, np.float32)]), scores_2d, const(LOWEST_FLOAT32, np.float32)])
    top_scores, top_index = ctx.make_node("TopK", [ranked, const([top_k], np.int64)], attr={"axis": 1, "sorted": 1},
                                          output_count=2, op_name_scope=node.name).output
    count = op("Cast", [builder.make_reduce_sum({"data": mask, "axes": [1], "keepdims": 0,
                                                 "noop_with_empty_axes": 0})], to=TensorProto.INT32)
    valid = op("Min", [count, const(top_k, np.int32)])  # [B]
    rows = op("Less", [const(np.arange(top_k)[np.newaxis], np.int32), builder.make_unsqueeze({"data": valid,
                                                                                            "axes": [1]})])
    top_boxes = op("GatherND", [boxes_3d, builder.make_unsqueeze({"data": top_index, "axes": [2]})], batch_dims=1)
    out_boxes = op("Where", [builder.make_unsqueeze({"data": rows, "axes": [2]}), top_boxes, const(0.0, np.float32)])
    out_scores = op("Where", [rows, top_scores, const(0.0, np.float32)])
    out_classes = op("ConstantOfShape", [op("Shape", [out_scores])],
                     value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))
    if top_k < max_total:  # fewer candidates than rows: pad with zeros, as TensorFlow does
        pad = max_total - top_k
        out_boxes = op("Pad", [out_boxes, const([0, 0, 0, 0, pad, 0], np.int64), const(0.0, np.float32)])
        out_scores = op("Pad", [out_scores, const([0, 0, 0, pad], np.int64), const(0.0, np.float32)])
        out_classes = op("Pad", [out_classes, const([0, 0, 0, pad], np.int64), const(0.0, np.float32)])
    for old, new in zip(node.output, (out_boxes, out_scores, out_classes, valid)):
        ctx.replace_all_inputs(old, new)
    ctx.remove_node(node.name)


HANDLERS = {"CombinedNonMaxSuppression": (combined_nms, [])}
