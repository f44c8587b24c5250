"""Exporting a model folder (``rshn export``): only the config, the chosen weights and the training facts."""

from __future__ import annotations

import json

import pytest
import yaml

from rshn_tf.cli import main
from rshn_tf.errors import RshnError
from rshn_tf.model_folder import MODEL_INFO_FILE, ModelFolder, export_model
from tests.test_packager import fake_model


def test_export_keeps_only_the_config_the_chosen_weights_and_the_training_facts(tmp_path):
    model = fake_model(tmp_path / "run" / "model", "DIC-C2DH-HeLa")
    out = export_model(model, tmp_path / "models" / "dic", weights="last")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", MODEL_INFO_FILE, "weights.last.weights.h5"]
    assert (out / "weights.last.weights.h5").read_bytes() == b"last weights of model"
    info = json.loads((out / MODEL_INFO_FILE).read_text())
    assert info["weights"] == "last" and info["training"] == {"step": 40, "iterations": 40, "best_step": 35,
                                                               "finished": True}
    config = ModelFolder(out).read_config()
    assert config.data.dataset_dir is None and config.data.dataset == "DIC-C2DH-HeLa"
    assert str(tmp_path) not in (out / "config.yaml").read_text()
    again = export_model(out, tmp_path / "models" / "copy", weights="last")  # an export of an export
    assert json.loads((again / MODEL_INFO_FILE).read_text())["training"] == info["training"]
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]


def test_export_refuses_an_existing_folder_and_missing_weights(tmp_path):
    model = fake_model(tmp_path / "model")
    out = export_model(model, tmp_path / "out", weights="best")
    with pytest.raises(RshnError, match="already exists.*--overwrite"):
        export_model(model, out, weights="last")
    export_model(model, out, weights="last", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", MODEL_INFO_FILE, "weights.last.weights.h5"]
    (model / "weights.best.weights.h5").unlink()
    with pytest.raises(RshnError, match=r"weights.best.weights.h5: missing"):
        export_model(model, tmp_path / "other", weights="best")
    assert not (tmp_path / "other").exists()


def test_export_verb_applies_prediction_overrides_but_not_model_changes(tmp_path, capsys):
    model = fake_model(tmp_path / "model")
    out = tmp_path / "exported"
    assert main(["export", "--model", str(model), "--out", str(out), "--weights", "best",
                 "--set", "postprocessing.bandwidth=0.05"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["postprocessing"]["bandwidth"] == 0.05 and (out / "weights.best.weights.h5").is_file()
    assert main(["export", "--model", str(model), "--out", str(tmp_path / "bad"), "--set", "model.filters=8"]) == 2
    assert "model.*" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_default_weights_are_best_when_present_else_the_only_ones_exported(tmp_path):
    model = fake_model(tmp_path / "model")
    assert ModelFolder(model).default_weights() == "best"
    exported = export_model(model, tmp_path / "exported", weights="last")
    assert ModelFolder(exported).default_weights() == "last"
    (exported / "weights.last.weights.h5").unlink()
    with pytest.raises(RshnError, match="no weights"):
        ModelFolder(exported).default_weights()
