"""One writer per output folder: an exclusive lock file beside it (``.NAME.lock``), held while a process writes.

The lock is an ``fcntl.flock`` on that file, so the operating system releases it when the holder exits, however
it exits: a lock file left by a killed process is no longer locked, and the next writer takes it over (and says
so). The file names the holder (pid, host, command, start time), so that a refused second writer can say which
process it waits for. A *shared* lock lets several cooperating processes hold one folder together (``rshn
experiment --only`` runs splitting one run folder's steps) while still excluding an exclusive holder (a full run).
Linux and macOS only (``fcntl``). This module must not import TensorFlow.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from rshn_tf.errors import RshnError
from rshn_tf.os_faults import check_writable, remove_stale_temps

log = logging.getLogger(__name__)


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of an output folder: ``.NAME.lock`` beside it."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def _describe(holder: dict) -> str:
    started = holder.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
    command = f" ({holder['command']})" if holder.get("command") else ""
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')}{command}{since}"


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode("utf-8", errors="replace")
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


class OutputLock:
    """Exclusive lock of one output folder for this process (a context manager).

    Args:
        target: The output folder (it need not exist; its parent is created).
        command: What holds the lock, for the message a refused writer prints (default: this process's command
            line).
        shared: Take a shared lock: other shared holders are admitted, exclusive ones refused (and vice versa).
    """

    def __init__(self, target: str | os.PathLike, command: Optional[str] = None, shared: bool = False):
        self.target = Path(target)
        self.path = lock_path(self.target)
        self.command = command if command is not None else " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])
        self.shared = shared
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> "OutputLock":
        """Take the lock.

        Raises:
            RshnError: If another process holds it (naming that process).
        """
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                alone = self._lock(fd)
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # the holder released (removed) it after we opened it
                same = False
            if not same:
                os.close(fd)
                continue
            if alone is None:
                self._refuse(fd)
            break
        if alone:
            previous = _read_holder(fd)
            if previous:
                log.warning("%s: taking over the lock file %s left by %s, which is no longer running", self.target,
                            self.path, _describe(previous))
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                      "started": time.time()}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(holder).encode())
            if self.shared:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:  # an exclusive writer came in while the lock was converted
                    self._refuse(fd)
        self._fd = fd
        return self

    def _lock(self, fd: int) -> Optional[bool]:
        """Lock ``fd`` without waiting: True when no other process holds it (the lock is exclusive for now), False
        when a shared lock was had beside other shared holders, None when the lock cannot be had."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if not self.shared:
                return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return None

    def _refuse(self, fd: int) -> None:
        """Close ``fd`` and raise the error naming the process that holds the lock."""
        holder = _read_holder(fd)
        os.close(fd)
        pid = holder.get("pid", "?")
        raise RshnError(
            f"{self.target}: {_describe(holder)} is writing this output (lock file {self.path}); wait for "
            f"it to finish or stop it (kill {pid}); only one rshn process may write an output at a time"
        ) from None

    def release(self) -> None:
        """Give the lock up and remove its file (a shared holder removes it only when it is the last one)."""
        if self._fd is None:
            return
        last = True
        if self.shared:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                last = False
        if last:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def claim_output(target: str | os.PathLike, what: str = "output", inside: bool = False,
                 command: Optional[str] = None, shared: bool = False) -> Iterator[OutputLock]:
    """Hold an output location for one run: check that it can be written
    (:func:`~rshn_tf.os_faults.check_writable`), take its lock, then remove the temporary files that killed runs
    left there (:func:`~rshn_tf.os_faults.remove_stale_temps`; with ``inside`` also at the top of the folder).

    Args:
        target: The output folder (or file).
        what: What it is, for the messages.
        inside: Whether the run writes files inside ``target`` (a model or run folder) rather than replacing it.
        command: What holds the lock (default: this process's command line).
        shared: Share the location with other shared holders (:class:`OutputLock`).

    Raises:
        RshnError: If the location cannot be written or another process holds its lock.
    """
    check_writable(target, what)
    with OutputLock(target, command, shared=shared) as lock:
        remove_stale_temps(target, inside=inside)
        yield lock
