"""TensorRT's layer limits that shape the exported graph (a leaf: the model and export both read them).

Sources: TensorRT `include/NvInfer.h` (10.x, 11.x) and onnx-tensorrt `docs/operators.md`.
"""
MAX_TOP_K = 3840  # ITopKLayer::setK: "Currently only values up to 3840 are supported"; operators.md TopK
NMS_MAX_BOXES = 5000  # INMSLayer considers the top 5000 boxes of each image (2000 on SM 5.3/6.2)
# Explicit INT8 (IQuantizeLayer, onnx-tensorrt QuantDequantLinearHelper): symmetric, zero point 0,
# activations clamp to [-128, 127]; weights use the narrow range [-127, 127] (TensorRT's QAT toolkits).
INT8_MIN, INT8_MAX = -128, 127
WEIGHT_INT8_MAX = 127
MIN_SCALE = 1e-12  # scale of an all-zero tensor or channel (TensorRT needs positive scales)
