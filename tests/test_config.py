"""Tests of the configuration schema: paper defaults, presets, layering, overrides and bad YAML."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from rshn_tf.config import (
    PAPER_DATASETS,
    Config,
    config_from_dict,
    list_presets,
    load_config,
    save_config,
)
from rshn_tf.errors import RshnError

# Table 1 of the paper: resampled size (width x height), t_size, r_N; and the code's border band (docs/fidelity.md §10).
TABLE1 = {
    "DIC-C2DH-HeLa": ((256, 256), 500, 50, 50),
    "Fluo-C2DL-MSC": ((256, 256), 100, 150, 50),
    "Fluo-N2DH-GOWT1": ((512, 512), 100, 50, 50),
    "Fluo-N2DL-HeLa": ((1100, 700), 50, 10, 25),
    "PhC-C2DH-U373": ((512, 384), 500, 50, 50),
    "Fluo-N2DH-SIM+": ((512, 512), 100, 50, 0),
}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_papers_values():
    c = Config()
    assert (c.model.stacks, c.model.levels, c.model.filters, c.model.embedding_size) == (2, 7, 64, 16)
    assert c.data.tile_size == [256, 256] and c.inference.tile_overlap == 128 and c.inference.tile_size is None
    assert c.data.sequence_length == 8 and c.data.smoothing_sigma == 1.0
    assert c.data.normalization_percentiles == [0.1, 99.9]
    assert c.model.l2_factor == 1e-5
    assert (c.training.iterations, c.training.batch_size, c.training.optimizer) == (60000, 1, "adam")
    assert (c.training.learning_rate, c.training.learning_rate_final) == (1e-4, 1e-5)
    assert c.training.iterations * c.training.learning_rate_drop_fraction == 30000
    assert (c.postprocessing.bandwidth, c.postprocessing.coordinate_factor) == (0.1, 0.005)
    assert c.postprocessing.background_threshold == 0.5
    assert (c.tracking.min_track_length, c.tracking.merge_search_frames) == (2, 10)
    a = c.augmentation
    assert (a.mirror_probability, a.rotation_range, a.scale_range) == (0.5, [-180.0, 180.0], [0.5, 1.5])
    assert (a.elastic_grid, a.elastic_displacement, a.elastic_spline_order) == ([6, 6], 10.0, 3)
    assert (a.intensity_shift, a.intensity_scale) == ([-0.65, 0.65], [0.35, 1.65])
    assert c.loss.variant == "paper" and c.loss.hourglass_weights == [1.0, 1.0]


@pytest.mark.parametrize("dataset", PAPER_DATASETS)
def test_presets_hold_table1(dataset):
    (width, height), t_size, r_n, band = TABLE1[dataset]
    c = load_config(dataset)
    assert c.data.dataset == dataset
    assert c.data.resampled_size == [height, width]
    assert c.postprocessing.min_size == t_size
    assert c.loss.neighbour_radius == r_n
    assert c.data.border_band == band


def test_every_paper_dataset_has_a_preset():
    assert set(PAPER_DATASETS) <= set(list_presets())


def test_base_layering_and_set_overrides(tmp_path):
    child = write(tmp_path, "child.yaml", "base: DIC-C2DH-HeLa\npostprocessing:\n  bandwidth: 0.05\n")
    grandchild = write(tmp_path, "grand.yaml", "base: child.yaml\ntraining:\n  iterations: 40000\n")
    c = load_config(grandchild, ["tracking.parent_dilation=5", "data.train_sequences=[1]"])
    assert c.data.dataset == "DIC-C2DH-HeLa"  # from the preset two levels down
    assert c.postprocessing.bandwidth == 0.05  # from child
    assert c.training.iterations == 40000  # from grandchild
    assert c.tracking.parent_dilation == 5  # from --set
    assert c.data.train_sequences == ["01"]  # YAML reads 01 as 1; sequence names are padded back


def test_save_and_reload_round_trip(tmp_path):
    c = load_config("Fluo-N2DL-HeLa", ["postprocessing.clustering=hdbscan"])
    path = save_config(c, tmp_path / "out" / "config.yaml")
    again = load_config(path)
    assert again == c
    assert config_from_dict(yaml.safe_load(path.read_text())) == c


def test_ints_are_accepted_for_floats_but_not_the_reverse(tmp_path):
    c = load_config(write(tmp_path, "a.yaml", "postprocessing:\n  bandwidth: 1\n"))
    assert c.postprocessing.bandwidth == 1.0 and isinstance(c.postprocessing.bandwidth, float)
    with pytest.raises(RshnError, match=r"key 'postprocessing\.min_size' must be int, got 2\.5"):
        load_config(write(tmp_path, "b.yaml", "postprocessing:\n  min_size: 2.5\n"))


# ---- bad input: each gets one clear error naming the key and the file --------------------------------------


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("model:\n  filtres: 32\n", r"bad\.yaml: unknown key 'model\.filtres' \(did you mean 'filters'\?\)"),
        ("modle:\n  filters: 32\n", r"bad\.yaml: unknown section 'modle' \(did you mean 'model'\?\)"),
        ("model:\n  filters: many\n", r"bad\.yaml: key 'model\.filters' must be int, got 'many'"),
        ("model:\n  architecture: unet\n",
         r"bad\.yaml: key 'model\.architecture' must be one of 'rshn', 'shn', 'volumetric', got 'unet'"),
        ("training:\n  seed: true\n", r"bad\.yaml: key 'training\.seed' must be int, got True"),
        ("data:\n  tile_size: 256\n", r"bad\.yaml: key 'data\.tile_size' must be a list of int, got 256"),
        ("model: [1, 2]\n", r"bad\.yaml: section 'model' must be a mapping"),
        ("- a\n- b\n", r"bad\.yaml: expected a mapping of sections at the top level, got list"),
        ("model:\n  filters: [\n", r"bad\.yaml: not valid YAML"),
        ("base: no-such-preset\n", r"config 'no-such-preset' not found"),
        ("base: bad.yaml\n", r"bad\.yaml: 'base' includes itself"),
        ("augmentation:\n  scale_range: [1.5, 0.5]\n",
         r"key 'augmentation\.scale_range' must be two values \[low, high\] with low <= high"),
        ("data:\n  tile_size: [100, 100]\n", r"key 'data\.tile_size' must be divisible by 2\^\(model\.levels-1\) = 64"),
        ("inference:\n  tile_size: [96, 96]\n",
         r"key 'inference\.tile_size' must be null or two positive integers, divisible by 2\^\(model\.levels-1\) "
         r"= 64 unless inference\.full_frame"),
        ("data:\n  tile_size: [128, 128]\ninference:\n  tile_size: [256, 256]\n  tile_overlap: 128\n", None),
        ("data:\n  tile_size: [128, 128]\n", r"key 'inference\.tile_overlap' must be non-negative and smaller"),
    ],
)
def test_bad_yaml_gets_a_clear_error(tmp_path, text, pattern):
    path = write(tmp_path, "bad.yaml", text)
    if pattern is None:  # the valid neighbour of a bad case
        assert load_config(path).inference_tile_size == (256, 256)
        return
    with pytest.raises(RshnError, match=pattern):
        load_config(path)


def test_inference_tiles_default_to_the_training_tiles():
    config = load_config(None, ["data.tile_size=[128, 64]", "inference.tile_overlap=32"])
    assert config.inference.tile_size is None and config.inference_tile_size == (128, 64)
    config = load_config(None, ["data.tile_size=[128, 128]", "inference.tile_size=[256, 192]"])
    assert config.inference_tile_size == (256, 192)


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("postprocessing.bandwith=0.05", r"--set postprocessing\.bandwith=0\.05: unknown key "
                                         r"'postprocessing\.bandwith' \(did you mean 'bandwidth'\?\)"),
        ("bandwidth=0.05", r"expected section\.key=value"),
        ("postprocessing.bandwidth=[", r"value is not valid YAML"),
        ("postprocessing.bandwidth=3", r"key 'postprocessing\.bandwidth' must be in \(0, 2\)"),
    ],
)
def test_bad_overrides_get_a_clear_error(override, pattern):
    with pytest.raises(RshnError, match=pattern):
        load_config(None, [override])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(RshnError, match=r"config '.*nothing\.yaml' not found"):
        load_config(tmp_path / "nothing.yaml")


def test_every_key_is_documented():
    """Each dataclass documents every one of its keys in its docstring (the CSBDeep-style contract)."""
    for section in dataclasses.fields(Config):
        cls = section.default_factory().__class__
        for f in dataclasses.fields(cls):
            assert f"{f.name}:" in cls.__doc__, f"{cls.__name__}.{f.name} is not documented"


@pytest.mark.parametrize("value", ["[5, 5]", "[-1, 3]", "[1]", "[6, 2]", "[0, 2, 4]"])
def test_train_frames_must_be_a_non_empty_start_stop_pair(value):
    pattern = (rf"key 'data\.train_frames' must be null or \[start, stop\] with 0 <= start < stop, got "
               rf"{re.escape(value)}")
    with pytest.raises(RshnError, match=pattern):
        load_config(None, [f"data.train_frames={value}"])


def test_train_frames_snapshots_and_silver_truth_default_off_and_accept_valid_values():
    assert Config().data.train_frames is None and Config().data.silver_truth is False
    assert Config().training.snapshot_every == 0
    config = load_config(None, ["data.train_frames=[0, 3]", "data.silver_truth=true", "training.snapshot_every=5"])
    assert config.data.train_frames == [0, 3] and config.data.silver_truth
    assert config.training.snapshot_every == 5
    assert load_config(None, ["data.train_frames=null"]).data.train_frames is None
    with pytest.raises(RshnError, match=r"key 'training\.snapshot_every' must be non-negative \(0 = no snapshots\), "
                                        r"got -1"):
        load_config(None, ["training.snapshot_every=-1"])
