"""Tests of validation and scoring with py-ctcmetrics (rshn_tf.evaluation) and the ``rshn evaluate`` verb."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctc_submission.writer import write_ctc_result
from data_io.ctc import write_tiff, write_track_file
from rshn_tf.cli import EXIT_USER_ERROR, main
from rshn_tf.errors import RshnError
from rshn_tf.evaluation import evaluate_result, format_scores, validate_result
from tests import cases

SEG_FRAMES = (2, 8, 13)


def write_gt(folder, labels, tracks, seg_frames=SEG_FRAMES):
    """A CTC 0X_GT folder whose TRA markers are the full masks and whose SEG covers ``seg_frames``."""
    (folder / "TRA").mkdir(parents=True)
    for t, frame in enumerate(labels):
        write_tiff(folder / "TRA" / f"man_track{t:03d}.tif", frame.astype(np.uint16))
    write_track_file(folder / "TRA" / "man_track.txt", tracks)
    if seg_frames:
        (folder / "SEG").mkdir()
        for t in seg_frames:
            write_tiff(folder / "SEG" / f"man_seg{t:03d}.tif", labels[t].astype(np.uint16))
    return folder


def seg_reference(gt: np.ndarray, res: np.ndarray) -> float:
    """CTC SEG in float64: per GT object the IoU with the result object covering more than half of it, else 0."""
    values = []
    for g, r in zip(gt, res):
        for label in np.unique(g)[1:]:
            obj = g == label
            under, counts = np.unique(r[obj], return_counts=True)
            best = under[np.argmax(counts)]
            if best == 0 or counts.max() <= 0.5 * obj.sum():
                values.append(0.0)
                continue
            other = r == best
            values.append(np.logical_and(obj, other).sum() / np.logical_or(obj, other).sum())
    return float(np.mean(values))


@pytest.fixture
def division_gt(tmp_path):
    case = cases.division()
    return case, write_gt(tmp_path / "01_GT", case.expected, case.tracks)


def test_a_perfect_result_scores_one(division_gt, tmp_path):
    case, gt = division_gt
    res = write_ctc_result(tmp_path / "01_RES", case.expected, case.tracks)
    scores = evaluate_result(res, gt)
    assert scores == {"SEG": 1.0, "TRA": 1.0, "DET": 1.0, "OP_CTB": 1.0}


def test_seg_matches_a_float64_reference_and_op_is_the_mean(division_gt, tmp_path):
    case, gt = division_gt
    res_labels = case.expected.copy()
    res_labels[8][:, :36] = 0          # cut away the left part of the mother in frame 8
    res_labels[13][res_labels[13] == 2] = 0
    res_labels[13][25:40, 20:30] = 2   # a poor daughter
    res = write_ctc_result(tmp_path / "01_RES", res_labels, case.tracks)
    scores = evaluate_result(res, gt)
    gt_seg = np.stack([case.expected[t] for t in SEG_FRAMES])
    expected = seg_reference(gt_seg, np.stack([res_labels[t] for t in SEG_FRAMES]))
    assert scores["SEG"] == pytest.approx(expected, abs=1e-9)
    assert 0 < scores["SEG"] < 1 and scores["TRA"] < 1
    assert scores["OP_CTB"] == pytest.approx((scores["SEG"] + scores["TRA"]) / 2)


def test_missing_ground_truth_and_result_folders_fail_clearly(tmp_path, division_gt):
    case, gt = division_gt
    res = write_ctc_result(tmp_path / "01_RES", case.expected, case.tracks)
    with pytest.raises(RshnError, match="ground-truth folder not found"):
        evaluate_result(res, tmp_path / "nope_GT")
    (tmp_path / "empty_GT").mkdir()
    with pytest.raises(RshnError, match="no TRA/man_track.txt"):
        evaluate_result(res, tmp_path / "empty_GT")
    with pytest.raises(RshnError, match="result folder not found"):
        evaluate_result(tmp_path / "missing_RES", gt)
    short = write_ctc_result(tmp_path / "short_RES", case.expected[:5], [[1, 0, 4, 0]])
    with pytest.raises(RshnError, match="5 result masks but 15 ground-truth frames"):
        evaluate_result(short, gt)


def test_without_seg_ground_truth_seg_is_not_available(tmp_path):
    case = cases.one_cell()
    gt = write_gt(tmp_path / "01_GT", case.expected, case.tracks, seg_frames=())
    res = write_ctc_result(tmp_path / "01_RES", case.expected, case.tracks)
    assert evaluate_result(res, gt) == {"SEG": None, "TRA": 1.0, "DET": 1.0, "OP_CTB": None}


def test_an_invalid_result_is_rejected_with_the_validators_reason(tmp_path, division_gt):
    case, gt = division_gt
    labels = case.expected.copy()
    labels[12:][labels[12:] == 2] = 1   # the mother continues after its daughter 3 starts
    tracks = np.array([[1, 0, 14, 0], [3, 12, 14, 1]])
    res = write_ctc_result(tmp_path / "01_RES", labels, tracks)
    with pytest.raises(RshnError, match="Parent ends after child starts"):
        validate_result(res)
    with pytest.raises(RshnError, match="not a valid CTC result"):
        evaluate_result(res, gt)


def test_cli_prints_a_table_or_clean_json(division_gt, tmp_path, capsys):
    case, gt = division_gt
    res = write_ctc_result(tmp_path / "01_RES", case.expected, case.tracks)
    assert main(["evaluate", str(res), str(gt), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == {"SEG": 1.0, "TRA": 1.0, "DET": 1.0, "OP_CTB": 1.0}
    assert main(["evaluate", str(res), str(gt)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2:] == ["SEG     1.0000", "TRA     1.0000", "DET     1.0000", "OP_CTB  1.0000"]
    assert main(["evaluate", str(res), str(tmp_path / "nope")]) == EXIT_USER_ERROR
    assert "ground-truth folder not found" in capsys.readouterr().err


def test_format_scores_marks_missing_values():
    text = format_scores({"SEG": None, "TRA": 0.5})
    assert "SEG     n/a" in text and "TRA     0.5000" in text


def test_an_empty_result_scores_zero_as_the_ctc_definitions_give(division_gt, tmp_path):
    case, gt = division_gt
    res = write_ctc_result(tmp_path / "01_RES", np.zeros_like(case.expected), np.zeros((0, 4), np.int64))
    assert evaluate_result(res, gt) == {"SEG": 0.0, "TRA": 0.0, "DET": 0.0, "OP_CTB": 0.0}
    # one detected cell is no longer empty: py-ctcmetrics scores it
    labels = np.zeros_like(case.expected)
    labels[0][case.expected[0] == 1] = 1
    res = write_ctc_result(tmp_path / "02_RES", labels, np.array([[1, 0, 0, 0]]))
    scores = evaluate_result(res, gt)
    assert 0.0 < scores["DET"] < 1.0 and 0.0 < scores["TRA"] < 1.0
