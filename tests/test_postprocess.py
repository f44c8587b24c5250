"""End-to-end tests of ``rshn postprocess``: oracle embeddings → tiles → clustering → merging → tracking →
resampling → writing, on the small catalogue cases and (oracle test, real CTC data) on two paper datasets."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from data_io.ctc import read_tiff, read_track_file, write_tiff, write_track_file
from rshn_tf.cli import EXIT_USER_ERROR, main
from rshn_tf.config import load_config
from rshn_tf.errors import RshnError
from rshn_tf.evaluation import evaluate_result, validate_result
from rshn_tf.postprocess import PostProcessor, run_postprocess
from tests import cases
from tests.conftest import REPO_ROOT

SMALL_CONFIG = """\
data:
  resampled_size: [64, 96]
  tile_size: [64, 64]
  border_band: {band}
inference:
  tile_overlap: 32
postprocessing:
  min_size: 10
tracking:
  resample_interpolation: nearest
"""


def small_config(tmp_path, band=0):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_CONFIG.format(band=band))
    return path


def read_result(folder):
    masks = sorted(folder.glob("mask*.tif"))
    return np.stack([read_tiff(p) for p in masks]).astype(np.int64), read_track_file(folder / "res_track.txt")


@pytest.mark.parametrize("case", cases.catalogue(), ids=lambda c: c.name)
def test_catalogue_case_end_to_end(case, tmp_path):
    emb = tmp_path / "emb"
    cases.write_oracle_embeddings(case.observed, emb, window=8, distance=10, noise=0.05, seed=1)
    out = tmp_path / "01_RES"
    code = main(["postprocess", str(emb), str(out), "--config", str(small_config(tmp_path, case.border_band)),
                 "--original-shape", *map(str, cases.SHAPE)])
    assert code == 0
    labels, tracks = read_result(out)
    got = cases.canonical(labels, tracks)
    want = cases.canonical(case.expected, case.tracks)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    validate_result(out)
    saved = load_config(out / "config.yaml")
    assert saved.data.tile_size == [64, 64] and saved.data.border_band == case.border_band


def test_results_are_resampled_to_the_original_size(tmp_path):
    case = cases.division()
    emb = tmp_path / "emb"
    cases.write_oracle_embeddings(case.observed, emb, window=8, distance=10)
    out = tmp_path / "RES"
    assert main(["postprocess", str(emb), str(out), "--config", str(small_config(tmp_path)),
                 "--original-shape", "128", "192"]) == 0
    labels, tracks = read_result(out)
    assert labels.shape == (15, 128, 192)
    # nearest-neighbour upsampling by exactly 2 about the image centre repeats every pixel twice
    expected = case.expected.repeat(2, axis=1).repeat(2, axis=2)
    got = cases.canonical(labels, tracks)
    want = cases.canonical(expected, case.tracks)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_streaming_api_matches_the_cli(tmp_path):
    case = cases.false_split()
    emb = tmp_path / "emb"
    n = cases.write_oracle_embeddings(case.observed, emb, window=8, distance=10)
    config = load_config(small_config(tmp_path))
    processor = PostProcessor(config, cases.SHAPE)
    for t in range(n):
        processor.add_pair(np.load(emb / f"pair_{t:03d}.npy"))
    labels, tracks = processor.result()
    run_postprocess(emb, tmp_path / "RES", config, cases.SHAPE)
    disk_labels, disk_tracks = read_result(tmp_path / "RES")
    np.testing.assert_array_equal(labels, disk_labels)
    np.testing.assert_array_equal(tracks, disk_tracks)
    assert set(processor.timings) >= {"clustering", "merging", "tracking", "finalising"}


def test_missing_pairs_and_wrong_shapes_fail_clearly(tmp_path, capsys):
    case = cases.one_cell()
    emb = tmp_path / "emb"
    cases.write_oracle_embeddings(case.observed, emb, window=8, distance=10)
    config = str(small_config(tmp_path))
    args = ["--config", config, "--original-shape", "64", "96"]
    (emb / "pair_001.npy").unlink()
    assert main(["postprocess", str(emb), str(tmp_path / "RES"), *args]) == EXIT_USER_ERROR
    assert "pair_001.npy is missing" in capsys.readouterr().err
    np.save(emb / "pair_001.npy", np.zeros((2, 64, 90, 16), np.float32))
    assert main(["postprocess", str(emb), str(tmp_path / "RES"), *args]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "pair_001.npy: embeddings of shape (2, 64, 90, 16), expected (2, 64, 96, 16)" in err
    np.save(emb / "pair_001.npy", np.zeros((2, 64, 96, 8), np.float32))
    assert main(["postprocess", str(emb), str(tmp_path / "RES"), *args]) == EXIT_USER_ERROR
    assert "expected (2, 64, 96, 16)" in capsys.readouterr().err
    np.save(emb / "pair_001.npy", np.zeros((2, 64, 96, 16), np.int32))
    assert main(["postprocess", str(emb), str(tmp_path / "RES"), *args]) == EXIT_USER_ERROR
    assert "must be floating point" in capsys.readouterr().err
    assert main(["postprocess", str(tmp_path / "none"), str(tmp_path / "RES"), *args]) == EXIT_USER_ERROR
    assert "embeddings folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["postprocess", str(tmp_path / "empty"), str(tmp_path / "RES"), *args]) == EXIT_USER_ERROR
    assert "no pair_NNN.npy files" in capsys.readouterr().err
    assert not (tmp_path / "RES").exists()


# --------------------------------------------------------------------------------------------------------------
# Oracle test on real CTC data


def oracle_masks(sequence) -> tuple[np.ndarray, int]:
    """Instance masks of every frame with TRA ids: the silver truth, with the cells it misses filled in.

    The silver truth lacks some cells for stretches of frames (e.g. 122 marker-frames of DIC-C2DH-HeLa 02). Such a
    cell gets the silver-truth mask of the same track from the nearest frame that has one, moved by the shift of
    its TRA marker's centroid, pasted on background only; a track without any silver-truth mask gets its marker.

    Returns:
        (T, H, W) int32 masks and the number of filled-in cells.
    """
    from scipy import ndimage

    masks = np.stack([sequence.silver_seg[t] for t in range(sequence.num_frames)]).astype(np.int32)
    tra = sequence.tra.astype(np.int32)
    present = {(t, int(l)) for t in range(len(masks)) for l in np.unique(masks[t])[1:]}
    filled = 0
    for t in range(len(tra)):
        for label in np.unique(tra[t])[1:].tolist():
            if (t, label) in present:
                continue
            sources = [u for u in range(len(masks)) if (u, label) in present]
            marker = tra[t] == label
            if sources:
                u = min(sources, key=lambda u: (abs(u - t), u))
                shift = np.subtract(ndimage.center_of_mass(marker), ndimage.center_of_mass(tra[u] == label))
                shape = ndimage.shift((masks[u] == label).astype(np.uint8), np.round(shift), order=0) > 0
            else:
                shape = marker
            masks[t][shape & (masks[t] == 0)] = label
            filled += 1
    return masks, filled


def network_video(masks: np.ndarray, config, original_shape) -> np.ndarray:
    """Masks at the network resolution of ``config`` (nearest neighbour)."""
    from data_io.preprocess import network_shape
    from data_io.resample import resample_2d

    shape = network_shape(original_shape, config.data)
    return np.stack([resample_2d(f, shape, "nearest", scale=config.data.extra_scale) for f in masks])


def silver_truth_seg(sequence, gt_dir, folder) -> float:
    """SEG of the silver truth itself scored as a result against the gold SEG."""
    (folder).mkdir()
    for t in range(sequence.num_frames):
        write_tiff(folder / f"mask{t:03d}.tif", sequence.silver_seg[t].astype(np.uint16))
    write_track_file(folder / "res_track.txt", np.zeros((0, 4), np.int64))
    return evaluate_result(folder, gt_dir, metrics=["SEG"], validate=False)["SEG"]


ORACLE = {
    # dataset, sequence, pair file dtype (float16 halves the ~9 GB of float32 pairs of Fluo-N2DL-HeLa)
    "DIC-C2DH-HeLa": ("02", np.float32),
    "Fluo-N2DL-HeLa": ("01", np.float16),
}


@pytest.mark.ctc
@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(ORACLE))
def test_oracle_embeddings_of_real_data_reach_the_silver_truth(dataset, ctc_dataset, tmp_path, caplog):
    from data_io.ctc import load_sequence

    caplog.set_level(logging.WARNING)
    seq, dtype = ORACLE[dataset]
    root = ctc_dataset(dataset)
    sequence = load_sequence(root, seq, load_silver=True)
    if len(sequence.silver_seg) != sequence.num_frames:
        pytest.skip(f"{dataset}/{seq}_ST/SEG does not cover every frame")
    config = load_config(dataset)
    masks, filled = oracle_masks(sequence)
    video = network_video(masks, config, sequence.shape)
    emb = tmp_path / "emb"
    cases.write_oracle_embeddings(video, emb, window=config.data.sequence_length,
                                  distance=config.loss.neighbour_radius, noise=0.05, seed=0, dtype=dtype)
    out = tmp_path / f"{seq}_RES"
    assert main(["postprocess", str(emb), str(out), "--config", dataset,
                 "--original-shape", *map(str, sequence.shape)]) == 0
    shutil.rmtree(emb)
    gt_dir = root / f"{seq}_GT"
    scores = evaluate_result(out, gt_dir)
    reference = silver_truth_seg(sequence, gt_dir, tmp_path / "ST_RES")
    print(f"{dataset} {seq}: oracle SEG {scores['SEG']:.4f} (silver truth {reference:.4f}), "
          f"TRA {scores['TRA']:.4f}, DET {scores['DET']:.4f} ({filled} cells filled into the silver truth)")
    assert scores["TRA"] >= 0.97
    assert scores["SEG"] >= reference - 0.03


def test_inference_tiles_larger_than_the_training_crop_keep_a_cell_wider_than_the_overlap(tmp_path):
    """A cell of radius 22 on the 64 × 96 grid touches an inner border of both 64-wide tiles (overlap 32), so the
    merge drops it (§2.4); one 64 × 96 inference tile (``inference.tile_size``; full-frame mode, so the tile need not
    fit the network's pooling) keeps it whole."""
    video = np.zeros((3,) + cases.SHAPE, np.int32)
    for t in range(3):
        cases.paint_disk(video, t, 1, 32, 48, 22)
    emb = tmp_path / "emb"
    cases.write_oracle_embeddings(video, emb, window=8, distance=10, noise=0.05, seed=1)
    counts = {}
    for name, overrides in {"training tiles": [], "whole-grid tile": ["inference.full_frame=true",
                                                                            "inference.tile_size=[64, 96]"]}.items():
        config = load_config(small_config(tmp_path), overrides)
        run_postprocess(emb, tmp_path / name, config, cases.SHAPE)
        labels, _ = read_result(tmp_path / name)
        counts[name] = [(frame == label).sum() for frame in labels for label in np.unique(frame) if label]
    assert counts["training tiles"] == []
    assert counts["whole-grid tile"] == [(video[0] == 1).sum()] * 3


# --------------------------------------------------------------------------------------------------------------
# Streaming to disk, checkpoints, --resume, one writer per output (issue 16)


def folder_bytes(folder):
    """Every file of a folder (relative name → bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden_entries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def resume_case(tmp_path_factory):
    """Oracle embeddings of 16 frames of drifting disks with false mitoses, divisions, gaps and speckles (15 pairs),
    the config (checkpoints every 3 pairs, so 5 checkpoints, the last after the last pair) and the uninterrupted
    result; frames are resampled back from the 64 × 96 grid to 80 × 120 with the label-Gaussian interpolation."""
    root = tmp_path_factory.mktemp("resume")
    video = cases.messy_video(cases.SHAPE, cells=6, frames=16, seed=3)
    emb = root / "emb"
    cases.write_oracle_embeddings(video, emb, window=8, distance=10, noise=0.05, seed=1)
    config = small_config(root, band=2)
    args = ["--config", str(config), "--original-shape", "80", "120", "--set", "inference.checkpoint_every=3",
            "--set", "tracking.resample_interpolation=label_gaussian"]
    reference = root / "reference"
    assert main(["postprocess", str(emb), str(reference), *args]) == 0
    return emb, args, folder_bytes(reference)


@pytest.mark.parametrize("point, n", [
    ("pair", 1),         # before the first checkpoint: nothing to resume, starts over
    ("pair", 7),         # between checkpoints 2 and 3
    ("checkpoint", 2),   # half of checkpoint 2 written
    ("checkpoint", 5),   # half of the last checkpoint (after the last pair) written
    ("frame", 6),        # half of a finished frame written
    ("mask", 9),         # finalisation: the result half written
    ("cleanup", 1),      # the result is in place, the temporary folder not yet removed
])
def test_killed_postprocess_resumes_to_the_identical_result(resume_case, tmp_path, capsys, point, n):
    emb, args, reference = resume_case
    out = tmp_path / "RES"
    killed = subprocess.run([sys.executable, "-m", "tests.kill_driver", point, str(n), "postprocess", str(emb),
                             str(out), *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert out.exists() == (point == "cleanup")  # the result appears complete or not at all
    partial = tmp_path / ".RES.partial"
    saved_checkpoint = (partial / "checkpoint.npz").exists()
    assert saved_checkpoint == ((point, n) != ("pair", 1))
    if saved_checkpoint:  # an unfinished run is refused without --resume, naming its folder and the remedy
        assert main(["postprocess", str(emb), str(out), *args]) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert "unfinished run" in err and str(partial) in err and "--resume" in err
    assert main(["postprocess", str(emb), str(out), *args, "--resume"]) == 0
    assert folder_bytes(out) == reference
    assert hidden_entries(tmp_path) == []  # temporary folder and lock removed


def test_frames_go_to_disk_as_soon_as_the_tracker_is_done_with_them(tmp_path):
    from rshn_tf.label_store import LabelStore

    video = cases.drifting_disks(cases.SHAPE, cells=4, frames=20, seed=1)
    emb = tmp_path / "emb"
    n = cases.write_oracle_embeddings(video, emb, window=8, distance=10)
    config = load_config(small_config(tmp_path), ["tracking.merge_search_frames=3"])
    store = LabelStore(tmp_path / "frames")
    processor = PostProcessor(config, cases.SHAPE, store=store)
    window = config.tracking.merge_search_frames + 2
    for t in range(n):
        processor.add_pair(np.load(emb / f"pair_{t:03d}.npy"))
        assert store.count == max(t + 2 - window, 0)  # all but the last `window` frames are on disk
    labels, tracks = processor.result()
    assert store.count == n + 1
    memory = PostProcessor(config, cases.SHAPE)
    for t in range(n):
        memory.add_pair(np.load(emb / f"pair_{t:03d}.npy"))
    expected = memory.result()
    np.testing.assert_array_equal(labels, expected[0])
    np.testing.assert_array_equal(tracks, expected[1])


def test_a_failed_run_says_where_it_is_and_resume_checks_the_arguments(resume_case, tmp_path, monkeypatch, capsys):
    emb, args, reference = resume_case
    out = tmp_path / "RES"
    real = PostProcessor.add_pair_tiles

    def failing(self, tiles):
        if self.num_pairs == 8:
            raise RshnError("disk full")
        real(self, tiles)

    monkeypatch.setattr(PostProcessor, "add_pair_tiles", failing)
    assert main(["postprocess", str(emb), str(out), *args]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    partial = tmp_path / ".RES.partial"
    assert "disk full" in err and str(partial) in err and "6 of 15 frame pairs" in err and "--resume" in err
    assert not out.exists() and hidden_entries(tmp_path) == [".RES.partial"]  # the lock is released
    monkeypatch.setattr(PostProcessor, "add_pair_tiles", real)
    changed = [a.replace("inference.checkpoint_every=3", "postprocessing.bandwidth=0.2") for a in args]
    assert main(["postprocess", str(emb), str(out), *changed, "--resume"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "cannot resume" in err and "postprocessing.bandwidth" in err
    other_shape = [a if a != "120" else "121" for a in args]
    assert main(["postprocess", str(emb), str(out), *other_shape, "--resume"]) == EXIT_USER_ERROR
    assert "original_shape" in capsys.readouterr().err
    # threads, overlap and the checkpoint interval do not change results: a resume may change them
    assert main(["postprocess", str(emb), str(out), *args, "--set", "inference.checkpoint_every=5", "--resume"]) == 0
    got = folder_bytes(out)
    assert got.pop("config.yaml") != reference["config.yaml"]  # the resolved config says checkpoint_every: 5
    assert got == {name: data for name, data in reference.items() if name != "config.yaml"}


def test_a_failure_before_the_first_checkpoint_leaves_nothing_behind(resume_case, tmp_path, monkeypatch, capsys):
    emb, args, _ = resume_case

    def failing(self, tiles):
        raise RshnError("broken pair")

    monkeypatch.setattr(PostProcessor, "add_pair_tiles", failing)
    assert main(["postprocess", str(emb), str(tmp_path / "RES"), *args]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "broken pair" in err and "nothing to resume" in err
    assert list(tmp_path.iterdir()) == []


def test_a_second_writer_of_the_same_output_is_refused(resume_case, tmp_path, capsys):
    emb, args, _ = resume_case
    out = tmp_path / "RES"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["postprocess", str(emb), str(out), *args]) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert f"process {holder.pid}" in err and "is writing this output" in err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock file is left behind, and the next writer takes it over
    assert (tmp_path / ".RES.lock").exists()
    assert main(["postprocess", str(emb), str(out), *args]) == 0
    assert hidden_entries(tmp_path) == []


#: A process that locks the output folder given as argv[1], says so, and waits to be killed.
LOCK_HOLDER = """
import sys, time
from rshn_tf.output_lock import OutputLock
lock = OutputLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""
