"""Reading and writing the Cell Tracking Challenge (CTC) folder format.

Layout of a CTC dataset folder (``DATASET/``)::

    01/t000.tif ...                      raw frames (3 or 4 digits)
    01_GT/TRA/man_track000.tif ...       tracking markers, one id per track
    01_GT/TRA/man_track.txt              one line "L B E P" per track
    01_GT/SEG/man_seg006.tif ...         full segmentation on some frames
    01_ST/SEG/man_seg000.tif ...         silver truth (optional)
    01_RES/mask000.tif + res_track.txt   a result folder

The module reads a sequence with its ground truth (:func:`load_sequence`), raw frames alone (:func:`load_frames`,
or one at a time with :func:`list_frames` and :func:`read_frame`) and result folders (:func:`load_result`), checks
them for consistency and merges TRA and SEG ground truth into one label video with consistent ids (paper section
4.2; authors' ``main_preprocess.py``). Every problem a user can cause raises :class:`~rshn_tf.errors.RshnError` with
one message naming the file or folder. It must not import TensorFlow.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tifffile

from rshn_tf.atomic import atomic_file, atomic_folder
from rshn_tf.errors import RshnError

logger = logging.getLogger(__name__)

TRACK_COLUMNS = ("L", "B", "E", "P")
FRAME_DIGITS = (3, 4)
"""Digit counts CTC uses in frame file names (4 only for videos with more than 1000 frames)."""

#: File names of the CTC layout: raw frames, TRA and SEG ground truth, result masks (group 1: the frame number).
RAW_PATTERN = re.compile(r"t(\d+)\.tif")
TRA_PATTERN = re.compile(r"man_track(\d+)\.tif")
SEG_PATTERN = re.compile(r"man_seg(\d+)\.tif")
MASK_PATTERN = re.compile(r"mask(\d+)\.tif")
_SEQ_PATTERN = re.compile(r"\d{2}")
_MAX_LISTED = 10


# ----------------------------------------------------------------------------------------------------------------
# Low-level file helpers
# ----------------------------------------------------------------------------------------------------------------


def read_tiff(path: str | os.PathLike) -> np.ndarray:
    """Read a single-page TIFF image.

    Args:
        path: File to read.

    Returns:
        The image array in its stored dtype.

    Raises:
        RshnError: If the file is missing or cannot be decoded as a TIFF.
    """
    path = Path(path)
    if not path.is_file():
        raise RshnError(f"{path}: file not found")
    try:
        with tifffile.TiffFile(path) as tiff:
            if not tiff.pages:  # tifffile returns an empty array for a file whose page directory is missing
                raise RshnError(f"{path}: unreadable TIFF (no image pages; the file may be truncated)")
            return tiff.asarray()
    except RshnError:
        raise
    except Exception as exc:  # tifffile raises several types for broken files
        raise RshnError(f"{path}: unreadable TIFF ({type(exc).__name__}: {exc})") from exc


def write_tiff(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an image as a compressed single-page TIFF (zlib), the way CTC tools expect.

    The file is written next to the target under a temporary name and then renamed, so an interrupted write never
    leaves a half-written TIFF behind.

    Args:
        path: Destination file.
        image: 2-D array; written in its dtype.
    """
    with atomic_file(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(image), compression="zlib")


def read_track_file(path: str | os.PathLike) -> np.ndarray:
    """Read a CTC track file (``man_track.txt`` or ``res_track.txt``).

    Every non-empty line must hold four integers ``L B E P``: track label, first frame, last frame, parent label
    (0 = no parent). Spaces or tabs separate the fields. The content is not checked here; see :func:`check_tracks`.

    Args:
        path: The track file.

    Returns:
        Array of shape (N, 4), dtype int64, rows in file order.

    Raises:
        RshnError: If the file is missing or a line is not four integers.
    """
    path = Path(path)
    if not path.is_file():
        raise RshnError(f"{path}: track file not found")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                values = [int(field) for field in fields]
            except ValueError:
                values = []
            if len(values) != 4 or len(fields) != 4:
                raise RshnError(f"{path}, line {number}: expected 4 integers 'L B E P', got {line.strip()!r}")
            rows.append(values)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


def write_track_file(path: str | os.PathLike, tracks: np.ndarray) -> None:
    """Write a CTC track file, one ``L B E P`` line per row, sorted by label.

    Written under a temporary name next to the target and renamed, so the file is never half-written.

    Args:
        path: Destination file.
        tracks: Array-like of shape (N, 4) of non-negative integers.
    """
    path = Path(path)
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    tracks = tracks[np.argsort(tracks[:, 0], kind="stable")]
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        for label, begin, end, parent in tracks:
            handle.write(f"{label} {begin} {end} {parent}\n")


