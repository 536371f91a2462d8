"""Read protobuf-text spec files into validated messages.

`load_experiment_spec` / `load_conversion_spec` return the messages after
parsing, `$VAR`/`~` expansion of path fields, TLT's "0 means 1" defaults and
validation. Every problem is one `SpecError` line: `PATH:LINE:COL: message`.
"""
import difflib
import os
import re

from google.protobuf import descriptor_pool, text_format

from frcnn_tf.proto import dataset_export_config_pb2, experiment_pb2, options_pb2
from frcnn_tf.errors import SpecError
from frcnn_tf.spec import validate
from frcnn_tf.spec.source import SpecSource

_UNKNOWN_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "([^"]+)"')
_UNKNOWN_ENUM = re.compile(r'Enum type "([\w.]+)" has no value named (\w+)')
_STRING = re.compile(r"""(['"])(?:\\.|(?!\1).)*\1""")


def _read_text(path):
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise SpecError(path, 1, 1, f"cannot read the spec file: {err.strerror or err}") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # the byte order mark Windows editors write
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise SpecError(path, line, column, "the spec is not UTF-8 text; save it as UTF-8") from None


def _suggestion(word, candidates):
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _explain_parse_error(message):
    """Rewrites protobuf's parse message in the user's terms, with a closest-name hint."""
    pool = descriptor_pool.Default()
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        type_name, field = unknown.groups()
        fields = [f.name for f in pool.FindMessageTypeByName(type_name).fields]
        short = type_name.rsplit(".", 1)[-1]
        return f"unknown field '{field}' in {short}{_suggestion(field, fields)}"
    unknown = _UNKNOWN_ENUM.search(message)
    if unknown:
        type_name, value = unknown.groups()
        values = [v.name for v in pool.FindEnumTypeByName(type_name).values]
        return f"unknown value '{value}' (expected one of {', '.join(values)}){_suggestion(value, values)}"
    quoted = re.match(r"^'\s*(\w+)\s*:.*': (.*)$", message)
    if quoted:  # protobuf quotes the whole offending line; keep the field name only
        return f"{quoted.group(1)}: {quoted.group(2)}"
    if message.startswith('Expected "}"') or message.startswith('Expected ">"'):
        return "unexpected end of the spec: a '{' block is not closed"
    return message.replace("frcnn_tf.", "")


def _bad_string(text):
    """(line, column, why) of the first string literal that does not decode, or None.

    protobuf reports such a string at the token after it, often on the next line."""
    for number, line in enumerate(text.split("\n"), 1):  # line numbers as text_format counts them
        for found in _STRING.finditer(line):
            try:
                text_format.Tokenizer([found.group(0)]).ConsumeString()
            except text_format.ParseError as err:
                return number, found.start() + 1, str(err).split("Couldn't parse string: ", 1)[-1]
    return None


def _parse(path, message):
    text = _read_text(path)
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        raw = str(err)
        raw = re.sub(r"^\d+:\d+ : ", "", raw)
        bad_string = _bad_string(text) if "Couldn't parse string" in raw else None
        if bad_string:
            line, column, why = bad_string
            raise SpecError(path, line, column, f"invalid string ({why}); check its escapes") from None
        line, column = err.GetLine() or 1, err.GetColumn() or 1
        raise SpecError(path, line, column, _explain_parse_error(raw)) from None
    return SpecSource.from_text(path, text)


def _expand_path(value, spec_dir):
    value = os.path.expanduser(os.path.expandvars(value))
    if value and not os.path.isabs(value):
        value = os.path.normpath(os.path.join(spec_dir, value))
    return value


def _expand_paths(message, spec_dir):
    """Expands fields marked `(path)` / `(path_glob)` in the schema, recursively."""
    for field, value in message.ListFields():
        options = field.GetOptions()
        is_path = options.Extensions[options_pb2.path] or options.Extensions[options_pb2.path_glob]
        if field.type == field.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue
            for item in value if field.is_repeated else [value]:
                _expand_paths(item, spec_dir)
        elif is_path:
            setattr(message, field.name, _expand_path(value, spec_dir))


def parse_experiment_spec(path):
    """Returns (Experiment, SpecSource); raises SpecError."""
    spec = experiment_pb2.Experiment()
    source = _parse(path, spec)
    spec.enc_key = os.path.expandvars(spec.enc_key)
    _expand_paths(spec, os.path.dirname(os.path.abspath(path)))
    validate.experiment(spec, source)
    return spec, source


def parse_conversion_spec(path):
    """Returns (DatasetExportConfig, SpecSource); raises SpecError."""
    spec = dataset_export_config_pb2.DatasetExportConfig()
    source = _parse(path, spec)
    _expand_paths(spec, os.path.dirname(os.path.abspath(path)))
    validate.conversion(spec, source)
    return spec, source


def load_experiment_spec(path):
    """The validated `frcnn_tf.Experiment` message of an experiment spec file."""
    return parse_experiment_spec(path)[0]


def load_conversion_spec(path):
    """The validated `frcnn_tf.DatasetExportConfig` message of a conversion spec file."""
    return parse_conversion_spec(path)[0]


def detect_kind(path):
    """'conversion' if the file's top-level fields belong to a conversion spec, else 'experiment'."""
    conversion_only = {f.name for f in dataset_export_config_pb2.DatasetExportConfig.DESCRIPTOR.fields}
    conversion_only -= {f.name for f in experiment_pb2.Experiment.DESCRIPTOR.fields}
    tokenizer = text_format.Tokenizer(_read_text(path).split("\n"))
    depth = 0
    try:
        while not tokenizer.AtEnd():
            token = tokenizer.token
            if depth == 0 and token in conversion_only:
                return "conversion"
            depth += (token in ("{", "<")) - (token in ("}", ">"))
            tokenizer.NextToken()
    except text_format.ParseError:
        pass  # the experiment parser reports it with its position
    return "experiment"
