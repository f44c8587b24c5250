"""Tests of rshn_tf.inference and ``rshn predict``: window/pair bookkeeping, state resets, tiles and batches, the
full-frame path, the three architectures, short videos, saved embeddings and errors.

Networks are tiny (3 levels, 4–8 filters, 64 × 64 tiles) with random weights, so no training is needed; the
reference outputs come from the models' whole-sequence call (``model(frames)``, zero states, Keras' RNN loop), which
is independent of the streaming path under test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from data_io.ctc import read_tiff, read_track_file, write_tiff
from rshn_tf.cli import EXIT_USER_ERROR, main
from rshn_tf.config import Config, load_config, validate
from rshn_tf.errors import RshnError
from rshn_tf.evaluation import evaluate_result, validate_result
from rshn_tf.api import consume_pairs
from rshn_tf.geometry import GridGeometry
from rshn_tf.inference import FrameSource, FullFrameLayout, PairEmbedder, TileLayout, central_owner, plan_windows
from rshn_tf.model_folder import create_model_folder, export_model
from rshn_tf.models import build_model
from rshn_tf.predict_folder import predict
from rshn_tf.tiling import tile_grid

LENGTH = 4


def tiny_config(architecture: str = "rshn", **inference) -> Config:
    config = Config()
    config.model.architecture = architecture
    config.model.levels = 3
    config.model.filters = 4
    config.model.embedding_size = 4
    config.data.tile_size = [64, 64]
    config.data.sequence_length = LENGTH
    config.data.border_band = 0
    config.inference.tile_overlap = 32
    config.postprocessing.min_size = 10
    config.postprocessing.num_seeds = 16  # random embeddings: every pixel is foreground; keep the clustering cheap
    config.tracking.resample_interpolation = "nearest"
    for key, value in inference.items():
        setattr(config.inference, key, value)
    validate(config)
    return config


def tiny_model(config: Config, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    return build_model(config.model)


class ArraySource:
    """In-memory network-grid frames with the FrameSource interface; records how many frames are held."""

    def __init__(self, frames: np.ndarray):
        self.frames = np.asarray(frames, np.float32)
        self.original_shape = self.frames.shape[1:]  # network-grid frames: no resampling in these tests
        self.held: set[int] = set()
        self.max_held = 0
        self.requests: list[int] = []

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, t: int) -> np.ndarray:
        self.requests.append(t)
        self.held.add(t)
        self.max_held = max(self.max_held, len(self.held))
        return self.frames[t]

    def release_before(self, t: int) -> None:
        self.held = {u for u in self.held if u >= t}


def random_frames(count: int, shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(count,) + tuple(shape)).astype(np.float32)


def collect(embedder: PairEmbedder, source) -> list:
    return [(p.index, p.frames, p.first.copy(), p.second.copy()) for p in embedder.pairs(source)]


# --------------------------------------------------------------------------------------------------------------
# Windows and pairs


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 9])
def test_windows_give_every_consecutive_pair_once(frames):
    windows = plan_windows(frames, LENGTH)
    pairs = [p for w in windows for p in w.pairs]
    if frames == 1:
        assert [(w.start, w.length) for w in windows] == [(0, 1)] and pairs == [(0, 0)]
        return
    assert pairs == [(t, t + 1) for t in range(frames - 1)]
    length = min(LENGTH, frames)
    assert [(w.start, w.length) for w in windows] == [(j, length) for j in range(frames - length + 1)]
    assert windows[0].pairs == tuple((t, t + 1) for t in range(length - 1))
    for w in windows[1:]:
        assert w.pairs == ((w.start + length - 2, w.start + length - 1),)


class CountingModel:
    """A fake RSHN: the state counts the frames since the last reset and sums their values; the embedding of a
    frame is (count, frame value, sum)."""

    stacks, levels, filters = 1, 1, 2

    def zero_states(self, batch, height, width):
        return [[tf.zeros((batch, height, width, 2))]]

    def step(self, frames, states):
        state = states[0][0]
        new = tf.concat([state[..., :1] + 1.0, state[..., 1:] + frames], axis=-1)
        return [tf.concat([new[..., :1], frames, new[..., 1:]], axis=-1)], [[new]]

    def normalized_embeddings(self, outputs):
        return outputs[-1]


@pytest.mark.parametrize("frames", [1, 3, 4, 9])
def test_each_pair_comes_from_its_window_with_states_reset(frames):
    config = tiny_config()
    values = np.arange(frames, dtype=np.float32)
    source = ArraySource(np.broadcast_to(values[:, None, None], (frames, 96, 128)))
    layout = TileLayout(GridGeometry.of(source.original_shape, config))
    embedder = PairEmbedder(CountingModel(), config, layout)
    got = collect(embedder, source)
    assert [g[1] for g in got] == ([(0, 0)] if frames == 1 else [(t, t + 1) for t in range(frames - 1)])
    length = min(LENGTH, frames)
    for index, (a, b), first, second in got:
        start = 0 if index < length - 1 else b - length + 1  # first window, else the window ending at b
        for t, emb in ((a, first), (b, second)):
            assert emb.shape == (len(layout.grid), 64, 64, 3)
            inside = emb[:, 16:48, 16:48]  # away from the -1 padding of tiles reaching past the image
            np.testing.assert_array_equal(inside[..., 0], t - start + 1)  # frames since the reset
            np.testing.assert_array_equal(inside[..., 1], t)  # the frame itself
            np.testing.assert_array_equal(inside[..., 2], sum(range(start, t + 1)))  # frames start..t, in order
    windows = plan_windows(frames, LENGTH)
    assert embedder.frame_steps == sum(w.length for w in windows)
    assert source.max_held <= length  # the rolling buffer holds one window at most
    assert embedder.tracing_count == 1


class RecordingModel(CountingModel):
    """A CountingModel that records, in call order, the batch size and frame value of every network call."""

    def __init__(self):
        self.calls: list[tuple[int, float]] = []

    def step(self, frames, states):
        def record(batch, value):
            self.calls.append((int(batch), float(value)))
            return np.float32(0.0)

        marker = tf.numpy_function(record, [tf.shape(frames)[0], frames[0, 0, 0, 0]], tf.float32)
        return super().step(frames + marker, states)


def test_windows_run_tile_by_tile():
    """Notes §5.1: one batch of tiles runs all frames of a window before the next batch starts (so only one
    batch's states are alive), and the pairs of the first window still come out in order."""
    config = tiny_config(max_batch_tiles=3)
    frames = 6
    values = np.arange(frames, dtype=np.float32)
    layout = TileLayout(GridGeometry.of((96, 160), config))
    model = RecordingModel()
    embedder = PairEmbedder(model, config, layout)
    got = collect(embedder, ArraySource(np.broadcast_to(values[:, None, None], (frames, 96, 160))))
    assert [g[1] for g in got] == [(t, t + 1) for t in range(frames - 1)]
    assert len(layout.grid) == 8
    batches = [3, 3, 2]
    expected = [(b, float(t)) for b in batches for t in range(LENGTH)]  # first window: frames 0 … l-1
    for start in range(1, frames - LENGTH + 1):
        expected += [(b, float(t)) for b in batches for t in range(start, start + LENGTH)]
    assert model.calls == expected


# --------------------------------------------------------------------------------------------------------------
# Real (tiny) networks against their whole-sequence call


def assert_close_to_window_call(got: np.ndarray, model, inputs: np.ndarray, start: int, position: int) -> None:
    """``got`` equals frame ``start + position`` of the whole-window call up to float rounding of the raw
    embeddings (2e-5), magnified by the L2 normalisation where a raw embedding is short (the tiny random network's
    last hourglass has many near zero, norm down to sqrt(eps) = 0.01)."""
    volume = tf.constant(np.moveaxis(inputs[start:start + LENGTH], 0, 1))
    raw = model(volume)[-1][:, position].numpy()
    expected = model.normalized_embeddings([raw]).numpy()
    norm = np.maximum(np.linalg.norm(raw, axis=-1, keepdims=True), 1e-2)
    assert (np.abs(got - expected) <= 2e-5 + 2e-5 / norm).all(), np.abs(got - expected).max()


@pytest.mark.parametrize("architecture, encoded, cache_mb", [
    ("rshn", True, 1024), ("rshn", True, 0), ("rshn", False, 0), ("volumetric", False, 0)])
def test_tile_embeddings_match_the_whole_window_call(architecture, encoded, cache_mb):
    """Encoded steps (with and without reusing encodings), the plain step and the volumetric pass all give the
    embeddings of the whole-window call."""
    config = tiny_config(architecture, max_batch_tiles=3, encoded_steps=encoded, encoding_cache_mb=cache_mb)
    model = tiny_model(config)
    frames = random_frames(6, (96, 160))
    source = ArraySource(frames)
    layout = TileLayout(GridGeometry.of(source.original_shape, config))
    assert len(layout.grid) == 2 * 4
    embedder = PairEmbedder(model, config, layout)
    got = collect(embedder, source)
    inputs = np.stack([layout.inputs(f) for f in frames])
    assert inputs.shape == (6, 8, 64, 64, 1)
    for index, (a, b), first, second in got:
        start = 0 if index < LENGTH - 1 else b - LENGTH + 1
        assert_close_to_window_call(first, model, inputs, start, a - start)
        assert_close_to_window_call(second, model, inputs, start, b - start)
    assert embedder.tracing_count == 1  # batches of 3, 3 and 2 tiles share one trace
    # reuse: each frame's tiles are encoded once; without: only the first frame of each of the 3 windows
    assert embedder.encodings == (0 if not encoded else 6 * 8 if cache_mb else 3 * 8)


def test_encodings_are_reused_when_a_window_of_them_fits_the_budget():
    """``inference.encoding_cache_mb``: hourglass-0 encodings are kept for the next windows when those of l frames of
    all tiles fit; otherwise only the first frame of each window is encoded (to skip its state convolutions)."""
    frames = random_frames(7, (96, 160), seed=9)
    # tiny network: 3 x 4 filters x 4 bytes x (64² + 32² + 16²) per tile, 8 tiles x l = 4 frames: 7.9 MB
    needed = 8 * LENGTH * 3 * 4 * 4 * (64 * 64 + 32 * 32 + 16 * 16)
    windows = 7 - LENGTH + 1
    results = {}
    for megabytes, reused in ((0, False), (7, False), (8, True)):
        config = tiny_config(max_batch_tiles=3, encoding_cache_mb=megabytes)
        embedder = PairEmbedder(tiny_model(config), config, TileLayout(GridGeometry.of((96, 160), config)))
        assert embedder._recurrence.cache_bytes == needed and embedder._recurrence.reuse == reused
        results[megabytes] = collect(embedder, ArraySource(frames))
        assert embedder.encodings == 8 * (7 if reused else windows)
    for (i, f, a1, b1), (j, g, a2, b2) in zip(results[0], results[7]):  # the same computation
        assert (i, f) == (j, g)
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(b1, b2)


def test_advance_gives_the_states_of_step():
    config = tiny_config()
    model = tiny_model(config)
    frames = tf.constant(random_frames(2, (32, 48), seed=2)[..., None])
    states = model.zero_states(2, 32, 48)
    step, advance = tf.function(model.step), tf.function(model.advance)
    for _ in range(3):
        _, expected = step(frames, states)
        got = advance(frames, states)
        for k in range(config.model.stacks):
            for level in range(config.model.levels):
                np.testing.assert_array_equal(got[k][level].numpy(), expected[k][level].numpy())
        states = expected


def test_batched_tiles_equal_the_per_tile_loop():
    frames = random_frames(5, (96, 160), seed=3)
    results = {}
    for name, options in {"loop": dict(batch_tiles=False), "batch3": dict(max_batch_tiles=3),
                          "all": dict(max_batch_tiles=0)}.items():
        config = tiny_config(**options)
        embedder = PairEmbedder(tiny_model(config), config, TileLayout(GridGeometry.of((96, 160), config)))
        results[name] = collect(embedder, ArraySource(frames))
        assert embedder.batch == {"loop": 1, "batch3": 3, "all": 8}[name]
    for other in ("batch3", "all"):
        for (i, f, a1, b1), (j, g, a2, b2) in zip(results["loop"], results[other]):
            assert (i, f) == (j, g)
            np.testing.assert_allclose(a1, a2, atol=1e-6)
            np.testing.assert_allclose(b1, b2, atol=1e-6)


def test_shn_pairs_are_per_frame_embeddings():
    config = tiny_config("shn")
    model = tiny_model(config)
    frames = random_frames(5, (64, 96), seed=4)
    source = ArraySource(frames)
    layout = TileLayout(GridGeometry.of(source.original_shape, config))
    embedder = PairEmbedder(model, config, layout)
    got = collect(embedder, source)
    assert embedder.frame_steps == 5  # every frame runs once
    for _, (a, b), first, second in got:
        for t, emb in ((a, first), (b, second)):
            reference = model.normalized_embeddings(model(tf.constant(layout.inputs(frames[t])))).numpy()
            np.testing.assert_allclose(emb, reference, atol=1e-6)


def test_full_frame_layout_pads_runs_and_crops():
    config = tiny_config(full_frame=True)
    model = tiny_model(config)
    frames = random_frames(5, (70, 99), seed=5)
    layout = FullFrameLayout(GridGeometry.of((70, 99), config), 4)
    assert layout.input_shape == (72, 100) and layout.pad == ((1, 1), (0, 1))
    padded = layout.inputs(frames[0])
    assert padded.shape == (1, 72, 100, 1)
    np.testing.assert_array_equal(padded[0, 1:71, 0:99, 0], frames[0])
    assert (padded[0, 0] == -1).all() and (padded[0, :, 99] == -1).all()
    got = collect(PairEmbedder(model, config, layout), ArraySource(frames))
    inputs = np.stack([layout.inputs(f) for f in frames])
    for index, (a, b), first, second in got:
        start = 0 if index < LENGTH - 1 else b - LENGTH + 1
        assert_close_to_window_call(first, model, inputs, start, a - start)
        pair = layout.full_pair(first, second)
        assert pair.shape == (2, 70, 99, 4) and pair.dtype == np.float32
        np.testing.assert_array_equal(pair[1], second[0, 1:71, 0:99])


def test_full_frame_equals_tiles_when_the_frame_is_one_tile():
    frames = random_frames(5, (64, 64), seed=6)
    out = {}
    for full in (False, True):
        config = tiny_config(full_frame=full)
        geometry = GridGeometry.of((64, 64), config)
        layout = FullFrameLayout(geometry, 4) if full else TileLayout(geometry)
        out[full] = collect(PairEmbedder(tiny_model(config), config, layout), ArraySource(frames))
    for (_, f, a1, b1), (_, g, a2, b2) in zip(out[False], out[True]):
        assert f == g
        np.testing.assert_allclose(a1, a2, atol=1e-6)
        np.testing.assert_allclose(b1, b2, atol=1e-6)


def test_stitching_takes_each_pixel_from_its_most_central_tile():
    grid = tile_grid((96, 160), (64, 64), 32)
    owner = central_owner(grid)
    # tiles at x offsets 0, 32, 64, 96 and y offsets 0, 32: the overlaps are cut in their middles
    xs = [t.offset[1] for t in grid.tiles]
    ys = [t.offset[0] for t in grid.tiles]
    for y, x in [(10, 10), (40, 50), (90, 159), (47, 80), (48, 81), (60, 130)]:
        def centrality(i):
            ty, tx = y - ys[i], x - xs[i]
            if not (0 <= ty < 64 and 0 <= tx < 64):
                return -1
            return min(ty, 63 - ty, tx, 63 - tx)
        best = max(range(len(grid)), key=lambda i: (centrality(i), -i))
        assert owner[y, x] == best
    config = tiny_config()
    layout = TileLayout(GridGeometry.of((96, 160), config))
    tiles = np.stack([np.full((64, 64, 2), i, np.float32) for i in range(len(grid))])
    pair = layout.full_pair(tiles, tiles + 100)
    np.testing.assert_array_equal(pair[0, ..., 0], owner)
    np.testing.assert_array_equal(pair[1, ..., 1], owner + 100)


# --------------------------------------------------------------------------------------------------------------
# rshn predict end to end


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = tiny_config()
    config.model.filters = 8
    config.model.embedding_size = 8
    folder = tmp_path_factory.mktemp("model") / "model"
    create_model_folder(config, tiny_model(config, seed=1), folder)
    return folder


@pytest.fixture(scope="module")
def short_video(synthetic_dataset, tmp_path_factory):
    """The first 7 frames of the synthetic sequence 01 (128 × 128, 9 tiles of 64 with overlap 32)."""
    folder = tmp_path_factory.mktemp("video") / "01"
    folder.mkdir()
    for t in range(7):
        write_tiff(folder / f"t{t:03d}.tif", read_tiff(synthetic_dataset / "01" / f"t{t:03d}.tif"))
    return folder


def read_result(folder):
    masks = sorted(folder.glob("mask*.tif"))
    return np.stack([read_tiff(p) for p in masks]), read_track_file(folder / "res_track.txt")


def test_predict_cli_writes_a_valid_result_that_evaluates(model_dir, short_video, synthetic_dataset, tmp_path,
                                                          capsys):
    out = tmp_path / "01_RES"
    assert main(["predict", "--model", str(model_dir), "--input", str(short_video), "--output", str(out),
                 "--set", "postprocessing.min_size=12"]) == 0
    assert f"wrote 7 frames to {out}" in capsys.readouterr().out
    labels, tracks = read_result(out)
    assert labels.shape == (7, 128, 128) and labels.dtype == np.uint16
    validate_result(out)
    saved = load_config(out / "config.yaml")
    assert saved.postprocessing.min_size == 12 and saved.model.filters == 8
    # the GT of the first 7 frames as its own small CTC folder, then rshn evaluate
    gt = tmp_path / "01_GT"
    (gt / "TRA").mkdir(parents=True)
    (gt / "SEG").mkdir()
    src = synthetic_dataset / "01_GT"
    gt_tracks = read_track_file(src / "TRA" / "man_track.txt")
    kept = gt_tracks[gt_tracks[:, 1] <= 6].copy()
    kept[:, 2] = np.minimum(kept[:, 2], 6)
    np.savetxt(gt / "TRA" / "man_track.txt", kept, fmt="%d")
    for t in range(7):
        write_tiff(gt / "TRA" / f"man_track{t:03d}.tif", read_tiff(src / "TRA" / f"man_track{t:03d}.tif"))
        seg = src / "SEG" / f"man_seg{t:03d}.tif"
        if seg.exists():
            write_tiff(gt / "SEG" / seg.name, read_tiff(seg))
    assert any((gt / "SEG").iterdir())
    scores = evaluate_result(out, gt)
    assert set(scores) >= {"SEG", "TRA"} and all(0.0 <= scores[k] <= 1.0 for k in ("SEG", "TRA"))
    assert main(["evaluate", str(out), str(gt), "--json"]) == 0


def test_overlapped_post_processing_gives_the_same_result(model_dir, short_video, tmp_path):
    """``inference.overlap_postprocessing``: clustering in a worker thread while the network runs changes nothing."""
    results = {}
    for overlap in (True, False):
        out = tmp_path / f"RES_{overlap}"
        predict(model_dir, short_video, out, overrides=[f"inference.overlap_postprocessing={str(overlap).lower()}"])
        results[overlap] = read_result(out)
    assert results[True][0].max() > 0  # something was segmented
    np.testing.assert_array_equal(results[True][0], results[False][0])
    np.testing.assert_array_equal(results[True][1], results[False][1])


def test_consume_pairs_keeps_the_order_and_one_pair_in_flight():
    produced, consumed, in_flight = [], [], []

    def pairs():
        for index in range(6):
            in_flight.append(len(produced) - len(consumed))
            produced.append(index)
            yield index

    def consume(index):
        time.sleep(0.01)
        consumed.append(index)

    consume_pairs(pairs(), consume, overlap=True)
    assert consumed == list(range(6))
    assert max(in_flight) <= 1  # the producer works on pair i+1 only while pair i is being consumed


@pytest.mark.parametrize("failing", ["consumer", "producer"])
def test_consume_pairs_raises_errors_of_either_side_and_stops(failing):
    produced, consumed = [], []

    def pairs():
        for index in range(10):
            if failing == "producer" and index == 3:
                raise RshnError("network failed")
            produced.append(index)
            yield index

    def consume(index):
        if failing == "consumer" and index == 2:
            raise RshnError("clustering failed")
        consumed.append(index)

    with pytest.raises(RshnError, match="failed"):
        consume_pairs(pairs(), consume, overlap=True)
    if failing == "consumer":
        assert consumed == [0, 1] and len(produced) <= 4  # the producer stopped right after the failure
    else:
        assert consumed == [0, 1, 2]  # what was produced before the failure was still consumed


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_short_videos(model_dir, short_video, tmp_path, frames):
    folder = tmp_path / "01"
    folder.mkdir()
    for t in range(frames):
        write_tiff(folder / f"t{t:03d}.tif", read_tiff(short_video / f"t{t:03d}.tif"))
    result = predict(model_dir, folder, tmp_path / "01_RES")
    labels, tracks = read_result(tmp_path / "01_RES")
    assert labels.shape == (frames, 128, 128) and result.num_frames == frames
    assert result.frame_steps == frames  # one window of length T
    validate_result(tmp_path / "01_RES")
    if len(tracks):
        assert (tracks[:, 1] >= 0).all() and (tracks[:, 2] <= frames - 1).all()


def test_single_frame_is_the_frame_clustered_with_itself(model_dir, short_video, tmp_path):
    """T = 1: the pair (0, 0) is clustered like any pair; one frame is kept and its tracks survive t_length."""
    from rshn_tf.model_folder import load_trained_model
    from rshn_tf.postprocess import PostProcessor

    folder = tmp_path / "01"
    folder.mkdir()
    write_tiff(folder / "t000.tif", read_tiff(short_video / "t000.tif"))
    predict(model_dir, folder, tmp_path / "RES")
    labels, tracks = read_result(tmp_path / "RES")
    present = np.unique(labels)[1:]
    assert present.size > 0 and sorted(tracks[:, 0]) == present.tolist()  # default t_length = 2 removed nothing
    assert (tracks[:, 1:] == 0).all()
    # reference: the same embeddings as an ordinary two-frame pair (0, 0) with t_length 1
    model, config = load_trained_model(model_dir)
    config.tracking.min_track_length = 1
    layout = TileLayout(GridGeometry.of((128, 128), config))
    (pair,) = list(PairEmbedder(model, config, layout).pairs(FrameSource([folder / "t000.tif"], config.data,
                                                                          (128, 128))))
    assert pair.frames == (0, 0) and pair.first is pair.second
    processor = PostProcessor(config, (128, 128))
    processor.add_pair_tiles(pair.tiles())
    expected, _ = processor.result()
    np.testing.assert_array_equal(labels[0], expected[0])


def test_predict_by_default_uses_the_weights_an_exported_folder_holds(model_dir, short_video, tmp_path):
    """An exported model folder holds only the chosen weights; ``rshn predict --model`` needs no ``--weights``."""
    exported = export_model(model_dir, tmp_path / "exported", weights="last")
    assert main(["predict", "--model", str(exported), "--input", str(short_video), "--output",
                 str(tmp_path / "RES")]) == 0
    predict(model_dir, short_video, tmp_path / "reference", weights="last")
    for got, expected in zip(read_result(tmp_path / "RES"), read_result(tmp_path / "reference")):
        np.testing.assert_array_equal(got, expected)


def test_saved_full_frame_embeddings_reproduce_predict_exactly(model_dir, short_video, tmp_path):
    emb = tmp_path / "emb"
    out = tmp_path / "RES"
    result = predict(model_dir, short_video, out, overrides=["inference.full_frame=true"], save_embeddings=emb)
    assert result.embeddings_dir == emb
    pairs = sorted(emb.glob("pair_*.npy"))
    assert [p.name for p in pairs] == [f"pair_{t:03d}.npy" for t in range(6)]
    first = np.load(pairs[0])
    assert first.shape == (2, 128, 128, 8) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=-1), 1.0, atol=1e-4)
    assert load_config(emb / "config.yaml").inference.full_frame is True
    again = tmp_path / "again"
    assert main(["postprocess", str(emb), str(again), "--config", str(emb / "config.yaml"),
                 "--original-shape", "128", "128"]) == 0
    labels, tracks = read_result(out)
    labels2, tracks2 = read_result(again)
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_array_equal(tracks, tracks2)


