"""SIGINT and SIGTERM in every verb: the signal becomes one exception in the main thread, so that the clean-up of
``finally`` / ``except BaseException`` blocks runs (temporary folders removed, unfinished runs kept for
``--resume``) and the command line prints one line and exits with 128 + the signal number.

Training installs its own handlers inside its loop (:class:`rshn_tf.training.StopRequest`, which saves a
checkpoint first); they take precedence while the loop runs. This module must not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

#: The signals that stop a verb.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A stop signal arrived (a ``BaseException``, like ``KeyboardInterrupt``, so that ``except Exception`` does
    not swallow it).

    Attributes:
        signum: The signal number.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {self.name}")

    @property
    def name(self) -> str:
        """``SIGINT`` or ``SIGTERM``."""
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a process killed by that signal."""
        return 128 + self.signum


def exit_status(signal_name: str) -> int:
    """128 + the number of the signal named ``signal_name`` (e.g. ``SIGTERM`` -> 143)."""
    return 128 + int(signal.Signals[signal_name])


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, the first SIGINT or SIGTERM raises :class:`Interrupted` in the main thread; later ones
    are ignored so that the clean-up it triggers is not cut short (SIGKILL still ends the process). Outside the
    main thread nothing is installed. The previous handlers are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def handle(signum: int, _frame: Any) -> None:
        if arrived:
            return
        arrived.append(signum)
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handle) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
