"""Learning ablation on real CTC data at a fixed training budget: which differences between the paper's text and the
authors' code make the network separate touching cells.

Every row trains (or re-uses) one model with the same seed, network and iteration budget (the ``cpu`` profile, see
``--iterations``) and scores it on data it never saw:

* DIC-C2DH-HeLa: trained on sequence 01, scored on 02 (gold truth, py-ctcmetrics).
* Fluo-N2DL-HeLa: only 01 is available here, so it is split in time: trained on frames 0-59, scored on the SEG/TRA
  ground truth of frames 60-91 (written as a sequence of their own, renumbered from 0; tracks clipped).

Rows are cumulative: each adds its settings to those of the rows above it (side rows change one setting of one row
and are not carried further). Training rows train a new model; the
inference rows (``blob_merge``, ``final_weights``) re-use the model of the last training row above them.

* ``preset``: the dataset preset in the paper's text (profile ``paper_text`` under every row: centroid
  neighbourhood with Table 1's r_N, windows anchored on completely segmented frames, no augmentation extras,
  ``best`` weights, instance tile merge).
* ``neighbours``: the code's neighbourhood recipe (dilation + disc, frames f-1 … f+1) and radii (factor x width).
* ``any_seg``: windows anchored on any frame with SEG ground truth (the code's id list).
* ``silver_truth``: frames without gold SEG take the CTC silver truth (``data.silver_truth``).
* ``grid128`` (DIC-C2DH-HeLa): the network grid halved to 128 x 128 (crops 96 x 96; r_N and t_size scaled), so
  that the cells span as many pixels of the small ``cpu`` network as the demo's synthetic cells.
* ``rate3e-4`` (Fluo-N2DL-HeLa): learning rate 3e-4, 3e-5 after half (``cpu`` profile: 1e-3, 1e-4; paper 1e-4):
  at 1e-3 the loss of the HeLa windows stalls (mean 1.70 -> 1.63 over the first 1,500 iterations).
* ``augmentation``: the code's augmentation extras (mirror padding, gamma, per-frame intensity jitter, the product
  of two scale draws; DIC also the +-35 % translation and the label blur sigma 2).
* ``blob_merge``: the code's tile merge (connected foreground blobs, 32-px band along inner tile edges).
* ``final_weights``: the final weights instead of the lowest smoothed training loss.

Side rows (not carried further): ``grid128_centroid`` (DIC-C2DH-HeLa: grid128 with the paper's centroid
neighbourhood) and ``recipe`` (Fluo-N2DL-HeLa: ``rate3e-4`` with 32 filters, 6,000 iterations and the final
weights; the shipped model's recipe is ``rate3e-4`` itself), ``recipe_augmentation`` (``recipe`` with the code's
augmentation extras, which cut the merged cells of DIC-C2DH-HeLa in half), ``recipe_centroid``
(``recipe_augmentation`` with the paper's centroid neighbourhood at the code's radius, the rule that won on
DIC-C2DH-HeLa), ``neighbours_rate3e-4``
and ``any_seg_rate3e-4`` (those two rows at learning rate 3e-4: does any-SEG anchoring help on the gold truth alone
once the loss does not stall) and ``rate3e-4_long`` (the best row, ``rate3e-4``, with twice the iterations; its
``--curve`` shows what the length buys).

Usage (one training at a time; each row 30-40 min on 2 cores; finished rows are skipped, an interrupted training
continues from its last checkpoint when the command is repeated)::

    nice python benchmarks/learning_ablation.py --dataset DIC-C2DH-HeLa --data ../shared/data/ctc
    python benchmarks/learning_ablation.py --dataset DIC-C2DH-HeLa --data ../shared/data/ctc --dry-run
    nice python benchmarks/learning_ablation.py --dataset DIC-C2DH-HeLa --data ../shared/data/ctc --curve preset
    python benchmarks/learning_ablation.py --report --plot docs/images/ablation_seg_curve.png --curve-rows preset:silver_truth

Outputs under ``--out`` (default ``runs/ablation``): ``DATASET/ROW/model`` (model folder), ``DATASET/ROW/RES`` (CTC
result), ``DATASET/ROW/scores.json``, ``DATASET/ROW/curve.json`` (scores of the weight snapshots) and
``ablation.md`` (all rows of all datasets run so far).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a source checkout without installing

from rshn_tf.atomic import atomic_file, write_json_atomic, write_text_atomic  # noqa: E402
from rshn_tf.errors import RshnError  # noqa: E402
from rshn_tf.extras import importing, require  # noqa: E402

log = logging.getLogger("learning_ablation")


@dataclass(frozen=True)
class Split:
    """Where a dataset's ablation trains and what it is scored on.

    Attributes:
        train_sets: ``--set`` strings that select the training data.
        test_seq: The sequence scored.
        test_frames: ``(start, stop)`` of ``test_seq`` written as a sequence of its own, or None for all frames.
    """

    train_sets: tuple[str, ...]
    test_seq: str
    test_frames: Optional[tuple[int, int]] = None


SPLITS = {
    "DIC-C2DH-HeLa": Split(('data.train_sequences=["01"]',), "02"),
    "Fluo-N2DL-HeLa": Split(('data.train_sequences=["01"]', "data.train_frames=[0, 60]"), "01", (60, 92)),
}

#: Iterations of every row, chosen to train in ~30-40 min on 2 cores (0.25 s and 0.34 s per iteration).
ITERATIONS = {"DIC-C2DH-HeLa": 8000, "Fluo-N2DL-HeLa": 7000}

#: The code's neighbourhood radius, factor x width of the code's test size (docs/fidelity.md §2.6).
CODE_RADIUS = {"DIC-C2DH-HeLa": 51.2, "Fluo-N2DL-HeLa": 30.7}


@dataclass(frozen=True)
class Row:
    """One ablation row.

    Attributes:
        name: Folder and table name.
        title: What the row adds.
        train_sets: ``--set`` strings that change training (a new model is trained when non-empty).
        predict_sets: ``--set`` strings applied at prediction.
        weights: ``best`` or ``last`` from this row on (None: unchanged).
        base: For a side row (leave-one-out): the row whose settings it changes; it is not carried into the rows
            below it. None for the cumulative rows.
    """

    name: str
    title: str
    train_sets: tuple[str, ...] = ()
    predict_sets: tuple[str, ...] = ()
    weights: Optional[str] = None
    base: Optional[str] = None


def augmentation_sets(dataset: str) -> tuple[str, ...]:
    """The code's augmentation extras of a dataset as ``--set`` strings (DIC also translation and label blur)."""
    augmentation = ["data.mirror_padding=true", "augmentation.gamma_range=[0.6, 1.4]",
                    "augmentation.per_frame_shift=0.1", "augmentation.per_frame_scale=0.1",
                    "augmentation.scale_mode=code_product"]
    if dataset == "DIC-C2DH-HeLa":
        augmentation += ["augmentation.translation_fraction=0.35", "data.label_blur_sigma=2.0"]
    return tuple(augmentation)


