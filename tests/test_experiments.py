"""Tests of rshn_tf.experiments, rshn_tf.table3 and rshn_tf.demo: the bundled YAMLs, the step plan (markers,
skipping, re-running), ``rshn experiment`` end to end on a synthetic video (scores checked against py-ctcmetrics run
directly), the Table 3 grid and its outputs, and a shrunken ``rshn demo``."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rshn_tf.cli import EXIT_USER_ERROR, main
from rshn_tf.config import Config, load_config, preset_dir, resolve_config_path
from rshn_tf.errors import RshnError
from rshn_tf.experiments import (
    Plan,
    Step,
    StepInterrupted,
    changed_keys,
    experiment_plan,
    fold_config,
    hold_run_folder,
    load_experiment_config,
    make_folds,
    marker_name,
)
from rshn_tf.output_lock import OutputLock, lock_path
from rshn_tf.table3 import DATASETS, PAPER_TABLE3, ROWS, plan_table3, select_rows, table_csv, table_markdown

REPO_ROOT = Path(__file__).resolve().parents[1]
ALL_YAMLS = sorted(p.relative_to(REPO_ROOT / "experiments") for p in (REPO_ROOT / "experiments").rglob("*.yaml"))
DATASET_PRESETS = ("DIC-C2DH-HeLa", "Fluo-C2DL-MSC", "Fluo-N2DH-GOWT1", "Fluo-N2DL-HeLa", "PhC-C2DH-U373",
                   "Fluo-N2DH-SIM+")


# ---------------------------------------------------------------------------------------------------------------
# The bundled YAMLs


def test_every_table3_row_and_both_profiles_exist():
    assert {p.as_posix() for p in ALL_YAMLS} >= {f"table3/{row.name}.yaml" for row in ROWS} | {
        "profiles/cpu.yaml", "profiles/paper.yaml", "profiles/paper_text.yaml", "demo.yaml"} | {
            f"{d}.yaml" for d in DATASET_PRESETS}


@pytest.mark.parametrize("name", [p.as_posix() for p in ALL_YAMLS])
def test_check_config_passes_on_every_yaml(name, capsys):
    path = REPO_ROOT / "experiments" / name
    assert main(["check-config", str(path)]) == 0
    assert f"OK  {path}" in capsys.readouterr().out
    text = path.read_text()
    assert "paper" in text  # every YAML says which values come from the paper (and which from the code)


def test_presets_in_subfolders_resolve_by_name():
    assert resolve_config_path("table3/rshn_h0.05") == preset_dir() / "table3" / "rshn_h0.05.yaml"
    assert resolve_config_path("profiles/cpu.yaml") == preset_dir() / "profiles" / "cpu.yaml"


def test_table3_rows_set_exactly_the_paper_grid():
    bandwidths = {}
    for row in ROWS:
        config = load_config(row.preset)
        assert config.experiment.mode == "two_fold"
        bandwidths[row.name] = (config.model.architecture, config.postprocessing.clustering,
                                config.postprocessing.bandwidth)
    assert bandwidths == {
        "rshn_h0.025": ("rshn", "mean_shift", 0.025), "rshn_h0.05": ("rshn", "mean_shift", 0.05),
        "rshn_h0.1": ("rshn", "mean_shift", 0.1), "rshn_h0.15": ("rshn", "mean_shift", 0.15),
        "rshn_h0.2": ("rshn", "mean_shift", 0.2), "rshn_hdbscan": ("rshn", "hdbscan", 0.1),
        "volumetric_h0.1": ("volumetric", "mean_shift", 0.1), "shn_h0.1": ("shn", "mean_shift", 0.1),
    }


def test_profile_layers_over_a_dataset_preset_and_keeps_its_values():
    plain = load_experiment_config("DIC-C2DH-HeLa")
    cpu = load_experiment_config("DIC-C2DH-HeLa", profile="cpu", overrides=["postprocessing.bandwidth=0.05"])
    changed = set(changed_keys(plain, cpu))
    # the profile changes network, budget and tiles, never the dataset's Table 1 values
    assert {"model.levels", "model.filters", "data.tile_size", "experiment.cv_iterations"} <= changed
    assert not changed & {"data.resampled_size", "loss.neighbour_radius", "postprocessing.min_size",
                          "data.border_band", "tracking.parent_search_frames"}
    assert cpu.postprocessing.bandwidth == 0.05 and cpu.data.resampled_size == [256, 256]
    # smaller training crops, but the paper's inference tiles (cells wider than a 64 px overlap survive the merge)
    assert cpu.data.tile_size == [128, 128] and cpu.inference_tile_size == (256, 256)
    assert cpu.inference.tile_overlap == 128
    paper = load_experiment_config("DIC-C2DH-HeLa", profile="paper")
    assert changed_keys(plain, paper) == []
    with pytest.raises(RshnError, match="profile 'gpu' not found; bundled profiles: cpu, paper, paper_text"):
        load_experiment_config("DIC-C2DH-HeLa", profile="gpu")


def code_behaviour_keys(text: str) -> set[str]:
    """Keys of a preset YAML whose comment says "code (published models)" (a section line marks all its keys)."""
    keys, section, marked_section = set(), None, False
    for line in text.splitlines():
        match = re.match(r"^(\w+):\s*(#.*)?$", line)
        if match:
            section, marked_section = match.group(1), "code (published models)" in (match.group(2) or "")
            continue
        match = re.match(r"^  (\w+):[^#]*(#.*)?$", line)
        if match and section and (marked_section or "code (published models)" in (match.group(2) or "")):
            keys.add(f"{section}.{match.group(1)}")
    return keys


@pytest.mark.parametrize("dataset", DATASET_PRESETS)
def test_profile_paper_text_puts_every_code_behaviour_of_a_preset_back_to_the_paper_defaults(dataset):
    marked = code_behaviour_keys((preset_dir() / f"{dataset}.yaml").read_text())
    # every preset but Fluo-N2DL-HeLa anchors on any SEG frame (code); HeLa measured better on complete frames
    assert ("data.seg_sample_frames" in marked) == (dataset != "Fluo-N2DL-HeLa")
    listed = {f"{section}.{key}" for section, keys in
              yaml.safe_load((preset_dir() / "profiles" / "paper_text.yaml").read_text()).items() for key in keys}
    assert marked <= listed, f"{dataset}: code behaviours missing from profiles/paper_text.yaml: {marked - listed}"
    paper = load_experiment_config(dataset, profile="paper_text")
    plain = load_experiment_config(dataset)
    assert not set(changed_keys(Config(), paper)) & listed  # all of them back at the paper's defaults
    assert set(changed_keys(plain, paper)) == {key for key in marked if key in changed_keys(Config(), plain)}


def test_dic_preset_uses_the_code_augmentation_extras_measured_in_the_ablation():
    config = load_config("DIC-C2DH-HeLa")
    assert config.data.mirror_padding and config.data.label_blur_sigma == 2.0
    assert (config.augmentation.scale_mode, config.augmentation.translation_fraction, config.augmentation.gamma_range,
            config.augmentation.per_frame_shift, config.augmentation.per_frame_scale) == (
        "code_product", 0.35, [0.6, 1.4], 0.1, 0.1)


def test_hela_preset_anchors_on_complete_frames_and_takes_the_code_radius_as_measured_in_the_ablation():
    config = load_config("Fluo-N2DL-HeLa")
    assert config.data.seg_sample_frames == "complete"
    assert (config.loss.neighbour_mode, config.loss.radius) == ("centroid", 30.7)


@pytest.mark.parametrize("name", ["DIC-C2DH-HeLa-cpu", "Fluo-N2DL-HeLa-cpu"])
def test_model_recipe_reproduces_the_shipped_model_configuration(name):
    recipe = load_config(preset_dir() / "models" / f"{name}.yaml")
    shipped = load_config(REPO_ROOT / "models" / name / "config.yaml")
    assert changed_keys(recipe, shipped) == []


# ---------------------------------------------------------------------------------------------------------------
# Folds and the step plan


def test_folds_of_each_mode():
    config = Config()
    assert [(f.name, f.train, f.test) for f in make_folds(config)] == [
        ("fold1", ("01",), ("02",)), ("fold2", ("02",), ("01",))]
    config.experiment.mode = "train_all"
    assert [(f.name, f.train, f.test) for f in make_folds(config)] == [("all", ("01", "02"), ("01", "02"))]
    config.experiment.mode = "holdout"
    with pytest.raises(RshnError, match="experiment.test_sequences"):
        make_folds(config)
    config.experiment.test_sequences = ["03"]
    assert [(f.train, f.test) for f in make_folds(config)] == [(("01", "02"), ("03",))]
    config.experiment.mode = "two_fold"
    config.data.train_sequences = ["01"]
    with pytest.raises(RshnError, match="exactly two distinct data.train_sequences"):
        make_folds(config)


def test_experiment_plan_orders_steps_and_cross_validation_uses_cv_iterations():
    config = load_experiment_config("DIC-C2DH-HeLa", data="/nowhere")
    variants = {"h0.2": copy.deepcopy(config)}
    variants["h0.2"].postprocessing.bandwidth = 0.2
    experiment = experiment_plan(config, "/tmp/unused", variants)
    names = [step.name for step in experiment.plan.steps]
    assert names == [
        "train[fold1]", "train[fold2]", "predict[fold1/02]", "evaluate[fold1/02]", "postprocess[h0.2, fold1/02]",
        "evaluate[h0.2, fold1/02]", "predict[fold2/01]", "evaluate[fold2/01]", "postprocess[h0.2, fold2/01]",
        "evaluate[h0.2, fold2/01]", "report"]
    assert "for 40000 iterations" in experiment.plan.steps[0].description
    assert marker_name("postprocess[h0.2, fold1/02]") == "postprocess_h0.2_fold1_02.json"
    other_network = copy.deepcopy(config)
    other_network.model.filters = 8
    with pytest.raises(RshnError, match="variant 'bad' changes model.filters"):
        experiment_plan(config, "/tmp/unused", {"bad": other_network})


def test_plan_skips_done_steps_and_reruns_what_depends_on_a_rerun_step(tmp_path):
    calls: list[str] = []
    out = tmp_path / "b.txt"

    def make(name: str, path: Path | None = None):
        def action():
            calls.append(name)
            if path is not None:
                path.write_text(name)
            return {"name": name}
        return action

    def plan(key_b: str = "1") -> Plan:
        return Plan(tmp_path, [
            Step("a", "first", make("a")),
            Step("b", "second", make("b", out), outputs=(out,), deps=("a",), key=key_b),
            Step("c", "third", make("c"), deps=("b",)),
        ])

    assert [s.state for s in plan().statuses()] == ["todo", "todo", "todo"]
    assert plan().run() == ["a", "b", "c"] and calls == ["a", "b", "c"]
    marker = json.loads((tmp_path / "steps" / "b.json").read_text())
    assert marker["key"] == "1" and marker["info"] == {"name": "b"}
    assert plan().run() == [] and calls == ["a", "b", "c"]
    assert "[done] a" in plan().describe() and "3 steps, 0 to do, 3 done" in plan().describe()
    out.unlink()  # a missing output makes the step and its dependants run again, not the steps before it
    assert [s.state for s in plan().statuses()] == ["done", "todo", "todo"]
    assert plan().run() == ["b", "c"]
    assert plan(key_b="2").run() == ["b", "c"]  # a changed configuration key as well
    log = (tmp_path / "experiment.log").read_text()
    assert log.count("skip a (done)") == 3 and log.count("run  b: second") == 3
    calls.clear()

    # --only: just the matching steps, and only when what they need is done
    (tmp_path / "steps" / "c.json").unlink()
    assert plan(key_b="2").run(only=["c"]) == ["c"]
    (tmp_path / "steps" / "a.json").unlink()
    with pytest.raises(RshnError, match=r"b needs a first"):
        plan(key_b="3").run(only=["b"])
    with pytest.raises(RshnError, match="no step matches"):
        plan().run(only=["train*"])

    def failing():
        raise RshnError("boom")

    broken = Plan(tmp_path, [Step("a", "first", make("a")), Step("d", "fails", failing, deps=("a",))])
    with pytest.raises(RshnError, match="boom"):
        broken.run()
    assert not (tmp_path / "steps" / "d.json").exists()
    with pytest.raises(ValueError, match="do not come before it"):
        Plan(tmp_path, [Step("x", "", make("x"), deps=("y",)), Step("y", "", make("y"))])


def _burn_cpu(seconds: float) -> None:
    """Keep this thread busy for ``seconds`` of its own CPU time."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        sum(range(1000))


