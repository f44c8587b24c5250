"""Benchmark of rshn_tf.clustering on oracle-like embeddings of whole frame pairs.

Builds a frame pair of random non-overlapping ellipse cells (each one of 15 orthogonal unit directions, touching
cells different; background along e_b; Gaussian noise; frame t+1 moved by one pixel), cuts 256 x 256 tiles with
overlap 128 (offsets 0, 128, ..., the last snapped to the edge) and reports seconds per frame pair for:

* fast: ``cluster_tiles`` on all tiles (everything: foreground, features, mean shift, components, t_size), with
  1 and with 2 worker threads, and the fast mean shift alone (``cosine_mean_shift``) on every tile;
* reference: ``cosine_mean_shift_reference`` on a few tiles, extrapolated to all tiles;
* scikit-learn: ``MeanShift(bandwidth=sqrt(2 h), seeds=<the same 128 seeds>, cluster_all=True)`` on the same
  features scaled to unit length, on a few tiles, extrapolated. On unit vectors the Euclidean distance is
  sqrt(2 (1 - cos)), so sqrt(2 h) selects exactly the same neighbours as cosine distance h; scikit-learn then
  averages the unit vectors instead of the raw features, so its modes differ slightly (not its neighbourhoods).

Times are the best of ``--repeats`` runs (wall clock); the machine may be shared, so treat them as rough.

Usage:
    python benchmarks/bench_clustering.py [--noise 0.05] [--repeats 3] [--sklearn-tiles 2] [--reference-tiles 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rshn_tf.clustering import (  # noqa: E402
    choose_seeds,
    cluster_tiles,
    cosine_mean_shift,
    cosine_mean_shift_reference,
    foreground_mask,
    tile_features,
    tile_seed,
)
from rshn_tf.config import PostprocessingConfig  # noqa: E402
from tests.cases import oracle_frame_pair  # noqa: E402


def tile_offsets(size: int, tile: int = 256, step: int = 128) -> list[int]:
    """Tile start offsets along one axis: 0, step, ..., with the last one snapped to ``size - tile``."""
    if size <= tile:
        return [0]
    offsets = list(range(0, size - tile, step))
    return offsets + [size - tile]


def cut_tiles(embeddings: np.ndarray, tile: int = 256) -> list[np.ndarray]:
    """All 2-frame tiles of a frame pair (rows fastest, as in the notes §5.2)."""
    height, width = embeddings.shape[1:3]
    return [
        np.ascontiguousarray(embeddings[:, y:y + tile, x:x + tile])
        for x in tile_offsets(width, tile)
        for y in tile_offsets(height, tile)
    ]


def best_time(function, repeats: int) -> float:
    """Best wall-clock time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def problems(tiles: list[np.ndarray], config: PostprocessingConfig, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Features and mean-shift seeds of every tile, exactly as ``cluster_tiles`` chooses them."""
    result = []
    for index, tile in enumerate(tiles):
        features = tile_features(tile, foreground_mask(tile, config.background_threshold), config.coordinate_factor)
        result.append((features, choose_seeds(len(features), config.num_seeds, tile_seed(seed, index))))
    return result


def run_sklearn(features: np.ndarray, seeds: np.ndarray, bandwidth: float) -> int:
    """scikit-learn MeanShift with the same seeds on unit-length features; returns the number of clusters."""
    from sklearn.cluster import MeanShift

    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    model = MeanShift(bandwidth=float(np.sqrt(2 * bandwidth)), seeds=unit[seeds], cluster_all=True)
    return len(model.fit(unit).cluster_centers_)


def bench_pair(name: str, shape: tuple[int, int], cells: int, args: argparse.Namespace) -> None:
    config = PostprocessingConfig(min_size=args.min_size)
    embeddings, labels = oracle_frame_pair(shape, cells, noise=args.noise, seed=args.seed)
    tiles = cut_tiles(embeddings)
    work = problems(tiles, config, args.seed)
    points = np.mean([len(f) for f, _ in work])
    print(f"\n{name}: {shape[1]}x{shape[0]} (w x h), {labels.max()} cells, noise {args.noise}, {len(tiles)} tiles, "
          f"{points:.0f} foreground points per tile on average")

    cluster_tiles(tiles[:2], config, seed=args.seed)  # warm-up (imports, allocations)
    fast_1 = best_time(lambda: cluster_tiles(tiles, config, seed=args.seed, workers=1), args.repeats)
    fast_2 = best_time(lambda: cluster_tiles(tiles, config, seed=args.seed, workers=2), args.repeats)
    bandwidth, iterations, tolerance = config.bandwidth, config.max_iterations, config.convergence_tolerance
    shift = best_time(lambda: [cosine_mean_shift(f, bandwidth, s, iterations, tolerance) for f, s in work],
                      args.repeats)
    print(f"  fast cluster_tiles, 1 thread   : {fast_1:8.3f} s per frame pair")
    print(f"  fast cluster_tiles, 2 threads  : {fast_2:8.3f} s per frame pair")
    print(f"  fast mean shift alone, 1 thread: {shift:8.3f} s per frame pair ({shift / len(tiles) * 1e3:.1f} ms/tile)")

    count = min(args.reference_tiles, len(work))
    if count:
        start = time.perf_counter()
        for features, seeds in work[:count]:
            cosine_mean_shift_reference(features, bandwidth, seeds, iterations, tolerance)
        reference = (time.perf_counter() - start) / count * len(tiles)
        print(f"  reference mean shift           : {reference:8.3f} s per frame pair "
              f"(EXTRAPOLATED from {count} tiles)")

    count = min(args.sklearn_tiles, len(work))
    if count:
        fast_part = best_time(lambda: [cosine_mean_shift(f, bandwidth, s, iterations, tolerance)
                                       for f, s in work[:count]], args.repeats)
        start = time.perf_counter()
        for features, seeds in work[:count]:
            run_sklearn(features, seeds, bandwidth)
        sklearn_time = time.perf_counter() - start
        print(f"  scikit-learn MeanShift         : {sklearn_time / count * len(tiles):8.3f} s per frame pair "
              f"(EXTRAPOLATED from {count} tiles, bandwidth sqrt(2h) on unit vectors)")
        print(f"  ratio scikit-learn / fast mean shift on the same {count} tiles: {sklearn_time / fast_part:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, default=0.05, help="std of the Gaussian noise per component")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    parser.add_argument("--reference-tiles", type=int, default=4)
    parser.add_argument("--sklearn-tiles", type=int, default=2)
    parser.add_argument("--min-size", type=int, default=50, help="t_size (Fluo-N2DL-HeLa: 50)")
    parser.add_argument("--skip-512", action="store_true")
    args = parser.parse_args()
    bench_pair("Fluo-N2DL-HeLa-like pair", (700, 1100), 300, args)
    if not args.skip_512:
        bench_pair("512x512 pair", (512, 512), 100, args)


if __name__ == "__main__":
    main()
