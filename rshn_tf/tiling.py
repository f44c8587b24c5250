"""Overlapping tiles of a frame and merging per-tile instance labels back into one image (paper §2.4, Fig. 4).

Inference cuts every network-grid frame into tiles of size s that overlap by o pixels (§4.2: 256 × 256, o = 128);
each tile's frame pair is clustered on its own, and the tile label images are merged here:

* ``instance`` mode (paper, default): instances touching a tile edge that is not an outer image edge are dropped;
  if several tiles still predict the same instance, the candidate with the largest area (pixels over both frames)
  is kept.
* ``blob`` mode (authors' code, docs/fidelity.md §6.6): the same inner-edge rule, plus an optional band
  (``postprocessing.merge_ignore_border``) along inner edges in which instances are ignored, and a comparison of
  connected foreground blobs instead of single instances.

This module must not import TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from rshn_tf.config import PostprocessingConfig

#: 6-connectivity in (t, y, x): the code's connected foreground blobs of a 2-frame label volume (docs/fidelity.md §6.6).
_BLOB_STRUCTURE = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    Attributes:
        index: Position in the grid's enumeration (y fastest, then x).
        offset: Image coordinates (y, x) of the tile's top-left pixel; negative on an axis that is smaller than the
            tile (the tile is centred on that axis and the missing pixels are padding).
        size: Tile size (height, width).
        image_shape: Size (height, width) of the whole image.
    """

    index: int
    offset: tuple[int, int]
    size: tuple[int, int]
    image_shape: tuple[int, int]

    @property
    def image_slice(self) -> tuple[slice, slice]:
        """The part of the image that the tile covers (clipped to the image)."""
        return tuple(  # type: ignore[return-value]
            slice(max(o, 0), min(o + s, n)) for o, s, n in zip(self.offset, self.size, self.image_shape)
        )

    @property
    def tile_slice(self) -> tuple[slice, slice]:
        """Where the covered image part lies inside the tile (everything else is padding)."""
        return tuple(  # type: ignore[return-value]
            slice(max(-o, 0), max(-o, 0) + min(o + s, n) - max(o, 0))
            for o, s, n in zip(self.offset, self.size, self.image_shape)
        )

    @property
    def outer(self) -> tuple[bool, bool, bool, bool]:
        """Whether the (top, bottom, left, right) edge of the covered image part is an outer image edge."""
        (y, x), (h, w), (height, width) = self.offset, self.size, self.image_shape
        return y <= 0, y + h >= height, x <= 0, x + w >= width

    def extract(
        self, array: np.ndarray, pad_value: float | np.ndarray = 0.0, axis: int = 0, copy: bool = True
    ) -> np.ndarray:
        """Cut this tile out of ``array``, padding the parts outside the image.

        Args:
            array: Array whose axes ``axis`` and ``axis + 1`` are (height, width); leading axes (e.g. frames) and
                trailing axes (e.g. channels) are kept.
            pad_value: Value of padded pixels; a scalar or an array broadcastable to the trailing axes (e.g. the
                background embedding).
            axis: Index of the height axis.
            copy: If False, a tile lying wholly inside the image is returned as a view of ``array`` (no copy).

        Returns:
            Array of the same dtype with the two spatial axes replaced by the tile size.
        """
        array = np.asarray(array)
        lead = (slice(None),) * axis
        part = array[lead + self.image_slice]
        if part.shape[axis:axis + 2] == self.size:
            return part.copy() if copy else part
        shape = array.shape[:axis] + tuple(self.size) + array.shape[axis + 2:]
        out = np.empty(shape, dtype=array.dtype)
        out[...] = pad_value
        out[lead + self.tile_slice] = part
        return out

    def crop(self, tile_array: np.ndarray, axis: int = 0) -> np.ndarray:
        """Return the part of a tile-sized array that lies inside the image (drops the padding)."""
        return np.asarray(tile_array)[(slice(None),) * axis + self.tile_slice]


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles covering an image (docs/fidelity.md §5.3).

    Attributes:
        image_shape: Image size (height, width).
        tile_size: Tile size (height, width).
        overlap: Overlap of neighbouring tiles in pixels.
        offsets_y: Tile offsets along y.
        offsets_x: Tile offsets along x.
        tiles: All tiles, y fastest then x.
    """

    image_shape: tuple[int, int]
    tile_size: tuple[int, int]
    overlap: int
    offsets_y: tuple[int, ...]
    offsets_x: tuple[int, ...]
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)


def axis_offsets(size: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis: 0, step, 2·step, … with the last one snapped to ``size − tile``.

    An axis not larger than the tile gets one tile centred on it, offset ``(size − tile) // 2`` (≤ 0; the missing
    pixels are padding).

    Args:
        size: Image size along the axis.
        tile: Tile size along the axis.
        overlap: Overlap of neighbouring tiles (step = tile − overlap).

    Returns:
        The offsets in increasing order.
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"tile size {tile} must be positive and overlap {overlap} in [0, tile)")
    if size <= tile:
        return [(size - tile) // 2]
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


def tile_grid(shape: Sequence[int], tile_size: Sequence[int], overlap: int) -> TileGrid:
    """Build the tile grid of an image (paper §2.4; docs/fidelity.md §5.3).

    Offsets per axis are 0, step, …, with the last snapped to size − tile (step = tile − overlap). An axis smaller
    than the tile is covered by one centred tile; the caller pads the outside pixels (the authors' code pads the
    normalised frame with −1, its minimum intensity; :meth:`Tile.extract` takes the value). Tiles enumerate y
    fastest, then x. E.g. 700 × 1100 with 256-px tiles and overlap 128 gives 5 × 8 = 40 tiles.

    Args:
        shape: Image size (height, width).
        tile_size: Tile size (height, width), ``data.tile_size``.
        overlap: ``inference.tile_overlap``.

    Returns:
        The :class:`TileGrid`.
    """
    image_shape = (int(shape[0]), int(shape[1]))
    size = (int(tile_size[0]), int(tile_size[1]))
    ys = axis_offsets(image_shape[0], size[0], overlap)
    xs = axis_offsets(image_shape[1], size[1], overlap)
    tiles = tuple(
        Tile(index=i, offset=(y, x), size=size, image_shape=image_shape)
        for i, (x, y) in enumerate((x, y) for x in xs for y in ys)
    )
    return TileGrid(image_shape, size, int(overlap), tuple(ys), tuple(xs), tiles)


def extract_tiles(array: np.ndarray, grid: TileGrid, pad_value: float | np.ndarray = 0.0, axis: int = 0) -> np.ndarray:
    """Cut all tiles of ``grid`` out of ``array`` (see :meth:`Tile.extract`) and stack them on a new first axis.

    Args:
        array: Array whose axes ``axis``, ``axis + 1`` are the image (height, width).
        grid: The tile grid of that image.
        pad_value: Value of pixels outside the image.
        axis: Index of the height axis in ``array``.

    Returns:
        Array (n_tiles, …) of the same dtype.
    """
    array = np.asarray(array)
    if tuple(array.shape[axis:axis + 2]) != grid.image_shape:
        raise ValueError(f"array spatial shape {array.shape[axis:axis + 2]} does not match the grid "
                         f"{grid.image_shape}")
    return np.stack([tile.extract(array, pad_value, axis) for tile in grid.tiles])


# --------------------------------------------------------------------------------------------------------------
# Merging


@dataclass
class _Candidate:
    area: int
    tile: int
    label: int
    box: tuple[slice, slice, slice]  # in image coordinates over (2, H, W)
    mask: np.ndarray  # boolean, shape of box


def _inner_edge_bands(shape: tuple[int, int], outer: tuple[bool, bool, bool, bool], band: int) -> np.ndarray:
    """Boolean (h, w) mask that is False in a band of ``band`` px along every inner edge (all four sides)."""
    h, w = shape
    valid = np.ones(shape, dtype=bool)
    if band <= 0:
        return valid
    top, bottom, left, right = outer
    if not top:
        valid[:band] = False
    if not bottom:
        valid[max(h - band, 0):] = False
    if not left:
        valid[:, :band] = False
    if not right:
        valid[:, max(w - band, 0):] = False
    return valid


def _tile_candidates(part: np.ndarray, tile: Tile, ignore_border: int) -> list[_Candidate]:
    """Instances of one cropped (2, h, w) tile label image that survive the inner-edge rules."""
    if part.max(initial=0) <= 0:
        return []
    h, w = part.shape[1:]
    top, bottom, left, right = tile.outer
    objects = ndimage.find_objects(part)
    areas = np.bincount(part.ravel(), minlength=len(objects) + 1)
    if ignore_border > 0:
        valid = _inner_edge_bands((h, w), tile.outer, ignore_border)
        in_valid = np.bincount(part[:, valid].ravel(), minlength=len(objects) + 1)
    else:
        in_valid = areas
    y0, x0 = tile.image_slice[0].start, tile.image_slice[1].start
    candidates = []
    for label, box in enumerate(objects, start=1):
        if box is None:
            continue
        ts, ys, xs = box
        touches_inner = ((ys.start == 0 and not top) or (ys.stop == h and not bottom)
                         or (xs.start == 0 and not left) or (xs.stop == w and not right))
        if touches_inner or in_valid[label] == 0:
            continue
        image_box = (ts, slice(ys.start + y0, ys.stop + y0), slice(xs.start + x0, xs.stop + x0))
        candidates.append(_Candidate(int(areas[label]), tile.index, label, image_box, part[box] == label))
    return candidates


def _merge_instances(parts: list[np.ndarray], grid: TileGrid, out: np.ndarray, config: PostprocessingConfig) -> bool:
    """Paper mode: largest candidate first; a candidate overlapping one already kept instance by more than
    ``merge_overlap_fraction`` of its own area is the same instance and is dropped, otherwise its free pixels are
    pasted as a new instance. Returns whether some new instance got no free pixel (ids 1..K then have gaps)."""
    candidates: list[_Candidate] = []
    for part, tile in zip(parts, grid.tiles):
        candidates.extend(_tile_candidates(part, tile, config.merge_ignore_border))
    candidates.sort(key=lambda c: (-c.area, c.tile, c.label))
    next_id = 1
    gaps = False
    for cand in candidates:
        region = out[cand.box]
        under = region[cand.mask]
        occupied = under[under > 0]
        if occupied.size:
            if np.bincount(occupied).max() > config.merge_overlap_fraction * cand.area:  # largest overlap
                continue
            free = cand.mask & (region == 0)
            region[free] = next_id
            gaps = gaps or not free.any()
        else:
            region[cand.mask] = next_id
        next_id += 1
    return gaps


def _merge_blobs(parts: list[np.ndarray], grid: TileGrid, out: np.ndarray, config: PostprocessingConfig) -> None:
    """Code mode (docs/fidelity.md §6.6), tile by tile: an instance over background is pasted; otherwise the union of
    the tile's foreground blobs it touches is compared with the union of the merged image's blobs it touches, and the
    larger wins (the losing old blobs are erased everywhere, all tile instances of a winning blob pasted).

    Unlike the code, the ignore band is applied on all four inner edges (the code excludes only one column on the
    left edge, a missing slice), and a tile instance pasted as part of a winning blob is not compared again.
    """
    next_id = 1
    for part, tile in zip(parts, grid.tiles):
        candidates = _tile_candidates(part, tile, config.merge_ignore_border)
        if not candidates:
            continue
        keep = np.zeros(int(part.max()) + 1, dtype=bool)
        keep[[c.label for c in candidates]] = True
        part = np.where(keep[part], part, 0)
        box = (slice(None),) + tile.image_slice
        merged_blobs, _ = ndimage.label(out > 0, structure=_BLOB_STRUCTURE)
        merged_sizes = np.bincount(merged_blobs.ravel())
        merged_boxes = ndimage.find_objects(merged_blobs)
        tile_blobs, _ = ndimage.label(part > 0, structure=_BLOB_STRUCTURE)
        tile_sizes = np.bincount(tile_blobs.ravel())
        merged_in_tile = merged_blobs[box]
        done = np.zeros_like(keep)
        for cand in candidates:
            if done[cand.label]:
                continue
            mask = part == cand.label
            old = np.unique(merged_in_tile[mask])
            old = old[old > 0]
            if old.size == 0:
                out[box][mask] = next_id
                next_id += 1
                done[cand.label] = True
                continue
            new_blobs = np.unique(tile_blobs[mask])
            new_blobs = new_blobs[new_blobs > 0]
            if tile_sizes[new_blobs].sum() <= merged_sizes[old].sum():
                continue
            for blob in old.tolist():
                blob_box = merged_boxes[blob - 1]
                out[blob_box][merged_blobs[blob_box] == blob] = 0
            in_blob = np.isin(tile_blobs, new_blobs)
            for label in np.unique(part[in_blob]):
                if label == 0:
                    continue
                out[box][part == label] = next_id
                next_id += 1
                done[label] = True


def merge_tiles(
    tile_labels: Sequence[np.ndarray], grid: TileGrid, shape: Sequence[int], config: PostprocessingConfig
) -> np.ndarray:
    """Merge the 2-frame label images of all tiles into one image (paper §2.4, Fig. 4; docs/fidelity.md §6.6).

    Args:
        tile_labels: One (2, tile_h, tile_w) integer label image per tile of ``grid`` (0 = background), in grid
            order; pixels in the padding of a tile are ignored.
        grid: The tile grid.
        shape: Image size (height, width); must equal ``grid.image_shape``.
        config: ``merge_mode``, ``merge_ignore_border`` and ``merge_overlap_fraction`` are read.

    Returns:
        (2, H, W) int32 labels, consecutive 1..K.
    """
    if tuple(int(s) for s in shape) != grid.image_shape:
        raise ValueError(f"shape {tuple(shape)} does not match the tile grid {grid.image_shape}")
    if len(tile_labels) != len(grid):
        raise ValueError(f"got {len(tile_labels)} tile label images for a grid of {len(grid)} tiles")
    parts = []
    for labels, tile in zip(tile_labels, grid.tiles):
        labels = np.asarray(labels)
        if labels.ndim != 3 or tuple(labels.shape[1:]) != tile.size:
            raise ValueError(f"tile {tile.index}: expected labels of shape (frames, {tile.size[0]}, "
                             f"{tile.size[1]}), got {labels.shape}")
        parts.append(tile.crop(labels, axis=1).astype(np.int32, copy=False))
    frames = parts[0].shape[0] if parts else 2
    out = np.zeros((frames,) + grid.image_shape, dtype=np.int32)
    if config.merge_mode == "instance":
        if not _merge_instances(parts, grid, out, config):
            return out  # ids are 1..K already
    else:
        _merge_blobs(parts, grid, out, config)
    return relabel_consecutive(out)


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Relabel the non-zero labels of an integer array to 1..K in ascending order (0 stays 0), as int32."""
    labels = np.asarray(labels)
    present = np.flatnonzero(np.bincount(labels.ravel()))
    present = present[present > 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lut[labels]
