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


#: Files whose comments and docstrings cite docs/fidelity.md, and the user docs that link to it.
_CITING_FILES = ("rshn_tf/**/*.py", "data_io/**/*.py", "ctc_submission/**/*.py", "benchmarks/**/*.py",
                 "tests/**/*.py", "experiments/**/*.yaml", "docs/**/*.md", "README.md")
_SECTION = r"§\d+(?:\.\d+)?"
_CITATION = re.compile(rf"fidelity\.md\)?\s+((?:{_SECTION}(?:\s*[–-]\s*{_SECTION})?(?:,\s*(?=§))?)+)")


def _cited_fidelity_sections() -> dict[str, set[str]]:
    """Section -> the files citing it as ``docs/fidelity.md §N.M`` (lists and ranges of sections included)."""
    cited: dict[str, set[str]] = {}
    for pattern in _CITING_FILES:
        for path in REPO_ROOT.glob(pattern):
            if path.name == "fidelity.md" or ".venv" in path.parts:
                continue
            for match in _CITATION.finditer(path.read_text(encoding="utf-8")):
                for section in re.findall(_SECTION, match.group(1)):
                    cited.setdefault(section, set()).add(str(path.relative_to(REPO_ROOT)))
    return cited


def test_every_cited_fidelity_section_exists():
    headings = set(re.findall(rf"^#{{2,4}} ({_SECTION}) ",
                              (REPO_ROOT / "docs" / "fidelity.md").read_text(encoding="utf-8"), flags=re.M))
    cited = _cited_fidelity_sections()
    assert len(cited) > 20, "the docstrings should cite docs/fidelity.md"
    missing = {section: sorted(files) for section, files in cited.items() if section not in headings}
    assert missing == {}


def test_no_file_cites_the_absent_reference_notes():
    offenders = []
    for pattern in _CITING_FILES:
        for path in REPO_ROOT.glob(pattern):
            if ".venv" in path.parts:
                continue
            text = path.read_text(encoding="utf-8")
            if re.search(r"reference[ ]notes|\bnotes[ ]§", text):  # [ ]: this line does not match itself
                offenders.append(str(path.relative_to(REPO_ROOT)))
    assert offenders == []


def _markdown_anchors(path) -> set[str]:
    """GitHub's anchors of the headings of a markdown file (code blocks skipped)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_relative_links_of_the_user_docs_resolve():
    pages = [REPO_ROOT / "README.md", REPO_ROOT / "CHANGELOG.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in _markdown_anchors(dest)):
                broken.append(f"{page.relative_to(REPO_ROOT)}: {target}")
    assert broken == []
