"""From frame-pair embeddings to a CTC result folder: tiles → clustering → tile merging → pair linking →
resampling back → finalisation → writing (paper §2.3–§2.5, §4.2; docs/fidelity.md §6, §7).

:class:`PostProcessor` is a streaming consumer: the Python API and ``rshn predict`` (:meth:`rshn_tf.api.RSHN.process`)
feed it the embeddings of one frame pair at a time straight from the network (per tile with
:meth:`PostProcessor.add_pair_tiles`, or the whole grid in full-frame mode), and ``rshn postprocess`` feeds it whole
network-grid pairs read from ``pair_NNN.npy`` files (:func:`run_postprocess`). Files are written by
:meth:`PostProcessor.finish`; :meth:`PostProcessor.result` returns the arrays. The grids (network grid, tiles) are
the video's :class:`~rshn_tf.geometry.GridGeometry`, the object the network side uses too. Frames the tracker has
finished go straight to a frame store (on disk beside the output, :class:`~rshn_tf.run_folder.RunFolder`), the
finalisation and writing stream over it, and the state is checkpointed every ``inference.checkpoint_every`` pairs,
so memory does not grow with the video and a killed run resumes. This module must not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ctc_submission.writer import CtcResultWriter, check_result_target
from data_io.resample import resample_2d
from rshn_tf.clustering import cluster_tiles, first_pair_background
from rshn_tf.config import Config, TrackingConfig
from rshn_tf.errors import RshnError
from rshn_tf.extras import require_for_config
from rshn_tf.geometry import GridGeometry
from rshn_tf.label_store import LabelStore, MemoryLabelStore
from rshn_tf.output_lock import claim_output
from rshn_tf.run_folder import RunFolder
from rshn_tf.tiling import merge_tiles
from rshn_tf.tracking import PairTracker, finalize_stream

log = logging.getLogger(__name__)

#: Stages timed by :class:`PostProcessor` (seconds in :attr:`PostProcessor.timings`).
STAGES = ("clustering", "merging", "tracking", "resampling", "finalising", "writing")

_PAIR_FILE = re.compile(r"^pair_(\d+)\.npy$")


def background_embedding(dim: int) -> np.ndarray:
    """The fixed background embedding e_b = (1, 0, …, 0) of the loss (§2.2), float32 of length ``dim``."""
    e_b = np.zeros(dim, dtype=np.float32)
    e_b[0] = 1.0
    return e_b


class PostProcessor:
    """Streaming post-processing of one video.

    Every pair is clustered, merged and linked as it comes; frames the tracker can no longer change are resampled
    to the original size and put into ``store`` at once (:meth:`_store`), and :meth:`finish` finalises the lineage
    and writes the result in streaming passes over the store. With a :class:`~rshn_tf.label_store.LabelStore` on
    disk, nothing in memory grows with the number of frames; :meth:`state` and :meth:`restore` checkpoint and
    resume it.

    Args:
        config: The resolved configuration (``data``, ``inference``, ``postprocessing``, ``tracking`` are read).
        original_shape: Size (height, width) of the original frames the result is resampled back to, or the video's
            :class:`~rshn_tf.geometry.GridGeometry` (the one the network used; built from the size otherwise).
        single_frame: The video has one frame: exactly one pair is added, the frame with itself ⟨0, 0⟩ (clustered
            like any pair), and the result keeps one frame. The t_length rule is not applied then, since no track of
            a one-frame video can be longer than one frame.
        store: Where finished frames go (default: a :class:`~rshn_tf.label_store.MemoryLabelStore`, which grows
            with the video).
    """

    def __init__(self, config: Config, original_shape: Sequence[int] | GridGeometry, single_frame: bool = False,
                 store: Optional[LabelStore | MemoryLabelStore] = None):
        require_for_config(config)
        self.config = config
        self.geometry = (original_shape if isinstance(original_shape, GridGeometry)
                         else GridGeometry.of(original_shape, config))
        self.original_shape = self.geometry.original_shape
        self.shape = self.geometry.shape
        self.single_frame = bool(single_frame)
        self.grid = self.geometry.tiles
        self.tracker = PairTracker(config.tracking)
        self.store = store if store is not None else MemoryLabelStore()
        self.timings: dict[str, float] = defaultdict(float)
        self.num_pairs = 0
        #: Background vector of the rule ``first_pair_median`` (set by the first pair), else None.
        self.background: Optional[np.ndarray] = None

    @property
    def num_frames(self) -> int:
        """Frames tracked so far (pairs + 1, or 0; 1 for a single-frame video)."""
        if self.single_frame:
            return min(self.num_pairs, 1)
        return self.num_pairs + 1 if self.num_pairs else 0

    def add_pair(self, embeddings: np.ndarray) -> None:
        """Add the embeddings of the next frame pair on the whole network grid.

        Args:
            embeddings: Float array (2, h, w, D) of the L2-normalised embeddings of frames (t, t+1), (h, w) the
                network grid. Tiles reaching outside the image are padded with the background embedding.
        """
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 4 or embeddings.shape[0] != 2 or tuple(embeddings.shape[1:3]) != self.shape:
            raise ValueError(f"pair embeddings must have shape (2, {self.shape[0]}, {self.shape[1]}, D), "
                             f"got {embeddings.shape}")
        start = time.perf_counter()
        pad = background_embedding(embeddings.shape[-1])
        if self.config.background_rule == "first_pair_median":  # zeros: padding, background under either rule
            pad = np.zeros_like(pad)
        tiles = [tile.extract(embeddings, pad, axis=1, copy=False) for tile in self.grid.tiles]  # views, no copies
        self.timings["clustering"] += time.perf_counter() - start
        self.add_pair_tiles(tiles)

    def add_pair_tiles(self, tiles: Sequence[np.ndarray]) -> None:
        """Add the next frame pair as per-tile embeddings (2, tile_h, tile_w, D), one per tile of :attr:`grid`."""
        if len(tiles) != len(self.grid):
            raise ValueError(f"got {len(tiles)} tiles, the grid has {len(self.grid)}")
        if self.single_frame and self.num_pairs:
            raise ValueError("a single-frame video takes exactly one pair (the frame with itself)")
        start = time.perf_counter()
        if self.config.background_rule == "first_pair_median" and self.background is None:
            self.background = first_pair_background(tiles)
        seed = self.config.postprocessing.seed + self.num_pairs
        tile_labels = cluster_tiles(tiles, self.config.postprocessing, seed=seed, background=self.background)
        mid = time.perf_counter()
        merged = merge_tiles(tile_labels, self.grid, self.shape, self.config.postprocessing)
        end = time.perf_counter()
        self.tracker.add_pair(merged)
        self.timings["clustering"] += mid - start
        self.timings["merging"] += end - mid
        self.timings["tracking"] += time.perf_counter() - end
        self.num_pairs += 1
        self._store(self.tracker.release_finished())

    def _store(self, frames: list[tuple[int, np.ndarray]]) -> None:
        """Resample finished tracker frames to the original size and put them into the store (timed as
        ``resampling`` and ``writing``)."""
        resample = self.shape != self.original_shape or self.config.data.extra_scale != 1.0
        for t, labels in frames:
            if t >= self.num_frames:  # a single-frame video: the pair's copy of the frame
                continue
            start = time.perf_counter()
            if resample:
                labels = resample_2d(labels, self.original_shape, self.config.tracking.resample_interpolation,
                                     scale=1.0 / self.config.data.extra_scale)
            mid = time.perf_counter()
            self.store.write(t, labels)
            self.timings["resampling"] += mid - start
            self.timings["writing"] += time.perf_counter() - mid

    def flush(self) -> None:
        """Store the frames the tracker still holds (after the last pair)."""
        if self.num_pairs == 0:
            raise RshnError("no frame pairs were given; a video needs at least two frames")
        self._store(self.tracker.release_all())

    def state(self) -> tuple[dict, list[np.ndarray]]:
        """The state for a checkpoint, ``(numbers, frames)``: pairs done, frames stored, the tracker's numbers and
        the frames it still holds. Everything before is in the store."""
        numbers, frames = self.tracker.state()
        background = None if self.background is None else [float(v) for v in self.background]
        return {"num_pairs": self.num_pairs, "stored": self.store.count, "tracker": numbers,
                "background": background}, frames

    def restore(self, numbers: dict, frames: Sequence[np.ndarray]) -> None:
        """Continue from a :meth:`state` (the store must hold the frames stored then)."""
        if self.store.count < numbers["stored"]:
            raise RshnError(f"{getattr(self.store, 'folder', 'frame store')}: the checkpoint needs "
                            f"{numbers['stored']} finished frames, only {self.store.count} are there; the run "
                            f"cannot be resumed (start it over without --resume)")
        self.num_pairs = int(numbers["num_pairs"])
        background = numbers.get("background")
        self.background = None if background is None else np.asarray(background, dtype=np.float64)
        self.tracker.restore(numbers["tracker"], frames)

    def _tracking_config(self) -> TrackingConfig:
        if self.single_frame:
            return dataclasses.replace(self.config.tracking, min_track_length=1)
        return self.config.tracking

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Finalise the tracked labels at the original size (in the code's order, docs/fidelity.md §7.3–§7.7) and return
        them as arrays.

        Returns:
            ``(labels, tracks)``: (T, H, W) int32 labels at the original size and (N, 4) ``L B E P`` rows.
        """
        self.flush()
        start = time.perf_counter()
        tracks, masks = finalize_stream(self.store, self._tracking_config(), self.config.data.border_band)
        labels = np.stack([frame for _, frame in masks])
        self.timings["finalising"] += time.perf_counter() - start
        return labels, tracks

    def finish(self, output_dir: str | os.PathLike, digits: Optional[int] = None,
               tmp: Optional[str | os.PathLike] = None) -> Path:
        """Finalise and write the CTC result folder (``maskNNN.tif``, ``res_track.txt``, ``config.yaml``)
        atomically, one frame at a time.

        Args:
            output_dir: Result folder, e.g. ``DATASET/01_RES``.
            digits: Frame-index digits of the mask names (those of the input frames); ``None``: 3, or 4 for more
                than 1000 frames.
            tmp: Folder to write the result into before it is renamed to ``output_dir`` (default: a new hidden
                folder beside it).

        Returns:
            The result folder.
        """
        self.flush()
        start = time.perf_counter()
        tracks, masks = finalize_stream(self.store, self._tracking_config(), self.config.data.border_band)
        writer = CtcResultWriter(output_dir, tracks, self.store.count, digits, tmp=tmp)
        writing = 0.0
        try:
            for t, labels in masks:
                began = time.perf_counter()
                writer.write_mask(t, labels)
                writing += time.perf_counter() - began
            began = time.perf_counter()
            out = writer.commit(self.config)
            writing += time.perf_counter() - began
        except BaseException:
            writer.discard()
            raise
        self.timings["finalising"] += time.perf_counter() - start - writing
        self.timings["writing"] += writing
        frames = max(self.num_frames, 1)
        log.info("post-processing per frame: %s", ", ".join(
            f"{stage} {self.timings[stage] / frames:.3f} s" for stage in STAGES))
        return out


