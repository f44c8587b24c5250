"""Why gold cells score badly: sort every gold SEG cell into matched, merged, split or missed.

The CTC SEG measure averages the Jaccard index of the gold cells and gives 0 to every cell without a result instance
covering more than half of it; it does not say whether such a cell was merged with a neighbour, split, or not found.
:func:`count_errors` sorts each gold cell of the SEG frames into one category by its best-overlapping result
instance (the one sharing most pixels with it):

* ``matched``: the best instance has a Jaccard index (IoU) above 0.5 with the cell;
* ``merged``: not matched, and the best instance covers more than 20 % of at least two gold cells (it swallowed a
  neighbour, the error of a network whose embeddings do not separate touching cells);
* ``split``: not matched, the best instance covers less than half of the cell and at least two instances each cover
  more than 20 % of it;
* ``missed``: all other cells (no instance overlaps, or the best one is far too small or too large).

Result instances with less than 20 % of their pixels on gold cells are counted as ``unmatched_results``: false
positives where the gold truth segments every cell of a frame, but also the cells annotators left out where it does
not (e.g. Fluo-N2DL-HeLa, whose SEG frames are partial).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from rshn_tf.errors import RshnError

__all__ = ["CATEGORIES", "classify_frame", "count_errors", "format_errors", "seg_frames"]

#: Categories of a gold cell, in report order.
CATEGORIES = ("matched", "merged", "split", "missed")

#: A Jaccard index above this matches a gold cell (as the CTC SEG criterion's > 0.5 of the cell, but symmetric).
MATCH_IOU = 0.5
#: An instance "covers" a cell when it holds more than this fraction of the cell's pixels.
COVER_FRACTION = 0.2
#: A result instance with less than this fraction of its pixels on gold cells is unmatched.
ON_GOLD_FRACTION = 0.2

_SEG_FILE = re.compile(r"^man_seg(\d+)\.tif$")


def classify_frame(result: np.ndarray, gold: np.ndarray) -> dict[str, int | list[float]]:
    """Sort the gold cells of one frame (see the module docstring).

    Args:
        result: Result instance labels (0 = background), any integer dtype.
        gold: Gold SEG labels of the same shape (0 = background or not annotated).

    Returns:
        Counts per category of :data:`CATEGORIES`, ``cells`` (gold cells), ``unmatched_results`` and
        ``matched_ious`` (the Jaccard index of every matched cell).

    Raises:
        ValueError: If the shapes differ.
    """
    if result.shape != gold.shape:
        raise ValueError(f"result shape {result.shape} differs from the gold truth's {gold.shape}")
    gold_ids, gold_index = np.unique(gold, return_inverse=True)
    result_ids, result_index = np.unique(result, return_inverse=True)
    gold_index, result_index = gold_index.ravel(), result_index.ravel()
    overlap = np.bincount(gold_index * len(result_ids) + result_index,
                          minlength=len(gold_ids) * len(result_ids)).reshape(len(gold_ids), len(result_ids))
    gold_start = 1 if gold_ids[0] == 0 else 0
    result_start = 1 if result_ids[0] == 0 else 0
    on_gold = overlap[gold_start:, result_start:]  # gold cells x result instances, background removed
    gold_size = overlap[gold_start:].sum(axis=1)
    result_size = overlap[:, result_start:].sum(axis=0)
    covers = on_gold > COVER_FRACTION * gold_size[:, None]
    counts: dict[str, int | list[float]] = {name: 0 for name in CATEGORIES}
    ious: list[float] = []
    for cell in range(on_gold.shape[0]):
        row = on_gold[cell]
        if row.size == 0 or row.max() == 0:
            counts["missed"] += 1
            continue
        best = int(np.argmax(row))
        iou = row[best] / (gold_size[cell] + result_size[best] - row[best])
        if iou > MATCH_IOU:
            counts["matched"] += 1
            ious.append(float(iou))
        elif covers[:, best].sum() >= 2:
            counts["merged"] += 1
        elif row[best] < 0.5 * gold_size[cell] and covers[cell].sum() >= 2:
            counts["split"] += 1
        else:
            counts["missed"] += 1
    counts["cells"] = int(on_gold.shape[0])
    counts["unmatched_results"] = int((on_gold.sum(axis=0) < ON_GOLD_FRACTION * result_size).sum())
    counts["matched_ious"] = ious
    return counts


def seg_frames(res_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The gold SEG frames of ``gt_dir`` with the result masks of ``res_dir`` for the same frames.

    Args:
        res_dir: Result folder with ``maskNNN.tif`` (frame numbers as in the ground truth).
        gt_dir: Ground-truth folder ``0X_GT`` with ``SEG/man_segNNN.tif``.

    Yields:
        ``(frame, gold, result)``: the frame number and both label images as int64.

    Raises:
        RshnError: If there is no SEG frame, a SEG file is a 3-D slice annotation (``man_seg_TTT_ZZZ.tif``; checked
            before any frame is read), the result mask of a SEG frame is missing, or a file is unreadable or of
            another size (named in the message).
    """
    from data_io.ctc import read_label_image

    res_dir, gt_dir = Path(res_dir), Path(gt_dir)
    seg_dir = gt_dir / "SEG"
    seg_files = sorted(seg_dir.glob("man_seg*.tif")) if seg_dir.is_dir() else []
    if not seg_files:
        raise RshnError(f"{gt_dir}: no SEG/man_segNNN.tif; the error analysis needs gold segmentation masks")
    digits = [_SEG_FILE.match(seg_file.name) for seg_file in seg_files]
    for seg_file, match in zip(seg_files, digits):
        if match is None:
            raise RshnError(f"{seg_file}: not a 2-D SEG file man_segNNN.tif (slice annotations of 3-D data are not "
                            f"supported)")
    for seg_file, match in zip(seg_files, digits):
        frame = int(match.group(1))
        candidates = [res_dir / f"mask{frame:0{width}d}.tif" for width in (len(match.group(1)), 3, 4)]
        mask = next((path for path in candidates if path.is_file()), None)
        if mask is None:
            raise RshnError(f"{candidates[0]}: result mask missing for the gold SEG frame {seg_file}")
        gold = read_label_image(seg_file, np.int64)
        result = read_label_image(mask, np.int64)
        if result.shape != gold.shape:
            raise RshnError(f"{mask}: frame size {result.shape} differs from the gold truth's {gold.shape} "
                            f"({seg_file})")
        yield frame, gold, result


