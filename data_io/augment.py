"""Random spatial and intensity augmentation of a whole l-frame training window (paper §3.1;
docs/fidelity.md §3.5–§3.7).

Parameters are drawn (:func:`sample_params`) separately from their application (:class:`SpatialTransform`,
:func:`apply_intensity`), so their distribution can be checked cheaply and a sample can be regenerated from its
parameters. Every draw comes from one ``numpy.random.Generator`` in a fixed order.

Geometry. ONE spatial transform is drawn per window and used for every frame, label image and mask of it. It maps a
pixel p = (y, x) of the ``data.tile_size`` network tile to a point of the ORIGINAL frame; composed from the inside
out (the authors' order, docs/fidelity.md §3.5):

1. elastic deformation: q = p + d(p), d a B-spline (order ``elastic_spline_order``, §3.1: 3) over the tile whose
   ``elastic_grid`` control points (§3.1: 6 × 6) are moved by U(-b, b) tile pixels per axis (b =
   ``elastic_displacement``, §3.1: 10);
2. centring: q - c_tile with c = (size - 1) / 2;
3. scaling by s per axis (>1 zooms out: the tile covers more of the frame). Paper mode: one isotropic
   s ~ U(``scale_range``) (§3.1: [0.5, 1.5]); code mode (``scale_mode: code_product``): per-axis
   U(1 ± δ) times isotropic U(1 ± δ), δ = ``code_scale_delta`` (docs/fidelity.md §3.5);
4. rotation by U(``rotation_range``) degrees (§3.1: [-180, 180]);
5. mirroring of each axis with probability ``mirror_probability`` (§3.1: 0.5);
6. shift to the crop centre on the network grid: the grid centre plus a random offset U(-m, m) per axis with
   m = |network size - tile size| / 2, so the un-augmented tile is a uniformly placed crop that stays inside the
   frame (§2.4: "we randomly crop a region of the desired network size"); plus, as the code's option, a translation
   U(±``translation_fraction`` · tile size);
7. the network-grid → original-grid mapping of :func:`data_io.resample.grid_mapping` (the one inference uses).

Steps 2–7 are one affine map; with the B-spline they form a SimpleITK composite transform that is baked once into a
dense displacement field over the tile, and every frame (``image_interpolation``, default -1 outside), label image
(nearest, 0 outside) and mask (nearest) is resampled with it straight from its original-resolution array. Training
therefore sees exactly the geometry of test-time preprocessing (``resample_2d`` to the network grid, then a tile)
when the random parameters are neutral; the authors' code differs for datasets whose two axes are resampled with
different factors (docs/fidelity.md §3.3), which we do not copy. ``data.extra_scale`` (the code's test-time zoom) is not
applied in training.

Intensities (after resampling, on the whole crop): optional gamma (code), then ``x ← (x + v_shift) · v_scale`` with
v_shift ~ U(``intensity_shift``) and v_scale ~ U(``intensity_scale``) (§3.1: [-0.65, 0.65], [0.35, 1.65]), then
optional per-frame shift/scale (code). Pixels outside the frame keep no special value and are excluded from the loss
through the valid mask.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

from data_io.resample import grid_mapping
from rshn_tf.config import AugmentationConfig
from rshn_tf.errors import RshnError

_IMAGE_INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}


@dataclass(frozen=True)
class SpatialParams:
    """One random spatial transform (see the module docstring for the composition).

    Attributes:
        flip: Mirror the (y, x) axes.
        angle: Rotation in radians.
        scale: Scale (y, x) of the tile → frame mapping; > 1 zooms out.
        offset: Crop centre relative to the network-grid centre (y, x), network-grid pixels (includes the code's
            optional translation).
        elastic: B-spline control-point displacements (grid_y, grid_x, 2) as (dy, dx) in tile pixels.
    """

    flip: tuple[bool, bool]
    angle: float
    scale: tuple[float, float]
    offset: tuple[float, float]
    elastic: np.ndarray


@dataclass(frozen=True)
class IntensityParams:
    """One random intensity change of a window.

    Attributes:
        shift: v_shift added to every intensity.
        scale: v_scale multiplying every intensity after the shift.
        gamma: Gamma exponent applied first (code option), or None.
        frame_shift: Extra shift per frame (T,) (code option; zeros when off).
        frame_scale: Extra factor per frame (T,) (code option; ones when off).
    """

    shift: float
    scale: float
    gamma: Optional[float]
    frame_shift: np.ndarray
    frame_scale: np.ndarray


@dataclass(frozen=True)
class AugmentationParams:
    """Spatial and intensity parameters of one training window."""

    spatial: SpatialParams
    intensity: IntensityParams


# ----------------------------------------------------------------------------------------------------------------
# Parameter sampling
# ----------------------------------------------------------------------------------------------------------------


def check_config(config: AugmentationConfig) -> None:
    """Reject augmentation settings that cannot be applied.

    Raises:
        RshnError: Naming the offending key.
    """
    if len(config.elastic_grid) != 2 or min(config.elastic_grid) <= config.elastic_spline_order:
        raise RshnError(f"key 'augmentation.elastic_grid' must be two control-point counts larger than "
                        f"augmentation.elastic_spline_order = {config.elastic_spline_order}, got "
                        f"{config.elastic_grid!r}")
    if not 0 <= config.elastic_spline_order <= 3:
        raise RshnError(f"key 'augmentation.elastic_spline_order' must be 0..3 (SimpleITK B-spline orders), got "
                        f"{config.elastic_spline_order}")
    if config.image_interpolation not in _IMAGE_INTERPOLATORS:
        raise RshnError(f"key 'augmentation.image_interpolation' must be one of {', '.join(_IMAGE_INTERPOLATORS)}, "
                        f"got {config.image_interpolation!r}")
    if config.scale_mode not in ("uniform", "code_product"):
        raise RshnError(f"key 'augmentation.scale_mode' must be 'uniform' or 'code_product', got "
                        f"{config.scale_mode!r}")
    scales = config.scale_range if config.scale_mode == "uniform" else [1 - config.code_scale_delta] * 2
    if min(scales) <= 0:
        raise RshnError("augmentation scales must stay positive: check 'augmentation.scale_range' and "
                        "'augmentation.code_scale_delta'")
    if config.gamma_range is not None and (len(config.gamma_range) != 2 or min(config.gamma_range) <= 0):
        raise RshnError(f"key 'augmentation.gamma_range' must be null or two positive values, got "
                        f"{config.gamma_range!r}")


def sample_spatial_params(
    rng: np.random.Generator,
    config: AugmentationConfig,
    tile_shape: Sequence[int],
    network_shape: Sequence[int],
) -> SpatialParams:
    """Draw one random spatial transform.

    Args:
        rng: Random generator; consumed in a fixed order.
        config: Augmentation ranges.
        tile_shape: Network tile (height, width).
        network_shape: Network-grid size (height, width) of the frames (Table 1).

    Returns:
        The drawn parameters.
    """
    flip = rng.random(2) < config.mirror_probability
    angle = math.radians(rng.uniform(config.rotation_range[0], config.rotation_range[1]))
    if config.scale_mode == "uniform":
        iso = rng.uniform(config.scale_range[0], config.scale_range[1])
        scale = (iso, iso)
    else:
        delta = config.code_scale_delta
        per_axis = rng.uniform(1.0 - delta, 1.0 + delta, size=2)
        iso = rng.uniform(1.0 - delta, 1.0 + delta)
        scale = (per_axis[0] * iso, per_axis[1] * iso)
    margin = np.abs(np.asarray(network_shape, np.float64) - np.asarray(tile_shape, np.float64)) / 2.0
    offset = rng.uniform(-margin, margin)
    translation = config.translation_fraction * np.asarray(tile_shape, np.float64)
    offset = offset + rng.uniform(-translation, translation)
    grid = tuple(int(g) for g in config.elastic_grid)
    elastic = rng.uniform(-config.elastic_displacement, config.elastic_displacement, size=grid + (2,))
    return SpatialParams(flip=(bool(flip[0]), bool(flip[1])), angle=float(angle),
                         scale=(float(scale[0]), float(scale[1])), offset=(float(offset[0]), float(offset[1])),
                         elastic=elastic)


def sample_intensity_params(rng: np.random.Generator, config: AugmentationConfig, num_frames: int) -> IntensityParams:
    """Draw one random intensity change for a window of ``num_frames`` frames (fixed draw order)."""
    shift = rng.uniform(config.intensity_shift[0], config.intensity_shift[1])
    scale = rng.uniform(config.intensity_scale[0], config.intensity_scale[1])
    gamma = None if config.gamma_range is None else float(rng.uniform(config.gamma_range[0], config.gamma_range[1]))
    frame_shift = rng.uniform(-config.per_frame_shift, config.per_frame_shift, size=num_frames)
    frame_scale = 1.0 + rng.uniform(-config.per_frame_scale, config.per_frame_scale, size=num_frames)
    return IntensityParams(shift=float(shift), scale=float(scale), gamma=gamma, frame_shift=frame_shift,
                           frame_scale=frame_scale)


def sample_params(
    rng: np.random.Generator,
    config: AugmentationConfig,
    tile_shape: Sequence[int],
    network_shape: Sequence[int],
    num_frames: int,
) -> AugmentationParams:
    """Draw the spatial, then the intensity parameters of one window (see the two functions above)."""
    return AugmentationParams(spatial=sample_spatial_params(rng, config, tile_shape, network_shape),
                              intensity=sample_intensity_params(rng, config, num_frames))


def identity_params(config: AugmentationConfig, num_frames: int) -> AugmentationParams:
    """Neutral parameters: the centre crop of the network grid without any change (for tests and inspection)."""
    grid = tuple(int(g) for g in config.elastic_grid)
    return AugmentationParams(
        spatial=SpatialParams(flip=(False, False), angle=0.0, scale=(1.0, 1.0), offset=(0.0, 0.0),
                              elastic=np.zeros(grid + (2,))),
        intensity=IntensityParams(shift=0.0, scale=1.0, gamma=None, frame_shift=np.zeros(num_frames),
                                  frame_scale=np.ones(num_frames)),
    )


# ----------------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------------


def affine_tile_to_original(
    params: SpatialParams,
    tile_shape: Sequence[int],
    network_shape: Sequence[int],
    original_shape: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """The affine part (steps 2–7) of the tile → original-frame mapping, in (y, x) order.

    Args:
        params: Spatial parameters.
        tile_shape: Tile (height, width).
        network_shape: Network-grid (height, width).
        original_shape: Original frame (height, width).

    Returns:
        ``(matrix, translation)`` with original = matrix @ q + translation for an (elastically moved) tile point q.
    """
    spacing, origin = grid_mapping(original_shape, network_shape)
    cos, sin = math.cos(params.angle), math.sin(params.angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    flip = np.diag([-1.0 if f else 1.0 for f in params.flip])
    linear = np.diag(spacing) @ flip @ rotation @ np.diag(params.scale)
    tile_centre = (np.asarray(tile_shape, np.float64) - 1.0) / 2.0
    crop_centre = (np.asarray(network_shape, np.float64) - 1.0) / 2.0 + np.asarray(params.offset)
    translation = origin + spacing * crop_centre - linear @ tile_centre
    return linear, translation


@functools.lru_cache(maxsize=4)
def bspline_basis(tile_shape: tuple[int, int], grid: tuple[int, int], order: int) -> np.ndarray:
    """Displacement of every tile pixel per unit B-spline coefficient, (grid_y · grid_x, H, W) float64.

    Evaluated once with SimpleITK's ``BSplineTransform`` over the tile (``BSplineTransformInitializer`` with
    ``grid - order`` mesh cells per axis, i.e. ``grid`` control points), one coefficient at a time; the
    displacement of any parameter set is then the coefficient-weighted sum of these images, exactly what the
    transform computes.

    Args:
        tile_shape: Tile (height, width).
        grid: Control points (y, x).
        order: Spline order.
    """
    height, width = tile_shape
    reference = sitk.Image(width, height, sitk.sitkUInt8)
    bspline = sitk.BSplineTransformInitializer(reference, [grid[1] - order, grid[0] - order], order)
    count = grid[0] * grid[1]
    basis = np.empty((count, height, width))
    for k in range(count):
        parameters = np.zeros(2 * count)
        parameters[k] = 1.0  # x coefficient k (ITK: all x coefficients, x fastest over the grid, then all y)
        bspline.SetParameters(parameters.tolist())
        field = sitk.TransformToDisplacementField(bspline, sitk.sitkVectorFloat64, [width, height], [0.0, 0.0],
                                                  [1.0, 1.0], [1.0, 0.0, 0.0, 1.0])
        basis[k] = sitk.GetArrayFromImage(field)[..., 0]
    basis.setflags(write=False)
    return basis


class SpatialTransform:
    """The tile → original-frame mapping of one window, ready to resample original-resolution arrays.

    The mapping is evaluated once per window into a dense displacement field over the tile; every array is then
    warped with SimpleITK's ``Warp`` (``WarpImageFilter``), which samples the input at each tile pixel's mapped
    position (pixels mapped outside the input get the default value).

    Args:
        params: Spatial parameters.
        tile_shape: Tile (height, width).
        network_shape: Network-grid (height, width) of the frames.
        original_shape: Original frame (height, width).
        spline_order: Order of the elastic B-spline (``augmentation.elastic_spline_order``).
    """

    def __init__(self, params: SpatialParams, tile_shape: Sequence[int], network_shape: Sequence[int],
                 original_shape: Sequence[int], spline_order: int = 3):
        self.tile_shape = (int(tile_shape[0]), int(tile_shape[1]))
        self.original_shape = (int(original_shape[0]), int(original_shape[1]))
        matrix, translation = affine_tile_to_original(params, tile_shape, network_shape, original_shape)
        height, width = self.tile_shape
        grid = np.mgrid[:height, :width].astype(np.float64)  # (2, H, W) as (y, x)
        moved = grid
        if np.any(params.elastic != 0):
            basis = bspline_basis(self.tile_shape, params.elastic.shape[:2], int(spline_order))
            dy = np.tensordot(params.elastic[..., 0].ravel(), basis, axes=1)
            dx = np.tensordot(params.elastic[..., 1].ravel(), basis, axes=1)
            moved = grid + np.stack([dy, dx])
        self._coordinates = np.einsum("ij,jhw->hwi", matrix, moved) + translation  # (H, W, 2) as (y, x)
        displacement = (self._coordinates - grid.transpose(1, 2, 0))[..., ::-1]  # (dx, dy) in SimpleITK order
        self._field = sitk.GetImageFromArray(np.ascontiguousarray(displacement), isVector=True)

    def coordinates(self) -> np.ndarray:
        """Original-frame coordinates (y, x) of every tile pixel, float64 (H, W, 2)."""
        return self._coordinates.copy()

    def resample(self, image: np.ndarray, interpolation: Literal["linear", "bspline", "nearest"],
                 default_value: float, origin: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
        """Resample one 2-D array onto the tile.

        Args:
            image: (H', W') array on the original pixel grid, possibly shifted by ``origin``.
            interpolation: ``linear``/``bspline`` for intensities (float32 result), ``nearest`` for labels and
                masks (result in the input's dtype).
            default_value: Value of tile pixels that map outside ``image``.
            origin: Original-frame coordinate (y, x) of ``image[0, 0]`` (non-zero for padded or cropped frames).

        Returns:
            The (tile_h, tile_w) resampled array.
        """
        image = np.asarray(image)
        if interpolation == "nearest":
            integer = image.dtype.kind in "iub"
            source = sitk.GetImageFromArray(image.astype(np.uint32) if integer else image)
            interpolator = sitk.sitkNearestNeighbor
        else:
            source = sitk.GetImageFromArray(image.astype(np.float32, copy=False))
            interpolator = _IMAGE_INTERPOLATORS[interpolation]
        source.SetOrigin((float(origin[1]), float(origin[0])))
        height, width = self.tile_shape
        result = sitk.GetArrayFromImage(sitk.Warp(source, self._field, interpolator, [width, height], [0.0, 0.0],
                                                  [1.0, 1.0], [1.0, 0.0, 0.0, 1.0], float(default_value)))
        if interpolation == "nearest":
            return result.astype(image.dtype, copy=False)
        return result.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------------------------
# Intensity and label post-processing
# ----------------------------------------------------------------------------------------------------------------


def apply_intensity(frames: np.ndarray, params: IntensityParams) -> np.ndarray:
    """Apply a random intensity change to a resampled (T, H, W) window; returns float32.

    Order (docs/fidelity.md §3.6): gamma on the window rescaled to [0, 1] with its own min/max (if set), then
    ``(x + shift) · scale``, then per frame ``(x + frame_shift[t]) · frame_scale[t]``. No clipping.
    """
    out = np.asarray(frames, dtype=np.float64)
    if params.gamma is not None:
        low, high = out.min(), out.max()
        if high > low:
            out = ((out - low) / (high - low)) ** params.gamma * (high - low) + low
    out = (out + params.shift) * params.scale
    out = (out + params.frame_shift[:, None, None]) * params.frame_scale[:, None, None]
    return out.astype(np.float32)


def smooth_labels(labels: np.ndarray, sigma: float) -> np.ndarray:
    """The code's label smoothing (DIC-C2DH-HeLa, docs/fidelity.md §3.7): blur each label's binary map (0 included) per
    frame with a Gaussian of σ tile pixels and keep, per pixel, the label of the largest response.

    Args:
        labels: (T, H, W) integer labels.
        sigma: Gaussian σ in pixels; 0 returns a copy.

    Returns:
        Smoothed labels, same shape and dtype.
    """
    labels = np.asarray(labels)
    if sigma <= 0:
        return labels.copy()
    values = np.unique(labels)
    best = np.full(labels.shape, -1.0, dtype=np.float32)
    out = np.zeros_like(labels)
    for value in values:
        response = ndi.gaussian_filter((labels == value).astype(np.float32), sigma=(0, sigma, sigma))
        better = response > best
        out[better] = value
        best[better] = response[better]
    return out
