"""Throughput of the training data pipeline: augmented samples per second (l = 8, 256 × 256 tiles).

Measures, for each worker count (default 1 and 2):

* ``stream/<type>``: :class:`data_io.stream.SampleStream` with thread or process workers, i.e. window sampling,
  SimpleITK augmentation and targets in compact form (what the workers produce);
* ``tf.data/<type>``: the full :func:`data_io.pipeline.training_dataset` (batch 1), i.e. plus the expansion to the
  dense (31, 8, 256, 256) masks the loss consumes and prefetching;

and, as a reference, ``make_sample`` in the calling thread. The first ``--warmup`` samples of every run are not
timed (worker start-up, TensorFlow tracing). Data: DIC-C2DH-HeLa 01 + 02 from the real CTC folder when present
(``--data`` or ``../shared/data/ctc``), otherwise a synthetic dataset written to a temporary folder.

Other processes on the machine share the CPU; the 1-minute load average before and after is printed so numbers can
be judged.

Usage::

    python benchmarks/bench_data.py
    python benchmarks/bench_data.py --samples 60 --workers 1 2 --types thread process
    python benchmarks/bench_data.py --synthetic --no-tf
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from data_io.sampling import TrainingData, make_sample  # noqa: E402
from data_io.stream import SampleStream  # noqa: E402
from rshn_tf.config import load_config  # noqa: E402


def find_dic(explicit: str | None) -> Path | None:
    """The DIC-C2DH-HeLa folder: ``--data`` or ``shared/data/ctc`` beside the repository (or a parent)."""
    if explicit:
        return Path(explicit)
    for parent in REPO_ROOT.parents:
        candidate = parent / "shared" / "data" / "ctc" / "DIC-C2DH-HeLa"
        if candidate.is_dir():
            return candidate
    return None


def timed(iterator, samples: int, warmup: int) -> float:
    """Samples per second over ``samples`` items after skipping ``warmup`` items."""
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(samples):
        next(iterator)
    return samples / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="DIC-C2DH-HeLa folder (default: the shared real data, else synthetic)")
    parser.add_argument("--synthetic", action="store_true", help="use a synthetic dataset even if real data exists")
    parser.add_argument("--samples", type=int, default=40, help="timed samples per run")
    parser.add_argument("--warmup", type=int, default=4, help="untimed samples at the start of every run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--types", nargs="+", default=["thread", "process"], choices=["thread", "process"])
    parser.add_argument("--no-tf", action="store_true", help="skip the tf.data runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    dataset_dir = None if args.synthetic else find_dic(args.data)
    overrides = []
    tmp = None
    if dataset_dir is None:
        from data_io.synthetic import write_synthetic_dataset

        tmp = tempfile.TemporaryDirectory()
        dataset_dir = write_synthetic_dataset(Path(tmp.name) / "synthetic", frames=40, size=(256, 256), seed=0)
        overrides = ["data.resampled_size=null", "data.border_band=0"]
        source = "synthetic 2 x 40 frames of 256x256"
    else:
        source = f"{dataset_dir} (01 + 02)"
    config = load_config("DIC-C2DH-HeLa", overrides)
    load_start = time.perf_counter()
    data = TrainingData.from_config(config, dataset_dir)
    load_time = time.perf_counter() - load_start
    total = args.samples + args.warmup

    print(f"data: {source}; loaded and preprocessed in {load_time:.1f} s")
    print(f"window l={config.data.sequence_length}, tile {config.data.tile_size[0]}x{config.data.tile_size[1]}, "
          f"max_instances={config.loss.max_instances}; {os.cpu_count()} CPUs; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    rows = []

    serial = (make_sample(data, 0, index).compact(config.loss.max_instances) for index in range(total))
    rows.append(("make_sample (calling thread)", 0, timed(serial, args.samples, args.warmup)))
    for worker_type in args.types:
        for workers in args.workers:
            with SampleStream(data, 0, stop=total, num_workers=workers, worker_type=worker_type,
                              prefetch=config.data.prefetch) as stream:
                rows.append((f"stream/{worker_type}", workers, timed(iter(stream), args.samples, args.warmup)))
            print(f"  {rows[-1][0]:<30} workers={workers}  {rows[-1][2]:6.2f} samples/s", flush=True)
    if not args.no_tf:
        from data_io.pipeline import training_dataset

        for worker_type in args.types:
            for workers in args.workers:
                dataset = training_dataset(data, seed=0, num_samples=total, batch_size=1, num_workers=workers,
                                           worker_type=worker_type)
                rows.append((f"tf.data/{worker_type}", workers, timed(iter(dataset), args.samples, args.warmup)))
                print(f"  {rows[-1][0]:<30} workers={workers}  {rows[-1][2]:6.2f} samples/s", flush=True)

    print()
    print(f"{'pipeline':<30} {'workers':>7} {'samples/s':>10}")
    for name, workers, rate in rows:
        print(f"{name:<30} {workers:>7} {rate:>10.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f} (other processes share the {os.cpu_count()} CPUs)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
