"""Where each field of a protobuf-text spec stands, for error messages.

The text has already been accepted by `text_format`, so this walker only needs
to follow the grammar, not check it.
"""
import dataclasses

from google.protobuf import text_format

from frcnn_tf.errors import SpecError


@dataclasses.dataclass
class Node:
    """One field occurrence: 1-based position, raw value token (scalars), children."""

    name: str
    line: int
    column: int
    value: str = None
    children: list = dataclasses.field(default_factory=list)

    def named(self, name):
        return [child for child in self.children if child.name == name]


def _unquote(token):
    if token and token[0] in "'\"" and token[-1] == token[0]:
        return token[1:-1]
    return token


class _Walker:
    def __init__(self, text):
        tokenizer = text_format.Tokenizer(text.split("\n"))  # as text_format.Parse splits: only \n ends a line
        self.tokens = []
        while not tokenizer.AtEnd():
            self.tokens.append((tokenizer.token, tokenizer._line + 1, tokenizer._column + 1))
            tokenizer.NextToken()
        self.i = 0

    def peek(self):
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def take(self):
        token = self.tokens[self.i]
        self.i += 1
        return token

    def message(self, node, closer):
        while self.peek() is not None:
            token = self.peek()
            if token == closer:
                self.i += 1
                return
            if token in (",", ";"):
                self.i += 1
                continue
            self.field(node)

    def field(self, parent):
        name, line, column = self.take()
        if name == "[":  # extension or Any type URL
            parts = []
            while self.peek() not in ("]", None):
                parts.append(self.take()[0])
            self.i += 1
            name = "[" + "".join(parts) + "]"
        if self.peek() == ":":
            self.i += 1
        if self.peek() == "[":
            self.i += 1
            while self.peek() not in ("]", None):
                if self.peek() == ",":
                    self.i += 1
                    continue
                self.value(parent, name, line, column)
            self.i += 1
        else:
            self.value(parent, name, line, column)

    def value(self, parent, name, line, column):
        token = self.peek()
        if token in ("{", "<"):
            self.i += 1
            node = Node(name, line, column)
            parent.children.append(node)
            self.message(node, "}" if token == "{" else ">")
            return
        value = self.take()[0]
        while value[:1] in ("'", '"') and (self.peek() or "")[:1] in ("'", '"'):
            value = value[:-1] + self.take()[0][1:]  # adjacent strings concatenate
        parent.children.append(Node(name, line, column, value))


@dataclasses.dataclass
class SpecSource:
    """A parsed spec file's path and field positions."""

    path: str
    root: Node

    @classmethod
    def from_text(cls, path, text):
        walker = _Walker(text)
        root = Node("", 1, 1)
        walker.message(root, None)
        return cls(path, root)

    def locate(self, field_path, index=0, key=None):
        """Best (line, column) for `a.b.c`; falls back to the nearest present ancestor.

        `index` picks the occurrence of the last repeated field; `key` picks the map
        entry whose `key` equals it.
        """
        node = self.root
        for depth, name in enumerate(field_path.split(".") if field_path else []):
            found = node.named(name)
            if not found:
                break
            last = depth == len(field_path.split(".")) - 1
            if last and key is not None:
                found = [n for n in found if any(_unquote(k.value) == key for k in n.named("key"))] or found
                node = found[0]
            elif last:
                node = found[min(index, len(found) - 1)]
            else:
                node = found[0]
        return node.line, node.column

    def error(self, field_path, message, index=0, key=None):
        """A SpecError located at `field_path` (dotted, from the top-level message)."""
        line, column = self.locate(field_path, index=index, key=key)
        return SpecError(self.path, line, column, message)
