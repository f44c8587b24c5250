"""Tests of the repository's contract with CI and users: README commands, CI script, no data committed."""

from __future__ import annotations

import re
import subprocess

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