def list_pair_files(embeddings_dir: str | os.PathLike) -> list[Path]:
    """The ``pair_000.npy`` … ``pair_{T-2}.npy`` files of an embeddings folder, in order.

    Raises:
        RshnError: If the folder is missing, holds no pair files, or a pair in the range is missing.
    """
    folder = Path(embeddings_dir)
    if not folder.is_dir():
        raise RshnError(f"{folder}: embeddings folder not found")
    found = {int(m.group(1)): folder / m.group(0) for m in map(_PAIR_FILE.match, os.listdir(folder)) if m}
    if not found:
        raise RshnError(f"{folder}: no pair_NNN.npy files (float32 (2, h, w, D) embeddings of frames t, t+1)")
    missing = [i for i in range(max(found) + 1) if i not in found]
    if missing:
        raise RshnError(f"{folder}: pair_{missing[0]:03d}.npy is missing ({len(missing)} missing in pair_000 … "
                        f"pair_{max(found):03d}); every consecutive frame pair is needed")
    return [found[i] for i in range(len(found))]


def _load_pair(path: Path, shape: tuple[int, int], dim: Optional[int]) -> np.ndarray:
    try:
        pair = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise RshnError(f"{path}: cannot read the embeddings ({type(exc).__name__}: {exc})") from exc
    expected = f"(2, {shape[0]}, {shape[1]}, {'D' if dim is None else dim})"
    if pair.ndim != 4 or pair.shape[0] != 2 or tuple(pair.shape[1:3]) != shape or (dim and pair.shape[3] != dim):
        raise RshnError(f"{path}: embeddings of shape {pair.shape}, expected {expected} (the network grid is "
                        f"data.resampled_size of the config, or --original-shape when that is null)")
    if not np.issubdtype(pair.dtype, np.floating):
        raise RshnError(f"{path}: embeddings must be floating point, got {pair.dtype}")
    return pair


