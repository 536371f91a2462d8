"""Spec files: parse, validate and summarise (the schema is frcnn_tf/proto/*.proto)."""
from frcnn_tf.spec.loader import (
    detect_kind,
    load_conversion_spec,
    load_experiment_spec,
    parse_conversion_spec,
    parse_experiment_spec,
)

__all__ = [
    "detect_kind",
    "load_conversion_spec",
    "load_experiment_spec",
    "parse_conversion_spec",
    "parse_experiment_spec",
]