def test_saved_tile_embeddings_are_stitched_from_central_tiles(model_dir, short_video, tmp_path):
    from rshn_tf.model_folder import load_trained_model

    emb = tmp_path / "emb"
    predict(model_dir, short_video, tmp_path / "RES", save_embeddings=emb)
    model, config = load_trained_model(model_dir)
    source = FrameSource(sorted(short_video.glob("t*.tif")), config.data, (128, 128))
    layout = TileLayout(GridGeometry.of(source.original_shape, config))
    expected = [layout.full_pair(p.first, p.second) for p in PairEmbedder(model, config, layout).pairs(source)]
    assert len(expected) == 6
    for t, pair in enumerate(expected):
        np.testing.assert_allclose(np.load(emb / f"pair_{t:03d}.npy"), pair, atol=1e-6)
    assert main(["postprocess", str(emb), str(tmp_path / "again"), "--config", str(emb / "config.yaml"),
                 "--original-shape", "128", "128"]) == 0
    validate_result(tmp_path / "again")


# --------------------------------------------------------------------------------------------------------------
# Errors


def test_predict_errors_are_clear(model_dir, short_video, tmp_path, capsys):
    out = tmp_path / "RES"

    def run(*args):
        code = main(["predict", *args])
        return code, capsys.readouterr().err

    model, video = str(model_dir), str(short_video)
    code, err = run("--model", model, "--input", str(tmp_path / "none"), "--output", str(out))
    assert code == EXIT_USER_ERROR and "sequence folder not found" in err
    (tmp_path / "empty").mkdir()
    code, err = run("--model", model, "--input", str(tmp_path / "empty"), "--output", str(out))
    assert code == EXIT_USER_ERROR and "no raw frame files" in err
    code, err = run("--model", str(tmp_path / "nomodel"), "--input", video, "--output", str(out))
    assert code == EXIT_USER_ERROR and "model folder" in err and "does not exist" in err
    code, err = run("--model", model, "--input", video, "--output", str(out), "--set", "model.levels=4")
    assert code == EXIT_USER_ERROR and "'model.*' keys describe the trained network" in err
    code, err = run("--model", model, "--input", video, "--output", str(out), "--weights", "last2")
    assert code == EXIT_USER_ERROR and "--weights last2: neither 'best', 'last', 'auto'" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    write_tiff(bad / "t000.tif", np.zeros((128, 128), np.uint16))
    write_tiff(bad / "t001.tif", np.zeros((120, 128), np.uint16))
    code, err = run("--model", model, "--input", str(bad), "--output", str(out))
    assert code == EXIT_USER_ERROR and "t001.tif: frame shape (120, 128) differs" in err
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    write_tiff(rgb / "t000.tif", np.zeros((16, 16, 3), np.uint8))
    code, err = run("--model", model, "--input", str(rgb), "--output", str(out))
    assert code == EXIT_USER_ERROR and "expected a 2-D image" in err
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    code, err = run("--model", model, "--input", video, "--output", str(out), "--save-embeddings", str(occupied))
    assert code == EXIT_USER_ERROR and "refusing to replace it" in err
    code, err = run("--model", model, "--input", video, "--output", str(occupied))
    assert code == EXIT_USER_ERROR and "holds files other than a CTC result" in err
    assert (occupied / "notes.txt").read_text() == "keep me"
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folders left


