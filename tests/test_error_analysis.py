"""Tests of the gold-cell error analysis (rshn_tf.error_analysis) and ``rshn evaluate --errors``.

Every expected count is written down from the construction of the frame, not computed by the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctc_submission.writer import write_ctc_result
from data_io.ctc import write_tiff
from rshn_tf.cli import EXIT_USER_ERROR, main
from rshn_tf.error_analysis import classify_frame, count_errors, format_errors
from rshn_tf.errors import RshnError
from tests import cases
from tests.test_evaluation import write_gt

SHAPE = (40, 60)


def catalogue_frame() -> tuple[np.ndarray, np.ndarray]:
    """One frame with one gold cell of every kind (gold ids deliberately not consecutive).

    * 3, 9: touching 10 x 10 squares that one result instance covers together (IoU 100 / 200 = 0.5 each: merged);
    * 20: copied exactly (matched, IoU 1);
    * 21: a 10 x 10 square above 20's row, whose instance is 10 x 12 over it (matched, IoU 100 / 120);
    * 40: cut into three result pieces of 40, 30 and 30 pixels (best < half, three cover > 20 %: split);
    * 41: only a 2 x 2 result instance on it (missed), 200: no result at all (missed);
    * one result instance on the background only (unmatched).
    """
    gold = np.zeros(SHAPE, np.int32)
    result = np.zeros(SHAPE, np.int32)
    gold[5:15, 5:15], gold[5:15, 15:25] = 3, 9
    result[5:15, 5:25] = 1
    gold[25:35, 5:15] = result[25:35, 5:15] = 20
    gold[15:25, 30:40] = 21
    result[15:25, 30:42] = 2
    gold[25:35, 30:40] = 40
    result[25:35, 30:34], result[25:35, 34:37], result[25:35, 37:40] = 5, 6, 7
    gold[25:35, 45:55] = 41
    result[25:27, 45:47] = 8
    gold[2:8, 40:50] = 200
    result[36:40, 0:10] = 9
    return result, gold


def test_every_kind_of_gold_cell_is_sorted_by_construction():
    result, gold = catalogue_frame()
    counts = classify_frame(result, gold)
    ious = counts.pop("matched_ious")
    assert counts == {"cells": 7, "matched": 2, "merged": 2, "split": 1, "missed": 2, "unmatched_results": 1}
    assert sorted(ious) == pytest.approx([100 / 120, 1.0])


def test_a_perfect_result_matches_every_cell_and_an_empty_one_misses_them():
    _, gold = catalogue_frame()
    perfect = classify_frame(gold * 2, gold)
    assert (perfect["cells"], perfect["matched"], perfect["unmatched_results"]) == (8 - 1, 7, 0)
    assert perfect["matched_ious"] == [1.0] * 7
    empty = classify_frame(np.zeros_like(gold), gold)
    assert (empty["missed"], empty["matched"], empty["unmatched_results"]) == (7, 0, 0)


def test_an_iou_of_exactly_one_half_is_not_a_match():
    gold = np.zeros((4, 8), np.int32)
    gold[:, :4] = 1
    result = np.zeros_like(gold)
    result[:, :8] = 1  # covers the cell and as much background: IoU 16 / 32
    assert classify_frame(result, gold)["missed"] == 1
    result[:, 7] = 0  # IoU 16 / 28
    assert classify_frame(result, gold)["matched"] == 1


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="differs"):
        classify_frame(np.zeros((3, 4), np.int32), np.zeros((4, 3), np.int32))


def write_frames(folder, name, frames):
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in frames.items():
        write_tiff(folder / name.format(t), frame.astype(np.uint16))
    return folder


def test_counts_are_summed_over_the_seg_frames_of_a_folder(tmp_path):
    result, gold = catalogue_frame()
    gt = write_frames(tmp_path / "01_GT" / "SEG", "man_seg{:03d}.tif", {1: gold, 4: gold})
    res = write_frames(tmp_path / "01_RES", "mask{:03d}.tif", {0: result, 1: result, 4: gold, 5: result})
    errors = count_errors(res, gt.parent)
    assert errors == {"cells": 14, "matched": 2 + 7, "merged": 2, "split": 1, "missed": 2, "unmatched_results": 1,
                      "mean_matched_iou": pytest.approx((1.0 + 100 / 120 + 7.0) / 9)}
    assert format_errors(errors) == ("14 gold cells: 9 matched (mean IoU 0.98), 2 merged, 1 split, 2 missed; "
                                     "1 result instances off the gold cells")


def test_bad_folders_name_the_file_and_the_problem(tmp_path):
    result, gold = catalogue_frame()
    gt = write_frames(tmp_path / "01_GT" / "SEG", "man_seg{:03d}.tif", {2: gold}).parent
    res = write_frames(tmp_path / "01_RES", "mask{:03d}.tif", {0: result})
    with pytest.raises(RshnError, match=r"mask002\.tif: result mask missing for the gold SEG frame"):
        count_errors(res, gt)
    write_tiff(res / "mask002.tif", result[:, :50].astype(np.uint16))
    with pytest.raises(RshnError, match=r"mask002\.tif: frame size \(40, 50\) differs"):
        count_errors(res, gt)
    with pytest.raises(RshnError, match="no SEG/man_segNNN.tif"):
        count_errors(res, tmp_path / "nope")
    write_tiff(gt / "SEG" / "man_seg_002_010.tif", gold.astype(np.uint16))
    with pytest.raises(RshnError, match=r"man_seg_002_010\.tif: not a 2-D SEG file"):
        count_errors(res, gt)


def test_cli_reports_the_errors_beside_the_scores(tmp_path, capsys):
    case = cases.division()
    gt = write_gt(tmp_path / "01_GT", case.expected, case.tracks)
    merged = case.expected.copy()
    merged[13:][merged[13:] == 3] = 2  # the daughters become one instance from frame 13 (a SEG frame) on
    tracks = case.tracks.copy()
    tracks[2] = (3, 12, 12, 1)  # so daughter 3 only lives in frame 12
    res = write_ctc_result(tmp_path / "01_RES", merged, tracks)
    assert main(["evaluate", str(res), str(gt), "--errors", "--json"]) == 0
    errors = json.loads(capsys.readouterr().out)["errors"]
    assert {k: errors[k] for k in ("cells", "matched", "merged")} == {"cells": 4, "matched": 2, "merged": 2}
    assert main(["evaluate", str(res), str(gt), "--errors"]) == 0
    assert "4 gold cells: 2 matched (mean IoU 1.00), 2 merged, 0 split, 0 missed" in capsys.readouterr().out
    assert main(["evaluate", str(res), str(tmp_path / "nope"), "--errors"]) == EXIT_USER_ERROR


def test_embedding_separation_reports_the_cosines_of_touching_gold_pairs(tmp_path):
    """benchmarks/embedding_separation.py: cells 1, 2 touch and share a direction (cosine 1) and the result merges
    them; cells 3, 4 touch with directions at 60 degrees (cosine 0.5) and are separated; cell 5 touches nobody."""
    from benchmarks.embedding_separation import measure, touching_pairs

    gold = np.zeros(SHAPE, np.int32)
    gold[2:10, 2:10], gold[2:10, 10:18] = 1, 2
    gold[20:30, 2:10], gold[20:30, 11:18] = 3, 4  # one background column between them: within 2 px
    gold[20:30, 40:50] = 5
    assert touching_pairs(gold) == [(1, 2), (3, 4)]
    directions = np.zeros((5, 16))
    directions[0, 1] = directions[1, 1] = 1.0
    directions[2, 2] = 1.0
    directions[3, 2], directions[3, 3] = 0.5, np.sqrt(0.75)
    directions[4, 4] = 1.0
    labels = np.stack([gold, gold])
    emb = tmp_path / "emb"
    emb.mkdir()
    for pair in range(3):
        np.save(emb / f"pair_{pair:03d}.npy", cases.embeddings_from_labels(labels, directions))
    result = gold.copy()
    result[result == 2] = 1
    write_frames(tmp_path / "RES", "mask{:03d}.tif", {t: result for t in range(4)})
    gt = write_frames(tmp_path / "GT" / "SEG", "man_seg{:03d}.tif", {0: gold, 3: gold}).parent
    values = measure(emb, tmp_path / "RES", gt)
    np.testing.assert_allclose(values["merged"], [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(values["separated"], [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(values["tightness"], np.ones(10), atol=1e-6)
