"""Time and memory of the networks: forward and forward+backward per frame, tracing, peak memory.

Every measurement runs in its own subprocess so that its peak resident memory (``ru_maxrss``) is its own.
Configurations:

* ``paper``: the defaults of ``ModelConfig`` (2 hourglasses, 7 levels, 64 filters, 16-d embeddings) on
  256 × 256 tiles, sequences of ``--length`` frames (paper: l = 8).
* ``small``: the CPU configuration of ``tests/test_network.py`` (3 levels, 8 filters, 4-d embeddings) on 32 × 32.

Modes per configuration:

* ``forward``: ``tf.function(model)`` on (1, l, H, W, 1).
* ``train``: a ``tf.function`` step with ``tf.GradientTape``: loss on every hourglass output plus the weight decay,
  gradients of all trainable variables (what a training step does, without the optimizer update).
* ``stream`` (RSHN only): ``tf.function(model.step)`` on one (1, H, W, 1) frame (inference, §2.5).

For each: trace time (``get_concrete_function``), first call, and the mean of ``--repeats`` further calls; the
per-frame time is also given as a ratio to one plain convolution measured in the same process (the README's
"ratios against a baseline measured in the same run"), which is comparable across machines.

Usage::

    python benchmarks/bench_network.py                      # paper + small, RSHN
    python benchmarks/bench_network.py --configs small --architectures rshn shn volumetric
    python benchmarks/bench_network.py --unroll             # Python-unrolled time loop, for comparison
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "paper": dict(model={}, size=256),
    "small": dict(model=dict(levels=3, filters=8, embedding_size=4), size=32),
}


def time_baseline_conv(filters: int, kernel_size: int, size: int, repeats: int = 10) -> float:
    """Seconds of one forward k×k convolution, filters → filters channels, on a (1, size, size, filters) input.

    Measured in the same process right after the model, it turns the per-frame times into machine-independent
    ratios ("how many such convolutions a frame costs").
    """
    import keras
    import numpy as np
    import tensorflow as tf

    conv = keras.layers.Conv2D(filters, kernel_size, padding="same")
    x = tf.constant(np.random.default_rng(1).normal(size=(1, size, size, filters)).astype("float32"))
    function = tf.function(conv)
    function(x).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        function(x).numpy()
    return (time.perf_counter() - start) / repeats


def run_worker(args: argparse.Namespace) -> dict:
    """Build one model, measure one mode, return the numbers (runs inside the subprocess)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(REPO_ROOT))
    import numpy as np
    import tensorflow as tf

    from rshn_tf.config import ModelConfig
    from rshn_tf.models import build_model

    spec = CONFIGS[args.config]
    config = ModelConfig(architecture=args.architecture, **spec["model"])
    start = time.perf_counter()
    model = build_model(config, unroll=args.unroll)
    build_seconds = time.perf_counter() - start
    size, length = spec["size"], args.length
    rng = np.random.default_rng(0)

    if args.mode == "stream":
        frames = tf.constant(rng.normal(size=(1, size, size, 1)).astype("float32"))
        states = model.zero_states(1, size, size)
        function = tf.function(model.step)
        call_args = (frames, states)
        frames_per_call = 1
    else:
        shape = (1, size, size, 1) if args.architecture == "shn" else (1, length, size, size, 1)
        frames = tf.constant(rng.normal(size=shape).astype("float32"))
        frames_per_call = 1 if args.architecture == "shn" else length
        call_args = (frames,)
        if args.mode == "forward":
            function = tf.function(model)
        else:

            def train_step(x):
                with tf.GradientTape() as tape:
                    outputs = model(x)
                    loss = tf.add_n([tf.reduce_mean(tf.square(o)) for o in outputs]) + tf.add_n(model.losses)
                return loss, tape.gradient(loss, model.trainable_variables)

            function = tf.function(train_step)

    start = time.perf_counter()
    concrete = function.get_concrete_function(*call_args)
    trace_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = function(*call_args)
    tf.nest.map_structure(lambda t: t.numpy(), result)
    first_seconds = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = function(*call_args)
        tf.nest.map_structure(lambda t: t.numpy(), result)
        times.append(time.perf_counter() - start)
    baseline_seconds = time_baseline_conv(config.filters, config.kernel_size, size)
    return dict(
        config=args.config,
        architecture=args.architecture,
        mode=args.mode,
        unroll=args.unroll,
        size=size,
        length=frames_per_call,
        parameters=model.count_params(),
        graph_ops=len(concrete.graph.get_operations()),
        build_s=build_seconds,
        trace_s=trace_seconds,
        first_call_s=first_seconds,
        call_s=float(np.mean(times)),
        per_frame_s=float(np.mean(times)) / frames_per_call,
        baseline_conv_s=baseline_seconds,
        per_frame_in_convs=float(np.mean(times)) / frames_per_call / baseline_seconds,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        threads=os.cpu_count(),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["paper", "small"], choices=sorted(CONFIGS))
    parser.add_argument("--architectures", nargs="+", default=["rshn"], choices=["rshn", "shn", "volumetric"])
    parser.add_argument("--modes", nargs="+", default=["forward", "train", "stream"],
                        choices=["forward", "train", "stream"])
    parser.add_argument("--length", type=int, default=8, help="frames per sequence (paper: l = 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
    parser.add_argument("--unroll", action="store_true", help="RSHN: unroll the time loop in Python")
    parser.add_argument("--json", type=Path, help="also write all results to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--architecture", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(args)))
        return

    results = []
    header = (f"{'config':6} {'arch':10} {'mode':7} {'HxW':>7} {'T':>2} {'params':>9} {'trace s':>8} "
              f"{'1st call s':>10} {'call s':>8} {'s/frame':>8} {'convs/frame':>11} {'peak MB':>8}")
    print(header)
    print("-" * len(header))
    for config in args.configs:
        for architecture in args.architectures:
            for mode in args.modes:
                if mode == "stream" and architecture != "rshn":
                    continue
                command = [sys.executable, __file__, "--worker", "--config", config, "--architecture", architecture,
                           "--mode", mode, "--length", str(args.length), "--repeats", str(args.repeats)]
                if args.unroll:
                    command.append("--unroll")
                completed = subprocess.run(command, capture_output=True, text=True)
                if completed.returncode != 0:
                    print(f"{config} {architecture} {mode}: failed\n{completed.stderr[-2000:]}", file=sys.stderr)
                    continue
                r = json.loads(completed.stdout.strip().splitlines()[-1])
                results.append(r)
                print(f"{r['config']:6} {r['architecture']:10} {r['mode']:7} {r['size']:>3}x{r['size']:<3} "
                      f"{r['length']:>2} {r['parameters']:>9,} {r['trace_s']:>8.2f} {r['first_call_s']:>10.2f} "
                      f"{r['call_s']:>8.3f} {r['per_frame_s']:>8.3f} {r['per_frame_in_convs']:>11.1f} "
                      f"{r['peak_rss_mb']:>8.0f}", flush=True)
    print(f"\nCPU: {os.cpu_count()} logical cores (timings are noisy when other processes share them); "
          "'trace s' = tf.function tracing only; '1st call s' includes graph optimisation; 'call s' = mean of "
          "the following calls; convs/frame = s/frame divided by the time of one forward kernel_size² "
          "filters→filters convolution at tile size, measured in the same process (a machine-independent ratio); "
          "peak MB = peak resident memory of the measuring process.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