def rows_for(dataset: str) -> list[Row]:
    """The ablation rows of a dataset, in order (each adds to the rows above)."""
    augmentation = augmentation_sets(dataset)
    return [
        Row("preset", "the preset in paper text (windows anchored on complete SEG frames)",
            ("data.seg_sample_frames=complete",)),
        Row("neighbours", "+ code neighbourhood recipe and radii",
            ("loss.neighbour_mode=code", f"loss.neighbour_radius={CODE_RADIUS[dataset]}")),
        Row("any_seg", "+ windows anchored on any SEG frame", ("data.seg_sample_frames=any",)),
        Row("silver_truth", "+ silver truth (GT+ST)", ("data.silver_truth=true",)),
        *DATASET_ROWS.get(dataset, []),
        Row("augmentation", "+ code augmentation extras", augmentation),
        Row("blob_merge", "+ blob tile merge (32-px band)", (),
            ("postprocessing.merge_mode=blob", "postprocessing.merge_ignore_border=32")),
        Row("final_weights", "+ final weights", weights="last"),
        *SIDE_ROWS.get(dataset, []),
    ]


#: The learning rate at which the Fluo-N2DL-HeLa loss does not stall (``cpu`` profile: 1e-3, 1e-4 after half).
RATE_3E4 = ("training.learning_rate=0.0003", "training.learning_rate_final=0.00003")


