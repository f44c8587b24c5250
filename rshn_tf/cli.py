"""The ``rshn`` command line: argument parsing only; every verb loads the config and calls one function.

Heavy modules (TensorFlow) are imported inside the verb that needs them, so ``rshn --help`` and the
post-processing verbs start quickly.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

from rshn_tf import __version__
from rshn_tf.config import Config, load_config, validate
from rshn_tf.console import quiet_tensorflow
from rshn_tf.errors import RshnError
from rshn_tf.extras import require_for_config
from rshn_tf.interrupts import Interrupted, exit_status, stop_on_signals
from rshn_tf.os_faults import fault_message, forget_checked

log = logging.getLogger("rshn")

#: Exit status for user errors (bad input, bad config).
EXIT_USER_ERROR = 2


# --------------------------------------------------------------------------------------------------------------
# Shared argument groups


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set postprocessing.bandwidth=0.05",
    )


def _add_data(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "--data", metavar="PATH", required=required,
        help="CTC dataset folder holding 01, 01_GT, ... (overrides data.dataset_dir of the YAML)",
    )


def _add_resume(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the unfinished run writing this output from its last checkpoint (kept in .OUTPUT.partial "
             "beside it; inference.checkpoint_every); the result equals an uninterrupted run's. Without --resume an "
             "unfinished run is refused")


def _config(args: argparse.Namespace, path: str | None) -> Config:
    """Load the YAML (or defaults), apply ``--set`` and ``--data``."""
    config = load_config(path, getattr(args, "overrides", []))
    data = getattr(args, "data", None)
    if data:
        config.data.dataset_dir = str(data)
        validate(config)
    return config


# --------------------------------------------------------------------------------------------------------------
# Verbs


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate YAML configs (and that the optional packages they need are installed); print the resolved config of
    a single file."""
    if args.keys:
        from rshn_tf.config import describe_keys

        print(describe_keys())
        return 0
    if not args.files:
        raise RshnError("check-config: give at least one YAML file or preset name (or --keys)")
    for path in args.files:
        config = _config(args, path)
        require_for_config(config, path)
        print(f"OK  {path}")
        if len(args.files) == 1 and args.show:
            from rshn_tf.config import config_yaml

            print(config_yaml(config), end="")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic CTC training dataset."""
    from data_io.synthetic import write_synthetic_dataset

    out = write_synthetic_dataset(
        args.out, frames=args.frames, size=tuple(args.size), seed=args.seed,
        sequences=tuple(args.sequences), overwrite=args.overwrite,
    )
    print(f"wrote synthetic CTC dataset to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a network; exit status 128 + signal number when SIGINT/SIGTERM stopped it after a checkpoint."""
    from rshn_tf.training import train

    config = _config(args, args.config)
    model_dir = args.model_dir or str(Path("runs") / config.data.dataset / "model")
    result = train(config, model_dir, resume=args.resume, restart=args.restart)
    if result.interrupted:
        print(f"stopped by {result.signal_name} at iteration {result.step} of {result.iterations}; checkpoint saved "
              f"in {result.model_dir}; continue with --resume", file=sys.stderr)
        return exit_status(result.signal_name)
    print(f"trained {result.step} of {result.iterations} iterations; model folder {result.model_dir}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Segment and track a sequence with a trained model."""
    from rshn_tf.predict_folder import predict

    result = predict(args.model, args.input, args.output, overrides=args.overrides, weights=args.weights,
                     save_embeddings=args.save_embeddings, resume=args.resume)
    print(f"wrote {result.num_frames} frames to {result.output_dir}"
          + (f"; embeddings in {result.embeddings_dir}" if result.embeddings_dir else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a model folder holding only the config, the chosen weights and the training facts."""
    from rshn_tf.config import resolve_predict_config
    from rshn_tf.model_folder import ModelFolder, export_model

    config = resolve_predict_config(ModelFolder(args.model).read_config(), args.overrides)
    out = export_model(args.model, args.out, weights=args.weights, config=config, overwrite=args.overwrite)
    print(f"exported the {args.weights} weights of {args.model} to {out}")
    return 0


def cmd_postprocess(args: argparse.Namespace) -> int:
    """Cluster, merge, track and write CTC results from saved embeddings."""
    from rshn_tf.postprocess import run_postprocess

    config = _config(args, args.config)
    processor = run_postprocess(args.embeddings, args.output, config, tuple(args.original_shape), resume=args.resume)
    print(f"wrote {processor.num_frames} frames to {args.output}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a result folder against CTC ground truth."""
    from rshn_tf.error_analysis import count_errors, format_errors
    from rshn_tf.evaluation import evaluate_result, format_scores

    scores = evaluate_result(args.res, args.gt)
    errors = count_errors(args.res, args.gt) if args.errors else None
    if args.json:
        print(format_scores(scores if errors is None else {**scores, "errors": errors}, as_json=True))
    else:
        print(format_scores(scores))
        if errors is not None:
            print(format_errors(errors))
    return 0


def cmd_overlay(args: argparse.Namespace) -> int:
    """Draw tracked contours over the frames."""
    from rshn_tf.visualize import render_overlay

    print(f"wrote {render_overlay(args.res, args.frames, args.out)}")
    return 0


def cmd_show_sample(args: argparse.Namespace) -> int:
    """Write PNGs and arrays of one augmented training sample."""
    from data_io.sample_view import show_sample

    out = show_sample(_config(args, args.config), args.out, seed=args.seed)
    print(f"wrote training sample (seed {args.seed}) to {out}")
    return 0


def _interrupted(exc: Exception) -> int:
    """Exit status 128 + signal number for a run stopped by SIGINT/SIGTERM after saving its progress."""
    print(f"{exc}", file=sys.stderr)
    return exit_status(getattr(exc, "signal_name", "SIGINT"))


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run a cross-validation experiment (or list its steps)."""
    from rshn_tf.experiments import StepInterrupted, load_experiment_config, run_experiment

    config = load_experiment_config(args.config, args.profile, args.overrides, args.data)
    try:
        outcome = run_experiment(config, args.out, dry_run=args.dry_run, only=args.only or ())
    except StepInterrupted as exc:
        return _interrupted(exc)
    if args.dry_run:
        print(outcome.experiment.plan.describe())
        return 0
    from rshn_tf.experiments import RESULTS_MD

    if outcome.results is not None:
        print((outcome.experiment.root / RESULTS_MD).read_text(encoding="utf-8"), end="")
    print(f"\n{outcome.experiment.root}: {len(outcome.ran)} steps ran"
          + ("" if outcome.results is not None else "; no results yet (run without --only to finish)"))
    return 0


def cmd_table3(args: argparse.Namespace) -> int:
    """Run the Table 3 grid (or list it)."""
    from rshn_tf.experiments import StepInterrupted
    from rshn_tf.table3 import PLOT_FILE, plot_skipped, run_table3

    profile = None if args.profile == "none" else args.profile
    try:
        _, table, text = run_table3(args.data, args.out, profile, args.overrides, args.rows, dry_run=args.dry_run,
                                    only=args.only or ())
    except StepInterrupted as exc:
        return _interrupted(exc)
    print(text, end="" if text.endswith("\n") else "\n")
    if table is not None:
        skipped = plot_skipped()
        print(f"\nwrote {Path(args.out) / 'table3.md'}, table3.csv, table3.json"
              + (f" and {PLOT_FILE}" if skipped is None else f"; {PLOT_FILE} not drawn: {skipped}, then run this "
                 f"command again (every step is done, so it only writes the table and the chart)"))
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    """Build or check a CTC submission folder; ``--check`` exits with 1 when the submission has problems."""
    if args.check:
        extra = [f"--{name}" for name in ("model", "dataset", "out") if getattr(args, name)]
        if extra or args.overrides or args.wheels:
            raise RshnError(f"package --check verifies a finished submission; it takes only --data, not "
                            f"{', '.join(extra + ['--set'] * bool(args.overrides) + ['--wheels'] * args.wheels)}")
        from ctc_submission.check import check_submission

        report = check_submission(args.check, data_dir=args.data)
        print(report.format())
        return 0 if report.ok else 1
    missing = [f"--{name}" for name in ("model", "dataset", "out") if not getattr(args, name)]
    if missing:
        raise RshnError(f"package needs {', '.join(missing)} (or --check SUBMISSION_DIR to verify a submission)")
    from ctc_submission.packager import package_submission

    result = package_submission(args.model, args.dataset, args.out, data_dir=args.data, weights=args.weights,
                                overrides=args.overrides, wheels=args.wheels)
    print(f"packaged {args.dataset} into {result.sw_dir} (datasets: {', '.join(result.datasets)})")
    for res in result.results:
        print(f"wrote {res}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic video -> train -> predict -> evaluate -> overlay."""
    import time

    from rshn_tf.demo import demo_config, run_demo, summary
    from rshn_tf.experiments import StepInterrupted

    start = time.perf_counter()
    out = args.out or ("runs/demo" if args.seed == 0 else f"runs/demo-seed{args.seed}")
    config = demo_config(args.seed, args.overrides, out)
    try:
        outcome = run_demo(config, seed=args.seed, dry_run=args.dry_run)
    except StepInterrupted as exc:
        return _interrupted(exc)
    if args.dry_run:
        print(outcome.run.experiment.plan.describe())
        return 0
    print(summary(outcome, time.perf_counter() - start))
    return 0


# --------------------------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    """Build the ``rshn`` argument parser with all verbs."""
    parser = argparse.ArgumentParser(
        prog="rshn",
        description="Cell segmentation and tracking with cosine embeddings and recurrent stacked hourglass "
                    "networks (Payer et al., MedIA 2019).",
    )
    parser.add_argument("--version", action="version", version=f"rshn-tf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug messages, and TensorFlow's own start-up messages")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = verb("train", cmd_train, "train a network on CTC sequences (writes a model folder)")
    p.add_argument("config", help="experiment YAML or preset name, e.g. experiments/DIC-C2DH-HeLa.yaml")
    p.add_argument("--model-dir", help="model folder to write (default: runs/<dataset>/model)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --model-dir")
    p.add_argument("--restart", action="store_true",
                   help="discard the run in --model-dir (config, weights, checkpoints, logs; e.g. one that failed "
                        "with a non-finite loss) and start a new one")
    _add_data(p)
    _add_set(p)

    p = verb("predict", cmd_predict, "segment and track one sequence with a trained model (writes a CTC RES folder)")
    p.add_argument("--model", required=True, help="model folder (config.yaml + weights)")
    p.add_argument("--input", required=True, help="sequence folder of frames tNNN.tif, e.g. DATASET/01")
    p.add_argument("--output", required=True, help="result folder to write, e.g. DATASET/01_RES")
    p.add_argument("--save-embeddings", metavar="DIR",
                   help="also save the frame-pair embeddings (pair_NNN.npy, float32 (2, h, w, D) on the network grid) "
                        "for 'rshn postprocess'")
    p.add_argument("--weights", default="auto",
                   help="'best', 'last' or a .weights.h5 file (default: best when the folder holds them, else last)")
    _add_resume(p)
    _add_set(p)

    p = verb("export", cmd_export,
             "copy a trained model for prediction and sharing: config.yaml, the chosen weights, model_info.json")
    p.add_argument("--model", required=True, help="model folder written by 'rshn train'")
    p.add_argument("--out", required=True, help="folder to write, e.g. models/DIC-C2DH-HeLa-cpu")
    p.add_argument("--weights", choices=["best", "last"], default="last", help="which weights to keep")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    _add_set(p)

    p = verb("postprocess", cmd_postprocess,
             "cluster, merge tiles, track and write CTC results from saved embeddings (no network)")
    p.add_argument("embeddings", help="folder of pair_000.npy ... (float32 (2, h, w, D) per consecutive pair)")
    p.add_argument("output", help="result folder to write")
    p.add_argument("--config", required=True, help="YAML or preset name giving the post-processing parameters")
    p.add_argument("--original-shape", nargs=2, type=int, required=True, metavar=("H", "W"),
                   help="frame size of the original images the results are resampled to")
    _add_resume(p)
    _add_set(p)

    p = verb("evaluate", cmd_evaluate, "score a RES folder against CTC ground truth (SEG, TRA, DET, OP_CTB)")
    p.add_argument("res", help="result folder (maskNNN.tif + res_track.txt)")
    p.add_argument("gt", help="ground-truth folder (0X_GT with TRA/ and SEG/)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument("--errors", action="store_true",
                   help="also sort the gold SEG cells into matched / merged / split / missed (why SEG is low)")

    p = verb("overlay", cmd_overlay, "draw contours coloured by track id over the frames (GIF or PNG)")
    p.add_argument("res", help="result folder")
    p.add_argument("frames", help="folder of the raw frames")
    p.add_argument("--out", required=True, help="movie.gif or a .png path")

    p = verb("show-sample", cmd_show_sample, "write PNGs and sample.npz of one augmented training sample")
    p.add_argument("config", help="experiment YAML or preset name")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--seed", type=int, default=0)
    _add_data(p, required=True)
    _add_set(p)

    p = verb("experiment", cmd_experiment, "train, predict and evaluate a cross-validation experiment")
    p.add_argument("config", help="experiment YAML")
    p.add_argument("--dry-run", action="store_true", help="list the steps (done / todo) without running them")
    p.add_argument("--profile", metavar="NAME",
                   help="layer a bundled profile over the config: cpu (reduced budget) or paper; or a YAML path")
    p.add_argument("--out", help="run folder (default: experiment.output_dir of the config)")
    p.add_argument("--only", action="append", metavar="STEP",
                   help="run only the steps matching this pattern (repeatable), e.g. 'train[fold2]' to train the "
                        "folds in two processes that share the run folder")
    _add_data(p)
    _add_set(p)

    p = verb("table3", cmd_table3, "run the paper's Table 3 grid on the datasets present")
    p.add_argument("--profile", choices=["cpu", "paper", "none"], default="cpu",
                   help="cpu: reduced budget for a CPU (experiments/profiles/cpu.yaml); paper: the paper's budget; "
                        "none: the dataset presets as they are")
    p.add_argument("--out", default="runs/table3", help="output folder")
    p.add_argument("--rows", nargs="+", metavar="ROW",
                   help="only these rows (e.g. rshn_h0.1 rshn_hdbscan, or 'rshn' / 'volumetric'); default all 7")
    p.add_argument("--only", action="append", metavar="STEP",
                   help="run only the steps matching this pattern in every experiment (repeatable), e.g. '*fold1*'")
    p.add_argument("--dry-run", action="store_true", help="list the rows and datasets without running them")
    _add_data(p, required=True)
    _add_set(p)

    p = verb("package", cmd_package, "build (or --check) a CTC submission folder: SW/ with launchers, model, code")
    p.add_argument("--model", help="model folder (config.yaml + weights)")
    p.add_argument("--dataset", help="CTC dataset name, e.g. DIC-C2DH-HeLa (names the launchers and ../DATASET)")
    p.add_argument("--out", help="submission folder to write (SUBMISSION_DIR/SW); other datasets in it are kept")
    p.add_argument("--weights", choices=["best", "last", "auto"], default="auto",
                   help="which weights to bundle (default auto: best when the folder holds them, else last)")
    p.add_argument("--wheels", action="store_true",
                   help="also download every requirement as a wheel into SW/wheels for an offline installation")
    p.add_argument("--check", metavar="SUBMISSION_DIR",
                   help="verify a finished submission folder (scripts, results, frame counts); exit 1 on problems")
    p.add_argument("--data", metavar="PATH",
                   help="challenge data of the dataset (folder with 01 and 02, or holding DATASET/01 ...): run the "
                        "launchers and put DATASET/0X_RES into the submission; with --check, where the inputs are")
    _add_set(p)

    p = verb("demo", cmd_demo, "synthetic video -> train a small network -> predict -> evaluate -> overlay GIF")
    p.add_argument("--out", help="output folder (default runs/demo, or runs/demo-seedS for --seed S)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic video and of training")
    p.add_argument("--dry-run", action="store_true", help="list the steps (done / todo) without running them")
    _add_set(p)

    p = verb("synth", cmd_synth, "write a synthetic CTC training dataset (textured dividing cells)")
    p.add_argument("out", help="dataset folder to create")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--size", nargs=2, type=int, default=[256, 256], metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sequences", nargs="+", default=["01", "02"], help="sequence names to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")

    p = verb("check-config", cmd_check_config, "validate YAML configs (unknown keys, types, ranges)")
    p.add_argument("files", nargs="*", help="YAML files or preset names")
    p.add_argument("--show", action="store_true", help="print the resolved config (single file)")
    p.add_argument("--keys", action="store_true", help="list every section and key with its default")
    _add_data(p)
    _add_set(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rshn`` console script.

    Returns:
        0 on success, 2 for user errors and faults of the environment (a folder that cannot be written, a full
        disk), 128 + the signal number when SIGINT or SIGTERM stopped the verb.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_tensorflow()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    forget_checked()
    try:
        with stop_on_signals():
            return int(args.func(args) or 0)
    except RshnError as exc:
        notes = "".join(f"\n{note}" for note in getattr(exc, "__notes__", ()))
        print(f"rshn {args.verb}: error: {exc}{notes}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (Interrupted, KeyboardInterrupt) as exc:
        stop = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))
        print(f"rshn {args.verb}: {stop}{notes}", file=sys.stderr)
        return stop.exit_status
    except BrokenPipeError:  # the reader of stdout went away (e.g. `rshn check-config --keys | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    except ModuleNotFoundError as exc:
        if exc.name not in ("tensorflow", "keras"):
            raise
        print(f"rshn {args.verb}: error: TensorFlow is not installed (no module {exc.name!r}); it comes with an "
              f"extra of rshn-tf chosen for the hardware: pip install \"rshn-tf[cpu]\", or \"rshn-tf[gpu]\" for "
              f"NVIDIA GPUs on Linux (in a source checkout: pip install \".[cpu]\" or \".[gpu]\")", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:
        message = fault_message(exc)
        if message is None:
            raise
        notes = "".join(f"\n{note}" for note in getattr(exc, "__notes__", ()))
        print(f"rshn {args.verb}: error: {message}{notes}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