def _check_finite_pair(pair: np.ndarray, path: Path, index: int) -> None:
    """Reject saved embeddings holding NaN or infinite values (they would silently empty frames or change tracks).

    Raises:
        RshnError: Naming the file and the frame of the pair that is affected.
    """
    for half in range(2):
        bad = int(pair[half].size - np.count_nonzero(np.isfinite(pair[half])))
        if bad:
            raise RshnError(f"{path}: the embeddings of frame {index + half} (pair {index}, frame {half} of 2) hold "
                            f"{bad} NaN or infinite value(s); write them again with 'rshn predict --save-embeddings'")


def checkpoint_due(processor: PostProcessor, total_pairs: int) -> bool:
    """Whether a checkpoint is due after the pair just added: every ``inference.checkpoint_every`` pairs, and after
    the last pair (then :meth:`PostProcessor.flush` must run first)."""
    every = processor.config.inference.checkpoint_every
    return every > 0 and (processor.num_pairs % every == 0 or processor.num_pairs == total_pairs)


def resumable(run: RunFolder, exc: BaseException) -> None:
    """After a failure: remove the run's folder when it has no checkpoint, and tell the user (a note on ``exc``)
    where the unfinished run is and how to continue it."""
    run.discard_if_empty()
    if hasattr(exc, "add_note"):
        exc.add_note(run.resume_hint())
    else:  # Python 3.10: the CLI prints __notes__ of user errors itself
        exc.__notes__ = [*getattr(exc, "__notes__", []), run.resume_hint()]


