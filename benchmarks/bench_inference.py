"""End-to-end ``rshn predict`` speed and memory (issue 9 item 3), next to a naive baseline timed in the same run.

Sections (each measurement runs in its own subprocess, so its peak resident memory ``ru_maxrss`` is its own and
TensorFlow's thread settings apply from the start):

* ``speed``: ``rshn predict`` (:func:`rshn_tf.predict_folder.predict`) on DIC-C2DH-HeLa 02 with the paper network
  (``DIC-C2DH-HeLa`` preset: 2 hourglasses, 7 levels, 64 filters; 512 × 512 frames resampled to 256 × 256 = one
  tile). Random weights unless ``--model`` names a trained model folder: the network costs the same, but the
  post-processing of random embeddings is not representative of a trained model (``--model`` for that).
  Printed per frame: reading + preprocessing, network, post-processing, the whole process (imports, model load and
  writing included), peak memory.
* ``baseline``: the naive loop of the authors' code (docs/fidelity.md §1.5, §5.3) on the same data: for every window and
  every tile separately, states reset, l frames through ``tf.function(model.step)`` with batch 1; timed over
  ``--baseline-windows`` windows; its network seconds per window is compared with the network seconds per window of
  ``speed`` (the ratio is machine-independent).
* ``oracle``: the post-processing alone on oracle embeddings of DIC-C2DH-HeLa 02 (or ``--oracle-dataset
  Fluo-N2DL-HeLa``: sequence 01) built from the silver truth (one unit vector per cell, as in
  ``tests/test_postprocess.py``): the post-processing time and memory of a well-trained model, to add to the
  network seconds of ``speed`` when that ran with random weights.
* ``memory``: ``rshn predict`` on Fluo-N2DL-HeLa 01 (700 × 1100, 40 tiles) with the paper network and random
  weights whose output bias makes every pixel background (so this is the memory of reading, the network, the
  tracker's label stack and writing; the clustering of ~500 real cells per frame is measured by the ``oracle``
  section with ``--oracle-dataset Fluo-N2DL-HeLa``), by default at full length with the preset's settings (the
  paper's tiles); ``--memory-set`` adds ``--set`` overrides and ``--memory-frames`` limits the frames (both are
  printed). Besides the peak, it prints the highest resident memory in each tenth of the run, which shows whether
  memory grows with the video.
* ``length`` (issue 16): peak resident memory against video length. The same small RSHN (3 levels, 8 filters,
  random weights, output bias along e_b so that every pixel is background, full-frame mode, windows of 4) runs
  ``rshn predict`` on the first N and on 4N frames (``--length-frames N``, default 100) of one synthetic 512 × 512
  video, and ``rshn postprocess`` runs on oracle embeddings of N and 4N frames of drifting cells (12 disks on a
  128 × 128 network grid, results at 512 × 512: clustering, tracking, lineage and writing with real instances).
  Prints both peaks and their difference (target: at most 50 MB).
* ``micro``: one RSHN step of the paper network on 256 × 256 tiles: seconds per tile-frame at batch 1, 8 and 40 and
  for several (intra, inter) thread settings; this is what decides tile batching, batching the l windows of a
  frame, and the default thread settings.

Other processes share the 2 cores of the development machine; the load average is printed with every result.

Usage (from the repository root)::

    python benchmarks/bench_inference.py                                  # all sections
    python benchmarks/bench_inference.py --sections speed baseline --frames 30
    python benchmarks/bench_inference.py --sections memory --memory-frames 12 --memory-set inference.full_frame=true
    python benchmarks/bench_inference.py --sections length --length-frames 100
    python benchmarks/bench_inference.py --sections speed --frames 16 --speed-ab ../main   # A/B: this and another checkout

``--speed-ab DIR`` runs the ``speed`` measurement alternately with this checkout's code and with the checkout ``DIR``
(``--speed-repeats`` times each, in one run, so that both see the same machine load) and prints both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def peak_mb() -> float:
    """Peak resident memory of this process in MB: ``VmHWM`` of ``/proc/self/status`` where available.

    Not ``ru_maxrss``: Linux folds the high-water mark of the memory a process had before ``execve`` into it, so a
    worker started by a driver that had loaded TensorFlow would report at least the driver's memory.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def default_data() -> Path | None:
    from tests.conftest import ctc_data_root

    return ctc_data_root()