def test_step_markers_count_the_cpu_time_of_every_run_of_a_resumed_step(tmp_path):
    runs: list[int] = []

    def train():  # stops once, like a training killed and resumed
        _burn_cpu(0.3)
        runs.append(1)
        if len(runs) == 1:
            raise StepInterrupted("train[fold1]", "SIGTERM")
        return {}

    def predict():
        _burn_cpu(0.2)
        return {}

    def plan(key: str = "k") -> Plan:
        return Plan(tmp_path, [Step("train[fold1]", "", train, key=key), Step("predict[fold1/02]", "", predict,
                                                                              deps=("train[fold1]",))])

    with pytest.raises(StepInterrupted):
        plan().run()
    assert plan().cpu_seconds(["train["]) is None  # not done yet
    partial = json.loads((tmp_path / "steps" / "train_fold1.partial").read_text())
    assert 0.3 <= partial["cpu_seconds"] < 0.6 and partial["key"] == "k"
    assert plan().run() == ["train[fold1]", "predict[fold1/02]"]
    marker = json.loads((tmp_path / "steps" / "train_fold1.json").read_text())
    assert 0.6 <= marker["cpu_seconds"] < 1.2 and marker["seconds"] >= 0.6  # both runs
    assert not (tmp_path / "steps" / "train_fold1.partial").exists()
    assert plan().cpu_seconds(["predict["]) == pytest.approx(
        json.loads((tmp_path / "steps" / "predict_fold1_02.json").read_text())["cpu_seconds"])
    total = plan().cpu_seconds(["train[", "predict["])
    assert 0.8 <= total < 1.6 and plan().cpu_seconds(["postprocess["]) == 0.0
    # a partial run under another configuration key does not count
    (tmp_path / "steps" / "train_fold1.partial").write_text(json.dumps({"key": "old", "seconds": 99.0,
                                                                         "cpu_seconds": 99.0}))
    runs.append(1)  # the next run finishes
    plan("k2").run()
    assert json.loads((tmp_path / "steps" / "train_fold1.json").read_text())["cpu_seconds"] < 1.0


