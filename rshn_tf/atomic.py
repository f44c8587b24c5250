"""Atomic writes: every file and folder the project writes appears whole or not at all.

A file is written into a hidden twin beside it, ``.NAME.tmp-PID-HEX`` (plus the target's suffix where the writing
library chooses the format by the suffix, e.g. ``.weights.h5`` or ``.png``), and renamed over the target
(``os.replace``: atomic within one file system). A folder is filled in a hidden twin ``.NAME.tmp-PID-HEX`` and
swapped in. On any failure, a stop signal included, the twin is removed and the target is left as it was; twins of
killed processes carry their process id, so the next run into that place removes them
(:func:`rshn_tf.os_faults.remove_stale_temps`). With ``durable`` the data and the rename are flushed to the disk
(``fsync``), so they survive a crash of the machine, not only of the process.

This module imports only the standard library.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def twin_path(target: str | os.PathLike, kind: str = "tmp", suffix: str = "") -> Path:
    """A new hidden name beside ``target``: ``.NAME.KIND-PID-HEX`` followed by ``suffix``."""
    target = Path(target)
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or folder to the disk (``os.fsync``), so that it survives a crash of the machine."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_written(paths: list[Path], folder: Path) -> None:
    """Flush the files ``paths`` and, if there were any, their ``folder`` to the disk; empty the list."""
    for path in paths:
        fsync_path(path)
    if paths:
        fsync_path(folder)
    paths.clear()


@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "", durable: bool = False) -> Iterator[Path]:
    """Write a file atomically: the block writes the yielded twin path, which then replaces ``path``.

    Args:
        path: The file to write (its folder is created).
        suffix: Appended to the twin's name, for writers that choose the format by the file name
            (``.weights.h5``, ``.png``).
        durable: Flush the file and the folder to the disk.

    Yields:
        The temporary path to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = twin_path(path, "tmp", suffix)
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_file`) and return the path."""
    with atomic_file(path, durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (:func:`atomic_file`) and return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"), durable)


def write_json_atomic(path: str | os.PathLike, content: Any) -> Path:
    """Write ``content`` as indented JSON (with a final newline) to ``path`` atomically and return the path."""
    return write_text_atomic(path, json.dumps(content, indent=2, sort_keys=False) + "\n")


def fresh_folder(target: str | os.PathLike, kind: str = "tmp") -> Path:
    """Create a new hidden folder ``.NAME.KIND-PID-HEX`` beside ``target`` (permissions follow the umask, unlike
    ``mkdtemp``) and return it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        folder = twin_path(target, kind)
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except BaseException:  # a stop signal handled just after the folder was made: the caller never gets it
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder


def swap_in(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename the finished folder ``tmp`` to ``target``, replacing an existing ``target`` folder (moved aside into a
    hidden ``.NAME.old-PID-HEX`` folder first, then removed)."""
    tmp, target = Path(tmp), Path(target)
    if not target.exists():
        os.replace(tmp, target)
        return
    old = fresh_folder(target, "old")
    os.replace(target, old / target.name)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Write a folder atomically: the block fills the yielded hidden folder, which then replaces ``target``
    (:func:`swap_in`); on failure it is removed and ``target`` is unchanged.

    Yields:
        The temporary folder to fill.
    """
    tmp = fresh_folder(target, "tmp")
    try:
        yield tmp
        swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
