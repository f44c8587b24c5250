"""Tests of the cosine-loss targets: instances, neighbours (r_N), background, dense expansion (paper §2.2, §4.2)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_io.targets import (build_targets, centroid_neighbours, centroids, code_neighbours, expand_targets,
                             select_instances)
from rshn_tf.config import LossConfig
from rshn_tf.errors import RshnError
from tests.cases import moving_disks, reference_neighbours


@pytest.mark.parametrize("radius", [8.0, 20.0, 45.0])
def test_centroid_neighbours_match_a_loop_reference(radius):
    labels = moving_disks(num_frames=5, shape=(60, 80), num_cells=9, radius=6, seed=2).astype(np.int64)
    ids = np.unique(labels)[1:]
    found = centroid_neighbours(labels, ids, radius)
    sizes = []
    for label, neighbours in zip(ids, found):
        assert set(neighbours.tolist()) == reference_neighbours(labels, int(label), radius)
        sizes.append(len(neighbours))
    assert max(sizes) > 0  # the case is not trivial


def test_centroid_is_over_all_frames_of_the_window():
    labels = np.zeros((2, 10, 20), np.int64)
    labels[0, 2:4, 2:4] = 1  # 4 pixels around (2.5, 2.5)
    labels[1, 2:4, 12:16] = 1  # 8 pixels around (2.5, 13.5)
    np.testing.assert_allclose(centroids(labels, [1]), [[2.5, (4 * 2.5 + 8 * 13.5) / 12]])


def test_neighbour_distance_is_strict():
    labels = np.zeros((1, 30, 30), np.int64)
    labels[0, 10, 10] = 1
    labels[0, 10, 15] = 2  # exactly 5 px away
    assert centroid_neighbours(labels, [1], 5.0)[0].size == 0
    np.testing.assert_array_equal(centroid_neighbours(labels, [1], 5.01)[0], [2])


def test_code_mode_differs_where_the_recipe_says():
    labels = np.zeros((6, 40, 60), np.int64)
    labels[1:3, 5:35, 5:25] = 1  # a large instance alive in frames 1-2, centroid (19.5, 14.5)
    labels[1:3, 5:35, 26:30] = 2  # touches instance 1 (1 px gap), but far from its centroid
    labels[5, 18:21, 14:17] = 3  # at the centroid, but only in frame 5 (instance 1 lives in 1-2, disk in 0-3)
    radius = 5.0
    assert set(centroid_neighbours(labels, [1], radius)[0].tolist()) == {3}
    assert set(code_neighbours(labels, [1], radius, dilation=5)[0].tolist()) == {2}
    assert code_neighbours(labels, [1], radius, dilation=1)[0].size == 0  # without dilation the gap is kept


def test_instance_subset_is_random_but_reproducible():
    labels = np.arange(50, dtype=np.int64).reshape(1, 5, 10)
    first = select_instances(labels, 31, np.random.default_rng(0))
    assert first.size == 31 and np.all(np.diff(first) > 0) and 0 not in first
    np.testing.assert_array_equal(first, select_instances(labels, 31, np.random.default_rng(0)))
    assert not np.array_equal(first, select_instances(labels, 31, np.random.default_rng(1)))
    np.testing.assert_array_equal(select_instances(labels[:, :2], 31, np.random.default_rng(0)), np.arange(1, 20))


def _targets(labels, complete, annotated=None, valid=None, **loss):
    shape = labels.shape[1:]
    annotated = np.ones(shape, bool) if annotated is None else annotated
    valid = np.ones(shape, bool) if valid is None else valid
    return build_targets(labels, np.asarray(complete), annotated, valid, LossConfig(**loss),
                         np.random.default_rng(0))


def test_dense_targets_obey_the_definitions():
    labels = moving_disks(num_frames=4, shape=(64, 64), num_cells=6, radius=7, seed=3).astype(np.int64)
    annotated = np.zeros((64, 64), bool)
    annotated[8:56, 8:56] = True
    valid = np.ones((64, 64), bool)
    valid[:, :4] = False
    targets = _targets(labels, [False, True, False, True], annotated, valid, neighbour_radius=25.0)
    dense = expand_targets(targets, 31)
    assert dense["instance_masks"].shape == (31, 4, 64, 64) and dense["neighbour_masks"].shape == (31, 4, 64, 64)
    for key in ("background_mask", "foreground_mask", "valid_mask"):
        assert dense[key].shape == (4, 64, 64) and dense[key].dtype == bool
    clipped = np.where(valid, labels, 0)
    ids = targets.instance_ids
    np.testing.assert_array_equal(ids, np.unique(clipped)[1:])
    for slot, label in enumerate(ids):
        np.testing.assert_array_equal(dense["instance_masks"][slot], clipped == label)  # same id in every frame
        neighbour = dense["neighbour_masks"][slot]
        assert not np.any(neighbour & (clipped == label)) and not np.any(neighbour & (clipped == 0))
        expected = reference_neighbours(clipped, int(label), 25.0)
        np.testing.assert_array_equal(neighbour, np.isin(clipped, list(expected)))
    assert not dense["instance_masks"][len(ids):].any() and not dense["neighbour_masks"][len(ids):].any()
    usable = annotated & valid
    for t in range(4):
        if t in (1, 3):
            np.testing.assert_array_equal(dense["background_mask"][t], usable & (clipped[t] == 0))
            np.testing.assert_array_equal(dense["foreground_mask"][t], usable & (clipped[t] > 0))
        else:
            assert not dense["background_mask"][t].any() and not dense["foreground_mask"][t].any()
    np.testing.assert_array_equal(dense["valid_mask"], np.broadcast_to(valid, (4, 64, 64)))


def test_neighbours_include_instances_left_out_of_the_subset():
    labels = np.zeros((1, 20, 200), np.int64)
    for label in range(1, 41):
        labels[0, 5:10, 5 * label - 4:5 * label - 1] = label  # a row of 40 small cells, 2 px apart
    targets = _targets(labels, [False], max_instances=5, neighbour_radius=6.0)
    assert targets.instance_ids.size == 5 and targets.label_ids.size == 40
    dense = expand_targets(targets, 5)
    for slot, label in enumerate(targets.instance_ids):
        neighbour_ids = set(np.unique(labels[dense["neighbour_masks"][slot]]).tolist())
        assert neighbour_ids == reference_neighbours(labels, int(label), 6.0)
        assert len(neighbour_ids) >= 1


def test_no_frame_with_complete_seg_means_no_background_target():
    labels = moving_disks(num_frames=3, shape=(32, 32), num_cells=2, radius=5).astype(np.int64)
    targets = _targets(labels, [False, False, False])
    assert not targets.background_mask.any() and not targets.foreground_mask.any()


def test_unknown_neighbour_mode_is_rejected():
    labels = moving_disks(num_frames=1, shape=(32, 32), num_cells=1, radius=5).astype(np.int64)
    with pytest.raises(RshnError, match="loss.neighbour_mode"):
        build_targets(labels, np.array([True]), np.ones((32, 32), bool), np.ones((32, 32), bool),
                      dataclasses.replace(LossConfig(), neighbour_mode="dilation"), np.random.default_rng(0))


def test_expand_rejects_more_instances_than_slots():
    labels = moving_disks(num_frames=1, shape=(64, 64), num_cells=4, radius=5).astype(np.int64)
    with pytest.raises(ValueError, match="max_instances"):
        expand_targets(_targets(labels, [True]), 2)


@pytest.mark.parametrize("mode", ["centroid", "code"])
def test_the_codes_radius_replaces_table_1s_when_set(mode):
    """Two 3 x 3 cells 12 px apart (centre to centre): neighbours at r_N 30.7 in either rule, not at r_N 10 (the
    code rule's dilation of 5 px does not bridge the 9-px gap either)."""
    labels = np.zeros((1, 20, 40), np.int64)
    labels[0, 8:11, 8:11], labels[0, 8:11, 20:23] = 1, 2
    table_1 = _targets(labels, [False], neighbour_radius=10.0, neighbour_mode=mode)
    code = _targets(labels, [False], neighbour_radius=10.0, neighbour_mode=mode, code_neighbour_radius=30.7)
    assert not table_1.neighbour_table.any()
    assert code.neighbour_table[:, 1:].sum() == 2  # 1 is a neighbour of 2 and 2 of 1
    assert LossConfig(neighbour_radius=10.0).radius == 10.0
    assert LossConfig(neighbour_radius=10.0, code_neighbour_radius=30.7).radius == 30.7
