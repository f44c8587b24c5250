"""An ordered stream of training samples computed by parallel workers (no TensorFlow here).

Sample ``i`` of the stream is ``make_sample(data, seed, i).compact(max_instances)``, whatever the number or kind of
workers, so the stream is reproducible and can be resumed at any index. Workers are threads (SimpleITK and most
NumPy work release the GIL) or processes started with ``spawn`` (never ``fork``: TensorFlow and ITK's thread pools
do not survive a fork); each process gets its own copy of the preprocessed videos. The stream keeps
``num_workers + prefetch`` samples in flight and yields them in index order.

SimpleITK is multithreaded itself; each worker process sets its global thread count to ``cpu_count // workers``
(at least 1). In thread mode the process-wide count is set the same way while the stream is open.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing
import os
import signal
from typing import Iterator, Literal, Optional

import numpy as np
import SimpleITK as sitk

from data_io.sampling import TrainingData, make_sample
from rshn_tf.errors import RshnError

WorkerType = Literal["thread", "process"]

_worker_data: Optional[TrainingData] = None


def simpleitk_threads(num_workers: int) -> int:
    """SimpleITK threads per worker: the CPU cores shared out among the workers (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, num_workers))


def _init_process(data: TrainingData, threads: int) -> None:
    global _worker_data
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    _worker_data = data
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(threads)


def _process_task(seed: int, index: int, max_instances: int) -> dict[str, np.ndarray]:
    return make_sample(_worker_data, seed, index).compact(max_instances)


def _thread_task(data: TrainingData, seed: int, index: int, max_instances: int) -> dict[str, np.ndarray]:
    return make_sample(data, seed, index).compact(max_instances)


class SampleStream:
    """Iterate over compact training samples ``start, start + 1, …`` (up to ``stop`` or forever).

    Use as a context manager (or call :meth:`close`) so the workers stop.

    Args:
        data: The training videos and configuration.
        seed: Training seed.
        start: First sample index (to resume a stream).
        stop: Index after the last sample, or None for an endless stream.
        num_workers: Parallel workers; 0 computes samples in the calling thread.
        worker_type: ``thread`` or ``process``.
        prefetch: Samples computed ahead beyond one per worker.

    Raises:
        RshnError: On an unknown worker type or negative counts.
    """

    def __init__(self, data: TrainingData, seed: int, start: int = 0, stop: Optional[int] = None,
                 num_workers: int = 2, worker_type: WorkerType = "thread", prefetch: int = 4):
        if worker_type not in ("thread", "process"):
            raise RshnError(f"key 'data.worker_type' must be 'thread' or 'process', got {worker_type!r}")
        if num_workers < 0 or prefetch < 0:
            raise RshnError(f"num_workers ({num_workers}) and prefetch ({prefetch}) must be non-negative")
        self.data = data
        self.seed = int(seed)
        self.start = int(start)
        self.stop = stop
        self.num_workers = int(num_workers)
        self.worker_type = worker_type
        self.prefetch = int(prefetch)
        self.max_instances = data.config.loss.max_instances
        self._executor: Optional[concurrent.futures.Executor] = None
        self._previous_threads: Optional[int] = None

    def _indices(self) -> Iterator[int]:
        return iter(range(self.start, self.stop)) if self.stop is not None else itertools.count(self.start)

    def _open(self) -> concurrent.futures.Executor:
        threads = simpleitk_threads(self.num_workers)
        if self.worker_type == "process":
            return concurrent.futures.ProcessPoolExecutor(
                self.num_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_process,
                initargs=(self.data, threads))
        self._previous_threads = sitk.ProcessObject_GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(threads)
        return concurrent.futures.ThreadPoolExecutor(self.num_workers, thread_name_prefix="rshn-sample")

    def _submit(self, index: int) -> concurrent.futures.Future:
        if self.worker_type == "process":
            return self._executor.submit(_process_task, self.seed, index, self.max_instances)
        return self._executor.submit(_thread_task, self.data, self.seed, index, self.max_instances)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        indices = self._indices()
        if self.num_workers == 0:
            for index in indices:
                yield make_sample(self.data, self.seed, index).compact(self.max_instances)
            return
        self._executor = self._open()
        pending: collections.deque = collections.deque()
        try:
            for index in itertools.islice(indices, self.num_workers + self.prefetch):
                pending.append(self._submit(index))
            while pending:
                result = pending.popleft().result()
                next_index = next(indices, None)
                if next_index is not None:
                    pending.append(self._submit(next_index))
                yield result
        finally:
            for future in pending:
                future.cancel()
            self.close()

    def close(self) -> None:
        """Stop the workers (pending samples are dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._previous_threads is not None:
            sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(self._previous_threads)
            self._previous_threads = None

    def __enter__(self) -> "SampleStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
