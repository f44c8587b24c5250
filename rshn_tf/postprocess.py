"""From frame-pair embeddings to a CTC result folder: tiles → clustering → tile merging → pair linking →
resampling back → finalisation → writing (paper §2.3–§2.5, §4.2; reference notes §5).

:class:`PostProcessor` is a streaming consumer: ``rshn predict`` feeds it the embeddings of one frame pair at a
time straight from the network (per tile with :meth:`PostProcessor.add_pair_tiles`), and ``rshn postprocess``
feeds it whole network-grid pairs read from ``pair_NNN.npy`` files (:func:`run_postprocess`). Both then call
:meth:`PostProcessor.finish`. This module must not import TensorFlow.
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

from ctc_submission.writer import mask_digits, write_ctc_result
from data_io.preprocess import network_shape
from data_io.resample import resample_stack
from rshn_tf.clustering import cluster_tiles
from rshn_tf.config import Config
from rshn_tf.errors import RshnError
from rshn_tf.tiling import merge_tiles, tile_grid
from rshn_tf.tracking import PairTracker, finalize_tracks

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

    Args:
        config: The resolved configuration (``data``, ``inference``, ``postprocessing``, ``tracking`` are read).
        original_shape: Size (height, width) of the original frames the result is resampled back to.
        single_frame: The video has one frame: exactly one pair is added, the frame with itself ⟨0, 0⟩ (clustered
            like any pair), and the result keeps one frame. The t_length rule is not applied then, since no track of
            a one-frame video can be longer than one frame.
    """

    def __init__(self, config: Config, original_shape: Sequence[int], single_frame: bool = False):
        self.config = config
        self.original_shape = (int(original_shape[0]), int(original_shape[1]))
        self.shape = network_shape(self.original_shape, config.data)
        self.single_frame = bool(single_frame)
        self.grid = tile_grid(self.shape, config.inference_tile_size, config.inference.tile_overlap)
        self.tracker = PairTracker(config.tracking)
        self.timings: dict[str, float] = defaultdict(float)
        self.num_pairs = 0

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
        seed = self.config.postprocessing.seed + self.num_pairs
        tile_labels = cluster_tiles(tiles, self.config.postprocessing, seed=seed)
        mid = time.perf_counter()
        merged = merge_tiles(tile_labels, self.grid, self.shape, self.config.postprocessing)
        end = time.perf_counter()
        self.tracker.add_pair(merged)
        self.timings["clustering"] += mid - start
        self.timings["merging"] += end - mid
        self.timings["tracking"] += time.perf_counter() - end
        self.num_pairs += 1

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Resample the tracked labels to the original size and finalise them (notes §5.6 order).

        Returns:
            ``(labels, tracks)``: (T, H, W) int32 labels at the original size and (N, 4) ``L B E P`` rows.
        """
        if self.num_pairs == 0:
            raise RshnError("no frame pairs were given; a video needs at least two frames")
        start = time.perf_counter()
        labels = self.tracker.labels
        tracking = self.config.tracking
        if self.single_frame:
            labels = labels[:1]
            tracking = dataclasses.replace(tracking, min_track_length=1)
        if labels.shape[1:] != self.original_shape or self.config.data.extra_scale != 1.0:
            labels = resample_stack(labels, self.original_shape, tracking.resample_interpolation,
                                    scale=1.0 / self.config.data.extra_scale)
        mid = time.perf_counter()
        labels, tracks = finalize_tracks(labels, tracking, self.config.data.border_band)
        self.timings["resampling"] += mid - start
        self.timings["finalising"] += time.perf_counter() - mid
        return labels, tracks

    def finish(self, output_dir: str | os.PathLike, digits: Optional[int] = None) -> Path:
        """Write the CTC result folder (``maskNNN.tif``, ``res_track.txt``, ``config.yaml``) atomically.

        Args:
            output_dir: Result folder, e.g. ``DATASET/01_RES``.
            digits: Frame-index digits of the mask names (those of the input frames); ``None``: 3, or 4 for more
                than 1000 frames.

        Returns:
            The result folder.
        """
        labels, tracks = self.result()
        start = time.perf_counter()
        digits = mask_digits(labels.shape[0]) if digits is None else digits
        out = write_ctc_result(output_dir, labels, tracks, digits=digits, config=self.config)
        self.timings["writing"] += time.perf_counter() - start
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


def run_postprocess(
    embeddings_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: Config,
    original_shape: Sequence[int],
    digits: Optional[int] = None,
) -> PostProcessor:
    """``rshn postprocess``: run the whole post-processing of ``predict`` on saved pair embeddings.

    Args:
        embeddings_dir: Folder of ``pair_000.npy`` … ``pair_{T-2}.npy``, each float32 (2, h, w, D): the
            L2-normalised embeddings of frames (t, t+1) on the network grid of ``config``.
        output_dir: CTC result folder to write.
        config: The resolved configuration.
        original_shape: Original frame size (height, width) the result is resampled to.
        digits: Frame-index digits of the mask names (default: 3, or 4 above 1000 frames).

    Returns:
        The finished :class:`PostProcessor` (its ``timings`` hold seconds per stage).

    Raises:
        RshnError: On missing pairs, wrong shapes or unreadable files.
    """
    files = list_pair_files(embeddings_dir)
    processor = PostProcessor(config, original_shape)
    dim = _load_pair(files[0], processor.shape, None).shape[3]
    for path in files[1:]:  # check every file before the (slow) processing starts
        _load_pair(path, processor.shape, dim)
    for path in files:
        processor.add_pair(np.asarray(_load_pair(path, processor.shape, dim), dtype=np.float32))
    processor.finish(output_dir, digits)
    return processor
