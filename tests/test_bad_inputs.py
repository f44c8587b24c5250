"""A catalogue of bad inputs to the ``rshn`` command line (in the manner of traccuracy's test catalogue).

Every case builds its inputs in a fresh folder, runs one ``rshn`` verb in-process and asserts the contract for bad
input: exit status 2, one ``rshn VERB: error:`` message holding the case's key words (the file, frame or config
key at fault and what is wrong), no traceback, and nothing written: the folder holding inputs and outputs is the
same, file for file, before and after. A few subprocess cases check what a user's terminal shows.

Inputs are tiny: a 5-frame 96 × 96 synthetic sequence, a model folder holding only its ``config.yaml`` (every case
fails before weights are needed, except the one about missing weights), random unit embeddings of 32 × 48 frames,
and a 15-frame result with its ground truth from :mod:`tests.cases`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from ctc_submission.writer import write_ctc_result
from data_io.ctc import read_tiff, write_tiff, write_track_file
from rshn_tf.cli import EXIT_USER_ERROR, main
from rshn_tf.config import save_config
from tests import cases
from tests.conftest import REPO_ROOT

FRAMES = 5
SIZE = (96, 96)
EMBEDDING_SHAPE = (32, 48)

TINY_YAML = """\
data:
  dataset: tiny
  train_sequences: ["01"]
  tile_size: [64, 64]
  sequence_length: 3
  border_band: 0
  num_workers: 0
model:
  levels: 3
  filters: 4
  embedding_size: 4
training:
  iterations: 2
  image_every: 0
  validation_samples: 1
inference:
  tile_overlap: 32
postprocessing:
  min_size: 10
  num_seeds: 16
tracking:
  resample_interpolation: nearest
