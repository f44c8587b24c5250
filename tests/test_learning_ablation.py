"""The rows of ``benchmarks/learning_ablation.py``: how the cumulative and side rows accumulate their settings, and
that the shipped Fluo-N2DL-HeLa recipe is the ablation's ``rate3e-4_long`` row trained on all frames (no training
here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import learning_ablation as ablation
from rshn_tf.config import load_config, preset_dir
from rshn_tf.experiments import changed_keys

HELA = "Fluo-N2DL-HeLa"


@pytest.fixture(scope="module")
def hela_rows() -> dict:
    return {resolved.row.name: resolved for resolved in ablation.resolve_rows(HELA)}


def test_cumulative_rows_carry_every_setting_above_them(hela_rows):
    rate = hela_rows["rate3e-4"]
    assert rate.train_sets == [*hela_rows["silver_truth"].train_sets, *ablation.RATE_3E4]
    assert "data.seg_sample_frames=any" in rate.train_sets and "data.silver_truth=true" in rate.train_sets
    assert (rate.model_row, rate.weights) == ("rate3e-4", "best")


def test_rows_without_training_settings_reuse_the_model_above_them(hela_rows):
    blob, final = hela_rows["blob_merge"], hela_rows["final_weights"]
    assert blob.model_row == final.model_row == "augmentation"
    assert "postprocessing.merge_mode=blob" in blob.predict_sets and blob.weights == "best"
    assert final.weights == "last" and final.predict_sets == blob.predict_sets


def test_side_rows_change_their_base_and_are_not_carried_into_later_rows(hela_rows):
    long = hela_rows["rate3e-4_long"]
    assert long.train_sets == [*hela_rows["rate3e-4"].train_sets, "training.iterations=14000"]
    assert (long.model_row, long.weights) == ("rate3e-4_long", "best")
    assert hela_rows["recipe"].weights == "last" and "model.filters=32" in hela_rows["recipe_centroid"].train_sets
    cumulative = [r for r in ablation.resolve_rows(HELA) if r.row.base is None]
    assert not any("model.filters=32" in r.train_sets or "training.iterations=14000" in r.train_sets
                   for r in cumulative)


def test_the_last_setting_wins_in_the_training_configuration(hela_rows):
    config, _ = ablation.training_config(HELA, Path("/nowhere"), hela_rows["rate3e-4_long"], 7000, 2000)
    assert config.training.iterations == 14000 and config.training.learning_rate == pytest.approx(3e-4)
    assert config.data.train_frames == [0, 60]  # the time split: frames 60-91 stay unseen


def test_shipped_hela_recipe_is_the_rate3e4_long_row_on_all_frames(hela_rows):
    row, _ = ablation.training_config(HELA, Path("/nowhere"), hela_rows["rate3e-4_long"], 7000, 2000)
    recipe = load_config(preset_dir() / "models" / f"{HELA}-cpu.yaml")
    # the row trains on frames 0-59, holds r_N 30.7 in neighbour_radius (paper_text resets the code radius) and
    # the ablation picks the weights itself; everything else is the same training
    assert changed_keys(row, recipe) == ["data.train_frames", "loss.neighbour_radius", "loss.code_neighbour_radius",
                                         "experiment.weights"]
    assert row.loss.radius == recipe.loss.radius == pytest.approx(30.7)
    assert recipe.experiment.weights == "best" and recipe.data.train_frames != row.data.train_frames
