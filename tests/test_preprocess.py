"""Tests of frame preprocessing: smoothing, robust normalisation, network grid, border band (paper §3.1, §4.2)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from data_io.ctc import load_sequence
from data_io.preprocess import (OUTSIDE_VALUE, annotated_region, network_shape, preprocess_frame,
                                preprocess_frames, preprocess_training_frames, robust_normalize, smooth,
                                to_network_grid)
from data_io.resample import resample_2d
from rshn_tf.config import DataConfig, load_config
from rshn_tf.errors import RshnError


def test_smoothing_matches_a_gaussian_filter_with_sigma_one():
    image = np.random.default_rng(0).random((64, 80)) * 100.0
    smoothed = smooth(image, 1.0)
    reference = ndi.gaussian_filter(image, 1.0, mode="nearest")
    assert smoothed.dtype == np.float32
    # recursive Gaussian (SimpleITK, as the authors) vs exact convolution: within 1 % of the image's spread
    assert np.abs(smoothed - reference).max() < 0.01 * image.std()
    assert np.abs(smoothed - image).max() > 0.1 * image.std()  # it does smooth
    np.testing.assert_array_equal(smooth(image, 0.0), image.astype(np.float32))


@pytest.mark.parametrize("percentiles", [(0.1, 99.9), (0.05, 99.95)])
def test_robust_normalisation_maps_the_percentiles_to_minus_one_and_one(percentiles):
    rng = np.random.default_rng(1)
    frame = rng.gamma(2.0, 50.0, size=(128, 96))
    frame[0, :5] = 1e5  # outliers must not set the range
    out = robust_normalize(frame, percentiles)
    low, high = np.percentile(frame.astype(np.float64), percentiles)
    expected = 2.0 * (frame - low) / (high - low) - 1.0
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32
    assert out.max() > 100.0 and out.min() < -1.0  # no clipping
    assert np.mean(out < -1.0) == pytest.approx(percentiles[0] / 100.0, abs=2.0 / frame.size)


def test_paper_and_code_percentiles_differ():
    frame = np.random.default_rng(2).normal(size=(200, 200))
    paper = robust_normalize(frame, (0.1, 99.9))
    code = robust_normalize(frame, (0.05, 99.95))
    assert np.abs(paper).max() > np.abs(code).max()


def test_constant_frame_normalises_to_zero():
    np.testing.assert_array_equal(robust_normalize(np.full((8, 8), 7.0), (0.1, 99.9)), np.zeros((8, 8)))


def test_preprocess_frame_is_smoothing_then_normalisation():
    frame = np.random.default_rng(3).integers(0, 255, size=(50, 60)).astype(np.uint8)
    config = DataConfig(smoothing_sigma=1.0, normalization_percentiles=[0.1, 99.9])
    out = preprocess_frame(frame, config)
    smoothed = ndi.gaussian_filter(frame.astype(np.float64), 1.0, mode="nearest")
    low, high = np.percentile(smoothed, [0.1, 99.9])
    np.testing.assert_allclose(out, 2.0 * (smoothed - low) / (high - low) - 1.0, atol=0.02)
    np.testing.assert_array_equal(preprocess_frames(frame[None], config)[0], out)


def test_network_shape_follows_resampled_size():
    assert network_shape((512, 512), load_config("DIC-C2DH-HeLa").data) == (256, 256)
    assert network_shape((520, 696), load_config("PhC-C2DH-U373").data) == (384, 512)
    assert network_shape((700, 1100), load_config("Fluo-N2DL-HeLa").data) == (700, 1100)
    assert network_shape((33, 44), DataConfig(resampled_size=None)) == (33, 44)


def test_to_network_grid_uses_the_shared_resampling():
    config = DataConfig(resampled_size=[20, 30], extra_scale=0.95)
    frame = np.random.default_rng(4).random((40, 50)).astype(np.float32)
    np.testing.assert_array_equal(to_network_grid(frame, config),
                                  resample_2d(frame, (20, 30), "linear", scale=0.95, default_value=OUTSIDE_VALUE))
    labels = np.random.default_rng(5).integers(0, 9, size=(40, 50)).astype(np.uint16)
    out = to_network_grid(labels, config, labels=True)
    assert out.dtype == np.uint16 and out.shape == (20, 30)
    assert set(np.unique(out)) <= set(np.unique(labels))
    zoomed_out = to_network_grid(frame, DataConfig(resampled_size=[20, 30], extra_scale=1.5))
    assert zoomed_out[0, 0] == OUTSIDE_VALUE


def test_annotated_region_excludes_the_border_band():
    mask = annotated_region((100, 80), 25)
    assert mask.sum() == 50 * 30
    assert mask[25, 25] and mask[74, 54] and not mask[24, 40] and not mask[75, 40] and not mask[50, 55]
    assert annotated_region((10, 10), 0).all()
    with pytest.raises(RshnError, match="data.border_band"):
        annotated_region((100, 80), 40)


def test_training_frames_with_crop_and_mirror_padding():
    frames = np.random.default_rng(6).random((2, 40, 60)).astype(np.float32) * 100
    plain, origin = preprocess_training_frames(frames, DataConfig())
    assert origin == (0.0, 0.0)
    np.testing.assert_array_equal(plain, preprocess_frames(frames, DataConfig()))

    padded, origin = preprocess_training_frames(frames, DataConfig(mirror_padding=True))
    assert padded.shape == (2, 80, 120) and origin == (-20.0, -30.0)
    centre = padded[:, 20:60, 30:90]
    np.testing.assert_allclose(padded[:, 20:60, :30], centre[:, :, 29::-1])  # mirrored copy on the left
    # normalisation is computed on the padded frame, so the centre is a linear function of the plain result
    slope, offset = np.polyfit(plain[0].ravel(), centre[0].ravel(), 1)
    np.testing.assert_allclose(centre[0], slope * plain[0] + offset, atol=1e-4)

    cropped, origin = preprocess_training_frames(frames, DataConfig(crop_border=5))
    assert cropped.shape == (2, 30, 50) and origin == (5.0, 5.0)
    with pytest.raises(RshnError, match="data.crop_border"):
        preprocess_training_frames(frames, DataConfig(crop_border=20))


@pytest.mark.ctc
def test_real_dic_frame_percentiles_become_plus_minus_one(ctc_dataset):
    sequence = load_sequence(ctc_dataset("DIC-C2DH-HeLa"), "01")
    out = preprocess_frame(sequence.frames[10], DataConfig())
    np.testing.assert_allclose(np.percentile(out, [0.1, 99.9]), [-1.0, 1.0], atol=1e-4)
    grid = to_network_grid(out, load_config("DIC-C2DH-HeLa").data)
    assert grid.shape == (256, 256) and grid.dtype == np.float32
