"""Network inference over a whole video: sliding windows, tiles and ConvGRU states → frame-pair embeddings
(paper §2.4, §2.5, §4.2; reference notes §1.5, §5.1, §5.2), and ``rshn predict`` on top of it.

Frames are read one at a time, smoothed and robustly normalised at their original resolution and resampled to the
network grid (:mod:`data_io.preprocess`); a rolling buffer keeps only the frames of the current window.

Windows (§2.5): the video is cut into windows of l = ``data.sequence_length`` frames shifted by one frame; the
ConvGRU states are reset to zero at the start of every window, and each window runs its frames in order. The first
window gives the pairs ⟨0, 1⟩ … ⟨l−2, l−1⟩ (the paper's sequences of length 2 … l−1 for the first l−2 frames are
prefixes of it, and the network is causal, so their last pairs are exactly these), every later window j only its
last pair ⟨j+l−2, j+l−1⟩: T − 1 pairs in all, handed to the post-processing in frame order as soon as they exist.
A video shorter than l frames (T ≥ 2) is one window of length T. A one-frame video is one window of length 1 and
the single pair ⟨0, 0⟩ (the frame with itself; see :class:`~rshn_tf.postprocess.PostProcessor`, ``single_frame``).

Spatial layouts (``inference.full_frame``):

* tiles (paper, default): every network-grid frame is cut into inference tiles (``inference.tile_size``, by
  default ``data.tile_size``) overlapping by ``inference.tile_overlap`` (§4.2: 256 × 256, 128), padded with -1 (the normalised intensity outside the image)
  where a tile reaches past a small image. Each tile keeps its own ConvGRU states, and the post-processing clusters
  each tile's own embeddings (:meth:`~rshn_tf.postprocess.PostProcessor.add_pair_tiles`), as in the paper.
* full frame: the whole frame, padded with -1 to a multiple of 2^(levels−1), runs as one input; the tiles for the
  clustering are cut from its embeddings (:meth:`~rshn_tf.postprocess.PostProcessor.add_pair`). Fewer pixels run
  through the network (no overlap) but every pixel sees the whole frame as context, so results differ slightly.

Batching (``inference.batch_tiles``, ``inference.max_batch_tiles``, default one tile per call as in the authors'
loop): the tiles of a frame go through one ``tf.function`` call per batch of up to ``max_batch_tiles`` tiles (the
traced function has a free batch axis, so a smaller last batch does not retrace). Results equal the per-tile loop
up to float rounding of the convolution library. A window runs batch by batch (tile-major, like the authors' loop,
notes §5.1): one batch runs all frames of the window before the next batch starts, so only one batch's ConvGRU
states are alive; the memory of a window is the used embeddings of all tiles plus one batch's states and
activations, whatever the number of tiles.

Architectures: the RSHN runs frame by frame with explicit states (:meth:`RecurrentStackedHourglass.step`; frames
whose embeddings a window does not use only advance the states, :meth:`RecurrentStackedHourglass.advance`; with
``inference.encoded_steps`` the first frame of a window skips its zero-state convolutions and hourglass 0's
state-independent part is reused across windows where it fits, :class:`EncodedRecurrence`); the SHN
has no temporal context, so each frame runs once and consecutive frames form the pairs (the same embeddings any
window would give); the volumetric network runs each window (B, l, h, w, 1) in one pass, and pairs are taken from
its output volume like for the RSHN (notes §2.1).

``rshn predict`` = :func:`predict`; :func:`embed_pairs` is the network part alone (for tests and benchmarks). With
``inference.overlap_postprocessing`` :func:`predict` post-processes each pair in a worker thread while the network
computes the next (:func:`consume_pairs`). Finished frames go to disk beside the output and the post-processing
state is checkpointed there (:mod:`rshn_tf.run_folder`); a resumed run starts the network at the first window that
gives a missing pair (:meth:`PairEmbedder.pairs` ``start``), which is exact because every window starts from zero
states.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ctc_submission.writer import check_result_target, swap_in
from data_io.ctc import FrameFiles, list_frames, read_frame
from data_io.preprocess import OUTSIDE_VALUE, network_shape, preprocess_frame, to_network_grid
from rshn_tf.config import Config, DataConfig, resolve_predict_config, save_config
from rshn_tf.console import progress_bar
from rshn_tf.errors import RshnError
from rshn_tf.label_store import fsync_written, save_atomically
from rshn_tf.output_lock import claim_output
from rshn_tf.postprocess import PostProcessor, checkpoint_due, resumable
from rshn_tf.run_folder import RunFolder, partial_path
from rshn_tf.tiling import TileGrid, extract_tiles, tile_grid

log = logging.getLogger(__name__)

#: Timed stages of the network part (seconds in :attr:`PairEmbedder.timings`).
NETWORK_STAGES = ("reading", "preprocessing", "network")


# --------------------------------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True)
class Window:
    """One sliding window: frames ``start … start + length − 1`` run from zero states.

    Attributes:
        start: First frame.
        length: Number of frames.
        pairs: The frame pairs (t, t') whose embeddings this window provides, in order.
    """

    start: int
    length: int
    pairs: tuple[tuple[int, int], ...]

    @property
    def frames(self) -> range:
        """The frames the window runs, in order."""
        return range(self.start, self.start + self.length)

    @property
    def needed(self) -> frozenset[int]:
        """Frames whose embeddings are used (in a pair)."""
        return frozenset(t for pair in self.pairs for t in pair)


def plan_windows(num_frames: int, sequence_length: int) -> list[Window]:
    """The windows of a video and the pairs each one provides (§2.5; notes §5.1; see the module docstring).

    Args:
        num_frames: Frames T of the video (at least 1).
        sequence_length: Window length l (``data.sequence_length``).

    Returns:
        Windows in order; their pairs are ⟨0, 1⟩ … ⟨T−2, T−1⟩ once each (⟨0, 0⟩ for T = 1).
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if sequence_length < 2:
        raise ValueError(f"the window length must be at least 2, got {sequence_length}")
    if num_frames == 1:
        return [Window(0, 1, ((0, 0),))]
    length = min(sequence_length, num_frames)
    windows = [Window(0, length, tuple((t, t + 1) for t in range(length - 1)))]
    for start in range(1, num_frames - length + 1):
        last = start + length - 1
        windows.append(Window(start, length, ((last - 1, last),)))
    return windows


# --------------------------------------------------------------------------------------------------------------
# Frames


class FrameSource:
    """The network-grid frames of a sequence folder, read and preprocessed on demand and kept only while needed.

    Args:
        paths: Frame files in order (from :func:`data_io.ctc.list_frames`).
        config: Data settings (smoothing, normalisation, network grid).
        original_shape: Size (height, width) of the raw frames.
    """

    def __init__(self, paths: Sequence[Path], config: DataConfig, original_shape: Sequence[int]):
        self.paths = list(paths)
        self.config = config
        self.original_shape = (int(original_shape[0]), int(original_shape[1]))
        self.shape = network_shape(self.original_shape, config)
        self.timings: dict[str, float] = defaultdict(float)
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, t: int) -> np.ndarray:
        """Frame t on the network grid, float32 (h, w)."""
        if t not in self._cache:
            start = time.perf_counter()
            raw = read_frame(self.paths[t], t)
            if raw.shape != self.original_shape:
                raise RshnError(f"{self.paths[t]}: frame shape {raw.shape} differs from {self.original_shape}")
            mid = time.perf_counter()
            self._cache[t] = to_network_grid(preprocess_frame(raw, self.config), self.config)
            self.timings["reading"] += mid - start
            self.timings["preprocessing"] += time.perf_counter() - mid
        return self._cache[t]

    def release_before(self, t: int) -> None:
        """Forget every frame before t."""
        for key in [k for k in self._cache if k < t]:
            del self._cache[key]

    @property
    def cached(self) -> int:
        """Frames currently held."""
        return len(self._cache)


