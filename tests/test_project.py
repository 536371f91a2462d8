"""Project plumbing: CI runs the README's test command; the package selects Keras 2."""
import os
import re
import subprocess
import sys

from conftest import REPO


def _readme_commands():
    """The one-line code blocks of the README's set-up section (from "## Set-up" to the next "## ")."""
    setup = re.search(r"^## Set-up.*?(?=^## )", (REPO / "README.md").read_text(), re.M | re.S)
    return re.findall(r"```\n(.+?)\n```", setup.group(0))


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2
    main_command, test_command = commands
    assert "quickstart" in main_command
    assert "pytest" in test_command
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line and not line.startswith("#")]
    assert ci_lines[-1] == test_command


def test_package_selects_legacy_keras():
    code = "import os, frcnn_tf; print(os.environ['TF_USE_LEGACY_KERAS'])"
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.strip() == "1"
