"""Training videos, window sampling and the one function that makes a training sample (paper §3.1, §4.2).

:class:`TrainingData` holds the preprocessed training videos (frames smoothed and normalised at original resolution,
merged ground truth, complete-SEG frame flags, the annotated region). :func:`make_sample` turns (training seed,
sample index) into one augmented sample: it derives a ``numpy.random.Generator`` from both numbers, draws a window,
the augmentation parameters and the instance subset from it in a fixed order, resamples the window in one
SimpleITK step per array and builds the loss targets. The same index always gives the same sample, whichever
worker computes it, so the tf.data pipeline, ``rshn show-sample``, the tests and the benchmark share one stream and
training can resume it at any index.

Window sampling (§4.2: "approximately every second mini-batch includes a frame that has a segmentation
groundtruth"). Anchor frames are the frames with complete SEG (``data.seg_sample_frames = complete``, the frames that
feed the background term) or with any SEG (``any``, the authors' list). Two modes (``data.seg_sample_mode``):

* ``paper``: with probability ``data.seg_sample_fraction`` (0.5) the window is placed around an anchor frame drawn
  uniformly over all anchor frames of all videos, at a uniform position 0 … l-1 of the window; otherwise the window
  is drawn uniformly among all windows that contain no anchor frame (among all windows when there is none). So the
  fraction of samples that contain an anchor frame is ``seg_sample_fraction``.
* ``code`` (docs/fidelity.md §3.4): the anchor is drawn from an id list holding every frame once plus the anchor frames
  repeated so that they make up ``seg_sample_fraction`` of the draws, and sits at window position 1 … l-1. Windows
  around the plain frames often contain anchor frames too, so more samples contain one (DIC-C2DH-HeLa: about 80 %).

Windows that would leave the video are shifted inside it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from data_io.augment import AugmentationParams, SpatialTransform, apply_intensity, check_config, sample_params, \
    smooth_labels
from data_io.ctc import load_sequence
from data_io.preprocess import annotated_region, network_shape, preprocess_training_frames
from data_io.targets import CompactTargets, build_targets, expand_targets, pad_neighbour_table
from rshn_tf.config import Config
from rshn_tf.errors import RshnError

logger = logging.getLogger(__name__)

#: Codes of the region image resampled with every window: outside the frame, inside, inside and annotated.
_OUTSIDE, _INSIDE, _ANNOTATED = 0, 1, 2


@dataclass
class TrainingVideo:
    """One preprocessed training video.

    Attributes:
        name: ``<dataset folder>/<sequence>``, for messages and sample metadata.
        frames: (T, H', W') float32 frames after smoothing and normalisation (cropped/padded when configured).
        frame_origin: Original-frame coordinate (y, x) of ``frames[:, 0, 0]``.
        labels: (T, H, W) uint16 merged ground truth (TRA ids; SEG masks where segmented).
        complete: (T,) bool, frames with complete SEG (``data.complete_seg_min_coverage``).
        seg: (T,) bool, frames with any SEG ground truth.
        region: (H, W) uint8 region codes: 1 inside the frame, 2 inside the annotated region (border band excluded).
    """

    name: str
    frames: np.ndarray
    frame_origin: tuple[float, float]
    labels: np.ndarray
    complete: np.ndarray
    seg: np.ndarray
    region: np.ndarray

    @property
    def num_frames(self) -> int:
        """Number of frames T."""
        return int(self.labels.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Original frame size (H, W)."""
        return int(self.labels.shape[1]), int(self.labels.shape[2])


@dataclass
class Sample:
    """One augmented training sample at tile resolution.

    Attributes:
        frames: (T, H, W) float32 augmented frames (the network input without the channel axis).
        labels: (T, H, W) int32 augmented merged labels (TRA ids; 0 = unlabelled or outside the frame).
        targets: The loss targets in compact form.
        video: Name of the source video.
        start: First frame of the window in the video.
        params: The augmentation parameters.
        complete: (T,) bool, window frames with complete SEG.
    """

    frames: np.ndarray
    labels: np.ndarray
    targets: CompactTargets
    video: str
    start: int
    params: AugmentationParams
    complete: np.ndarray

    def arrays(self, max_instances: int) -> dict[str, np.ndarray]:
        """``frames`` plus the dense targets exactly as fed to the loss (instance axis padded to ``max_instances``)."""
        arrays = {"frames": self.frames}
        arrays.update(expand_targets(self.targets, max_instances))
        return arrays

    def compact(self, max_instances: int) -> dict[str, np.ndarray]:
        """The arrays the tf.data pipeline moves between workers (a few MB instead of the dense masks).

        Returns:
            ``frames`` (T, H, W) float32, ``index_map`` (T, H, W) int32 and ``neighbour_table``
            (max_instances, L + 1) bool (see :class:`~data_io.targets.CompactTargets`; the dense masks follow with
            :func:`~data_io.targets.expand_targets`), ``background_mask``, ``foreground_mask``, ``valid_mask``
            (T, H, W) bool.
        """
        return {
            "frames": self.frames,
            "index_map": self.targets.index_map,
            "neighbour_table": pad_neighbour_table(self.targets.neighbour_table, max_instances),
            "background_mask": self.targets.background_mask,
            "foreground_mask": self.targets.foreground_mask,
            "valid_mask": self.targets.valid_mask,
        }