"""

POSTPROCESS_YAML = TINY_YAML.replace("tile_size: [64, 64]", "tile_size: [32, 32]").replace(
    "tile_overlap: 32", "tile_overlap: 16")


@pytest.fixture(scope="module")
def pristine_dataset(tmp_path_factory) -> Path:
    """A synthetic CTC dataset (sequence 01 only) that cases copy before breaking it."""
    from data_io.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("pristine") / "DS", frames=FRAMES, size=SIZE, seed=0,
                                   sequences=("01",))


class Workspace:
    """The folder of one case: builders of good inputs, which the case then breaks."""

    def __init__(self, root: Path, pristine: Path):
        self.root = root
        self.pristine = pristine

    def path(self, name: str) -> str:
        return str(self.root / name)

    def dataset(self) -> Path:
        """A copy of the synthetic dataset: ``DS/01``, ``DS/01_GT``."""
        target = self.root / "DS"
        if not target.exists():
            shutil.copytree(self.pristine, target)
        return target

    def yaml(self, text: str = TINY_YAML, name: str = "tiny.yaml") -> str:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def model(self, text: str = TINY_YAML) -> str:
        """A model folder with only its resolved ``config.yaml`` (no weights)."""
        from rshn_tf.config import load_config

        folder = self.root / "model"
        save_config(load_config(self.yaml(text, "model.yaml")), folder / "config.yaml")
        (self.root / "model.yaml").unlink()
        return str(folder)

    def float_frames(self, bad: float | None = None, frame: int = 2) -> str:
        """Sequence ``DS/01`` rewritten as float32 frames; ``bad`` (NaN, inf) fills a 4 × 4 block of ``frame``."""
        seq = self.dataset() / "01"
        for t in range(FRAMES):
            image = read_tiff(seq / f"t{t:03d}.tif").astype(np.float32)
            if bad is not None and t == frame:
                image[10:14, 20:24] = bad
            write_tiff(seq / f"t{t:03d}.tif", image)
        return str(seq)

    def embeddings(self, pairs: int = 3) -> Path:
        """Random unit embeddings ``pair_000.npy`` … of ``pairs + 1`` frames of 32 × 48, D = 4."""
        folder = self.root / "emb"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for index in range(pairs):
            pair = rng.normal(size=(2, *EMBEDDING_SHAPE, 4)).astype(np.float32)
            np.save(folder / f"pair_{index:03d}.npy", pair / np.linalg.norm(pair, axis=-1, keepdims=True))
        return folder

    def postprocess_args(self, *extra: str) -> list[str]:
        return ["postprocess", str(self.root / "emb"), self.path("RES"), "--config",
                self.yaml(POSTPROCESS_YAML, "post.yaml"), "--original-shape", *map(str, EMBEDDING_SHAPE), *extra]

    def result(self) -> tuple[Path, Path]:
        """A correct result ``01_RES`` and its ground truth ``01_GT`` (the division case, SEG on 3 frames)."""
        case = cases.division()
        gt = self.root / "01_GT"
        (gt / "TRA").mkdir(parents=True)
        (gt / "SEG").mkdir()
        for t, frame in enumerate(case.expected):
            write_tiff(gt / "TRA" / f"man_track{t:03d}.tif", frame.astype(np.uint16))
        for t in (2, 8, 13):
            write_tiff(gt / "SEG" / f"man_seg{t:03d}.tif", case.expected[t].astype(np.uint16))
        write_track_file(gt / "TRA" / "man_track.txt", case.tracks)
        return write_ctc_result(self.root / "01_RES", case.expected, case.tracks), gt


# --------------------------------------------------------------------------------------------------------------
# The cases: each returns the argv of one rshn call on a workspace it has prepared


def check(*sets: str, config: str = "DIC-C2DH-HeLa") -> Callable[[Workspace], list[str]]:
    args = ["check-config", config]
    for text in sets:
        args += ["--set", text]
    return lambda ws: args


def _duplicate_section(ws: Workspace) -> list[str]:
    return ["train", ws.yaml(TINY_YAML + "postprocessing:\n  bandwidth: 0.2\n"), "--data", str(ws.dataset()),
            "--model-dir", ws.path("M")]


def _duplicate_nested_key(ws: Workspace) -> list[str]:
    text = TINY_YAML.replace("  min_size: 10\n", "  min_size: 10\n  num_seeds: 8\n")
    return ["check-config", ws.yaml(text)]


def _range_error_in_file(ws: Workspace) -> list[str]:
    return ["train", ws.yaml(TINY_YAML.replace("iterations: 2", "iterations: 2\n  batch_size: 0")),
            "--data", str(ws.dataset()), "--model-dir", ws.path("M")]


def _train(*sets: str) -> Callable[[Workspace], list[str]]:
    def build(ws: Workspace) -> list[str]:
        args = ["train", ws.yaml(), "--data", str(ws.dataset()), "--model-dir", ws.path("M")]
        for text in sets:
            args += ["--set", text]
        return args

    return build


def _train_on(breaker: Callable[[Path], None]) -> Callable[[Workspace], list[str]]:
    def build(ws: Workspace) -> list[str]:
        breaker(ws.dataset())
        return ["train", ws.yaml(), "--data", str(ws.dataset()), "--model-dir", ws.path("M")]

    return build


def _train_nan_frame(ws: Workspace) -> list[str]:
    ws.float_frames(np.nan)
    return _train()(ws)


def _corrupt(path: Path) -> None:
    path.write_bytes(b"II*\x00garbage")


def _predict(prepare: Callable[[Workspace], str] | None = None, *extra: str,
             model: Callable[[Workspace], str] = Workspace.model) -> Callable[[Workspace], list[str]]:
    def build(ws: Workspace) -> list[str]:
        seq = prepare(ws) if prepare is not None else str(ws.dataset() / "01")
        return ["predict", "--model", model(ws), "--input", seq, "--output", ws.path("RES"), *extra]

    return build


def _model_without_config(ws: Workspace) -> str:
    (ws.root / "model").mkdir()
    return ws.path("model")


def _model_with_duplicate_key(ws: Workspace) -> str:
    folder = Path(ws.model())
    text = (folder / "config.yaml").read_text(encoding="utf-8")
    (folder / "config.yaml").write_text(text + "postprocessing:\n  bandwidth: 0.3\n", encoding="utf-8")
    return str(folder)


def _mixed_shapes(ws: Workspace) -> str:
    seq = ws.dataset() / "01"
    write_tiff(seq / "t003.tif", np.zeros((64, 96), np.uint16))
    return str(seq)


def _empty_input(ws: Workspace) -> str:
    (ws.root / "empty").mkdir()
    return ws.path("empty")


def _postprocess(breaker: Callable[[Path], None] | None = None, *extra: str) -> Callable[[Workspace], list[str]]:
    def build(ws: Workspace) -> list[str]:
        folder = ws.embeddings()
        if breaker is not None:
            breaker(folder)
        return ws.postprocess_args(*extra)

    return build


def _poke_pair(value: float) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        pair = np.load(folder / "pair_001.npy")
        pair[1, 5:8, 5:8, :] = value
        np.save(folder / "pair_001.npy", pair)

    return breaker


def _evaluate(breaker: Callable[[Path, Path], None]) -> Callable[[Workspace], list[str]]:
    def build(ws: Workspace) -> list[str]:
        res, gt = ws.result()
        breaker(res, gt)
        return ["evaluate", str(res), str(gt)]

    return build


def _export_onto_existing(ws: Workspace) -> list[str]:
    (ws.root / "out").mkdir()
    (ws.root / "out" / "keep.txt").write_text("mine")
    model = ws.model()
    (Path(model) / "weights.last.weights.h5").write_bytes(b"not read before the --out check")
    return ["export", "--model", model, "--out", ws.path("out")]


def _synth_into_non_empty(ws: Workspace) -> list[str]:
    (ws.root / "syn").mkdir()
    (ws.root / "syn" / "keep.txt").write_text("mine")
    return ["synth", ws.path("syn"), "--frames", "3", "--size", "96", "96"]


@dataclass(frozen=True)
class Bad:
    """One catalogue case: how to build the call, and words the error message must hold."""

    name: str
    build: Callable[[Workspace], list[str]]
    words: tuple[str, ...]


CATALOGUE = [
    # -- configuration: types, lengths, ranges, duplicates, provenance --------------------------------------------
    Bad("batch_size_zero", check("training.batch_size=0"),
        ("--set training.batch_size=0", "'training.batch_size'", "at least 1")),
    Bad("tile_size_one_number", check("data.tile_size=[64]"), ("'data.tile_size'", "two positive integers", "[64]")),
    Bad("tile_size_empty", check("data.tile_size=[]"), ("'data.tile_size'", "two positive integers", "[]")),
    Bad("tile_size_one_number_on_a_preset", check("data.tile_size=[256]"),
        ("--set data.tile_size=[256]", "'data.tile_size'")),
    Bad("nan_float_key", check("postprocessing.bandwidth=.nan"), ("'postprocessing.bandwidth'", "finite", "nan")),
    Bad("inf_float_key", check("postprocessing.coordinate_factor=.inf"),
        ("'postprocessing.coordinate_factor'", "finite", "inf")),
    Bad("nan_in_a_list", check("augmentation.scale_range=[0.5, .nan]"), ("'augmentation.scale_range'", "finite")),
    Bad("hdbscan_min_cluster_size_one", check("postprocessing.hdbscan_min_cluster_size=1"),
        ("'postprocessing.hdbscan_min_cluster_size'", "at least 2")),
    Bad("negative_sigma", check("data.smoothing_sigma=-1"), ("'data.smoothing_sigma'", "non-negative")),
    Bad("iou_above_one", check("tracking.link_iou_threshold=1.5"), ("'tracking.link_iou_threshold'", "in [0, 1]")),
    Bad("two_errors_reported_together", check("training.batch_size=0", "postprocessing.bandwidth=3"),
        ("2 invalid config values", "'training.batch_size'", "'postprocessing.bandwidth'")),
    Bad("unknown_activation", check("model.activation=rleu"), ("'model.activation'", "relu", "'rleu'")),
    Bad("wrong_type", check("model.levels=seven"), ("'model.levels'", "must be int", "'seven'")),
    Bad("unknown_key", check("tracking.t_merge=10"), ("unknown key 'tracking.t_merge'",)),
    Bad("malformed_set", check("postprocessing"), ("--set 'postprocessing'", "section.key=value")),
    Bad("missing_config_file", check(config="no/such/file.yaml"), ("no/such/file.yaml", "not found")),
    Bad("duplicate_section", _duplicate_section, ("tiny.yaml", "line", "duplicate key 'postprocessing'")),
    Bad("duplicate_nested_key", _duplicate_nested_key, ("tiny.yaml", "duplicate key 'num_seeds'")),
    Bad("range_error_names_the_file", _range_error_in_file, ("tiny.yaml: key 'training.batch_size'", "at least 1")),
    Bad("range_error_names_the_set", _train("training.iterations=0"),
        ("--set training.iterations=0: key 'training.iterations'",)),
    # -- training data ---------------------------------------------------------------------------------------------
    Bad("train_missing_dataset", lambda ws: ["train", ws.yaml(), "--data", ws.path("nope"), "--model-dir",
                                             ws.path("M")], ("nope", "dataset folder not found")),
    Bad("train_nan_frame", _train_nan_frame, ("t002.tif", "frame 2", "NaN")),
    Bad("train_corrupt_tiff", _train_on(lambda ds: _corrupt(ds / "01" / "t001.tif")), ("t001.tif", "unreadable TIFF")),
    Bad("train_missing_frame", _train_on(lambda ds: (ds / "01" / "t002.tif").unlink()),
        ("t002.tif is missing", "not contiguous")),
    Bad("train_frame_of_another_dtype",
        _train_on(lambda ds: write_tiff(ds / "01" / "t003.tif", np.zeros(SIZE, np.float32))),
        ("t003.tif", "dtype float32")),
    Bad("train_gt_not_matching_frames", _train_on(lambda ds: (ds / "01_GT" / "TRA" / "man_track004.tif").unlink()),
        ("4 TRA masks but 5 raw frames",)),
    Bad("train_sequence_without_frames", _train("data.train_sequences=['03']"),
        ("sequence 03 not found", "--data", "data.train_sequences")),
    # -- prediction ------------------------------------------------------------------------------------------------
    Bad("predict_nan_block", _predict(lambda ws: ws.float_frames(np.nan)), ("t002.tif", "frame 2", "NaN", "16")),
    Bad("predict_inf_block", _predict(lambda ws: ws.float_frames(np.inf, frame=4)), ("t004.tif", "frame 4")),
    Bad("predict_missing_input", _predict(lambda ws: ws.path("nope")), ("nope", "sequence folder not found")),
    Bad("predict_empty_input", _predict(_empty_input), ("empty", "no raw frame files")),
    Bad("predict_mixed_frame_shapes", _predict(_mixed_shapes), ("t003.tif", "frame shape")),
    Bad("predict_model_without_config", _predict(model=_model_without_config), ("config.yaml", "missing")),
    Bad("predict_model_config_duplicate_key", _predict(model=_model_with_duplicate_key),
        ("config.yaml", "duplicate key 'postprocessing'")),
    Bad("predict_model_without_weights", _predict(), ("weights",)),
    Bad("predict_unknown_weights", _predict(None, "--weights", "bestest"), ("--weights bestest", "neither")),
    Bad("predict_set_model_key", _predict(None, "--set", "model.levels=4"), ("model.*", "cannot be changed")),
    Bad("predict_set_out_of_range", _predict(None, "--set", "inference.tile_overlap=-1"),
        ("--set inference.tile_overlap=-1", "'inference.tile_overlap'")),
    # -- post-processing of saved embeddings -----------------------------------------------------------------------
    Bad("postprocess_nan_embeddings", _postprocess(_poke_pair(np.nan)),
        ("pair_001.npy", "frame 2", "NaN", "--save-embeddings")),
    Bad("postprocess_inf_embeddings", _postprocess(_poke_pair(-np.inf)), ("pair_001.npy", "infinite")),
    Bad("postprocess_missing_pair", _postprocess(lambda f: (f / "pair_001.npy").unlink()),
        ("pair_001.npy is missing",)),
    Bad("postprocess_wrong_shape", _postprocess(lambda f: np.save(f / "pair_002.npy", np.zeros((2, 8, 8, 4),
                                                                                              np.float32))),
        ("pair_002.npy", "shape")),
    Bad("postprocess_integer_embeddings", _postprocess(lambda f: np.save(f / "pair_000.npy",
                                                                         np.zeros((2, 32, 48, 4), np.int32))),
        ("pair_000.npy", "floating point")),
    Bad("postprocess_corrupt_file", _postprocess(lambda f: (f / "pair_000.npy").write_bytes(b"junk")),
        ("pair_000.npy", "cannot read")),
    Bad("postprocess_non_positive_shape",
        lambda ws: [*_postprocess()(ws)[:-2], "0", "-5"], ("--original-shape 0 -5", "two positive integers")),
    Bad("postprocess_nan_config", _postprocess(None, "--set", "postprocessing.bandwidth=.nan"),
        ("'postprocessing.bandwidth'", "finite")),
    # -- evaluation ------------------------------------------------------------------------------------------------
    Bad("evaluate_corrupt_result_mask", _evaluate(lambda res, gt: _corrupt(res / "mask003.tif")),
        ("mask003.tif", "unreadable TIFF")),
    Bad("evaluate_result_mask_of_another_size",
        _evaluate(lambda res, gt: write_tiff(res / "mask003.tif", np.zeros((10, 10), np.uint16))),
        ("mask003.tif", "frame size (10, 10)", "man_track000.tif")),
    Bad("evaluate_float_result_mask",
        _evaluate(lambda res, gt: write_tiff(res / "mask003.tif", np.zeros((64, 96), np.float32))),
        ("mask003.tif", "integers")),
    Bad("evaluate_bad_track_line", _evaluate(lambda res, gt: (res / "res_track.txt").write_text("1 0 x 0\n")),
        ("res_track.txt", "line 1", "4 integers")),
    Bad("evaluate_corrupt_gt_mask", _evaluate(lambda res, gt: _corrupt(gt / "TRA" / "man_track004.tif")),
        ("man_track004.tif", "unreadable TIFF")),
    Bad("evaluate_corrupt_seg_mask", _evaluate(lambda res, gt: _corrupt(gt / "SEG" / "man_seg008.tif")),
        ("man_seg008.tif", "unreadable TIFF")),
    Bad("evaluate_too_few_masks", _evaluate(lambda res, gt: (res / "mask014.tif").unlink()),
        ("14 result masks but 15 ground-truth frames",)),
    # -- writers that refuse to replace a folder -------------------------------------------------------------------
    Bad("export_onto_existing_folder", _export_onto_existing, ("out", "already exists", "--overwrite")),
    Bad("synth_into_non_empty_folder", _synth_into_non_empty, ("syn", "not empty", "--overwrite")),
    Bad("synth_frames_too_small", lambda ws: ["synth", ws.path("syn"), "--frames", "3", "--size", "48", "48"],
        ("48x48", "--size")),
]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``folder``: relative path → (size, modification time)."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.name for case in CATALOGUE])
def test_bad_input_gets_one_clear_error_and_writes_nothing(case, tmp_path, pristine_dataset, capsys):
    ws = Workspace(tmp_path, pristine_dataset)
    argv = case.build(ws)
    before = snapshot(tmp_path)
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    assert status == EXIT_USER_ERROR, err
    assert err.startswith(f"rshn {argv[0]}: error: ") and "Traceback" not in err, err
    for word in case.words:
        assert word in err, f"{word!r} not in {err!r}"
    assert snapshot(tmp_path) == before, "the failed call wrote or changed files"


def test_the_catalogue_is_large_and_its_names_are_unique():
    assert len(CATALOGUE) >= 30 and len({case.name for case in CATALOGUE}) == len(CATALOGUE)


# --------------------------------------------------------------------------------------------------------------
# What a terminal shows: subprocesses


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "rshn_tf.cli", *args], capture_output=True, text=True,
                          check=False, env=environment, cwd=REPO_ROOT)


def test_config_errors_end_in_one_line_without_a_traceback():
    result = _run("check-config", "DIC-C2DH-HeLa", "--set", "data.tile_size=[256]")
    assert result.returncode == EXIT_USER_ERROR
    assert result.stderr.splitlines() == ["rshn check-config: error: --set data.tile_size=[256]: key "
                                          "'data.tile_size' must be two positive integers (height, width), got [256]"]


def test_a_tensorflow_verb_prints_no_tensorflow_start_up_noise(tmp_path):
    """``rshn train`` imports TensorFlow before it finds that the data folder is missing: the error is the only
    line on stderr (without -v, no oneDNN, CPU-instruction or absl notices)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML, encoding="utf-8")
    result = _run("train", str(config), "--data", str(tmp_path / "nope"), "--model-dir", str(tmp_path / "M"))
    assert result.returncode == EXIT_USER_ERROR
    assert result.stderr.splitlines() == [f"rshn train: error: {tmp_path / 'nope'}: dataset folder not found"]
    assert not (tmp_path / "M").exists()
