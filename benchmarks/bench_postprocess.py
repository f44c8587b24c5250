"""Post-processing speed per frame on oracle embeddings, next to a scikit-learn MeanShift baseline timed in the
same run (issue 6 / issue 9).

Two synthetic videos of disk-shaped cells that move, touch and never overlap are turned into oracle embeddings
(one unit vector per cell by graph colouring, e_b for the background, Gaussian noise, L2-normalised; see
``tests/cases.py``) and run through :class:`rshn_tf.postprocess.PostProcessor`:

* a 512 × 512 network grid (9 tiles; Fluo-N2DH-SIM+ preset, resampled back to its 690 × 628 original), and
* a 700 × 1100 frame (40 tiles; Fluo-N2DL-HeLa preset, ≈ 500 cells per frame as in the paper's §3.1).

Printed per frame: clustering, merging, tracking (pair linking), resampling, finalising and writing separately,
and the sum. The baseline clusters the same tile features (18-d [embedding, c·y, c·x] of the foreground pixels,
made unit length so that the Euclidean bandwidth sqrt(2h) selects exactly the cosine neighbourhood of h) with
``sklearn.cluster.MeanShift`` from the same 128 seeds per tile. The machine's CPU may be shared with other jobs;
compare the ratio, not the absolute seconds.

Run from the repository root: ``python benchmarks/bench_postprocess.py [--frames 4] [--baseline-tiles 3]``
(sklearn needs seconds per tile, so by default it is timed on 3 tiles of the first pair and scaled to all tiles).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rshn_tf import clustering  # noqa: E402
from rshn_tf.config import load_config  # noqa: E402
from rshn_tf.postprocess import STAGES, PostProcessor, background_embedding  # noqa: E402
from rshn_tf.tiling import extract_tiles  # noqa: E402
from tests import cases  # noqa: E402

SCENARIOS = {
    # name: (preset, network grid, original size, cells, radius range in px)
    "512x512 (9 tiles)": ("Fluo-N2DH-SIM+", (512, 512), (690, 628), 60, (14, 22)),
    "1100x700 (40 tiles)": ("Fluo-N2DL-HeLa", (700, 1100), (700, 1100), 500, (8, 12)),
}


def synthetic_video(shape: tuple[int, int], cells: int, radius: tuple[int, int], frames: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Label video of non-overlapping disks drifting by up to 2 px per frame (a disk that would overlap another
    stays where it is)."""
    centres, radii = [], []
    for _ in range(cells * 20):
        if len(centres) == cells:
            break
        r = rng.uniform(*radius)
        c = rng.uniform([r, r], [shape[0] - r, shape[1] - r])
        if all(np.hypot(*(c - o)) > r + q for o, q in zip(centres, radii)):
            centres.append(c)
            radii.append(r)
    centres, radii = np.array(centres), np.array(radii)
    video = np.zeros((frames,) + shape, np.int32)
    for t in range(frames):
        if t:
            step = rng.uniform(-2, 2, centres.shape)
            for i in range(len(centres)):
                moved = centres[i] + step[i]
                others = np.delete(np.arange(len(centres)), i)
                if np.all(np.hypot(*(centres[others] - moved).T) > radii[others] + radii[i]):
                    centres[i] = moved
        for i, (c, r) in enumerate(zip(centres, radii), start=1):
            video[t][cases.disk_mask(shape, c[0], c[1], r)] = i
    return video


def sklearn_baseline(tiles: list[np.ndarray], config, seed: int, max_tiles: int) -> tuple[float, int]:
    """Seconds to cluster the first ``max_tiles`` tiles with sklearn MeanShift, and how many were timed."""
    from sklearn.cluster import MeanShift

    total, timed = 0.0, 0
    for index, tile in enumerate(tiles[:max_tiles]):
        mask = clustering.foreground_mask(tile, config.background_threshold)
        if not mask.any():
            continue
        features = clustering.tile_features(tile, mask, config.coordinate_factor)
        features = features / np.linalg.norm(features, axis=1, keepdims=True)
        seeds = clustering.choose_seeds(len(features), config.num_seeds, clustering.tile_seed(seed, index))
        start = time.perf_counter()
        MeanShift(bandwidth=float(np.sqrt(2.0 * config.bandwidth)), seeds=features[seeds], cluster_all=True,
                  max_iter=config.max_iterations).fit(features)
        total += time.perf_counter() - start
        timed += 1
    return total, timed


def run(name: str, frames: int, baseline_tiles: int, seed: int) -> None:
    preset, grid_shape, original, cells, radius = SCENARIOS[name]
    config = load_config(preset)
    rng = np.random.default_rng(seed)
    video = synthetic_video(grid_shape, cells, radius, frames, rng)
    colourings = cases.window_colourings(video, config.data.sequence_length, config.loss.neighbour_radius)
    fields = cases.noise_fields(grid_shape, frames - 1, 0.05, rng)
    pairs = [cases.oracle_pair(video, t, colourings[t], field) for t, field in enumerate(fields)]
    processor = PostProcessor(config, original)
    for pair in pairs:
        processor.add_pair(pair)
    baseline, timed = 0.0, 0
    if baseline_tiles:  # the first pair, with the seeds PostProcessor used for it
        tiles = list(extract_tiles(pairs[0], processor.grid, background_embedding(pairs[0].shape[-1]), axis=1))
        baseline, timed = sklearn_baseline(tiles, config.postprocessing, config.postprocessing.seed, baseline_tiles)
    with tempfile.TemporaryDirectory() as tmp:
        processor.finish(Path(tmp) / "01_RES")
    per_frame = {stage: processor.timings[stage] / frames for stage in STAGES}
    per_pair_clustering = processor.timings["clustering"] / len(pairs)
    print(f"\n{name}: {preset}, {len(processor.grid)} tiles, {int(video[0].max())} cells, {frames} frames, "
          f"original {original[0]}x{original[1]}")
    for stage in STAGES:
        print(f"  {stage:<11} {per_frame[stage]:8.3f} s/frame")
    print(f"  {'total':<11} {sum(per_frame.values()):8.3f} s/frame")
    if timed:
        tiles_per_pair = len(processor.grid)
        baseline_per_pair = baseline / timed * tiles_per_pair
        print(f"  clustering per frame pair: ours {per_pair_clustering:.3f} s, sklearn MeanShift "
              f"{baseline_per_pair:.3f} s ({timed} tiles of the first pair timed, scaled to {tiles_per_pair}) "
              f"-> ours {baseline_per_pair / per_pair_clustering:.1f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=4, help="frames per video (pairs = frames - 1)")
    parser.add_argument("--baseline-tiles", type=int, default=3,
                        help="tiles of the first pair clustered by the (slow) sklearn baseline; 0 = no baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=sorted(SCENARIOS), help="run one scenario")
    args = parser.parse_args()
    print("Post-processing seconds per frame (CPU possibly shared with other jobs; timings are noisy).")
    for name in SCENARIOS:
        if args.only in (None, name):
            run(name, args.frames, args.baseline_tiles, args.seed)


if __name__ == "__main__":
    main()
