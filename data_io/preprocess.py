"""Intensity preprocessing of input frames and their way onto the network grid (paper §3.1, §4.2;
docs/fidelity.md §3.2).

Every input frame, in training and at test time, is

1. smoothed with a Gaussian of σ = ``data.smoothing_sigma`` pixels (§3.1: 1; SimpleITK's recursive Gaussian, as the
   authors' code),
2. mapped linearly so that its robust minimum and maximum, the ``data.normalization_percentiles`` percentiles of
   the frame's intensities (§3.1: 0.1 % / 99.9 %; code: 0.05 % / 99.95 %), become -1 and 1 (no clipping),

both at the frame's original resolution, and then

3. resampled to the network grid, the per-dataset ``data.resampled_size`` of Table 1, with the centre-preserving
   mapping of :mod:`data_io.resample` (intensities linear, default -1 outside the frame; labels nearest).

Inference calls :func:`preprocess_frame` and :func:`to_network_grid`. Training does steps 1–2 with the same
functions but folds step 3 into the single SimpleITK resampling of :mod:`data_io.augment`, which maps every tile
pixel through the random spatial transform and the same :func:`data_io.resample.grid_mapping` back to the original
frame, so training tiles and test tiles see the same geometry.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from data_io.resample import resample_2d
from rshn_tf.config import DataConfig
from rshn_tf.errors import RshnError

#: Value of network-grid pixels that lie outside the frame (the lowest normalised intensity).
OUTSIDE_VALUE = -1.0


def smooth(frame: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of one 2-D frame with σ in pixels (SimpleITK ``SmoothingRecursiveGaussian``).

    Args:
        frame: (H, W) array of any real dtype.
        sigma: Standard deviation in pixels; 0 returns the frame unchanged (as float32).

    Returns:
        The smoothed frame, float32.
    """
    frame = np.asarray(frame, dtype=np.float32)
    if sigma <= 0:
        return frame.copy()
    image = sitk.GetImageFromArray(frame)
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, float(sigma))).astype(np.float32)


def robust_range(frame: np.ndarray, percentiles: Sequence[float]) -> tuple[float, float]:
    """Robust minimum and maximum of a frame: its intensity percentiles (linear interpolation between ranks).

    Args:
        frame: Array of intensities.
        percentiles: (low, high) in [0, 100], e.g. (0.1, 99.9).

    Returns:
        ``(v_min, v_max)`` as floats.
    """
    low, high = np.percentile(np.asarray(frame, dtype=np.float64), [percentiles[0], percentiles[1]])
    return float(low), float(high)


def robust_normalize(frame: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """Map a frame linearly so that its robust minimum becomes -1 and its robust maximum 1 (no clipping).

    A constant frame (robust maximum equal to the minimum) becomes all zeros.

    Args:
        frame: (H, W) intensities.
        percentiles: (low, high) percentiles defining the robust range (see :func:`robust_range`).

    Returns:
        The normalised frame, float32.
    """
    v_min, v_max = robust_range(frame, percentiles)
    frame = np.asarray(frame, dtype=np.float64)
    if v_max <= v_min:
        return np.zeros(frame.shape, dtype=np.float32)
    return (2.0 * (frame - v_min) / (v_max - v_min) - 1.0).astype(np.float32)


def preprocess_frame(frame: np.ndarray, config: DataConfig) -> np.ndarray:
    """Smooth and robustly normalise one frame at its original resolution (steps 1–2 of the module docstring).

    Args:
        frame: (H, W) raw frame.
        config: Data settings (``smoothing_sigma``, ``normalization_percentiles``).

    Returns:
        The preprocessed frame, float32, original size.
    """
    return robust_normalize(smooth(frame, config.smoothing_sigma), config.normalization_percentiles)


def preprocess_frames(frames: np.ndarray, config: DataConfig) -> np.ndarray:
    """:func:`preprocess_frame` for every frame of a (T, H, W) stack; returns float32 (T, H, W)."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"expected frames of shape (T, H, W), got {frames.shape}")
    out = np.empty(frames.shape, dtype=np.float32)
    for index, frame in enumerate(frames):
        out[index] = preprocess_frame(frame, config)
    return out


def preprocess_training_frames(frames: np.ndarray, config: DataConfig) -> tuple[np.ndarray, tuple[float, float]]:
    """Preprocess the frames of a training video, including the code's optional border crop and mirror padding.

    Order per frame (docs/fidelity.md §3.2): smoothing; cropping ``data.crop_border`` pixels from every side (code, MSC:
    20; the cropped rim then lies outside the frame and is filled with -1 by the augmentation, while labels keep it);
    mirror padding by half the frame size on each side (``data.mirror_padding``, code: DIC, GOWT1, SIM+,
    N2DL-HeLa); robust normalisation computed on the cropped/padded frame. Without both options this is
    :func:`preprocess_frames`.

    Args:
        frames: (T, H, W) raw frames.
        config: Data settings.

    Returns:
        ``(stack, origin)``: the float32 frames (T, H', W') and the original-frame coordinate (y, x) of their pixel
        [0, 0], which :meth:`data_io.augment.SpatialTransform.resample` takes as ``origin``.

    Raises:
        RshnError: If ``data.crop_border`` leaves no pixel.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"expected frames of shape (T, H, W), got {frames.shape}")
    crop = int(config.crop_border)
    height, width = frames.shape[1:]
    if crop < 0 or 2 * crop >= min(height, width):
        raise RshnError(f"key 'data.crop_border' = {crop} must be non-negative and leave pixels of the "
                        f"{height}x{width} frames")
    pad = (height - 2 * crop) // 2, (width - 2 * crop) // 2
    if not config.mirror_padding:
        pad = (0, 0)
    out = np.empty((frames.shape[0], height - 2 * crop + 2 * pad[0], width - 2 * crop + 2 * pad[1]), np.float32)
    for index, frame in enumerate(frames):
        smoothed = smooth(frame, config.smoothing_sigma)[crop:height - crop, crop:width - crop]
        if config.mirror_padding:
            smoothed = np.pad(smoothed, ((pad[0], pad[0]), (pad[1], pad[1])), mode="symmetric")
        out[index] = robust_normalize(smoothed, config.normalization_percentiles)
    return out, (float(crop - pad[0]), float(crop - pad[1]))


