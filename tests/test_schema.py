"""The schema owns validation, and saved configurations carry a schema version.

Every key of every section (taken from the dataclass fields, so that a new key cannot be forgotten) is fed a value
of the wrong type and a value of the right type but out of range; each must give an RshnError naming the key, never
a raw TypeError, ValueError or IndexError. Saved ``config.yaml`` files start with ``schema_version``; an older
layout is migrated on load and a newer one is refused.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import keras
import numpy as np
import pytest
import yaml

from rshn_tf import config as schema
from rshn_tf.cli import EXIT_USER_ERROR, main
from rshn_tf.config import (
    SCHEMA_VERSION,
    SECTION_CHECKS,
    SECTIONS,
    Config,
    config_from_dict,
    load_config,
    move_key,
    save_config,
    validate,
)
from rshn_tf.errors import RshnError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _annotations() -> dict[str, Any]:
    """``section.key`` -> type annotation, for every key of the schema."""
    result = {}
    for section in SECTIONS:
        cls = type(getattr(Config(), section))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            result[f"{section}.{f.name}"] = hints[f.name]
    return result


ANNOTATIONS = _annotations()
ALL_KEYS = list(ANNOTATIONS)


def wrong_types(annotation: Any) -> list[Any]:
    """Values that do not have the type ``annotation`` (nor convert to it), generated from the annotation."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return wrong_types(inner)
    if origin is Literal:
        return [5, ["a"]]
    if origin is list:
        (item,) = typing.get_args(annotation)
        return [7, "text", [wrong_types(item)[0]]]
    return {bool: ["maybe", 1], int: ["many", 2.5, True], float: ["many", True], str: [{"a": 1}, [1], True]}[
        annotation]


def _is_bool(annotation: Any) -> bool:
    """bool or Optional[bool]: every value of the type is valid."""
    return annotation is bool or set(typing.get_args(annotation)) == {bool, type(None)}


#: Keys whose every value of the right type is valid (what they name is checked where it is used).
FREE_KEYS = {
    "data.dataset": "a free name",
    "data.dataset_dir": "null or a path; the folder is checked when data is read",
    "training.validation_sequences": "sequence names; may be empty when validation batches are given in Python",
}

