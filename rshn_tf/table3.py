"""The paper's Table 3 (§5.2, §5.3): RSHN with mean-shift bandwidths h ∈ {0.025, 0.05, 0.1, 0.15, 0.2}, RSHN with
HDBSCAN, and the volumetric network with h = 0.1, each evaluated by two-fold cross-validation on DIC-C2DH-HeLa,
Fluo-N2DH-GOWT1 and PhC-C2DH-U373; reported as the mean SEG, TRA and OP of both videos, plus the mean over the
datasets.

Each row is a YAML layer in ``experiments/table3/`` (:data:`ROWS`); a row's configuration is the dataset preset, the
row, the profile (``profiles/cpu.yaml`` or ``profiles/paper.yaml``) and ``--set`` overrides, in that order. Rows
whose configurations differ only in ``postprocessing`` / ``tracking`` share one experiment (one trained network per
fold, one prediction of each held-out video with saved embeddings, :mod:`rshn_tf.experiments`), and each row is a
post-processing variant of it, as in the paper ("the same trained networks and predicted embedding vectors [...]
only exchange the clustering algorithms", §5.3). So the six RSHN rows train two networks per dataset and the
volumetric row two more. One extra row (``shn_h0.1``, :attr:`Row.in_paper` False) runs the non-recurrent SHN of §5.1
with h = 0.1; it has no paper values.

Outputs in the Table 3 folder: ``table3.md`` (the paper's layout, our value next to the paper's in every cell),
``table3.csv`` (one line per row, dataset and metric with both values and the per-fold scores), ``table3.json`` and
``table3.png`` (bar chart, ours beside the paper's). The paper's numbers are in :data:`PAPER_TABLE3`.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import logging
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from rshn_tf import extras
from rshn_tf.atomic import atomic_file
from rshn_tf.config import Config
from rshn_tf.errors import RshnError
from rshn_tf.experiments import (
    Experiment,
    changed_keys,
    check_dataset,
    collect_results,
    experiment_plan,
    format_seconds,
    hold_run_folder,
    load_experiment_config,
    prepare_run_folder,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

#: The datasets of Table 3, in the paper's column order (§5.2: the three datasets whose two training videos are
#: similar enough for cross-validation).
DATASETS = ("DIC-C2DH-HeLa", "Fluo-N2DH-GOWT1", "PhC-C2DH-U373")
#: The bar chart written beside the table files, and what needs matplotlib (the ``plot`` extra) in messages.
PLOT_FILE = "table3.png"
PLOT_FEATURE = f"the Table 3 bar chart ({PLOT_FILE})"
#: Metrics of Table 3 (OP = (SEG + TRA) / 2, §3.2) and their py-ctcmetrics names.
METRICS = {"SEG": "SEG", "TRA": "TRA", "OP": "OP_CTB"}


@dataclass(frozen=True)
class Row:
    """One row of Table 3.

    Attributes:
        name: Row id = the stem of its YAML in ``experiments/table3/``.
        network: The paper's "Network" column.
        clustering: The paper's "Clustering Parameters" column.
    """

    name: str
    network: str
    clustering: str

    @property
    def in_paper(self) -> bool:
        """False for the extra row that Table 3 does not have (its paper values are empty)."""
        return self.name in PAPER_TABLE3

    @property
    def preset(self) -> str:
        """The row's YAML as a preset name."""
        return f"table3/{self.name}"


#: Table 3's rows in the paper's order.
ROWS = (
    Row("rshn_h0.025", "RSHN", "h = 0.025"),
    Row("rshn_h0.05", "RSHN", "h = 0.05"),
    Row("rshn_h0.1", "RSHN", "h = 0.1"),
    Row("rshn_h0.15", "RSHN", "h = 0.15"),
    Row("rshn_h0.2", "RSHN", "h = 0.2"),
    Row("rshn_hdbscan", "RSHN", "HDBSCAN"),
    Row("volumetric_h0.1", "Volumetric", "h = 0.1"),
    Row("shn_h0.1", "SHN", "h = 0.1 (§5.1 network; not in Table 3)"),
)

