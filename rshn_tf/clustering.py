"""Clustering the embeddings of one 2-frame tile into instance labels (paper §2.3, §3.1, §5.3; docs/fidelity.md §6).

Pipeline of :func:`cluster_tile` for the embeddings ``(2, h, w, D)`` of frames t and t+1 of one tile:

1. Background: pixels with cos(e, e_b)² > ``background_threshold`` (e_b = (1, 0, …, 0), §2.3), computed as
   e₀² > threshold · ‖e‖². Padding pixels (all-zero embeddings) are background too. (The authors' code treats
   cos² = threshold as background as well; that differs only for pixels exactly on the boundary.) With
   ``background_rule: first_pair_median`` (MICCAI 2018 code, for models with a learned background embedding):
   pixels whose dot product with the median embedding of the first frame pair is >= ``background_dot_threshold``.
2. Features of the foreground pixels of both frames: [e, c·y, c·x] with tile-local row y and column x, the same
   in both frames, no time coordinate (docs/fidelity.md §6.2).
3. Cosine mean shift with a flat kernel of bandwidth h in cosine distance (§2.3, docs/fidelity.md §6.3), from
   ``num_seeds`` random foreground pixels, followed by de-duplication of the modes and the assignment of every
   foreground pixel to its nearest mode — or HDBSCAN (preliminary work, Table 3) when
   ``clustering: hdbscan``.
4. Every cluster is split into its 3-D connected components over the two frames (18-neighbourhood in (t, y, x));
   components with fewer than ``min_size`` voxels (both frames together) are removed; labels are made
   consecutive.

Exactness. :func:`cosine_mean_shift` (fast) and :func:`cosine_mean_shift_reference` (one seed at a time, as in
the authors' code) return identical modes and labels. Both first round the features to a fixed-point grid (multiples of
2^-b with at most 22 significant bits, far below any meaningful difference of embeddings), and the means to the
same grid after every update. On that grid every dot product and every neighbour sum is exact, whatever the order
of summation, so every decision (neighbour or not, converged or not, which mode is kept, which mode is nearest)
is the same in both implementations. The fast version screens with float32 matrix products, re-checks exactly the
few points whose float32 cosine lies within a safety margin of the decision, and sums neighbours with float64
matrix products, which are exact on the grid (see :class:`_FastMeanShift`).

Speed. The seeds are grouped around anchor directions (leader seeds); each group keeps only the points within angle
θ_h + ρ of its anchor (θ_h = arccos(1 − h), ρ the distance a member mean may have from the anchor). By the
triangle inequality on the sphere no other point can be a neighbour of a member mean, so every update of all
members of a group is one matrix product over a small block of candidates instead of all points. Means that move
farther than ρ from their anchor are regrouped; seeds whose means become identical are iterated once; converged
seeds leave the active set. BLAS runs single-threaded (the products are small); :func:`cluster_tiles` clusters
tiles in parallel threads instead.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from rshn_tf.blas_threads import single_threaded_blas
from rshn_tf.config import PostprocessingConfig
from rshn_tf.errors import RshnError

__all__ = [
    "cluster_tile",
    "cluster_tiles",
    "tile_seed",
    "foreground_mask",
    "first_pair_background",
    "tile_features",
    "choose_seeds",
    "cosine_mean_shift",
    "cosine_mean_shift_reference",
    "hdbscan_clusters",
    "split_components",
    "single_threaded_blas",
]

# Implementation constants of the fast mean shift. They change speed only, never results.
#: Significant bits of the fixed-point grid the features and means are rounded to (see module docstring).
_FIXED_POINT_BITS = 22
#: Angle (radians) a mean may move away from its group's anchor before it is regrouped.
_ANCHOR_RADIUS = 0.4
#: Angle (radians) within which new means are grouped with a leader mean.
_LEADER_RADIUS = 0.15
#: Angle (radians) within which the seeds are grouped with a leader seed before the first update.
_SEED_LEADER_RADIUS = 0.35
#: Points per block of a matrix product (bounds the temporary arrays).
_CHUNK_POINTS = 8192


# ----------------------------------------------------------------------------------------------------------------
# Tile -> features


def foreground_mask(
    embeddings: np.ndarray, background_threshold: float, background: Optional[np.ndarray] = None,
    dot_threshold: float = 0.95,
) -> np.ndarray:
    """Return the foreground mask of a tile (non-zero embeddings only; all-zero embeddings are padding).

    Without ``background`` (rule ``fixed``, §2.3): cos(e, e_b)² <= ``background_threshold`` with
    e_b = (1, 0, …, 0), computed as e₀² <= threshold · ‖e‖². With a ``background`` vector (rule
    ``first_pair_median``, MICCAI 2018 code, docs/fidelity.md §9.1): e · background < ``dot_threshold``.

    Args:
        embeddings: Float array (..., D); channel 0 is the direction of the background embedding e_b.
        background_threshold: Pixels with e₀² > threshold · ‖e‖² are background (rule ``fixed``).
        background: Background vector (D,) of the rule ``first_pair_median``, or None.
        dot_threshold: Rule ``first_pair_median``: pixels with e · background >= this are background.

    Returns:
        Boolean array of the leading shape of ``embeddings``.
    """
    squared_norm = np.einsum("...d,...d->...", embeddings, embeddings)
    if background is not None:
        dots = embeddings @ np.asarray(background, dtype=embeddings.dtype)
        return (dots < dot_threshold) & (squared_norm > 0)
    first = embeddings[..., 0]
    return (first * first <= background_threshold * squared_norm) & (squared_norm > 0)


def first_pair_background(tiles: Sequence[np.ndarray]) -> np.ndarray:
    """The background vector of the rule ``first_pair_median`` (MICCAI 2018 code, docs/fidelity.md §9.1).

    The component-wise median of the embeddings of all pixels of the first frame pair (every pixel of every tile,
    all-zero padding excluded), in float64 and not normalised.

    Args:
        tiles: Embedding arrays (2, h, w, D) of the tiles of the first pair.

    Returns:
        float64 array (D,).

    Raises:
        RshnError: If the first pair holds no non-zero embedding.
    """
    values = [tile.reshape(-1, tile.shape[-1]) for tile in tiles]
    values = np.concatenate([v[np.any(v != 0, axis=1)] for v in values]).astype(np.float64)
    if len(values) == 0:
        raise RshnError("postprocessing.background_rule first_pair_median: the first frame pair has no non-zero "
                        "embedding to take the median of")
    return np.median(values, axis=0)


def tile_features(
    embeddings: np.ndarray, mask: np.ndarray, coordinate_factor: float
) -> np.ndarray:
    """Return the clustering features [e, c·y, c·x] of the masked pixels of a tile (docs/fidelity.md §6.2).

    Args:
        embeddings: Array (T, h, w, D).
        mask: Boolean array (T, h, w) of the pixels to take.
        coordinate_factor: Factor c of the tile-local pixel coordinates (row y, column x; no time coordinate).

    Returns:
        Float32 array (N, D + 2), pixels in raster order (t, y, x).
    """
    index = np.flatnonzero(mask)
    features = np.empty((index.size, embeddings.shape[-1] + 2), dtype=np.float32)
    start = 0
    for frame, frame_mask in zip(embeddings, mask):  # 2-D boolean gathers; cheap for views of a bigger array
        stop = start + np.count_nonzero(frame_mask)
        features[start:stop, :-2] = frame[frame_mask]
        start = stop
    plane = _coordinate_grid(*mask.shape[-2:], coordinate_factor).reshape(-1, 2)
    features[:, -2:] = np.take(plane, index % len(plane), axis=0)
    return features


@functools.lru_cache(maxsize=8)
def _coordinate_grid(height: int, width: int, coordinate_factor: float) -> np.ndarray:
    """Read-only float32 (h, w, 2) array of [c·y, c·x] (products in float64, rounded once to float32)."""
    grid = np.empty((height, width, 2), dtype=np.float32)
    grid[..., 0] = coordinate_factor * np.arange(height)[:, None]
    grid[..., 1] = coordinate_factor * np.arange(width)[None, :]
    grid.flags.writeable = False
    return grid


def choose_seeds(num_points: int, num_seeds: int, seed: Optional[int]) -> np.ndarray:
    """Return the indices of the mean-shift seeds: ``num_seeds`` points drawn without replacement.

    Uses ``np.random.default_rng(seed).choice``; all points (in order) when there are at most ``num_seeds``.
    """
    if num_points <= num_seeds:
        return np.arange(num_points)
    return np.random.default_rng(seed).choice(num_points, size=num_seeds, replace=False)


def tile_seed(seed: int, index: int) -> int:
    """Return the seed of tile ``index`` of a frame pair clustered with ``seed`` by :func:`cluster_tiles`.

    Derived with ``np.random.SeedSequence([seed, index])`` so that different (seed, index) pairs give independent
    seed selections.
    """
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


# ----------------------------------------------------------------------------------------------------------------
# Fixed-point arithmetic shared by both mean-shift implementations


@dataclass
class _Points:
    """The points of one mean-shift problem on the fixed-point grid."""

    grid: np.ndarray  # (N, F) float32 integers: the features in units of 1/scale (magnitude < 2**22)
    values: np.ndarray  # (N, F) float64 fixed-point features: grid / scale
    norms: np.ndarray  # (N,) float64, sqrt of the exact squared norms
    scale: float  # 2**b


def _prepare(features: np.ndarray) -> _Points:
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D array (N, F), got shape {features.shape}")
    values = features.astype(np.float32, copy=False)
    largest = float(np.abs(values).max()) if values.size else 1.0
    if not math.isfinite(largest):
        raise ValueError("features contain NaN or infinite values")
    exponent = math.frexp(largest)[1] if largest > 0 else 0  # largest < 2**exponent
    bits = min(_FIXED_POINT_BITS, (52 - math.ceil(math.log2(max(values.shape[1], 1)))) // 2)
    scale = 2.0 ** (bits - exponent)
    if abs(bits - exponent) < 100:  # rounding to <= 22 significant bits is exact in float32, and faster
        grid = np.rint(values * np.float32(scale))
    else:
        grid = np.rint(values.astype(np.float64) * scale).astype(np.float32)
    points = _Points(grid, grid.astype(np.float64) / scale, np.empty(0), scale)
    points.norms = _norms(points.values)
    if np.any(points.norms == 0):
        raise ValueError("features contain all-zero rows; their cosine distance is undefined")
    return points


def _norms(vectors: np.ndarray) -> np.ndarray:
    """Euclidean norms of fixed-point vectors (the squared norms are exact)."""
    return np.sqrt(np.einsum("...f,...f->...", vectors, vectors))


def _quantise(values: np.ndarray, scale: float) -> np.ndarray:
    return np.rint(values * scale) / scale


def _within(dots: np.ndarray, norms_a: np.ndarray, norms_b: np.ndarray, one_minus_h: float) -> np.ndarray:
    """The neighbour decision 1 − cos ≤ h, written identically wherever it is made."""
    return dots >= one_minus_h * (norms_a * norms_b)


def _converged(new: np.ndarray, old: np.ndarray, scale: float, threshold: float) -> np.ndarray:
    """Whether the Euclidean shift between fixed-point means is below ``threshold`` (exact integer arithmetic)."""
    steps = np.rint((new - old) * scale).astype(np.int64)
    return np.einsum("...f,...f->...", steps, steps) < (threshold * scale) ** 2


def _deduplicate(modes: np.ndarray, counts: np.ndarray, one_minus_h: float) -> np.ndarray:
    """Keep modes by decreasing neighbour count (ties: seed order), suppressing modes within h of a kept one."""
    if len(modes) == 0:
        return modes
    order = np.argsort(-np.asarray(counts), kind="stable")
    modes = modes[order]
    norms = _norms(modes)
    close = _within(modes @ modes.T, norms[:, None], norms[None, :], one_minus_h)
    suppressed = np.zeros(len(modes), dtype=bool)
    kept = []
    for index in range(len(modes)):
        if not suppressed[index]:
            kept.append(index)
            suppressed |= close[index]
    return modes[kept]


def _assign(points: _Points, modes: np.ndarray) -> np.ndarray:
    """Index of the nearest mode by cosine distance for every point (ties: the earlier mode); -1 without modes."""
    count = len(points.values)
    if len(modes) == 0:
        return np.full(count, -1, dtype=np.int64)
    mode_norms = _norms(modes)
    labels = np.empty(count, dtype=np.int64)
    for start in range(0, count, _CHUNK_POINTS):
        block = points.values[start:start + _CHUNK_POINTS]
        labels[start:start + len(block)] = np.argmax((block @ modes.T) / mode_norms, axis=1)
    return labels


def _check_arguments(bandwidth: float, max_iterations: int, seed_indices: np.ndarray, count: int) -> None:
    if not 0 < bandwidth < 2:
        raise ValueError(f"bandwidth must be a cosine distance in (0, 2), got {bandwidth}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
    if seed_indices.size and (seed_indices.min() < 0 or seed_indices.max() >= count):
        raise ValueError(f"seed indices must lie in [0, {count}), got {seed_indices.min()}..{seed_indices.max()}")


# ----------------------------------------------------------------------------------------------------------------
# Reference cosine mean shift: one seed at a time


def cosine_mean_shift_reference(
    features: np.ndarray,
    bandwidth: float,
    seed_indices: Sequence[int] | np.ndarray,
    max_iterations: int,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine mean shift with a flat kernel, one seed after the other (docs/fidelity.md §6.3; the readable version).

    For each seed: the neighbours of the current mean are all points within cosine distance ``bandwidth``
    (1 − cos ≤ h over the whole feature vectors); the new mean is their arithmetic mean; the seed stops when the
    Euclidean shift is below ``tolerance · bandwidth`` or after ``max_iterations`` updates, and is dropped if its
    neighbourhood is empty. The modes are then sorted by neighbour count (descending; ties in seed order), modes
    within cosine distance h of a kept mode are suppressed, and every point is assigned to the nearest kept mode.
    Features and means live on a fixed-point grid (see the module docstring).

    Args:
        features: Array (N, F) of non-zero feature vectors.
        bandwidth: h, a cosine distance in (0, 2).
        seed_indices: Indices of the points the iterations start from, in order.
        max_iterations: Maximum number of mean updates per seed (at least 1).
        tolerance: Convergence threshold as a fraction of the bandwidth.

    Returns:
        ``(modes, labels)``: kept modes (K, F) float64 in order of decreasing neighbour count, and the mode index
        (0..K-1) of every point (int64; -1 for all points if no seed survived).
    """
    points = _prepare(features)
    seeds = np.asarray(seed_indices, dtype=np.int64).reshape(-1)
    _check_arguments(bandwidth, max_iterations, seeds, len(points.values))
    one_minus_h = 1.0 - bandwidth
    threshold = tolerance * bandwidth
    modes, counts = [], []
    with single_threaded_blas():
        for seed in seeds:
            mean = points.values[seed]
            count = 0
            for _ in range(max_iterations):
                within = _within(points.values @ mean, points.norms, _norms(mean), one_minus_h)
                count = int(np.count_nonzero(within))
                if count == 0:
                    break
                new_mean = _quantise(points.values[within].sum(axis=0) / count, points.scale)
                converged = bool(_converged(new_mean, mean, points.scale, threshold))
                mean = new_mean
                if converged:
                    break
            if count:
                modes.append(mean)
                counts.append(count)
        kept = _deduplicate(np.array(modes).reshape(len(modes), points.values.shape[1]), np.array(counts), one_minus_h)
        return kept, _assign(points, kept)