class TrainingData:
    """The preprocessed training videos of a configuration and the window sampler over them.

    Args:
        videos: The videos (at least one, each with at least ``data.sequence_length`` frames).
        config: The configuration (data, augmentation, loss sections are used).

    Raises:
        RshnError: If there is no video or a video is shorter than the window length.
    """

    def __init__(self, videos: Sequence[TrainingVideo], config: Config):
        check_config(config.augmentation)
        self.videos = list(videos)
        self.config = config
        length = config.data.sequence_length
        if not self.videos:
            raise RshnError("no training videos: check 'data.train_sequences'")
        for video in self.videos:
            if video.num_frames < length:
                raise RshnError(f"{video.name}: {video.num_frames} frames, fewer than the window length "
                                f"data.sequence_length = {length}")
        if config.data.seg_sample_frames not in ("complete", "any"):
            raise RshnError(f"key 'data.seg_sample_frames' must be 'complete' or 'any', got "
                            f"{config.data.seg_sample_frames!r}")
        if config.data.seg_sample_mode not in ("paper", "code"):
            raise RshnError(f"key 'data.seg_sample_mode' must be 'paper' or 'code', got "
                            f"{config.data.seg_sample_mode!r}")
        anchors = [video.complete if config.data.seg_sample_frames == "complete" else video.seg
                   for video in self.videos]
        self._all = np.array([(v, t) for v, video in enumerate(self.videos) for t in range(video.num_frames)])
        self._seg = np.array([(v, t) for v, flags in enumerate(anchors) for t in np.flatnonzero(flags)],
                             dtype=np.int64).reshape(-1, 2)
        windows = [(v, start) for v, flags in enumerate(anchors) for start in range(len(flags) - length + 1)]
        free = [(v, start) for v, start in windows if not anchors[v][start:start + length].any()]
        self._free = np.array(free if free else windows, dtype=np.int64).reshape(-1, 2)
        if self._seg.size == 0 and config.data.seg_sample_fraction > 0:
            logger.warning("no training frame has %s SEG ground truth: windows are drawn uniformly and there is no "
                           "background target", config.data.seg_sample_frames)

    @classmethod
    def from_config(cls, config: Config, dataset_dir: Optional[str | os.PathLike] = None) -> "TrainingData":
        """Load and preprocess ``data.train_sequences`` of ``dataset_dir`` (default ``data.dataset_dir``).

        Raises:
            RshnError: If no dataset folder is given, or a sequence is missing or lacks tracking ground truth.
        """
        folder = dataset_dir if dataset_dir is not None else config.data.dataset_dir
        if folder is None:
            raise RshnError("no dataset folder: set 'data.dataset_dir' or pass --data")
        return cls([load_training_video(folder, seq, config) for seq in config.data.train_sequences], config)

    @property
    def network_shapes(self) -> list[tuple[int, int]]:
        """Network-grid size of each video."""
        return [network_shape(video.shape, self.config.data) for video in self.videos]

    def draw_window(self, rng: np.random.Generator) -> tuple[int, int]:
        """Draw (video index, first frame) of a window (see the module docstring); consumes three draws."""
        data = self.config.data
        length = data.sequence_length
        use_seg = rng.random() < data.seg_sample_fraction and self._seg.size > 0
        if data.seg_sample_mode == "paper" and not use_seg:
            video_index, start = self._free[rng.integers(len(self._free))]
            rng.integers(length)  # keep the number of draws fixed
            return int(video_index), int(start)
        pool = self._seg if use_seg else self._all
        video_index, anchor = pool[rng.integers(len(pool))]
        position = rng.integers(length) if data.seg_sample_mode == "paper" else rng.integers(1, length)
        start = int(np.clip(anchor - position, 0, self.videos[video_index].num_frames - length))
        return int(video_index), start