#: Paper Table 3: (SEG, TRA, OP) per row and dataset, and the paper's "Overall Mean" over the three datasets.
PAPER_TABLE3: dict[str, dict[str, tuple[float, float, float]]] = {
    "rshn_h0.025": {"DIC-C2DH-HeLa": (0.781, 0.933, 0.857), "Fluo-N2DH-GOWT1": (0.777, 0.975, 0.876),
                    "PhC-C2DH-U373": (0.722, 0.935, 0.828), "Overall": (0.760, 0.948, 0.854)},
    "rshn_h0.05": {"DIC-C2DH-HeLa": (0.781, 0.932, 0.857), "Fluo-N2DH-GOWT1": (0.776, 0.976, 0.876),
                   "PhC-C2DH-U373": (0.729, 0.942, 0.835), "Overall": (0.762, 0.950, 0.856)},
    "rshn_h0.1": {"DIC-C2DH-HeLa": (0.780, 0.924, 0.852), "Fluo-N2DH-GOWT1": (0.777, 0.976, 0.877),
                  "PhC-C2DH-U373": (0.748, 0.951, 0.849), "Overall": (0.768, 0.951, 0.859)},
    "rshn_h0.15": {"DIC-C2DH-HeLa": (0.773, 0.906, 0.840), "Fluo-N2DH-GOWT1": (0.780, 0.977, 0.879),
                   "PhC-C2DH-U373": (0.753, 0.952, 0.853), "Overall": (0.769, 0.945, 0.857)},
    "rshn_h0.2": {"DIC-C2DH-HeLa": (0.685, 0.845, 0.765), "Fluo-N2DH-GOWT1": (0.778, 0.976, 0.877),
                  "PhC-C2DH-U373": (0.753, 0.951, 0.852), "Overall": (0.739, 0.924, 0.831)},
    "rshn_hdbscan": {"DIC-C2DH-HeLa": (0.751, 0.898, 0.824), "Fluo-N2DH-GOWT1": (0.774, 0.969, 0.872),
                     "PhC-C2DH-U373": (0.750, 0.949, 0.849), "Overall": (0.758, 0.939, 0.848)},
    "volumetric_h0.1": {"DIC-C2DH-HeLa": (0.735, 0.918, 0.827), "Fluo-N2DH-GOWT1": (0.779, 0.973, 0.876),
                        "PhC-C2DH-U373": (0.626, 0.929, 0.778), "Overall": (0.713, 0.940, 0.827)},
}
OVERALL = "Overall"


def paper_values(row: Row, dataset: str) -> dict[str, Optional[float]]:
    """The paper's SEG / TRA / OP of a row on a dataset (or ``Overall``); all None for a row not in Table 3."""
    values = PAPER_TABLE3[row.name][dataset] if row.in_paper else (None,) * len(METRICS)
    return dict(zip(METRICS, values))


def select_rows(names: Optional[Sequence[str]]) -> list[Row]:
    """The rows named (row ids, or ``rshn`` / ``volumetric`` for all rows of a network); all rows for None.

    Raises:
        RshnError: For an unknown name.
    """
    if not names:
        return list(ROWS)
    chosen: list[Row] = []
    for name in names:
        matches = [row for row in ROWS if row.name == name or row.network.lower() == name.lower()]
        if not matches:
            raise RshnError(f"--rows: unknown row {name!r}; rows: {', '.join(r.name for r in ROWS)} "
                            "(or 'rshn', 'volumetric', 'shn')")
        chosen += [row for row in matches if row not in chosen]
    return [row for row in ROWS if row in chosen]


