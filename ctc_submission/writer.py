"""Writing a Cell Tracking Challenge result folder: ``maskNNN.tif`` (uint16) per frame and ``res_track.txt``.

The folder is written completely into a temporary folder next to the target (frame by frame with
:class:`CtcResultWriter`) and renamed into place at the end, so a crash never leaves a half-written result; an
existing result folder is replaced only in that last step. This
module must not import TensorFlow.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from data_io.ctc import FRAME_DIGITS, write_tiff, write_track_file
from rshn_tf.atomic import fresh_folder, swap_in
from rshn_tf.errors import RshnError

if TYPE_CHECKING:
    from rshn_tf.config import Config

log = logging.getLogger(__name__)

#: Largest label a CTC mask can hold (masks are uint16).
MAX_LABEL = np.iinfo(np.uint16).max
#: Files a result folder may contain; a folder with anything else is not replaced.
_RESULT_FILE_PATTERNS = ("mask*.tif", "res_track.txt", "config.yaml")


def mask_digits(num_frames: int) -> int:
    """Digits of the frame index in file names: 3 (``t000``) up to 1000 frames, else 4, as the CTC uses."""
    return 3 if num_frames <= 1000 else 4


def _looks_like_result(folder: Path) -> bool:
    entries = list(folder.iterdir())
    return all(any(e.is_file() and e.match(p) for p in _RESULT_FILE_PATTERNS) for e in entries)


def check_result_target(output_dir: str | os.PathLike) -> None:
    """Check that a result folder can be written: it is absent, or an existing CTC result that may be replaced.

    Raises:
        RshnError: If the path is a file or a folder holding anything but result files.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise RshnError(f"{output_dir}: exists and is not a folder")
    if output_dir.is_dir() and not _looks_like_result(output_dir):
        raise RshnError(f"{output_dir}: folder exists and holds files other than a CTC result; refusing to "
                        f"replace it (choose another output folder or empty it)")


def _check_ids(output_dir: Path, lowest: int, highest: int, count: int) -> None:
    if lowest < 0:
        raise RshnError(f"{output_dir}: negative label or track value {lowest}; CTC labels are non-negative")
    if highest > MAX_LABEL:
        raise RshnError(
            f"{output_dir}: track id {highest} does not fit the uint16 masks of the CTC format (max {MAX_LABEL}); "
            f"the result has too many tracks ({count}) for one CTC sequence"
        )


class CtcResultWriter:
    """Writes a CTC result folder frame by frame into a temporary folder and renames it into place in
    :meth:`commit`, so that the result folder is complete or absent, never half-written.

    Args:
        output_dir: The result folder (e.g. ``DATASET/01_RES``); its parent is created if needed. An existing folder
            is replaced (in :meth:`commit`) only if it holds nothing but result files (``mask*.tif``,
            ``res_track.txt``, ``config.yaml``).
        tracks: (N, 4) ``L B E P`` rows (label, first frame, last frame, parent or 0); the masks hold these labels.
        num_frames: Frames T of the result.
        digits: Digits of the frame index in ``maskNNN.tif`` (3 or 4, as the input frames use); ``None`` picks
            :func:`mask_digits`.
        tmp: The temporary folder to write into (replaced if it exists; it must be on the file system of
            ``output_dir``); default: a new hidden folder beside ``output_dir``.

    Raises:
        RshnError: If track ids do not fit uint16, the digits are wrong, or the target cannot be replaced.
    """

    def __init__(self, output_dir: str | os.PathLike, tracks: np.ndarray, num_frames: int,
                 digits: Optional[int] = None, tmp: Optional[str | os.PathLike] = None):
        self.output_dir = Path(output_dir)
        self.tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
        self.num_frames = int(num_frames)
        self.digits = mask_digits(num_frames) if digits is None else int(digits)
        if self.digits not in FRAME_DIGITS or num_frames > 10 ** self.digits:
            raise RshnError(f"{self.output_dir}: cannot name {num_frames} frames with {self.digits} digits (use 3 or 4)")
        _check_ids(self.output_dir, int(self.tracks.min(initial=0)), int(self.tracks[:, 0].max(initial=0)),
                   len(self.tracks))
        check_result_target(self.output_dir)
        if tmp is None:
            self.tmp = fresh_folder(self.output_dir, "tmp")
        else:
            self.tmp = Path(tmp)
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir(parents=True)

    def write_mask(self, t: int, labels: np.ndarray) -> None:
        """Write ``maskNNN.tif`` of frame t (labels are stored as uint16)."""
        write_tiff(self.tmp / f"mask{t:0{self.digits}d}.tif", np.asarray(labels).astype(np.uint16))

    def commit(self, config: Optional["Config"] = None) -> Path:
        """Write ``res_track.txt`` (and ``config.yaml`` when ``config`` is given) and rename the folder into place."""
        write_track_file(self.tmp / "res_track.txt", self.tracks)
        if config is not None:
            from rshn_tf.config import save_config

            save_config(config, self.tmp / "config.yaml")
        swap_in(self.tmp, self.output_dir)
        log.info("wrote %d masks and %d tracks to %s", self.num_frames, len(self.tracks), self.output_dir)
        return self.output_dir

    def discard(self) -> None:
        """Remove the temporary folder."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_ctc_result(
    output_dir: str | os.PathLike,
    labels: np.ndarray,
    tracks: np.ndarray,
    digits: Optional[int] = None,
    config: Optional["Config"] = None,
) -> Path:
    """Write a CTC result folder atomically (:class:`CtcResultWriter` with whole arrays).

    Args:
        output_dir: The result folder (e.g. ``DATASET/01_RES``); its parent is created if needed. An existing folder
            is replaced only if it holds nothing but result files (``mask*.tif``, ``res_track.txt``,
            ``config.yaml``).
        labels: (T, H, W) non-negative integer labels, one track id per instance.
        tracks: (N, 4) ``L B E P`` rows (label, first frame, last frame, parent or 0).
        digits: Digits of the frame index in ``maskNNN.tif`` (3 or 4, as the input frames use); ``None`` picks
            :func:`mask_digits`.
        config: If given, the resolved configuration is saved as ``config.yaml`` in the folder.

    Returns:
        The result folder.

    Raises:
        RshnError: If ids do not fit uint16, the digits are wrong, or the target cannot be replaced.
    """
    output_dir = Path(output_dir)
    labels = np.asarray(labels)
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (T, H, W), got shape {labels.shape}")
    lowest = min(int(labels.min(initial=0)), int(tracks.min(initial=0)))
    highest = max(int(labels.max(initial=0)), int(tracks[:, 0].max(initial=0)))
    _check_ids(output_dir, lowest, highest, len(tracks))
    writer = CtcResultWriter(output_dir, tracks, labels.shape[0], digits)
    try:
        for t in range(labels.shape[0]):
            writer.write_mask(t, labels[t])
        return writer.commit(config)
    except BaseException:
        writer.discard()
        raise