# --------------------------------------------------------------------------------------------------------------
# Spatial layouts


def central_owner(grid: TileGrid) -> np.ndarray:
    """For every image pixel, the tile in which it lies most centrally.

    Centrality is the distance (in pixels) to the nearest edge of the tile; ties go to the first tile in grid
    order. With the paper's grid (overlap = half a tile) this cuts every overlap in the middle.

    Returns:
        (H, W) int32 tile indices.
    """
    height, width = grid.image_shape
    best = np.full((height, width), -1, dtype=np.int64)
    owner = np.zeros((height, width), dtype=np.int32)
    for tile in grid.tiles:
        th, tw = tile.size
        ys = np.arange(th)[tile.tile_slice[0]]
        xs = np.arange(tw)[tile.tile_slice[1]]
        dy = np.minimum(ys, th - 1 - ys)
        dx = np.minimum(xs, tw - 1 - xs)
        centrality = np.minimum(dy[:, None], dx[None, :])
        region = best[tile.image_slice]
        better = centrality > region
        region[better] = centrality[better]
        owner[tile.image_slice][better] = tile.index
    return owner


class TileLayout:
    """Tiles mode: the network runs on the tiles of the network-grid frame (§2.4, §4.2; notes §5.2)."""

    full_frame = False

    def __init__(self, shape: Sequence[int], config: Config):
        self.shape = (int(shape[0]), int(shape[1]))
        self.grid = tile_grid(self.shape, config.inference_tile_size, config.inference.tile_overlap)
        self.input_shape = self.grid.tile_size
        self._owner: Optional[np.ndarray] = None

    @property
    def num_inputs(self) -> int:
        """Network inputs per frame (tiles)."""
        return len(self.grid)

    def inputs(self, frame: np.ndarray) -> np.ndarray:
        """(n_tiles, th, tw, 1) float32 tiles of a network-grid frame, padded with -1 outside the image."""
        return extract_tiles(frame, self.grid, pad_value=OUTSIDE_VALUE)[..., None]

    def add_to(self, processor: PostProcessor, first: np.ndarray, second: np.ndarray) -> None:
        """Give the pair to the post-processing tile by tile (each tile's own embeddings)."""
        processor.add_pair_tiles([np.stack([a, b]) for a, b in zip(first, second)])

    def full_pair(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """(2, H, W, D) float32 pair on the network grid, each pixel from the tile where it lies most centrally."""
        if self._owner is None:
            self._owner = central_owner(self.grid)
        out = np.empty((2,) + self.shape + (first.shape[-1],), dtype=np.float32)
        for tile in self.grid.tiles:
            mask = self._owner[tile.image_slice] == tile.index
            for k, embeddings in enumerate((first, second)):
                out[k][tile.image_slice][mask] = tile.crop(embeddings[tile.index])[mask]
        return out


class FullFrameLayout:
    """Full-frame mode: the network runs on the whole frame, padded with -1 to a multiple of 2^(levels−1)."""

    full_frame = True

    def __init__(self, shape: Sequence[int], multiple: int):
        self.shape = (int(shape[0]), int(shape[1]))
        padded = tuple(-(-s // multiple) * multiple for s in self.shape)
        self.input_shape = padded
        self.pad = tuple(((p - s) // 2, p - s - (p - s) // 2) for p, s in zip(padded, self.shape))
        self.crop = tuple(slice(before, before + s) for (before, _), s in zip(self.pad, self.shape))

    num_inputs = 1

    def inputs(self, frame: np.ndarray) -> np.ndarray:
        """(1, H', W', 1) float32: the frame centred in the padded canvas, -1 around it."""
        return np.pad(frame, self.pad, constant_values=OUTSIDE_VALUE)[None, ..., None].astype(np.float32, copy=False)

    def full_pair(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """(2, H, W, D) float32 pair cropped back to the network grid."""
        return np.stack([first[0][self.crop], second[0][self.crop]]).astype(np.float32, copy=False)

    def add_to(self, processor: PostProcessor, first: np.ndarray, second: np.ndarray) -> None:
        """Give the whole-frame pair to the post-processing, which cuts the tiles from it."""
        processor.add_pair(self.full_pair(first, second))


def make_layout(shape: Sequence[int], config: Config) -> TileLayout | FullFrameLayout:
    """The layout selected by ``inference.full_frame`` for a network grid of size ``shape``."""
    if config.inference.full_frame:
        return FullFrameLayout(shape, 2 ** (config.model.levels - 1))
    return TileLayout(shape, config)


# --------------------------------------------------------------------------------------------------------------
# The network part


def batch_size(config: Config, num_inputs: int) -> int:
    """Inputs per network call: ``inference.max_batch_tiles`` (0 = all) with ``batch_tiles``, else 1."""
    if not config.inference.batch_tiles:
        return 1
    limit = config.inference.max_batch_tiles
    return num_inputs if limit <= 0 else min(limit, num_inputs)


def _chunks(count: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, count)) for i in range(0, count, size)]


@dataclass
class PairEmbeddings:
    """The embeddings of one frame pair as produced by the network.

    Attributes:
        index: Pair number (0 … T−2; 0 for a one-frame video).
        frames: The two frames (t, t+1), or (0, 0) for a one-frame video.
        first: L2-normalised embeddings of the first frame, (n_inputs, h, w, D) float32 (n_inputs = tiles, or 1
            padded full frame).
        second: The same for the second frame.
    """

    index: int
    frames: tuple[int, int]
    first: np.ndarray
    second: np.ndarray


class PairEmbedder:
    """Runs a trained network over a video and yields the embeddings of every frame pair in order.

    Args:
        model: An RSHN, SHN or volumetric network (:func:`rshn_tf.models.build_model`); any object with the RSHN
            streaming API (``zero_states``, ``step``, ``normalized_embeddings``, ``stacks``, ``levels``,
            ``filters``) runs as an RSHN.
        config: The resolved configuration (``data``, ``model``, ``inference`` are read).
        layout: :class:`TileLayout` or :class:`FullFrameLayout`.
    """

    def __init__(self, model: Any, config: Config, layout: TileLayout | FullFrameLayout):
        import tensorflow as tf

        from rshn_tf.models import StackedHourglass, VolumetricStackedHourglass

        self.model = model
        self.config = config
        self.layout = layout
        self.batch = batch_size(config, layout.num_inputs)
        self.timings: dict[str, float] = defaultdict(float)
        self.frame_steps = 0
        height, width = layout.input_shape
        frame_spec = _frame_spec(layout)
        if hasattr(model, "step") and hasattr(model, "zero_states"):  # the RSHN streaming API
            self.kind = "rshn"
            if config.inference.encoded_steps and hasattr(model, "encode"):
                self._recurrence = EncodedRecurrence(model, layout, config)
            else:
                self._recurrence = PlainRecurrence(model, layout)
        elif isinstance(model, VolumetricStackedHourglass):
            self.kind = "volumetric"
            self._function = tf.function(
                lambda volume: model.normalized_embeddings(model(volume)),
                input_signature=[tf.TensorSpec((None, None, height, width, 1), tf.float32)])
        elif isinstance(model, StackedHourglass):
            self.kind = "shn"
            self._function = tf.function(lambda frames: model.normalized_embeddings(model(frames)),
                                         input_signature=[frame_spec])
        else:
            raise RshnError(f"cannot run inference with a {type(model).__name__}; expected an RSHN, SHN or "
                            "volumetric network")

    @property
    def tracing_count(self) -> int:
        """How often each network function was traced at most (1 once used; more would mean retracing)."""
        functions = self._recurrence.functions if self.kind == "rshn" else [self._function]
        return max(f.experimental_get_tracing_count() for f in functions)

    @property
    def encodings(self) -> int:
        """RSHN with ``inference.encoded_steps``: inputs whose hourglass-0 encoding was computed (not reused)."""
        return self._recurrence.encodings if self.kind == "rshn" else 0

    def pairs(self, source: FrameSource, start: int = 0) -> Iterator[PairEmbeddings]:
        """Yield the embeddings of pairs ⟨0, 1⟩ … ⟨T−2, T−1⟩ (⟨0, 0⟩ for T = 1) of ``source`` in order.

        Args:
            source: The frames.
            start: First pair to yield (resuming): windows that give only earlier pairs do not run. Every window
                starts from zero states (§2.5), so the pairs are those of a run from the first frame.
        """
        windows = plan_windows(len(source), self.config.data.sequence_length)
        if self.kind == "shn":
            yield from self._pairs_still(source, windows, start)
            return
        index = 0
        for window in windows:
            if index + len(window.pairs) <= start:
                index += len(window.pairs)
                continue
            source.release_before(window.start)
            run = self._window_rshn if self.kind == "rshn" else self._window_volumetric
            for first, second, frames in run(source, window):
                if index >= start:
                    yield PairEmbeddings(index, frames, first, second)
                index += 1
        source.release_before(len(source))

    # -- per architecture

    def _inputs(self, source: FrameSource, t: int) -> np.ndarray:
        return self.layout.inputs(source[t])

    def _window_rshn(self, source: FrameSource, window: Window) -> Iterator[tuple[np.ndarray, np.ndarray, tuple]]:
        """Run a window tile by tile, as the authors' code does (notes §1.5, §5.1).

        Each batch of inputs runs all frames of the window from zero states (§2.5) before the next batch starts, so
        only one batch's ConvGRU states exist at a time; the embeddings of the frames the window's pairs use are
        kept for all inputs, and each pair is yielded as soon as the last batch has run its second frame (with one
        batch, e.g. the full frame, pairs stream out as before). Frames whose embeddings are not used only advance
        the states.
        """
        import tensorflow as tf

        needed = window.needed
        frames = list(window.frames)
        inputs = {t: self._inputs(source, t) for t in frames}
        kept: dict[int, np.ndarray] = {}
        chunks = _chunks(self.layout.num_inputs, self.batch)
        pending = list(window.pairs)
        recurrence = self._recurrence
        for k, chunk in enumerate(chunks):
            states = recurrence.start(chunk.stop - chunk.start)
            for t in frames:
                start = time.perf_counter()
                embeddings, states = recurrence(tf.constant(inputs[t][chunk]), (t, k), states, t in needed)
                if embeddings is not None:
                    if t not in kept:
                        kept[t] = np.empty((self.layout.num_inputs,) + tuple(embeddings.shape[1:]), np.float32)
                    kept[t][chunk] = embeddings.numpy()
                self.timings["network"] += time.perf_counter() - start
                if k == len(chunks) - 1:  # the last batch completes the frames in order: hand out finished pairs
                    while pending and pending[0][1] <= t:
                        a, b = pending.pop(0)
                        yield kept[a], kept[b], (a, b)
                        if all(a not in pair for pair in pending):
                            del kept[a]
        recurrence.forget_before(window.start + 1)  # the next window starts one frame later
        self.frame_steps += len(frames)

    def _window_volumetric(self, source: FrameSource, window: Window) -> Iterator[tuple[np.ndarray, np.ndarray,
                                                                                         tuple]]:
        """Run the whole window in one pass per batch of inputs; pairs come from the output volume (notes §2.1)."""
        import tensorflow as tf

        volume = np.stack([self._inputs(source, t) for t in window.frames], axis=1)  # (n, L, h, w, 1)
        start = time.perf_counter()
        needed = sorted(window.needed)
        positions = [t - window.start for t in needed]
        outputs = []
        for chunk in _chunks(self.layout.num_inputs, self.batch):
            out = self._function(tf.constant(volume[chunk]))
            outputs.append(tf.gather(out, positions, axis=1).numpy())
        result = np.concatenate(outputs) if len(outputs) > 1 else outputs[0]
        self.timings["network"] += time.perf_counter() - start
        self.frame_steps += window.length
        kept = {t: result[:, i] for i, t in enumerate(needed)}
        for a, b in window.pairs:
            yield kept[a], kept[b], (a, b)

    def _pairs_still(self, source: FrameSource, windows: list[Window], first_pair: int = 0
                     ) -> Iterator[PairEmbeddings]:
        """SHN: no temporal context, so every frame runs once and consecutive frames form the pairs (from pair
        ``first_pair`` on)."""
        import tensorflow as tf

        cache: dict[int, np.ndarray] = {}
        index = 0
        for window in windows:
            for a, b in window.pairs:
                if index < first_pair:
                    index += 1
                    continue
                for t in (a, b):
                    if t not in cache:
                        inputs = self._inputs(source, t)
                        start = time.perf_counter()
                        outputs = [self._function(tf.constant(inputs[c])).numpy()
                                   for c in _chunks(self.layout.num_inputs, self.batch)]
                        cache[t] = np.concatenate(outputs) if len(outputs) > 1 else outputs[0]
                        self.timings["network"] += time.perf_counter() - start
                        self.frame_steps += 1
                source.release_before(b)
                yield PairEmbeddings(index, (a, b), cache[a], cache[b])
                index += 1
                for old in [u for u in cache if u < b]:
                    del cache[old]


class PlainRecurrence:
    """RSHN frame steps with :meth:`~rshn_tf.models.RecurrentStackedHourglass.step` (the training graph): every
    window starts from explicit zero states; frames whose embeddings are not used only ``advance`` the states.

    Args:
        model: An object with the RSHN streaming API (``zero_states``, ``step``, ``normalized_embeddings``,
            ``stacks``, ``levels``, ``filters``; ``advance`` optional).
        layout: The spatial layout (its ``input_shape`` fixes the traced shapes).
    """

    def __init__(self, model: Any, layout: TileLayout | FullFrameLayout):
        import tensorflow as tf

        self.model = model
        self.input_shape = layout.input_shape
        #: Inputs whose hourglass-0 encoding was computed (:class:`EncodedRecurrence`; none here).
        self.encodings = 0
        frame_spec, state_specs = _frame_spec(layout), _state_specs(model, layout)

        def step(frames: Any, states: Any) -> tuple[Any, Any]:
            outputs, new_states = model.step(frames, states)
            return model.normalized_embeddings(outputs), new_states

        self._step = tf.function(step, input_signature=[frame_spec, state_specs])
        advance = getattr(model, "advance", None)
        self._advance = tf.function(advance, input_signature=[frame_spec, state_specs]) if advance else None

    @property
    def functions(self) -> list[Any]:
        """The traced functions (for tracing counts)."""
        return [self._step] + ([self._advance] if self._advance is not None else [])

    def start(self, batch: int) -> Any:
        """States at the start of a window: zeros, made fresh (they are as big as the states: ~0.6 GB for a whole
        1100 × 700 frame, so they are not cached)."""
        return self.model.zero_states(batch, *self.input_shape)

    def __call__(self, frames: Any, key: tuple[int, int], states: Any, needed: bool) -> tuple[Any, Any]:
        """One frame step: ``(normalised embeddings or None when not needed, new states)``."""
        if needed or self._advance is None:
            embeddings, states = self._step(frames, states)
            return (embeddings if needed else None), states
        return None, self._advance(frames, states)

    def forget_before(self, t: int) -> None:
        """Nothing is kept between windows."""


class EncodedRecurrence(PlainRecurrence):
    """RSHN frame steps that use :meth:`~rshn_tf.models.RecurrentStackedHourglass.encode` and
    :meth:`~rshn_tf.models.RecurrentStackedHourglass.step_encoded` where they save work
    (``inference.encoded_steps``); same results up to float rounding (docs/performance.md):

    * The first frame of every window starts from zero states (§2.5), so all state convolutions of both
      hourglasses are skipped for it (``states`` is None).
    * Hourglass 0's encoding of a frame (contracting path and the input half of its ConvGRU convolutions) does not
      depend on the states, and every frame is in l overlapping windows: when the encodings of l frames of all
      inputs fit into ``inference.encoding_cache_mb``, each is computed once and reused by the next windows (e.g.
      DIC-C2DH-HeLa: one 256 × 256 tile, 8 × 67 MB for the paper network). Otherwise the later frames of a window
      run the plain step (one convolution over [x, h] is faster than its two halves when nothing is reused).

    Args:
        model: A :class:`~rshn_tf.models.RecurrentStackedHourglass`.
        layout: The spatial layout.
        config: Reads ``data.sequence_length`` and ``inference.encoding_cache_mb``.
    """

    def __init__(self, model: Any, layout: TileLayout | FullFrameLayout, config: Config):
        import tensorflow as tf

        super().__init__(model, layout)
        frame_spec, state_specs = _frame_spec(layout), _state_specs(model, layout)
        encoded_specs = [(spec,) * 3 for spec in state_specs[0]]

        def step(frames: Any, encoded: Any, states: Any = None) -> tuple[Any, Any]:
            outputs, new_states = model.step_encoded(frames, encoded, states)
            return model.normalized_embeddings(outputs), new_states

        self._encode = tf.function(model.encode, input_signature=[frame_spec])
        self._first = {  # states None = zeros: the first frame of a window
            True: tf.function(lambda frames, encoded: step(frames, encoded),
                              input_signature=[frame_spec, encoded_specs]),
            False: tf.function(lambda frames, encoded: model.advance_encoded(frames, encoded),
                               input_signature=[frame_spec, encoded_specs]),
        }
        height, width = layout.input_shape
        per_input = 3 * model.filters * 4 * sum((height >> level) * (width >> level) for level in range(model.levels))
        #: Bytes the encodings of one window (l frames of all inputs) take; reused across windows when they fit.
        self.cache_bytes = layout.num_inputs * config.data.sequence_length * per_input
        self.reuse = self.cache_bytes <= config.inference.encoding_cache_mb * 2**20
        self._next = {
            True: tf.function(step, input_signature=[frame_spec, encoded_specs, state_specs]),
            False: tf.function(model.advance_encoded, input_signature=[frame_spec, encoded_specs, state_specs]),
        } if self.reuse else {}
        self._cache: dict[tuple[int, int], Any] = {}
        log.info("hourglass-0 encodings %s across windows (%.0f MB for %d inputs x %d frames; "
                 "inference.encoding_cache_mb %d)", "reused" if self.reuse else "not reused", self.cache_bytes / 2**20,
                 layout.num_inputs, config.data.sequence_length, config.inference.encoding_cache_mb)

    @property
    def functions(self) -> list[Any]:
        """The traced functions (for tracing counts)."""
        return super().functions + [self._encode] + list(self._first.values()) + list(self._next.values())

    def start(self, batch: int) -> None:
        """States at the start of a window: None stands for zeros (no state convolutions run)."""
        return None

    def __call__(self, frames: Any, key: tuple[int, int], states: Any, needed: bool) -> tuple[Any, Any]:
        """One frame step of input batch ``key`` = (frame, batch index): ``(embeddings or None, new states)``."""
        if states is not None and not self.reuse:
            return super().__call__(frames, key, states, needed)
        encoded = self._cache.get(key)
        if encoded is None:
            encoded = self._encode(frames)
            self.encodings += int(frames.shape[0])
            if self.reuse:
                self._cache[key] = encoded
        if states is None:
            result = self._first[needed](frames, encoded)
        else:
            result = self._next[needed](frames, encoded, states)
        return result if needed else (None, result)

    def forget_before(self, t: int) -> None:
        """Drop the encodings of frames before t (no later window contains them)."""
        for key in [key for key in self._cache if key[0] < t]:
            del self._cache[key]


def _frame_spec(layout: TileLayout | FullFrameLayout) -> Any:
    import tensorflow as tf

    return tf.TensorSpec((None,) + tuple(layout.input_shape) + (1,), tf.float32)


def _state_specs(model: Any, layout: TileLayout | FullFrameLayout) -> list[list[Any]]:
    import tensorflow as tf

    height, width = layout.input_shape
    return [[tf.TensorSpec((None, height >> level, width >> level, model.filters), tf.float32)
             for level in range(model.levels)] for _ in range(model.stacks)]


def embed_pairs(model: Any, config: Config, source: FrameSource) -> Iterator[PairEmbeddings]:
    """The embeddings of all frame pairs of ``source`` in order (the network part of ``rshn predict``)."""
    layout = make_layout(source.shape, config)
    return PairEmbedder(model, config, layout).pairs(source)


# --------------------------------------------------------------------------------------------------------------
# Configuration, threads, saving


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def configure_threads(threads: int) -> tuple[int, int]:
    """Set TensorFlow's thread pools for inference (``inference.threads``).

    ``threads`` > 0 is the intra-op pool (threads inside one convolution); 0 chooses all cores available to the
    process. The inter-op pool (independent ops in parallel) is 1: the network is a chain of convolutions that
    each use all intra-op threads, and a second pool only oversubscribes the cores (see docs/performance.md).
    Must run before TensorFlow starts its runtime; otherwise the settings in force are kept (logged).

    Returns:
        The (intra, inter) thread counts requested.
    """
    import tensorflow as tf

    intra = threads if threads > 0 else available_cores()
    inter = 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        log.debug("TensorFlow is already running; keeping its thread settings (intra %d, inter %d)",
                  tf.config.threading.get_intra_op_parallelism_threads(),
                  tf.config.threading.get_inter_op_parallelism_threads())
    return intra, inter


#: Files an embeddings folder may contain; a folder with anything else is not replaced.
_EMBEDDING_FILE_PATTERNS = ("pair_*.npy", "config.yaml")


def check_embeddings_target(folder: str | os.PathLike) -> None:
    """Check that an embeddings folder can be written: absent, or holding nothing but saved embeddings.

    Raises:
        RshnError: If the path is a file or a folder holding other files.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RshnError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and not all(
            any(e.is_file() and e.match(p) for p in _EMBEDDING_FILE_PATTERNS) for e in folder.iterdir()):
        raise RshnError(f"{folder}: folder exists and holds files other than saved embeddings; refusing "
                        "to replace it (choose another --save-embeddings folder or empty it)")


class EmbeddingWriter:
    """Writes ``pair_NNN.npy`` (float32 (2, h, w, D) on the network grid) into the hidden folder ``.NAME.partial``
    beside the target and renames it into place in :meth:`commit` (complete or absent, never half-written).

    Args:
        folder: The embeddings folder to create (an existing one is replaced only if it holds nothing but pair
            files and ``config.yaml``).
        config: The resolved configuration, saved as ``config.yaml`` beside the pairs.
        resume: Continue writing into the existing ``.NAME.partial`` of an unfinished run (the pairs before its
            checkpoint are there); otherwise start an empty one.

    Raises:
        RshnError: If the target cannot be replaced, or ``resume`` finds no unfinished folder.
    """

    def __init__(self, folder: str | os.PathLike, config: Config, resume: bool = False):
        self.folder = Path(folder)
        check_embeddings_target(self.folder)
        self.tmp = partial_path(self.folder)
        self._unsynced: list[Path] = []
        if resume:
            if not self.tmp.is_dir():
                raise RshnError(f"{self.tmp}: the saved embeddings of the unfinished run are missing; it cannot be "
                                f"resumed (start it over without --resume)")
            return
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        save_config(config, self.tmp / "config.yaml")

    def write(self, index: int, pair: np.ndarray) -> None:
        """Save pair ``index`` (atomically: a killed run leaves no half-written pair)."""
        path = self.tmp / f"pair_{index:03d}.npy"
        save_atomically(path, np.asarray(pair, dtype=np.float32))
        self._unsynced.append(path)

    def sync(self) -> None:
        """Flush the pairs written since the last call to the disk (before a checkpoint counts them)."""
        fsync_written(self._unsynced, self.tmp)

    def commit(self) -> Path:
        """Move the finished folder into place."""
        swap_in(self.tmp, self.folder)
        return self.folder

    def discard(self) -> None:
        """Remove the temporary folder."""
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# rshn predict


@dataclass
class PredictionResult:
    """What :func:`predict` did.

    Attributes:
        output_dir: The CTC result folder written.
        num_frames: Frames of the video.
        timings: Seconds per stage: ``reading``, ``preprocessing``, ``network`` and the post-processing stages of
            :data:`rshn_tf.postprocess.STAGES`, plus ``total`` (wall clock of the whole call).
        frame_steps: Frames run through the network (each frame runs in up to l windows).
        embeddings_dir: The saved embeddings folder, if any.
    """

    output_dir: Path
    num_frames: int
    timings: dict[str, float] = field(default_factory=dict)
    frame_steps: int = 0
    embeddings_dir: Optional[Path] = None

    @property
    def network_seconds(self) -> float:
        """Reading, preprocessing and the network."""
        return sum(self.timings.get(s, 0.0) for s in NETWORK_STAGES)

    @property
    def postprocessing_seconds(self) -> float:
        """Clustering, merging, tracking, resampling, finalising and writing."""
        from rshn_tf.postprocess import STAGES

        return sum(self.timings.get(s, 0.0) for s in STAGES)


def predict(
    model_dir: str | os.PathLike,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    weights: str = "auto",
    save_embeddings: Optional[str | os.PathLike] = None,
    progress: Optional[bool] = None,
    model: Any = None,
    resume: bool = False,
) -> PredictionResult:
    """``rshn predict``: segment and track one sequence folder with a trained model and write a CTC result folder.

    Finished frames wait on disk in ``.OUT.partial`` beside the output (:class:`~rshn_tf.run_folder.RunFolder`), so
    memory does not grow with the video; every ``inference.checkpoint_every`` frame pairs the post-processing state
    is saved there, and ``resume`` continues a killed run to the result an uninterrupted run gives. One process
    at a time may write the output (and the embeddings folder), which is checked for writability before the
    network runs: :func:`~rshn_tf.output_lock.claim_output`.

    Args:
        model_dir: Model folder (``config.yaml`` + weights) written by ``rshn train``.
        input_dir: Sequence folder of frames ``tNNN.tif`` (e.g. ``DATASET/02``).
        output_dir: Result folder to write (e.g. ``DATASET/02_RES``): ``maskNNN.tif`` with the input's digit
            count, ``res_track.txt`` and the resolved ``config.yaml``.
        overrides: ``section.key=value`` changes on top of the model folder's config (not ``model.*``).
        weights: ``best``, ``last``, ``auto`` (best when the folder holds them, else last) or the path of a
            ``.weights.h5`` file.
        save_embeddings: Also write the pair embeddings there (see :class:`EmbeddingWriter`; in tiles mode each
            pixel comes from the tile in which it lies most centrally, so ``rshn postprocess`` on them reproduces
            this result only approximately; exactly in full-frame mode).
        progress: Show a tqdm bar over frames (None: on a terminal; plain log lines when stderr is not one).
        model: An already loaded network of the folder (skips loading; for benchmarks and tests).
        resume: Continue the unfinished run writing ``output_dir`` from its last checkpoint (start afresh when there
            is none); without it, an unfinished run there is refused.

    Returns:
        A :class:`PredictionResult` with the timings.

    Raises:
        RshnError: For a missing/empty/inconsistent input folder, a broken model folder, a bad override, an output
            folder that cannot be replaced or that another process is writing, or an unfinished run without
            ``resume`` (or one that differs from this call with it).
    """
    from rshn_tf.model_folder import ModelFolder, weights_file

    wall = time.perf_counter()
    config = resolve_predict_config(ModelFolder(model_dir).read_config(), overrides)
    files = list_frames(input_dir)
    check_result_target(output_dir)  # fail before the network runs, not after
    if model is None:
        weights_file(model_dir, weights)
    if save_embeddings is not None:
        check_embeddings_target(save_embeddings)
        if Path(save_embeddings).resolve() == Path(output_dir).resolve():
            raise RshnError(f"{output_dir}: --save-embeddings and --output must be different folders")
    num_frames = len(files.paths)
    total_pairs = max(num_frames - 1, 1)
    identity = {"command": "predict", "input": str(Path(input_dir).resolve()), "frames": num_frames,
                "pairs": total_pairs, "original_shape": list(files.shape), "digits": files.digits,
                "model": str(Path(model_dir).resolve()), "weights": weights,
                "embeddings": None if save_embeddings is None else str(Path(save_embeddings).resolve())}
    with contextlib.ExitStack() as locks:
        locks.enter_context(claim_output(output_dir, "result folder"))
        if save_embeddings is not None:
            locks.enter_context(claim_output(save_embeddings, "embeddings folder"))
        run = RunFolder.open(output_dir, identity, config, resume)
        try:
            result = _predict_run(model_dir, input_dir, output_dir, config, files, run, weights, save_embeddings,
                                  progress, model)
        except BaseException as exc:
            resumable(run, exc)
            raise
        run.remove()
    result.timings["total"] = time.perf_counter() - wall
    timings = result.timings
    log.info("per frame: network %.3f s (%d frame steps, %.3f s each), reading+preprocessing %.3f s, "
             "post-processing %.3f s, total %.3f s", timings.get("network", 0.0) / num_frames, result.frame_steps,
             timings.get("network", 0.0) / max(result.frame_steps, 1),
             (timings.get("reading", 0.0) + timings.get("preprocessing", 0.0)) / num_frames,
             result.postprocessing_seconds / num_frames, timings["total"] / num_frames)
    return result


def _predict_run(model_dir: str | os.PathLike, input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                 config: Config, files: FrameFiles, run: RunFolder, weights: str,
                 save_embeddings: Optional[str | os.PathLike], progress: Optional[bool], model: Any
                 ) -> PredictionResult:
    """The work of :func:`predict` once the outputs are locked and the run folder is open."""
    configure_threads(config.inference.threads)
    source = FrameSource(files.paths, config.data, files.shape)
    num_frames = len(source)
    total_pairs = run.identity["pairs"]
    processor = PostProcessor(config, files.shape, single_frame=num_frames == 1, store=run.frames)
    if run.checkpoint is not None:
        processor.restore(*run.checkpoint)
    writer = None
    if save_embeddings is not None:
        emb_partial = partial_path(Path(save_embeddings))
        if run.checkpoint is None or emb_partial.is_dir():
            writer = EmbeddingWriter(save_embeddings, config, resume=run.checkpoint is not None)
        elif processor.num_pairs < total_pairs or not Path(save_embeddings).is_dir():
            raise RshnError(f"{emb_partial}: the saved embeddings of the unfinished run in {run.folder} are "
                            f"missing; delete {run.folder} and start over without --resume")
        # else: all pairs were done and the embeddings committed before the run was killed
    try:
        embedder = _run_network(model_dir, input_dir, config, files, source, processor, run, writer, weights,
                                progress, model)
        out = processor.finish(output_dir, files.digits, tmp=run.result_dir)
    except BaseException:
        if writer is not None and not run.has_checkpoint:
            writer.discard()
        raise
    embeddings_dir = writer.commit() if writer is not None else (
        Path(save_embeddings) if save_embeddings is not None else None)
    timings = dict(source.timings)
    if embedder is not None:
        timings.update(embedder.timings)
    timings.update(processor.timings)
    return PredictionResult(out, num_frames, timings, embedder.frame_steps if embedder else 0, embeddings_dir)


def _run_network(model_dir: str | os.PathLike, input_dir: str | os.PathLike, config: Config, files: FrameFiles,
                 source: FrameSource, processor: PostProcessor, run: RunFolder, writer: Optional[EmbeddingWriter],
                 weights: str, progress: Optional[bool], model: Any) -> Optional[PairEmbedder]:
    """Run the network over the pairs the run still needs and post-process (and save) them, with checkpoints;
    returns the embedder (None when no pair was left)."""
    from rshn_tf.model_folder import load_trained_model

    total_pairs = run.identity["pairs"]
    num_frames = len(source)
    embedder = None
    if processor.num_pairs < total_pairs:
        if model is None:
            model, _ = load_trained_model(model_dir, weights)
        layout = make_layout(source.shape, config)
        embedder = PairEmbedder(model, config, layout)
        log.info("predict %s: %d frames %dx%d → network grid %dx%d, %s, %d input(s) per frame in batches of %d%s",
                 input_dir, num_frames, *files.shape, *source.shape,
                 "full frame" if layout.full_frame else f"{layout.num_inputs} tiles", layout.num_inputs,
                 embedder.batch, f", resuming at frame pair {processor.num_pairs}" if processor.num_pairs else "")
        with _progress_bar(num_frames, progress) as bar:
            bar.update(processor.num_frames)

            def post_process(pair: PairEmbeddings) -> None:
                layout.add_to(processor, pair.first, pair.second)
                if writer is not None:
                    writer.write(pair.index, layout.full_pair(pair.first, pair.second))
                if checkpoint_due(processor, total_pairs):
                    if processor.num_pairs == total_pairs:
                        processor.flush()
                    if writer is not None:
                        writer.sync()
                    run.save(*processor.state())
                bar.update(processor.num_frames - bar.n)

            consume_pairs(embedder.pairs(source, start=processor.num_pairs), post_process,
                          config.inference.overlap_postprocessing)
    return embedder


def consume_pairs(pairs: Iterator[PairEmbeddings], consume: Any, overlap: bool) -> None:
    """Call ``consume(pair)`` on every pair in order; with ``overlap`` in a worker thread, so that the
    post-processing of one pair runs while the network computes the next (``inference.overlap_postprocessing``).

    At most one pair is being consumed while the next is produced; pairs are consumed one at a time, in order, so
    the results are the same as without overlap. An exception in either side stops both and is raised here.
    """
    if not overlap:
        for pair in pairs:
            consume(pair)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="postprocess") as pool:
        running = None
        for pair in pairs:
            if running is not None:
                running.result()
            running = pool.submit(consume, pair)
        if running is not None:
            running.result()


def _progress_bar(total: int, enabled: Optional[bool]) -> Any:
    return progress_bar(total, unit="frame", desc="predict", enabled=enabled, leave=False)
