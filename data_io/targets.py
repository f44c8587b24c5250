"""Targets of the cosine embedding loss for one augmented window (paper §2.2, §4.2; docs/fidelity.md §2.5–§2.7).

Everything here works on the augmented window at network-tile resolution: labels (T, H, W) are the merged ground
truth (§4.2: SEG masks relabelled to TRA ids where segmented, TRA markers elsewhere) after the spatial transform,
so instance ids are the TRA ids and stay consistent across the window.

* Instances: every label present in the window; when there are more than ``loss.max_instances`` (code: 31), a
  random subset of that size (docs/fidelity.md §2.7). S(i) = all pixels of label i in any frame.
* Neighbours, ``loss.neighbour_mode = centroid`` (§2.2): j ≠ i is a neighbour of i when any pixel of j, in any frame,
  lies closer than r_N = ``loss.neighbour_radius`` (``loss.code_neighbour_radius`` when set) to the centre of
  gravity of S(i) over the window. N(i) is the union of all pixels of all neighbours in all frames. ``code`` mode:
  the authors' on-the-fly recipe (docs/fidelity.md §2.6), see :func:`code_neighbours`. Neighbours are searched
  among ALL labels of the window, selected or not; background is never a neighbour.
* r_N is measured in pixels of the augmented tile, as the authors' code does (docs/fidelity.md §2.6: the radius is a
  fixed number of crop pixels, not rescaled by the random zoom). Table 1 gives it for the un-augmented network grid, so
  at a random scale s a neighbourhood covers s times the network-grid radius.
* Background (§4.2): S(b) = label-0 pixels and N(b) = labelled pixels, only in frames with complete SEG and only
  inside the annotated region (the frame minus the CTC border band), see :func:`background_targets`.

Dense targets for the loss are boolean masks; to move samples between processes cheaply they are carried in a
compact form (:class:`CompactTargets`: one index image and a neighbour table) and expanded with
:func:`expand_targets` (NumPy) or its TensorFlow twin in :mod:`data_io.pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.ndimage as ndi

from rshn_tf.config import LossConfig
from rshn_tf.errors import RshnError

#: Keys of the dense targets, as consumed by ``rshn_tf.losses`` (there with a leading batch axis).
TARGET_KEYS = ("instance_masks", "neighbour_masks", "background_mask", "foreground_mask", "valid_mask")


@dataclass
class CompactTargets:
    """Loss targets of one window in compact form.

    Attributes:
        index_map: (T, H, W) int32: 0 for unlabelled pixels, k + 1 for the k-th selected instance (k < K), and
            K + 1 … L for the labels of the window that were not selected.
        neighbour_table: (K, L + 1) bool: row k marks the compact indices of the neighbours of instance k
            (column 0, the unlabelled pixels, is always False).
        instance_ids: (K,) int32 ground-truth (TRA) ids of the selected instances, in slot order.
        label_ids: (L,) int32 ground-truth ids of compact indices 1 … L.
        background_mask: (T, H, W) bool, S(b).
        foreground_mask: (T, H, W) bool, N(b).
        valid_mask: (T, H, W) bool, pixels inside the original frame.
    """

    index_map: np.ndarray
    neighbour_table: np.ndarray
    instance_ids: np.ndarray
    label_ids: np.ndarray
    background_mask: np.ndarray
    foreground_mask: np.ndarray
    valid_mask: np.ndarray


def present_labels(labels: np.ndarray) -> np.ndarray:
    """Sorted non-zero labels of a non-negative integer array (int64)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    top = int(labels.max())
    if top < 1 << 20:
        values = np.flatnonzero(np.bincount(labels.ravel(), minlength=top + 1))
    else:
        values = np.unique(labels)
    return values[values > 0].astype(np.int64)


def select_instances(labels: np.ndarray, max_instances: int, rng: np.random.Generator) -> np.ndarray:
    """The instances entering the loss: all labels of the window, or a random subset of ``max_instances``.

    Args:
        labels: (T, H, W) labels of the window.
        max_instances: ``loss.max_instances``.
        rng: Random generator (drawn from only when there are more labels than slots).

    Returns:
        Sorted selected ids (int64).
    """
    values = present_labels(labels)
    if values.size <= max_instances:
        return values
    return np.sort(rng.choice(values, size=max_instances, replace=False))


