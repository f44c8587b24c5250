"""Post-processing speed per frame on oracle embeddings, with the scikit-learn MeanShift baseline timed in the same
run (issue 9 targets: 1100 × 700 under 1 s per frame on 2 cores, 512 × 512 under 0.3 s, clustering at least 6×
faster than scikit-learn's MeanShift given the same 128 seeds per tile on the same features).

Input: the oracle of ``tests.cases.oracle_video`` — disjoint disks drifting by up to 2 px per frame; every cell one
of the 15 unit directions e_1 … e_15, chosen at random among those not used by cells within the preset's r_N in its
network window; background e_b = e_0; Gaussian noise of std ``--noise`` (0.05) per component, then L2-normalised.
Two scenarios run through :class:`rshn_tf.postprocess.PostProcessor` (its own per-stage timings):

* ``1100x700``: Fluo-N2DL-HeLa preset, 700 × 1100 network grid = original size, 40 tiles, 300 cells (r 8–12 px);
* ``512x512``: Fluo-N2DH-SIM+ preset, 512 × 512 network grid (9 tiles), 60 cells (r 14–22 px), resampled back to
  a 690 × 628 original with the label-Gaussian interpolation.

Printed per frame (stage total / frames; a video of T frames has T − 1 pairs): clustering (including cutting the
tiles), merging, tracking (pair linking), resampling, finalising, writing, their sum, and the end-to-end wall time
of feeding all pairs and writing the result (the number compared with the target) with the CPU time of all threads.
Then, on the first ``--baseline-tiles`` tiles of the first pair, one thread each: our ``cluster_tile`` (everything
from embeddings to labels), scikit-learn ``MeanShift(bandwidth=sqrt(2h), seeds=<our 128 seeds>, cluster_all=True,
max_iter=300)`` on the same features made unit length (on unit vectors Euclidean distance sqrt(2h) selects exactly
the cosine neighbourhood h) and optionally the straightforward ``cosine_mean_shift_reference``; times per tile are
scaled to all tiles of a pair and labelled EXTRAPOLATED. The machine may be shared with other jobs: the load average
is printed; compare ratios and CPU times.

HDBSCAN (``--hdbscan-pairs N``, default 2; Table 3 row "RSHN, HDBSCAN"): DIC-C2DH-HeLa preset (256 × 256 network
grid = one tile per pair, m = 1000, c = 0.02), oracle pairs made from the ground truth of DIC-C2DH-HeLa 02 when
``--ctc`` points at the CTC data (the silver truth with missing cells filled in, as ``tests/test_postprocess.py``
does), else from ``oracle_video`` disks of radius 20–30 px. Per pair, one thread for the tile (the fast HDBSCAN may
use the second core, as ``cluster_tiles`` lets it on one-tile pairs): mean shift ``cluster_tile``, HDBSCAN
``cluster_tile`` (:mod:`rshn_tf.fast_hdbscan`), and the plain ``hdbscan.HDBSCAN`` call on the same features
(:func:`rshn_tf.fast_hdbscan.reference_labels`), wall and CPU seconds, the ratio, and whether the labels are identical.

Run from the repository root::

    python benchmarks/bench_postprocess.py [--frames 8] [--baseline-tiles 3] [--reference-tiles 0] [--only 512x512]
        [--hdbscan-pairs 2] [--ctc ../shared/data/ctc]
"""

from __future__ import annotations

