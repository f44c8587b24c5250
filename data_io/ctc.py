"""Reading and writing the Cell Tracking Challenge (CTC) folder format.

Layout of a CTC dataset folder (``DATASET/``)::

    01/t000.tif ...                      raw frames (3 or 4 digits)
    01_GT/TRA/man_track000.tif ...       tracking markers, one id per track
    01_GT/TRA/man_track.txt              one line "L B E P" per track
    01_GT/SEG/man_seg006.tif ...         full segmentation on some frames
    01_ST/SEG/man_seg000.tif ...         silver truth (optional)
    01_RES/mask000.tif + res_track.txt   a result folder

This module holds the low-level file helpers (TIFF and track files); the sequence loader builds on them.
It must not import TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from rshn_tf.errors import RshnError

TRACK_COLUMNS = ("L", "B", "E", "P")


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
        return tifffile.imread(path)
    except Exception as exc:  # tifffile raises several types for broken files
        raise RshnError(f"{path}: unreadable TIFF ({type(exc).__name__}: {exc})") from exc


def write_tiff(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an image as a compressed single-page TIFF (zlib), the way CTC tools expect.

    Args:
        path: Destination file.
        image: 2-D array; written in its dtype.
    """
    tifffile.imwrite(Path(path), np.asarray(image), compression="zlib")


def read_track_file(path: str | os.PathLike) -> np.ndarray:
    """Read a CTC track file (``man_track.txt`` or ``res_track.txt``).

    Every non-empty line must hold four integers ``L B E P``: track label, first frame, last frame, parent label
    (0 = no parent). Spaces or tabs separate the fields.

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

    Args:
        path: Destination file.
        tracks: Array-like of shape (N, 4) of non-negative integers.
    """
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    tracks = tracks[np.argsort(tracks[:, 0], kind="stable")]
    with open(Path(path), "w", encoding="utf-8", newline="\n") as handle:
        for label, begin, end, parent in tracks:
            handle.write(f"{label} {begin} {end} {parent}\n")
