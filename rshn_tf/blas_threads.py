"""One BLAS thread for small matrix products (the mean shift, the core distances of HDBSCAN).

A second BLAS thread makes small products slower, and much slower on a busy machine; parallelism comes from
clustering tiles in parallel threads instead. This module must not import TensorFlow.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

_blas_lock = threading.Lock()
_blas_state: dict = {"users": 0, "limiter": None, "controller": None}


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread while any caller is inside (thread-safe, nestable).

    The matrix products of the clustering are small; parallelism comes from clustering tiles in parallel instead
    (:func:`rshn_tf.clustering.cluster_tiles`).
    """
    with _blas_lock:
        if _blas_state["users"] == 0:
            try:
                from threadpoolctl import ThreadpoolController  # installed with scikit-learn
            except ImportError:  # pragma: no cover - scikit-learn always brings it
                ThreadpoolController = None
            if ThreadpoolController is not None:
                if _blas_state["controller"] is None:
                    _blas_state["controller"] = ThreadpoolController()
                _blas_state["limiter"] = _blas_state["controller"].limit(limits=1, user_api="blas")
        _blas_state["users"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_state["users"] -= 1
            if _blas_state["users"] == 0 and _blas_state["limiter"] is not None:
                _blas_state["limiter"].restore_original_limits()
                _blas_state["limiter"] = None