def count_errors(res_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> dict[str, int | float | None]:
    """Sort the gold cells of every SEG frame of ``gt_dir`` against the masks of ``res_dir`` (:func:`seg_frames`).

    Returns:
        ``cells`` and the counts of :data:`CATEGORIES` summed over the SEG frames, ``unmatched_results``, and
        ``mean_matched_iou`` (None without a matched cell).

    Raises:
        RshnError: As :func:`seg_frames`.
    """
    totals: dict[str, int] = {name: 0 for name in ("cells",) + CATEGORIES + ("unmatched_results",)}
    ious: list[float] = []
    for _, gold, result in seg_frames(res_dir, gt_dir):
        frame = classify_frame(result, gold)
        ious += frame.pop("matched_ious")
        for name, value in frame.items():
            totals[name] += value
    return {**totals, "mean_matched_iou": float(np.mean(ious)) if ious else None}


def format_errors(errors: dict[str, int | float | None]) -> str:
    """One line: ``N gold cells: M matched (mean IoU x), ... merged, ... split, ... missed; K result instances off the
    gold cells``."""
    iou = errors["mean_matched_iou"]
    matched = f"{errors['matched']} matched" + ("" if iou is None else f" (mean IoU {iou:.2f})")
    return (f"{errors['cells']} gold cells: {matched}, {errors['merged']} merged, {errors['split']} split, "
            f"{errors['missed']} missed; {errors['unmatched_results']} result instances off the gold cells")