#: Rows of one dataset, after ``silver_truth``. DIC-C2DH-HeLa: the network grid at the scale the small ``cpu``
#: network can handle; its cells span ~50 px of Table 1's 256 x 256 grid, at 128 x 128 (crops of 96 x 96) ~25 px like
#: the synthetic cells of the demo, and every length on the grid scales with it: r_N 0.2 x 128 (the code's factor),
#: t_size 500 / 4. Fluo-N2DL-HeLa: the learning rate (its nuclei already span ~25 px at Table 1's size).
DATASET_ROWS = {
    "DIC-C2DH-HeLa": [Row("grid128", "+ 128 x 128 network grid, 96 x 96 crops (cpu: Table 1 has 256 x 256)",
                          ("data.resampled_size=[128, 128]", "data.tile_size=[96, 96]", "loss.neighbour_radius=25.6",
                           "postprocessing.min_size=125", "inference.tile_size=[128, 128]",
                           "inference.tile_overlap=64"))],
    "Fluo-N2DL-HeLa": [Row("rate3e-4", "+ learning rate 3e-4, 3e-5 after half (cpu: 1e-3, 1e-4)", RATE_3E4)],
}


#: Leave-one-out rows: one setting of a cumulative row put back to the paper's text.
SIDE_ROWS = {
    "DIC-C2DH-HeLa": [Row("grid128_centroid", "grid128 with the paper's centroid neighbourhood (r_N 25, Table 1 / 2)",
                          ("loss.neighbour_mode=centroid", "loss.neighbour_radius=25"), base="grid128")],
    "Fluo-N2DL-HeLa": [Row("recipe", "rate3e-4 with 32 filters, 6,000 it and the final weights",
                           ("model.filters=32", "training.iterations=6000"), weights="last", base="rate3e-4"),
                       Row("recipe_augmentation", "recipe + the code's augmentation extras",
                           augmentation_sets("Fluo-N2DL-HeLa"), base="recipe"),
                       Row("recipe_centroid", "recipe_augmentation with the paper's centroid neighbourhood (same r_N)",
                           ("loss.neighbour_mode=centroid", f"loss.neighbour_radius={CODE_RADIUS['Fluo-N2DL-HeLa']}"),
                           base="recipe_augmentation"),
                       Row("neighbours_rate3e-4", "neighbours at learning rate 3e-4 (gold truth only)",
                           RATE_3E4, base="neighbours"),
                       Row("any_seg_rate3e-4", "any_seg at learning rate 3e-4 (gold truth only)",
                           RATE_3E4, base="any_seg"),
                       Row("rate3e-4_long", "rate3e-4 trained twice as long (14,000 it, rate drop at half)",
                           ("training.iterations=14000",), base="rate3e-4")],
}


@dataclass
class Resolved:
    """A row with everything accumulated from the rows above it."""

    row: Row
    train_sets: list[str]
    predict_sets: list[str]
    weights: str
    model_row: str


def resolve_rows(dataset: str) -> list[Resolved]:
    """Accumulate the rows of a dataset: training and prediction settings, weights, and whose model a row uses."""
    resolved, train_sets, predict_sets, weights, model_row = [], [], [], "best", ""
    for row in rows_for(dataset):
        if row.base is not None:
            base = next(r for r in resolved if r.row.name == row.base)
            resolved.append(Resolved(row, base.train_sets + list(row.train_sets),
                                     base.predict_sets + list(row.predict_sets), row.weights or base.weights,
                                     row.name if row.train_sets else base.model_row))
            continue
        if row.train_sets or not model_row:
            model_row = row.name
        train_sets = train_sets + list(row.train_sets)
        predict_sets = predict_sets + list(row.predict_sets)
        weights = row.weights or weights
        resolved.append(Resolved(row, train_sets, predict_sets, weights, model_row))
    return resolved


def budget_sets(iterations: int, snapshot_every: int) -> list[str]:
    """The fixed budget of every row."""
    return [f"training.iterations={iterations}", f"training.snapshot_every={snapshot_every}"]


def training_config(dataset: str, data_root: Path, resolved: Resolved, iterations: int, snapshot_every: int):
    """The training configuration of a row: dataset preset put back to the paper's text (profile ``paper_text``:
    the rows add the code's behaviour one by one) + ``cpu`` profile + split + budget + row settings."""
    from rshn_tf.experiments import load_experiment_config

    sets = list(SPLITS[dataset].train_sets) + budget_sets(iterations, snapshot_every) + resolved.train_sets
    config = load_experiment_config(dataset, profile="cpu", overrides=sets, data=data_root / dataset,
                                    layers=["profiles/paper_text"])
    return config, sets


