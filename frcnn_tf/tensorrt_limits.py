"""TensorRT's layer limits that shape the exported graph (a leaf: the model and export both read them).

Sources: TensorRT `include/NvInfer.h` (10.x, 11.x) and onnx-tensorrt `docs/operators.md`.
"""
MAX_TOP_K = 3840  # ITopKLayer::setK: "Currently only values up to 3840 are supported"; operators.md TopK
NMS_MAX_BOXES = 5000  # INMSLayer considers the top 5000 boxes of each image (2000 on SM 5.3/6.2)