def make_model(preset: str, folder: Path, background: bool = False) -> None:
    """A model folder with the preset's (paper) network and random weights (seed 0).

    ``background``: the last hourglass's output bias points along e_b (100 on channel 0), so that every pixel is
    background and the post-processing has nothing to cluster. Random embeddings otherwise make every pixel
    foreground, which no trained model does and which makes the clustering far slower and bigger than it is in use.
    """
    import keras
    import numpy as np

    from rshn_tf.config import load_config
    from rshn_tf.model_folder import create_model_folder
    from rshn_tf.models import build_model

    config = load_config(preset)
    keras.utils.set_random_seed(0)
    model = build_model(config.model)
    if background:
        bias = model.hourglasses[-1].output_conv.bias
        value = np.zeros(bias.shape, np.float32)
        value[0] = 100.0
        bias.assign(value)
    create_model_folder(config, model, folder)


def make_model_with(repo: Path, preset: str, folder: Path) -> None:
    """:func:`make_model` with the code of another checkout (same seed, so the same random weights)."""
    code = (f"import sys, pathlib; sys.path.insert(0, {str(Path(repo) / 'benchmarks')!r}); import bench_inference; "
            f"bench_inference.make_model({preset!r}, pathlib.Path({str(folder)!r}))")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def make_small_model(folder: Path) -> None:
    """The ``length`` section's model: a small RSHN (3 levels, 8 filters, 8-d embeddings, windows of 4) with random
    weights (seed 0) whose output bias makes every pixel background (see :func:`make_model`)."""
    import keras
    import numpy as np

    from rshn_tf.config import Config, validate
    from rshn_tf.model_folder import create_model_folder
    from rshn_tf.models import build_model

    config = Config()
    config.model.levels, config.model.filters, config.model.embedding_size = 3, 8, 8
    config.data.tile_size = [128, 128]
    config.data.sequence_length = 4
    config.data.border_band = 0
    config.inference.tile_overlap = 64
    config.postprocessing.min_size = 10
    validate(config)
    keras.utils.set_random_seed(0)
    model = build_model(config.model)
    bias = model.hourglasses[-1].output_conv.bias
    value = np.zeros(bias.shape, np.float32)
    value[0] = 100.0
    bias.assign(value)
    create_model_folder(config, model, folder)


#: ``length`` section, ``rshn postprocess``: oracle video size on the network grid, cells, original frame size.
LENGTH_GRID, LENGTH_CELLS, LENGTH_ORIGINAL = (128, 128), 12, (512, 512)


def write_length_oracle(folder: Path, frames: int) -> Path:
    """Oracle embeddings (float16) of ``frames`` frames of drifting cells and the config that post-processes them;
    returns the config path."""
    import numpy as np

    from rshn_tf.config import Config, save_config, validate
    from tests import cases

    video = cases.drifting_disks(LENGTH_GRID, LENGTH_CELLS, frames, seed=0)
    cases.write_oracle_embeddings(video, folder, window=8, distance=10, noise=0.05, seed=0, dtype=np.float16)
    config = Config()
    config.data.resampled_size = list(LENGTH_GRID)
    config.data.tile_size = list(LENGTH_GRID)
    config.data.border_band = 0
    config.inference.tile_overlap = 64
    config.postprocessing.min_size = 10
    validate(config)
    return save_config(config, folder.parent / f"{folder.name}.yaml")


