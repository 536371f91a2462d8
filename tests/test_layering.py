"""Imports flow one way: leaves -> spec/data/model -> workflows -> cli (README, Layout)."""
import ast
import pathlib

import frcnn_tf

PACKAGE = pathlib.Path(frcnn_tf.__file__).parent
# Workflows and front ends: nothing below them may import these.
UPPER = ("frcnn_tf.train", "frcnn_tf.export", "frcnn_tf.cli", "frcnn_tf.quickstart", "frcnn_tf.evaluate",
         "frcnn_tf.inference", "frcnn_tf.prune")
LOWER_PACKAGES = ("model", "data", "spec")
# Top-level modules that are workflows themselves; every other top-level module is a leaf.
TOP_LEVEL_WORKFLOWS = {"quickstart.py", "evaluate.py", "inference.py", "prune.py"}


def _first_party_imports(path):
    """(line, imported module) of every frcnn_tf import in a file, at any depth (function-level too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("frcnn_tf"):
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("frcnn_tf")]
    return found


def _lower_modules():
    for name in LOWER_PACKAGES:
        yield from (PACKAGE / name).rglob("*.py")
    yield from (path for path in PACKAGE.glob("*.py") if path.name not in TOP_LEVEL_WORKFLOWS)


def _reaches_up(module):
    return any(module == upper or module.startswith(upper + ".") for upper in UPPER)


def test_lower_layers_never_import_workflows_or_the_cli():
    offences = [f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}"
                for path in _lower_modules() for line, module in _first_party_imports(path) if _reaches_up(module)]
    assert not offences, "\n".join(offences)


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from frcnn_tf.export.tensorrt_engine import build_engine\n")
    assert [module for _, module in _first_party_imports(bad) if _reaches_up(module)] == [
        "frcnn_tf.export.tensorrt_engine.build_engine"]


def test_workflows_do_not_import_the_cli():
    workflows = [*(PACKAGE / "train").rglob("*.py"), *(PACKAGE / "export").rglob("*.py"),
                 *(PACKAGE / name for name in TOP_LEVEL_WORKFLOWS)]
    offences = [f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}" for path in workflows
                for line, module in _first_party_imports(path) if module.startswith("frcnn_tf.cli")]
    assert not offences, "\n".join(offences)
