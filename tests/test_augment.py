"""Tests of the augmentation: parameter distributions, geometry, alignment of frames and labels (paper §3.1)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import stats

from data_io.augment import (AugmentationParams, IntensityParams, SpatialParams, SpatialTransform,
                             affine_tile_to_original, apply_intensity, check_config, identity_params,
                             sample_params, sample_spatial_params, smooth_labels)
from data_io.ctc import load_sequence
from data_io.resample import resample_2d
from data_io.sampling import render_sample
from rshn_tf.config import AugmentationConfig
from rshn_tf.errors import RshnError
from tests.cases import moving_disks, paint, small_config, training_data, training_video

DRAWS = 1000


def _draw(config: AugmentationConfig, network=(700, 1100), tile=(256, 256), frames=8, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_params(rng, config, tile, network, frames) for _ in range(DRAWS)]


def _uniform_ok(values, low, high) -> bool:
    values = np.asarray(values, np.float64).ravel()
    inside = bool(np.all(values >= low) and np.all(values <= high))
    return inside and stats.kstest(values, "uniform", args=(low, high - low)).pvalue > 0.01


def test_paper_parameter_distributions_over_1000_draws():
    config = AugmentationConfig()
    params = _draw(config)
    spatial = [p.spatial for p in params]
    flips = np.array([s.flip for s in spatial])
    assert np.all(np.abs(flips.mean(axis=0) - 0.5) < 0.05)
    assert abs(np.mean(flips[:, 0] == flips[:, 1]) - 0.5) < 0.05  # axes mirrored independently
    assert _uniform_ok([math.degrees(s.angle) for s in spatial], -180.0, 180.0)
    scales = np.array([s.scale for s in spatial])
    np.testing.assert_array_equal(scales[:, 0], scales[:, 1])  # paper: one isotropic scale
    assert _uniform_ok(scales[:, 0], 0.5, 1.5)
    offsets = np.array([s.offset for s in spatial])
    assert _uniform_ok(offsets[:, 0], -(700 - 256) / 2, (700 - 256) / 2)  # crop stays inside the network grid
    assert _uniform_ok(offsets[:, 1], -(1100 - 256) / 2, (1100 - 256) / 2)
    elastic = np.array([s.elastic for s in spatial])
    assert elastic.shape == (DRAWS, 6, 6, 2)
    assert _uniform_ok(elastic, -10.0, 10.0)
    intensity = [p.intensity for p in params]
    assert _uniform_ok([i.shift for i in intensity], -0.65, 0.65)
    assert _uniform_ok([i.scale for i in intensity], 0.35, 1.65)
    assert all(i.gamma is None for i in intensity)
    assert all(np.all(i.frame_shift == 0) and np.all(i.frame_scale == 1) for i in intensity)


def test_ranges_come_from_the_config():
    config = AugmentationConfig(rotation_range=[-10.0, 30.0], scale_range=[0.9, 1.2], mirror_probability=0.0,
                                elastic_grid=[5, 7], elastic_displacement=2.0, intensity_shift=[0.1, 0.2],
                                intensity_scale=[1.0, 1.1])
    params = _draw(config, network=(256, 256))
    assert not any(any(p.spatial.flip) for p in params)
    assert _uniform_ok([math.degrees(p.spatial.angle) for p in params], -10.0, 30.0)
    assert _uniform_ok([p.spatial.scale[0] for p in params], 0.9, 1.2)
    assert all(p.spatial.offset == (0.0, 0.0) for p in params)  # network grid == tile: nothing to crop
    assert _uniform_ok(np.array([p.spatial.elastic for p in params]), -2.0, 2.0)
    assert params[0].spatial.elastic.shape == (5, 7, 2)
    assert _uniform_ok([p.intensity.shift for p in params], 0.1, 0.2)
    assert _uniform_ok([p.intensity.scale for p in params], 1.0, 1.1)


def test_code_options_over_1000_draws():
    config = AugmentationConfig(scale_mode="code_product", translation_fraction=0.35, gamma_range=[0.6, 1.4],
                                per_frame_shift=0.1, per_frame_scale=0.1)
    params = _draw(config, network=(256, 256))
    scales = np.array([p.spatial.scale for p in params])
    assert np.mean(scales[:, 0] != scales[:, 1]) == 1.0  # anisotropic
    assert scales.min() >= 0.75 ** 2 and scales.max() <= 1.25 ** 2
    assert scales.min() < 0.62 and scales.max() > 1.45  # the product reaches beyond each factor's range
    offsets = np.array([p.spatial.offset for p in params])
    assert _uniform_ok(offsets, -0.35 * 256, 0.35 * 256)
    assert _uniform_ok([p.intensity.gamma for p in params], 0.6, 1.4)
    assert _uniform_ok(np.array([p.intensity.frame_shift for p in params]), -0.1, 0.1)
    assert _uniform_ok(np.array([p.intensity.frame_scale for p in params]), 0.9, 1.1)


def test_sampling_is_reproducible_from_the_seed():
    config = AugmentationConfig()
    first = sample_params(np.random.default_rng(7), config, (64, 64), (80, 90), 4)
    again = sample_params(np.random.default_rng(7), config, (64, 64), (80, 90), 4)
    other = sample_params(np.random.default_rng(8), config, (64, 64), (80, 90), 4)
    np.testing.assert_array_equal(first.spatial.elastic, again.spatial.elastic)
    assert first.spatial.angle == again.spatial.angle and first.intensity.shift == again.intensity.shift
    assert first.spatial.angle != other.spatial.angle


def test_invalid_configs_are_rejected():
    with pytest.raises(RshnError, match="augmentation.elastic_grid"):
        check_config(AugmentationConfig(elastic_grid=[3, 6]))
    with pytest.raises(RshnError, match="augmentation.image_interpolation"):
        check_config(AugmentationConfig(image_interpolation="cubic"))
    with pytest.raises(RshnError, match="augmentation.scale_range"):
        check_config(AugmentationConfig(scale_range=[0.0, 1.0]))


# ---------------------------------------------------------------------------------------------------------------
# Geometry against independent references


def _neutral(**changes) -> SpatialParams:
    return dataclasses.replace(identity_params(AugmentationConfig(), 1).spatial, **changes)


def test_neutral_transform_equals_test_time_resampling():
    image = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    out = SpatialTransform(_neutral(), (256, 256), (256, 256), (512, 512)).resample(image, "linear", -1.0)
    np.testing.assert_allclose(out, resample_2d(image, (256, 256), "linear"), atol=1e-6)
    # a network grid larger than the tile: the neutral tile is its centre crop
    out = SpatialTransform(_neutral(), (64, 64), (128, 160), (256, 320)).resample(image[:256, :320], "linear", -1)
    np.testing.assert_allclose(out, resample_2d(image[:256, :320], (128, 160), "linear")[32:96, 48:112], atol=1e-6)


def test_rotation_mirroring_crop_and_scale_against_numpy():
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)

    def run(params, tile=(64, 64)):
        return SpatialTransform(params, tile, (64, 64), (64, 64)).resample(image, "linear", -1.0)

    np.testing.assert_allclose(run(_neutral(angle=math.pi / 2)), np.rot90(image, -1), atol=1e-5)
    np.testing.assert_allclose(run(_neutral(angle=math.pi)), image[::-1, ::-1], atol=1e-5)
    np.testing.assert_allclose(run(_neutral(flip=(False, True))), image[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(run(_neutral(flip=(True, False))), image[::-1], atol=1e-6)
    np.testing.assert_allclose(run(_neutral(offset=(3.0, -5.0)), (32, 32)), image[19:51, 11:43], atol=1e-6)
    # zoom out by 2: tile pixel p samples 2p + 0.5, the mean of pixels 2p and 2p + 1 along each axis
    pooled = image.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(run(_neutral(scale=(2.0, 2.0)), (32, 32)), pooled, atol=1e-5)


def test_affine_part_matches_a_float64_reference():
    params = _neutral(angle=0.3, scale=(1.2, 0.8), flip=(True, False), offset=(5.0, -7.0))
    matrix, translation = affine_tile_to_original(params, (64, 64), (100, 120), (200, 360))
    spacing = np.array([2.0, 3.0])
    rotation = np.array([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]])
    point = np.array([10.0, 50.0])
    network = np.array([49.5, 59.5]) + np.array([5.0, -7.0]) + np.diag([-1.0, 1.0]) @ rotation @ (
        np.array([1.2, 0.8]) * (point - 31.5))
    original = spacing * network + (spacing - 1.0) / 2.0  # centre-preserving grid of data_io.resample
    np.testing.assert_allclose(matrix @ point + translation, original)


def test_elastic_deformation_matches_simpleitk_bspline_transform():
    params = sample_spatial_params(np.random.default_rng(3), AugmentationConfig(), (64, 48), (64, 48))
    transform = SpatialTransform(params, (64, 48), (64, 48), (64, 48))
    matrix, translation = affine_tile_to_original(params, (64, 48), (64, 48), (64, 48))
    affine = sitk.AffineTransform(2)
    affine.SetMatrix(matrix[::-1, ::-1].ravel().tolist())
    affine.SetTranslation(translation[::-1].tolist())
    bspline = sitk.BSplineTransformInitializer(sitk.Image(48, 64, sitk.sitkUInt8), [3, 3], 3)
    bspline.SetParameters(np.concatenate([params.elastic[..., 1].ravel(), params.elastic[..., 0].ravel()]).tolist())
    composite = sitk.CompositeTransform(2)
    composite.AddTransform(affine)
    composite.AddTransform(bspline)
    coordinates = transform.coordinates()
    for y, x in [(0, 0), (10, 40), (33, 17), (63, 47)]:
        expected = composite.TransformPoint((float(x), float(y)))[::-1]
        np.testing.assert_allclose(coordinates[y, x], expected, atol=1e-9)
    without = SpatialTransform(dataclasses.replace(params, elastic=np.zeros_like(params.elastic)), (64, 48),
                               (64, 48), (64, 48)).coordinates()
    moved = np.abs(coordinates - without).max()
    assert 0.5 < moved < 10.0 * max(params.scale) + 1e-6


def _check_alignment(labels: np.ndarray, image: np.ndarray, out_labels: np.ndarray, out_image: np.ndarray,
                     coordinates: np.ndarray) -> int:
    """Where the 4 pixels around a mapped point share one label, the image must be that label's paint value
    and the nearest label that label. Returns the number of checked foreground pixels."""
    height, width = labels.shape
    y, x = coordinates[..., 0], coordinates[..., 1]
    inside = (y >= 0) & (y <= height - 1) & (x >= 0) & (x <= width - 1)
    y0 = np.clip(np.floor(y).astype(int), 0, height - 2)
    x0 = np.clip(np.floor(x).astype(int), 0, width - 2)
    corners = np.stack([labels[y0, x0], labels[y0 + 1, x0], labels[y0, x0 + 1], labels[y0 + 1, x0 + 1]])
    uniform = inside & np.all(corners == corners[0], axis=0)
    np.testing.assert_array_equal(out_labels[uniform], corners[0][uniform])
    np.testing.assert_allclose(out_image[uniform], paint(corners[0][uniform]), atol=1e-5)
    return int(np.sum(uniform & (corners[0] > 0)))


def test_marker_painted_image_transforms_like_its_labels():
    labels = moving_disks(num_frames=3, shape=(96, 128), num_cells=8, radius=12, seed=4)
    rng = np.random.default_rng(5)
    for _ in range(3):
        params = sample_spatial_params(rng, AugmentationConfig(), (64, 64), (96, 128))
        transform = SpatialTransform(params, (64, 64), (96, 128), (96, 128))
        checked = 0
        for frame in labels:
            out_labels = transform.resample(frame, "nearest", 0)
            out_image = transform.resample(paint(frame), "linear", -1.0)
            assert out_labels.dtype == np.uint16
            checked += _check_alignment(frame, paint(frame), out_labels, out_image, transform.coordinates())
        assert checked > 500


def test_one_transform_for_all_frames_of_a_window():
    labels = np.repeat(moving_disks(num_frames=1, seed=6), 4, axis=0)
    config = small_config(tile=64, length=4)
    data = training_data([training_video(labels, complete=[1])], config)
    params = sample_params(np.random.default_rng(9), config.augmentation, (64, 64), (96, 128), 4)
    params = AugmentationParams(params.spatial, identity_params(config.augmentation, 4).intensity)
    sample = render_sample(data, 0, 0, params, np.random.default_rng(0))
    for t in range(1, 4):
        np.testing.assert_array_equal(sample.frames[t], sample.frames[0])
        np.testing.assert_array_equal(sample.labels[t], sample.labels[0])
    assert sample.labels.max() > 0


@pytest.mark.ctc
def test_real_labels_and_painted_frames_stay_aligned(ctc_dataset):
    sequence = load_sequence(ctc_dataset("DIC-C2DH-HeLa"), "01")
    labels = sequence.merged[31].astype(np.int64)  # a SEG frame: full masks
    rng = np.random.default_rng(10)
    for _ in range(2):
        params = sample_spatial_params(rng, AugmentationConfig(), (256, 256), (256, 256))
        transform = SpatialTransform(params, (256, 256), (256, 256), (512, 512))
        out_labels = transform.resample(sequence.merged[31], "nearest", 0)
        out_image = transform.resample(paint(labels), "linear", -1.0)
        assert _check_alignment(labels, paint(labels), out_labels, out_image, transform.coordinates()) > 5000


def test_pixels_outside_the_frame_get_the_default_value():
    params = _neutral(scale=(1.5, 1.5), angle=0.4)
    transform = SpatialTransform(params, (64, 64), (64, 64), (64, 64))
    out = transform.resample(np.ones((64, 64), np.float32), "linear", -1.0)
    mask = transform.resample(np.ones((64, 64), bool), "nearest", 0)
    coordinates = transform.coordinates()
    outside = np.any((coordinates < -0.5) | (coordinates > 63.5), axis=-1)
    assert outside.sum() > 100
    assert np.all(out[outside] == -1.0) and not mask[outside].any()
    assert np.all(out[~outside] == 1.0) and mask[~outside].all()


# ---------------------------------------------------------------------------------------------------------------
# Intensity and labels


def test_intensity_change_matches_the_formula():
    frames = np.random.default_rng(11).normal(size=(3, 8, 8)).astype(np.float32)
    params = IntensityParams(shift=0.3, scale=1.4, gamma=None, frame_shift=np.array([0.0, 0.1, -0.1]),
                             frame_scale=np.array([1.0, 0.9, 1.1]))
    expected = ((frames.astype(np.float64) + 0.3) * 1.4 + np.array([0.0, 0.1, -0.1])[:, None, None]) * np.array(
        [1.0, 0.9, 1.1])[:, None, None]
    np.testing.assert_allclose(apply_intensity(frames, params), expected, rtol=1e-6, atol=1e-6)
    gamma = dataclasses.replace(params, gamma=2.0, shift=0.0, scale=1.0, frame_shift=np.zeros(3),
                                frame_scale=np.ones(3))
    low, high = frames.min(), frames.max()
    expected = ((frames - low) / (high - low)) ** 2 * (high - low) + low
    np.testing.assert_allclose(apply_intensity(frames, gamma), expected, rtol=1e-5, atol=1e-5)


def test_label_smoothing_removes_thin_protrusions():
    labels = np.zeros((1, 40, 40), np.int32)
    labels[0, 10:30, 10:30] = 5
    labels[0, 19, 30:36] = 5  # a one-pixel spike
    labels[0, 0, 0] = 9  # an isolated pixel
    out = smooth_labels(labels, 2.0)
    assert out[0, 19, 33] == 0 and out[0, 0, 0] == 0
    assert out[0, 20, 20] == 5 and set(np.unique(out)) <= {0, 5, 9}
    np.testing.assert_array_equal(smooth_labels(labels, 0.0), labels)
