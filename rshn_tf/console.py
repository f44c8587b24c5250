"""What rshn shows on the console besides its own messages: TensorFlow's start-up noise and progress.

* :func:`quiet_tensorflow` makes the first ``import tensorflow`` silent (TensorFlow's C++ and absl start-up lines
  such as the oneDNN and CPU-instruction notices, and its Python warnings), unless ``rshn -v`` asks for them.
  TensorFlow is still imported only by the verbs that need it.
* :func:`progress_bar` gives a tqdm bar on a terminal and plain log lines (every :data:`LINE_PERCENT` % or
  :data:`LINE_SECONDS` s) when stderr is a file or a pipe, so that batch jobs still see how far a run got.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import tempfile
import time
import types
from typing import Any, Iterator, Optional

#: Plain progress lines are logged each time another LINE_PERCENT % of the work is done ...
LINE_PERCENT = 10
#: ... or when LINE_SECONDS have passed since the last line, whichever comes first.
LINE_SECONDS = 60.0

progress_log = logging.getLogger("rshn.progress")


# --------------------------------------------------------------------------------------------------------------
# TensorFlow start-up noise


@contextlib.contextmanager
def _stderr_fd_captured() -> Iterator[Any]:
    """Send everything written to file descriptor 2 (C++ logs included) to a temporary file; yields that file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of ``tensorflow`` with fd 2 captured; on failure the captured text is shown."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[types.ModuleType]:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        error, text = None, b""
        with _stderr_fd_captured() as captured:
            try:
                self.loader.exec_module(module)
            except BaseException as exc:  # shown below with what TensorFlow wrote, then raised again
                error = exc
                captured.seek(0)
                text = captured.read()
        if error is not None:
            sys.stderr.write(text.decode(errors="replace"))
            raise error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, with its loader wrapped in :class:`_QuietLoader`, then steps aside."""

    def find_spec(self, name: str, path: Any, target: Optional[types.ModuleType] = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow() -> None:
    """Silence TensorFlow's start-up logs for this process and the rshn processes it starts.

    Sets ``TF_CPP_MIN_LOG_LEVEL=3`` (unless the user set it; TensorFlow's C++ errors reach rshn as exceptions, its
    logged ones are notices such as oneDNN's missing DT_BOOL support), lowers the ``tensorflow`` and ``absl`` Python
    loggers to errors, and captures file descriptor 2 while ``tensorflow`` is first imported (its absl lines are
    written before any log level applies). Does nothing to the import when TensorFlow is already loaded.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowFinder())


# --------------------------------------------------------------------------------------------------------------
# Progress


class LineProgress:
    """A tqdm-like progress counter that logs plain lines instead of redrawing a bar.

    Args:
        total: Units of the whole run.
        initial: Units already done (a resumed run).
        unit: Name of a unit (``it``, ``frame``).
        desc: What is running, starts every line.
    """

    def __init__(self, total: int, initial: int = 0, unit: str = "it", desc: str = ""):
        self.total, self.n, self.unit, self.desc = int(total), int(initial), unit, desc
        self.postfix = ""
        self._start = self._last_time = time.monotonic()
        self._start_n = self.n
        self._last_step = self._step(self.n)

    def _step(self, n: int) -> int:
        return (n * 100 // LINE_PERCENT) // max(self.total, 1)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; log a line when another step of the work is done or time has passed."""
        self.n += int(n)
        now = time.monotonic()
        step = self._step(self.n)
        if step > self._last_step or now - self._last_time >= LINE_SECONDS:
            self._last_step, self._last_time = step, now
            self._log(now)

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the next line, e.g. ``loss=0.12``."""
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def _log(self, now: float) -> None:
        elapsed = now - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        left = f", {_duration((self.total - self.n) / rate)} left" if rate > 0 and self.n < self.total else ""
        percent = 100.0 * self.n / max(self.total, 1)
        extra = f", {self.postfix}" if self.postfix else ""
        progress_log.info("%s: %d/%d %s (%.0f %%), %.3g %s/s%s%s", self.desc, self.n, self.total, self.unit,
                          percent, rate, self.unit, left, extra)

    def close(self) -> None:
        """Finish; nothing more is logged."""

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_bar(total: int, *, desc: str, unit: str = "it", initial: int = 0, enabled: Optional[bool] = None,
                 **tqdm_options: Any) -> Any:
    """A progress display for ``total`` units: a tqdm bar on a terminal, plain log lines otherwise.

    Args:
        total: Units of the whole run.
        desc: What is running.
        unit: Name of a unit.
        initial: Units already done.
        enabled: None: a bar when stderr is a terminal, else lines; True: always a bar; False: nothing.
        tqdm_options: Passed to tqdm (``leave``, ``dynamic_ncols``).

    Returns:
        An object with tqdm's ``update``, ``set_postfix``, ``n``, ``close`` and context-manager protocol.
    """
    from tqdm import tqdm

    if enabled is None and not _is_terminal(sys.stderr):
        return LineProgress(total, initial=initial, unit=unit, desc=desc)
    return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not (enabled or enabled is None),
                **tqdm_options)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