def find_datasets(data: str | os.PathLike, names: Sequence[str] = DATASETS) -> tuple[dict[str, Path], dict[str, str]]:
    """Which Table 3 datasets are present under ``data``.

    ``data`` is a folder holding CTC dataset folders named as the challenge names them (``DIC-C2DH-HeLa/``,
    ``Fluo-N2DH-GOWT1/``, ``PhC-C2DH-U373/``), or one such dataset folder itself. A dataset is present when it has
    both training videos with tracking ground truth (``01``, ``01_GT/TRA``, ``02``, ``02_GT/TRA``).

    Returns:
        ``(present, missing)``: folders by dataset name, and the reason for each missing one.

    Raises:
        RshnError: If ``data`` is not a folder.
    """
    root = Path(data)
    if not root.is_dir():
        raise RshnError(f"{root}: --data must be a folder holding CTC datasets (e.g. DIC-C2DH-HeLa/01, 01_GT, ...)")
    present: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for name in names:
        folder = root if root.name == name else root / name
        needed = [folder / seq for seq in ("01", "02")] + [folder / f"{seq}_GT" / "TRA" for seq in ("01", "02")]
        absent = [path for path in needed if not path.is_dir()]
        if absent:
            missing[name] = f"{absent[0]} not found"
        else:
            present[name] = folder
    return present, missing


@dataclass
class Group:
    """The rows of one dataset that share a network: one experiment with one post-processing variant per row."""

    dataset: str
    rows: list[Row]
    experiment: Experiment


def row_config(dataset: str, row: Row, profile: Optional[str], overrides: Sequence[str], data: Path) -> Config:
    """The configuration of one cell of the table: dataset preset, row, profile, ``--set``, dataset folder."""
    return load_experiment_config(dataset, profile, overrides, data, layers=[row.preset])


def plan_table3(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    profile: Optional[str] = "cpu",
    overrides: Sequence[str] = (),
    rows: Optional[Sequence[str]] = None,
    datasets: Sequence[str] = DATASETS,
) -> tuple[list[Group], dict[str, str]]:
    """Lay out the Table 3 grid on the datasets present (nothing runs).

    Rows of a dataset are grouped by their configuration outside ``postprocessing``/``tracking``; each group is an
    experiment in ``OUT/DATASET/NETWORK`` whose variants are its rows.

    Returns:
        ``(groups, missing)``: the experiments, and the reasons why other Table 3 datasets are left out.
    """
    selected = select_rows(rows)
    present, missing = find_datasets(data, datasets)
    groups: list[Group] = []
    for dataset, folder in present.items():
        configs = {row.name: row_config(dataset, row, profile, overrides, folder) for row in selected}
        members: list[tuple[list[Row], Config]] = []
        for row in selected:
            config = configs[row.name]
            for group_rows, base in members:
                if not [k for k in changed_keys(base, config) if k.split(".")[0] not in ("postprocessing", "tracking")]:
                    group_rows.append(row)
                    break
            else:
                members.append(([row], config))
        used: set[str] = set()
        for group_rows, config in members:
            # the group's own post-processing: the dataset preset's (paper default h = 0.1) under the row's network
            base = _group_base(dataset, group_rows[0], profile, overrides, folder)
            name = base.model.architecture
            suffix = 2
            while name in used:
                name, suffix = f"{base.model.architecture}{suffix}", suffix + 1
            used.add(name)
            variants = {row.name: configs[row.name] for row in group_rows}
            experiment = experiment_plan(base, Path(out_dir) / dataset / name, variants)
            groups.append(Group(dataset, group_rows, experiment))
    return groups, missing


def _group_base(dataset: str, row: Row, profile: Optional[str], overrides: Sequence[str], data: Path) -> Config:
    """The row's configuration with the dataset preset's post-processing and tracking (no row layer there)."""
    config = row_config(dataset, row, profile, overrides, data)
    plain = load_experiment_config(dataset, profile, overrides, data)
    config.postprocessing = plain.postprocessing
    config.tracking = plain.tracking
    return config


