"""Tests of rshn_tf.clustering: one 2-frame tile's embeddings -> instance labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from rshn_tf import clustering
from rshn_tf.clustering import (
    choose_seeds,
    cluster_tile,
    cluster_tiles,
    cosine_mean_shift,
    cosine_mean_shift_reference,
    foreground_mask,
    split_components,
    tile_features,
    tile_seed,
)
from rshn_tf.config import PostprocessingConfig
from rshn_tf.errors import RshnError
from tests.cases import (
    disk_labels,
    embeddings_from_labels,
    instance_directions,
    oracle_frame_pair,
    oracle_video,
    same_partition,
    shifted_pair,
)


def config(**changes) -> PostprocessingConfig:
    """Paper defaults with a small t_size suited to the small synthetic tiles."""
    return dataclasses.replace(PostprocessingConfig(), **{"min_size": 10, **changes})


def naive_cosine_mean_shift(features, bandwidth, seeds, max_iterations, tolerance):
    """Plain float64 cosine mean shift (no fixed-point grid), the independent check of the module's versions."""
    x = features.astype(np.float64)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    modes, counts = [], []
    for seed in seeds:
        mean = x[seed]
        for _ in range(max_iterations):
            near = 1.0 - unit @ (mean / np.linalg.norm(mean)) <= bandwidth
            new = x[near].mean(axis=0)
            shift = np.linalg.norm(new - mean)
            mean = new
            if shift < tolerance * bandwidth:
                break
        modes.append(mean)
        counts.append(near.sum())
    order = np.argsort(-np.array(counts), kind="stable")
    kept = []
    for index in order:
        m = modes[index] / np.linalg.norm(modes[index])
        if all(1.0 - m @ k > bandwidth for k in kept):
            kept.append(m)
    return np.argmax(unit @ np.array(kept).T, axis=1)


