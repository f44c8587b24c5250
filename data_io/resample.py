"""Resampling between the original frame grid and the network grid, the one geometry shared by training,
inference and result writing (paper §4.2: frames are resampled to the Table 1 size and results back).

Convention: a grid of N pixels covers the physical extent [-0.5, N - 0.5] with pixel centres at 0 … N-1. Resampling
to M pixels keeps the image centre fixed and maps output pixel x_out to the input coordinate

    x_in = c_in + scale · (N / M) · (x_out − c_out),   c = (size − 1) / 2,

per axis. ``scale`` = 1 preserves the extent exactly (the code's per-axis fit); ``scale`` < 1 zooms in (the code's
extra 0.95 for Fluo-C2DL-MSC). Going back uses the same function with the original shape and 1 / scale, so the two
directions are exact inverses of each other.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import SimpleITK as sitk

Interpolation = Literal["linear", "bspline", "nearest", "label_gaussian"]

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "nearest": sitk.sitkNearestNeighbor,
    "label_gaussian": sitk.sitkLabelGaussian,
}


def grid_mapping(in_shape: Sequence[int], out_shape: Sequence[int], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Return (spacing, origin) per axis (y, x) of the output grid expressed in input pixel coordinates.

    Args:
        in_shape: Input (height, width).
        out_shape: Output (height, width).
        scale: Extra zoom of the output→input mapping (1 = extent preserved).

    Returns:
        ``spacing`` and ``origin`` such that output pixel index i maps to input coordinate origin + spacing · i.
    """
    n = np.asarray(in_shape, dtype=np.float64)
    m = np.asarray(out_shape, dtype=np.float64)
    spacing = scale * n / m
    origin = (n - 1.0) / 2.0 - spacing * (m - 1.0) / 2.0
    return spacing, origin


def resample_2d(
    image: np.ndarray,
    out_shape: Sequence[int],
    interpolation: Interpolation = "linear",
    scale: float = 1.0,
    default_value: float = 0.0,
) -> np.ndarray:
    """Resample one 2-D image to ``out_shape`` with the centre-preserving mapping of this module.

    Args:
        image: (H, W) array.
        out_shape: Output (height, width).
        interpolation: ``linear``/``bspline`` for intensities, ``nearest``/``label_gaussian`` for label images.
        scale: Extra zoom (see module docstring).
        default_value: Value of output pixels that map outside the input.

    Returns:
        The resampled (out_h, out_w) array, float32 for intensity interpolation, the input dtype for labels.
    """
    image = np.asarray(image)
    out_shape = tuple(int(s) for s in out_shape)
    if image.shape == out_shape and scale == 1.0:
        return image.copy() if interpolation in ("nearest", "label_gaussian") else image.astype(np.float32)
    is_label = interpolation in ("nearest", "label_gaussian")
    if is_label:
        source = sitk.GetImageFromArray(image.astype(np.uint32 if image.dtype.kind in "iu" else image.dtype))
    else:
        source = sitk.GetImageFromArray(image.astype(np.float32))
    spacing, origin = grid_mapping(image.shape, out_shape, scale)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([out_shape[1], out_shape[0]])  # SimpleITK order is (x, y)
    resampler.SetOutputSpacing([float(spacing[1]), float(spacing[0])])
    resampler.SetOutputOrigin([float(origin[1]), float(origin[0])])
    resampler.SetOutputDirection(source.GetDirection())
    resampler.SetInterpolator(_INTERPOLATORS[interpolation])
    resampler.SetDefaultPixelValue(float(default_value))
    resampler.SetOutputPixelType(source.GetPixelID())
    result = sitk.GetArrayFromImage(resampler.Execute(source))
    return result.astype(image.dtype) if is_label else result.astype(np.float32)


def resample_stack(
    stack: np.ndarray,
    out_shape: Sequence[int],
    interpolation: Interpolation = "linear",
    scale: float = 1.0,
    default_value: float = 0.0,
) -> np.ndarray:
    """Resample every frame of a (T, H, W) stack with :func:`resample_2d`."""
    return np.stack([resample_2d(f, out_shape, interpolation, scale, default_value) for f in stack])