def describe_table3(groups: Sequence[Group], missing: dict[str, str], out_dir: Path, profile: Optional[str]) -> str:
    """The ``--dry-run`` listing: every (dataset, row) cell with its experiment, then the steps of each experiment."""
    datasets = sorted({g.dataset for g in groups}, key=DATASETS.index)
    rows = [row for row in ROWS if any(row in g.rows for g in groups)]
    lines = [f"Table 3 grid in {out_dir} (profile {profile or 'none'}): {len(rows)} rows x {len(datasets)} "
             f"dataset(s) present ({', '.join(datasets) or 'none'})"]
    for name, reason in missing.items():
        lines.append(f"  missing {name}: {reason}")
    for dataset in datasets:
        for group in (g for g in groups if g.dataset == dataset):
            for row in group.rows:
                statuses = {s.step.name: s.state for s in group.experiment.plan.statuses()}
                own = [state for step, state in statuses.items() if f"[{row.name}," in step]
                state = "done" if own and all(s == "done" for s in own) else "todo"
                lines.append(f"  [{state}] {dataset:<16} {row.network:<10} {row.clustering:<10} "
                             f"-> {group.experiment.root} (variant {row.name})")
    for group in groups:
        lines.append("")
        lines.append(group.experiment.plan.describe())
    return "\n".join(lines)


def run_table3(
    data: str | os.PathLike,
    out_dir: str | os.PathLike = "runs/table3",
    profile: Optional[str] = "cpu",
    overrides: Sequence[str] = (),
    rows: Optional[Sequence[str]] = None,
    dry_run: bool = False,
    only: Sequence[str] = (),
) -> tuple[list[Group], Optional[dict[str, Any]], str]:
    """Run (or list) the Table 3 grid and write ``table3.md``, ``table3.csv``, ``table3.json`` and ``table3.png``.

    Args:
        only: Step-name patterns (see :meth:`rshn_tf.experiments.Plan.run`): run just those steps of every
            experiment (e.g. ``*fold1*``); the table is written once every step is done.

    Returns:
        ``(groups, table, text)``: the experiments, the table content (None for a dry run or while steps are left)
        and the text to print (the dry-run listing, the markdown table, or what is left to do).

    Raises:
        RshnError: If no Table 3 dataset is present, or from the experiments.
        StepInterrupted: When a training run was stopped by a signal (re-run to continue).
    """
    out_dir = Path(out_dir)
    groups, missing = plan_table3(data, out_dir, profile, overrides, rows)
    if not groups:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in missing.items())
        raise RshnError(f"none of the Table 3 datasets ({', '.join(DATASETS)}) is present in {data} ({reasons})")
    if dry_run:
        return groups, None, describe_table3(groups, missing, out_dir, profile)
    for group in groups:
        check_dataset(group.experiment.config, group.experiment.folds)
        for row in group.rows:  # before hours of training
            extras.require_for_config(group.experiment.variants[row.name], f"Table 3 row {row.name}",
                                      alternative=f"leave the row {row.name} out with --rows")
    skipped = plot_skipped()
    if skipped is not None:
        log.warning("%s will not be drawn: %s", out_dir / PLOT_FILE, skipped)
    with hold_run_folder(out_dir, only):
        for group in groups:
            log.info("Table 3: %s, %s (%s)", group.dataset, group.experiment.root.name,
                     ", ".join(row.name for row in group.rows))
            prepare_run_folder(group.experiment)
            plan = group.experiment.plan
            if only and not any(fnmatch.fnmatchcase(step.name, p) for step in plan.steps for p in only):
                continue
            plan.run(only)
        left = [f"{g.experiment.root}: {s.step.name}" for g in groups for s in g.experiment.plan.statuses()
                if s.state == "todo"]
        if left:
            return groups, None, (f"{len(left)} steps left to do (run without --only to finish):\n  "
                                  + "\n  ".join(left))
        table = collect_table(groups, profile)
        write_table(table, out_dir)
    return groups, table, table_markdown(table)


# --------------------------------------------------------------------------------------------------------------
# The table


