"""Training speed: seconds per iteration, samples/s of the input pipeline, and whether training is input-bound.

Configurations:

* ``paper``: the defaults of ``rshn_tf/config.py`` (RSHN with 2 × 7 levels, 64 filters, 16-d embeddings; 256 × 256
  tiles, l = 8 frames, K = 31 instances; batch 1).
* ``small``: a CPU configuration (4 levels, 16 filters, 8-d embeddings; 64 × 64 tiles on a 128 × 128 network grid,
  l = 4, K = 8, r_N = 25).

Measurements (each in its own subprocess, on a synthetic video written by ``data_io.synthetic`` unless ``--data``
names a CTC dataset):

* ``step``: the ``tf.function`` train step of :func:`rshn_tf.training.make_train_step` (forward, loss on both
  hourglasses, gradients, Adam update) on one fixed batch: trace + first call, then the mean of ``--iterations``.
* ``pipeline``: samples/s of :func:`data_io.pipeline.training_dataset` (``data.num_workers`` workers), after the
  first sample, with nothing else running.
* ``train`` (``--combined``): :func:`rshn_tf.training.train` with the real pipeline for ``--iterations``; reports
  seconds per iteration and the fraction of it spent waiting for input (``input_seconds`` of ``logs/losses.csv``).
* ``--converge N``: trains the small configuration for N iterations (learning rate ``--converge-lr``) and prints the
  mean loss of the first and last 20 iterations: the "loss falls" check on a synthetic video.

Training is called input-bound when the pipeline alone delivers fewer samples per second than the train step alone
consumes (batch / step seconds); with ``--combined`` the measured input-wait fraction says it directly. Both compete
for the same CPU cores when training runs on the CPU, so on a GPU machine the step is faster and the pipeline matters
more.

Usage::

    python benchmarks/bench_train.py                          # paper + small: step and pipeline
    python benchmarks/bench_train.py --configs small --combined --iterations 30
    python benchmarks/bench_train.py --converge 300           # small config, loss curve on a synthetic video
    python benchmarks/bench_train.py --deterministic          # cost of tf.config.experimental.enable_op_determinism
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a source checkout without installing

CONFIGS = {
    "paper": {},
    "small": {
        "data": {"resampled_size": [128, 128], "tile_size": [64, 64], "sequence_length": 4},
        "model": {"levels": 4, "filters": 16, "embedding_size": 8},
        "loss": {"max_instances": 8, "neighbour_radius": 25},
        "inference": {"tile_overlap": 32},
    },
}
#: Iterations timed per configuration when --iterations is not given.
DEFAULT_ITERATIONS = {"paper": 3, "small": 20}


def make_config(name: str, data_dir: str, overrides: list[str], deterministic: bool = False):
    """The configuration ``name`` on ``data_dir`` with ``--set`` overrides."""
    from rshn_tf.config import apply_dict, apply_overrides, load_config, validate

    config = load_config(None)
    apply_dict(config, CONFIGS[name], f"bench config {name}")
    config.data.dataset_dir = data_dir
    config.training.deterministic = deterministic
    apply_overrides(config, overrides)
    validate(config)
    return config


# --------------------------------------------------------------------------------------------------------------
# Workers (run in subprocesses)


def worker_step(config, iterations: int) -> dict:
    import tensorflow as tf

    from data_io.pipeline import training_dataset
    from data_io.sampling import TrainingData
    from rshn_tf.training import build_model_and_optimizer, build_strategy, make_train_step

    if config.training.deterministic:
        tf.config.experimental.enable_op_determinism()
    data = TrainingData.from_config(config)
    batch = next(iter(training_dataset(data, start=0, num_samples=config.training.batch_size)))
    strategy = build_strategy(config.training)
    model, optimizer = build_model_and_optimizer(config, strategy)
    step = make_train_step(model, optimizer, strategy, config)
    tic = time.perf_counter()
    float(step(batch)["total"])
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    for _ in range(iterations):
        total = float(step(batch)["total"])
    seconds = (time.perf_counter() - tic) / iterations
    return {"first_call_seconds": first, "seconds_per_iteration": seconds, "loss": total,
            "parameters": int(model.count_params())}


def worker_pipeline(config, samples: int) -> dict:
    from data_io.pipeline import training_dataset
    from data_io.sampling import TrainingData

    tic = time.perf_counter()
    data = TrainingData.from_config(config)
    load = time.perf_counter() - tic
    iterator = iter(training_dataset(data, start=0, batch_size=1))
    tic = time.perf_counter()
    next(iterator)
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    for _ in range(samples):
        next(iterator)
    elapsed = time.perf_counter() - tic
    return {"load_seconds": load, "first_sample_seconds": first, "samples_per_second": samples / elapsed,
            "workers": config.data.num_workers}


def worker_train(config, iterations: int, skip: int) -> dict:
    import numpy as np

    from rshn_tf.model_folder import ModelFolder
    from rshn_tf.training import train
    from rshn_tf.training_logs import read_loss_log

    config.training.iterations = iterations
    config.training.checkpoint_every = iterations
    config.training.log_every = max(1, min(50, iterations))
    config.training.image_every = 0
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        train(config, Path(tmp) / "model", progress=False)
        wall = time.perf_counter() - tic
        log = read_loss_log(ModelFolder(Path(tmp) / "model").losses_path)
    seconds, waiting, total = log["seconds"][skip:], log["input_seconds"][skip:], log["total"]
    window = min(20, max(1, iterations // 5))
    return {
        "wall_seconds": wall,
        "seconds_per_iteration": float(np.mean(seconds)),
        "input_wait_fraction": float(np.sum(waiting) / np.sum(seconds)),
        "first_loss": float(np.mean(total[:window])),
        "last_loss": float(np.mean(total[-window:])),
        "smoothing_window": window,
        "iterations": iterations,
    }


def run_worker(args: argparse.Namespace) -> None:
    config = make_config(args.config, args.data, args.set, args.deterministic)
    if args.worker == "step":
        result = worker_step(config, args.iterations)
    elif args.worker == "pipeline":
        result = worker_pipeline(config, args.iterations)
    else:
        result = worker_train(config, args.iterations, args.skip)
    print("RESULT " + json.dumps(result))


# --------------------------------------------------------------------------------------------------------------
# Driver


def spawn(worker: str, config: str, data: str, iterations: int, overrides: list[str], deterministic: bool,
          skip: int = 1) -> dict:
    command = [sys.executable, __file__, "--worker", worker, "--config", config, "--data", data,
               "--iterations", str(iterations), "--skip", str(skip)]
    command += [item for override in overrides for item in ("--set", override)]
    if deterministic:
        command.append("--deterministic")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{worker} {config} failed:\n{result.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def synthetic_dataset(folder: Path) -> str:
    from data_io.synthetic import write_synthetic_dataset

    return str(write_synthetic_dataset(folder / "synthetic", seed=0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["paper", "small"], choices=sorted(CONFIGS))
    parser.add_argument("--data", help="CTC dataset folder (default: a synthetic video written to a temp folder)")
    parser.add_argument("--iterations", type=int, help="timed iterations / samples (default: paper 3, small 20)")
    parser.add_argument("--combined", action="store_true", help="also run train() with the real pipeline")
    parser.add_argument("--converge", type=int, metavar="N", help="train the small config N iterations; print loss")
    parser.add_argument("--converge-lr", type=float, default=1e-3, help="learning rate of --converge (no drop)")
    parser.add_argument("--deterministic", action="store_true", help="enable op determinism in the workers")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    parser.add_argument("--worker", choices=["step", "pipeline", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--skip", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return

    print(f"bench_train: {os.cpu_count()} CPU cores; timings are noisy when other processes share them")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or synthetic_dataset(Path(tmp))
        described = data if args.data else "synthetic video (data_io.synthetic, 2 sequences of 40 frames, 256x256)"
        print(f"data: {described}")
        if args.converge:
            overrides = [f"training.learning_rate={args.converge_lr}",
                         f"training.learning_rate_final={args.converge_lr}"] + args.set
            report = spawn("train", "small", data, args.converge, overrides, args.deterministic)
            print(f"converge small: {report['iterations']} iterations, lr {args.converge_lr}: mean loss of the first "
                  f"{report['smoothing_window']} {report['first_loss']:.4f} -> last {report['smoothing_window']} "
                  f"{report['last_loss']:.4f} ({report['seconds_per_iteration']:.3f} s/it, input wait "
                  f"{100 * report['input_wait_fraction']:.0f} %)")
            return
        for name in args.configs:
            iterations = args.iterations or DEFAULT_ITERATIONS[name]
            step = spawn("step", name, data, iterations, args.set, args.deterministic)
            pipeline = spawn("pipeline", name, data, max(iterations, 5), args.set, args.deterministic)
            consumed = 1.0 / step["seconds_per_iteration"]  # batch 1
            bound = pipeline["samples_per_second"] < consumed
            print(f"{name}: {step['parameters']:,} parameters; train step {step['seconds_per_iteration']:.3f} s/it "
                  f"(mean of {iterations}; trace + first call {step['first_call_seconds']:.1f} s)"
                  f"{' [deterministic ops]' if args.deterministic else ''}")
            print(f"{name}: input pipeline {pipeline['samples_per_second']:.2f} samples/s with "
                  f"{pipeline['workers']} workers (first sample {pipeline['first_sample_seconds']:.1f} s, loading "
                  f"{pipeline['load_seconds']:.1f} s); the step consumes {consumed:.2f} samples/s")
            print(f"{name}: training is {'INPUT-BOUND' if bound else 'not input-bound'} "
                  f"(pipeline {'slower' if bound else 'faster'} than the step, measured separately)")
            if args.combined:
                combined = spawn("train", name, data, iterations + 1, args.set, args.deterministic)
                print(f"{name}: train() with the pipeline: {combined['seconds_per_iteration']:.3f} s/it, "
                      f"{100 * combined['input_wait_fraction']:.0f} % of it waiting for input")


if __name__ == "__main__":
    main()