def network_shape(original_shape: Sequence[int], config: DataConfig) -> tuple[int, int]:
    """The network-grid size (height, width) of a frame: ``data.resampled_size`` or, when null, the original size.

    Args:
        original_shape: Original frame size (height, width).
        config: Data settings.
    """
    if config.resampled_size is None:
        return int(original_shape[0]), int(original_shape[1])
    return int(config.resampled_size[0]), int(config.resampled_size[1])


def to_network_grid(frame: np.ndarray, config: DataConfig, *, labels: bool = False) -> np.ndarray:
    """Resample a preprocessed frame (or a label image) from its original grid to the network grid (step 3).

    Uses :func:`data_io.resample.resample_2d` with ``data.extra_scale`` (the code's test-time zoom, 1 in the
    paper); intensities are interpolated linearly with -1 outside the frame, labels with nearest neighbour and 0
    outside.

    Args:
        frame: (H, W) preprocessed frame, or an integer label image when ``labels`` is True.
        config: Data settings (``resampled_size``, ``extra_scale``).
        labels: Treat ``frame`` as a label image.

    Returns:
        The network-grid image: float32 for frames, the input dtype for labels.
    """
    out_shape = network_shape(np.shape(frame), config)
    if labels:
        return resample_2d(frame, out_shape, "nearest", scale=config.extra_scale, default_value=0)
    return resample_2d(frame, out_shape, "linear", scale=config.extra_scale, default_value=OUTSIDE_VALUE)


def annotated_region(shape: Sequence[int], band: int) -> np.ndarray:
    """Mask of the annotated part of a CTC frame: everything except a rim of ``band`` original pixels.

    CTC ground truth leaves cells in a rim along the image border un-annotated (docs/fidelity.md §3.8: 50 px for most
    datasets, 25 px for Fluo-N2DL-HeLa, 0 for Fluo-N2DH-SIM+), so that rim must not be treated as background.

    Args:
        shape: Frame size (height, width) in original pixels.
        band: Width of the rim in original pixels (``data.border_band``).

    Returns:
        Boolean (H, W) mask, True inside the annotated region.

    Raises:
        RshnError: If the band leaves no annotated pixel.
    """
    height, width = int(shape[0]), int(shape[1])
    if band < 0:
        raise RshnError(f"key 'data.border_band' must be non-negative, got {band}")
    if 2 * band >= min(height, width):
        raise RshnError(f"key 'data.border_band' = {band} px leaves no annotated pixel in a {height}x{width} frame; "
                        f"use a smaller band")
    mask = np.zeros((height, width), dtype=bool)
    mask[band:height - band, band:width - band] = True
    return mask