def collect_table(groups: Sequence[Group], profile: Optional[str]) -> dict[str, Any]:
    """Our values (mean of both folds per dataset, and the mean over the datasets present) beside the paper's."""
    datasets = sorted({g.dataset for g in groups}, key=DATASETS.index)
    cells: dict[str, dict[str, Any]] = {}
    for group in groups:
        results = collect_results(group.experiment)
        for row in group.rows:
            variant = results["variants"][row.name]
            cells.setdefault(row.name, {})[group.dataset] = {
                "ours": {m: variant["mean"][key] for m, key in METRICS.items()},
                "cpu_seconds": cpu_seconds(group, row),
                "paper": paper_values(row, group.dataset),
                "folds": [{"fold": f["fold"], "test": f["test"], **{m: f[key] for m, key in METRICS.items()}}
                          for f in variant["folds"]],
                "run_folder": str(group.experiment.root),
            }
    rows = []
    for row in ROWS:
        if row.name not in cells:
            continue
        per_dataset = cells[row.name]
        overall_ours = {}
        for metric in METRICS:
            values = [per_dataset[d]["ours"][metric] for d in datasets if d in per_dataset]
            overall_ours[metric] = (sum(values) / len(values)
                                    if values and all(v is not None for v in values) else None)
        rows.append({
            "row": row.name, "network": row.network, "clustering": row.clustering, "datasets": per_dataset,
            "overall": {"ours": overall_ours, "paper": paper_values(row, OVERALL),
                        "datasets": [d for d in datasets if d in per_dataset]},
        })
    iterations = sorted({g.experiment.config.experiment.cv_iterations for g in groups})
    return {"profile": profile, "datasets": datasets, "cv_iterations": iterations, "rows": rows,
            "paper_overall_datasets": list(DATASETS)}


#: Step-name prefixes of the work a row's network costs (both folds), shared by the rows of one :class:`Group`.
NETWORK_STEPS = ("split[", "train[", "predict[")


def cpu_seconds(group: Group, row: Row) -> dict[str, Optional[float]]:
    """CPU seconds (all threads of the process, every run of a resumed step) from the steps' done-markers.

    Returns:
        ``network``: training and prediction of both folds, shared by the rows of the group; ``clustering``: the
        row's own re-clustering and scoring of the saved embeddings. None where a step was not timed.
    """
    plan = group.experiment.plan
    return {"network": plan.cpu_seconds(NETWORK_STEPS),
            "clustering": plan.cpu_seconds((f"postprocess[{row.name},", f"evaluate[{row.name},"))}


def _pair(ours: Optional[float], paper: Optional[float]) -> str:
    return f"{'n/a' if ours is None else f'{ours:.3f}'} ({'–' if paper is None else f'{paper:.3f}'})"


