"""The network engine: a video's frames → the embeddings of every consecutive frame pair, by sliding windows, tiles
and ConvGRU states (paper §2.4, §2.5, §4.2; docs/fidelity.md §1.5, §5.2, §5.3).

This module only runs the network. What happens to the pairs (post-processing, saving, checkpoints) is up to the
caller: the Python API :class:`rshn_tf.api.RSHN` and ``rshn predict`` (:mod:`rshn_tf.predict_folder`).

Frames (:class:`FrameSource`) are raw arrays or files read one at a time, smoothed and robustly normalised at their
original resolution and resampled to the network grid (:mod:`data_io.preprocess`); a rolling buffer keeps only the
frames of the current window. The grids of a video (original size, network grid, inference tiles) are one
:class:`~rshn_tf.geometry.GridGeometry`, which the post-processing shares.

Windows (§2.5): the video is cut into windows of l = ``data.sequence_length`` frames shifted by one frame; the
ConvGRU states are reset to zero at the start of every window, and each window runs its frames in order. The first
window gives the pairs ⟨0, 1⟩ … ⟨l−2, l−1⟩ (the paper's sequences of length 2 … l−1 for the first l−2 frames are
prefixes of it, and the network is causal, so their last pairs are exactly these), every later window j only its
last pair ⟨j+l−2, j+l−1⟩: T − 1 pairs in all, yielded in frame order as soon as they exist. A video shorter than l
frames (T ≥ 2) is one window of length T. A one-frame video is one window of length 1 and the single pair ⟨0, 0⟩
(the frame with itself; see :class:`~rshn_tf.postprocess.PostProcessor`, ``single_frame``). Every window starts
from zero states, so a resumed run can start at the first window that gives a missing pair
(:meth:`PairEmbedder.pairs` ``start``) and get exactly the pairs of a run from the first frame.

Spatial layouts (``inference.full_frame``):

* tiles (paper, default): every network-grid frame is cut into the inference tiles of the geometry
  (``inference.tile_size``, by default ``data.tile_size``, overlapping by ``inference.tile_overlap``; §4.2:
  256 × 256, 128), padded with -1 (the normalised intensity outside the image) where a tile reaches past a small
  image. Each tile keeps its own ConvGRU states, and each pair gives each tile's own embeddings
  (:meth:`PairEmbeddings.tiles`), which the post-processing clusters tile by tile, as in the paper.
* full frame: the whole frame, padded with -1 to a multiple of 2^(levels−1), runs as one input; a pair gives only
  the whole network grid (:meth:`PairEmbeddings.grid`) and the post-processing cuts the tiles from it. Fewer
  pixels run through the network (no overlap) but every pixel sees the whole frame as context, so results differ
  slightly.

Batching (``inference.batch_tiles``, ``inference.max_batch_tiles``, default one tile per call as in the authors'
loop): the tiles of a frame go through one ``tf.function`` call per batch of up to ``max_batch_tiles`` tiles (the
traced function has a free batch axis, so a smaller last batch does not retrace). Results equal the per-tile loop
up to float rounding of the convolution library. A window runs batch by batch (tile-major, like the authors' loop,
docs/fidelity.md §5.3): one batch runs all frames of the window before the next batch starts, so only one batch's
ConvGRU states are alive; the memory of a window is the used embeddings of all tiles plus one batch's states and
activations, whatever the number of tiles.

Architectures: the RSHN runs frame by frame with explicit states (:meth:`RecurrentStackedHourglass.step`; frames
whose embeddings a window does not use only advance the states, :meth:`RecurrentStackedHourglass.advance`; with
``inference.encoded_steps`` the first frame of a window skips its zero-state convolutions and hourglass 0's
state-independent part is reused across windows where it fits, :class:`EncodedRecurrence`); the SHN
has no temporal context, so each frame runs once and consecutive frames form the pairs (the same embeddings any
window would give); the volumetric network runs each window (B, l, h, w, 1) in one pass, and pairs are taken from
its output volume like for the RSHN (docs/fidelity.md §9.2).

TensorFlow is imported inside the functions that run the network.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from data_io.ctc import read_frame
from data_io.preprocess import OUTSIDE_VALUE, preprocess_frame, to_network_grid
from rshn_tf.config import Config, DataConfig
from rshn_tf.errors import RshnError
from rshn_tf.geometry import GridGeometry
from rshn_tf.tiling import TileGrid, extract_tiles

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
    """The windows of a video and the pairs each one provides (§2.5; docs/fidelity.md §5.2; see the module docstring).

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
    """The network-grid frames of a video, preprocessed on demand and kept only while needed.

    Every frame goes through the same steps whatever its origin: smoothing and robust normalisation at the original
    resolution (:func:`data_io.preprocess.preprocess_frame`), then resampling to the network grid
    (:func:`data_io.preprocess.to_network_grid`).

    Args:
        frames: The raw frames in order: (H, W) arrays (e.g. a (T, H, W) array), or frame files (from
            :func:`data_io.ctc.list_frames`) read with :func:`data_io.ctc.read_frame` when they are needed.
        config: Data settings (smoothing, normalisation, network grid).
        original_shape: Size (height, width) of the raw frames.
    """

    def __init__(self, frames: Sequence[np.ndarray | str | os.PathLike], config: DataConfig,
                 original_shape: Sequence[int]):
        self.frames = frames
        self.config = config
        self.original_shape = (int(original_shape[0]), int(original_shape[1]))
        self.timings: dict[str, float] = defaultdict(float)
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, t: int) -> np.ndarray:
        """Frame t on the network grid, float32 (h, w)."""
        if t not in self._cache:
            start = time.perf_counter()
            item = self.frames[t]
            raw = item if isinstance(item, np.ndarray) else read_frame(item, t)
            if raw.shape != self.original_shape:
                name = f"frame {t}" if isinstance(item, np.ndarray) else str(item)
                raise RshnError(f"{name}: frame shape {raw.shape} differs from {self.original_shape}")
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
    """Tiles mode: the network runs on the inference tiles of the network-grid frame (§2.4, §4.2;
    docs/fidelity.md §5.3).

    Args:
        geometry: The grids of the video (the tiles are ``geometry.tiles``).
    """

    full_frame = False

    def __init__(self, geometry: GridGeometry):
        self.geometry = geometry
        self.shape = geometry.shape
        self.grid = geometry.tiles
        self.input_shape = self.grid.tile_size
        self._owner: Optional[np.ndarray] = None

    @property
    def num_inputs(self) -> int:
        """Network inputs per frame (tiles)."""
        return len(self.grid)

    def inputs(self, frame: np.ndarray) -> np.ndarray:
        """(n_tiles, th, tw, 1) float32 tiles of a network-grid frame, padded with -1 outside the image."""
        return extract_tiles(frame, self.grid, pad_value=OUTSIDE_VALUE)[..., None]

    def pair_tiles(self, first: np.ndarray, second: np.ndarray) -> list[np.ndarray]:
        """Each tile's own (2, th, tw, D) embeddings of the pair, in the order of the tile grid."""
        return [np.stack([a, b]) for a, b in zip(first, second)]

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
    """Full-frame mode: the network runs on the whole frame, padded with -1 to a multiple of 2^(levels−1).

    Args:
        geometry: The grids of the video (the frame is ``geometry.shape``).
        multiple: The padded size is a multiple of this (2^(levels−1)).
    """

    full_frame = True

    def __init__(self, geometry: GridGeometry, multiple: int):
        self.geometry = geometry
        self.shape = geometry.shape
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

    def pair_tiles(self, first: np.ndarray, second: np.ndarray) -> None:
        """None: the network ran on the whole frame, so the tiles are to be cut from :meth:`full_pair`."""
        return None


