"""The fast HDBSCAN (``rshn_tf.fast_hdbscan``) against the plain ``hdbscan.HDBSCAN`` call: identical labels (not only
up to a permutation: the same library code numbers the clusters), bit-identical core distances, and the fallback on
ties."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import KDTree

from rshn_tf import clustering, fast_hdbscan
from rshn_tf.config import PostprocessingConfig
from tests.cases import oracle_frame_pair


def blobs(count: int, dim: int, centres: int, seed: int, spread: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.uniform(-3, 3, (centres, dim))
    return (middle[rng.integers(centres, size=count)] + rng.normal(0, spread, (count, dim))).astype(np.float32)


@pytest.mark.parametrize("count,dim,centres,m,seed", [
    (300, 2, 3, 5, 0), (800, 3, 5, 10, 1), (1500, 18, 6, 25, 2), (2500, 18, 8, 100, 3), (600, 5, 2, 599, 4),
    (400, 4, 4, 400, 5), (3000, 18, 10, 250, 6),
])
def test_labels_equal_the_library_call(count, dim, centres, m, seed):
    features = blobs(count, dim, centres, seed)
    stats = {}
    fast = fast_hdbscan.hdbscan_labels(features, m, stats=stats)
    reference = fast_hdbscan.reference_labels(features, m)
    assert not stats["fallback"]
    np.testing.assert_array_equal(fast, reference)
    if 4 * m < count:  # big m: everything may be noise, which the equality above covers
        assert fast.max() >= 1


def test_labels_equal_with_two_workers_and_noise():
    features = np.concatenate([blobs(2000, 18, 5, 7), np.random.default_rng(8).uniform(-6, 6, (300, 18))])
    reference = fast_hdbscan.reference_labels(features, 50)
    np.testing.assert_array_equal(fast_hdbscan.hdbscan_labels(features, 50, workers=2), reference)
    assert (reference == -1).sum() > 50


@pytest.mark.parametrize("tree,expected", [
    # two pairs, then the pairs joined: the clusters made by edges 0 and 1 are named 4 and 5
    ([[0, 1, 0.5], [2, 3, 0.7], [1, 2, 1.0]], [[0, 1, 0.5, 2], [2, 3, 0.7, 2], [4, 5, 1.0, 4]]),
    # a chain: each edge names the cluster the earlier edges made, in the order of its own points
    ([[0, 1, 0.1], [1, 2, 0.2], [3, 2, 0.3]], [[0, 1, 0.1, 2], [4, 2, 0.2, 3], [3, 5, 0.3, 4]]),
])
def test_single_linkage_names_the_clusters_by_their_merge(tree, expected):
    np.testing.assert_array_equal(fast_hdbscan.single_linkage(np.array(tree, dtype=np.float64)), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_single_linkage_equals_the_library_label_on_random_trees_with_ties(seed):
    from hdbscan._hdbscan_linkage import label

    rng = np.random.default_rng(seed)
    count = 5000
    joined = np.array([rng.integers(0, i + 1) for i in range(count - 1)])  # a random tree, points relabelled
    points = rng.permutation(count)
    tree = np.column_stack([points[np.arange(1, count)], points[joined], rng.integers(0, 50, count - 1)])
    tree = tree[np.argsort(tree[:, 2], kind="stable")].astype(np.float64)  # many equal weights
    np.testing.assert_array_equal(fast_hdbscan.single_linkage(tree), label(tree))


def test_core_distances_are_bit_identical_to_the_kd_tree_query():
    points = blobs(3000, 18, 6, 9).astype(np.float64)
    k = 200
    distances, neighbours = KDTree(points, leaf_size=25).query(points, k=k + 1, dualtree=True, breadth_first=True)
    core, first = fast_hdbscan.core_distances(points, k)
    np.testing.assert_array_equal(core, distances[:, k])
    # the first-round neighbour of hdbscan's _compute_bounds, from the library's neighbour lists
    reduced = core * core
    expected = np.arange(len(points))
    for n in range(len(points)):
        for m in neighbours[n]:
            if m != n and reduced[m] <= reduced[n]:
                expected[n] = m
                break
    np.testing.assert_array_equal(first, expected)
    assert np.count_nonzero(first != np.arange(len(points))) > len(points) // 2


def test_exact_reduced_matches_the_kd_tree_distances():
    points = blobs(500, 18, 3, 10).astype(np.float64)
    distances, neighbours = KDTree(points).query(points[:50], k=20)
    for row in range(50):
        values = fast_hdbscan.exact_reduced(np.repeat(points[row:row + 1], 20, 0), points[neighbours[row]])
        np.testing.assert_array_equal(np.sqrt(values), distances[row])


def test_ties_fall_back_to_the_library_call():
    # identical embeddings on a pixel grid: many equal distances, the library's neighbour order decides
    grid = np.stack(np.meshgrid(np.arange(30), np.arange(30), indexing="ij"), -1).reshape(-1, 2) * 0.02
    features = np.concatenate([np.repeat([[0.0, 1.0, 0.0]], len(grid), 0), grid], 1)
    features = np.concatenate([features, features + [0, 0, 1.0, 0.8, 0.0]]).astype(np.float32)
    stats = {}
    labels = fast_hdbscan.hdbscan_labels(features, 30, stats=stats)
    assert stats["fallback"]
    np.testing.assert_array_equal(labels, fast_hdbscan.reference_labels(features, 30))


def test_cluster_tile_with_hdbscan_uses_the_identical_labels():
    embeddings, _ = oracle_frame_pair((64, 64), 5, noise=0.05, seed=3)
    config = PostprocessingConfig(clustering="hdbscan", hdbscan_min_cluster_size=40, min_size=10)
    mask = clustering.foreground_mask(embeddings, config.background_threshold)
    features = clustering.tile_features(embeddings, mask, config.hdbscan_coordinate_factor)
    reference = fast_hdbscan.reference_labels(features, 40)
    clusters = np.zeros(mask.shape, np.int32)
    clusters[mask] = reference + 1
    expected = clustering.split_components(clusters, config.min_size)
    np.testing.assert_array_equal(clustering.cluster_tile(embeddings, config), expected)
    assert expected.max() >= 3