def centroids(labels: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """Centre of gravity (y, x) of each id over all frames of a (T, H, W) label window; (N, 2) float64."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return np.zeros((0, 2))
    _, height, width = labels.shape
    lut = np.zeros(int(max(labels.max(), ids.max())) + 1, dtype=np.int64)
    lut[ids] = np.arange(1, ids.size + 1)
    index = lut[labels].ravel()
    rows = np.broadcast_to(np.arange(height)[None, :, None], labels.shape).ravel()
    cols = np.broadcast_to(np.arange(width)[None, None, :], labels.shape).ravel()
    counts = np.bincount(index, minlength=ids.size + 1)[1:]
    sum_y = np.bincount(index, weights=rows, minlength=ids.size + 1)[1:]
    sum_x = np.bincount(index, weights=cols, minlength=ids.size + 1)[1:]
    counts = np.maximum(counts, 1)
    return np.stack([sum_y / counts, sum_x / counts], axis=1)


def _disk_region(shape: Sequence[int], centre: np.ndarray, radius: float) -> tuple[slice, slice, np.ndarray]:
    """Bounding box (slices) and mask of the pixels strictly closer than ``radius`` to ``centre``."""
    height, width = shape
    y0, y1 = max(int(np.floor(centre[0] - radius)), 0), min(int(np.ceil(centre[0] + radius)) + 1, height)
    x0, x1 = max(int(np.floor(centre[1] - radius)), 0), min(int(np.ceil(centre[1] + radius)) + 1, width)
    yy, xx = np.mgrid[y0:max(y1, y0), x0:max(x1, x0)]
    disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2
    return slice(y0, max(y1, y0)), slice(x0, max(x1, x0)), disk


def centroid_neighbours(labels: np.ndarray, ids: Sequence[int], radius: float) -> list[np.ndarray]:
    """Neighbours by the paper's rule (§2.2): labels with any pixel closer than ``radius`` to the centroid of i.

    Args:
        labels: (T, H, W) labels of the window.
        ids: Instances to find neighbours for.
        radius: r_N in pixels of ``labels``.

    Returns:
        One sorted array of neighbour ids per instance (never the instance itself, never 0).
    """
    centres = centroids(labels, ids)
    result = []
    for label, centre in zip(ids, centres):
        rows, cols, disk = _disk_region(labels.shape[1:], centre, radius)
        inside = labels[:, rows, cols][:, disk]
        values = present_labels(inside)
        result.append(values[values != label])
    return result


def code_neighbours(labels: np.ndarray, ids: Sequence[int], radius: float, dilation: int) -> list[np.ndarray]:
    """Neighbours by the authors' on-the-fly recipe (docs/fidelity.md §2.6, ``loss.neighbour_mode = code``).

    For instance i: its mask is dilated per frame with a disk of diameter ``dilation``; in the frame before its first
    and after its last frame the dilated mask of the adjacent frame is added; in all frames from one before its first
    to one after its last frame a disk of ``radius`` around its centroid over the window is added. Every other label
    with a pixel inside that (per-frame) region is a neighbour.

    Args:
        labels: (T, H, W) labels of the window.
        ids: Instances to find neighbours for.
        radius: Disk radius in pixels of ``labels``.
        dilation: Diameter of the dilation disk in pixels (code: 5); values below 2 disable dilation.

    Returns:
        One sorted array of neighbour ids per instance.
    """
    num_frames = labels.shape[0]
    half = (dilation - 1) / 2.0
    reach = int(np.floor(half))
    yy, xx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    structure = (yy ** 2 + xx ** 2 <= half ** 2)[None]  # per frame only
    centres = centroids(labels, ids)
    result = []
    for label, centre in zip(ids, centres):
        own = labels == label
        frames = np.flatnonzero(own.reshape(num_frames, -1).any(axis=1))
        if frames.size == 0:
            result.append(np.zeros(0, dtype=np.int64))
            continue
        region = ndi.binary_dilation(own, structure=structure) if reach > 0 else own.copy()
        first, last = int(frames[0]), int(frames[-1])
        if first > 0:
            region[first - 1] |= region[first]
        if last < num_frames - 1:
            region[last + 1] |= region[last]
        rows, cols, disk = _disk_region(labels.shape[1:], centre, radius)
        for t in range(max(first - 1, 0), min(last + 1, num_frames - 1) + 1):
            region[t, rows, cols] |= disk
        values = present_labels(labels[region])
        result.append(values[values != label])
    return result


def background_targets(labels: np.ndarray, complete: np.ndarray, annotated: np.ndarray,
                       valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """S(b) and N(b) (§4.2): label 0 / label > 0 in complete-SEG frames inside the annotated, valid region.

    Args:
        labels: (T, H, W) labels.
        complete: (T,) bool, frames with complete SEG ground truth.
        annotated: (T, H, W) or (H, W) bool, the frame minus the un-annotated border band, after augmentation.
        valid: (T, H, W) or (H, W) bool, pixels inside the original frame.

    Returns:
        ``(background_mask, foreground_mask)``, each (T, H, W) bool.
    """
    usable = np.asarray(complete, bool)[:, None, None] & np.asarray(annotated, bool) & np.asarray(valid, bool)
    return usable & (labels == 0), usable & (labels > 0)


def build_targets(
    labels: np.ndarray,
    complete: np.ndarray,
    annotated: np.ndarray,
    valid: np.ndarray,
    config: LossConfig,
    rng: np.random.Generator,
) -> CompactTargets:
    """All loss targets of one augmented window in compact form.

    Args:
        labels: (T, H, W) integer labels of the window (0 outside the frame).
        complete: (T,) bool, frames with complete SEG.
        annotated: (H, W) or (T, H, W) bool annotated region after augmentation.
        valid: (H, W) or (T, H, W) bool, pixels inside the original frame.
        config: Loss settings (``max_instances``, ``neighbour_radius``, ``neighbour_mode``,
            ``neighbour_dilation``).
        rng: Random generator for the instance subset.

    Returns:
        The :class:`CompactTargets`.

    Raises:
        RshnError: On an unknown ``loss.neighbour_mode``.
    """
    labels = np.asarray(labels)
    valid = np.broadcast_to(np.asarray(valid, bool), labels.shape)
    labels = np.where(valid, labels, 0).astype(np.int64)
    selected = select_instances(labels, config.max_instances, rng)
    if config.neighbour_mode == "centroid":
        neighbours = centroid_neighbours(labels, selected, config.radius)
    elif config.neighbour_mode == "code":
        neighbours = code_neighbours(labels, selected, config.radius, config.neighbour_dilation)
    else:
        raise RshnError(f"key 'loss.neighbour_mode' must be 'centroid' or 'code', got {config.neighbour_mode!r}")

    others = np.setdiff1d(present_labels(labels), selected)
    label_ids = np.concatenate([selected, others]).astype(np.int64)
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lut[label_ids] = np.arange(1, label_ids.size + 1, dtype=np.int32)
    index_map = lut[labels]
    table = np.zeros((selected.size, label_ids.size + 1), dtype=bool)
    for row, ids in enumerate(neighbours):
        table[row, lut[ids]] = True
    background, foreground = background_targets(labels, complete, annotated, valid)
    return CompactTargets(index_map=index_map, neighbour_table=table, instance_ids=selected.astype(np.int32),
                          label_ids=label_ids.astype(np.int32), background_mask=background,
                          foreground_mask=foreground, valid_mask=np.array(valid))


def pad_neighbour_table(table: np.ndarray, max_instances: int) -> np.ndarray:
    """Pad a (K, L + 1) neighbour table with empty rows to (max_instances, L + 1)."""
    if table.shape[0] > max_instances:
        raise ValueError(f"{table.shape[0]} instances exceed max_instances = {max_instances}")
    padded = np.zeros((max_instances, table.shape[1]), dtype=bool)
    padded[:table.shape[0]] = table
    return padded


def expand_targets(targets: CompactTargets, max_instances: int) -> dict[str, np.ndarray]:
    """Dense boolean targets of :data:`TARGET_KEYS`, instance axis padded with empty masks to ``max_instances``.

    Returns:
        ``instance_masks`` and ``neighbour_masks`` (max_instances, T, H, W), ``background_mask``,
        ``foreground_mask`` and ``valid_mask`` (T, H, W), all bool.
    """
    slots = np.arange(1, max_instances + 1, dtype=np.int32)[:, None, None, None]
    instance_masks = targets.index_map[None] == slots
    neighbour_masks = pad_neighbour_table(targets.neighbour_table, max_instances)[:, targets.index_map]
    return {
        "instance_masks": instance_masks,
        "neighbour_masks": neighbour_masks,
        "background_mask": targets.background_mask.copy(),
        "foreground_mask": targets.foreground_mask.copy(),
        "valid_mask": targets.valid_mask.copy(),
    }