def load_training_video(dataset_dir: str | os.PathLike, seq: str, config: Config) -> TrainingVideo:
    """Load one CTC training sequence and preprocess it for sampling.

    With ``data.silver_truth`` every frame without gold SEG takes the silver-truth masks; with
    ``data.train_frames`` only that frame range is kept (see :class:`rshn_tf.config.DataConfig`).

    Raises:
        RshnError: If the sequence is missing, has no tracking ground truth, lacks the silver truth asked for, or
            has fewer frames than ``data.train_frames`` needs.
    """
    data = config.data
    sequence = load_sequence(dataset_dir, seq, load_silver=data.silver_truth)
    gt_dir = Path(dataset_dir) / f"{sequence.seq}_GT"
    if sequence.merged is None:
        raise RshnError(f"{gt_dir / 'TRA'}: tracking ground truth is needed for training (sequence {sequence.seq})")
    labels = sequence.merged
    complete = np.zeros(sequence.num_frames, dtype=bool)
    complete[sequence.seg_frames_with_coverage(data.complete_seg_min_coverage)] = True
    seg = np.zeros(sequence.num_frames, dtype=bool)
    seg[list(sequence.seg)] = True
    if data.silver_truth:
        if not sequence.silver_seg:
            raise RshnError(f"{Path(dataset_dir) / (sequence.seq + '_ST') / 'SEG'}: no silver truth found "
                            f"(data.silver_truth is true)")
        labels = labels.copy()
        for t, silver in sequence.silver_seg.items():
            if seg[t]:
                continue
            objects = silver > 0
            labels[t][objects] = silver[objects]
            seg[t] = True
            complete[t] = silver_coverage(silver, sequence.tra[t]) >= data.complete_seg_min_coverage
    frames = sequence.frames
    if data.train_frames is not None:
        start, stop = data.train_frames
        if stop > sequence.num_frames:
            raise RshnError(f"{Path(dataset_dir) / sequence.seq}: data.train_frames = [{start}, {stop}] needs "
                            f"{stop} frames, the sequence has {sequence.num_frames}")
        frames, labels, complete, seg = frames[start:stop], labels[start:stop], complete[start:stop], seg[start:stop]
    frames, origin = preprocess_training_frames(frames, data)
    region = np.full(sequence.shape, _INSIDE, dtype=np.uint8)
    region[annotated_region(sequence.shape, data.border_band)] = _ANNOTATED
    return TrainingVideo(name=f"{Path(dataset_dir).name}/{sequence.seq}", frames=frames, frame_origin=origin,
                         labels=labels, complete=complete, seg=seg, region=region)


def silver_coverage(silver: np.ndarray, markers: np.ndarray) -> float:
    """Fraction of the TRA markers of a frame that carry a silver-truth object of their own id (1.0 without
    markers); ``silver`` is relabelled to TRA ids (:func:`data_io.ctc.load_sequence`)."""
    present = np.unique(markers[markers > 0])
    if present.size == 0:
        return 1.0
    return float(np.isin(present, np.unique(silver[silver > 0])).mean())


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of the stream of training seed ``seed`` (both non-negative)."""
    if seed < 0 or index < 0:
        raise RshnError(f"seeds and sample indices must be non-negative, got seed {seed}, index {index}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def make_sample(data: TrainingData, seed: int, index: int) -> Sample:
    """Sample ``index`` of the training stream with seed ``seed``: window, augmentation and targets.

    Args:
        data: The training videos.
        seed: Training seed (``training.seed``).
        index: Sample index (0, 1, ...).

    Returns:
        The :class:`Sample`.
    """
    rng = sample_rng(seed, index)
    video_index, start = data.draw_window(rng)
    config = data.config
    params = sample_params(rng, config.augmentation, config.data.tile_size, data.network_shapes[video_index],
                           config.data.sequence_length)
    return render_sample(data, video_index, start, params, rng)


def render_sample(data: TrainingData, video_index: int, start: int, params: AugmentationParams,
                  rng: np.random.Generator) -> Sample:
    """Apply given augmentation parameters to the window ``start …`` of a video and build its targets.

    Args:
        data: The training videos.
        video_index: Index into ``data.videos``.
        start: First frame of the window.
        params: Augmentation parameters (e.g. from :func:`data_io.augment.sample_params` or ``identity_params``).
        rng: Generator for the instance subset.

    Returns:
        The :class:`Sample`.
    """
    config = data.config
    video = data.videos[video_index]
    frames_range = range(start, start + config.data.sequence_length)
    transform = SpatialTransform(params.spatial, config.data.tile_size, data.network_shapes[video_index],
                                 video.shape, config.augmentation.elastic_spline_order)
    interpolation = config.augmentation.image_interpolation
    frames = np.stack([transform.resample(video.frames[t], interpolation, -1.0, origin=video.frame_origin)
                       for t in frames_range])
    labels = np.stack([transform.resample(video.labels[t], "nearest", 0) for t in frames_range]).astype(np.int32)
    region = transform.resample(video.region, "nearest", _OUTSIDE)
    valid = region != _OUTSIDE
    if config.data.label_blur_sigma > 0:
        labels = smooth_labels(labels, config.data.label_blur_sigma)
    labels[:, ~valid] = 0
    frames = apply_intensity(frames, params.intensity)
    complete = video.complete[start:start + config.data.sequence_length].copy()
    targets = build_targets(labels, complete, region == _ANNOTATED, valid, config.loss, rng)
    return Sample(frames=frames, labels=labels, targets=targets, video=video.name, start=start, params=params,
                  complete=complete)
