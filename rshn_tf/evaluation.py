"""Validating and scoring CTC result folders with py-ctcmetrics (paper §3.2: SEG, TRA and OP = (SEG + TRA) / 2).

py-ctcmetrics prints progress to stdout and reports validation problems as warnings; both are captured here, so
callers (``rshn evaluate --json``) get clean output and one clear error message.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rshn_tf.errors import RshnError

#: Scores reported by :func:`evaluate_result`, in table order (OP_CTB = mean of SEG and TRA, the paper's OP).
REPORTED = ("SEG", "TRA", "DET", "OP_CTB")


def _result_files(res_dir: Path) -> list[Path]:
    if not res_dir.is_dir():
        raise RshnError(f"{res_dir}: result folder not found")
    if not (res_dir / "res_track.txt").is_file():
        raise RshnError(f"{res_dir}: no res_track.txt; not a CTC result folder")
    masks = sorted(res_dir.glob("mask*.tif"))
    if not masks:
        raise RshnError(f"{res_dir}: no mask*.tif files; not a CTC result folder")
    return masks


def validate_result(res_dir: str | os.PathLike, threads: int = 1) -> None:
    """Check a result folder with py-ctcmetrics' validator (CTC rules: unique labels, parents end before their
    children begin, every track present in exactly its frames, …).

    Args:
        res_dir: Folder with ``maskNNN.tif`` and ``res_track.txt``.
        threads: Worker processes of py-ctcmetrics (0 = all CPUs).

    Raises:
        RshnError: If the folder is missing, incomplete or invalid; the message lists the validator's findings.
    """
    from ctc_metrics import validate_sequence

    res_dir = Path(res_dir)
    _result_files(res_dir)
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        try:
            result = validate_sequence(str(res_dir), threads=threads)
        except Exception as exc:  # py-ctcmetrics asserts and raises on malformed folders
            raise RshnError(f"{res_dir}: py-ctcmetrics could not read the result ({type(exc).__name__}: {exc})") from exc
    if not result.get("Valid"):
        problems = sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)})
        shown = "; ".join(problems[:10]) + (f"; … {len(problems) - 10} more" if len(problems) > 10 else "")
        raise RshnError(f"{res_dir}: not a valid CTC result: {shown or 'rejected by py-ctcmetrics'}")


def evaluate_result(
    res_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    metrics: Sequence[str] = ("SEG", "TRA", "DET"),
    threads: int = 1,
    validate: bool = True,
) -> dict[str, float | None]:
    """Validate a result folder, then score it against CTC ground truth with py-ctcmetrics.

    Args:
        res_dir: Result folder (``maskNNN.tif`` + ``res_track.txt``).
        gt_dir: Ground-truth folder ``0X_GT`` holding ``TRA/`` (``man_trackNNN.tif`` + ``man_track.txt``) and,
            for SEG, ``SEG/man_segNNN.tif``.
        metrics: py-ctcmetrics metric names to compute (``SEG``, ``TRA``, ``DET``, …).
        threads: Worker processes of py-ctcmetrics (0 = all CPUs).
        validate: Run :func:`validate_result` first (skip only for SEG-only scoring of reference masks).

    Returns:
        Scores by name: the requested metrics plus ``OP_CTB`` when both SEG and TRA are computed. SEG (and OP_CTB)
        is ``None`` when the ground truth has no SEG folder. A result without any instance (which py-ctcmetrics
        cannot read) scores 0 in every measure, as the CTC definitions give.

    Raises:
        RshnError: If the ground truth or result folder is missing or incomplete, a file in them is unreadable or of
            the wrong size (named in the message), or the result is invalid.
    """
    from ctc_metrics import evaluate_sequence

    res_dir, gt_dir = Path(res_dir), Path(gt_dir)
    masks = _result_files(res_dir)
    tra = gt_dir / "TRA"
    if not gt_dir.is_dir():
        raise RshnError(f"{gt_dir}: ground-truth folder not found (expected a CTC 0X_GT folder with TRA/ and SEG/)")
    if not (tra / "man_track.txt").is_file():
        raise RshnError(f"{gt_dir}: no TRA/man_track.txt; give the CTC ground-truth folder 0X_GT")
    gt_frames = sorted(tra.glob("man_track*.tif"))
    if len(gt_frames) != len(masks):
        raise RshnError(f"{res_dir}: {len(masks)} result masks but {len(gt_frames)} ground-truth frames in {tra}")
    _check_files(res_dir, masks, gt_dir, gt_frames)
    metrics = list(dict.fromkeys(metrics))
    has_seg = (gt_dir / "SEG").is_dir() and any((gt_dir / "SEG").glob("man_seg*.tif"))
    requested = [m for m in metrics if has_seg or m != "SEG"]
    if _is_empty(res_dir, masks):
        return _empty_scores(metrics, requested)
    if validate:
        validate_result(res_dir, threads=threads)
    scores: dict[str, float | None] = {}
    if requested:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                raw = evaluate_sequence(str(res_dir), str(gt_dir), metrics=requested, threads=threads)
            except Exception as exc:
                raise RshnError(f"{res_dir}: py-ctcmetrics failed to score against {gt_dir} "
                                f"({type(exc).__name__}: {exc})") from exc
        if "Valid" in raw and not raw["Valid"]:
            raise RshnError(f"{res_dir}: not a valid CTC result (py-ctcmetrics)")
        scores.update({k: (None if raw.get(k) is None else float(raw[k])) for k in requested})
        if "OP_CTB" in raw and raw["OP_CTB"] is not None:
            scores["OP_CTB"] = float(raw["OP_CTB"])
    for m in metrics:
        scores.setdefault(m, None)
    if "SEG" in metrics and "TRA" in metrics:
        scores.setdefault("OP_CTB", None)
    return scores


def _check_files(res_dir: Path, masks: list[Path], gt_dir: Path, gt_frames: list[Path]) -> None:
    """Read every file py-ctcmetrics will read with rshn's own readers, so that a broken one is named with its
    problem (unreadable TIFF, not 2-D, not integer labels, a frame size that differs, a bad track file line)
    instead of surfacing as a py-ctcmetrics error or a label mismatch.

    Raises:
        RshnError: Naming the first bad file.
    """
    from data_io.ctc import read_label_image, read_track_file

    read_track_file(gt_dir / "TRA" / "man_track.txt")
    read_track_file(res_dir / "res_track.txt")
    reference = gt_frames[0]
    shape = read_label_image(reference, np.uint16).shape
    seg_files = sorted((gt_dir / "SEG").glob("man_seg*.tif")) if (gt_dir / "SEG").is_dir() else []
    for path in gt_frames[1:] + seg_files + masks:
        image = read_label_image(path, np.int64 if path in masks else np.uint16)
        if image.shape != shape:
            raise RshnError(f"{path}: frame size {image.shape} differs from the ground truth's {shape} "
                            f"({reference}); results must have the size of the original frames")


def _is_empty(res_dir: Path, masks: list[Path]) -> bool:
    """Whether a result has no track at all (empty ``res_track.txt`` and only background in every mask)."""
    from data_io.ctc import read_tiff

    if (res_dir / "res_track.txt").read_text(encoding="utf-8").strip():
        return False
    return all(not read_tiff(mask).any() for mask in masks)


def _empty_scores(metrics: Sequence[str], requested: Sequence[str]) -> dict[str, float | None]:
    """Scores of a result without a single instance, which py-ctcmetrics cannot read: by the CTC definitions
    (Ulman et al. 2017) every measure is 0. SEG: no ground-truth object is matched; DET and TRA: turning the empty
    graph into the ground truth costs exactly AOGM_0, the cost of building it from nothing."""
    scores: dict[str, float | None] = {m: (0.0 if m in requested else None) for m in metrics}
    if "SEG" in metrics and "TRA" in metrics:
        scores["OP_CTB"] = 0.0 if "SEG" in requested else None
    return scores


def format_scores(scores: dict[str, Any], as_json: bool = False) -> str:
    """Render scores as a two-column table (``n/a`` for missing values) or as JSON (which may hold nested values,
    e.g. the ``errors`` of ``rshn evaluate --errors``)."""
    if as_json:
        return json.dumps(scores, indent=2)
    order = [k for k in REPORTED if k in scores] + [k for k in scores if k not in REPORTED]
    width = max([len("metric")] + [len(k) for k in order])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {'n/a' if scores[k] is None else f'{scores[k]:.4f}'}" for k in order]
    return "\n".join(lines)