#: For each key with a range: ``--set`` overrides (the last one sets the key) that give it a wrong value.
WRONG_VALUES: dict[str, list[list[str]]] = {
    "data.train_sequences": [["data.train_sequences=[]"]],
    "data.resampled_size": [["data.resampled_size=[0, 256]"], ["data.resampled_size=[256]"]],
    "data.extra_scale": [["data.extra_scale=0"]],
    "data.tile_size": [["data.tile_size=[256]"], ["data.tile_size=[100, 100]"], ["data.tile_size=[]"]],
    "data.sequence_length": [["data.sequence_length=1"]],
    "data.smoothing_sigma": [["data.smoothing_sigma=-1"]],
    "data.normalization_percentiles": [["data.normalization_percentiles=[99.9, 0.1]"],
                                       ["data.normalization_percentiles=[0.1]"]],
    "data.border_band": [["data.border_band=-1"]],
    "data.seg_sample_fraction": [["data.seg_sample_fraction=1.5"]],
    "data.complete_seg_min_coverage": [["data.complete_seg_min_coverage=-0.1"]],
    "data.crop_border": [["data.crop_border=-1"]],
    "data.label_blur_sigma": [["data.label_blur_sigma=-1"]],
    "data.num_workers": [["data.num_workers=-1"]],
    "data.prefetch": [["data.prefetch=-1"]],
    "data.train_frames": [["data.train_frames=[5, 5]"], ["data.train_frames=[1]"]],
    "model.stacks": [["model.stacks=0"]],
    "model.levels": [["model.levels=0"], ["model.levels=100000000000"]],
    "model.filters": [["model.filters=0"]],
    "model.embedding_size": [["model.embedding_size=1"]],
    "model.kernel_size": [["model.kernel_size=0"]],
    "model.activation": [["model.activation=softmax"]],
    "model.gru_activation": [["model.gru_activation=nonsense"]],
    "model.gate_init_scale": [["model.gate_init_scale=-1"]],
    "model.output_kernel_size": [["model.output_kernel_size=0"]],
    "model.normalization_epsilon": [["model.normalization_epsilon=0"]],
    "model.l2_factor": [["model.l2_factor=-1e-5"]],
    "augmentation.mirror_probability": [["augmentation.mirror_probability=1.5"]],
    "augmentation.rotation_range": [["augmentation.rotation_range=[180, -180]"]],
    "augmentation.scale_range": [["augmentation.scale_range=[0, 1]"], ["augmentation.scale_range=[]"]],
    "augmentation.code_scale_delta": [["augmentation.code_scale_delta=1"]],
    "augmentation.elastic_grid": [["augmentation.elastic_grid=[1, 6]"]],
    "augmentation.elastic_displacement": [["augmentation.elastic_displacement=-1"]],
    "augmentation.elastic_spline_order": [["augmentation.elastic_spline_order=6"]],
    "augmentation.translation_fraction": [["augmentation.translation_fraction=2"]],
    "augmentation.intensity_shift": [["augmentation.intensity_shift=[1, -1]"]],
    "augmentation.intensity_scale": [["augmentation.intensity_scale=[2, 1]"]],
    "augmentation.gamma_range": [["augmentation.gamma_range=[0, 1]"]],
    "augmentation.per_frame_shift": [["augmentation.per_frame_shift=-0.1"]],
    "augmentation.per_frame_scale": [["augmentation.per_frame_scale=1"]],
    "loss.max_instances": [["loss.max_instances=0"]],
    "loss.neighbour_radius": [["loss.neighbour_radius=-1"]],
    "loss.code_neighbour_radius": [["loss.code_neighbour_radius=-0.5"]],
    "loss.neighbour_dilation": [["loss.neighbour_dilation=-1"]],
    "loss.hourglass_weights": [["loss.hourglass_weights=[1.0]"], ["loss.hourglass_weights=[1.0, -1.0]"]],
    "loss.background_weight": [["loss.background_weight=-1"]],
    "loss.epsilon": [["loss.epsilon=0"]],
    "training.iterations": [["training.iterations=0"]],
    "training.batch_size": [["training.batch_size=0"]],
    "training.learning_rate": [["training.learning_rate=0"]],
    "training.learning_rate_final": [["training.learning_rate_final=0"]],
    "training.learning_rate_drop_fraction": [["training.learning_rate_drop_fraction=1.5"]],
    "training.adam_epsilon": [["training.adam_epsilon=0"]],
    "training.seed": [["training.seed=-1"], ["training.seed=4294967296"]],
    "training.checkpoint_every": [["training.checkpoint_every=0"]],
    "training.max_checkpoints": [["training.max_checkpoints=0"]],
    "training.snapshot_every": [["training.snapshot_every=-1"]],
    "training.log_every": [["training.log_every=0"]],
    "training.image_every": [["training.image_every=-1"]],
    "training.validation_every": [["training.validation_every=-1"]],
    "training.validation_samples": [["training.batch_size=2", "training.validation_samples=3"]],
    "inference.tile_size": [["inference.tile_size=[96, 96]"], ["inference.tile_size=[256]"]],
    "inference.tile_overlap": [["inference.tile_overlap=256"], ["inference.tile_overlap=-1"]],
    "inference.threads": [["inference.threads=-1"]],
    "inference.max_batch_tiles": [["inference.max_batch_tiles=-1"]],
    "inference.encoding_cache_mb": [["inference.encoding_cache_mb=-1"]],
    "inference.checkpoint_every": [["inference.checkpoint_every=-1"]],
    "postprocessing.background_threshold": [["postprocessing.background_threshold=1"]],
    "postprocessing.bandwidth": [["postprocessing.bandwidth=2"]],
    "postprocessing.coordinate_factor": [["postprocessing.coordinate_factor=-1"]],
    "postprocessing.num_seeds": [["postprocessing.num_seeds=0"]],
    "postprocessing.max_iterations": [["postprocessing.max_iterations=0"]],
    "postprocessing.convergence_tolerance": [["postprocessing.convergence_tolerance=0"]],
    "postprocessing.min_size": [["postprocessing.min_size=-1"]],
    "postprocessing.seed": [["postprocessing.seed=-1"]],
    "postprocessing.hdbscan_min_cluster_size": [["postprocessing.hdbscan_min_cluster_size=1"]],
    "postprocessing.hdbscan_coordinate_factor": [["postprocessing.hdbscan_coordinate_factor=-1"]],
    "postprocessing.merge_ignore_border": [["postprocessing.merge_ignore_border=-1"]],
    "postprocessing.merge_overlap_fraction": [["postprocessing.merge_overlap_fraction=1"]],
    "postprocessing.background_rule": [["postprocessing.background_rule=no_such_rule"]],
    "postprocessing.background_dot_threshold": [["postprocessing.background_dot_threshold=-1"],
                                                ["postprocessing.background_dot_threshold=1.5"]],
    "tracking.link_iou_threshold": [["tracking.link_iou_threshold=1.5"]],
    "tracking.parent_iou_threshold": [["tracking.parent_iou_threshold=-0.1"]],
    "tracking.parent_dilation": [["tracking.parent_dilation=-1"]],
    "tracking.parent_search_frames": [["tracking.parent_search_frames=0"]],
    "tracking.min_track_length": [["tracking.min_track_length=0"]],
    "tracking.merge_search_frames": [["tracking.merge_search_frames=-1"]],
    "tracking.label_gaussian_sigma": [["tracking.label_gaussian_sigma=0"]],
    "experiment.output_dir": [["experiment.output_dir=''"]],
    "experiment.cv_iterations": [["experiment.cv_iterations=0"]],
    "experiment.test_sequences": [["experiment.mode=holdout", "experiment.test_sequences=[]"]],
    "experiment.split_frame": [["experiment.mode=time_split", "experiment.split_frame=3"]],
    "experiment.synthetic_frames": [["experiment.synthetic_frames=1"]],
    "experiment.synthetic_size": [["experiment.synthetic_size=[16, 16]"]],
}


