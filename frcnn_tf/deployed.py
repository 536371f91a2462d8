"""What deployment needs below the workflows: TensorRT's lazy import and exported ONNX metadata.

Both the detectors (evaluate, inference) and the engine builder (export) use these; neither
imports TensorFlow.
"""
import json

from frcnn_tf.errors import FrcnnError

INSTALL_HINT = ("install TensorRT 10 or 11 with its Python bindings (pip install tensorrt, on a machine with an "
                "NVIDIA GPU and driver)")


class TensorRTMissing(FrcnnError):
    """TensorRT is not installed here; the CLI exits with status 2."""

    exit_code = 2


def import_tensorrt(ready=""):
    """The `tensorrt` module, or TensorRTMissing naming what is ready without it."""
    try:
        import tensorrt
    except ImportError:  # also the PyPI stub that fails to fetch its libraries
        raise TensorRTMissing(f"TensorRT is not installed: {INSTALL_HINT}. {ready}".strip()) from None
    except Exception as err:  # the stub raises its own errors at import
        raise TensorRTMissing(f"TensorRT could not be loaded ({err}): {INSTALL_HINT}. {ready}".strip()) from None
    return tensorrt


def read_onnx(path):
    """(onnx ModelProto without external data, its frcnn_tf metadata dict) of an exported model."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # protobuf decode errors have many types
        raise FrcnnError(f"{path}: cannot load the ONNX model ({err})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "frcnn_tf" not in props:
        raise FrcnnError(f"{path}: not an ONNX model exported by frcnn_tf (no frcnn_tf metadata)")
    return model, json.loads(props["frcnn_tf"])
