"""The logs of a training run: per-iteration CSV files and TensorBoard event files.

* :class:`CsvLog`: ``logs/losses.csv`` / ``logs/validation.csv``, one row per step, resumable (rows after the
  restored step are dropped) and read back with :func:`read_loss_log`.
* :class:`TensorBoardLog`: interval means of scalars and images, written with ``tf.summary.write`` and the metadata
  of TensorBoard's scalar and image plugins, so that training needs only TensorFlow; viewing needs the
  ``tensorboard`` package (``pip install tensorboard``; ``tensorboard --logdir MODEL_DIR/logs``).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from rshn_tf.atomic import write_text_atomic
from rshn_tf.errors import RshnError




class CsvLog:
    """An append-only CSV file with one row per step (first column ``step``).

    Rows are kept in memory and appended at :meth:`flush` (at every checkpoint): the file is created complete
    with its header (written atomically), and a failed append (a full disk) is cut back to the rows before it, so
    the file is never empty or half-written.

    Args:
        path: The file; created with a header row at the first :meth:`flush` after a :meth:`write`.
        restored_step: The step a run resumes from: rows of later steps (written after the last checkpoint of a
            killed run) are removed so that the file continues without duplicates.
    """

    def __init__(self, path: Path, restored_step: int) -> None:
        self.path = path
        self.fields: Optional[list[str]] = None
        self._pending: list[list[str]] = []
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                rows = [row for row in csv.reader(handle) if row]
            if rows:
                self.fields = rows[0]
                kept = [rows[0]] + [row for row in rows[1:] if int(row[0]) <= restored_step]
                if len(kept) != len(rows):
                    buffer = io.StringIO()
                    csv.writer(buffer).writerows(kept)
                    write_text_atomic(path, buffer.getvalue())

    def write(self, row: dict[str, Any]) -> None:
        """Add one row (same keys every time; floats written with full precision); it reaches the file at the next
        :meth:`flush`.

        Raises:
            RshnError: If the keys differ from the file's columns.
        """
        if self.fields is None:
            self.fields = list(row)
            self._pending.append(self.fields)
        if set(row) != set(self.fields):
            raise RshnError(f"{self.path}: columns {sorted(row)} do not match the existing {self.fields}")
        self._pending.append([_format(row[key]) for key in self.fields])

    def flush(self) -> None:
        """Append the rows written since the last call to the file and flush it to the disk.

        Raises:
            OSError: If the file cannot be written (it then holds the rows of the calls before).
        """
        if not self._pending:
            return
        buffer = io.StringIO()
        csv.writer(buffer).writerows(self._pending)
        if not self.path.is_file():
            write_text_atomic(self.path, buffer.getvalue())
            self._pending = []
            return
        data = buffer.getvalue().encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        self._pending = []

    def close(self) -> None:
        """Write the remaining rows (:meth:`flush`)."""
        self.flush()


def _format(value: Any) -> str:
    return repr(float(value)) if isinstance(value, (float, np.floating)) else str(value)


def read_loss_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``logs/losses.csv`` (or ``validation.csv``) into one array per column."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    return {key: np.array([float(row[key]) for row in rows]) for key in rows[0]}


def _summary_metadata(plugin: str, data_class: int, description: str = "") -> summary_pb2.SummaryMetadata:
    """Metadata that makes TensorBoard's ``scalars`` / ``images`` plugin show a ``tf.summary.write`` tensor (the
    plugins' own data protos are empty at version 0), so the event files need only TensorFlow to be written."""
    metadata = summary_pb2.SummaryMetadata(summary_description=description, data_class=data_class)
    metadata.plugin_data.plugin_name = plugin
    return metadata


_SCALAR = _summary_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)


class TensorBoardLog:
    """Interval means of scalars and occasional images in TensorBoard event files (chief only).

    Written with ``tf.summary.write`` and the plugin metadata of TensorBoard's scalar and image summaries, so that
    training does not need the ``tensorboard`` package; viewing them does (``pip install tensorboard``).
    """

    def __init__(self, log_dir: Path, enabled: bool) -> None:
        self.writer = tf.summary.create_file_writer(str(log_dir)) if enabled else None
        self._sums: dict[str, float] = {}
        self._count = 0

    def accumulate(self, terms: dict[str, float]) -> None:
        """Add one iteration's loss terms to the current interval."""
        for key, value in terms.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._count += 1

    def scalars(self, step: int, extra: dict[str, float]) -> None:
        """Write the interval means as ``loss/<term>`` plus ``extra`` scalars at ``step``; start a new interval."""
        if self.writer is not None and self._count:
            values = {f"loss/{key}": value / self._count for key, value in self._sums.items()}
            values.update(extra)
            with self.writer.as_default():
                for key, value in values.items():
                    tf.summary.write(key, tf.constant(value, tf.float32), step=step, metadata=_SCALAR)
        self._sums, self._count = {}, 0

    def scalar(self, step: int, name: str, value: float) -> None:
        """Write one scalar."""
        if self.writer is not None:
            with self.writer.as_default():
                tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=_SCALAR)

    def images(self, step: int, name: str, images: tf.Tensor, description: str = "") -> None:
        """One PNG per frame of ``images`` (T, H, W, C) in [0, 1] (TensorBoard's image summary layout)."""
        if self.writer is not None:
            encoded = [tf.image.encode_png(tf.image.convert_image_dtype(frame, tf.uint8, saturate=True))
                       for frame in tf.unstack(images)]
            size = [tf.as_string(tf.shape(images)[2]), tf.as_string(tf.shape(images)[1])]
            metadata = _summary_metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE, description)
            with self.writer.as_default():
                tf.summary.write(name, tf.stack(size + encoded), step=step, metadata=metadata)

    def flush(self) -> None:
        """Flush the event file."""
        if self.writer is not None:
            self.writer.flush()