import argparse
import os
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
    # name: (preset, network grid, original size, cells, radius range in px, target seconds per frame)
    "1100x700": ("Fluo-N2DL-HeLa", (700, 1100), (700, 1100), 300, (8.0, 12.0), 1.0),
    "512x512": ("Fluo-N2DH-SIM+", (512, 512), (690, 628), 60, (14.0, 22.0), 0.3),
}


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def tile_problem(tile: np.ndarray, config, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and mean-shift seeds of one tile, exactly as ``cluster_tile`` chooses them."""
    mask = clustering.foreground_mask(tile, config.background_threshold)
    features = clustering.tile_features(tile, mask, config.coordinate_factor)
    return features, clustering.choose_seeds(len(features), config.num_seeds, seed)


def baselines(tiles: list[np.ndarray], config, base_seed: int, count: int, reference: int) -> dict[str, float]:
    """Seconds per tile (one thread) of ours, sklearn MeanShift and (optionally) the reference on the first tiles."""
    from sklearn.cluster import MeanShift

    seeds = [clustering.tile_seed(base_seed, i) for i in range(count)]
    times = {}
    with clustering.single_threaded_blas():
        start = time.perf_counter()
        for tile, seed in zip(tiles, seeds):
            clustering.cluster_tile(tile, config, seed)
        times["ours (cluster_tile)"] = (time.perf_counter() - start) / count
        problems = [tile_problem(tile, config, seed) for tile, seed in zip(tiles, seeds)]
        elapsed = 0.0
        for features, chosen in problems:
            unit = features / np.linalg.norm(features, axis=1, keepdims=True)
            model = MeanShift(bandwidth=float(np.sqrt(2.0 * config.bandwidth)), seeds=unit[chosen], cluster_all=True,
                              max_iter=config.max_iterations, n_jobs=1)
            start = time.perf_counter()
            model.fit(unit)
            elapsed += time.perf_counter() - start
        times["sklearn MeanShift"] = elapsed / count
        if reference:
            start = time.perf_counter()
            for features, chosen in problems[:reference]:
                clustering.cosine_mean_shift_reference(features, config.bandwidth, chosen, config.max_iterations,
                                                       config.convergence_tolerance)
            times["reference mean shift"] = (time.perf_counter() - start) / reference
    return times


def run(name: str, args: argparse.Namespace) -> None:
    preset, grid_shape, original, cells, radius, target = SCENARIOS[name]
    config = load_config(preset)
    video, pairs = cases.oracle_video(grid_shape, cells, args.frames, config.data.sequence_length,
                                      config.loss.radius, noise=args.noise, radius=radius, seed=args.seed)
    processor = PostProcessor(config, original)
    print(f"\n{name}: {preset}, network grid {grid_shape[1]}x{grid_shape[0]} -> original {original[1]}x{original[0]}, "
          f"{len(processor.grid)} tiles, {int(video[0].max())} cells, noise {args.noise}, {args.frames} frames "
          f"[{load()}]")
    start, cpu = time.perf_counter(), time.process_time()
    for pair in pairs:
        processor.add_pair(pair)
    with tempfile.TemporaryDirectory() as tmp:
        processor.finish(Path(tmp) / "01_RES")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    per_frame = {stage: processor.timings[stage] / args.frames for stage in STAGES}
    for stage in STAGES:
        print(f"  {stage:<11} {per_frame[stage]:7.3f} s/frame")
    print(f"  {'sum':<11} {sum(per_frame.values()):7.3f} s/frame")
    total = wall / args.frames
    verdict = "meets" if total < target else "MISSES"
    print(f"  end to end  {total:7.3f} s/frame wall, {cpu / args.frames:.3f} s/frame CPU of all threads "
          f"({verdict} the {target:g} s target) [{load()}]")
    count = min(args.baseline_tiles, len(processor.grid))
    if count:
        tiles = list(extract_tiles(pairs[0], processor.grid, background_embedding(pairs[0].shape[-1]), axis=1))
        times = baselines(tiles[:count], config.postprocessing, config.postprocessing.seed, count,
                          min(args.reference_tiles, count))
        ours = times["ours (cluster_tile)"]
        print(f"  one thread, first {count} tiles of pair 0, EXTRAPOLATED to {len(tiles)} tiles per pair:")
        for label, seconds in times.items():
            timed = min(args.reference_tiles, count) if label.startswith("reference") else count
            print(f"    {label:<22} {seconds * 1e3:9.1f} ms/tile {seconds * len(tiles):9.2f} s/pair "
                  f"({seconds / ours:7.1f}x ours; {timed} tiles timed)")
        print(f"  clustering speed-up over sklearn MeanShift: {times['sklearn MeanShift'] / ours:.0f}x "
              f"(target >= 6x) [{load()}]")


def dic_pairs(count: int, ctc: str | None, seed: int) -> tuple[list[np.ndarray], str]:
    """``count`` oracle embedding pairs (2, 256, 256, 16) on the DIC-C2DH-HeLa network grid, and their origin."""
    config = load_config("DIC-C2DH-HeLa")
    if ctc and (Path(ctc) / "DIC-C2DH-HeLa" / "02").is_dir():
        from data_io.ctc import load_sequence
        from tests.test_postprocess import network_video, oracle_masks

        sequence = load_sequence(Path(ctc) / "DIC-C2DH-HeLa", "02", load_silver=True)
        video = network_video(oracle_masks(sequence)[0], config, sequence.shape)
        origin = "DIC-C2DH-HeLa 02 ground truth"
    else:
        video = cases.drifting_disks((256, 256), 30, count + 7, radius=(20.0, 30.0), seed=seed)
        origin = "oracle_video disks (no --ctc data)"
    rng = np.random.default_rng(seed)
    pairs = []
    for t in np.linspace(7, len(video) - 2, count).astype(int):
        window = video[t - 7:t + 2]
        colouring = cases.window_colourings(window, config.data.sequence_length, config.loss.radius)[-1]
        field = next(cases.noise_fields(video.shape[1:], 1, 0.05, rng))
        pairs.append(cases.oracle_pair(window, len(window) - 2, colouring, field))
    return pairs, origin


def run_hdbscan(args: argparse.Namespace) -> None:
    """Seconds per DIC pair: mean shift, fast HDBSCAN, and the plain hdbscan.HDBSCAN call (see the docstring)."""
    import dataclasses

    from rshn_tf import fast_hdbscan

    config = load_config("DIC-C2DH-HeLa").postprocessing
    hdb = dataclasses.replace(config, clustering="hdbscan")
    pairs, origin = dic_pairs(args.hdbscan_pairs, args.ctc, args.seed)
    print(f"\nHDBSCAN: DIC-C2DH-HeLa preset (m = {hdb.hdbscan_min_cluster_size}, c = {hdb.hdbscan_coordinate_factor}),"
          f" {len(pairs)} oracle pairs from {origin}, one 256 x 256 tile each [{load()}]")
    totals = {name: [0.0, 0.0] for name in ("mean shift", "HDBSCAN (ours)", "hdbscan.HDBSCAN")}

    def timed(name, function):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        totals[name][0] += time.perf_counter() - wall
        totals[name][1] += time.process_time() - cpu
        return result

    identical = 0
    with clustering.single_threaded_blas():
        for index, pair in enumerate(pairs):
            timed("mean shift", lambda: clustering.cluster_tile(pair, config, index))
            timed("HDBSCAN (ours)", lambda: clustering.cluster_tile(pair, hdb, index, workers=2))
            mask = clustering.foreground_mask(pair, hdb.background_threshold)
            features = clustering.tile_features(pair, mask, hdb.hdbscan_coordinate_factor)
            ours = clustering.hdbscan_clusters(features, hdb.hdbscan_min_cluster_size, workers=2)
            plain = timed("hdbscan.HDBSCAN", lambda: fast_hdbscan.reference_labels(
                features, hdb.hdbscan_min_cluster_size))
            identical += bool(np.array_equal(ours, plain))
            print(f"  pair {index}: {len(features)} foreground points, {plain.max() + 1} clusters, labels "
                  f"{'identical' if np.array_equal(ours, plain) else 'DIFFERENT'} [{load()}]")
    count = len(pairs)
    plain_wall, plain_cpu = totals["hdbscan.HDBSCAN"]
    for name, (wall, cpu) in totals.items():
        print(f"  {name:<16} {wall / count:7.2f} s/pair wall {cpu / count:7.2f} s/pair CPU "
              f"(hdbscan.HDBSCAN / this: {plain_wall / wall:5.1f}x wall, {plain_cpu / cpu:5.1f}x CPU)")
    print(f"  labels identical on {identical} of {count} pairs; HDBSCAN target: <= 2 s per pair, >= 6x [{load()}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8, help="frames per video (pairs = frames - 1)")
    parser.add_argument("--noise", type=float, default=0.05, help="std of the oracle noise per component")
    parser.add_argument("--baseline-tiles", type=int, default=3,
                        help="tiles of the first pair clustered by sklearn (slow: seconds per tile); 0 = none")
    parser.add_argument("--reference-tiles", type=int, default=0,
                        help="of those, tiles also clustered by the straightforward reference mean shift")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=sorted(SCENARIOS) + ["hdbscan"], help="run one scenario")
    parser.add_argument("--hdbscan-pairs", type=int, default=2, help="DIC pairs of the HDBSCAN comparison; 0 = none")
    parser.add_argument("--ctc", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ctc"),
                        help="CTC data folder for the DIC-C2DH-HeLa oracle of the HDBSCAN comparison")
    args = parser.parse_args()
    print("Post-processing seconds per frame on oracle embeddings (2 cores; the CPU may be shared with other jobs).")
    for name in SCENARIOS:
        if args.only in (None, name):
            run(name, args)
    if args.hdbscan_pairs and args.only in (None, "hdbscan"):
        run_hdbscan(args)


if __name__ == "__main__":
    main()
