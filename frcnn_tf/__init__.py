"""frcnn_tf: TLT 3.0-compatible Faster R-CNN workflow on TensorFlow 2 / Keras 2.

tensorflow-model-optimization needs Keras 2, so the package selects tf_keras
before anything imports TensorFlow.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ INFO lines (CPU features, oneDNN) are noise for a command-line tool.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"
