"""Export: ONNX graphs for TensorRT / onnxruntime."""
