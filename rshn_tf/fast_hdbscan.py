"""HDBSCAN of the preliminary work (paper §5.3, Table 3; docs/fidelity.md §6.5) with the labels of ``hdbscan.HDBSCAN``,
faster.

The reference is ``hdbscan.HDBSCAN(min_cluster_size=m, min_samples=m, metric="euclidean",
algorithm="boruvka_kdtree", leaf_size=25, core_dist_n_jobs=1).fit_predict(X)`` (:func:`reference_labels`). Almost
all of its time goes into the core distances: a k-d-tree query of the m + 1 nearest neighbours of every point, which
for m = 1000 and 18-d features of a DIC-C2DH-HeLa tile (60k–90k points) takes many seconds. :func:`hdbscan_labels`
computes the same numbers with blocked matrix products and hands them to the library's own dual-tree Borůvka
(:class:`hdbscan._hdbscan_boruvka.KDTreeBoruvkaAlgorithm`), single-linkage labelling and cluster selection, called
with the arguments the reference passes.

Why the labels are identical. The Borůvka object reads exactly two things from the k-nearest-neighbour query of its
core-distance tree (``_compute_bounds`` of hdbscan 0.8): column ``min_samples`` of the distances (the core
distances, squared there into "reduced" distances), and, for the first Borůvka round, per point ``n`` the first
neighbour ``m`` in the sorted neighbour list with ``core(m) <= core(n)`` (``n`` itself skipped). Everything after
that (the spanning tree, its sorting, the single-linkage tree, condensing, stability, selection) runs unchanged in
the library on the same array. So the labels are identical when both are reproduced bit for bit:

* Core distances. scikit-learn's k-d tree computes the reduced distance of two points as the float64 sum
  ``Σ_j (x_j − y_j)²`` in dimension order and returns ``sqrt`` of its ``min_samples``-th smallest value (0-based,
  the point itself included). Here float32 matrix products on coordinates centred per block give approximations
  within a proven bound ε of the true values (:func:`_error_bound`); every value whose approximation lies within 2ε
  of the approximate ``min_samples``-th is recomputed with the very same float64 sum (:func:`exact_reduced`), and the
  order statistic is taken among these exact values. Candidate blocks are pruned with box distances and an upper
  bound of the order statistic, both with a safety margin, so no neighbour is ever missed.
* The first-round neighbour. It is the nearest (exact reduced distance) point ``m != n`` with
  ``core(m) <= core(n)`` among the ``min_samples + 1`` nearest, found among the exactly recomputed ``J`` nearest
  points of the same pass (or, when none of them qualifies, among all candidates of ``n``).
* Floating-point ties. Where the library's choice depends on how scikit-learn orders equal distances — two
  qualifying neighbours at the same minimal distance, or the qualifying neighbour exactly at the ``min_samples``-th
  distance when several points share it — the result cannot be reproduced without the library's traversal order.
  These cases are detected exactly, and the whole point set is then clustered by :func:`reference_labels` itself.
  With real-valued embeddings (noise in every component) such ties do not occur in practice; points on a grid with
  identical embeddings produce them.

The single-linkage labelling of the sorted spanning tree (:func:`single_linkage`) gives the very array of the
library's ``label``: that function is sequential union-find, and the library's version indexes its parent array
as a Python object, which makes it ~10x slower than the same loop on Python lists here (0.7–1.0 s against <0.1 s
for 60k–90k points). The library's Borůvka and cluster selection take the same time as in the reference (~1 s CPU
for 60k points of a DIC-C2DH-HeLa tile), which bounds the attainable speed-up.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from rshn_tf.blas_threads import single_threaded_blas  # small products: one BLAS thread each
from rshn_tf.extras import importing

#: What needs the ``hdbscan`` package, in the message when it is missing.
FEATURE = "HDBSCAN clustering (postprocessing.clustering: hdbscan)"

__all__ = ["hdbscan_labels", "reference_labels", "core_distances", "exact_reduced", "single_linkage", "HdbscanTies"]

#: Leaf size of the blocks of the core-distance search (speed only).
_BLOCK_POINTS = 256
#: The first candidate blocks of a query block hold at least this many times ``min_samples + 1`` points (speed only).
_FIRST_BLOCKS_FACTOR = 1.5
#: Nearest points per point kept for the first-round neighbour (speed only).
_NEAREST_KEPT = 8
#: Unit round-off of float32.
_U32 = 2.0 ** -24
#: Leaf size of the reference's core-distance tree (docs/fidelity.md §6.5); the Borůvka tree uses a third of it.
REFERENCE_LEAF_SIZE = 25


class HdbscanTies(Exception):
    """Raised inside :func:`core_distances` when equal distances make the library's neighbour order matter."""