def frames_folder(sequence: Path, frames: int, tmp: Path) -> Path:
    """The sequence itself, or a folder of links to its first ``frames`` frames."""
    if frames <= 0:
        return sequence
    folder = tmp / f"{sequence.name}_first{frames}"
    folder.mkdir()
    for path in sorted(sequence.glob("t*.tif"))[:frames]:
        (folder / path.name).symlink_to(path)
    return folder


# --------------------------------------------------------------------------------------------------------------
# Workers (run in subprocesses)


class RssSampler:
    """Samples the resident memory of this process every ``interval`` seconds in a daemon thread.

    ``log``: also append ``seconds resident_MB`` lines to this file as they are taken (to follow a long run).
    """

    def __init__(self, interval: float = 0.5, log: str | None = None):
        import threading

        self.samples: list[float] = []
        self._stop = threading.Event()
        self._interval = interval
        self._log = log
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        began = time.perf_counter()
        while not self._stop.wait(self._interval):
            with open("/proc/self/statm") as statm:
                self.samples.append(int(statm.read().split()[1]) * page / 2**20)
            if self._log:
                with open(self._log, "a") as log:
                    log.write(f"{time.perf_counter() - began:.1f} {self.samples[-1]:.0f}\n")

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def tenths(self) -> list[float]:
        """The highest resident memory (MB) in each tenth of the sampled time (empty without samples)."""
        n = len(self.samples)
        if n < 10:
            return []
        return [max(self.samples[i * n // 10:(i + 1) * n // 10]) for i in range(10)]


def worker_predict(args: argparse.Namespace) -> dict:
    from rshn_tf.predict_folder import predict

    with RssSampler(log=args.rss_log) as sampler:
        result = predict(args.model, args.input, args.output, overrides=args.set, progress=bool(args.rss_log))
    wall = time.perf_counter() - START
    t = result.timings
    frames = result.num_frames
    return dict(frames=frames, frame_steps=result.frame_steps,
                preprocessing_s=(t.get("reading", 0) + t.get("preprocessing", 0)) / frames,
                network_s=t.get("network", 0) / frames, network_per_step_s=t.get("network", 0) / result.frame_steps,
                network_total_s=t.get("network", 0),
                postprocessing_s=result.postprocessing_seconds / frames,
                stages={k: v / frames for k, v in t.items()},
                predict_s=t["total"] / frames, process_s=wall / frames, peak_mb=peak_mb(), load=load(),
                rss_tenths_mb=sampler.tenths())


def worker_postprocess(args: argparse.Namespace) -> dict:
    """``rshn postprocess`` of an embeddings folder (``--input``) with its config (``--config``)."""
    from rshn_tf.config import load_config
    from rshn_tf.postprocess import STAGES, run_postprocess

    config = load_config(args.config)
    with RssSampler() as sampler:
        began = time.perf_counter()
        processor = run_postprocess(args.input, args.output, config, LENGTH_ORIGINAL)
        seconds = time.perf_counter() - began
    frames = processor.num_frames
    return dict(frames=frames, postprocessing_s=seconds / frames,
                stages={k: processor.timings[k] / frames for k in STAGES}, peak_mb=peak_mb(), load=load(),
                rss_tenths_mb=sampler.tenths())


def worker_baseline(args: argparse.Namespace) -> dict:
    """The naive loop: per window, per tile, states reset, l frames with batch 1."""
    import numpy as np
    import tensorflow as tf

    from data_io.ctc import list_frames
    from rshn_tf.api import configure_threads
    from rshn_tf.geometry import GridGeometry
    from rshn_tf.inference import FrameSource, TileLayout
    from rshn_tf.model_folder import load_trained_model

    model, config = load_trained_model(args.model)
    configure_threads(config.inference.threads)
    files = list_frames(args.input)
    length = config.data.sequence_length
    source = FrameSource(files.paths[:length + args.windows - 1], config.data, files.shape)
    layout = TileLayout(GridGeometry.of(files.shape, config))
    tiles = [layout.inputs(source[t]) for t in range(len(source))]
    step = tf.function(model.step)
    warm = tf.constant(tiles[0][:1])
    step(warm, model.zero_states(1, *layout.input_shape))[0][-1].numpy()
    seconds = []
    for start in range(args.windows):
        began = time.perf_counter()
        for tile in range(layout.num_inputs):
            states = model.zero_states(1, *layout.input_shape)
            for t in range(start, start + length):
                outputs, states = step(tf.constant(tiles[t][tile:tile + 1]), states)
                model.normalized_embeddings(outputs).numpy()
        seconds.append(time.perf_counter() - began)
    return dict(windows=args.windows, tiles=layout.num_inputs, window_s=float(np.mean(seconds)),
                tile_frame_s=float(np.mean(seconds)) / (layout.num_inputs * length), load=load())


#: Sequence whose silver truth gives the oracle embeddings, per dataset.
ORACLE_SEQUENCES = {"DIC-C2DH-HeLa": "02", "Fluo-N2DL-HeLa": "01"}


def worker_oracle(args: argparse.Namespace) -> dict:
    """Post-processing on oracle embeddings (the silver truth with TRA ids, one unit vector per cell by graph
    colouring per window, e_b for the background, noise 0.05): what it costs for a trained model."""
    import numpy as np

    from data_io.ctc import load_sequence
    from data_io.preprocess import network_shape
    from data_io.resample import resample_2d
    from rshn_tf.config import load_config
    from rshn_tf.postprocess import STAGES, PostProcessor
    from tests import cases

    dataset = Path(args.input)
    config = load_config(dataset.name)
    sequence = load_sequence(dataset, ORACLE_SEQUENCES[dataset.name], load_silver=True)
    frames = sequence.num_frames if args.windows <= 0 else min(args.windows, sequence.num_frames)
    shape = network_shape(sequence.shape, config.data)
    video = np.stack([resample_2d(sequence.silver_seg[t].astype(np.int32), shape, "nearest")
                      for t in range(frames)])
    colourings = cases.window_colourings(video, config.data.sequence_length, config.loss.radius)
    noise = cases.noise_fields(shape, len(colourings), 0.05, np.random.default_rng(0))
    processor = PostProcessor(config, sequence.shape)
    for t, (colouring, field) in enumerate(zip(colourings, noise)):
        processor.add_pair(cases.oracle_pair(video, t, colouring, field))
    with tempfile.TemporaryDirectory() as tmp:
        processor.finish(Path(tmp) / "RES")
    cells = float(np.mean([np.unique(f).size - 1 for f in video]))
    return dict(frames=frames, cells=cells, stages={k: processor.timings[k] / frames for k in STAGES},
                postprocessing_s=sum(processor.timings[k] for k in STAGES) / frames, peak_mb=peak_mb(), load=load())


def worker_micro(args: argparse.Namespace) -> dict:
    """One paper-network RSHN step on (batch, 256, 256, 1) with the given thread settings."""
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    from rshn_tf.config import ModelConfig
    from rshn_tf.models import build_model

    model = build_model(ModelConfig())
    step = tf.function(model.step)
    x = tf.constant(np.random.default_rng(0).normal(size=(args.batch, 256, 256, 1)).astype("float32"))
    states = model.zero_states(args.batch, 256, 256)
    outputs, states = step(x, states)
    outputs[-1].numpy()
    began = time.perf_counter()
    for _ in range(args.repeats):
        outputs, states = step(x, states)
        outputs[-1].numpy()
    seconds = (time.perf_counter() - began) / args.repeats
    return dict(batch=args.batch, intra=args.intra, inter=args.inter, step_s=seconds,
                tile_frame_s=seconds / args.batch, peak_mb=peak_mb(), load=load())


# --------------------------------------------------------------------------------------------------------------
# Driver


def run(worker: str, *extra: str, stderr_file: str | None = None, repo: Path | None = None) -> dict:
    """Run a worker subprocess and return its JSON result; its stderr (e.g. a progress bar) goes to
    ``stderr_file`` while it runs, if given. ``repo``: run that checkout's copy of this script (its code)."""
    script = Path(__file__) if repo is None else Path(repo) / "benchmarks" / Path(__file__).name
    command = [sys.executable, str(script), "--worker", worker, *extra]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if stderr_file is None:
        completed = subprocess.run(command, capture_output=True, text=True, env=env)
        errors = completed.stderr
    else:
        with open(stderr_file, "w") as stream:
            completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=stream, text=True, env=env)
        errors = Path(stderr_file).read_text()
    if completed.returncode != 0:
        raise SystemExit(f"{worker} failed:\n{errors[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def print_predict(title: str, r: dict) -> None:
    print(f"{title}: {r['frames']} frames, {r['frame_steps']} frame steps ({r['load']})")
    print(f"  per frame: preprocessing {r['preprocessing_s']:.3f} s, network {r['network_s']:.3f} s "
          f"({r['network_per_step_s']:.3f} s per frame step), post-processing {r['postprocessing_s']:.3f} s "
          f"[{', '.join(f'{k} {v:.3f}' for k, v in r['stages'].items() if k not in ('reading', 'preprocessing', 'network', 'total'))}]")
    print(f"  predict() {r['predict_s']:.3f} s/frame; whole process (imports, model load) {r['process_s']:.3f} "
          f"s/frame; peak memory {r['peak_mb']:.0f} MB", flush=True)


def length_section(args: argparse.Namespace, tmp: Path) -> dict:
    """Peak resident memory of ``rshn predict`` and ``rshn postprocess`` for N and 4N frames (issue 16)."""
    from data_io.synthetic import write_synthetic_dataset

    short, long = args.length_frames, 4 * args.length_frames
    model = tmp / "small_model"
    make_small_model(model)
    dataset = write_synthetic_dataset(tmp / "length" / "Synthetic", frames=long, size=(512, 512), seed=0,
                                      sequences=("01",))
    results: dict = {}
    print(f"length: peak resident memory against video length ({short} and {long} frames of 512 x 512)", flush=True)
    for frames in (short, long):
        seq = frames_folder(dataset / "01", frames, tmp)
        results[f"predict_{frames}"] = run("predict", "--model", str(model), "--input", str(seq), "--output",
                                           str(tmp / f"length_RES_{frames}"), "--set", "inference.full_frame=true")
        embeddings = tmp / f"length_EMB_{frames}"
        config = write_length_oracle(embeddings, frames)
        results[f"postprocess_{frames}"] = run("postprocess", "--input", str(embeddings), "--config", str(config),
                                               "--output", str(tmp / f"length_PP_{frames}"))
        shutil.rmtree(embeddings)
    for kind, what in (("predict", "small RSHN, random weights, all background, full frame"),
                       ("postprocess", f"oracle embeddings of {LENGTH_CELLS} drifting cells, {LENGTH_GRID[0]} x "
                                       f"{LENGTH_GRID[1]} grid")):
        a, b = results[f"{kind}_{short}"], results[f"{kind}_{long}"]
        seconds = "predict_s" if kind == "predict" else "postprocessing_s"
        difference = b["peak_mb"] - a["peak_mb"]
        results[f"{kind}_difference_mb"] = difference
        print(f"  rshn {kind} ({what}): {short} frames {a['peak_mb']:.0f} MB, {long} frames {b['peak_mb']:.0f} MB: "
              f"difference {difference:+.0f} MB (target <= 50 MB); {a[seconds]:.3f} / {b[seconds]:.3f} s per frame "
              f"({b['load']})")
        print(f"    {long} frames, highest resident memory in each tenth of the run: "
              f"{' '.join(f'{v:.0f}' for v in b['rss_tenths_mb'])} MB", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=["speed", "baseline", "oracle", "memory", "length", "micro"],
                        choices=["speed", "baseline", "oracle", "memory", "length", "micro"])
    parser.add_argument("--data", type=Path, help="folder of the CTC datasets (default: the tests' ctc_root)")
    parser.add_argument("--model", type=Path, help="trained DIC-C2DH-HeLa model folder (default: random weights)")
    parser.add_argument("--frames", type=int, default=0, help="speed: first N frames of DIC 02 (0 = all 84)")
    parser.add_argument("--speed-set", action="append", default=[], help="speed: extra --set override")
    parser.add_argument("--speed-ab", type=Path, metavar="DIR",
                        help="speed: also measure the code of the checkout DIR, alternating with this one (A/B)")
    parser.add_argument("--speed-repeats", type=int, default=2, help="speed with --speed-ab: runs of each side")
    parser.add_argument("--length-frames", type=int, default=100,
                        help="length: N; videos of N and 4N frames are compared")
    parser.add_argument("--baseline-windows", type=int, default=2)
    parser.add_argument("--memory-frames", type=int, default=0, help="memory: first N frames of N2DL-HeLa 01")
    parser.add_argument("--memory-set", action="append", default=[],
                        help="memory: --set override (repeatable; default: none, the preset's tiles)")
    parser.add_argument("--rss-log", help="memory: append 'seconds resident_MB' samples to this file during the run "
                                          "(and the progress bar to FILE.progress)")
    parser.add_argument("--oracle-dataset", default="DIC-C2DH-HeLa", choices=sorted(ORACLE_SEQUENCES),
                        help="oracle: dataset (frames: --frames for DIC, --memory-frames for Fluo-N2DL-HeLa)")
    parser.add_argument("--micro-repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write all results to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--windows", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--intra", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--inter", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        worker = {"predict": worker_predict, "baseline": worker_baseline, "oracle": worker_oracle,
                  "postprocess": worker_postprocess, "micro": worker_micro}[args.worker]
        print(json.dumps(worker(args)))
        return

    data = args.data or default_data()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp_name:
        tmp = Path(tmp_name)
        if {"speed", "baseline", "oracle", "memory"} & set(args.sections) and data is None:
            raise SystemExit("CTC data not found: pass --data or set $RSHN_CTC_DATA")
        dic_model = args.model
        if dic_model is None and {"speed", "baseline"} & set(args.sections):
            dic_model = tmp / "dic_model"
            make_model("DIC-C2DH-HeLa", dic_model)
        weights = "trained" if args.model else "random"
        if "speed" in args.sections:
            seq = frames_folder(data / "DIC-C2DH-HeLa" / "02", args.frames, tmp)
            sets = [x for s in args.speed_set for x in ("--set", s)]
            title = (f"speed: rshn predict DIC-C2DH-HeLa 02, paper network ({weights} weights)"
                     + (f", --set {' '.join(args.speed_set)}" if args.speed_set else ""))
            sides = [("this checkout", None, dic_model)]
            if args.speed_ab:  # the other checkout's model folder: its config schema may differ from this one's
                other_model = args.model or tmp / "dic_model_ab"
                if args.model is None:
                    make_model_with(args.speed_ab, "DIC-C2DH-HeLa", other_model)
                sides.append((f"checkout {args.speed_ab}", args.speed_ab, other_model))
            repeats = args.speed_repeats if args.speed_ab else 1
            for repeat in range(repeats):
                for name, repo, model in sides:
                    r = run("predict", "--model", str(model), "--input", str(seq),
                            "--output", str(tmp / f"dic_RES_{repeat}_{name.split()[0]}"), *sets, repo=repo)
                    results.setdefault("speed_runs", []).append(dict(r, code=name))
                    results.setdefault("speed", r)
                    print_predict(title + (f" [{name}, run {repeat + 1}]" if args.speed_ab else ""), r)
            if args.speed_ab:
                for name, _, _ in sides:
                    seconds = ", ".join(f"{r['predict_s']:.3f}" for r in results["speed_runs"] if r["code"] == name)
                    print(f"  {name}: predict() {seconds} s/frame")
        if "baseline" in args.sections:
            r = run("baseline", "--model", str(dic_model), "--input", str(data / "DIC-C2DH-HeLa" / "02"),
                    "--windows", str(args.baseline_windows))
            results["baseline"] = r
            print(f"baseline: naive per-tile, per-window loop on DIC-C2DH-HeLa 02: {r['window_s']:.3f} s per window "
                  f"({r['tiles']} tile(s), {r['tile_frame_s']:.3f} s per tile-frame; {r['windows']} windows; "
                  f"{r['load']})")
            if "speed" in results:
                s = results["speed"]
                windows = max(s["frames"] - 8 + 1, 1)
                ours = s["network_total_s"] / windows
                print(f"  rshn predict network per window {ours:.3f} s: baseline / predict = {r['window_s'] / ours:.2f}")
        if "oracle" in args.sections:
            name = args.oracle_dataset
            frames = args.frames if name == "DIC-C2DH-HeLa" else args.memory_frames
            r = run("oracle", "--input", str(data / name), "--windows", str(frames))
            results["oracle"] = dict(r, dataset=name)
            print(f"oracle: post-processing of {name} {ORACLE_SEQUENCES[name]} oracle embeddings: {r['frames']} "
                  f"frames, {r['cells']:.1f} cells per frame: {r['postprocessing_s']:.3f} s/frame "
                  f"[{', '.join(f'{k} {v:.3f}' for k, v in r['stages'].items())}]; peak memory {r['peak_mb']:.0f} MB "
                  f"({r['load']})")
            if "speed" in results and name == "DIC-C2DH-HeLa":
                s = results["speed"]
                estimate = s["preprocessing_s"] + s["network_s"] + r["postprocessing_s"]
                print(f"  speed network + oracle post-processing: {estimate:.3f} s/frame (paper GPU: 4.5 s/frame)")
        if "memory" in args.sections:
            model = tmp / "hela_model"
            make_model("Fluo-N2DL-HeLa", model, background=True)
            sets = args.memory_set
            seq = frames_folder(data / "Fluo-N2DL-HeLa" / "01", args.memory_frames, tmp)
            r = run("predict", "--model", str(model), "--input", str(seq), "--output", str(tmp / "hela_RES"),
                    *[x for s in sets for x in ("--set", s)],
                    *(["--rss-log", args.rss_log] if args.rss_log else []),
                    stderr_file=f"{args.rss_log}.progress" if args.rss_log else None)
            results["memory"] = dict(r, sets=sets)
            print_predict(f"memory: rshn predict Fluo-N2DL-HeLa 01, paper network (random weights, all background), --set "
                          f"{' '.join(sets) or '(none)'}", r)
            print(f"  peak memory {r['peak_mb']:.0f} MB (target < 4096 MB); highest resident memory in each tenth of "
                  f"the run: {' '.join(f'{v:.0f}' for v in r['rss_tenths_mb'])} MB")
        if "length" in args.sections:
            results["length"] = length_section(args, tmp)
        if "micro" in args.sections:
            results["micro"] = []
            print("micro: one paper-network RSHN step on 256 x 256 tiles")
            for batch, intra, inter in [(1, 2, 1), (1, 2, 2), (1, 1, 1), (1, 0, 0), (8, 2, 1), (40, 2, 1)]:
                r = run("micro", "--batch", str(batch), "--intra", str(intra), "--inter", str(inter),
                        "--repeats", str(args.micro_repeats))
                results["micro"].append(r)
                print(f"  batch {batch:>2}, intra {intra}, inter {inter}: {r['step_s']:.3f} s per step, "
                      f"{r['tile_frame_s']:.3f} s per tile-frame, peak {r['peak_mb']:.0f} MB ({r['load']})",
                      flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nCPU: {os.cpu_count()} logical cores, shared with other jobs; intra/inter 0 = TensorFlow's default.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
