"""The project's default spec as shipped (384x1248, rpn_pre_nms_top_N 6000) exports FP32, FP16, INT8
and QAT INT8 graphs that keep every TensorRT rule: only the data paths and the training length change."""
import onnx
import pytest

from frcnn_tf.export import tensorrt_rules
from frcnn_tf.export.onnx_export import Int8Options, run_export
from frcnn_tf.spec import load_experiment_spec
from frcnn_tf.train.trainer import train
from kitti_fixtures import TRAFFIC_LIGHT_CLASSES, write_experiment_spec


def _shipped_spec(path, records, images, output_model, qat):
    return write_experiment_spec(path, f"{records}/tl-fold-*", images, TRAFFIC_LIGHT_CLASSES, height=384,
                                 width=1248, replace=[
                                     ('output_model: "../workdir/models/frcnn_resnet18.hdf5"',
                                      f'output_model: "{output_model}"'),
                                     ("batch_size_per_gpu: 8", "batch_size_per_gpu: 1"),
                                     ("num_epochs: 12", "num_epochs: 1"),
                                     ("validation_period_during_training: 1", "validation_period_during_training: 9"),
                                     ("enable_qat: false", f"enable_qat: {str(qat).lower()}")])


@pytest.mark.slow
def test_shipped_spec_exports_keep_tensorrt_rules(traffic_light_records, traffic_lights, tmp_path):
    exports = []
    for qat in (False, True):
        spec_path = _shipped_spec(tmp_path / f"spec_{qat}.txt", traffic_light_records, traffic_lights,
                                  tmp_path / f"qat_{qat}" / "frcnn.hdf5", qat)
        spec = load_experiment_spec(spec_path)
        assert spec.inference_config.rpn_pre_nms_top_N == 6000
        checkpoint = train(spec, max_steps_per_epoch=2)["checkpoints"][0]
        int8 = Int8Options(batch_size=1, batches=2, cal_image_dir=str(traffic_lights / "images"))
        for data_type in (("int8",) if qat else ("fp32", "fp16", "int8")):
            output = str(tmp_path / f"{'qat_' if qat else ''}{data_type}.onnx")
            run_export(spec_path, checkpoint, output, data_type, int8=int8)  # fails on any rule
            exports.append(output)
    for path in exports:
        model = onnx.load(path)
        assert tensorrt_rules.check(model) == [], path
        view = tensorrt_rules.GraphView(model)
        top_ks = sorted(int(view.constant(n.input[1])[0]) for n in model.graph.node if n.op_type == "TopK")
        assert top_ks == [100, 300, 2160, 3840], (path, top_ks)  # RPN 6000 = 3840 + 2160; NMS keeps 300 / 100
