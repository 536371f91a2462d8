"""Data: KITTI labels, TFRecord conversion and the tf.data input pipeline."""
