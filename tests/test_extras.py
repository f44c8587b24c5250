"""Optional dependencies (rshn_tf.extras): hdbscan and matplotlib come with extras of rshn-tf; a feature that needs
a missing one stops early with one message naming the package and the pip command, never an ImportError traceback.

A package is made absent by the ``hide_package`` fixture (``None`` entries in ``sys.modules``).
"""

from __future__ import annotations

import ast
import configparser

import numpy as np
import pytest

from rshn_tf import extras
from rshn_tf.cli import main
from rshn_tf.config import load_config
from rshn_tf.extras import MissingPackage
from rshn_tf.model_folder import ModelFolder
from tests.conftest import REPO_ROOT
from tests.test_table3 import _fake_ctc

HDBSCAN_HINT = 'pip install "rshn-tf[hdbscan]" (in a source checkout: pip install ".[hdbscan]")'


def hdbscan_config(*overrides: str):
    return load_config("DIC-C2DH-HeLa", ["postprocessing.clustering=hdbscan", *overrides])


# ---------------------------------------------------------------------------------------------------------------
# The packaging contract


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg", encoding="utf-8")
    return parser


def _names(lines: str) -> set[str]:
    return {line.split(">")[0].split("=")[0].split(";")[0].strip().lower() for line in lines.splitlines()
            if line.strip() and not line.strip().startswith("#")}


def test_optional_packages_are_extras_and_the_tests_install_them():
    cfg = _setup_cfg()
    base = _names(cfg.get("options", "install_requires"))
    for package, extra in extras.EXTRAS.items():
        assert package not in base, f"{package} is a base requirement"
        assert package in _names(cfg.get("options.extras_require", extra)), (package, extra)
        assert package in _names(cfg.get("options.extras_require", "test")), package


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO_ROOT).as_posix() for package in ("rshn_tf", "data_io",
                                                                                             "ctc_submission")
                                        for p in (REPO_ROOT / package).rglob("*.py")))
def test_no_module_imports_an_optional_package_at_its_top(path):
    """Importing any module of the project works without the optional packages (they are imported in functions)."""
    tree = ast.parse((REPO_ROOT / path).read_text(encoding="utf-8"))
    for node in tree.body:
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert not [n for n in names if n.split(".")[0] in extras.EXTRAS], f"{path}:{node.lineno}"


# ---------------------------------------------------------------------------------------------------------------
# The helpers


def test_require_and_importing_name_the_package_and_the_pip_command(hide_package):
    extras.require("hdbscan", "HDBSCAN")  # installed in the test environment
    hide_package("hdbscan")
    assert not extras.available("hdbscan")
    with pytest.raises(MissingPackage) as raised:
        extras.require("hdbscan", "HDBSCAN")
    assert str(raised.value) == ("HDBSCAN needs the 'hdbscan' package, which is not installed; install it with "
                                 + HDBSCAN_HINT)
    assert raised.value.package == "hdbscan"
    with pytest.raises(MissingPackage, match=r"the chart needs the 'matplotlib' package.*rshn-tf\[plot\]"):
        with extras.importing("matplotlib", "the chart"):
            hide_package("matplotlib")
            import matplotlib.pyplot  # noqa: F401


def test_a_broken_installation_is_reported_with_the_librarys_message():
    with pytest.raises(MissingPackage, match=r"is installed but cannot be imported \(boom\); reinstall it"):
        with extras.importing("hdbscan", "HDBSCAN"):
            raise ImportError("boom")


# ---------------------------------------------------------------------------------------------------------------
# hdbscan: early, and at first use


def test_hdbscan_clustering_without_the_package_fails_at_first_use(hide_package):
    from rshn_tf.clustering import hdbscan_clusters
    from rshn_tf.fast_hdbscan import reference_labels

    features = np.random.default_rng(0).normal(size=(60, 3))
    hide_package("hdbscan")
    with pytest.raises(MissingPackage, match=r"postprocessing.clustering: hdbscan\) needs the 'hdbscan' package"):
        hdbscan_clusters(features, 5)
    with pytest.raises(MissingPackage, match=r"rshn-tf\[hdbscan\]"):
        reference_labels(features, 5)


def test_check_config_says_what_to_install_in_one_line(hide_package, capsys):
    args = ["check-config", "DIC-C2DH-HeLa", "--set", "postprocessing.clustering=hdbscan"]
    assert main(args) == 0
    assert "OK  DIC-C2DH-HeLa" in capsys.readouterr().out
    hide_package("hdbscan")
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "rshn check-config: error: --set postprocessing.clustering=hdbscan: postprocessing.clustering: hdbscan needs "
        f"the 'hdbscan' package, which is not installed; install it with {HDBSCAN_HINT}, or choose "
        "postprocessing.clustering: mean_shift\n")
    assert "OK" not in captured.out
    assert main(["check-config", "DIC-C2DH-HeLa"]) == 0  # mean shift needs no optional package


def test_postprocessing_and_prediction_stop_before_any_work(hide_package, tmp_path, capsys):
    from rshn_tf.postprocess import PostProcessor
    from rshn_tf.predict_folder import predict

    config = hdbscan_config()
    model = tmp_path / "model"
    ModelFolder(model).write_config(config)
    hide_package("hdbscan")
    with pytest.raises(MissingPackage, match="hdbscan"):
        PostProcessor(config, (64, 64))
    # the input folders do not exist: the missing package is reported first, before the network loads
    with pytest.raises(MissingPackage, match=rf"{model / 'config.yaml'}: postprocessing.clustering: hdbscan needs"):
        predict(model, tmp_path / "frames", tmp_path / "result")
    assert main(["postprocess", str(tmp_path / "embeddings"), str(tmp_path / "res"), "--config", "DIC-C2DH-HeLa",
                 "--original-shape", "64", "64", "--set", "postprocessing.clustering=hdbscan"]) == 2
    assert "'hdbscan' package, which is not installed" in capsys.readouterr().err
    assert not (tmp_path / "result").exists() and not (tmp_path / "res").exists()


def test_experiments_and_table3_stop_before_training(hide_package, tmp_path, capsys):
    from rshn_tf.experiments import run_experiment

    data = _fake_ctc(tmp_path / "ctc", ["DIC-C2DH-HeLa"])
    hide_package("hdbscan")
    config = load_config("DIC-C2DH-HeLa", [f"data.dataset_dir={data / 'DIC-C2DH-HeLa'}"])
    variant = hdbscan_config()
    with pytest.raises(MissingPackage, match="hdbscan"):
        run_experiment(config, tmp_path / "run", variants={"hdbscan": variant})
    assert not (tmp_path / "run").exists()

    out = tmp_path / "t3"
    assert main(["table3", "--data", str(data), "--out", str(out), "--dry-run"]) == 0  # listing needs nothing
    capsys.readouterr()
    assert main(["table3", "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rshn table3: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "rshn_hdbscan.yaml: postprocessing.clustering: hdbscan needs the 'hdbscan' package" in err
    assert err.endswith(f"{HDBSCAN_HINT}, or leave the row rshn_hdbscan out with --rows\n")
    assert not out.exists()