def wrong_value_cases() -> list[tuple[str, list[str]]]:
    """Every key with a wrong value: Literal keys get a string that is not a choice, the others come from
    :data:`WRONG_VALUES`."""
    cases = []
    for key, annotation in ANNOTATIONS.items():
        if typing.get_origin(annotation) is Literal:
            cases.append((key, [f"{key}=no_such_choice"]))
        for overrides in WRONG_VALUES.get(key, []):
            cases.append((key, overrides))
    return cases


def test_every_key_is_either_free_or_has_wrong_values():
    """A new key must be given wrong values here (or be declared free), so that it cannot be forgotten."""
    literal = {k for k, a in ANNOTATIONS.items() if typing.get_origin(a) is Literal}
    boolean = {k for k, a in ANNOTATIONS.items() if _is_bool(a)}
    groups = [literal, boolean, set(FREE_KEYS), set(WRONG_VALUES)]
    assert set().union(*groups) == set(ALL_KEYS), sorted(set(ALL_KEYS) - set().union(*groups))
    assert sum(len(g) for g in groups) == len(ALL_KEYS), "a key is in two groups"
    assert set(WRONG_VALUES) <= set(ALL_KEYS), sorted(set(WRONG_VALUES) - set(ALL_KEYS))


@pytest.mark.parametrize("key", ALL_KEYS)
def test_every_key_refuses_a_wrong_type_from_yaml_and_from_python(key, tmp_path):
    section, name = key.split(".")
    for value in wrong_types(ANNOTATIONS[key]):
        with pytest.raises(RshnError, match=rf"--set {key}=.*: key '{key}' must be "):
            load_config(None, [f"{key}={json.dumps(value)}"])
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({section: {name: value}}))
        with pytest.raises(RshnError, match=rf"bad\.yaml: key '{key}' must be "):
            load_config(path)
        config = Config()
        setattr(getattr(config, section), name, value)
        with pytest.raises(RshnError, match=rf"key '{key}' must be .*got {re.escape(repr(value))}"):
            validate(config)