def test_holding_a_run_folder_removes_the_temporaries_of_dead_runs_in_its_fold_folders(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / "fold1" / f".02_RES.tmp-{dead.pid}-0123abcd", tmp_path / "fold1" / f".scores.json.{dead.pid}.tmp",
             tmp_path / "fold2" / "model" / "snapshots" / f".{dead.pid}.tmp.step_2000.weights.h5"]
    live = tmp_path / "fold2" / f".01_RES.tmp-{os.getpid()}-0123abcd"
    for path in [*stale, live]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    with hold_run_folder(tmp_path):
        assert not any(path.exists() for path in stale) and live.exists()


def test_only_runs_share_the_run_folder_but_never_run_one_step_twice(tmp_path):
    calls: list[str] = []
    plan = Plan(tmp_path, [Step("train[fold1]", "", lambda: calls.append("1")),
                           Step("train[fold2]", "", lambda: calls.append("2"))])
    with hold_run_folder(tmp_path, only=["train[fold1]"]):
        with hold_run_folder(tmp_path, only=["train[fold2]"]):  # a second --only run is admitted
            with pytest.raises(RshnError, match="is writing this output"):
                with hold_run_folder(tmp_path):  # a full run is not
                    pass
            with OutputLock(plan.marker_path(plan.steps[0])):  # another process runs train[fold1]
                with pytest.raises(RshnError, match=r"step train\[fold1\] is already running"):
                    plan.run(only=["train[fold1]"])
                assert plan.run(only=["train[fold2]"]) == ["train[fold2]"]
            assert plan.run(only=["train*"]) == ["train[fold1]"] and calls == ["2", "1"]
    assert not lock_path(tmp_path).exists() and not list((tmp_path / "steps").glob(".*.lock"))
    with hold_run_folder(tmp_path):
        with pytest.raises(RshnError, match="is writing this output"):
            with hold_run_folder(tmp_path, only=["train[fold1]"]):  # --only is refused during a full run
                pass


