"""Mutated spec text makes the loader raise SpecError or succeed; nothing else."""
import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from conftest import REPO
from frcnn_tf.errors import SpecError
from frcnn_tf.spec import load_conversion_spec, load_experiment_spec

BASES = [(REPO / "specs" / name).read_text() for name in
         ("frcnn_resnet18_train.txt", "frcnn_resnet18_grayscale.txt")]
CONVERSION = (REPO / "specs" / "kitti_convert.txt").read_text()
NOISE = st.text(alphabet=st.sampled_from(list("{}<>[]:;,'\"#\\ \n\t-+.eE0123456789xabz_") + ["\x00", "é", "\ud7ff"]),
                max_size=12)


@st.composite
def mutated(draw, bases):
    text = draw(st.sampled_from(bases))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["delete", "insert", "replace", "duplicate_line", "number"]))
        if kind == "delete":
            text = text[:position] + text[position + draw(st.integers(1, 40)):]
        elif kind == "insert":
            text = text[:position] + draw(NOISE) + text[position:]
        elif kind == "replace":
            text = text[:position] + draw(NOISE) + text[position + draw(st.integers(1, 8)):]
        elif kind == "duplicate_line":
            lines = text.splitlines(keepends=True)
            if lines:
                index = draw(st.integers(0, len(lines) - 1))
                lines.insert(draw(st.integers(0, len(lines))), lines[index])
                text = "".join(lines)
        else:
            number = draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70)))
            digits = [i for i, ch in enumerate(text) if ch.isdigit()]
            if digits:
                start = digits[draw(st.integers(0, len(digits) - 1))]
                end = start
                while end < len(text) and (text[end].isdigit() or text[end] == "."):
                    end += 1
                text = text[:start] + repr(number) + text[end:]
    return text


def _load(loader, tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "spec.txt"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        loader(str(path))
    except SpecError as err:
        assert "\n" not in str(err)
        assert str(err).startswith(f"{path}:")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated(BASES))
def test_mutated_experiment_specs_raise_only_spec_error(tmp_path_factory, text):
    _load(load_experiment_spec, tmp_path_factory, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated([CONVERSION]))
def test_mutated_conversion_specs_raise_only_spec_error(tmp_path_factory, text):
    _load(load_conversion_spec, tmp_path_factory, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_arbitrary_text_raises_only_spec_error(tmp_path_factory, text):
    _load(load_experiment_spec, tmp_path_factory, text)


def test_a_record_separator_in_a_comment_is_not_a_line_break(tmp_path_factory):
    # str.splitlines() breaks lines at \x1e; protobuf's text format only at \n (hypothesis found it)
    _load(load_experiment_spec, tmp_path_factory, "#\x1e0")
