"""``rshn table3``: ``collect_table`` / ``write_table`` on hand-made scores (values computed by hand), and every row
end to end on a tiny synthetic dataset named like a Table 3 dataset."""

from __future__ import annotations

import csv
import io
import json
import logging
import math

import pytest

from rshn_tf import table3
from rshn_tf.cli import main
from rshn_tf.extras import MissingPackage
from rshn_tf.table3 import (DATASETS, METRICS, PAPER_TABLE3, ROWS, collect_table, plan_table3, plot_table,
                            table_markdown, write_table)


def _fake_ctc(root, names):
    """Dataset folders that pass the checks of the grid and of an experiment (sequences and tracking ground truth,
    no frames)."""
    for name in names:
        for seq in ("01", "02"):
            (root / name / seq).mkdir(parents=True)
            (root / name / f"{seq}_GT" / "TRA").mkdir(parents=True)
            (root / name / f"{seq}_GT" / "TRA" / "man_track.txt").write_text("1 0 1 0\n")
    return root


#: Hand-made fold scores per (dataset, row): (SEG, TRA, OP_CTB) of fold1 (test 02) and fold2 (test 01).
FOLDS = {
    ("DIC-C2DH-HeLa", "rshn_h0.1"): ((0.70, 0.90, 0.80), (0.60, 0.80, 0.70)),
    ("DIC-C2DH-HeLa", "rshn_hdbscan"): ((0.50, 0.70, 0.60), (0.30, 0.90, 0.60)),
    ("DIC-C2DH-HeLa", "volumetric_h0.1"): ((0.40, 0.60, 0.50), (0.20, 0.40, 0.30)),
    ("PhC-C2DH-U373", "rshn_h0.1"): ((0.80, 1.00, 0.90), (0.60, 0.60, 0.60)),
    ("PhC-C2DH-U373", "rshn_hdbscan"): ((0.10, 0.30, 0.20), (0.30, 0.50, 0.40)),
    ("PhC-C2DH-U373", "volumetric_h0.1"): ((0.90, 0.70, 0.80), (0.70, 0.90, 0.80)),
    ("DIC-C2DH-HeLa", "shn_h0.1"): ((0.30, 0.50, 0.40), (0.10, 0.70, 0.40)),
    ("PhC-C2DH-U373", "shn_h0.1"): ((0.50, 0.90, 0.70), (0.30, 0.30, 0.30)),
}


def _fake_results(experiment):
    dataset = experiment.config.data.dataset
    variants = {}
    for name in experiment.variants:
        folds = [{"fold": fold, "train": [train], "test": test, "result": "x",
                  **dict(zip(("SEG", "TRA", "OP_CTB"), scores))}
                 for (fold, train, test), scores in zip((("fold1", "01", "02"), ("fold2", "02", "01")),
                                                        FOLDS[(dataset, name)])]
        mean = {key: sum(f[key] for f in folds) / 2 for key in ("SEG", "TRA", "OP_CTB")}
        variants[name] = {"folds": folds, "mean": mean}
    return {"variants": variants}


