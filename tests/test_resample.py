"""Tests of the shared original-grid <-> network-grid resampling."""

from __future__ import annotations

import numpy as np
import pytest

from data_io.resample import grid_mapping, resample_2d, resample_stack


def test_mapping_preserves_extent_and_centre():
    spacing, origin = grid_mapping((512, 700), (256, 1100))
    np.testing.assert_allclose(spacing, [2.0, 700 / 1100])
    # output pixel centres span the input extent [-0.5, N-0.5] symmetrically around the centre
    first = origin
    last = origin + spacing * (np.array([256, 1100]) - 1)
    np.testing.assert_allclose(first - (-0.5), np.array([511.5, 699.5]) - last)
    np.testing.assert_allclose((first + last) / 2, [255.5, 349.5])


def test_linear_downsampling_of_a_ramp_matches_the_analytic_values():
    ramp = np.tile(np.arange(8, dtype=np.float64), (4, 1))  # value = x coordinate
    out = resample_2d(ramp, (4, 4), "linear")
    # output pixel j maps to input coordinate 3.5 + 2 * (j - 1.5) = 0.5, 2.5, 4.5, 6.5
    np.testing.assert_allclose(out[0], [0.5, 2.5, 4.5, 6.5], atol=1e-6)
    assert out.dtype == np.float32


def test_nearest_labels_round_trip_exactly_for_integer_factors():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 5, size=(16, 24)).astype(np.uint16)
    big = resample_2d(small, (32, 48), "nearest")
    assert big.dtype == np.uint16
    np.testing.assert_array_equal(big, np.kron(small, np.ones((2, 2), dtype=np.uint16)))
    np.testing.assert_array_equal(resample_2d(big, (16, 24), "nearest"), small)


@pytest.mark.parametrize("scale", [1.0, 0.95])
def test_forward_and_back_are_inverse_for_smooth_labels(scale):
    labels = np.zeros((100, 120), dtype=np.int32)
    yy, xx = np.mgrid[:100, :120]
    labels[(yy - 50) ** 2 + (xx - 60) ** 2 < 20 ** 2] = 3
    labels[(yy - 30) ** 2 + (xx - 20) ** 2 < 8 ** 2] = 7
    net = resample_2d(labels, (64, 64), "nearest", scale=scale)
    back = resample_2d(net, labels.shape, "label_gaussian", scale=1.0 / scale)
    for label in (3, 7):
        inter = np.sum((back == label) & (labels == label))
        union = np.sum((back == label) | (labels == label))
        assert inter / union > 0.85
    assert set(np.unique(back)) <= {0, 3, 7}


def test_outside_pixels_get_the_default_value():
    out = resample_2d(np.ones((10, 10)), (10, 10), "linear", scale=2.0, default_value=-1.0)
    assert out[0, 0] == -1.0 and out[5, 5] == 1.0


def test_stack_resamples_every_frame():
    stack = np.stack([np.full((6, 6), v, dtype=np.float32) for v in (1.0, 2.0)])
    out = resample_stack(stack, (3, 3))
    np.testing.assert_allclose(out[:, 1, 1], [1.0, 2.0])
