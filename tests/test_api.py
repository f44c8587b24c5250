"""Tests of the Python API (rshn_tf.api): ``RSHN.from_folder``, ``segment_and_track`` and ``embed`` give what
``rshn predict`` writes for the same frames; overrides; bad input.

The synthetic tests use the tiny random-weight model of tests/test_inference.py (tiles mode, 9 tiles); the real-data
test uses a shipped model (full-frame mode) on a few cropped frames of DIC-C2DH-HeLa 02.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rshn_tf
from data_io.ctc import read_tiff, read_track_file, write_tiff
from rshn_tf.api import RSHN, Segmentation, check_video, override_texts
from rshn_tf.cli import main
from rshn_tf.config import load_config
from rshn_tf.errors import RshnError
from tests.test_inference import model_dir  # noqa: F401  (the tiny model folder fixture, shared)

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def video(synthetic_dataset, tmp_path_factory):
    """The first 6 frames of the synthetic sequence 01 (128 × 128), as files and as a (T, H, W) array."""
    folder = tmp_path_factory.mktemp("video") / "01"
    folder.mkdir()
    frames = np.stack([read_tiff(synthetic_dataset / "01" / f"t{t:03d}.tif") for t in range(6)])
    for t, frame in enumerate(frames):
        write_tiff(folder / f"t{t:03d}.tif", frame)
    return folder, frames


def read_result(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    masks = sorted(folder.glob("mask*.tif"))
    return np.stack([read_tiff(p) for p in masks]), read_track_file(folder / "res_track.txt")


def assert_same_result(got: Segmentation, folder: Path) -> None:
    labels, tracks = read_result(folder)
    assert got.labels.dtype == np.uint16 and got.labels.shape == labels.shape
    np.testing.assert_array_equal(got.labels, labels)
    np.testing.assert_array_equal(got.tracks, tracks)


# --------------------------------------------------------------------------------------------------------------
# The API gives what rshn predict writes


def test_segment_and_track_and_embed_equal_rshn_predict(model_dir, video, tmp_path):
    folder, frames = video
    out, emb = tmp_path / "RES", tmp_path / "EMB"
    assert main(["predict", "--model", str(model_dir), "--input", str(folder), "--output", str(out),
                 "--save-embeddings", str(emb), "--set", "postprocessing.min_size=12"]) == 0
    model = rshn_tf.RSHN.from_folder(model_dir, overrides={"postprocessing.min_size": 12})
    result = model.segment_and_track(frames)
    labels, tracks = result
    assert labels.max() > 0 and tracks.shape[1] == 4 and tracks.dtype == np.int64
    assert_same_result(result, out)
    pairs = model.embed(frames)
    assert pairs.shape == (5, 2, 128, 128, 8) and pairs.dtype == np.float32
    for t, pair in enumerate(pairs):
        np.testing.assert_array_equal(pair, np.load(emb / f"pair_{t:03d}.npy"))


def test_a_single_frame_gives_what_rshn_predict_writes(model_dir, video, tmp_path):
    folder, frames = video
    one = tmp_path / "01"
    one.mkdir()
    write_tiff(one / "t000.tif", frames[0])
    assert main(["predict", "--model", str(model_dir), "--input", str(one), "--output", str(tmp_path / "RES")]) == 0
    model = RSHN.from_folder(model_dir)
    assert_same_result(model.segment_and_track(frames[:1]), tmp_path / "RES")
    assert model.embed(frames[:1]).shape == (1, 2, 128, 128, 8)


def test_the_api_preprocesses_like_the_files_whatever_the_array_type(model_dir, video):
    """Frames as read from the files (uint8/uint16) and the same values as float32 give the same labels."""
    _, frames = video
    model = RSHN.from_folder(model_dir, overrides={"inference.full_frame": True})
    direct = model.segment_and_track(frames[:3])
    as_float = model.segment_and_track(frames[:3].astype(np.float32))
    np.testing.assert_array_equal(direct.labels, as_float.labels)
    np.testing.assert_array_equal(direct.tracks, as_float.tracks)


@pytest.mark.ctc
@pytest.mark.slow
def test_api_equals_rshn_predict_on_real_frames(ctc_dataset, tmp_path):
    """The shipped DIC-C2DH-HeLa model on frames 0-4 of sequence 02 (unseen in training), cropped to 256 × 256."""
    model_dir = MODELS_DIR / "DIC-C2DH-HeLa-cpu"
    if not (model_dir / "config.yaml").is_file():
        pytest.skip(f"{model_dir}: no shipped model folder")
    source = ctc_dataset("DIC-C2DH-HeLa") / "02"
    frames = np.stack([read_tiff(source / f"t{t:03d}.tif")[100:356, 150:406] for t in range(5)])
    folder = tmp_path / "02"
    folder.mkdir()
    for t, frame in enumerate(frames):
        write_tiff(folder / f"t{t:03d}.tif", frame)
    out = tmp_path / "02_RES"
    assert main(["predict", "--model", str(model_dir), "--input", str(folder), "--output", str(out),
                 "--set", "postprocessing.bandwidth=0.12"]) == 0
    model = RSHN.from_folder(model_dir, overrides={"postprocessing": {"bandwidth": 0.12}})
    assert model.config.to_dict() == load_config(out / "config.yaml").to_dict()
    result = model.segment_and_track(frames)
    assert len(result.tracks) > 0
    assert_same_result(result, out)


# --------------------------------------------------------------------------------------------------------------
# Loading and overrides


def test_overrides_as_dict_nested_dict_or_strings_are_the_set_overrides():
    texts = ["postprocessing.bandwidth=0.05", "inference.tile_size=[64, 64]", "inference.full_frame=true",
             "tracking.resample_interpolation=nearest", "data.resampled_size=null"]
    values = {"postprocessing.bandwidth": 0.05, "inference.tile_size": (64, 64), "inference.full_frame": True,
              "tracking.resample_interpolation": "nearest", "data.resampled_size": None}
    assert override_texts(values) == texts
    nested = {"postprocessing": {"bandwidth": np.float64(0.05)}, "inference": {"tile_size": np.array([64, 64])}}
    assert override_texts(nested) == texts[:2]
    assert override_texts(texts) == texts
    assert override_texts("postprocessing.bandwidth=0.05") == texts[:1]
    assert override_texts(None) == []


def test_from_folder_applies_overrides_and_refuses_bad_ones(model_dir):
    model = RSHN.from_folder(model_dir, overrides={"postprocessing.bandwidth": 0.05, "inference.full_frame": True})
    assert model.config.postprocessing.bandwidth == 0.05 and model.config.inference.full_frame is True
    assert RSHN.from_folder(model_dir).config.postprocessing.bandwidth != 0.05
    with pytest.raises(RshnError, match=r"'model\.\*' keys describe the trained network"):
        RSHN.from_folder(model_dir, overrides={"model.levels": 4})
    with pytest.raises(RshnError, match="bandwith"):
        RSHN.from_folder(model_dir, overrides={"postprocessing.bandwith": 0.05})
    with pytest.raises(RshnError, match="postprocessing.bandwidth"):
        RSHN.from_folder(model_dir, overrides={"postprocessing.bandwidth": 3.0})


def test_from_folder_checks_the_weights_and_loads_the_network_on_first_use(model_dir, tmp_path):
    with pytest.raises(RshnError, match="--weights bestest: neither"):
        RSHN.from_folder(model_dir, weights="bestest")
    with pytest.raises(RshnError, match="does not exist"):
        RSHN.from_folder(tmp_path / "nomodel")
    with pytest.raises(RshnError, match="give a loaded network or the model folder"):
        RSHN(load_config(model_dir / "config.yaml"))
    model = RSHN.from_folder(model_dir, weights="last")
    assert model._network is None
    assert repr(model) == f"RSHN(folder={str(model_dir)!r}, weights='last', architecture='rshn')"
    assert model.network.count_params() > 0 and model.network is model.network


# --------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("frames, message", [
    (np.zeros((16, 16), np.uint16), r"expected a \(T, H, W\) video, got an array of shape \(16, 16\); for a single "
                                    r"frame pass frames\[np.newaxis\]"),
    (np.zeros((2, 16, 16, 3), np.uint8), r"shape \(2, 16, 16, 3\); frames must have one channel"),
    (np.zeros((0, 16, 16), np.uint16), r"empty video of shape \(0, 16, 16\)"),
    (np.zeros((2, 16, 16), bool), "dtype bool is not an intensity type"),
    (np.zeros((2, 16, 16), np.complex64), "dtype complex64 is not an intensity type"),
    (np.array([["a", "b"], ["c", "d"]])[None], "dtype <U1 is not an intensity type"),
    ([np.zeros((16, 16)), np.zeros((8, 16))], "cannot be read as one"),
])
def test_bad_frames_are_refused_with_the_problem_named(frames, message):
    with pytest.raises(RshnError, match=message):
        check_video(frames)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_frames_are_refused_naming_the_first_bad_frame(value):
    frames = np.zeros((4, 16, 16), np.float32)
    frames[2, :4, :4] = value
    frames[3, 0, 0] = value
    with pytest.raises(RshnError, match=r"frame 2 holds 16 NaN or infinite pixel value\(s\) of 256"):
        check_video(frames)


def test_the_api_refuses_bad_frames_before_running_the_network(model_dir):
    model = RSHN.from_folder(model_dir)
    bad = np.zeros((3, 32, 32), np.float64)
    bad[1, 5, 5] = np.nan
    for method in (model.segment_and_track, model.embed):
        with pytest.raises(RshnError, match="frame 1 holds 1 NaN"):
            method(bad)
        with pytest.raises(RshnError, match=r"\(T, H, W\)"):
            method(bad[0])
    assert model._network is None  # refused before the network was loaded


def test_good_frames_pass_unchanged():
    frames = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    assert check_video(frames) is frames
    np.testing.assert_array_equal(check_video(list(frames)), frames)