def test_collect_and_write_table_with_known_scores(tmp_path, monkeypatch):
    data = _fake_ctc(tmp_path / "ctc", ["DIC-C2DH-HeLa", "PhC-C2DH-U373"])
    groups, _ = plan_table3(data, tmp_path / "t3", "cpu", rows=["rshn_h0.1", "rshn_hdbscan", "volumetric_h0.1"])
    monkeypatch.setattr(table3, "collect_results", _fake_results)
    table = collect_table(groups, "cpu")
    assert table["datasets"] == ["DIC-C2DH-HeLa", "PhC-C2DH-U373"]
    assert [r["row"] for r in table["rows"]] == ["rshn_h0.1", "rshn_hdbscan", "volumetric_h0.1"]
    by_row = {r["row"]: r for r in table["rows"]}
    # means of the two folds, by hand
    assert by_row["rshn_h0.1"]["datasets"]["DIC-C2DH-HeLa"]["ours"] == pytest.approx(
        {"SEG": 0.65, "TRA": 0.85, "OP": 0.75})
    assert by_row["rshn_hdbscan"]["datasets"]["PhC-C2DH-U373"]["ours"] == pytest.approx(
        {"SEG": 0.20, "TRA": 0.40, "OP": 0.30})
    # overall = mean over the two datasets present: rshn_h0.1 SEG (0.65 + 0.70) / 2, TRA (0.85 + 0.80) / 2, ...
    assert by_row["rshn_h0.1"]["overall"]["ours"] == pytest.approx({"SEG": 0.675, "TRA": 0.825, "OP": 0.75})
    assert by_row["volumetric_h0.1"]["overall"]["ours"] == pytest.approx({"SEG": 0.55, "TRA": 0.65, "OP": 0.6})
    assert by_row["volumetric_h0.1"]["overall"]["paper"] == dict(zip(METRICS, PAPER_TABLE3["volumetric_h0.1"][
        "Overall"]))
    assert by_row["rshn_hdbscan"]["datasets"]["DIC-C2DH-HeLa"]["folds"][1] == pytest.approx(
        {"fold": "fold2", "test": "01", "SEG": 0.30, "TRA": 0.90, "OP": 0.60})

    out = tmp_path / "written"
    write_table(table, out)
    markdown = (out / "table3.md").read_text()
    assert ("| RSHN | h = 0.1 | 0.650 (0.780) | 0.850 (0.924) | 0.750 (0.852) | 0.700 (0.748) | 0.800 (0.951) | "
            "0.750 (0.849) | 0.675 (0.768) | 0.825 (0.951) | 0.750 (0.859) |") in markdown
    lines = list(csv.reader(io.StringIO((out / "table3.csv").read_text())))
    assert ["volumetric_h0.1", "Volumetric", "h = 0.1", "DIC-C2DH-HeLa", "TRA", "0.5000", "0.9180", "0.6000",
            "0.4000"] in lines
    assert ["rshn_hdbscan", "RSHN", "HDBSCAN", "Overall", "SEG", "0.3000", "0.7580", "", ""] in lines
    assert len(lines) == 1 + 3 * (2 + 1) * 3
    assert json.loads((out / "table3.json").read_text())["rows"][0]["overall"]["ours"]["SEG"] == pytest.approx(0.675)
    # without step markers (scores made by hand) the CPU time is unknown, not zero
    assert "| RSHN | h = 0.1 | PhC-C2DH-U373 | n/a | n/a |" in markdown
    assert by_row["rshn_h0.1"]["datasets"]["DIC-C2DH-HeLa"]["cpu_seconds"] == {"network": None, "clustering": None}
    assert (out / "table3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["table3.csv", "table3.json", "table3.md", "table3.png"]


def test_without_matplotlib_the_table_is_written_and_the_chart_skipped(tmp_path, monkeypatch, capsys, caplog,
                                                                       hide_package):
    """The chart is an extra (``plot``): the table files are written all the same, an older chart (of other numbers)
    is removed, and the log and the command line say how to get it."""
    data = _fake_ctc(tmp_path / "ctc", ["DIC-C2DH-HeLa"])
    groups, _ = plan_table3(data, tmp_path / "t3", "cpu", rows=["rshn_h0.1"])
    monkeypatch.setattr(table3, "collect_results", _fake_results)
    table = collect_table(groups, "cpu")
    out = tmp_path / "written"
    out.mkdir()
    (out / "table3.png").write_bytes(b"the chart of an earlier table")
    hide_package("matplotlib")
    with pytest.raises(MissingPackage, match=r"the Table 3 bar chart \(table3.png\) needs the 'matplotlib' package"):
        plot_table(table, out / "chart.png")
    with caplog.at_level(logging.WARNING, logger="rshn_tf.table3"):
        write_table(table, out)
    assert sorted(p.name for p in out.iterdir()) == ["table3.csv", "table3.json", "table3.md"]
    assert 'table3.png not drawn: the Table 3 bar chart (table3.png) needs the \'matplotlib\' package' in caplog.text

    monkeypatch.setattr(table3, "run_table3", lambda *args, **kwargs: (groups, table, table_markdown(table)))
    assert main(["table3", "--data", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (f"wrote {out / 'table3.md'}, table3.csv, table3.json; table3.png not drawn: the Table 3 bar chart "
            "(table3.png) needs the 'matplotlib' package, which is not installed; install it with pip install "
            '"rshn-tf[plot]" (in a source checkout: pip install ".[plot]"), then run this command again') in printed


def test_the_extra_shn_row_has_our_values_and_no_paper_values(tmp_path, monkeypatch):
    data = _fake_ctc(tmp_path / "ctc", ["DIC-C2DH-HeLa", "PhC-C2DH-U373"])
    groups, _ = plan_table3(data, tmp_path / "t3", "cpu", rows=["shn", "rshn_h0.1"])
    assert {g.experiment.config.model.architecture for g in groups} == {"rshn", "shn"}  # its own networks
    monkeypatch.setattr(table3, "collect_results", _fake_results)
    table = collect_table(groups, "cpu")
    assert [r["row"] for r in table["rows"]] == ["rshn_h0.1", "shn_h0.1"]  # Table 3's rows first
    shn = table["rows"][1]
    # DIC (0.30 + 0.10) / 2, PhC (0.50 + 0.30) / 2, overall their mean
    assert shn["overall"]["ours"] == pytest.approx({"SEG": 0.30, "TRA": 0.60, "OP": 0.45})
    assert shn["overall"]["paper"] == {"SEG": None, "TRA": None, "OP": None}
    out = tmp_path / "written"
    write_table(table, out)
    assert ("| SHN | h = 0.1 (§5.1 network; not in Table 3) | 0.200 (–) | 0.600 (–) | 0.400 (–) | 0.400 (–) | "
            "0.600 (–) | 0.500 (–) | 0.300 (–) | 0.600 (–) | 0.450 (–) |") in (out / "table3.md").read_text()
    lines = list(csv.reader(io.StringIO((out / "table3.csv").read_text())))
    assert ["shn_h0.1", "SHN", "h = 0.1 (§5.1 network; not in Table 3)", "Overall", "OP", "0.4500", "", "", ""] in lines


def test_a_missing_score_stays_empty_and_the_overall_mean_too(tmp_path, monkeypatch):
    data = _fake_ctc(tmp_path / "ctc", ["DIC-C2DH-HeLa"])
    groups, _ = plan_table3(data, tmp_path / "t3", "cpu", rows=["rshn_h0.1"])

    def results(experiment):
        found = _fake_results(experiment)
        found["variants"]["rshn_h0.1"]["mean"]["SEG"] = None
        return found

    monkeypatch.setattr(table3, "collect_results", results)
    table = collect_table(groups, None)
    assert table["rows"][0]["overall"]["ours"]["SEG"] is None
    assert "| n/a (0.780) |" in table3.table_markdown(table)


TABLE3_BUDGET = [
    "data.resampled_size=null", "data.tile_size=[64, 64]", "data.sequence_length=3", "data.border_band=0",
    "data.num_workers=1", "data.seg_sample_fraction=1.0", "model.levels=3", "model.filters=8",
    "model.embedding_size=8", "loss.max_instances=4", "loss.neighbour_radius=20", "inference.tile_overlap=32",
    "inference.full_frame=true", "postprocessing.min_size=20", "postprocessing.hdbscan_min_cluster_size=20",
    "tracking.parent_search_frames=2", "training.checkpoint_every=50", "training.log_every=20",
    "training.image_every=0", "training.learning_rate=0.005", "experiment.cv_iterations=200",
]


@pytest.mark.slow
def test_table3_runs_every_row_end_to_end_on_a_tiny_budget(tmp_path, synthetic_dataset):
    """The synthetic dataset (24 frames of 128 x 128) under the name DIC-C2DH-HeLa with a tiny network, 200
    iterations per fold (with 100 the volumetric row's result was not a valid CTC result for py-ctcmetrics, with 60
    the RSHN rows' neither: an undertrained network gives one whole-frame instance)."""
    import shutil

    data = tmp_path / "ctc"
    shutil.copytree(synthetic_dataset, data / "DIC-C2DH-HeLa")
    out = tmp_path / "t3"
    args = ["table3", "--data", str(data), "--out", str(out), "--profile", "cpu"]
    for item in TABLE3_BUDGET:
        args += ["--set", item]
    assert main(args) == 0
    table = json.loads((out / "table3.json").read_text())
    assert [r["row"] for r in table["rows"]] == [row.name for row in ROWS]
    assert table["datasets"] == ["DIC-C2DH-HeLa"] and table["cv_iterations"] == [200]
    for row in table["rows"]:
        cell = row["datasets"]["DIC-C2DH-HeLa"]
        for metric in METRICS:
            for value in (cell["ours"][metric], row["overall"]["ours"][metric], *[f[metric] for f in cell["folds"]]):
                assert isinstance(value, float) and 0.0 <= value <= 1.0 and not math.isnan(value), (row["row"], metric)
    markdown, cpu_table = (out / "table3.md").read_text().split("CPU time of both folds")
    body = [line for line in markdown.splitlines() if line.startswith(("| RSHN", "| Volumetric", "| SHN"))]
    assert len(body) == len(ROWS) and not any("n/a" in line for line in body)
    # CPU time from the step markers: one network per group, shared by its rows; each row's own clustering
    cpu = {row["row"]: row["datasets"]["DIC-C2DH-HeLa"]["cpu_seconds"] for row in table["rows"]}
    assert all(c["network"] > 0 and c["clustering"] > 0 for c in cpu.values())
    assert len({cpu[name]["network"] for name in cpu if name.startswith("rshn")}) == 1
    assert cpu["rshn_h0.1"]["network"] != cpu["volumetric_h0.1"]["network"]
    cpu_lines = [line for line in cpu_table.splitlines() if "| DIC-C2DH-HeLa |" in line]
    assert len(cpu_lines) == len(ROWS) and not any("n/a" in line for line in cpu_lines)
    lines = list(csv.reader(io.StringIO((out / "table3.csv").read_text())))
    assert len(lines) == 1 + len(ROWS) * 2 * 3 and all(line[5] for line in lines[1:])
    # the extra SHN row (paper §5.1) is marked and has no paper values; every Table 3 row has them
    assert [line[6] == "" for line in lines[1:]] == [line[0] == "shn_h0.1" for line in lines[1:]]
    shn = next(line for line in body if line.startswith("| SHN"))
    assert "not in Table 3" in shn and shn.count("(–)") == 2 * len(METRICS)
    assert (out / "table3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(DATASETS) >= set(table["datasets"])