def table_markdown(table: dict[str, Any]) -> str:
    """Table 3 in the paper's layout; every cell ``ours (paper)``."""
    datasets = table["datasets"]
    header = ["Network", "Clustering"] + [f"{d} {m}" for d in datasets for m in METRICS] + \
             [f"Overall {m}" for m in METRICS]
    lines = [
        f"# Table 3 (profile {table['profile'] or 'none'}, {', '.join(map(str, table['cv_iterations']))} "
        "iterations per fold)",
        "",
        "Each cell: our value (the paper's value). Mean of both cross-validation folds (train on 01, evaluate on 02, "
        "and the reverse). OP = (SEG + TRA) / 2.",
        f"Our overall mean is over the datasets present ({', '.join(datasets)}); the paper's is over "
        f"{', '.join(table['paper_overall_datasets'])}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in table["rows"]:
        cells = [row["network"], row["clustering"]]
        for dataset in datasets:
            cell = row["datasets"].get(dataset)
            cells += [_pair(cell["ours"][m], cell["paper"][m]) if cell else "–" for m in METRICS]
        cells += [_pair(row["overall"]["ours"][m], row["overall"]["paper"][m]) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "CPU time of both folds (all threads). Rows of one network share its training and prediction; each row "
        "re-clusters and scores the saved embeddings itself.",
        "",
        "| Network | Clustering | Dataset | training + prediction | clustering + scoring |",
        "|---|---|---|---|---|",
    ]
    for row in table["rows"]:
        for dataset in datasets:
            cell = row["datasets"].get(dataset)
            if cell:
                cpu = cell.get("cpu_seconds") or {}
                lines.append(f"| {row['network']} | {row['clustering']} | {dataset} | {_duration(cpu.get('network'))}"
                             f" | {_duration(cpu.get('clustering'))} |")
    return "\n".join(lines) + "\n"


def _duration(seconds: Optional[float]) -> str:
    return "n/a" if seconds is None else format_seconds(seconds)


def table_csv(table: dict[str, Any]) -> str:
    """One line per row, dataset (or ``Overall``) and metric: ours, paper, and our per-fold values."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "network", "clustering", "dataset", "metric", "ours", "paper", "fold1", "fold2"])
    for row in table["rows"]:
        for dataset, cell in row["datasets"].items():
            for metric in METRICS:
                folds = [f[metric] for f in cell["folds"]]
                writer.writerow([row["row"], row["network"], row["clustering"], dataset, metric,
                                 _num(cell["ours"][metric]), _num(cell["paper"][metric])]
                                + [_num(v) for v in folds[:2]])
        for metric in METRICS:
            writer.writerow([row["row"], row["network"], row["clustering"], OVERALL, metric,
                             _num(row["overall"]["ours"][metric]), _num(row["overall"]["paper"][metric]), "", ""])
    return buffer.getvalue()


def _num(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def plot_skipped() -> Optional[str]:
    """Why ``table3.png`` cannot be drawn here (matplotlib, of the ``plot`` extra, is not installed), or None."""
    return None if extras.available("matplotlib") else str(extras.missing("matplotlib", PLOT_FEATURE))


def plot_table(table: dict[str, Any], path: Path) -> Path:
    """Bar chart: one panel per dataset present, for every row SEG, TRA and OP, ours (solid) beside the paper's
    (hatched). Written atomically.

    Raises:
        MissingPackage: Without matplotlib.
    """
    with extras.importing("matplotlib", PLOT_FEATURE):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    import numpy as np

    datasets = table["datasets"]
    rows = table["rows"]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(max(6.0, 1.3 * len(rows) + 2), 3.2 * len(datasets)),
                             squeeze=False)
    colours = {"SEG": "#4c72b0", "TRA": "#dd8452", "OP": "#55a868"}
    width = 0.13
    x = np.arange(len(rows))
    for ax, dataset in zip(axes[:, 0], datasets):
        for k, metric in enumerate(METRICS):
            ours = [r["datasets"].get(dataset, {}).get("ours", {}).get(metric) for r in rows]
            paper = [r["datasets"].get(dataset, {}).get("paper", {}).get(metric) for r in rows]
            offset = (k - 1) * 2 * width
            ax.bar(x + offset - width / 2, [v if v is not None else 0.0 for v in ours], width, color=colours[metric],
                   label=f"{metric} ours")
            ax.bar(x + offset + width / 2, [v if v is not None else 0.0 for v in paper], width, color="white",
                   edgecolor=colours[metric], hatch="///", label=f"{metric} paper")
        ax.set_xticks(x, [f"{r['network']}\n{textwrap.fill(r['clustering'], 18)}" for r in rows], fontsize=8)
        ax.set_ylim(0.0, 1.2)  # the legend sits above 1.0, clear of the bars
        ax.set_yticks(np.linspace(0.0, 1.0, 6))
        ax.set_title(f"{dataset} (profile {table['profile'] or 'none'})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(ncol=6, fontsize=7, loc="upper center")
    fig.tight_layout()
    try:
        with atomic_file(path, suffix=Path(path).suffix) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)


def write_table(table: dict[str, Any], out_dir: Path) -> None:
    """Write ``table3.md``, ``table3.csv``, ``table3.json`` and ``table3.png`` into ``out_dir``.

    Without matplotlib (the ``plot`` extra) the bar chart is skipped with a warning and an older ``table3.png`` is
    removed; the table files are written all the same.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "table3.md", table_markdown(table))
    write_text_atomic(out_dir / "table3.csv", table_csv(table))
    write_json_atomic(out_dir / "table3.json", table)
    plot = out_dir / PLOT_FILE
    skipped = plot_skipped()
    if skipped is None:
        plot_table(table, plot)
        return
    plot.unlink(missing_ok=True)  # it would show the numbers of an earlier table
    log.warning("%s not drawn: %s", plot, skipped)
