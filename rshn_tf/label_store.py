"""Finished label frames kept out of memory: one ``.npy`` file per frame in a folder (:class:`LabelStore`), or a
plain list for small in-memory uses (:class:`MemoryLabelStore`). Both offer the frame-by-frame read access that
the streaming finalisation (:func:`rshn_tf.tracking.finalize_stream`) needs. This module must not import
TensorFlow.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from rshn_tf.atomic import atomic_file, fsync_written


def save_atomically(path: Path, array: np.ndarray) -> None:
    """``np.save`` into a temporary file beside ``path``, then rename it over ``path`` (never half-written)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as stream:
        np.save(stream, array, allow_pickle=False)


class LabelStore:
    """Label frames on disk: ``frames/000000.npy`` … (int32 (H, W)), written as they are finished.

    Every frame is written atomically (:func:`save_atomically`); :meth:`sync` flushes those written since the last
    call to the disk (before a checkpoint refers to them). Reading back whole frames (:meth:`read`) loads them;
    :meth:`read_box` maps the file and copies only the requested box, keeping a few maps open (their touched pages
    are the only part that stays resident).

    Args:
        folder: The folder (created if missing).
        count: Frames already stored there (0 … count − 1), e.g. after resuming from a checkpoint.
        open_maps: Most files kept mapped for :meth:`read_box`.
    """

    def __init__(self, folder: str | os.PathLike, count: int = 0, open_maps: int = 24):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = int(count)
        self._unsynced: list[Path] = []
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._open_maps = open_maps

    def __len__(self) -> int:
        return self.count

    def path(self, t: int) -> Path:
        """File of frame t."""
        return self.folder / f"{t:06d}.npy"

    def write(self, t: int, frame: np.ndarray) -> None:
        """Store frame t (replacing an older copy)."""
        self._maps.pop(t, None)
        path = self.path(t)
        save_atomically(path, np.asarray(frame, dtype=np.int32))
        self._unsynced.append(path)
        self.count = max(self.count, t + 1)

    def sync(self) -> None:
        """Flush the frames written since the last call (and the folder) to the disk."""
        fsync_written(self._unsynced, self.folder)

    def read(self, t: int) -> np.ndarray:
        """Frame t, int32 (H, W)."""
        if not 0 <= t < self.count:
            raise IndexError(f"frame {t} is not stored ({self.count} frames)")
        return np.load(self.path(t), allow_pickle=False)

    def read_box(self, t: int, box: tuple[slice, slice]) -> np.ndarray:
        """A copy of the part ``box`` of frame t."""
        mapped = self._maps.get(t)
        if mapped is None:
            if not 0 <= t < self.count:
                raise IndexError(f"frame {t} is not stored ({self.count} frames)")
            mapped = np.load(self.path(t), mmap_mode="r", allow_pickle=False)
            self._maps[t] = mapped
            while len(self._maps) > self._open_maps:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(t)
        return np.array(mapped[box])

    def close(self) -> None:
        """Drop the open maps."""
        self._maps.clear()


class MemoryLabelStore:
    """The :class:`LabelStore` interface on a list in memory (the stack grows with the video; for tests and short
    in-memory uses such as :meth:`rshn_tf.postprocess.PostProcessor.result`)."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def count(self) -> int:
        """Frames stored."""
        return len(self.frames)

    def write(self, t: int, frame: np.ndarray) -> None:
        """Store frame t (frames come in order; an existing frame t is replaced)."""
        frame = np.asarray(frame, dtype=np.int32)
        if t < len(self.frames):
            self.frames[t] = frame
        elif t == len(self.frames):
            self.frames.append(frame)
        else:
            raise IndexError(f"frame {t} written before frame {len(self.frames)}")

    def sync(self) -> None:
        """Nothing to flush."""

    def read(self, t: int) -> np.ndarray:
        """Frame t."""
        return self.frames[t]

    def read_box(self, t: int, box: tuple[slice, slice]) -> np.ndarray:
        """The part ``box`` of frame t."""
        return self.frames[t][box]

    def close(self) -> None:
        """Nothing to release."""
