"""Output locations and the faults of the operating system: one writability check, one clean-up of litter left by
killed runs, one translation of OS errors into a user-facing message (issue 18).

* :func:`check_writable`: every writing verb calls it on each output location before any computation, so a
  read-only folder, a full disk or a read-only file system ends the run at once with a clear message.
* :func:`remove_stale_temps`: hidden temporary files and folders (``.NAME.tmp-PID-*`` and ``.NAME.old-PID-*`` of
  :mod:`rshn_tf.atomic`, and ``.NAME.PID.tmp``, ``.PID.tmp.NAME`` of earlier versions) of processes that no longer
  run, removed at the next run into that place (inside model and run folders at every depth); :func:`remove_checkpoint_temps` does the same for TensorFlow's
  unfinished checkpoint saves.
* :func:`fault_message`: the message of an ``OSError`` (or a TensorFlow / h5py error wrapping one) that a user's
  environment caused: permission denied, read-only file system, no space left, quota exceeded.

This module must not import TensorFlow.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Optional

from rshn_tf.errors import RshnError

log = logging.getLogger(__name__)

#: What the user can do about each fault of the environment (errno -> advice).
WRITE_FAULTS = {
    errno.EACCES: "check the folder's permissions or choose another folder",
    errno.EPERM: "check the folder's permissions or choose another folder",
    errno.EROFS: "the file system is mounted read-only; choose a folder on a writable disk",
    errno.ENOSPC: "the disk is full; free space or choose a folder on another disk",
    errno.EDQUOT: "the disk quota is exceeded; free space or choose a folder on another disk",
    errno.EFBIG: "the file is too large for this file system; choose a folder on another disk",
}

#: Output locations checked by :func:`check_writable` in this process, most recent last: a failed write whose
#: error names no file is reported as a failure to write these.
_checked: list[Path] = []

#: Hidden temporary names of this project's atomic writes; the group ``pid`` is the writing process.
_TEMP_NAMES = (
    # rshn_tf.atomic: .NAME.tmp-PID-HEX[.SUFFIX], .NAME.old-PID-HEX; earlier versions: .NAME.tmp-PID
    re.compile(r"^\..+\.(?:tmp|old)-(?P<pid>\d+)(?:-[0-9a-f]{8}(?:\.[A-Za-z0-9.]+)?)?$"),
    re.compile(r"^\..+\.(?P<pid>\d+)\.tmp(?:\.[A-Za-z0-9]+)?$"),  # .NAME.PID.tmp, .STEM.PID.tmp.png
    re.compile(r"^\.(?P<pid>\d+)\.tmp\..+$"),  # .PID.tmp.NAME (weights)
)


def _existing_folder(path: Path) -> Path:
    """The nearest folder of ``path`` and its ancestors that exists (``path`` itself when it is a folder)."""
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path(path.anchor or ".")


def _probe(folder: Path) -> None:
    """Create, write, flush and remove a small hidden file in ``folder`` (raises the OSError of the first failure)."""
    probe = folder / f".rshn-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except FileNotFoundError:
            pass


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Check, before any computation, that ``path`` (a file or folder to be created or replaced) can be written.

    A small file is written and removed in the nearest existing folder of ``path`` (where the new output or its
    temporary twin is created) and, when ``path`` is an existing folder, inside it (where a model or run folder
    writes its files). The location is remembered for :func:`fault_message`.

    Args:
        path: The output location.
        what: What it is, for the message (``output``, ``model folder``, ``embeddings folder`` …).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        RshnError: If a file cannot be created there, naming the folder and the reason.
    """
    path = Path(path)
    folders = [_existing_folder(path.parent)]
    if path.is_dir():
        folders.append(path)
    for folder in folders:
        try:
            _probe(folder)
        except OSError as exc:
            advice = WRITE_FAULTS.get(exc.errno, "choose another folder")
            raise RshnError(f"{path}: cannot write the {what}: {folder} is not writable ({exc.strerror or exc}); "
                            f"{advice}") from None
    _checked.append(path)
    return path


def forget_checked() -> None:
    """Forget the locations :func:`check_writable` remembered (at the start of a command)."""
    _checked.clear()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _temp_pid(name: str) -> Optional[int]:
    for pattern in _TEMP_NAMES:
        match = pattern.match(name)
        if match:
            return int(match.group("pid"))
    return None