def check_tracks(tracks: np.ndarray, path: str | os.PathLike, num_frames: int | None = None) -> None:
    """Check the content of a track table read by :func:`read_track_file`.

    Rules (CTC format): labels are positive and unique; ``0 <= B <= E``; ``E < num_frames`` when given; a non-zero
    parent is a label of the same file and ends before its child begins.

    Args:
        tracks: Array (N, 4) of rows ``L B E P``.
        path: The file the rows came from (named in error messages).
        num_frames: Number of frames of the video, if known.

    Raises:
        RshnError: On the first rule that is broken, naming the file and the track.
    """
    path = Path(path)
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    labels, begins, ends, parents = tracks.T
    for name, column, minimum in (("label L", 0, 1), ("first frame B", 1, 0), ("parent P", 3, 0)):
        bad = np.flatnonzero(tracks[:, column] < minimum)
        if bad.size:
            row = tracks[bad[0]]
            raise RshnError(f"{path}: track row {_row(row)} has {name} = {row[column]}, which must be >= {minimum}")
    unique, counts = np.unique(labels, return_counts=True)
    if np.any(counts > 1):
        raise RshnError(f"{path}: duplicate track labels {_fmt(unique[counts > 1])}; every label must appear once")
    bad = np.flatnonzero(begins > ends)
    if bad.size:
        label, begin, end, _ = tracks[bad[0]]
        raise RshnError(f"{path}: track {label} begins at frame {begin} after it ends at frame {end} (B > E)")
    if num_frames is not None:
        bad = np.flatnonzero(ends >= num_frames)
        if bad.size:
            label, _, end, _ = tracks[bad[0]]
            raise RshnError(f"{path}: track {label} ends at frame {end}, but the sequence has only {num_frames} "
                            f"frames (0..{num_frames - 1})")
    has_parent = np.flatnonzero(parents > 0)
    known = np.isin(parents[has_parent], labels)
    if not np.all(known):
        label, _, _, parent = tracks[has_parent[~known][0]]
        raise RshnError(f"{path}: track {label} has parent {parent}, which is not a track label in this file")
    end_of = dict(zip(labels.tolist(), ends.tolist()))
    for index in has_parent:
        label, begin, _, parent = tracks[index].tolist()
        if end_of[parent] >= begin:
            raise RshnError(f"{path}: track {label} begins at frame {begin} but its parent {parent} ends at frame "
                            f"{end_of[parent]}; a parent must end before its child begins")


# ----------------------------------------------------------------------------------------------------------------
# Data containers
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeIssue:
    """A SEG object that could not simply take the id of the TRA marker it overlaps most.

    Attributes:
        frame: Frame index.
        source: ``"GT"`` (``0X_GT/SEG``) or ``"ST"`` (``0X_ST/SEG``).
        seg_label: The object's label in the SEG file.
        kind: ``"no_marker"`` (the object overlaps no TRA marker) or ``"duplicate"`` (another SEG object overlaps
            the same best marker more and kept its id).
        new_id: The fresh id the object received (above every track id, unique within the sequence).
        marker: The contested TRA id for ``"duplicate"``; 0 for ``"no_marker"``.
        overlap: Pixels shared with ``marker`` (0 for ``"no_marker"``).
    """

    frame: int
    source: str
    seg_label: int
    kind: str
    new_id: int
    marker: int = 0
    overlap: int = 0