# ----------------------------------------------------------------------------------------------------------------
# Fast cosine mean shift


@dataclass
class _Group:
    """The only points that can be neighbours of means near an anchor direction."""

    index: np.ndarray  # (P,) indices of the candidate points
    units: np.ndarray  # (P, F) float32 unit vectors of the candidates
    values: np.ndarray  # (P, F + 1) float64 fixed-point features of the candidates and a column of ones


class _FastMeanShift:
    """State of the vectorised mean shift of one problem (see the module docstring for the scheme).

    Neighbour sums and counts are one float64 matrix product of a 0/1 mask with ``values`` = [features, 1]: every
    feature is an integer multiple of 2^-b below 2^22 · 2^-b in magnitude, so any sum of fewer than 2^31 of them is
    exact in float64, whatever the order of summation.
    """

    def __init__(self, points: _Points, bandwidth: float, tolerance: float):
        self.points = points
        self.one_minus_h = 1.0 - bandwidth
        self.threshold = tolerance * bandwidth
        dims = points.values.shape[1]
        # float32 cosines of float32 unit vectors are off by at most ~(dims + 4) * 2**-24; everything within this
        # margin of the decision is re-checked exactly.
        self.margin = 16.0 * dims * 2.0**-24
        self.units = points.grid * (1.0 / (points.norms * points.scale)).astype(np.float32)[:, None]
        self.values = np.empty((len(points.values), dims + 1))
        self.values[:, :-1] = points.values
        self.values[:, -1] = 1.0
        self.groups: list[Optional[_Group]] = []
        self.anchors = np.zeros((0, dims))  # (G, F) unit anchor directions
        self.valid_cos = np.zeros(0)  # (G,) a mean belongs to group g while cos(mean, anchor g) >= valid_cos[g]

    # -- groups ---------------------------------------------------------------------------------------------

    def _add_groups(self, anchors: np.ndarray, anchor_radius: float) -> None:
        """Append one group per anchor (unit float64 rows) holding all points within reach of it."""
        reach = math.acos(self.one_minus_h) + anchor_radius
        candidate_cos = (math.cos(reach) if reach < math.pi else -1.0) - self.margin
        anchors32 = anchors.astype(np.float32)
        rows_per_block = max(1, _CHUNK_POINTS * 64 // max(len(self.units), 1))
        for first in range(0, len(anchors), rows_per_block):
            for row in anchors32[first:first + rows_per_block] @ self.units.T:
                index = np.flatnonzero(row >= candidate_cos)
                self.groups.append(_Group(index, np.take(self.units, index, axis=0),
                                          np.take(self.values, index, axis=0)))
        self.anchors = np.concatenate([self.anchors, anchors])
        self.valid_cos = np.concatenate([self.valid_cos, np.full(len(anchors), math.cos(anchor_radius) + self.margin)])

    def _find_groups(self, units: np.ndarray, leader_radius: float = _LEADER_RADIUS) -> np.ndarray:
        """Return a group for each unit mean: an existing one it is valid for, else a new one around a leader
        (means within ``leader_radius`` < ``_ANCHOR_RADIUS`` of a leader join its group)."""
        group = np.full(len(units), -1, dtype=np.int64)
        if len(self.anchors):
            cosines = units @ self.anchors.T
            valid = cosines >= self.valid_cos
            best = np.argmax(np.where(valid, cosines, -np.inf), axis=1)
            found = valid[np.arange(len(units)), best]
            group[found] = best[found]
        pending = np.flatnonzero(group < 0)
        if pending.size:
            cosines = units[pending] @ units[pending].T
            leader_of = np.full(pending.size, -1, dtype=np.int64)
            leaders = []
            for position in range(pending.size):
                if leader_of[position] < 0:
                    free = (leader_of < 0) & (cosines[position] >= math.cos(leader_radius))
                    leader_of[free] = len(self.groups) + len(leaders)
                    leader_of[position] = len(self.groups) + len(leaders)
                    leaders.append(pending[position])
            self._add_groups(units[leaders], _ANCHOR_RADIUS)
            group[pending] = leader_of
        return group

    def _release_unused(self, used: np.ndarray) -> None:
        """Free the candidate arrays of groups without members; nothing can join them any more."""
        unused = np.ones(len(self.groups), dtype=bool)
        unused[used] = False
        for index in np.flatnonzero(unused):
            self.groups[index] = None
        self.valid_cos[unused] = np.inf

    # -- one update of all active means -----------------------------------------------------------------------

    def _block_sums(
        self, units: np.ndarray, means: np.ndarray, norms: np.ndarray, index: np.ndarray,
        candidates: np.ndarray, values: np.ndarray,
    ) -> np.ndarray:
        """Neighbour sums and counts (s, F + 1) of ``s`` means over a block of candidate points.

        Args:
            units: (s, F) float32 unit means; ``means`` (s, F) the fixed-point means and ``norms`` (s,) their
                norms, for the exact re-checks.
            index: (P,) indices of the candidate points; ``candidates`` (P, F) their float32 unit vectors and
                ``values`` (P, F + 1) their fixed-point features and ones.
        """
        cosines = units @ candidates.T  # (s, P), within self.margin of the exact cosines
        inside = cosines >= self.one_minus_h + self.margin
        unsure = np.flatnonzero(((cosines > self.one_minus_h - self.margin) ^ inside).any(axis=0))
        if unsure.size:
            rows = index[unsure]
            dots = means @ self.points.values[rows].T  # exact
            inside[:, unsure] = _within(dots, norms[:, None], self.points.norms[rows][None, :], self.one_minus_h)
        return inside.astype(np.float64) @ values

    def _sums(self, means: np.ndarray, blocks: list[tuple[slice, np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
        """Exact neighbour sums and counts (A, F + 1); ``blocks`` are (rows of means, point indices, unit vectors,
        values), each block of points at most ``_CHUNK_POINTS`` long."""
        norms = _norms(means)
        units = (means / norms[:, None]).astype(np.float32)
        sums = np.zeros((len(means), self.values.shape[1]))
        for rows, index, candidates, values in blocks:
            sums[rows] += self._block_sums(units[rows], means[rows], norms[rows], index, candidates, values)
        return sums

    def _group_blocks(self, groups: np.ndarray) -> list:
        """Blocks of each group's candidates for the (sorted) rows of its means."""
        blocks = []
        bounds = np.flatnonzero(np.diff(groups)) + 1
        for start, stop in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(groups)]])):
            group = self.groups[groups[start]]
            for first in range(0, len(group.index), _CHUNK_POINTS):
                part = slice(first, first + _CHUNK_POINTS)
                blocks.append((slice(start, stop), group.index[part], group.units[part], group.values[part]))
        return blocks

    def run(self, seeds: np.ndarray, max_iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Iterate all seeds; return the final means (S, F), neighbour counts (S,) and survival flags (S,).

        The seeds are grouped around anchors first (leaders within ``_SEED_LEADER_RADIUS``); every update of a
        mean only looks at the candidates of its group.
        """
        points = self.points
        means = points.values[seeds].copy()
        counts = np.zeros(len(seeds), dtype=np.int64)
        alive = np.ones(len(seeds), dtype=bool)
        follows = np.arange(len(seeds))  # each seed's representative (seeds with equal means are iterated once)
        group_of = np.full(len(seeds), -1, dtype=np.int64)
        active = self._merge_equal(np.arange(len(seeds)), means, follows)
        group_of[active] = self._find_groups(means[active] / _norms(means[active])[:, None], _SEED_LEADER_RADIUS)
        for _ in range(max_iterations):
            active = active[np.argsort(group_of[active], kind="stable")]
            sums = self._sums(means[active], self._group_blocks(group_of[active]))
            neighbour_counts = sums[:, -1]
            empty = neighbour_counts == 0
            alive[active[empty]] = False
            counts[active] = neighbour_counts.astype(np.int64)
            new_means = _quantise(sums[:, :-1] / np.where(empty, 1.0, neighbour_counts)[:, None], points.scale)
            finished = _converged(new_means, means[active], points.scale, self.threshold) | empty
            means[active[~empty]] = new_means[~empty]
            active = np.sort(active[~finished])
            if active.size == 0:
                break
            active = self._merge_equal(active, means, follows)
            units = means[active] / _norms(means[active])[:, None]
            own = group_of[active]
            moved = np.flatnonzero(np.einsum("af,af->a", units, self.anchors[own]) < self.valid_cos[own])
            if moved.size:
                group_of[active[moved]] = self._find_groups(units[moved])
            self._release_unused(group_of[active])
        return means[follows], counts[follows], alive[follows]

    @staticmethod
    def _merge_equal(active: np.ndarray, means: np.ndarray, follows: np.ndarray) -> np.ndarray:
        """Let seeds whose means are bit-identical follow the first of them; return the remaining active seeds."""
        rows = np.ascontiguousarray(means[active])
        keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        leaders = active[first[inverse.ravel()]]
        if np.any(leaders != active):
            mapping = np.arange(len(follows))
            mapping[active] = leaders
            follows[:] = mapping[follows]
        return np.sort(active[first])


def cosine_mean_shift(
    features: np.ndarray,
    bandwidth: float,
    seed_indices: Sequence[int] | np.ndarray,
    max_iterations: int,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine mean shift with a flat kernel, vectorised; same results as :func:`cosine_mean_shift_reference`.

    Args:
        features: Array (N, F) of non-zero feature vectors (float32 is enough).
        bandwidth: h, a cosine distance in (0, 2).
        seed_indices: Indices of the points the iterations start from, in order.
        max_iterations: Maximum number of mean updates per seed (at least 1).
        tolerance: Convergence threshold as a fraction of the bandwidth.

    Returns:
        ``(modes, labels)`` exactly as :func:`cosine_mean_shift_reference`.
    """
    points = _prepare(features)
    seeds = np.asarray(seed_indices, dtype=np.int64).reshape(-1)
    _check_arguments(bandwidth, max_iterations, seeds, len(points.values))
    if seeds.size == 0:
        modes = np.zeros((0, points.values.shape[1]))
        return modes, _assign(points, modes)
    with single_threaded_blas():
        means, counts, alive = _FastMeanShift(points, bandwidth, tolerance).run(seeds, max_iterations)
        kept = _deduplicate(means[alive], counts[alive], 1.0 - bandwidth)
        return kept, _assign(points, kept)


# ----------------------------------------------------------------------------------------------------------------
# HDBSCAN and connected components


def hdbscan_clusters(features: np.ndarray, min_cluster_size: int, workers: int = 1) -> np.ndarray:
    """HDBSCAN clusters of the features as in the preliminary work (docs/fidelity.md §6.5); -1 marks noise.

    The labels of ``hdbscan.HDBSCAN(min_cluster_size=m, min_samples=m, metric="euclidean",
    algorithm="boruvka_kdtree", leaf_size=25)``, computed by :func:`rshn_tf.fast_hdbscan.hdbscan_labels` (exact
    core distances by block products, then the library's own tree code; see that module for why the labels are
    identical). Fewer than m points are all noise.

    Args:
        features: Array (N, F).
        min_cluster_size: m.
        workers: Threads of the core-distance search.
    """
    from rshn_tf.fast_hdbscan import hdbscan_labels

    if len(features) <= 1 or len(features) < min_cluster_size:
        return np.full(len(features), -1, dtype=np.int64)
    return hdbscan_labels(features, min_cluster_size, workers=workers)


def split_components(clusters: np.ndarray, min_size: int) -> np.ndarray:
    """Split every cluster into connected components and drop small ones (docs/fidelity.md §6.4).

    Connectivity is 3-D connectivity 2 (18-neighbourhood) in (t, y, x) over the whole stack; a component is
    removed when its voxel count over all frames is below ``min_size``.

    Args:
        clusters: Integer array (T, h, w): 0 background, 1..K clusters.
        min_size: t_size.

    Returns:
        int32 labels of the same shape: 0 background, components 1..M in a deterministic order (connected
        foreground blobs in raster order of their first voxel; blobs holding several clusters after them).
    """
    structure = ndimage.generate_binary_structure(clusters.ndim, 2)
    blobs, count = ndimage.label(clusters > 0, structure=structure)
    if count == 0:
        return np.zeros(clusters.shape, dtype=np.int32)
    # Which clusters occur in which foreground blob; only blobs with several clusters need splitting.
    width = int(clusters.max()) + 1
    occurs = np.zeros((count + 1) * width, dtype=bool)
    foreground = blobs > 0
    occurs[blobs[foreground].astype(np.int64) * width + clusters[foreground]] = True
    occurs = occurs.reshape(count + 1, width)
    mixed = np.flatnonzero(occurs.sum(axis=1) > 1)
    total = count
    if mixed.size:
        boxes = ndimage.find_objects(blobs)
        for blob in mixed:
            box = boxes[blob - 1]
            inside = blobs[box] == blob
            part_clusters = clusters[box]
            part_blobs = blobs[box]
            for cluster in np.flatnonzero(occurs[blob]):
                members = inside & (part_clusters == cluster)
                labels, found = ndimage.label(members, structure=structure)
                part_blobs[members] = labels[members] + total
                total += found
    sizes = np.bincount(blobs.ravel(), minlength=total + 1)
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    relabel = np.zeros(total + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, np.count_nonzero(keep) + 1, dtype=np.int32)
    return relabel[blobs]


# ----------------------------------------------------------------------------------------------------------------
# Public entry points


def _check_config(config: PostprocessingConfig) -> None:
    problems = [
        (config.clustering in ("mean_shift", "hdbscan"), "clustering", "'mean_shift' or 'hdbscan'"),
        (0.0 < config.bandwidth < 2.0, "bandwidth", "in (0, 2) (a cosine distance)"),
        (config.num_seeds >= 1, "num_seeds", "at least 1"),
        (config.max_iterations >= 1, "max_iterations", "at least 1"),
        (config.convergence_tolerance >= 0, "convergence_tolerance", "non-negative"),
        (config.hdbscan_min_cluster_size >= 2, "hdbscan_min_cluster_size", "at least 2"),
    ]
    for ok, key, requirement in problems:
        if not ok:
            raise RshnError(f"postprocessing.{key} must be {requirement}, got {getattr(config, key)!r}")


def cluster_tile(
    embeddings: np.ndarray, config: PostprocessingConfig, seed: Optional[int] = None, workers: int = 1,
    background: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Cluster the embeddings of one 2-frame tile into instance labels (§2.3; docs/fidelity.md §6).

    Args:
        embeddings: Float array (2, h, w, D) of per-pixel L2-normalised embeddings of frames t and t+1 at network
            resolution; all-zero embeddings mark padding.
        config: The ``postprocessing`` section (clustering method, background threshold, h, c, seeds,
            iterations, tolerance, t_size, HDBSCAN parameters).
        seed: Seed of the mean-shift seed selection; ``None`` uses ``config.seed``.
        workers: Threads HDBSCAN may use inside the tile (the result does not depend on it).
        background: Background vector of the rule ``first_pair_median`` (:func:`first_pair_background`); None:
            the fixed e_b and ``config.background_threshold`` (§2.3).

    Returns:
        int32 labels (2, h, w): 0 background, 1..K instances (consecutive).

    Raises:
        RshnError: On invalid postprocessing settings.
        ValueError: If ``embeddings`` is not a (T, h, w, D) array.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 4:
        raise ValueError(f"embeddings must have shape (2, h, w, D), got {embeddings.shape}")
    _check_config(config)
    mask = foreground_mask(embeddings, config.background_threshold, background, config.background_dot_threshold)
    clusters = np.zeros(mask.shape, dtype=np.int32)
    if not mask.any():
        return clusters
    if config.clustering == "hdbscan":
        features = tile_features(embeddings, mask, config.hdbscan_coordinate_factor)
        labels = hdbscan_clusters(features, config.hdbscan_min_cluster_size, workers)
    else:
        features = tile_features(embeddings, mask, config.coordinate_factor)
        seeds = choose_seeds(len(features), config.num_seeds, config.seed if seed is None else seed)
        _, labels = cosine_mean_shift(
            features, config.bandwidth, seeds, config.max_iterations, config.convergence_tolerance
        )
    clusters[mask] = labels + 1  # noise / unassigned (-1) becomes background
    return split_components(clusters, config.min_size)


def cluster_tiles(
    tiles: Sequence[np.ndarray],
    config: PostprocessingConfig,
    seed: Optional[int] = None,
    workers: Optional[int] = None,
    background: Optional[np.ndarray] = None,
) -> list[np.ndarray]:
    """Cluster all tiles of one frame pair; equal to ``cluster_tile`` on each tile with seed ``tile_seed``.

    Tile ``i`` uses the seed ``tile_seed(s, i)`` with ``s = seed`` (``config.seed`` if ``None``), so
    ``cluster_tiles(tiles, config, s)[i] == cluster_tile(tiles[i], config, tile_seed(s, i))``.

    Args:
        tiles: Embedding arrays (2, h, w, D) of the tiles.
        config: The ``postprocessing`` section.
        seed: Base seed of the frame pair.
        workers: Threads clustering tiles in parallel (BLAS uses one thread meanwhile); ``None`` uses the
            available cores, at most 2.
        background: Background vector of the rule ``first_pair_median``, or None (see :func:`cluster_tile`).

    Returns:
        One int32 label array (2, h, w) per tile.
    """
    base = config.seed if seed is None else seed
    seeds = [tile_seed(base, index) for index in range(len(tiles))]
    if workers is None:
        workers = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    inner = max(1, workers // max(len(tiles), 1))  # cores left over by the tiles (HDBSCAN uses them)
    workers = max(1, min(workers, len(tiles)))
    with single_threaded_blas():
        if workers == 1:
            return [cluster_tile(tile, config, s, inner, background) for tile, s in zip(tiles, seeds)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda item: cluster_tile(item[0], config, item[1], inner, background),
                                 zip(tiles, seeds)))
