"""The Faster R-CNN Keras model (ResNet backbone, RPN, proposals, RoI crop, block-4 head)."""