@dataclass
class Sequence:
    """One CTC video with whatever ground truth exists for it.

    Attributes:
        dataset_dir: The dataset folder (e.g. ``.../DIC-C2DH-HeLa``).
        seq: Sequence name, two digits (``"01"``).
        frames: Raw frames (T, H, W) in their stored dtype, or None when loaded without the raw folder.
        frame_paths: The raw frame files in frame order (empty without raw frames).
        digits: Digit count of the frame numbers in the input file names (3 or 4).
        tra: TRA markers (T, H, W) uint16, or None without ``0X_GT/TRA``.
        seg: Frame index -> SEG mask (H, W) uint16 with the labels of the SEG file (not relabelled).
        tracks: Rows ``L B E P`` of ``man_track.txt``, (N, 4) int64; (0, 4) without TRA ground truth.
        merged: Merged ground truth (T, H, W) uint16: TRA markers, overwritten on SEG frames by the SEG objects
            carrying the id of the marker they overlap most (see :func:`merge_seg_into_tra`); None without TRA.
        complete_seg_frames: Sorted SEG frame indices in which every TRA label of the frame received a SEG object.
        unsegmented: SEG frame index -> sorted TRA labels of that frame that received no SEG object.
        has_gt: True when TRA ground truth was loaded.
        silver_seg: Frame index -> silver-truth SEG (H, W) uint16 relabelled to TRA ids like the merged GT
            (only with ``load_silver=True`` and an existing ``0X_ST/SEG``; empty otherwise).
        merge_issues: SEG objects (GT and ST) that got a fresh id instead of a TRA id; see :class:`MergeIssue`.
    """

    dataset_dir: Path
    seq: str
    frames: np.ndarray | None
    frame_paths: list[Path]
    digits: int
    tra: np.ndarray | None = None
    seg: dict[int, np.ndarray] = field(default_factory=dict)
    tracks: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    merged: np.ndarray | None = None
    complete_seg_frames: list[int] = field(default_factory=list)
    unsegmented: dict[int, list[int]] = field(default_factory=dict)
    has_gt: bool = False
    silver_seg: dict[int, np.ndarray] = field(default_factory=dict)
    merge_issues: list[MergeIssue] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        """Number of frames T (from the raw frames, else from the TRA ground truth)."""
        return int(self._stack.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Frame size (H, W)."""
        return tuple(int(size) for size in self._stack.shape[1:3])

    def seg_frames_with_coverage(self, min_coverage: float) -> list[int]:
        """SEG frames in which at least ``min_coverage`` of the frame's TRA labels received a SEG object.

        ``min_coverage=1.0`` gives :attr:`complete_seg_frames`. A lower value admits frames where annotators left a
        few markers unsegmented (the authors' hand-made frame list marks such frames as complete).

        Args:
            min_coverage: Fraction in [0, 1].

        Returns:
            Sorted frame indices (empty without TRA ground truth).
        """
        if self.tra is None:
            return []
        frames = []
        for t, missing in sorted(self.unsegmented.items()):
            markers = _present_labels(self.tra[t]).size
            if markers == 0 or (markers - len(missing)) / markers >= min_coverage:
                frames.append(t)
        return frames

    @property
    def _stack(self) -> np.ndarray:
        return self.frames if self.frames is not None else self.tra


@dataclass
class Result:
    """A CTC result folder (``0X_RES``).

    Attributes:
        res_dir: The folder.
        labels: Instance labels (T, H, W) int32.
        tracks: Rows ``L B E P`` of ``res_track.txt``, (N, 4) int64.
        digits: Digit count of the mask file names (3 or 4).
        mask_paths: The mask files in frame order.
    """

    res_dir: Path
    labels: np.ndarray
    tracks: np.ndarray
    digits: int
    mask_paths: list[Path]


class LoadedFrames(NamedTuple):
    """Raw frames of one sequence folder: ``frames, paths, digits = load_frames(folder)``."""

    frames: np.ndarray
    paths: list[Path]
    digits: int


class FrameFiles(NamedTuple):
    """The raw frame files of one sequence folder, indexed but not decoded (see :func:`list_frames`)."""

    paths: list[Path]
    digits: int
    shape: tuple[int, int]
    dtype: np.dtype


# ----------------------------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------------------------


def list_sequences(dataset_dir: str | os.PathLike, *, require_frames: bool = True,
                   require_gt: bool = False) -> list[str]:
    """List the sequences of a CTC dataset folder.

    A sequence ``NN`` is present when the folder ``NN/`` (raw frames) or ``NN_GT/`` exists.

    Args:
        dataset_dir: The dataset folder.
        require_frames: Only list sequences with a raw frame folder ``NN/``.
        require_gt: Only list sequences with tracking ground truth ``NN_GT/TRA``.

    Returns:
        Sorted two-digit sequence names, e.g. ``["01", "02"]``.

    Raises:
        RshnError: If ``dataset_dir`` is not a folder.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise RshnError(f"{dataset_dir}: dataset folder not found")
    names = set()
    for entry in dataset_dir.iterdir():
        if entry.is_dir():
            stem = entry.name[:-3] if entry.name.endswith("_GT") else entry.name
            if _SEQ_PATTERN.fullmatch(stem):
                names.add(stem)
    if require_frames:
        names = {name for name in names if (dataset_dir / name).is_dir()}
    if require_gt:
        names = {name for name in names if (dataset_dir / f"{name}_GT" / "TRA").is_dir()}
    return sorted(names)


def load_frames(seq_dir: str | os.PathLike) -> LoadedFrames:
    """Load the raw frames ``tNNN.tif`` of one sequence folder (no ground truth), e.g. for prediction.

    Args:
        seq_dir: The sequence folder (``DATASET/01``).

    Returns:
        ``(frames, paths, digits)``: frames (T, H, W) in their stored dtype, the files in frame order and the digit
        count of their numbers.

    Raises:
        RshnError: If the folder is missing or empty, frame numbers have gaps or mixed digit counts, or a frame is
            unreadable, not 2-D, holds NaN or infinite values, or differs in shape or dtype from the first frame.
    """
    seq_dir = Path(seq_dir)
    if not seq_dir.is_dir():
        raise RshnError(f"{seq_dir}: sequence folder not found")
    paths, digits = _index_video(seq_dir, RAW_PATTERN, "t", "raw frame")
    return LoadedFrames(_read_raw_stack(paths), paths, digits)


def numbered_files(folder: str | os.PathLike, pattern: re.Pattern) -> list[str]:
    """The frame numbers (as written, with their digits) of the files in ``folder`` whose names match ``pattern``
    (e.g. :data:`RAW_PATTERN`), sorted; empty when the folder does not exist. Unlike :func:`list_frames` nothing is
    checked: this is for reports that list what is there."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(m.group(1) for m in (pattern.fullmatch(p.name) for p in folder.iterdir()) if m)


def count_frames(seq_dir: str | os.PathLike) -> int:
    """Number of raw frames ``tNNN.tif`` in a sequence folder (0 if it does not exist)."""
    return len(numbered_files(seq_dir, RAW_PATTERN))


def list_frames(seq_dir: str | os.PathLike) -> FrameFiles:
    """Index the raw frames ``tNNN.tif`` of a sequence folder and check their headers, without decoding the pixels.

    For streaming readers (``rshn predict`` holds only a few frames at a time): every problem :func:`load_frames`
    would find in the file names, shapes or dtypes is found here before any frame is read; read each frame later
    with :func:`read_frame`.

    Args:
        seq_dir: The sequence folder (``DATASET/01``).

    Returns:
        ``(paths, digits, shape, dtype)`` of the frames, in frame order.

    Raises:
        RshnError: If the folder is missing or empty, frame numbers have gaps or mixed digit counts, a file is
            not a readable 2-D TIFF of the first frame's shape and dtype, or a float frame holds NaN or infinite
            values (float frames are read once here for that check).
    """
    seq_dir = Path(seq_dir)
    if not seq_dir.is_dir():
        raise RshnError(f"{seq_dir}: sequence folder not found")
    paths, digits = _index_video(seq_dir, RAW_PATTERN, "t", "raw frame")
    first_shape, first_dtype = _tiff_header(paths[0])
    for path in paths[1:]:
        shape, dtype = _tiff_header(path)
        if shape != first_shape:
            raise RshnError(f"{path}: frame shape {shape} differs from {paths[0].name} {first_shape}")
        if dtype != first_dtype:
            raise RshnError(f"{path}: frame dtype {dtype} differs from {paths[0].name} ({first_dtype})")
    if np.issubdtype(first_dtype, np.inexact):  # only float frames can hold NaN/Inf: check them before any work
        for index, path in enumerate(paths):
            read_frame(path, index)
    return FrameFiles(paths, digits, first_shape, first_dtype)


def read_frame(path: str | os.PathLike, index: int | None = None) -> np.ndarray:
    """Read one raw 2-D frame (see :func:`list_frames`).

    Args:
        path: The frame file.
        index: Its frame number, named in errors.

    Raises:
        RshnError: If the file is missing, unreadable, not 2-D or holds NaN or infinite values.
    """
    image = _read_2d(Path(path))
    check_finite_frame(image, path, index)
    return image


def check_finite_frame(image: np.ndarray, path: str | os.PathLike, index: int | None = None) -> None:
    """Reject a raw frame holding NaN or infinite values (they would silently turn whole tiles into background).

    Raises:
        RshnError: Naming the file, the frame number and how many pixels are affected.
    """
    if not np.issubdtype(image.dtype, np.inexact):
        return
    bad = int(image.size - np.count_nonzero(np.isfinite(image)))
    if bad:
        frame = "" if index is None else f"frame {index} "
        raise RshnError(f"{path}: {frame}holds {bad} NaN or infinite pixel value(s) of {image.size}; every "
                        f"intensity must be a finite number (repair or replace the frame)")


def load_sequence(dataset_dir: str | os.PathLike, seq: str | int, *, require_frames: bool = True,
                  load_silver: bool = False) -> Sequence:
    """Load one CTC sequence with its ground truth, check it and merge TRA and SEG.

    Works with raw frames only (challenge data), with TRA but no SEG, and on ground truth alone
    (``require_frames=False``). SEG without TRA is loaded but cannot be merged (``merged`` stays None).

    Merging (paper section 4.2; docs/fidelity.md §3.1): the merged frame is the TRA frame; on a frame with a
    SEG file every SEG object takes the TRA id it overlaps most and its pixels overwrite the merged frame, so
    unsegmented cells keep their marker. Conflicts the authors' code does not handle are resolved as described in
    :func:`merge_seg_into_tra` and listed in ``Sequence.merge_issues`` (with one warning in the log).

    Args:
        dataset_dir: The dataset folder holding ``NN/``, ``NN_GT/``, ``NN_ST/``.
        seq: Sequence name (``"01"`` or ``1``).
        require_frames: Raise if the raw frame folder ``NN/`` is absent. With False, a missing ``NN/`` gives a
            ground-truth-only sequence (``frames`` None); frames are still loaded when the folder exists.
        load_silver: Also load ``NN_ST/SEG`` into ``silver_seg`` (relabelled to TRA ids); stays empty when the
            folder does not exist.

    Returns:
        The loaded :class:`Sequence`.

    Raises:
        RshnError: For a missing folder, broken or inconsistent files (frame numbering, shapes, dtypes, track file
            content, TRA labels that disagree with ``man_track.txt``, SEG files for frames that do not exist).
    """
    dataset_dir = Path(dataset_dir)
    seq = f"{seq:02d}" if isinstance(seq, int) else str(seq)
    if not dataset_dir.is_dir():
        raise RshnError(f"{dataset_dir}: dataset folder not found")
    seq_dir, gt_dir = dataset_dir / seq, dataset_dir / f"{seq}_GT"
    tra_dir, seg_dir, st_dir = gt_dir / "TRA", gt_dir / "SEG", dataset_dir / f"{seq}_ST" / "SEG"

    frames, frame_paths, digits = None, [], 0
    if seq_dir.is_dir():
        frames, frame_paths, digits = load_frames(seq_dir)
    elif require_frames:
        raise RshnError(f"{seq_dir}: raw frame folder of sequence {seq} not found; training needs the frames "
                        f"tNNN.tif of every sequence it uses (check --data, data.train_sequences and "
                        f"training.validation_sequences)")
    elif not gt_dir.is_dir():
        raise RshnError(f"{dataset_dir}: sequence {seq} has neither a raw frame folder {seq}/ nor ground truth "
                        f"{seq}_GT/")

    sequence = Sequence(dataset_dir=dataset_dir, seq=seq, frames=frames, frame_paths=list(frame_paths),
                        digits=digits)
    if tra_dir.is_dir():
        tra_paths, tra_digits = _index_video(tra_dir, TRA_PATTERN, "man_track", "TRA mask")
        if frames is not None and len(tra_paths) != len(frame_paths):
            raise RshnError(f"{tra_dir}: {len(tra_paths)} TRA masks but {len(frame_paths)} raw frames in {seq_dir}")
        sequence.tra = _read_label_stack(tra_paths, np.uint16, expected_shape=_frame_shape(frames),
                                         shape_source=seq_dir)
        sequence.tracks = read_track_file(tra_dir / "man_track.txt")
        check_tracks(sequence.tracks, tra_dir / "man_track.txt", num_frames=len(tra_paths))
        _check_labels_match_tracks(sequence.tra, tra_paths, sequence.tracks, tra_dir / "man_track.txt")
        sequence.has_gt = True
        sequence.digits = digits or tra_digits
    elif frames is None:
        raise RshnError(f"{tra_dir}: TRA ground truth not found, and there are no raw frames in {seq_dir}; "
                        f"cannot load sequence {seq}")

    num_frames = sequence.num_frames
    if seg_dir.is_dir():
        sequence.seg = _read_sparse_labels(seg_dir, num_frames, sequence.shape)
    if load_silver and st_dir.is_dir():
        sequence.silver_seg = _read_sparse_labels(st_dir, num_frames, sequence.shape)

    if sequence.tra is None:
        if sequence.seg or sequence.silver_seg:
            logger.warning("%s: no TRA ground truth, so SEG masks keep their file labels and are not merged", gt_dir)
        return sequence

    fresh_id = int(sequence.tracks[:, 0].max(initial=0)) + 1
    sequence.merged = sequence.tra.copy()
    for t in sorted(sequence.seg):
        relabelled, issues, fresh_id = merge_seg_into_tra(sequence.seg[t], sequence.tra[t], fresh_id,
                                                          frame=t, source="GT")
        objects = relabelled > 0
        sequence.merged[t][objects] = relabelled[objects]
        sequence.merge_issues.extend(issues)
        markers = _present_labels(sequence.tra[t])
        missing = np.setdiff1d(markers, relabelled[objects])
        sequence.unsegmented[t] = missing.tolist()
        if missing.size == 0:
            sequence.complete_seg_frames.append(t)
    for t in sorted(sequence.silver_seg):
        sequence.silver_seg[t], issues, fresh_id = merge_seg_into_tra(sequence.silver_seg[t], sequence.tra[t],
                                                                      fresh_id, frame=t, source="ST")
        sequence.merge_issues.extend(issues)
    _log_merge_issues(sequence.merge_issues, gt_dir)
    logger.info("%s sequence %s: %d frames of %dx%d, %d tracks, %d SEG frames (%d complete)", dataset_dir, seq,
                num_frames, *sequence.shape, len(sequence.tracks), len(sequence.seg),
                len(sequence.complete_seg_frames))
    return sequence


def clip_tracks(tracks: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Track rows ``L B E P`` of the frames ``start … stop - 1``, renumbered from frame 0.

    Tracks outside the range are dropped, the others clipped to it; a parent that ends before ``start`` is
    dropped too, so its children get parent 0.

    Args:
        tracks: (N, 4) rows ``L B E P``.
        start: First frame kept.
        stop: One past the last frame kept.

    Returns:
        (M, 4) int64 rows, in the input order.
    """
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    kept = tracks[(tracks[:, 2] >= start) & (tracks[:, 1] < stop)].copy()
    kept[:, 1] = np.maximum(kept[:, 1], start) - start
    kept[:, 2] = np.minimum(kept[:, 2], stop - 1) - start
    kept[~np.isin(kept[:, 3], kept[:, 0]), 3] = 0
    return kept


def write_time_window(dataset_dir: str | os.PathLike, seq: str | int, start: int, stop: int,
                      out_dir: str | os.PathLike) -> Path:
    """Write frames ``start … stop - 1`` of a sequence with their ground truth as a CTC dataset of their own.

    ``OUT/SEQ/tNNN.tif`` (copies of the raw files), ``OUT/SEQ_GT/TRA`` (markers and :func:`clip_tracks`) and
    ``OUT/SEQ_GT/SEG`` (the SEG files in the range), all renumbered from frame 0, so that a model trained on the
    other frames (``data.train_frames``) can be predicted and scored on these like on a sequence it never saw. The
    folder is written beside ``OUT`` under a temporary name and renamed into place.

    Args:
        dataset_dir: The dataset folder.
        seq: The sequence (e.g. ``"01"``).
        start: First frame written.
        stop: One past the last frame written.
        out_dir: Dataset folder to create (must not exist).

    Returns:
        ``out_dir``.

    Raises:
        RshnError: If the range is empty or leaves the sequence, ``out_dir`` exists, or the sequence cannot be loaded.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise RshnError(f"{out_dir}: already exists; remove it to write the frames {start}-{stop - 1} again")
    sequence = load_sequence(dataset_dir, seq)
    if not 0 <= start < stop <= sequence.num_frames:
        raise RshnError(f"{Path(dataset_dir) / sequence.seq}: frames [{start}, {stop}) are not a non-empty range of "
                        f"its {sequence.num_frames} frames")
    if sequence.tra is None:
        raise RshnError(f"{Path(dataset_dir) / (sequence.seq + '_GT') / 'TRA'}: tracking ground truth not found")
    digits = sequence.digits
    with atomic_folder(out_dir) as tmp:
        raw, tra, seg = tmp / sequence.seq, tmp / f"{sequence.seq}_GT" / "TRA", tmp / f"{sequence.seq}_GT" / "SEG"
        for folder in (raw, tra):
            folder.mkdir(parents=True)
        for new, t in enumerate(range(start, stop)):
            shutil.copyfile(sequence.frame_paths[t], raw / f"t{new:0{digits}d}.tif")
            write_tiff(tra / f"man_track{new:0{digits}d}.tif", sequence.tra[t])
        write_track_file(tra / "man_track.txt", clip_tracks(sequence.tracks, start, stop))
        seg_frames = [t for t in sorted(sequence.seg) if start <= t < stop]
        if seg_frames:
            seg.mkdir(parents=True)
        for t in seg_frames:
            write_tiff(seg / f"man_seg{t - start:0{digits}d}.tif", sequence.seg[t])
    return out_dir


def load_result(res_dir: str | os.PathLike) -> Result:
    """Load a CTC result folder: ``maskNNN.tif`` (or ``maskNNNN.tif``) and ``res_track.txt``.

    Args:
        res_dir: The result folder (``DATASET/01_RES``).

    Returns:
        The loaded :class:`Result` (labels int32).

    Raises:
        RshnError: If the folder or the track file is missing, masks are missing, unreadable, not 2-D, differ in
            shape or are numbered with gaps or mixed digit counts, or the mask labels disagree with
            ``res_track.txt``.
    """
    res_dir = Path(res_dir)
    if not res_dir.is_dir():
        raise RshnError(f"{res_dir}: result folder not found")
    paths, digits = _index_video(res_dir, MASK_PATTERN, "mask", "result mask")
    track_path = res_dir / "res_track.txt"
    tracks = read_track_file(track_path)
    labels = _read_label_stack(paths, np.int32)
    check_tracks(tracks, track_path, num_frames=len(paths))
    _check_labels_match_tracks(labels, paths, tracks, track_path)
    return Result(res_dir=res_dir, labels=labels, tracks=tracks, digits=digits, mask_paths=paths)


# ----------------------------------------------------------------------------------------------------------------
# Ground-truth merging
# ----------------------------------------------------------------------------------------------------------------


def merge_seg_into_tra(seg: np.ndarray, tra: np.ndarray, fresh_id: int, *, frame: int = -1,
                       source: str = "GT") -> tuple[np.ndarray, list[MergeIssue], int]:
    """Relabel one SEG frame to the ids of the TRA markers.

    Every SEG object takes the TRA id with which it shares the most pixels (ties: the smaller TRA id). Two cases
    the authors' code does not handle (it asserts on duplicates and silently gives an object without a marker the
    first TRA id):

    * A SEG object that overlaps no marker gets a fresh id. It stays a foreground instance of its own in this frame
      (its pixels are a cell, not background) but belongs to no track.
    * When several SEG objects have the same best marker, the one with the largest overlap keeps the TRA id (ties:
      the smaller SEG label); each other one gets a fresh id.

    Fresh ids start at ``fresh_id`` (the caller passes one above every track id) and count up in SEG-label order.

    Args:
        seg: SEG mask (H, W), non-negative integers.
        tra: TRA markers (H, W) of the same frame.
        fresh_id: First id to hand out for objects that get no TRA id.
        frame: Frame index, recorded in the issues.
        source: ``"GT"`` or ``"ST"``, recorded in the issues.

    Returns:
        ``(relabelled, issues, next_fresh_id)``: the SEG mask with TRA ids (uint16, 0 stays 0), one
        :class:`MergeIssue` per object that got a fresh id, and the next unused fresh id.

    Raises:
        RshnError: If fresh ids would exceed the uint16 range of CTC masks.
    """
    seg = np.asarray(seg)
    tra = np.asarray(tra)
    if seg.shape != tra.shape:
        raise ValueError(f"SEG shape {seg.shape} and TRA shape {tra.shape} differ")
    seg_labels = _present_labels(seg)
    if seg_labels.size == 0:
        return np.zeros(seg.shape, dtype=np.uint16), [], fresh_id

    # Overlap counts for every (SEG label, TRA label) pair with both > 0, in one np.unique over the pixel pairs.
    both = (seg > 0) & (tra > 0)
    stride = int(tra.max()) + 1
    pair_keys, overlaps = np.unique(seg[both].astype(np.int64) * stride + tra[both], return_counts=True)
    pair_seg, pair_tra = pair_keys // stride, pair_keys % stride

    # Best marker per SEG object: sort by object, then overlap descending, then marker id; take each first row.
    order = np.lexsort((pair_tra, -overlaps, pair_seg))
    first = np.unique(pair_seg[order], return_index=True)[1]
    best = order[first]
    matched_seg, matched_tra, matched_overlap = pair_seg[best], pair_tra[best], overlaps[best]

    # Resolve objects claiming the same marker: the largest overlap wins (ties: smaller SEG label).
    order = np.lexsort((matched_seg, -matched_overlap, matched_tra))
    winner = np.zeros(matched_seg.size, dtype=bool)
    winner[order[np.unique(matched_tra[order], return_index=True)[1]]] = True

    lut = np.zeros(int(seg_labels[-1]) + 1, dtype=np.int64)
    lut[matched_seg[winner]] = matched_tra[winner]
    contested = dict(zip(matched_seg[~winner].tolist(), zip(matched_tra[~winner].tolist(),
                                                            matched_overlap[~winner].tolist())))
    issues = []
    for label in np.setdiff1d(seg_labels, matched_seg[winner]).tolist():
        marker, overlap = contested.get(label, (0, 0))
        issues.append(MergeIssue(frame=frame, source=source, seg_label=label,
                                 kind="duplicate" if marker else "no_marker", new_id=fresh_id, marker=marker,
                                 overlap=overlap))
        lut[label] = fresh_id
        fresh_id += 1
    if fresh_id - 1 > np.iinfo(np.uint16).max:
        raise RshnError(f"frame {frame} ({source} SEG): too many SEG objects without their own TRA marker; fresh "
                        f"ids exceed {np.iinfo(np.uint16).max}")
    return lut[seg].astype(np.uint16), issues, fresh_id


# ----------------------------------------------------------------------------------------------------------------
# Internals
# ----------------------------------------------------------------------------------------------------------------


def _fmt(values) -> str:
    """Format a list of labels for a message, shortened after a few."""
    values = [int(value) for value in values]
    shown = ", ".join(str(value) for value in values[:_MAX_LISTED])
    more = f", ... ({len(values)} in all)" if len(values) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def _row(row: np.ndarray) -> str:
    return "'" + " ".join(str(int(value)) for value in row) + "'"


def _frame_shape(frames: np.ndarray | None) -> tuple[int, int] | None:
    return None if frames is None else tuple(frames.shape[1:3])


def _index_video(folder: Path, pattern: re.Pattern, prefix: str, what: str) -> tuple[list[Path], int]:
    """List a folder's per-frame files ``<prefix>NNN.tif``; check digits and contiguous numbering from 0."""
    found = {}
    for entry in folder.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and entry.is_file():
            found[entry.name] = (int(match.group(1)), len(match.group(1)), entry)
    if not found:
        raise RshnError(f"{folder}: no {what} files (expected names like {prefix}000.tif)")
    by_digits = {}
    for name, (_, ndigits, _) in sorted(found.items()):
        by_digits.setdefault(ndigits, name)
    if len(by_digits) > 1:
        examples = ", ".join(f"{name} ({ndigits} digits)" for ndigits, name in sorted(by_digits.items()))
        raise RshnError(f"{folder}: mixed digit counts in {what} file names: {examples}; use one width for all")
    digits = next(iter(by_digits))
    if digits not in FRAME_DIGITS:
        name = next(iter(by_digits.values()))
        raise RshnError(f"{folder}: {what} file {name} has {digits} digits; CTC uses 3 (or 4 above 1000 frames)")
    indices = sorted(index for index, _, _ in found.values())
    if indices != list(range(len(indices))):
        present = set(indices)
        missing = next(index for index in range(indices[-1] + 1) if index not in present)
        raise RshnError(f"{folder}: {what} numbers are not contiguous from 0: {prefix}{missing:0{digits}d}.tif is "
                        f"missing (found {len(indices)} files, numbers {indices[0]}..{indices[-1]})")
    paths = [path for _, _, path in sorted(found.values())]
    return paths, digits


def _read_2d(path: Path) -> np.ndarray:
    image = read_tiff(path)
    if image.ndim != 2:
        raise RshnError(f"{path}: expected a 2-D image, got an array of shape {image.shape}")
    return image


def _tiff_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a single-image TIFF from its header; RshnError unless it is a readable 2-D image."""
    try:
        with tifffile.TiffFile(path) as tiff:
            if not tiff.series:
                raise RshnError(f"{path}: unreadable TIFF (no image pages; the file may be truncated)")
            shape, dtype = tuple(int(n) for n in tiff.series[0].shape), np.dtype(tiff.series[0].dtype)
    except RshnError:
        raise
    except Exception as exc:  # tifffile raises several types for broken files
        raise RshnError(f"{path}: unreadable TIFF ({type(exc).__name__}: {exc})") from exc
    if len(shape) != 2:
        raise RshnError(f"{path}: expected a 2-D image, got an array of shape {shape}")
    return shape, dtype


def _read_raw_stack(paths: list[Path]) -> np.ndarray:
    """Read raw frames into one (T, H, W) array; all frames must share the first frame's shape and dtype."""
    first = read_frame(paths[0], 0)
    stack = np.empty((len(paths),) + first.shape, dtype=first.dtype)
    stack[0] = first
    for index, path in enumerate(paths[1:], start=1):
        image = read_frame(path, index)
        if image.shape != first.shape:
            raise RshnError(f"{path}: frame shape {image.shape} differs from {paths[0].name} {first.shape}")
        if image.dtype != first.dtype:
            raise RshnError(f"{path}: frame dtype {image.dtype} differs from {paths[0].name} ({first.dtype})")
        stack[index] = image
    return stack


def read_label_image(path: str | os.PathLike, dtype: type = np.int32) -> np.ndarray:
    """Read one 2-D label mask (a result ``maskNNN.tif`` or a ground-truth ``man_trackNNN.tif``/``man_segNNN.tif``).

    Raises:
        RshnError: Naming the file if it is missing, unreadable, not 2-D, not integer, negative or too large for
            ``dtype``.
    """
    path = Path(path)
    return _as_labels(_read_2d(path), path, dtype)


def _as_labels(image: np.ndarray, path: Path, dtype: type) -> np.ndarray:
    """Check that an image holds non-negative integer labels that fit ``dtype``; return it as ``dtype``."""
    if image.dtype == bool:
        return image.astype(dtype)
    if not np.issubdtype(image.dtype, np.integer):
        raise RshnError(f"{path}: a label image must hold integers, got dtype {image.dtype}")
    if image.size and image.min() < 0:
        raise RshnError(f"{path}: negative label {int(image.min())}; labels must be >= 0")
    if image.size and int(image.max()) > np.iinfo(dtype).max:
        raise RshnError(f"{path}: label {int(image.max())} does not fit {np.dtype(dtype).name}")
    return image.astype(dtype, copy=False)


def _read_label_stack(paths: list[Path], dtype: type, expected_shape: tuple[int, int] | None = None,
                      shape_source: Path | None = None) -> np.ndarray:
    """Read label masks into one (T, H, W) array of ``dtype``; shapes must agree (with the raw frames if given)."""
    first = _as_labels(_read_2d(paths[0]), paths[0], dtype)
    if expected_shape is not None and first.shape != expected_shape:
        raise RshnError(f"{paths[0]}: mask shape {first.shape} does not match the raw frames {expected_shape} in "
                        f"{shape_source}")
    stack = np.empty((len(paths),) + first.shape, dtype=dtype)
    stack[0] = first
    for index, path in enumerate(paths[1:], start=1):
        image = _read_2d(path)
        if image.shape != first.shape:
            raise RshnError(f"{path}: mask shape {image.shape} differs from {paths[0].name} {first.shape}")
        stack[index] = _as_labels(image, path, dtype)
    return stack


def _read_sparse_labels(folder: Path, num_frames: int, shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """Read ``man_segNNN.tif`` files of a SEG folder into {frame index: uint16 mask}."""
    files = {}
    for entry in sorted(folder.iterdir()):
        match = SEG_PATTERN.fullmatch(entry.name)
        if not (match and entry.is_file()):
            continue
        index = int(match.group(1))
        if index in files:
            raise RshnError(f"{folder}: two SEG files for frame {index}: {files[index].name} and {entry.name}")
        if index >= num_frames:
            raise RshnError(f"{entry}: SEG file for frame {index}, but the sequence has only {num_frames} frames "
                            f"(0..{num_frames - 1})")
        files[index] = entry
    masks = {}
    for index in sorted(files):
        image = _as_labels(_read_2d(files[index]), files[index], np.uint16)
        if image.shape != tuple(shape):
            raise RshnError(f"{files[index]}: SEG shape {image.shape} does not match the sequence frames "
                            f"{tuple(shape)}")
        masks[index] = image
    return masks


def _present_labels(image: np.ndarray) -> np.ndarray:
    """Sorted non-zero labels present in an integer image."""
    if image.size == 0:
        return np.zeros(0, dtype=np.int64)
    top = int(image.max())
    if top < 1 << 20:
        labels = np.flatnonzero(np.bincount(image.ravel(), minlength=top + 1))
    else:
        labels = np.unique(image).astype(np.int64)
    return labels[labels > 0]


def _check_labels_match_tracks(labels: np.ndarray, paths: list[Path], tracks: np.ndarray, track_path: Path) -> None:
    """Check that each frame's labels equal the tracks alive in it, {L : B <= t <= E}."""
    for t, (frame, path) in enumerate(zip(labels, paths)):
        present = _present_labels(frame)
        alive = np.sort(tracks[(tracks[:, 1] <= t) & (t <= tracks[:, 2]), 0])
        if present.size == alive.size and np.array_equal(present, alive):
            continue
        extra, absent = np.setdiff1d(present, alive), np.setdiff1d(alive, present)
        parts = []
        if extra.size:
            parts.append(f"labels {_fmt(extra)} are in the mask but not alive at frame {t} in {track_path.name}")
        if absent.size:
            parts.append(f"labels {_fmt(absent)} are alive at frame {t} in {track_path.name} (B <= {t} <= E) but "
                         f"absent from the mask")
        raise RshnError(f"{path}: " + "; ".join(parts))


def _log_merge_issues(issues: list[MergeIssue], gt_dir: Path) -> None:
    for source in ("GT", "ST"):
        selected = [issue for issue in issues if issue.source == source]
        if selected:
            kinds = {kind: sum(issue.kind == kind for issue in selected) for kind in ("no_marker", "duplicate")}
            logger.warning("%s: %d %s SEG objects got fresh ids above every track id (%d overlap no TRA marker, "
                           "%d lost a shared marker to a larger overlap); see Sequence.merge_issues",
                           gt_dir, len(selected), source, kinds["no_marker"], kinds["duplicate"])