def separated_tile(noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Five instances on a 96x96 tile: two touching, with distinct directions; background along e_b."""
    frame = disk_labels((96, 96), [(20, 20, 10, 1), (20, 41, 11, 2), (60, 25, 12, 3), (70, 70, 14, 4), (25, 75, 8, 5)])
    labels = shifted_pair(frame, (1, 2))
    return embeddings_from_labels(labels, instance_directions(5), noise=noise, seed=3), labels


# ----------------------------------------------------------------------------------------------------------------
# Whole tiles


def test_separated_instances_are_recovered_exactly():
    embeddings, truth = separated_tile()
    labels = cluster_tile(embeddings, config(), seed=0)
    assert labels.dtype == np.int32 and labels.shape == truth.shape
    assert same_partition(labels, truth)
    assert sorted(np.unique(labels)) == list(range(6))  # consecutive 0..5


def test_result_matches_an_independent_float64_mean_shift():
    embeddings, truth = separated_tile(noise=0.05)
    mask = foreground_mask(embeddings, 0.5)
    features = tile_features(embeddings, mask, 0.005)
    seeds = choose_seeds(len(features), 128, 7)
    expected = naive_cosine_mean_shift(features, 0.1, seeds, 300, 1e-3)
    _, labels = cosine_mean_shift(features, 0.1, seeds, 300, 1e-3)
    assert same_partition(labels + 1, expected + 1)
    assert same_partition(labels + 1, truth[mask])


def test_tile_features_of_a_view_match_a_pixel_loop():
    rng = np.random.default_rng(8)
    frame_pair = rng.normal(size=(2, 40, 50, 16)).astype(np.float32)
    view = frame_pair[:, 3:35, 10:47]  # a tile cut out of a bigger array, as PostProcessor passes it
    mask = foreground_mask(view, 0.5)
    expected = [list(view[t, y, x]) + [0.02 * y, 0.02 * x]
                for t in range(2) for y in range(32) for x in range(37) if mask[t, y, x]]
    features = tile_features(view, mask, 0.02)
    assert features.dtype == np.float32 and 0 < len(features) < mask.size
    np.testing.assert_array_equal(features, np.array(expected, dtype=np.float32))


def test_all_background_and_all_padding_tiles_give_zeros():
    background = embeddings_from_labels(np.zeros((2, 32, 40), np.int32), instance_directions(3), noise=0.05)
    padding = np.zeros((2, 32, 40, 16), np.float32)
    for embeddings in (background, padding):
        labels = cluster_tile(embeddings, config())
        assert labels.shape == (2, 32, 40) and labels.dtype == np.int32 and not labels.any()
    assert not cluster_tile(padding, config(clustering="hdbscan")).any()


def test_padding_is_background_and_does_not_change_the_clusters():
    embeddings, truth = separated_tile()
    padded = np.zeros((2, 128, 112, 16), np.float32)
    padded[:, :96, :96] = embeddings  # padding below and to the right keeps the tile-local coordinates
    labels = cluster_tile(padded, config(), seed=5)
    assert not labels[:, 96:].any() and not labels[:, :, 96:].any()
    np.testing.assert_array_equal(labels[:, :96, :96], cluster_tile(embeddings, config(), seed=5))


def test_background_threshold_is_strict_at_the_cos2_boundary():
    a = np.float32(1 / np.sqrt(2))
    boundary = np.zeros(16, np.float32)
    boundary[:2] = a  # cos(e, e_b)^2 = a^2 / (2 a^2) = 0.5 exactly: not background (§2.3: background if > 0.5)
    above = boundary.copy()
    above[0] = np.nextafter(a, np.float32(1))
    embeddings = np.zeros((2, 8, 8, 16), np.float32)
    embeddings[..., 0] = 1
    embeddings[:, 2:6, 2:6] = boundary
    embeddings[:, 2:6, 2:4] = above
    mask = foreground_mask(embeddings, 0.5)
    np.testing.assert_array_equal(mask[:, 2:6, 4:6], True)
    assert mask.sum() == 2 * 4 * 2
    labels = cluster_tile(embeddings, config(min_size=1))
    assert np.array_equal(labels > 0, mask) and labels.max() == 1


def test_one_cluster_forming_two_separated_blobs_is_split_into_two_instances():
    frame = disk_labels((80, 80), [(20, 20, 8, 1), (20, 45, 8, 1)])
    embeddings = embeddings_from_labels(shifted_pair(frame, (0, 0)), instance_directions(1))
    mask = foreground_mask(embeddings, 0.5)
    features = tile_features(embeddings, mask, 0.005)
    _, ms_labels = cosine_mean_shift(features, 0.1, choose_seeds(len(features), 128, 0), 300, 1e-3)
    assert np.unique(ms_labels).size == 1  # the mean shift puts both blobs into one cluster ...
    labels = cluster_tile(embeddings, config(), seed=0)
    assert labels.max() == 2  # ... and the connected components split it
    assert labels[0, 20, 20] != labels[0, 20, 45]
    assert same_partition(labels, shifted_pair(disk_labels((80, 80), [(20, 20, 8, 1), (20, 45, 8, 2)]), (0, 0)))


def test_components_connect_across_the_two_frames():
    clusters = np.zeros((2, 10, 10), np.int32)
    clusters[0, 2, 2] = clusters[1, 3, 3] = 1  # diagonal in (y, x) and t: 26- but not 18-connected
    clusters[0, 6, 6] = clusters[1, 6, 7] = 1  # (t, x) diagonal: 18-connected
    labels = split_components(clusters, 1)
    assert labels.max() == 3
    assert labels[0, 6, 6] == labels[1, 6, 7] and labels[0, 2, 2] != labels[1, 3, 3]


def test_touching_clusters_stay_apart_and_match_a_per_cluster_labelling():
    clusters = np.zeros((2, 12, 12), np.int32)
    clusters[0, 2:10, 2:4] = 1  # cluster 1: two bars joined only through cluster 2 ...
    clusters[0, 2:10, 6:8] = 1
    clusters[:, 5, 4:6] = 2  # ... a bridge of cluster 2 touching both, present in both frames
    labels = split_components(clusters, 1)
    assert labels.max() == 3 and labels[0, 5, 4] == labels[1, 5, 5] != labels[0, 2, 2] != labels[0, 2, 6]
    # Random clusters against the straightforward definition: label each cluster on its own.
    rng = np.random.default_rng(0)
    clusters = rng.integers(0, 4, (2, 30, 30)).astype(np.int32) * (rng.random((2, 30, 30)) < 0.7)
    structure = np.ones((3, 3, 3), bool)
    structure[[0, 0, 0, 0, 2, 2, 2, 2], [0, 0, 2, 2, 0, 0, 2, 2], [0, 2, 0, 2, 0, 2, 0, 2]] = False  # 18-neighbours
    expected = np.zeros_like(clusters)
    for cluster in range(1, 4):
        parts, count = ndimage.label(clusters == cluster, structure)
        sizes = np.bincount(parts.ravel())
        keep = (parts > 0) & (sizes[parts] >= 3)
        expected[keep] = parts[keep] + 1000 * cluster
    labels = split_components(clusters, 3)
    assert same_partition(labels, expected)
    assert sorted(np.unique(labels)) == list(range(labels.max() + 1))


def test_min_size_counts_voxels_over_both_frames():
    clusters = np.zeros((2, 20, 20), np.int32)
    clusters[0, 0:5, 0:6] = 1  # 30 voxels in frame t ...
    clusters[1, 0:5, 0:6] = 1  # ... and 30 in frame t+1: one component of 60
    clusters[0, 10:15, 10:18] = 2  # 40 voxels in frame t only
    clusters[:, 18:20, 0:2] = 3  # 8 voxels
    for min_size, kept in [(8, 3), (9, 2), (40, 2), (41, 1), (60, 1), (61, 0)]:
        labels = split_components(clusters, min_size)
        assert labels.max() == kept and sorted(np.unique(labels)) == list(range(kept + 1))
    labels = split_components(clusters, 50)
    assert (labels > 0).sum() == 60 and labels[1, 0, 0] == labels[0, 4, 5] == 1


def test_cluster_tile_removes_instances_below_t_size():
    frame = disk_labels((64, 64), [(15, 15, 3, 1), (40, 40, 10, 2)])  # 29 and 317 pixels per frame
    embeddings = embeddings_from_labels(shifted_pair(frame), instance_directions(2))
    assert cluster_tile(embeddings, config(min_size=58)).max() == 2
    labels = cluster_tile(embeddings, config(min_size=59))
    assert labels.max() == 1 and labels[0, 40, 40] == 1 and labels[0, 15, 15] == 0


# ----------------------------------------------------------------------------------------------------------------
# Fast == reference


@pytest.mark.parametrize(
    "case",
    [
        dict(kind="oracle", noise=0.1, bandwidth=0.1, seed=0),
        dict(kind="oracle", noise=0.3, bandwidth=0.1, seed=1),
        dict(kind="oracle", noise=0.05, bandwidth=0.2, seed=2),
        dict(kind="oracle", noise=0.2, bandwidth=0.025, seed=3),
        dict(kind="random", noise=0.0, bandwidth=0.1, seed=4),
        dict(kind="random", noise=0.0, bandwidth=0.5, seed=5),
        dict(kind="smooth", noise=0.02, bandwidth=0.1, seed=6),
    ],
)
def test_fast_mean_shift_equals_reference_exactly(case):
    rng = np.random.default_rng(case["seed"])
    if case["kind"] == "oracle":  # cells of few colours, many of them touching or sharing directions
        embeddings, _ = oracle_frame_pair((72, 80), 14, noise=case["noise"], seed=case["seed"], colours=4)
    elif case["kind"] == "random":  # no structure at all: every decision is ambiguous
        embeddings = rng.normal(size=(2, 40, 48, 16)).astype(np.float32)
        embeddings[..., 0] *= 0.3
        embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
    else:  # smooth gradients: modes drift slowly, long iterations
        rows, cols = np.mgrid[0:64, 0:64] / 64.0
        base = np.stack([0.2 * np.ones_like(rows), np.cos(3 * rows), np.sin(3 * rows), cols, 1 - cols], -1)
        base = np.concatenate([base, np.zeros((64, 64, 11))], -1)[None].repeat(2, 0)
        base += rng.normal(0, case["noise"], base.shape)
        embeddings = (base / np.linalg.norm(base, axis=-1, keepdims=True)).astype(np.float32)
    mask = foreground_mask(embeddings, 0.5)
    features = tile_features(embeddings, mask, 0.005)
    seeds = choose_seeds(len(features), 128, case["seed"])
    args = (features, case["bandwidth"], seeds, 300, 1e-3)
    fast_modes, fast_labels = cosine_mean_shift(*args)
    ref_modes, ref_labels = cosine_mean_shift_reference(*args)
    assert len(ref_modes) > 1
    np.testing.assert_array_equal(fast_modes, ref_modes)
    np.testing.assert_array_equal(fast_labels, ref_labels)


def _dense_frame_tile():
    embeddings, _ = oracle_frame_pair((256, 256), 30, noise=0.1, seed=12)  # ~ a Fluo-N2DL-HeLa tile
    return embeddings, 12


def _benchmark_oracle_tile():
    # a 256 x 256 tile like those of benchmarks/bench_postprocess.py (1100 x 700 scenario: ~25 cells per tile)
    _, pairs = oracle_video((256, 256), 25, 2, window=8, distance=10, noise=0.05, seed=5)
    return pairs[0], 5


@pytest.mark.parametrize("make_tile", [_dense_frame_tile, _benchmark_oracle_tile], ids=["dense", "bench_oracle"])
def test_fast_equals_reference_on_a_full_size_tile(make_tile):
    embeddings, seed = make_tile()
    features = tile_features(embeddings, foreground_mask(embeddings, 0.5), 0.005)
    seeds = choose_seeds(len(features), 128, seed)
    fast = cosine_mean_shift(features, 0.1, seeds, 300, 1e-3)
    ref = cosine_mean_shift_reference(features, 0.1, seeds, 300, 1e-3)
    assert len(features) > 5000 and len(ref[0]) > 5
    np.testing.assert_array_equal(fast[0], ref[0])
    np.testing.assert_array_equal(fast[1], ref[1])


def test_fast_equals_reference_with_few_iterations_duplicates_and_tiny_problems():
    embeddings, _ = oracle_frame_pair((48, 48), 8, noise=0.15, seed=9, colours=3)
    features = tile_features(embeddings, foreground_mask(embeddings, 0.5), 0.005)
    for seeds, iterations in [([0, 0, 5, 5, 7], 300), (choose_seeds(len(features), 64, 1), 1), ([3], 2)]:
        fast = cosine_mean_shift(features, 0.1, seeds, iterations, 1e-3)
        ref = cosine_mean_shift_reference(features, 0.1, seeds, iterations, 1e-3)
        np.testing.assert_array_equal(fast[0], ref[0])
        np.testing.assert_array_equal(fast[1], ref[1])
    single = features[:1]
    modes, labels = cosine_mean_shift(single, 0.1, [0], 300, 1e-3)
    assert modes.shape == (1, features.shape[1]) and labels.tolist() == [0]
    modes, labels = cosine_mean_shift(features[:0], 0.1, [], 300, 1e-3)
    assert modes.shape == (0, features.shape[1]) and labels.shape == (0,)


def test_mode_deduplication_and_assignment_follow_the_authors_code():
    # Two tight groups of points and one far point; seeds in all of them. The far point's mode has the smallest
    # neighbour count and survives because it is farther than h from the others.
    directions = np.eye(4)[1:]
    features = np.concatenate([np.repeat(directions[:1], 5, 0), np.repeat(directions[1:2], 3, 0), directions[2:]])
    features = np.concatenate([features, np.zeros((9, 2))], 1).astype(np.float32)
    for implementation in (cosine_mean_shift, cosine_mean_shift_reference):
        modes, labels = implementation(features, 0.1, [8, 5, 0, 1], 300, 1e-3)
        np.testing.assert_array_equal(modes, features[[0, 5, 8]].astype(np.float64))  # sorted by count
        assert labels.tolist() == [0] * 5 + [1] * 3 + [2]


# ----------------------------------------------------------------------------------------------------------------
# Seeds, determinism, batching


def test_seeds_are_deterministic_and_without_replacement():
    seeds = choose_seeds(1000, 128, 3)
    assert len(set(seeds.tolist())) == 128 and seeds.max() < 1000
    np.testing.assert_array_equal(seeds, np.random.default_rng(3).choice(1000, 128, replace=False))
    assert not np.array_equal(seeds, choose_seeds(1000, 128, 4))
    np.testing.assert_array_equal(choose_seeds(50, 128, 3), np.arange(50))


def test_cluster_tile_is_deterministic_per_seed():
    embeddings, _ = oracle_frame_pair((64, 64), 10, noise=0.2, seed=4, colours=3)
    first = cluster_tile(embeddings, config(), seed=11)
    np.testing.assert_array_equal(first, cluster_tile(embeddings, config(), seed=11))
    np.testing.assert_array_equal(cluster_tile(embeddings, config(seed=11)), first)  # seed=None: config.seed


def test_cluster_tiles_equals_cluster_tile_with_derived_seeds():
    tiles = [oracle_frame_pair((48, 56), 6, noise=0.15, seed=s, colours=3)[0] for s in range(3)]
    tiles.append(np.zeros((2, 48, 56, 16), np.float32))
    for workers in (1, 2):
        batched = cluster_tiles(tiles, config(), seed=21, workers=workers)
        assert len(batched) == len(tiles)
        for index, (tile, labels) in enumerate(zip(tiles, batched)):
            np.testing.assert_array_equal(labels, cluster_tile(tile, config(), seed=tile_seed(21, index)))
    assert len({tile_seed(21, i) for i in range(40)} | {tile_seed(22, i) for i in range(40)}) == 80


# ----------------------------------------------------------------------------------------------------------------
# HDBSCAN and errors


def test_hdbscan_path_recovers_separated_instances():
    embeddings, truth = separated_tile()
    labels = cluster_tile(embeddings, config(clustering="hdbscan", hdbscan_min_cluster_size=50), seed=0)
    assert labels.dtype == np.int32
    assert same_partition(labels, truth)


def test_hdbscan_noise_becomes_background():
    # A 5-pixel speck (10 points over both frames) is fewer than m points: HDBSCAN calls it noise.
    frame = disk_labels((96, 96), [(20, 20, 10, 1), (60, 25, 12, 2), (70, 70, 14, 3), (85, 10, 1, 4)])
    truth = shifted_pair(frame, (1, 2))
    embeddings = embeddings_from_labels(truth, instance_directions(4), noise=0.02, seed=1)
    labels = cluster_tile(embeddings, config(clustering="hdbscan", hdbscan_min_cluster_size=25, min_size=1))
    assert labels[0, 85, 10] == 0 and labels.max() == 3
    assert same_partition(labels, np.where(truth == 4, 0, truth))


def test_invalid_settings_raise_clear_errors():
    embeddings, _ = separated_tile()
    with pytest.raises(RshnError, match="postprocessing.max_iterations"):
        cluster_tile(embeddings, config(max_iterations=0))
    with pytest.raises(RshnError, match="postprocessing.bandwidth"):
        cluster_tile(embeddings, config(bandwidth=0.0))
    with pytest.raises(ValueError, match=r"\(2, h, w, D\)"):
        cluster_tile(embeddings[0], config())
    with pytest.raises(ValueError, match="all-zero rows"):
        cosine_mean_shift(np.zeros((3, 4), np.float32), 0.1, [0], 10, 1e-3)


def test_module_does_not_import_tensorflow():
    assert "tensorflow" not in clustering.__dict__
    source = open(clustering.__file__, encoding="utf-8").read()
    assert "import tensorflow" not in source and "from tensorflow" not in source


def test_blas_is_single_threaded_only_inside_and_restored_after_nesting():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]

    before = blas_threads()
    with clustering.single_threaded_blas():
        with clustering.single_threaded_blas():
            assert set(blas_threads()) <= {1}
        assert set(blas_threads()) <= {1}
    assert blas_threads() == before