def make_layout(geometry: GridGeometry, config: Config) -> TileLayout | FullFrameLayout:
    """The layout selected by ``inference.full_frame`` for the grids ``geometry`` of a video."""
    if config.inference.full_frame:
        return FullFrameLayout(geometry, 2 ** (config.model.levels - 1))
    return TileLayout(geometry)


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
        layout: The spatial layout the network ran in.
    """

    index: int
    frames: tuple[int, int]
    first: np.ndarray
    second: np.ndarray
    layout: TileLayout | FullFrameLayout

    def tiles(self) -> Optional[list[np.ndarray]]:
        """Each inference tile's own (2, th, tw, D) embeddings, in the order of the geometry's tile grid, when the
        network ran on those tiles (tiles mode); None in full-frame mode, where the tiles are cut from :meth:`grid`.
        """
        return self.layout.pair_tiles(self.first, self.second)

    def grid(self) -> np.ndarray:
        """(2, h, w, D) float32 embeddings on the whole network grid (in tiles mode each pixel from the tile in
        which it lies most centrally)."""
        return self.layout.full_pair(self.first, self.second)


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
                    yield PairEmbeddings(index, frames, first, second, self.layout)
                index += 1
        source.release_before(len(source))

    # -- per architecture

    def _inputs(self, source: FrameSource, t: int) -> np.ndarray:
        return self.layout.inputs(source[t])

    def _window_rshn(self, source: FrameSource, window: Window) -> Iterator[tuple[np.ndarray, np.ndarray, tuple]]:
        """Run a window tile by tile, as the authors' code does (docs/fidelity.md §1.5, §5.3).

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
        """Run the whole window in one pass per batch of inputs; pairs come from the output volume
        (docs/fidelity.md §9.2)."""
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
                yield PairEmbeddings(index, (a, b), cache[a], cache[b], self.layout)
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