# ---------------------------------------------------------------------------------------------------------------
# experiment.mode time_split

TIME_SPLIT = ["experiment.mode=time_split", "experiment.split_frame=60", 'data.train_sequences=["01"]']


def test_time_split_plan_splits_before_predicting_and_scores_the_split_data(tmp_path, monkeypatch):
    import rshn_tf.experiments as experiments

    config = load_experiment_config("DIC-C2DH-HeLa", overrides=TIME_SPLIT, data="/nowhere")
    out = tmp_path / "out"
    experiment = experiment_plan(config, out)
    steps = {step.name: step for step in experiment.plan.steps}
    assert [step.name for step in experiment.plan.steps] == [
        "train[time_split]", "split[time_split/01]", "predict[time_split/01]", "evaluate[time_split/01]", "report"]
    [fold] = experiment.folds
    assert (fold.name, fold.train, fold.test) == ("time_split", ("01",), ("01",))
    data = out / "time_split" / "data"
    assert experiment.test_root(fold) == data
    # the model trains on frames 0-59 for training.iterations (not the cross-validation budget)
    trained = fold_config(config, fold)
    assert trained.data.train_frames == [0, 60] and config.data.train_frames is None
    assert trained.training.iterations == config.training.iterations == 60000
    assert "for 60000 iterations" in steps["train[time_split]"].description
    split = steps["split[time_split/01]"]
    assert split.outputs == (data / "01", data / "01_GT") and split.deps == ()
    assert "write frames 60- of 01" in split.description
    assert steps["predict[time_split/01]"].deps == ("train[time_split]", "split[time_split/01]")
    assert steps["evaluate[time_split/01]"].description.endswith(
        f"{out / 'time_split' / '01_RES'} against {data / '01_GT'} -> 01_scores.json")
    calls = []
    monkeypatch.setattr(experiments, "predict_into", lambda *args, **kwargs: calls.append((args, kwargs)) or {})
    steps["predict[time_split/01]"].action()
    assert calls == [((out / "time_split" / "model", data / "01", out / "time_split" / "01_RES", None),
                      {"weights": "last"})]
    assert not out.exists()  # laying out the plan writes nothing


def test_time_split_dry_run_lists_the_split_step(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["experiment", "DIC-C2DH-HeLa", "--data", str(tmp_path / "nowhere"), "--out", str(out), "--dry-run"]
    assert main([*args, *(item for override in TIME_SPLIT for item in ("--set", override))]) == 0
    listing = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("[todo]")]
    assert [line.split()[1] for line in listing] == [
        "train[time_split]", "split[time_split/01]", "predict[time_split/01]", "evaluate[time_split/01]", "report"]
    assert not out.exists()


