"""Tests of the repository's contract with CI and users: README commands, CI script, no data committed, no import
cycle between the project's modules."""

from __future__ import annotations

import ast
import graphlib
import re
import subprocess

import pytest

from tests.conftest import REPO_ROOT


def readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quickstart)


def test_quickstart_has_exactly_two_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("rshn demo")
    assert commands[1].endswith("pytest")


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci
    assert "set -euo pipefail" in ci  # a failing pytest (also exit status 5) fails CI


def test_no_ctc_data_is_committed():
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    offending = [f for f in files.splitlines()
                 if re.search(r"(man_track|man_seg)\d+\.tif$|/t\d{3,4}\.tif$", f)]
    assert offending == []


def _project_imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its code (lazy imports in functions included)."""
    packages = ("rshn_tf", "data_io", "ctc_submission")
    modules = {}
    for package in packages:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[name] = {other for other in imported & modules.keys() if other != name and other not in packages}
    return graph


def test_project_modules_import_each_other_without_a_cycle():
    graph = _project_imports()
    assert {"ctc_submission.check", "ctc_submission.packager", "rshn_tf.inference"} <= graph.keys()
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")
