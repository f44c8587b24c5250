"""Shared pytest fixtures: where the real CTC data lives, and temporary CTC layouts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def ctc_data_root() -> Path | None:
    """Return the folder holding the real CTC datasets, or None when it is absent.

    Looks at ``$RSHN_CTC_DATA`` first, then for ``shared/data/ctc`` beside the repository or beside one of its
    parent folders (so git worktrees nested one level deeper find it too).
    """
    env = os.environ.get("RSHN_CTC_DATA")
    candidates = [Path(env)] if env else []
    candidates += [parent / "shared" / "data" / "ctc" for parent in REPO_ROOT.parents]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def ctc_root() -> Path:
    """The real CTC data folder; skips the test with a clear reason when it is absent."""
    root = ctc_data_root()
    if root is None:
        pytest.skip("real CTC data not found: set $RSHN_CTC_DATA or put it at ../shared/data/ctc")
    return root


@pytest.fixture(scope="session")
def ctc_dataset(ctc_root):
    """Factory: ``ctc_dataset('DIC-C2DH-HeLa')`` returns that dataset's folder or skips when it is missing."""

    def get(name: str) -> Path:
        path = ctc_root / name
        if not path.is_dir():
            pytest.skip(f"CTC dataset {name} not found in {ctc_root}")
        return path

    return get


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small synthetic CTC dataset (sequences 01 and 02, 24 frames of 128x128, seed 0), written once per session."""
    from data_io.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "Synthetic", frames=24, size=(128, 128),
                                   seed=0)


@pytest.fixture
def hide_package(monkeypatch):
    """Factory: ``hide_package('hdbscan')`` makes that package absent for the rest of the test, as if it were not
    installed: ``None`` in ``sys.modules`` for it and its submodules already imported, so that importing it raises
    ModuleNotFoundError and ``importlib.util.find_spec`` returns None."""
    import sys

    def hide(package: str) -> None:
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.setitem(sys.modules, package, None)

    return hide