def test_data(dataset: str, data_root: Path, out: Path) -> Path:
    """The dataset folder that holds the scored sequence (written once for a split in time)."""
    split = SPLITS[dataset]
    if split.test_frames is None:
        return data_root / dataset
    from data_io.ctc import write_time_window

    folder = out / dataset / "test_data"
    if not (folder / f"{split.test_seq}_GT").is_dir():
        write_time_window(data_root / dataset, split.test_seq, *split.test_frames, folder)
    return folder


def train_row(config, model_dir: Path) -> None:
    """Train (or continue) a row's model."""
    from rshn_tf.model_folder import ModelFolder
    from rshn_tf.training import train

    folder = ModelFolder(model_dir)
    state = folder.read_state() if folder.config_path.is_file() else None
    if state and state.get("finished"):
        return
    result = train(config, model_dir, resume=folder.has_training_output())
    if result.interrupted:
        raise SystemExit(f"training of {model_dir} stopped by {result.signal_name}; repeat the command to continue")


def predict_and_score(model_dir: Path, test_root: Path, seq: str, res_dir: Path, scores_path: Path,
                      predict_sets: list[str], weights: str) -> dict:
    """Predict ``test_root/seq`` into ``res_dir``, score it against ``seq_GT``, write ``scores_path``."""
    from rshn_tf.evaluation import evaluate_result
    from rshn_tf.predict_folder import predict

    tic = time.perf_counter()
    predict(model_dir, test_root / seq, res_dir, overrides=predict_sets, weights=weights)
    seconds = time.perf_counter() - tic
    scores = evaluate_result(res_dir, test_root / f"{seq}_GT")
    scores["predict_seconds"] = round(seconds, 1)
    write_json_atomic(scores_path, scores)
    return scores


def run_dataset(dataset: str, data_root: Path, out: Path, only: list[str], iterations: int, snapshot_every: int,
                dry_run: bool) -> None:
    """Train and score every (selected) row of one dataset; finished parts are skipped."""
    split = SPLITS[dataset]
    for resolved in resolve_rows(dataset):
        name = resolved.row.name
        if only and name not in only:
            continue
        row_dir = out / dataset / name
        scores_path = row_dir / "scores.json"
        model_dir = out / dataset / resolved.model_row / "model"
        config, sets = training_config(dataset, data_root, resolved, iterations, snapshot_every)
        if dry_run:
            state = "done" if scores_path.is_file() else "todo"
            print(f"[{state}] {dataset} {name}: model {resolved.model_row}, weights {resolved.weights}\n"
                  f"    train --set {' --set '.join(sets)}\n"
                  f"    predict --set {' --set '.join(resolved.predict_sets) or '(none)'}")
            continue
        if scores_path.is_file():
            log.info("%s %s: done (%s)", dataset, name, scores_path)
            continue
        if resolved.model_row == name:
            train_row(config, model_dir)
        scores = predict_and_score(model_dir, test_data(dataset, data_root, out), split.test_seq, row_dir / "RES",
                                   scores_path, resolved.predict_sets, resolved.weights)
        log.info("%s %s: SEG %.3f TRA %.3f DET %.3f", dataset, name, scores["SEG"], scores["TRA"], scores["DET"])


def run_curve(dataset: str, data_root: Path, out: Path, row_name: str) -> None:
    """Score every weight snapshot of a training row (with that row's prediction settings) into ``curve.json``."""
    from rshn_tf.model_folder import ModelFolder

    resolved = {r.row.name: r for r in resolve_rows(dataset)}[row_name]
    if resolved.model_row != row_name:
        raise RshnError(f"{row_name} trains no model of its own; use row {resolved.model_row}")
    row_dir = out / dataset / row_name
    curve_path = row_dir / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.is_file() else {}
    split = SPLITS[dataset]
    test_root = test_data(dataset, data_root, out)
    for step, path in ModelFolder(row_dir / "model").snapshots().items():
        if str(step) in curve:
            continue
        scores = predict_and_score(row_dir / "model", test_root, split.test_seq, row_dir / "curve" / f"{step}_RES",
                                   row_dir / "curve" / f"{step}_scores.json", resolved.predict_sets, str(path))
        curve[str(step)] = scores
        write_json_atomic(curve_path, curve)
        log.info("%s %s step %d: SEG %.3f TRA %.3f", dataset, row_name, step, scores["SEG"], scores["TRA"])