def test_time_split_folds_use_every_training_sequence():
    config = Config()
    config.experiment.mode = "time_split"
    config.experiment.split_frame = 40
    assert [(f.name, f.train, f.test) for f in make_folds(config)] == [("time_split", ("01", "02"), ("01", "02"))]
    experiment = experiment_plan(config, "/tmp/unused")
    assert [step.name for step in experiment.plan.steps] == [
        "train[time_split]", "split[time_split/01]", "predict[time_split/01]", "evaluate[time_split/01]",
        "split[time_split/02]", "predict[time_split/02]", "evaluate[time_split/02]", "report"]
    # the other modes predict and score the dataset folder itself
    config.experiment.mode = "train_all"
    config.data.dataset_dir = "/data/DS"
    experiment = experiment_plan(config, "/tmp/unused")
    assert experiment.test_root(experiment.folds[0]) == Path("/data/DS")
    assert fold_config(config, experiment.folds[0]).data.train_frames is None


@pytest.mark.parametrize("split_frame", [0, 7])
def test_time_split_needs_a_split_frame_of_at_least_one_window(split_frame):
    overrides = ["experiment.mode=time_split", f"experiment.split_frame={split_frame}"]
    with pytest.raises(RshnError, match=rf"key 'experiment\.split_frame' must be at least data\.sequence_length in "
                                        rf"time_split mode \(frames to train on\), got {split_frame}$"):
        load_experiment_config("DIC-C2DH-HeLa", overrides=overrides)
    assert load_experiment_config("DIC-C2DH-HeLa", overrides=[overrides[0], "experiment.split_frame=8"])
    assert load_experiment_config("DIC-C2DH-HeLa", overrides=[f"experiment.split_frame={split_frame}"])  # two_fold


def test_time_split_step_writes_the_later_frames_as_a_dataset(tmp_path, synthetic_dataset):
    import numpy as np

    from data_io.ctc import clip_tracks, load_sequence

    config = Config()
    config.data.dataset_dir = str(synthetic_dataset)
    config.data.train_sequences = ["01"]
    config.data.sequence_length = 3
    config.experiment.mode = "time_split"
    config.experiment.split_frame = 16
    out = tmp_path / "out"
    experiment = experiment_plan(config, out)
    split = next(step for step in experiment.plan.steps if step.name == "split[time_split/01]")
    assert split.action() == {"frames": [16, 24]}
    data = out / "time_split" / "data"
    assert sorted(p.name for p in (out / "time_split").iterdir()) == ["data"]  # no temporary folder left
    assert sorted(p.name for p in data.iterdir()) == ["01", "01_GT"]
    source, window = load_sequence(synthetic_dataset, "01"), load_sequence(data, "01")
    assert window.num_frames == 8 and np.array_equal(window.frames, source.frames[16:])
    assert np.array_equal(window.tra, source.tra[16:])
    assert np.array_equal(window.tracks, clip_tracks(source.tracks, 16, 24))
    assert sorted(window.seg) == [t - 16 for t in sorted(source.seg) if t >= 16]
    split.action()  # running it again replaces the folders
    assert sorted(p.name for p in (out / "time_split").iterdir()) == ["data"]
    assert len(list((data / "01").glob("t*.tif"))) == 8
    config.experiment.split_frame = 24  # validates (>= sequence_length) but leaves no frame to evaluate
    late = next(step for step in experiment_plan(config, tmp_path / "late").plan.steps if step.name.startswith("split"))
    with pytest.raises(RshnError, match=r"experiment\.split_frame = 24 leaves no frame of .*Synthetic/01 "
                                        r"\(24 frames\) to evaluate$"):
        late.action()
    assert not (tmp_path / "late").exists()


# ---------------------------------------------------------------------------------------------------------------
# Table 3


def _fake_ctc(root: Path, names) -> Path:
    for name in names:
        for seq in ("01", "02"):
            (root / name / seq).mkdir(parents=True)
            (root / name / f"{seq}_GT" / "TRA").mkdir(parents=True)
    return root


