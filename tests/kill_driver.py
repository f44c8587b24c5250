"""Run an ``rshn`` command and SIGKILL the process at a chosen point (tests of ``--resume``).

Usage: ``python -m tests.kill_driver POINT N rshn-arguments...``, where the process kills itself

* ``pair``: right after the N-th frame pair has been post-processed;
* ``checkpoint``: in the middle of writing the N-th checkpoint (half of its bytes written);
* ``frame``: in the middle of writing the N-th finished label frame to disk;
* ``mask``: before writing the N-th ``maskNNN.tif`` of the result (during the finalisation);
* ``embeddings_commit``: when the saved embeddings are about to be renamed into place (result already there);
* ``cleanup``: when the finished run is about to remove its temporary folder (everything committed).

Exits with the command's status if the point is never reached.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from typing import Any, Callable

import numpy as np


def _kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _counting(n: int, before: Callable[..., Any] | None, after: Callable[..., Any] | None,
              real: Callable[..., Any]) -> Callable[..., Any]:
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == n and before is not None:
            before(*args, **kwargs)
        result = real(*args, **kwargs)
        if calls == n and after is not None:
            after(*args, **kwargs)
        return result

    return wrapper


def _write_half_then_kill(stream: Any, save: Callable[[Any], None]) -> None:
    buffer = io.BytesIO()
    save(buffer)
    raw = buffer.getvalue()
    stream.write(raw[:len(raw) // 2])
    stream.flush()
    _kill()


def arm(point: str, n: int) -> None:
    """Patch the function at ``point`` so that its ``n``-th call kills the process."""
    import ctc_submission.writer
    import rshn_tf.label_store
    import rshn_tf.postprocess
    import rshn_tf.predict_folder  # binds its imports now, before anything is patched
    import rshn_tf.run_folder
    from rshn_tf.atomic import twin_path

    if point == "pair":
        cls = rshn_tf.postprocess.PostProcessor
        cls.add_pair_tiles = _counting(n, None, lambda *a, **k: _kill(), cls.add_pair_tiles)
    elif point == "checkpoint":
        real = np.savez

        def savez_half(stream: Any, *args: Any, **kwargs: Any) -> None:
            _write_half_then_kill(stream, lambda buffer: real(buffer, *args, **kwargs))

        np.savez = _counting(n, savez_half, None, real)
    elif point == "frame":
        real_save = rshn_tf.label_store.save_atomically

        def save_half(path: Any, array: Any) -> None:
            with open(twin_path(path), "wb") as stream:  # the temporary twin of rshn_tf.atomic, never renamed
                _write_half_then_kill(stream, lambda buffer: np.save(buffer, array, allow_pickle=False))

        rshn_tf.label_store.save_atomically = _counting(n, save_half, None, real_save)
    elif point == "mask":
        ctc_submission.writer.write_tiff = _counting(n, lambda *a, **k: _kill(), None,
                                                     ctc_submission.writer.write_tiff)
    elif point == "embeddings_commit":
        cls = rshn_tf.predict_folder.EmbeddingWriter
        cls.commit = _counting(n, lambda *a, **k: _kill(), None, cls.commit)
    elif point == "cleanup":
        cls = rshn_tf.run_folder.RunFolder
        cls.remove = _counting(n, lambda *a, **k: _kill(), None, cls.remove)
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def main() -> int:
    point, n, *argv = sys.argv[1:]
    arm(point, int(n))
    from rshn_tf.cli import main as rshn

    return rshn(argv)


if __name__ == "__main__":
    sys.exit(main())