def remove_stale_temps(target: str | os.PathLike, inside: bool = False) -> list[Path]:
    """Remove the hidden temporary files and folders of ``target`` left by processes that no longer run.

    Looks beside ``target`` for names starting with ``.NAME.`` and, with ``inside``, everywhere in the folder
    ``target`` itself and its subfolders (a model or run folder writing its files atomically: weights, snapshots,
    the fold folders of an experiment). Names without a process id, unfinished runs kept for ``--resume``
    (``.NAME.partial``) and temporaries of running processes are left alone.

    Returns:
        The removed paths.
    """
    target = Path(target)
    try:
        beside = os.listdir(target.parent)
    except (FileNotFoundError, NotADirectoryError):
        beside = []
    removed = _remove_dead(target.parent, [name for name in beside if name.startswith(f".{target.name}.")])
    if inside and target.is_dir():
        for folder, subfolders, files in os.walk(target):
            gone = _remove_dead(Path(folder), [name for name in (*subfolders, *files) if name.startswith(".")])
            removed += gone
            subfolders[:] = [name for name in subfolders if Path(folder) / name not in gone]
    if removed:
        log.info("removed %d temporary file(s) of runs that no longer run: %s", len(removed),
                 ", ".join(str(p) for p in removed))
    return removed


def _remove_dead(folder: Path, names: list[str]) -> list[Path]:
    """Remove the temporaries of processes that no longer run among ``names`` in ``folder``."""
    removed = []
    for name in names:
        pid = _temp_pid(name)
        if pid is None or _pid_alive(pid):
            continue
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def remove_checkpoint_temps(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """Remove what an interrupted TensorFlow checkpoint save leaves in ``checkpoint_dir``: the folder
    ``PREFIX_temp/`` its sharded save writes first (left behind when the disk fills up or the process is killed)
    and the state file's temporary twin ``checkpoint.tmpHEX``. These names carry no process id: call this only
    while holding the lock of the folder they are in.

    Returns:
        The removed paths.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    removed = []
    for path in checkpoint_dir.iterdir():
        if path.is_dir() and path.name.endswith("_temp"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and re.fullmatch(r"checkpoint\.tmp[0-9a-f]+", path.name):
            path.unlink(missing_ok=True)
        else:
            continue
        removed.append(path)
    if removed:
        log.info("removed %d unfinished checkpoint file(s): %s", len(removed), ", ".join(str(p) for p in removed))
    return removed


def prepare_output(path: str | os.PathLike, what: str = "output", inside: bool = False) -> Path:
    """:func:`check_writable`, then :func:`remove_stale_temps`: what every writing verb does to each output
    location before it computes anything (verbs with a lock call it once they hold it)."""
    path = check_writable(path, what)
    remove_stale_temps(path, inside=inside)
    return path


_STRERRORS = {code: os.strerror(code) for code in WRITE_FAULTS}


def fault_message(exc: BaseException) -> Optional[str]:
    """The one-line message of an error the environment caused while writing, or None for any other error.

    ``OSError`` with an errno of :data:`WRITE_FAULTS`; an ``OSError`` without errno, or a TensorFlow or h5py error,
    whose text carries one of their ``strerror`` texts (h5py and TensorFlow's file writes report a full disk that
    way). The message names the file (or, when the error names none, the output locations being written) and what
    to do.
    """
    code = exc.errno if isinstance(exc, OSError) else None
    if code not in WRITE_FAULTS:
        module = type(exc).__module__ or ""
        if code is not None or not (isinstance(exc, OSError) or module.startswith(("tensorflow", "h5py"))):
            return None
        text = str(exc)
        code = next((c for c, strerror in _STRERRORS.items() if strerror in text or f"errno = {c}," in text), None)
        if code is None:
            return None
    filename = getattr(exc, "filename", None)
    where = str(filename) if filename else (
        f"writing {', '.join(str(p) for p in dict.fromkeys(_checked))}" if _checked else "writing the output")
    return f"{where}: {os.strerror(code)} (errno {errno.errorcode.get(code, code)}); {WRITE_FAULTS[code]}"