def run_postprocess(
    embeddings_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: Config,
    original_shape: Sequence[int],
    digits: Optional[int] = None,
    resume: bool = False,
) -> PostProcessor:
    """``rshn postprocess``: run the whole post-processing of ``predict`` on saved pair embeddings.

    The finished frames wait on disk beside the output (:class:`~rshn_tf.run_folder.RunFolder`), so memory does not
    grow with the video; a checkpoint every ``inference.checkpoint_every`` pairs lets a killed run continue with
    ``resume`` to the same result. Only one process may write ``output_dir`` at a time, and it is checked for
    writability before the processing starts (:func:`~rshn_tf.output_lock.claim_output`).

    Args:
        embeddings_dir: Folder of ``pair_000.npy`` … ``pair_{T-2}.npy``, each float32 (2, h, w, D): the
            L2-normalised embeddings of frames (t, t+1) on the network grid of ``config``.
        output_dir: CTC result folder to write.
        config: The resolved configuration.
        original_shape: Original frame size (height, width) the result is resampled to.
        digits: Frame-index digits of the mask names (default: 3, or 4 above 1000 frames).
        resume: Continue the unfinished run writing ``output_dir`` from its last checkpoint (start afresh when there
            is none); without it, an unfinished run there is refused.

    Returns:
        The finished :class:`PostProcessor` (its ``timings`` hold seconds per stage).

    Raises:
        RshnError: On a bad ``original_shape``, missing pairs, wrong shapes, NaN or infinite values or unreadable
            files, an output another process is writing, or an unfinished run without ``resume``.
    """
    if len(original_shape) != 2 or min(int(n) for n in original_shape) < 1:
        raise RshnError(f"--original-shape {' '.join(str(n) for n in original_shape)}: expected the height and width "
                        f"of the original frames, two positive integers")
    require_for_config(config)
    files = list_pair_files(embeddings_dir)
    geometry = GridGeometry.of(original_shape, config)
    dim = _load_pair(files[0], geometry.shape, None).shape[3]
    for index, path in enumerate(files):  # check every file before the (slow) processing starts
        _check_finite_pair(_load_pair(path, geometry.shape, dim), path, index)
    check_result_target(output_dir)
    identity = {"command": "postprocess", "embeddings": str(Path(embeddings_dir).resolve()), "pairs": len(files),
                "original_shape": [int(original_shape[0]), int(original_shape[1])], "digits": digits}
    with claim_output(output_dir, "result folder"):
        run = RunFolder.open(output_dir, identity, config, resume)
        processor = PostProcessor(config, geometry, store=run.frames)
        try:
            if run.checkpoint is not None:
                processor.restore(*run.checkpoint)
            for path in files[processor.num_pairs:]:
                processor.add_pair(np.asarray(_load_pair(path, processor.shape, dim), dtype=np.float32))
                if checkpoint_due(processor, len(files)):
                    if processor.num_pairs == len(files):
                        processor.flush()
                    run.save(*processor.state())
            processor.finish(output_dir, digits, tmp=run.result_dir)
        except BaseException as exc:
            resumable(run, exc)
            raise
        run.remove()
    return processor
