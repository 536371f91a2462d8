"""Values every layer derives from a validated spec, computed here only: classes, input shape, box weights."""
import re

from frcnn_tf.proto import input_image_pb2

BACKGROUND = "background"
# Checkpoints are `<stem>.epoch<N><ext>` (TLT) or `<stem>.epoch_<N><ext>` (TAO); group 1 is N.
CHECKPOINT_NAME = re.compile(r"\.epoch_?([0-9]+)\.[^./]+$")


def class_names(dataset_config):
    """Model classes: sorted target names, then 'background' (the last id, as in TLT)."""
    return sorted(set(dataset_config.target_class_mapping.values())) + [BACKGROUND]


def object_class_names(names):
    """Model class names without the background class: what detections' class ids index."""
    return [name for name in names if name != BACKGROUND]


def class_ids(dataset_config):
    """{record class name (lower case): model class id}; ids index the sorted target names."""
    targets = class_names(dataset_config)[:-1]
    return {key.lower(): targets.index(value) for key, value in dataset_config.target_class_mapping.items()}


def input_channels(image_config):
    """Channels of the network input: 3 for RGB, 1 for GRAY_SCALE."""
    return 3 if image_config.image_type == input_image_pb2.RGB else 1


def input_shape(image_config):
    """(H, W, C) of the network input; H and W are None for size_min specs."""
    if image_config.WhichOneof("image_size_config") == "size_height_width":
        size = image_config.size_height_width
        return size.height, size.width, input_channels(image_config)
    return None, None, input_channels(image_config)


def regression_weights(training_config):
    """classifier_regr_std as (y, x, h, w), the order of the delta vectors."""
    stds = training_config.classifier_regr_std
    return stds["y"], stds["x"], stds["h"], stds["w"]


def deployed_section_name(spec):
    """The section whose settings the exported graph takes: inference_config, else evaluation_config."""
    return "inference_config" if spec.HasField("inference_config") else "evaluation_config"