def reference_labels(features: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """The plain library call of the preliminary work: ``hdbscan.HDBSCAN(...).fit_predict`` (docs/fidelity.md §6.5).

    ``min_cluster_size = min_samples = m``, Euclidean metric, Borůvka k-d tree, leaf size 25, one core-distance job.

    Returns:
        int64 labels, -1 for noise.
    """
    with importing("hdbscan", FEATURE):
        import hdbscan

    model = hdbscan.HDBSCAN(
        min_cluster_size=min_cluster_size,
        min_samples=min_cluster_size,
        metric="euclidean",
        algorithm="boruvka_kdtree",
        leaf_size=REFERENCE_LEAF_SIZE,
        core_dist_n_jobs=1,
    )
    return model.fit_predict(np.asarray(features, dtype=np.float64)).astype(np.int64)


def exact_reduced(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reduced Euclidean distances of row pairs exactly as scikit-learn's k-d tree and hdbscan compute them.

    The float64 sum ``Σ_j (a_j − b_j)²`` accumulated in dimension order (``euclidean_rdist`` of both libraries);
    every operation is a single IEEE-754 rounding, so the results are bit-identical to theirs.

    Args:
        a: float64 array (P, F).
        b: float64 array (P, F).

    Returns:
        float64 array (P,).
    """
    total = np.zeros(len(a))
    for j in range(a.shape[1]):
        step = a[:, j] - b[:, j]
        total += step * step
    return total


def _exact_pairs(columns: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """:func:`exact_reduced` of the point pairs (first[i], second[i]); ``columns`` is the (F, N) transposed points."""
    total = np.zeros(len(first))
    for column in columns:
        step = column[first] - column[second]
        total += step * step
    return total


def _error_bound(features: int, norm_a: float, norm_b: float) -> float:
    """Bound of |approximation − exact reduced distance| of the float32 block products.

    The products ``[a, |a|², 1] · [−2b, 1, |b|²]`` of centred coordinates rounded to float32: rounding the inputs
    changes the squared distance by at most 2u(|a| + |b|)² (u = 2⁻²⁴) and evaluating it (norms, dot product of
    F + 2 terms, any summation order) by at most γ_{F+4}(|a| + |b|)²; the exact float64 sums and the centring in
    float64 differ from the true values by less than 2⁻⁴⁰ of that scale. Twice the sum is used.
    """
    scale = (norm_a + norm_b) ** 2
    return 2.0 * ((features + 8) * _U32 * scale + 2.0 ** -40 * (1.0 + scale))


def _leaves(points: np.ndarray, size: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Sliding-midpoint k-d partition of ``points`` into leaves of at most ``size`` points (or identical points).

    Returns:
        ``(members, low, high)``: index arrays of the leaves and their bounding boxes (L, F).
    """
    stack = [np.arange(len(points))]
    members, lows, highs = [], [], []
    while stack:
        index = stack.pop()
        block = points[index]
        low, high = block.min(axis=0), block.max(axis=0)
        if len(index) <= size or np.array_equal(low, high):
            members.append(index)
            lows.append(low)
            highs.append(high)
            continue
        dim = int(np.argmax(high - low))
        left = block[:, dim] <= 0.5 * (low[dim] + high[dim])
        if left.all():  # the midpoint rounded up to the maximum
            left = block[:, dim] < high[dim]
        stack.append(index[~left])
        stack.append(index[left])
    return members, np.array(lows), np.array(highs)


@dataclass
class _Partial:
    """Results of the core-distance pass over some query leaves (global point indices)."""

    core_points: list = field(default_factory=list)  # points whose order statistic is one known pair
    core_others: list = field(default_factory=list)
    band_points: list = field(default_factory=list)  # points needing a sort of a band of exact values
    band_others: list = field(default_factory=list)
    band_below: list = field(default_factory=list)  # per band pair: points strictly below the band (of its point)
    near_points: list = field(default_factory=list)  # the J nearest (a superset) of every point
    near_others: list = field(default_factory=list)
    near_radius: list = field(default_factory=list)  # (points, r): every point with exact value <= r is near
    candidates: dict = field(default_factory=dict)  # leaf -> candidate point indices


class _CoreSearch:
    """Exact order statistics of the reduced distances (see the module docstring)."""

    def __init__(self, points: np.ndarray, rank: int):
        self.points = points
        self.rank = rank
        self.kept = min(_NEAREST_KEPT, rank)
        self.members, self.low, self.high = _leaves(points, _BLOCK_POINTS)
        gap = np.maximum(0.0, np.maximum(self.low[None] - self.high[:, None], self.low[:, None] - self.high[None]))
        self.box_distance = np.einsum("qrf,qrf->qr", gap, gap)
        self.sizes = np.array([len(m) for m in self.members])

    def _block(self, leaves: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        index = np.concatenate([self.members[r] for r in leaves])
        centred = self.points[index] - centre
        features = centred.shape[1]
        right = np.empty((features + 2, len(index)), dtype=np.float32)
        right[:features] = -2.0 * centred.T
        right[features] = 1.0
        right[features + 1] = np.einsum("ij,ij->i", centred, centred)
        return index, right, math.sqrt(float(right[features + 1].max()))

    def run(self, leaves: range) -> _Partial:
        """Process the query leaves ``leaves``."""
        out = _Partial()
        rank, count = self.rank, len(self.points)
        features = self.points.shape[1]
        for q in leaves:
            query = self.members[q]
            centre = 0.5 * (self.low[q] + self.high[q])
            order = np.argsort(self.box_distance[q], kind="stable")
            first = min(int(np.searchsorted(np.cumsum(self.sizes[order]), _FIRST_BLOCKS_FACTOR * (rank + 1))) + 1,
                        len(order))
            centred = self.points[query] - centre
            left = np.empty((len(query), features + 2), dtype=np.float32)
            left[:, :features] = centred
            left[:, features] = np.einsum("ij,ij->i", centred, centred)
            left[:, features + 1] = 1.0
            norm_a = math.sqrt(float(left[:, features].max()))
            used = order[:first]
            index, right, norm_b = self._block(used, centre)
            approx = left @ right
            if len(index) < count:
                bound = float(np.partition(approx, rank, axis=1)[:, rank].max())
                bound += _error_bound(features, norm_a, norm_b)
                rest = order[first:]
                more = rest[self.box_distance[q, rest] * (1.0 - 1e-9) <= bound]
                if more.size:
                    extra, right_more, norm_more = self._block(more, centre)
                    grown = np.empty((len(query), len(index) + len(extra)), dtype=np.float32)
                    grown[:, :len(index)] = approx
                    np.matmul(left, right_more, out=grown[:, len(index):])
                    index, approx, used = np.concatenate([index, extra]), grown, np.concatenate([used, more])
                    norm_b = max(norm_b, norm_more)
            out.candidates[q] = index
            # the columns are grouped by leaf in increasing box distance: prefixes hold every point within a radius
            column_box = np.repeat(self.box_distance[q, used], self.sizes[used])
            self._select(query, index, approx, column_box, norm_a, norm_b, out)
        return out

    def _select(self, query: np.ndarray, index: np.ndarray, approx: np.ndarray, column_box: np.ndarray,
                norm_a: float, norm_b: float, out: _Partial) -> None:
        """Record the pairs that decide the order statistic and the nearest points of every query point.

        Error bound: a column farther than ``reach = |a|max + sqrt(kth_max + 0.01) + 0.1`` from the centre is
        farther than sqrt(kth_max + 0.01) + 0.1 from every query point, so (as long as its own, larger error bound
        is below 0.01) its approximation lies above every band; the columns within ``reach`` have the error bound
        of norms |a|max and ``reach``.
        """
        rank, kept, features = self.rank, self.kept, self.points.shape[1]
        ordered = np.partition(approx, rank, axis=1)
        kth = ordered[:, rank]
        reach = norm_a + math.sqrt(max(float(kth.max()), 0.0) + 0.01) + 0.1
        epsilon = _error_bound(features, norm_a, min(norm_b, reach))
        if _error_bound(features, norm_a, norm_b) > 0.01 or epsilon > 0.001:
            epsilon = _error_bound(features, norm_a, norm_b)
        margin = np.float32(2.0 * epsilon)
        low, high = (kth - margin)[:, None], (kth + margin)[:, None]
        below = np.count_nonzero(ordered[:, :rank] < low, axis=1)
        band = (rank - below) + 1 + np.count_nonzero(ordered[:, rank + 1:] <= high, axis=1)
        single = np.flatnonzero(band == 1)
        column = np.argmax(approx[single] == kth[single, None], axis=1)
        out.core_points.append(query[single])
        out.core_others.append(index[column])
        several = np.flatnonzero(band != 1)
        if several.size:
            part = approx[several]
            rows, columns = np.nonzero((part >= low[several]) & (part <= high[several]))
            out.band_points.append(query[several[rows]])
            out.band_others.append(index[columns])
            out.band_below.append(below[several[rows]])
        # the ``kept`` nearest: search the columns of the leaves that can hold points within the largest radius
        start = min(len(index), max(4 * kept, int(np.searchsorted(column_box, 0.0, side="right"))))
        nearest = np.partition(approx[:, :start], kept - 1, axis=1)[:, kept - 1]
        radius = nearest + margin
        reach = float(radius.max()) + epsilon
        stop = int(np.searchsorted(column_box * (1.0 - 1e-9), reach, side="right"))
        rows, columns = np.nonzero(approx[:, :max(stop, start)] <= radius[:, None])
        out.near_points.append(query[rows])
        out.near_others.append(index[columns])
        out.near_radius.append((query, radius.astype(np.float64) - epsilon))


def _merge(parts: list[_Partial]) -> _Partial:
    merged = _Partial()
    for part in parts:
        for name in ("core_points", "core_others", "band_points", "band_others", "band_below", "near_points",
                     "near_others", "near_radius"):
            getattr(merged, name).extend(getattr(part, name))
        merged.candidates.update(part.candidates)
    return merged


def _concat(arrays: list, dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype=dtype)


def core_distances(points: np.ndarray, min_samples: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Core distances and first-round neighbours exactly as hdbscan's Borůvka k-d tree obtains them.

    Args:
        points: C-contiguous float64 array (N, F) of finite values, N > ``min_samples`` ≥ 1.
        min_samples: The core distance is the distance to the ``min_samples``-th nearest other point (the
            ``min_samples + 1``-th with the point itself).
        workers: Threads over the query blocks.

    Returns:
        ``(core, first)``: float64 core distances (N,) and, per point n, the first-round neighbour of the
        library's ``_compute_bounds`` (the nearest m != n among the ``min_samples + 1`` nearest with
        core(m)² <= core(n)²), or n itself when there is none.

    Raises:
        HdbscanTies: When equal distances make the library's result depend on its traversal order.
    """
    count = len(points)
    rank = min_samples
    search = _CoreSearch(points, rank)
    leaves = len(search.members)
    if workers > 1 and leaves > 1:
        chunks = [range(i, leaves, workers) for i in range(workers)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            found = _merge(list(pool.map(search.run, chunks)))
    else:
        found = search.run(range(leaves))

    reduced = np.full(count, np.nan)
    tied_boundary = np.zeros(count, dtype=bool)
    core_points = _concat(found.core_points, np.int64)
    columns = np.ascontiguousarray(points.T)
    reduced[core_points] = _exact_pairs(columns, core_points, _concat(found.core_others, np.int64))
    band_points = _concat(found.band_points, np.int64)
    if band_points.size:
        values = _exact_pairs(columns, band_points, _concat(found.band_others, np.int64))
        below = _concat(found.band_below, np.int64)
        order = np.lexsort((values, band_points))
        band_points, values, below = band_points[order], values[order], below[order]
        starts = np.flatnonzero(np.r_[True, band_points[1:] != band_points[:-1]])
        owners = band_points[starts]
        picked = values[starts + (rank - below[starts])]
        reduced[owners] = picked
        at_or_below = np.add.reduceat((values <= np.repeat(picked, np.diff(np.r_[starts, len(values)]))).astype(
            np.int64), starts) + below[starts]
        tied_boundary[owners] = at_or_below > rank + 1
    if np.isnan(reduced).any():  # pragma: no cover - every point is a query point of exactly one leaf
        raise AssertionError("core distance search left points without a value")
    core = np.sqrt(reduced)
    core_reduced = core * core  # the library compares these (``_dist_to_rdist`` of the core distances)
    first = _first_neighbours(points, columns, found, reduced, core_reduced, tied_boundary, search)
    return core, first


def _first_neighbours(points: np.ndarray, columns: np.ndarray, found: _Partial, reduced: np.ndarray, core_reduced: np.ndarray,
                      tied_boundary: np.ndarray, search: _CoreSearch) -> np.ndarray:
    """The first-round neighbour of every point (itself when none); see :func:`core_distances`."""
    count = len(points)
    first = np.arange(count, dtype=np.intp)
    radius = np.empty(count)
    for query, values in found.near_radius:
        radius[query] = values
    owner = _concat(found.near_points, np.int64)
    other = _concat(found.near_others, np.int64)
    values = _exact_pairs(columns, owner, other)
    qualifies = (other != owner) & (core_reduced[other] <= core_reduced[owner]) & (values <= reduced[owner])
    owner, other, values = owner[qualifies], other[qualifies], values[qualifies]
    best = np.full(count, np.inf)
    if owner.size:  # the pairs of one point are contiguous (row-major order of the search)
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        best[owner[starts]] = np.minimum.reduceat(values, starts)
    found_all = best <= radius  # every point within the ball radius is in the ball: the minimum is global
    unresolved = np.flatnonzero(~found_all & (reduced > radius))  # the ball does not cover all neighbours
    settled = np.isfinite(best) & found_all
    winners = settled[owner] & (values == best[owner])
    hits = np.bincount(owner[winners], minlength=count)
    if np.any(hits > 1):
        raise HdbscanTies("two qualifying neighbours at the same distance")
    first[owner[winners]] = other[winners]
    if np.any(settled & (best == reduced) & tied_boundary):
        raise HdbscanTies("the first-round neighbour lies on a tied neighbour-list boundary")
    leaf_of = np.empty(count, dtype=np.int64)
    for leaf, members in enumerate(search.members):
        leaf_of[members] = leaf
    for n in unresolved:
        index = found.candidates[leaf_of[n]]
        exact = _exact_pairs(columns, np.full(len(index), n), index)
        ok = (index != n) & (core_reduced[index] <= core_reduced[n]) & (exact <= reduced[n])
        if not ok.any():
            continue
        smallest = exact[ok].min()
        winners = index[ok][exact[ok] == smallest]
        if len(winners) > 1 or (smallest == reduced[n] and tied_boundary[n]):
            raise HdbscanTies("two qualifying neighbours at the same distance")
        first[n] = winners[0]
    return first


def single_linkage(spanning_tree: np.ndarray) -> np.ndarray:
    """The single-linkage tree of a spanning tree sorted by weight, equal to ``hdbscan._hdbscan_linkage.label``.

    Union-find over the edges in their order: edge i joins the clusters holding its two points, which are named by
    their root (points 0 … N-1, the cluster made by edge j is N + j), and the row records both roots, the weight
    and the size of the union. The roots do not depend on path compression, so the rows are those of the library.

    Args:
        spanning_tree: Array (N - 1, 3) of rows (point, point, weight), sorted by weight.

    Returns:
        float64 array (N - 1, 4): (root of the first point, root of the second, weight, size of the union).
    """
    edges = len(spanning_tree)
    count = edges + 1
    firsts = spanning_tree[:, 0].astype(np.intp).tolist()
    seconds = spanning_tree[:, 1].astype(np.intp).tolist()
    parent = [-1] * (2 * count - 1)
    size = [1] * count + [0] * edges
    roots = [0] * (2 * edges)
    for index in range(edges):
        for side, point in enumerate((firsts[index], seconds[index])):
            root = point
            while parent[root] != -1:
                root = parent[root]
            while point != root and parent[point] != root:  # compress the path to the root
                parent[point], point = root, parent[point]
            roots[2 * index + side] = root
        first, second = roots[2 * index], roots[2 * index + 1]
        union = count + index
        size[union] = size[first] + size[second]
        parent[first] = parent[second] = union
    result = np.empty((edges, 4))
    result[:, :2] = np.array(roots, dtype=np.float64).reshape(edges, 2)
    result[:, 2] = spanning_tree[:, 2]
    result[:, 3] = size[count:]  # the size of each union, in edge order
    return result


class _PrecomputedNeighbours:
    """Stands in for the core-distance tree of ``KDTreeBoruvkaAlgorithm``: ``.data`` and the one ``query`` it makes.

    The query answers with (N, k) arrays (read-only broadcasts) whose column ``k − 1`` holds the core distances and
    whose every column of row n holds the first-round neighbour of n (or n): the two things the algorithm reads.
    """

    def __init__(self, data: np.ndarray, core: np.ndarray, first: np.ndarray):
        self.data = data
        self._core = core
        self._first = first

    def query(self, data, k: int, dualtree: bool = True, breadth_first: bool = True):
        if np.shape(data)[0] != len(self._core):
            raise ValueError("the Borůvka algorithm queried other points than the precomputed ones")
        stride = np.lib.stride_tricks.as_strided
        distances = stride(self._core, shape=(len(self._core), k), strides=(self._core.strides[0], 0))
        neighbours = stride(self._first, shape=(len(self._first), k), strides=(self._first.strides[0], 0))
        return distances, neighbours


def hdbscan_labels(features: np.ndarray, min_cluster_size: int, workers: int = 1,
                   stats: Optional[dict] = None) -> np.ndarray:
    """HDBSCAN labels identical to :func:`reference_labels`, with exact core distances by block products.

    Args:
        features: Array (N, F) of finite feature vectors.
        min_cluster_size: m = min_cluster_size = min_samples.
        workers: Threads of the core-distance search (the library's tree code is single-threaded).
        stats: If given, receives ``{"fallback": bool}`` (True when ties sent the points to the reference).

    Returns:
        int64 labels, -1 for noise, equal to ``reference_labels(features, min_cluster_size)``.
    """
    with importing("hdbscan", FEATURE):
        from hdbscan._hdbscan_boruvka import KDTreeBoruvkaAlgorithm
        from hdbscan.hdbscan_ import _tree_to_labels

    points = np.ascontiguousarray(features, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"features must be a 2-D array (N, F), got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("features contain NaN or infinite values")
    count = len(points)
    min_samples = max(min(count - 1, min_cluster_size), 1)  # as hdbscan.hdbscan() clips it
    if stats is not None:
        stats["fallback"] = False
    if count <= 1:
        return reference_labels(points, min_cluster_size)

    try:
        with single_threaded_blas():
            core, first = core_distances(points, min_samples, workers)
    except HdbscanTies:
        if stats is not None:
            stats["fallback"] = True
        return reference_labels(points, min_cluster_size)
    algorithm = KDTreeBoruvkaAlgorithm(
        _PrecomputedNeighbours(points, core, first), min_samples, metric="euclidean",
        leaf_size=REFERENCE_LEAF_SIZE // 3, approx_min_span_tree=True, n_jobs=1,
    )
    spanning_tree = algorithm.spanning_tree()
    spanning_tree = spanning_tree[np.argsort(spanning_tree.T[2]), :]
    labels = _tree_to_labels(
        points, single_linkage(spanning_tree), min_cluster_size, cluster_selection_method="eom",
        allow_single_cluster=False, match_reference_implementation=False, cluster_selection_epsilon=0.0,
        cluster_selection_persistence=0.0, max_cluster_size=0, cluster_selection_epsilon_max=float("inf"),
    )[0]
    return labels.astype(np.int64)