def training_seconds(model_dir: Path) -> Optional[tuple[float, float]]:
    """Time a training took: the sum of its iteration times in ``logs/losses.csv`` (a pause of the process, e.g.
    SIGSTOP, or a restart shows as one iteration of over a minute and is left out), and their median."""
    import csv

    path = model_dir / "logs" / "losses.csv"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    return sum(value for value in seconds if value < 60.0), float(np.median(seconds))


def report(out: Path, data_root: Path) -> str:
    """``ablation.md``: every scored row of every dataset, with its gold cells sorted by
    :func:`rshn_tf.error_analysis.count_errors` (the ground truth is read from ``data_root``)."""
    from rshn_tf.error_analysis import count_errors

    lines = ["| dataset | row | adds | SEG | TRA | DET | gold cells: matched / merged / split / missed "
             "| train min (median s/it) | predict s |", "|---|---|---|---|---|---|---|---|---|"]
    for dataset in SPLITS:
        for resolved in resolve_rows(dataset):
            row_dir = out / dataset / resolved.row.name
            if not (row_dir / "scores.json").is_file():
                continue
            scores = json.loads((row_dir / "scores.json").read_text())
            seconds = training_seconds(out / dataset / resolved.model_row / "model") \
                if resolved.model_row == resolved.row.name else None
            minutes = "" if seconds is None else f"{seconds[0] / 60:.0f} ({seconds[1]:.2f} s/it)"
            predict = scores.get("predict_seconds")
            gt_dir = test_data(dataset, data_root, out) / f"{SPLITS[dataset].test_seq}_GT"
            errors = count_errors(row_dir / "RES", gt_dir)
            cells = " / ".join(str(errors[k]) for k in ("matched", "merged", "split", "missed"))
            lines.append(f"| {dataset} | {resolved.row.name} | {resolved.row.title} | {scores['SEG']:.3f} | "
                         f"{scores['TRA']:.3f} | {scores['DET']:.3f} | {cells} of {errors['cells']} | {minutes} | "
                         f"{'' if predict is None else f'{predict:.0f}'} |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / "ablation.md", text)
    return text


def plot_curves(out: Path, pairs: list[str], target: Path) -> None:
    """One panel per dataset: SEG of the weight snapshots of the given rows against the iteration."""
    with importing("matplotlib", "--plot"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

    datasets = [d for d in SPLITS if any((out / d / r / "curve.json").is_file() for r in pairs)]
    fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(5 * max(len(datasets), 1), 3.6), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        for row in pairs:
            path = out / dataset / row / "curve.json"
            if not path.is_file():
                continue
            curve = {int(k): v for k, v in json.loads(path.read_text()).items()}
            steps = sorted(curve)
            axis.plot(steps, [curve[s]["SEG"] for s in steps], marker="o", label=f"{row} SEG")
            axis.plot(steps, [curve[s]["TRA"] for s in steps], marker=".", linestyle="--", label=f"{row} TRA")
        axis.set_title(dataset)
        axis.set_xlabel("training iteration")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_file(target, suffix=target.suffix) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", choices=sorted(SPLITS), help="dataset(s) to run")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "ctc",
                        help="folder holding the CTC datasets")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "ablation")
    parser.add_argument("--rows", nargs="+", default=[], help="only these rows")
    parser.add_argument("--iterations", type=int, help="training budget of every row (default: ITERATIONS)")
    parser.add_argument("--snapshot-every", type=int, default=2000, help="weight snapshots for --curve")
    parser.add_argument("--curve", metavar="ROW", help="score the weight snapshots of this row instead")
    parser.add_argument("--dry-run", action="store_true", help="print each row's settings and whether it is done")
    parser.add_argument("--report", action="store_true",
                        help="write OUT/ablation.md (scores, gold cells matched / merged / split / missed) and print it")
    parser.add_argument("--plot", type=Path, help="with --report: draw the SEG curves of --curve-rows to this PNG")
    parser.add_argument("--curve-rows", default="preset", help="rows of the plot, separated by ':'")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        if args.plot:
            require("matplotlib", "--plot")  # before the rows run, not after
        for dataset in args.dataset or []:
            if args.curve:
                run_curve(dataset, args.data, args.out, args.curve)
            else:
                run_dataset(dataset, args.data, args.out, args.rows, args.iterations or ITERATIONS[dataset],
                            args.snapshot_every, args.dry_run)
        if args.report:
            print(report(args.out, args.data))
            if args.plot:
                plot_curves(args.out, args.curve_rows.split(":"), args.plot)
    except RshnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