@pytest.mark.parametrize("key, overrides", wrong_value_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_key_refuses_a_wrong_value(key, overrides, capsys, tmp_path):
    with pytest.raises(RshnError, match=rf"--set {key}=.*: key '{key}' must be "):
        load_config(None, overrides)
    empty = tmp_path / "defaults.yaml"
    empty.write_text("{}\n")
    args = ["check-config", str(empty)]
    for text in overrides:
        args += ["--set", text]
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"key '{key}' must be" in err and "Traceback" not in err


@pytest.mark.parametrize("override, message", [
    ("data.tile_size=[256]", "key 'data.tile_size' must be two positive integers (height, width), got [256]"),
    ("postprocessing.hdbscan_min_cluster_size=1",
     "key 'postprocessing.hdbscan_min_cluster_size' must be at least 2"),
])
def test_check_config_refuses_the_issues_examples(override, message, capsys):
    assert main(["check-config", "DIC-C2DH-HeLa", "--set", override]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_every_error_of_files_and_overrides_is_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  filtres: 8\n  levels: seven\ndata:\n  tile_size: [256]\nloss:\n  epsilon: 0\n"
                    "base: demo\n")
    with pytest.raises(RshnError) as error:
        load_config(path, ["postprocessing.bandwidth=3", "tracking.min_track_length=x", "nonsense"])
    message = str(error.value)
    assert message.startswith("7 invalid config values:\n"), message
    for part in ("unknown key 'model.filtres'", "key 'model.levels' must be int, got 'seven'",
                 "key 'data.tile_size' must be two positive integers", "key 'loss.epsilon' must be positive",
                 "--set postprocessing.bandwidth=3: key 'postprocessing.bandwidth' must be in (0, 2)",
                 "key 'tracking.min_track_length' must be int", "--set 'nonsense': expected section.key=value"):
        assert part in message
    assert message.count("bad.yaml") == 4


def test_a_refused_key_does_not_trigger_checks_of_its_old_value():
    """model.levels is refused, so the tile-size checks that read it are skipped rather than run on the default."""
    with pytest.raises(RshnError) as error:
        load_config(None, ["model.levels=seven", "data.tile_size=[160, 160]"])
    assert str(error.value) == "--set model.levels=seven: key 'model.levels' must be int, got 'seven'"


def test_each_section_checks_only_its_own_keys_and_the_defaults_pass():
    assert list(SECTION_CHECKS) == list(SECTIONS)
    config = Config()
    for section, checks in SECTION_CHECKS.items():
        for key, _, ok, related in checks(config):
            assert key.split(".")[0] == section and key in ANNOTATIONS, key
            assert set(related) <= set(ANNOTATIONS), related
            assert ok(), key
    validate(config)


def test_validate_can_check_one_section():
    config = Config()
    config.postprocessing.bandwidth = 5.0
    validate(config, sections=["model"])
    with pytest.raises(RshnError, match="postprocessing.bandwidth"):
        validate(config, sections=["postprocessing"])


def test_a_non_list_base_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("base: 5\n")
    with pytest.raises(RshnError, match=r"'base' must be a preset name, a path or a list of them, got 5"):
        load_config(path)


# ---- schema versions ---------------------------------------------------------------------------------------------

#: A model folder's config.yaml as saved before versioning (schema version 1): no ``schema_version``, and the
#: ``experiment.synthetic_seg`` key that was removed before versioning.
VERSION_1_CONFIG = """\
# Resolved rshn-tf configuration: every key, after presets and --set overrides.
data:
  dataset: custom
  dataset_dir: null
  train_sequences: ['01']
  tile_size: [32, 32]
  sequence_length: 3
model: {architecture: rshn, stacks: 2, levels: 3, filters: 4, embedding_size: 4,
  kernel_size: 3, activation: relu, gru_activation: relu, gate_init_scale: 1.0, input_conv: null,
  output_kernel_size: 1, normalization_epsilon: 0.0001, l2_factor: 1.0e-05}
inference:
  tile_overlap: 16
postprocessing:
  bandwidth: 0.2
experiment:
  mode: holdout
  test_sequences: ['02']
  synthetic_frames: 40
  synthetic_size: [256, 256]
  synthetic_seg: complete
"""


def test_saved_configs_start_with_the_schema_version(tmp_path):
    config = load_config("demo")
    path = save_config(config, tmp_path / "config.yaml")
    text = path.read_text()
    assert text.splitlines()[1] == f"schema_version: {SCHEMA_VERSION}"
    assert yaml.safe_load(text)["schema_version"] == SCHEMA_VERSION
    assert load_config(path) == config and config_from_dict(yaml.safe_load(text)) == config


def test_result_and_model_folders_save_the_schema_version(tmp_path):
    from ctc_submission.writer import write_ctc_result
    from rshn_tf.model_folder import ModelFolder

    config = Config()
    ModelFolder(tmp_path / "model").write_config(config)
    write_ctc_result(tmp_path / "01_RES", np.zeros((2, 8, 8), np.uint16), np.zeros((0, 4), np.int64), config=config)
    for path in (tmp_path / "model" / "config.yaml", tmp_path / "01_RES" / "config.yaml"):
        assert yaml.safe_load(path.read_text())["schema_version"] == SCHEMA_VERSION, path


def test_a_model_folder_saved_before_versioning_loads(tmp_path):
    from rshn_tf.model_folder import create_model_folder, load_trained_model
    from rshn_tf.models import build_model

    config = config_from_dict(yaml.safe_load(VERSION_1_CONFIG))
    assert config.postprocessing.bandwidth == 0.2 and config.model.filters == 4
    keras.utils.set_random_seed(0)
    model = build_model(config.model)
    create_model_folder(config, model, tmp_path / "model")
    (tmp_path / "model" / "config.yaml").write_text(VERSION_1_CONFIG)
    loaded, loaded_config = load_trained_model(tmp_path / "model", "last")
    assert loaded_config == config and loaded_config.experiment.test_sequences == ["02"]
    frames = np.random.default_rng(0).normal(size=(1, 3, 16, 16, 1)).astype("float32")
    for a, b in zip(model(frames), loaded(frames)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["DIC-C2DH-HeLa-cpu", "Fluo-N2DL-HeLa-cpu"])
def test_committed_model_folders_load_without_resaving(name):
    from rshn_tf.model_folder import ModelFolder

    folder = REPO_ROOT / "models" / name
    if not (folder / "config.yaml").is_file():
        pytest.skip(f"{folder}: no committed model folder")
    config = ModelFolder(folder).read_config()
    assert config.data.dataset == name.removesuffix("-cpu")


@pytest.mark.parametrize("version, pattern", [
    (SCHEMA_VERSION + 1, rf"written by a newer rshn-tf \(schema_version {SCHEMA_VERSION + 1}\); this version reads "
                         rf"configurations up to schema_version {SCHEMA_VERSION}: upgrade rshn-tf"),
    (0, r"'schema_version' must be a positive integer, got 0"),
    ("two", r"'schema_version' must be a positive integer, got 'two'"),
    (True, r"'schema_version' must be a positive integer, got True"),
])
def test_a_newer_or_broken_schema_version_is_refused(version, pattern, tmp_path):
    from rshn_tf.model_folder import ModelFolder

    save_config(Config(), tmp_path / "model" / "config.yaml")
    values = yaml.safe_load((tmp_path / "model" / "config.yaml").read_text())
    values["schema_version"] = version
    (tmp_path / "model" / "config.yaml").write_text(yaml.safe_dump(values))
    with pytest.raises(RshnError, match=rf"config\.yaml: {pattern}"):
        ModelFolder(tmp_path / "model").read_config()
    with pytest.raises(RshnError, match=pattern):
        load_config(tmp_path / "model" / "config.yaml")


def test_a_renamed_key_is_migrated_from_an_older_version(monkeypatch, tmp_path):
    """A synthetic rename, registered only here: version N+1 renames postprocessing.mean_shift_bandwidth (the
    pretended old name) to postprocessing.bandwidth."""

    def rename(values: dict[str, Any]) -> dict[str, Any]:
        move_key(values, "postprocessing.mean_shift_bandwidth", "postprocessing.bandwidth")
        return values

    old = SCHEMA_VERSION
    monkeypatch.setattr(schema, "SCHEMA_VERSION", old + 1)
    monkeypatch.setitem(schema.MIGRATIONS, old, rename)
    path = tmp_path / "config.yaml"
    path.write_text(f"schema_version: {old}\npostprocessing:\n  mean_shift_bandwidth: 0.3\n  min_size: 7\n")
    config = load_config(path)
    assert config.postprocessing.bandwidth == 0.3 and config.postprocessing.min_size == 7
    version_1 = config_from_dict({"postprocessing": {"mean_shift_bandwidth": 0.4},
                                  "experiment": {"synthetic_seg": "ctc"}})  # both steps, 1 -> old -> old + 1
    assert version_1.postprocessing.bandwidth == 0.4
    save_config(config, path)
    assert yaml.safe_load(path.read_text())["schema_version"] == old + 1
    path.write_text(f"schema_version: {old + 1}\npostprocessing:\n  mean_shift_bandwidth: 0.3\n")
    with pytest.raises(RshnError, match=r"unknown key 'postprocessing\.mean_shift_bandwidth' \(did you mean "
                                        r"'bandwidth'\?\)"):
        load_config(path)


def test_move_key_keeps_a_given_new_key_and_ignores_absent_ones():
    values = {"postprocessing": {"old": 1, "new": 2}, "data": {"x": 3}}
    move_key(values, "postprocessing.old", "postprocessing.new")
    assert values == {"postprocessing": {"new": 2}, "data": {"x": 3}}
    move_key(values, "postprocessing.absent", "tracking.absent")
    move_key(values, "data.x", "tracking.y")
    assert values == {"postprocessing": {"new": 2}, "tracking": {"y": 3}}
