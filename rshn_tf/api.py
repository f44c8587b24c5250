"""The Python API: a trained model that maps a video held in memory to instance labels and tracks.

::

    import rshn_tf

    model = rshn_tf.RSHN.from_folder("models/DIC-C2DH-HeLa-cpu", overrides={"postprocessing.bandwidth": 0.05})
    labels, tracks = model.segment_and_track(frames)  # frames: (T, H, W) NumPy array of raw intensities
    pairs = model.embed(frames)                       # (T-1, 2, h, w, D) frame-pair embeddings

Frames go through exactly the steps of ``rshn predict`` (:class:`~rshn_tf.inference.FrameSource`: smoothing, robust
normalisation, resampling to the network grid), the network (:mod:`rshn_tf.inference`) and the post-processing
(:class:`~rshn_tf.postprocess.PostProcessor`), so the labels and tracks equal those ``rshn predict`` writes for the
same frames. ``rshn predict`` itself is a file adapter over :meth:`RSHN.process` (:mod:`rshn_tf.predict_folder`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import yaml

from ctc_submission.writer import MAX_LABEL
from rshn_tf.config import Config, resolve_predict_config
from rshn_tf.console import progress_bar
from rshn_tf.errors import RshnError
from rshn_tf.geometry import GridGeometry
from rshn_tf.inference import FrameSource, PairEmbedder, PairEmbeddings, make_layout
from rshn_tf.model_folder import ModelFolder, load_trained_model, weights_file
from rshn_tf.postprocess import PostProcessor

log = logging.getLogger(__name__)

#: Config overrides: ``{"section.key": value}``, ``{"section": {"key": value}}`` or ``"section.key=value"`` strings.
Overrides = Optional[Mapping[str, Any] | Sequence[str]]


class Segmentation(NamedTuple):
    """What :meth:`RSHN.segment_and_track` returns; unpacks as ``labels, tracks = ...``.

    Attributes:
        labels: (T, H, W) uint16 instance labels at the size of the input frames, 0 = background; a cell carries
            its track label in every frame it is in (as a CTC ``maskNNN.tif``).
        tracks: (N, 4) int64 array with one row ``L B E P`` per track, as in a CTC ``res_track.txt``: label L, first
            frame B, last frame E and parent label P (0 = no parent), sorted by label.
    """

    labels: np.ndarray
    tracks: np.ndarray


class RSHN:
    """A trained network with its resolved configuration: frames in, embeddings, labels and tracks out.

    Build it with :meth:`from_folder`. The network (an RSHN, SHN or volumetric network, whatever the folder's
    ``model.architecture`` says) is loaded on first use.

    Args:
        config: The resolved configuration (the model folder's, with prediction overrides).
        network: An already built and loaded network (skips loading from ``folder``).
        folder: The model folder to load the network from when ``network`` is None.
        weights: Which weights of ``folder`` to load: ``best``, ``last``, ``auto`` or a ``.weights.h5`` file.

    Raises:
        RshnError: If neither a network nor a folder is given, or the chosen weights do not exist.
    """

    def __init__(self, config: Config, network: Any = None, *, folder: Optional[str | os.PathLike] = None,
                 weights: str = "auto"):
        if network is None:
            if folder is None:
                raise RshnError("RSHN: give a loaded network or the model folder to load it from")
            weights_file(folder, weights)  # fail now, not when the network is first needed
        self.config = config
        self.folder = None if folder is None else Path(folder)
        self.weights = weights
        self._network = network

    @classmethod
    def from_folder(cls, path: str | os.PathLike, weights: str = "auto", overrides: Overrides = None) -> "RSHN":
        """Load a model folder written by ``rshn train`` or ``rshn export``.

        Args:
            path: The model folder (``config.yaml`` and weights).
            weights: ``best``, ``last``, ``auto`` (best when the folder holds them, else last) or the path of a
                ``.weights.h5`` file.
            overrides: Changes to the folder's configuration, like ``rshn predict --set``: a dict
                ``{"postprocessing.bandwidth": 0.05}`` or ``{"postprocessing": {"bandwidth": 0.05}}``, or
                ``"section.key=value"`` strings. ``model.*`` keys cannot change (the weights belong to that network).

        Returns:
            The model; its network is loaded on first use.

        Raises:
            RshnError: For a missing or broken model folder, missing weights or a bad override.
        """
        config = resolve_predict_config(ModelFolder(path).read_config(), override_texts(overrides))
        return cls(config, folder=path, weights=weights)

    def __repr__(self) -> str:
        where = f"folder={str(self.folder)!r}, weights={self.weights!r}" if self.folder is not None else "network"
        return f"RSHN({where}, architecture={self.config.model.architecture!r})"

    @property
    def network(self) -> Any:
        """The Keras network, loaded from the model folder on first use."""
        if self._network is None:
            self._network, _ = load_trained_model(self.folder, self.weights)
        return self._network

    def embedder(self, geometry: GridGeometry) -> PairEmbedder:
        """The network engine for a video with these grids, in the layout of ``inference.full_frame``.

        TensorFlow's thread pools are set from ``inference.threads`` first (:func:`configure_threads`; this has
        an effect only before TensorFlow has started), then the network is loaded if it is not yet.
        """
        configure_threads(self.config.inference.threads)
        return PairEmbedder(self.network, self.config, make_layout(geometry, self.config))

    def segment_and_track(self, frames: Any, *, progress: Optional[bool] = False) -> Segmentation:
        """Segment and track the cells of a video.

        Args:
            frames: (T, H, W) raw frames (integer or floating point, as read from the CTC ``tNNN.tif`` files), T ≥ 1.
            progress: Show a progress bar over frames (None: on a terminal only).

        Returns:
            ``(labels, tracks)``: a :class:`Segmentation`.

        Raises:
            RshnError: For frames that are not a finite (T, H, W) intensity video, or more tracks than a uint16
                label image holds.
        """
        video = check_video(frames)
        geometry = GridGeometry.of(video.shape[1:], self.config)
        processor = PostProcessor(self.config, geometry, single_frame=len(video) == 1)
        self.process(FrameSource(video, self.config.data, geometry.original_shape), processor, progress=progress,
                     desc="segment_and_track")
        labels, tracks = processor.result()
        if len(tracks) and int(tracks[:, 0].max()) > MAX_LABEL:
            raise RshnError(f"{len(tracks)} tracks, label {int(tracks[:, 0].max())} does not fit uint16 labels "
                            f"(max {MAX_LABEL}); split the video into shorter parts")
        return Segmentation(labels.astype(np.uint16), tracks)

    def embed(self, frames: Any, *, progress: Optional[bool] = False) -> np.ndarray:
        """The network's embeddings of every consecutive frame pair (what ``rshn predict --save-embeddings`` writes
        as ``pair_NNN.npy``; ``rshn postprocess`` takes them).

        Args:
            frames: (T, H, W) raw frames, T ≥ 1.
            progress: Show a progress bar over frame pairs (None: on a terminal only).

        Returns:
            float32 array (P, 2, h, w, D): pair p holds the L2-normalised embeddings of frames (p, p+1) on the network
            grid (h, w) (``data.resampled_size``, or the frame size when that is null); P = T − 1, or 1 for a
            one-frame video (the frame with itself). In tiles mode each pixel comes from the tile in which it lies
            most centrally.

        Raises:
            RshnError: For frames that are not a finite (T, H, W) intensity video.
        """
        video = check_video(frames)
        geometry = GridGeometry.of(video.shape[1:], self.config)
        source = FrameSource(video, self.config.data, geometry.original_shape)
        total = max(len(video) - 1, 1)
        out: Optional[np.ndarray] = None
        with progress_bar(total, unit="pair", desc="embed", enabled=progress, leave=False) as bar:
            for pair in self.embedder(geometry).pairs(source):
                grid = pair.grid()
                if out is None:
                    out = np.empty((total,) + grid.shape, dtype=np.float32)
                out[pair.index] = grid
                bar.update(1)
        return out

    def process(self, source: FrameSource, processor: PostProcessor, *,
                on_pair: Optional[Callable[[PairEmbeddings], None]] = None, progress: Optional[bool] = False,
                desc: str = "predict", name: Optional[str] = None) -> Optional[PairEmbedder]:
        """Run the network over the frame pairs ``processor`` still lacks and post-process each as it comes: the
        streaming core of :meth:`segment_and_track` and of ``rshn predict``.

        Pairs from ``processor.num_pairs`` on (all of them for a new processor; the rest for one restored from a
        checkpoint) are added to ``processor`` in order, tile by tile in tiles mode, as whole network-grid pairs in
        full-frame mode. With ``inference.overlap_postprocessing`` the post-processing of one pair runs in a worker
        thread while the network computes the next (:func:`consume_pairs`); the results are the same.

        Args:
            source: The frames.
            processor: The post-processing of the video; its geometry decides the tiles the network runs on.
            on_pair: Called with every pair after it was post-processed (e.g. to save it and checkpoint).
            progress: Show a progress bar over frames (None: on a terminal only).
            desc: Name of the progress bar.
            name: What runs, for the log line (default ``desc``).

        Returns:
            The :class:`~rshn_tf.inference.PairEmbedder` that ran (its ``timings`` and ``frame_steps``), or None
            when ``processor`` had every pair already.
        """
        total_pairs = max(len(source) - 1, 1)
        if processor.num_pairs >= total_pairs:
            return None
        geometry = processor.geometry
        embedder = self.embedder(geometry)
        layout = embedder.layout
        log.info("%s: %d frames %dx%d → network grid %dx%d, %s, %d input(s) per frame in batches of %d%s",
                 name or desc, len(source), *geometry.original_shape, *geometry.shape,
                 "full frame" if layout.full_frame else f"{layout.num_inputs} tiles", layout.num_inputs,
                 embedder.batch, f", resuming at frame pair {processor.num_pairs}" if processor.num_pairs else "")
        with progress_bar(len(source), unit="frame", desc=desc, enabled=progress, leave=False) as bar:
            bar.update(processor.num_frames)

            def post_process(pair: PairEmbeddings) -> None:
                tiles = pair.tiles()
                if tiles is None:
                    processor.add_pair(pair.grid())
                else:
                    processor.add_pair_tiles(tiles)
                if on_pair is not None:
                    on_pair(pair)
                bar.update(processor.num_frames - bar.n)

            consume_pairs(embedder.pairs(source, start=processor.num_pairs), post_process,
                          self.config.inference.overlap_postprocessing)
        return embedder


def check_video(frames: Any) -> np.ndarray:
    """The frames as a (T, H, W) array of finite intensities.

    Raises:
        RshnError: Naming the problem: not an array, wrong number of axes, an empty axis, a type that is not an
            integer or floating-point intensity, or NaN/infinite values (with the first frame holding them).
    """
    try:
        video = np.asarray(frames)
    except (TypeError, ValueError) as exc:
        raise RshnError(f"frames: cannot be read as one (T, H, W) array ({exc})") from exc
    if video.ndim != 3:
        hint = ""
        if video.ndim == 2:
            hint = "; for a single frame pass frames[np.newaxis]"
        elif video.ndim == 4:
            hint = "; frames must have one channel (e.g. frames[..., 0] or a grey-level conversion)"
        raise RshnError(f"frames: expected a (T, H, W) video, got an array of shape {video.shape}{hint}")
    if video.dtype.kind not in "uif":
        raise RshnError(f"frames: dtype {video.dtype} is not an intensity type; give integer or floating-point "
                        f"frames")
    if min(video.shape) < 1:
        raise RshnError(f"frames: empty video of shape {video.shape}; at least one frame of at least one pixel is "
                        f"needed")
    if video.dtype.kind == "f":
        bad = np.asarray(video[0].size - np.count_nonzero(np.isfinite(video), axis=(1, 2)))
        if bad.any():
            t = int(np.flatnonzero(bad)[0])
            raise RshnError(f"frames: frame {t} holds {int(bad[t])} NaN or infinite pixel value(s) of "
                            f"{video[t].size}; every intensity must be a finite number")
    return video


def override_texts(overrides: Overrides) -> list[str]:
    """API overrides as ``section.key=value`` strings, the ``--set`` syntax that
    :func:`~rshn_tf.config.resolve_predict_config` reads (values are written as YAML).

    Args:
        overrides: None, ``{"section.key": value}``, ``{"section": {"key": value}}``, or ``"section.key=value"``
            strings.

    Raises:
        RshnError: For a value that cannot be written as YAML.
    """
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if not isinstance(overrides, Mapping):
        return [str(text) for text in overrides]
    texts = []
    for dotted, value in overrides.items():
        if "." not in str(dotted) and isinstance(value, Mapping):
            texts += [f"{dotted}.{key}={_yaml_value(f'{dotted}.{key}', item)}" for key, item in value.items()]
        else:
            texts.append(f"{dotted}={_yaml_value(str(dotted), value)}")
    return texts


def _yaml_value(key: str, value: Any) -> str:
    """One override value as flow-style YAML (NumPy scalars and arrays as Python numbers and lists)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, tuple):
        value = list(value)
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=2**31)
    except yaml.YAMLError as exc:
        raise RshnError(f"override {key}: value {value!r} cannot be written as a config value ({exc})") from exc
    text = text.strip()
    return text[:-len("...")].strip() if text.endswith("\n...") else text


def consume_pairs(pairs: Iterator[PairEmbeddings], consume: Callable[[PairEmbeddings], None], overlap: bool) -> None:
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