# --------------------------------------------------------------------------------------------------------------
# Checkpoints, --resume and one writer per output (issue 16)


def folder_bytes(folder):
    """Every file of a folder (relative name → bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def predict_reference(model_dir, synthetic_dataset, tmp_path_factory):
    """The first 12 frames of the synthetic sequence 01, the predict arguments (checkpoints every 3 pairs) and the
    uninterrupted result and embeddings."""
    root = tmp_path_factory.mktemp("resume")
    video = root / "01"
    video.mkdir()
    for t in range(12):
        write_tiff(video / f"t{t:03d}.tif", read_tiff(synthetic_dataset / "01" / f"t{t:03d}.tif"))
    args = ["--model", str(model_dir), "--input", str(video), "--set", "inference.checkpoint_every=3",
            "--set", "postprocessing.min_size=12"]
    assert main(["predict", *args, "--output", str(root / "RES"), "--save-embeddings", str(root / "EMB")]) == 0
    return args, folder_bytes(root / "RES"), folder_bytes(root / "EMB")


@pytest.mark.slow
@pytest.mark.parametrize("point, n", [
    ("pair", 5),               # between checkpoints 1 and 2: windows 3… run again
    ("checkpoint", 2),         # half of checkpoint 2 written
    ("mask", 4),               # finalisation: the result half written
    ("embeddings_commit", 1),  # the result is in place, the embeddings not yet
])
def test_killed_predict_resumes_to_the_identical_result(predict_reference, tmp_path, capsys, point, n):
    from tests.conftest import REPO_ROOT

    args, result, embeddings = predict_reference
    out, emb = tmp_path / "RES", tmp_path / "EMB"
    outputs = ["--output", str(out), "--save-embeddings", str(emb)]
    killed = subprocess.run([sys.executable, "-m", "tests.kill_driver", point, str(n), "predict", *args, *outputs],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert out.exists() == (point == "embeddings_commit") and not emb.exists()  # complete or absent
    assert main(["predict", *args, *outputs]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "unfinished run" in err and str(tmp_path / ".RES.partial") in err and "--resume" in err
    assert main(["predict", *args, *outputs, "--resume"]) == 0
    assert folder_bytes(out) == result
    assert folder_bytes(emb) == embeddings
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EMB", "RES"]  # no temporary folders or locks


@pytest.mark.parametrize("start, steps", [(0, 24), (2, 24), (3, 20), (5, 12), (8, 0)])
def test_resuming_starts_at_the_first_window_that_gives_a_missing_pair(start, steps):
    """9 frames, windows of 4: window 0 gives pairs 0–2, window j ≥ 1 pair j + 2; a resumed run skips the windows
    whose pairs are all done and yields exactly the pairs (and embeddings) of an uninterrupted run from ``start``."""
    config = tiny_config()
    source = ArraySource(np.broadcast_to(np.arange(9, dtype=np.float32)[:, None, None], (9, 64, 64)))
    whole = collect(PairEmbedder(CountingModel(), config, TileLayout(GridGeometry.of(source.original_shape, config))), source)
    embedder = PairEmbedder(CountingModel(), config, TileLayout(GridGeometry.of(source.original_shape, config)))
    got = [(p.index, p.frames, p.first.copy(), p.second.copy()) for p in embedder.pairs(source, start=start)]
    assert [g[0] for g in got] == list(range(start, 8))
    for (index, frames, first, second), expected in zip(got, whole[start:]):
        assert (index, frames) == expected[:2]
        np.testing.assert_array_equal(first, expected[2])
        np.testing.assert_array_equal(second, expected[3])
    assert embedder.frame_steps == steps


def test_predict_refuses_an_output_another_process_writes(model_dir, short_video, tmp_path, capsys):
    from rshn_tf.output_lock import OutputLock

    emb = tmp_path / "EMB"
    with OutputLock(emb, command="rshn predict (test)"):
        code = main(["predict", "--model", str(model_dir), "--input", str(short_video), "--output",
                     str(tmp_path / "RES"), "--save-embeddings", str(emb)])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and f"process {os.getpid()}" in err and "rshn predict (test)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before anything was written


def test_a_predict_failing_before_its_first_checkpoint_leaves_nothing_behind(model_dir, short_video, tmp_path,
                                                                             monkeypatch, capsys):
    from rshn_tf.postprocess import PostProcessor

    real = PostProcessor.add_pair_tiles

    def failing(self, tiles):
        if self.num_pairs == 2:
            raise RshnError("clustering failed")
        real(self, tiles)

    monkeypatch.setattr(PostProcessor, "add_pair_tiles", failing)
    code = main(["predict", "--model", str(model_dir), "--input", str(short_video), "--output", str(tmp_path / "RES"),
                 "--save-embeddings", str(tmp_path / "EMB"), "--set", "inference.checkpoint_every=3"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "clustering failed" in err and "nothing to resume" in err
    assert list(tmp_path.iterdir()) == []  # no result, no embeddings, no temporary folders, no locks
