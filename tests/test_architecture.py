"""Tests of the module map in docs/architecture.md: the network engine knows nothing of what happens to its pairs,
and the post-processing side never imports TensorFlow."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def imported_modules(module: str) -> set[str]:
    """Every module a source file imports, at its top or inside functions."""
    path = REPO_ROOT / (module.replace(".", "/") + ".py")
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_engine_does_not_import_the_application_side():
    """rshn_tf.inference maps frames to pair embeddings; post-processing, files and model folders are its callers'."""
    forbidden = {"rshn_tf.postprocess", "rshn_tf.model_folder", "rshn_tf.run_folder", "rshn_tf.output_lock",
                 "rshn_tf.label_store", "rshn_tf.api", "rshn_tf.predict_folder", "ctc_submission.writer"}
    assert imported_modules("rshn_tf.inference") & forbidden == set()


def test_inference_and_post_processing_share_one_geometry():
    """The network grid and the tile grid are computed in rshn_tf.geometry only."""
    for module in ("rshn_tf.inference", "rshn_tf.postprocess", "rshn_tf.api", "rshn_tf.predict_folder",
                   "ctc_submission.packager"):
        source = (REPO_ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        assert "tile_grid(" not in source, module
    assert "network_shape(" not in (REPO_ROOT / "rshn_tf" / "postprocess.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("module", ["rshn_tf.postprocess", "rshn_tf.geometry", "rshn_tf.api", "rshn_tf.predict_folder",
                                    "rshn_tf.inference", "rshn_tf"])
def test_importing_does_not_start_tensorflow(module):
    """Post-processing must run without TensorFlow; the API and the engine import it only when the network runs."""
    code = f"import sys, {module}; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