def test_table3_dry_run_lists_eight_rows_for_each_dataset_present(tmp_path, capsys):
    data = _fake_ctc(tmp_path / "ctc", ["DIC-C2DH-HeLa", "PhC-C2DH-U373"])
    (data / "Fluo-N2DH-GOWT1" / "01").mkdir(parents=True)  # incomplete: no 02, no ground truth
    out = tmp_path / "t3"
    assert main(["table3", "--data", str(data), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    cells = [line for line in text.splitlines() if line.startswith("  [todo] ") and re.search(r"\(variant \S+\)$", line)]
    assert len(cells) == 16
    for dataset in ("DIC-C2DH-HeLa", "PhC-C2DH-U373"):
        assert sum(dataset in line for line in cells) == 8
        for row in ROWS:
            assert any(dataset in line and f"(variant {row.name})" in line for line in cells)
    assert "8 rows x 2 dataset(s) present" in text and "missing Fluo-N2DH-GOWT1:" in text
    assert not out.exists()  # a dry run writes nothing
    # the six RSHN rows share one network per fold; the volumetric and the extra SHN row train their own
    groups, missing = plan_table3(data, out, "cpu")
    assert set(missing) == {"Fluo-N2DH-GOWT1"}
    assert [(g.dataset, g.experiment.root.name, len(g.rows)) for g in groups] == [
        ("DIC-C2DH-HeLa", "rshn", 6), ("DIC-C2DH-HeLa", "volumetric", 1), ("DIC-C2DH-HeLa", "shn", 1),
        ("PhC-C2DH-U373", "rshn", 6), ("PhC-C2DH-U373", "volumetric", 1), ("PhC-C2DH-U373", "shn", 1)]
    trains = [s.name for g in groups for s in g.experiment.plan.steps if s.name.startswith("train[")]
    assert len(trains) == 12
    rshn = groups[0].experiment
    assert rshn.config.postprocessing.bandwidth == 0.1 and rshn.config.data.resampled_size == [256, 256]
    assert rshn.variants["rshn_hdbscan"].postprocessing.clustering == "hdbscan"
    assert rshn.variants["rshn_h0.2"].postprocessing.bandwidth == 0.2
    u373 = groups[3].experiment
    assert u373.config.data.resampled_size == [384, 512] and u373.config.data.dataset_dir == str(
        data / "PhC-C2DH-U373")


def test_table3_rows_selection_and_missing_data(tmp_path, capsys):
    assert [r.name for r in select_rows(["volumetric", "rshn_h0.1"])] == ["rshn_h0.1", "volumetric_h0.1"]
    with pytest.raises(RshnError, match="unknown row 'h0.3'"):
        select_rows(["h0.3"])
    data = _fake_ctc(tmp_path / "ctc", ["DIC-C2DH-HeLa"])
    assert main(["table3", "--data", str(data / "DIC-C2DH-HeLa"), "--rows", "rshn_h0.05", "--dry-run"]) == 0
    assert "1 rows x 1 dataset(s) present (DIC-C2DH-HeLa)" in capsys.readouterr().out
    assert main(["table3", "--data", str(tmp_path), "--dry-run"]) == EXIT_USER_ERROR
    assert "none of the Table 3 datasets" in capsys.readouterr().err


def _hand_table():
    rows = []
    for k, row in enumerate(ROWS[:2]):
        ours = {"SEG": 0.5 + 0.1 * k, "TRA": 0.8, "OP": 0.65 + 0.05 * k}
        cell = {"ours": ours, "paper": dict(zip(("SEG", "TRA", "OP"), PAPER_TABLE3[row.name]["DIC-C2DH-HeLa"])),
                "folds": [{"fold": "fold1", "test": "02", "SEG": 0.4 + 0.1 * k, "TRA": 0.7, "OP": 0.55},
                          {"fold": "fold2", "test": "01", "SEG": 0.6 + 0.1 * k, "TRA": 0.9, "OP": 0.75}],
                "run_folder": "x"}
        rows.append({"row": row.name, "network": row.network, "clustering": row.clustering,
                     "datasets": {"DIC-C2DH-HeLa": cell},
                     "overall": {"ours": ours, "paper": dict(zip(("SEG", "TRA", "OP"),
                                                                 PAPER_TABLE3[row.name]["Overall"])),
                                 "datasets": ["DIC-C2DH-HeLa"]}})
    return {"profile": "cpu", "datasets": ["DIC-C2DH-HeLa"], "cv_iterations": [4000], "rows": rows,
            "paper_overall_datasets": list(DATASETS)}


def test_table_outputs_put_our_values_beside_the_papers(tmp_path):
    from rshn_tf.table3 import plot_table

    table = _hand_table()
    markdown = table_markdown(table)
    assert "| RSHN | h = 0.025 | 0.500 (0.781) | 0.800 (0.933) | 0.650 (0.857) | 0.500 (0.760) |" in markdown
    assert "| RSHN | h = 0.05 | 0.600 (0.781) | 0.800 (0.932) | 0.700 (0.857) |" in markdown
    lines = list(csv.reader(io.StringIO(table_csv(table))))
    assert lines[0] == ["row", "network", "clustering", "dataset", "metric", "ours", "paper", "fold1", "fold2"]
    assert ["rshn_h0.05", "RSHN", "h = 0.05", "DIC-C2DH-HeLa", "SEG", "0.6000", "0.7810", "0.5000", "0.7000"] in lines
    assert ["rshn_h0.025", "RSHN", "h = 0.025", "Overall", "TRA", "0.8000", "0.9480", "", ""] in lines
    assert len(lines) == 1 + 2 * 2 * 3
    png = plot_table(table, tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paper_table3_overall_means_are_the_means_of_the_datasets():
    assert {row.name for row in ROWS if row.in_paper} == set(PAPER_TABLE3)
    for row in ROWS:
        if not row.in_paper:
            continue
        values = PAPER_TABLE3[row.name]
        for k in range(3):
            mean = sum(values[d][k] for d in DATASETS) / 3
            assert abs(mean - values["Overall"][k]) <= 0.0015, (row.name, k)
        for d in DATASETS + ("Overall",):
            seg, tra, op = values[d]
            assert abs((seg + tra) / 2 - op) <= 0.0011, (row.name, d)


# ---------------------------------------------------------------------------------------------------------------
# rshn experiment end to end on a synthetic video

TINY_YAML = """\
data:
  dataset: synthetic
  tile_size: [64, 64]
  sequence_length: 3
  border_band: 0
  num_workers: 1
  seg_sample_fraction: 1.0
model: {levels: 3, filters: 8, embedding_size: 8}
loss: {max_instances: 4, neighbour_radius: 20}
inference: {tile_overlap: 32, full_frame: true}
postprocessing: {min_size: 20}
training: {checkpoint_every: 50, log_every: 10, image_every: 0, learning_rate: 0.005}
experiment: {mode: two_fold, cv_iterations: 100}
"""


def _ctc_metrics_directly(res: Path, gt: Path) -> dict:
    import contextlib

    from ctc_metrics import evaluate_sequence

    with contextlib.redirect_stdout(io.StringIO()):
        return evaluate_sequence(str(res), str(gt), metrics=["SEG", "TRA", "DET"], threads=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, synthetic_dataset):
    """``rshn experiment`` run once on the synthetic dataset with the tiny config (two folds of 100 iterations: enough
    for the tiny network to find some cells, an empty result cannot be scored)."""
    folder = tmp_path_factory.mktemp("experiment")
    config_path = folder / "tiny.yaml"
    config_path.write_text(TINY_YAML)
    out = folder / "run"
    args = ["experiment", str(config_path), "--data", str(synthetic_dataset), "--out", str(out)]
    assert main(args) == 0
    return args, out, synthetic_dataset


@pytest.mark.slow
def test_experiment_writes_results_that_match_py_ctcmetrics(tiny_run):
    _, out, data = tiny_run
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "two_fold" and results["iterations"] == 100
    assert [(r["fold"], r["train"], r["test"]) for r in results["folds"]] == [
        ("fold1", ["01"], "02"), ("fold2", ["02"], "01")]
    for row in results["folds"]:
        res = out / row["fold"] / f"{row['test']}_RES"
        assert Path(row["result"]) == res and (res / "res_track.txt").is_file()
        direct = _ctc_metrics_directly(res, data / f"{row['test']}_GT")
        for metric in ("SEG", "TRA", "DET"):
            assert row[metric] == pytest.approx(direct[metric], abs=1e-12), metric
        assert row["OP_CTB"] == pytest.approx((direct["SEG"] + direct["TRA"]) / 2, abs=1e-12)
    for metric in ("SEG", "TRA", "DET", "OP_CTB"):
        assert results["mean"][metric] == pytest.approx(sum(r[metric] for r in results["folds"]) / 2, abs=1e-12)
    markdown = (out / "results.md").read_text()
    assert f"| fold1 | 01 | 02 | {results['folds'][0]['SEG']:.3f} |" in markdown
    # every output folder holds the configuration that produced it
    saved = load_config(out / "config.yaml")
    assert saved.experiment.cv_iterations == 100 and saved.data.dataset_dir == str(data)
    fold_model = load_config(out / "fold1" / "model" / "config.yaml")
    assert fold_model.data.train_sequences == ["01"] and fold_model.training.iterations == 100
    assert json.loads((out / "fold2" / "model" / "training_state.json").read_text())["step"] == 100


@pytest.mark.slow
def test_rerunning_a_finished_experiment_skips_every_step(tiny_run, capsys):
    args, out, _ = tiny_run
    weights = out / "fold1" / "model" / "weights.last.weights.h5"
    before = weights.stat().st_mtime_ns
    log_lines = len((out / "experiment.log").read_text().splitlines())
    assert main(args) == 0
    assert f"{out}: 0 steps ran" in capsys.readouterr().out
    new_lines = (out / "experiment.log").read_text().splitlines()[log_lines:]
    assert len(new_lines) == 7 and all(" skip " in line for line in new_lines)
    assert weights.stat().st_mtime_ns == before  # not retrained
    assert main([*args, "--dry-run"]) == 0
    assert "7 steps, 0 to do, 7 done" in capsys.readouterr().out
    # removing a result re-runs its prediction and everything after it, nothing before
    import shutil

    shutil.rmtree(out / "fold2" / "01_RES")
    assert main([*args, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "[done] train[fold2]" in listing and "[todo] predict[fold2/01]" in listing
    assert "[todo] evaluate[fold2/01]" in listing and "[todo] report" in listing
    assert "[done] evaluate[fold1/02]" in listing
    # a changed configuration is refused, naming the key, instead of mixing two experiments in one folder
    assert main([*args, "--set", "model.filters=4"]) == EXIT_USER_ERROR
    assert "model.filters: 8 -> 4" in capsys.readouterr().err


@pytest.mark.slow
def test_variants_reuse_the_saved_embeddings_of_the_same_network(tiny_run):
    from rshn_tf.experiments import run_experiment

    args, out, data = tiny_run
    config = load_experiment_config(args[1], data=data)
    same = copy.deepcopy(config)
    wide = copy.deepcopy(config)
    wide.postprocessing.bandwidth = 0.3
    variant_out = out.parent / "variants"
    import shutil

    shutil.copytree(out, variant_out)  # the finished networks: the variant run must not train again
    outcome = run_experiment(config, variant_out, variants={"same": same, "h0.3": wide})
    assert not any(name.startswith("train[") for name in outcome.ran)
    assert "predict[fold1/02]" in outcome.ran  # again, now with embeddings
    pairs = sorted((variant_out / "fold1" / "02_embeddings").glob("pair_*.npy"))
    assert len(pairs) == 23
    variants = outcome.results["variants"]
    assert variants["same"]["mean"] == outcome.results["mean"]
    # the experiment's own post-processing is copied, not repeated: full-frame embeddings reproduce the prediction
    # exactly, as running the post-processing on them shows
    step = next(s for s in outcome.experiment.plan.steps if s.name == "postprocess[same, fold1/02]")
    assert step.description.startswith("copy ")
    import numpy as np
    import tifffile

    from rshn_tf.postprocess import run_postprocess

    check = variant_out / "check_RES"
    run_postprocess(variant_out / "fold1" / "02_embeddings", check,
                    load_config(variant_out / "fold1" / "model" / "config.yaml"), (128, 128))
    masks = sorted(check.glob("mask*.tif"))
    assert len(masks) == 24
    for mask in masks:
        np.testing.assert_array_equal(tifffile.imread(mask), tifffile.imread(variant_out / "fold1" / "02_RES"
                                                                             / mask.name))
    assert "## Post-processing variants" in (variant_out / "results.md").read_text()
    direct = _ctc_metrics_directly(variant_out / "fold2" / "variants" / "h0.3" / "01_RES", data / "01_GT")
    row = variants["h0.3"]["folds"][1]
    assert row["test"] == "01" and row["SEG"] == pytest.approx(direct["SEG"], abs=1e-12)


@pytest.mark.slow
def test_time_split_experiment_end_to_end(tmp_path, synthetic_dataset, capsys):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(TINY_YAML)
    out = tmp_path / "run"
    args = ["experiment", str(config_path), "--data", str(synthetic_dataset), "--out", str(out),
            "--set", "experiment.mode=time_split", "--set", "experiment.split_frame=16",
            "--set", 'data.train_sequences=["01"]', "--set", "training.iterations=100"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "time_split" and results["iterations"] == 100
    [row] = results["folds"]
    assert (row["fold"], row["train"], row["test"]) == ("time_split", ["01"], "01")
    gt = out / "time_split" / "data" / "01_GT"
    assert len(list((gt / "TRA").glob("man_track*.tif"))) == 24 - 16
    assert len(list((out / "time_split" / "data" / "01").glob("t*.tif"))) == 24 - 16
    assert len(list((out / "time_split" / "01_RES").glob("mask*.tif"))) == 24 - 16
    direct = _ctc_metrics_directly(out / "time_split" / "01_RES", gt)  # scored against the later frames only
    for metric in ("SEG", "TRA", "DET"):
        assert row[metric] == pytest.approx(direct[metric], abs=1e-12), metric
    model_config = load_config(out / "time_split" / "model" / "config.yaml")
    assert model_config.data.train_frames == [0, 16] and model_config.training.iterations == 100
    capsys.readouterr()
    assert main(args) == 0  # every step, the split included, is done
    assert f"{out}: 0 steps ran" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_runs_end_to_end_when_shrunk(tmp_path, capsys):
    out = tmp_path / "demo"
    shrink = ["--set", "experiment.synthetic_frames=8", "--set", "experiment.synthetic_size=[96, 96]",
              "--set", "training.iterations=4", "--set", "training.checkpoint_every=2",
              "--set", "data.tile_size=[64, 64]", "--set", "inference.tile_overlap=32",
              "--set", "model.levels=3", "--set", "model.filters=8"]
    assert main(["demo", "--out", str(out), *shrink]) == 0
    text = capsys.readouterr().out
    assert "held-out sequence 02 (trained on 01): SEG" in text and str(out / "overlay.gif") in text
    assert (out / "overlay.gif").read_bytes()[:6] == b"GIF89a"
    assert (out / "data" / "01" / "t007.tif").is_file() and not (out / "data" / "01" / "t008.tif").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "holdout" and results["folds"][0]["test"] == "02"
    assert main(["demo", "--out", str(out), *shrink]) == 0
    assert "all steps were already done" in capsys.readouterr().out
