"""Shared small synthetic cases for the post-processing tests (tiling, tracking, writing, ``rshn postprocess``).

Each :class:`Case` is a tiny video of instance labels as a perfect clustering would see them (``observed``), the
final labels the post-processing must produce (``expected``) and the expected lineage (``tracks``, ``L B E P``).
Expected values are written down by construction here, not computed by the code under test. Ids of the result are
arbitrary, so tests compare :func:`canonical` forms (ids renumbered by first frame, then first pixel).

All cases share the frame size :data:`SHAPE` (64 × 96): with 64-px tiles and an overlap of 32 it is covered by two
tiles (x offsets 0 and 32), so the instance-across-a-tile-border case is meaningful end to end.

The embedding builders of the clustering tests (end of the file) produce oracle-like network outputs: every
instance has one unit direction, background lies along e_b = (1, 0, …, 0), optionally plus Gaussian noise, and every
pixel is L2-normalised.

Training-data cases (moving disks, painted frames, in-memory training videos) import ``data_io.sampling`` only
when called, so this module stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

SHAPE = (64, 96)
TILE = (64, 64)
OVERLAP = 32


@dataclass
class Case:
    """One catalogue case.

    Attributes:
        name: Short identifier (used as pytest id).
        observed: (T, H, W) int32 instance labels per frame as a clustering of the frame pairs would give them
            (labels of one instance agree across the two frames of a pair).
        expected: (T, H, W) int32 final labels after tracking and finalisation.
        tracks: (N, 4) expected ``L B E P`` rows, ids as in ``expected``.
        border_band: ``data.border_band`` used by the case.
        note: What the case checks.
    """

    name: str
    observed: np.ndarray
    expected: np.ndarray
    tracks: np.ndarray
    border_band: int = 0
    note: str = ""
    tracking: dict = field(default_factory=dict)


def disk_mask(shape: tuple[int, int], cy: float, cx: float, radius: float) -> np.ndarray:
    """Boolean disk (y − cy)² + (x − cx)² ≤ radius² on a grid of ``shape`` (clipped at the image edge)."""
    y, x = np.ogrid[:shape[0], :shape[1]]
    return (y - cy) ** 2 + (x - cx) ** 2 <= radius ** 2


def paint_disk(video: np.ndarray, t: int, label: int, cy: float, cx: float, radius: float) -> None:
    """Draw a disk of ``label`` into frame ``t`` of ``video`` (in place)."""
    video[t][disk_mask(video.shape[1:], cy, cx, radius)] = label


def _tracks(*rows: tuple[int, int, int, int]) -> np.ndarray:
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def one_cell() -> Case:
    v = np.zeros((5,) + SHAPE, np.int32)
    for t in range(5):
        paint_disk(v, t, 1, 30, 20 + 2 * t, 7)
    return Case("one_cell", v, v.copy(), _tracks((1, 0, 4, 0)), note="a single moving cell is one track")


def two_touching() -> Case:
    v = np.zeros((6,) + SHAPE, np.int32)
    for t in range(6):
        v[t, 20:40, 30 + t:45 + t] = 1
        v[t, 20:40, 45 + t:60 + t] = 2  # shares a border with cell 1
    return Case("two_touching", v, v.copy(), _tracks((1, 0, 5, 0), (2, 0, 5, 0)),
                note="touching cells stay separate tracks")


def division() -> Case:
    """Mother 1 in frames 0–11 (longer than t_merge, so the false-split repair cannot fire), daughters 2, 3 from 12."""
    v = np.zeros((15,) + SHAPE, np.int32)
    for t in range(12):
        paint_disk(v, t, 1, 32, 40, 8)
    for t in range(12, 15):
        paint_disk(v, t, 2, 32, 33 - (t - 12), 6)
        paint_disk(v, t, 3, 32, 47 + (t - 12), 6)
    return Case("division", v, v.copy(), _tracks((1, 0, 11, 0), (2, 12, 14, 1), (3, 12, 14, 1)),
                note="a mitosis gives two children with the mother as parent")


def early_division() -> Case:
    """Division in frame 3, within t_merge frames of the video start. With the code's repair of tracks starting in
    frame 0 (``tracking.merge_first_frame_tracks``) the short mother is relabelled to a daughter and the
    lineage-consistency split must restore mother → two daughters; the paper's rule leaves the mother alone."""
    v = np.zeros((6,) + SHAPE, np.int32)
    for t in range(3):
        paint_disk(v, t, 1, 32, 48, 8)
    for t in range(3, 6):
        paint_disk(v, t, 2, 32, 41 - (t - 3), 6)
        paint_disk(v, t, 3, 32, 55 + (t - 3), 6)
    return Case("early_division", v, v.copy(), _tracks((1, 0, 2, 0), (2, 3, 5, 1), (3, 3, 5, 1)),
                note="a division within t_merge frames of the video start keeps its lineage")


def false_split() -> Case:
    """Cell 1 over 8 frames; in frames 3–4 the clustering splits it into halves 1 and 5 that re-merge in frame 5."""
    v = np.zeros((8,) + SHAPE, np.int32)
    e = np.zeros_like(v)
    for t in range(8):
        paint_disk(v, t, 1, 32, 30 + t, 9)
        paint_disk(e, t, 1, 32, 30 + t, 9)
        if t in (3, 4):
            right = v[t] == 1
            right[:, :30 + t] = False
            v[t][right] = 5
        paint_disk(v, t, 2, 32, 75, 6)  # a bystander that must stay untouched
        paint_disk(e, t, 2, 32, 75, 6)
    return Case("false_split", v, e, _tracks((1, 0, 7, 0), (2, 0, 7, 0)),
                note="a split that re-merges within t_merge frames is undone (t_merge)")


def enter_leave() -> Case:
    """Cell 1 stays; cell 2 enters from the left, cell 3 leaves on the right. With a 4-px border band the frames in
    which only a sliver (wholly inside the band) is visible are removed."""
    band = 4
    v = np.zeros((8,) + SHAPE, np.int32)
    e = np.zeros_like(v)
    W = SHAPE[1]
    for t in range(8):
        paint_disk(v, t, 1, 32, 48, 7)
    # cell 2: centre x = -4 (sliver x <= 2, inside the band), then -1, 4, 9, ... from frame 2 on
    for t in range(2, 8):
        paint_disk(v, t, 2, 16, -4 + 5 * (t - 2), 6)
    # cell 3: centre x = W - 10 + 3t; in its last visible frame (4) only x >= W - 4 (inside the band) is left
    for t in range(0, 5):
        paint_disk(v, t, 3, 48, W - 10 + 3 * t, 6)
    e[:] = v
    e[2][e[2] == 2] = 0  # sliver of cell 2 in frame 2 lies wholly inside the band
    e[4][e[4] == 3] = 0  # sliver of cell 3 in frame 4 likewise
    return Case("enter_leave", v, e, _tracks((1, 0, 7, 0), (2, 3, 7, 0), (3, 0, 3, 0)), border_band=band,
                note="entering/leaving cells; instances wholly inside the CTC border band are removed")


def tile_border() -> Case:
    """Cells crossing the inner tile edges x = 32 and x = 63 of the two-tile grid while moving right."""
    v = np.zeros((6,) + SHAPE, np.int32)
    for t in range(6):
        paint_disk(v, t, 1, 20, 26 + 3 * t, 6)   # crosses x = 32 (left edge of tile 1)
        paint_disk(v, t, 2, 44, 55 + 3 * t, 6)   # crosses x = 63 (right edge of tile 0)
    return Case("tile_border", v, v.copy(), _tracks((1, 0, 5, 0), (2, 0, 5, 0)),
                note="instances cut by an inner tile border are taken from the other tile")


def speckle() -> Case:
    """A 2 × 2 speckle in frame 3 only: a parent-less track shorter than t_length = 2 is removed."""
    v = np.zeros((6,) + SHAPE, np.int32)
    for t in range(6):
        paint_disk(v, t, 1, 32, 30, 7)
    v[3, 5:7, 85:87] = 9
    e = v.copy()
    e[e == 9] = 0
    return Case("speckle", v, e, _tracks((1, 0, 5, 0)), note="tiny one-frame speckles are removed (t_length)")


def catalogue() -> list[Case]:
    """All cases, in a fixed order."""
    return [one_cell(), two_touching(), division(), early_division(), false_split(), enter_leave(), tile_border(),
            speckle()]


# --------------------------------------------------------------------------------------------------------------
# Helpers


def pairs_from_video(video: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Frame pairs (2, H, W) of consecutive frames with labels shuffled per pair (clusters come in any order)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for t in range(video.shape[0] - 1):
        pair = video[t:t + 2].copy()
        ids = np.unique(pair)
        ids = ids[ids > 0]
        lut = np.zeros(int(pair.max(initial=0)) + 1, np.int32)
        lut[ids] = rng.permutation(ids.size) + 1
        pairs.append(lut[pair])
    return pairs


def canonical(labels: np.ndarray, tracks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber track ids by (first frame, raster index of the first pixel there), parents accordingly.

    Args:
        labels: (T, H, W) labels.
        tracks: (N, 4) ``L B E P`` rows.

    Returns:
        Renumbered ``(labels, tracks)`` with tracks sorted by id.
    """
    labels = np.asarray(labels)
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    keys = []
    for label, first, _, _ in tracks:
        flat = np.flatnonzero(labels[first].ravel() == label)
        keys.append((int(first), int(flat[0]) if flat.size else -1, int(label)))
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    lut = np.zeros(int(max(labels.max(initial=0), tracks[:, 0].max(initial=0))) + 1, np.int64)
    for new, i in enumerate(order, start=1):
        lut[tracks[i, 0]] = new
    out_tracks = np.array([[lut[L], B, E, lut[P] if P else 0] for L, B, E, P in tracks], dtype=np.int64)
    out_tracks = out_tracks[np.argsort(out_tracks[:, 0])] if len(out_tracks) else out_tracks.reshape(-1, 4)
    return lut[labels], out_tracks


def tile_labels_of_pair(pair: np.ndarray, grid) -> list[np.ndarray]:
    """What a perfect per-tile clustering returns: each tile's crop of ``pair`` (padding 0), relabelled 1..K."""
    out = []
    for tile in grid.tiles:
        crop = tile.extract(pair, 0, axis=1)
        ids = np.unique(crop)
        ids = ids[ids > 0]
        lut = np.zeros(int(crop.max(initial=0)) + 1, np.int32)
        lut[ids] = np.arange(1, ids.size + 1)
        out.append(lut[crop])
    return out


# --------------------------------------------------------------------------------------------------------------
# Oracle embeddings: what a perfect network would predict for a label video


#: Embedding size and number of instance directions of the oracle (e_b = e_0; instances use e_1 … e_15).
ORACLE_DIM = 16
ORACLE_COLOURS = 15


def expand_labels(labels: np.ndarray, distance: float) -> np.ndarray:
    """Grow every label into the background by up to ``distance`` pixels (nearest label wins)."""
    if distance <= 0 or not labels.any():
        return labels.copy()
    dist, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    grown = labels[iy, ix]
    grown[dist > distance] = 0
    return grown


def close_pairs(grown: np.ndarray, grown_next: np.ndarray | None = None) -> set[tuple[int, int]]:
    """Pairs of labels (i < j) that touch in a frame whose labels were grown by half the neighbour distance
    (:func:`expand_labels`), or that overlap between it and the grown next frame (a mother and its daughters)."""
    if grown_next is not None:
        both = (grown > 0) & (grown_next > 0) & (grown != grown_next)
        a, b = grown[both], grown_next[both]
    else:
        a = np.concatenate([grown[1:, :].ravel(), grown[:, 1:].ravel()])
        b = np.concatenate([grown[:-1, :].ravel(), grown[:, :-1].ravel()])
        differ = (a != b) & (a > 0) & (b > 0)
        a, b = a[differ], b[differ]
    codes = np.unique(np.minimum(a, b).astype(np.int64) << 32 | np.maximum(a, b))
    return set(zip((codes >> 32).tolist(), (codes & 0xFFFFFFFF).tolist()))


def dsatur_colouring(nodes: list[int], edges: set[tuple[int, int]],
                     rng: Optional[np.random.Generator] = None) -> dict[int, int]:
    """Greedy DSATUR graph colouring: colours 0, 1, … so that neighbours differ.

    Without ``rng`` every node takes the smallest free colour (few colours: the hardest oracle, where far cells
    share directions). With ``rng`` it takes a random free colour among the first :data:`ORACLE_COLOURS`
    (the smallest free colour if none of them is free), so the directions are spread over the palette.
    """
    neighbours: dict[int, set[int]] = {n: set() for n in nodes}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    colour: dict[int, int] = {}
    while len(colour) < len(nodes):
        node = max((n for n in nodes if n not in colour),
                   key=lambda n: (len({colour[m] for m in neighbours[n] if m in colour}), len(neighbours[n]), -n))
        used = {colour[m] for m in neighbours[node] if m in colour}
        free = [c for c in range(ORACLE_COLOURS) if c not in used] if rng is not None else []
        colour[node] = free[rng.integers(len(free))] if free else next(c for c in range(len(nodes) + 1)
                                                                        if c not in used)
    return colour


def window_colourings(video: np.ndarray, window: int, distance: float,
                      rng: Optional[np.random.Generator] = None) -> list[dict[int, int]]:
    """Colours 1..15 of the tracks of every pair (t, t+1), coloured over the network window of ``window`` frames
    ending at t+1 (the network keeps an instance's embedding within one window; windows are independent).

    Tracks whose masks come within ``distance`` px in a frame of the window, or in two consecutive frames of it,
    are neighbours. If a window needs more than 15 colours, the distance is halved for that window until it fits
    (touching cells always differ). ``rng`` spreads the colours over the palette (see :func:`dsatur_colouring`).
    """
    grown: dict[float, dict[int, np.ndarray]] = {}
    pairs: dict[tuple[float, int, bool], set[tuple[int, int]]] = {}

    def edges_of(d: float, f: int, with_next: bool) -> set[tuple[int, int]]:
        key = (d, f, with_next)
        if key not in pairs:
            cache = grown.setdefault(d, {})
            for g in (f, f + 1) if with_next else (f,):
                if g not in cache:
                    cache[g] = expand_labels(video[g], d / 2.0)
            pairs[key] = close_pairs(cache[f], cache[f + 1] if with_next else None)
        return pairs[key]

    present = [set(np.flatnonzero(np.bincount(f.ravel())).tolist()) - {0} for f in video]
    colourings = []
    for t in range(video.shape[0] - 1):
        frames = range(max(0, t + 2 - window), t + 2)
        nodes = sorted(set().union(*(present[f] for f in frames)))
        d = float(distance)
        while True:
            edges = set().union(*(edges_of(d, f, False) for f in frames),
                                *(edges_of(d, f, True) for f in frames[:-1]))
            colour = dsatur_colouring(nodes, edges, rng)
            if not colour or max(colour.values()) < ORACLE_COLOURS:
                break
            if d <= 1.0:
                raise ValueError(f"pair {t}: touching tracks need more than {ORACLE_COLOURS} colours")
            d /= 2.0
        colourings.append({n: c + 1 for n, c in colour.items()})
    return colourings


def oracle_pair(video: np.ndarray, t: int, colouring: dict[int, int], noise: np.ndarray) -> np.ndarray:
    """Oracle embeddings (2, h, w, 16) float32 of frames (t, t+1): unit vector e_colour per instance, e_b = e_0 for
    the background, plus the given noise field (2, h, w, 16), L2-normalised."""
    pair = video[t:t + 2]
    lut = np.zeros(int(pair.max(initial=0)) + 1, dtype=np.int64)
    for label, colour in colouring.items():
        if label < lut.size:
            lut[label] = colour
    emb = np.array(noise, dtype=np.float32)
    flat = emb.reshape(-1)
    flat[np.arange(pair.size) * ORACLE_DIM + lut[pair].ravel()] += 1.0
    emb /= np.sqrt(np.einsum("...d,...d->...", emb, emb))[..., None]
    return emb


def noise_fields(shape: tuple[int, int], count: int, noise: float, rng: np.random.Generator):
    """``count`` Gaussian noise fields (2, h, w, 16) of standard deviation ``noise``: one random bank, shifted by a
    random cyclic offset (and frame order) per field, which is much cheaper than fresh noise for big frames."""
    bank = rng.standard_normal((2,) + tuple(shape) + (ORACLE_DIM,), dtype=np.float32)
    bank *= noise
    for _ in range(count):
        dy, dx = int(rng.integers(shape[0])), int(rng.integers(shape[1]))
        field = np.roll(bank, (dy, dx), axis=(1, 2))
        yield field[::-1] if rng.integers(2) else field


def write_oracle_embeddings(video: np.ndarray, folder, window: int, distance: float, noise: float = 0.05,
                            seed: int = 0, dtype=np.float32) -> int:
    """Write ``pair_000.npy`` … for a label video at the network resolution; returns the number of pairs."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colourings = window_colourings(video, window, distance)
    fields = noise_fields(video.shape[1:], len(colourings), noise, rng)
    for t, (colouring, field) in enumerate(zip(colourings, fields)):
        np.save(folder / f"pair_{t:03d}.npy", oracle_pair(video, t, colouring, field).astype(dtype, copy=False))
    return len(colourings)


def drifting_disks(shape: tuple[int, int], cells: int, frames: int, radius: tuple[float, float] = (8.0, 12.0),
                   step: float = 2.0, seed: int = 0) -> np.ndarray:
    """Label video (T, H, W) int32 of up to ``cells`` disjoint disks (ids 1..n, radii uniform in ``radius``) that
    drift by up to ``step`` px per axis and frame; a disk whose move would make it overlap another stays put."""
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    for _ in range(cells * 20):
        if len(centres) == cells:
            break
        r = rng.uniform(*radius)
        c = rng.uniform([r, r], [shape[0] - r, shape[1] - r])
        if all(np.hypot(*(c - o)) > r + q for o, q in zip(centres, radii)):
            centres.append(c)
            radii.append(r)
    centre, rad = np.array(centres).reshape(-1, 2), np.array(radii)
    video = np.zeros((frames,) + tuple(shape), np.int32)
    for t in range(frames):
        if t:
            moves = rng.uniform(-step, step, centre.shape)
            for i in range(len(centre)):
                moved = centre[i] + moves[i]
                gap = np.hypot(*(centre - moved).T) - rad - rad[i]
                gap[i] = np.inf
                if np.all(gap > 0):
                    centre[i] = moved
        for i, ((cy, cx), r) in enumerate(zip(centre, rad), start=1):
            top, left = max(int(cy - r), 0), max(int(cx - r), 0)
            box = (slice(top, int(cy + r) + 1), slice(left, int(cx + r) + 1))
            video[t][box][disk_mask(video[t][box].shape, cy - top, cx - left, r)] = i
    return video


def messy_video(shape: tuple[int, int], cells: int, frames: int, seed: int = 0) -> np.ndarray:
    """A :func:`drifting_disks` video with the events that exercise tracking and lineage: cells that split in two
    for 1–3 frames and merge again (false mitoses, t_merge), split for good (divisions, parents), vanish for a
    frame and come back, and one-frame speckles (t_length); ids of new pieces are new labels."""
    rng = np.random.default_rng(seed)
    video = drifting_disks(shape, cells, frames, radius=(7.0, 11.0), seed=seed)
    next_label = int(video.max()) + 1
    for _ in range(frames // 2):
        t = int(rng.integers(1, frames))
        present = np.unique(video[t])[1:]
        if present.size == 0:
            continue
        label = int(rng.choice(present))
        event = rng.choice(["false_split", "division", "vanish", "speckle"])
        if event == "vanish":
            video[t][video[t] == label] = 0
        elif event == "speckle":
            cy, cx = rng.uniform(4, shape[0] - 4), rng.uniform(4, shape[1] - 4)
            free = disk_mask(shape, cy, cx, 3.0) & (video[t] == 0)
            video[t][free] = next_label
            next_label += 1
        else:
            last = frames if event == "division" else min(t + int(rng.integers(1, 4)), frames)
            for u in range(t, last):
                mask = video[u] == label
                if not mask.any():
                    break
                xs = np.nonzero(mask)[1]
                video[u][mask & (np.arange(shape[1])[None, :] > np.median(xs))] = next_label
            next_label += 1
    return video


def oracle_video(shape: tuple[int, int], cells: int, frames: int, window: int, distance: float,
                 noise: float = 0.05, radius: tuple[float, float] = (8.0, 12.0), seed: int = 0
                 ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The benchmarks' oracle: a :func:`drifting_disks` video and the oracle embeddings of its frame pairs.

    Every cell takes one of the 15 unit directions e_1 … e_15, chosen at random among those not taken by cells
    within ``distance`` px in its network window (:func:`window_colourings`), the background e_b = e_0; Gaussian
    noise of standard deviation ``noise`` per component is added before L2-normalising (0.05: cos ≈ 0.98 between
    a pixel and its cell's direction).

    Returns:
        ``(video, pairs)``: labels (T, H, W) int32 and T − 1 float32 embeddings (2, H, W, 16).
    """
    rng = np.random.default_rng(seed)
    video = drifting_disks(shape, cells, frames, radius, seed=seed)
    colourings = window_colourings(video, window, distance, rng)
    fields = noise_fields(tuple(shape), frames - 1, noise, rng)
    return video, [oracle_pair(video, t, c, f) for t, (c, f) in enumerate(zip(colourings, fields))]


# --------------------------------------------------------------------------------------------------------------
# Embedding builders of the clustering tests


def instance_directions(count: int, dim: int = 16) -> np.ndarray:
    """Return ``count`` orthonormal instance directions e_1, e_2, … (row k-1 is e_k), all orthogonal to e_b."""
    if count > dim - 1:
        raise ValueError(f"at most {dim - 1} orthogonal instance directions exist in {dim} dimensions")
    return np.eye(dim, dtype=np.float32)[1:count + 1]


def disk_labels(shape: tuple[int, ...], disks: list[tuple[float, float, float, int]]) -> np.ndarray:
    """Return an int32 label image of ``shape`` (h, w) with disks ``(row, column, radius, label)`` drawn in order."""
    labels = np.zeros(shape, dtype=np.int32)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    for row, col, radius, label in disks:
        labels[(rows - row) ** 2 + (cols - col) ** 2 <= radius**2] = label
    return labels


def embeddings_from_labels(
    labels: np.ndarray,
    directions: np.ndarray,
    noise: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Return L2-normalised float32 embeddings (..., D) for a label array (0 = background).

    Args:
        labels: Integer array (e.g. (2, h, w)); label k > 0 takes ``directions[k - 1]``, 0 takes e_b.
        directions: Array (K, D) of instance directions.
        noise: Standard deviation of Gaussian noise added to every component before normalising.
        seed: Seed of the noise.
    """
    dim = directions.shape[1]
    table = np.concatenate([np.eye(dim, dtype=np.float32)[:1], directions.astype(np.float32)])
    embeddings = table[labels]
    if noise:
        embeddings = embeddings + np.random.default_rng(seed).normal(0.0, noise, embeddings.shape).astype(np.float32)
    return (embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)).astype(np.float32)


def shifted_pair(labels: np.ndarray, shift: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Return a 2-frame label stack: ``labels`` and the same image moved by ``shift`` (rows, columns), zero-filled."""
    moved = np.zeros_like(labels)
    dy, dx = shift
    height, width = labels.shape
    moved[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = labels[
        max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)
    ]
    return np.stack([labels, moved])


def random_ellipse_labels(
    shape: tuple[int, int], count: int, seed: int = 0, axes: tuple[float, float] = (6.0, 14.0)
) -> np.ndarray:
    """Return an int32 label image with up to ``count`` random non-overlapping ellipses (labels 1..n)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.int32)
    reach = int(np.ceil(axes[1])) + 1
    placed = 0
    for _ in range(50 * count):
        if placed == count:
            break
        centre = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        a, b = rng.uniform(*axes, size=2)
        angle = rng.uniform(0, np.pi)
        top, left = int(max(centre[0] - reach, 0)), int(max(centre[1] - reach, 0))
        rows, cols = np.mgrid[top:int(min(centre[0] + reach, shape[0])), left:int(min(centre[1] + reach, shape[1]))]
        y, x = rows - centre[0], cols - centre[1]
        u = (y * np.cos(angle) + x * np.sin(angle)) / a
        v = (-y * np.sin(angle) + x * np.cos(angle)) / b
        inside = u * u + v * v <= 1
        window = labels[top:top + inside.shape[0], left:left + inside.shape[1]]
        if inside.any() and not window[inside].any():
            placed += 1
            window[inside] = placed
    return labels


def colour_instances(labels: np.ndarray, colours: int, seed: int = 0, gap: int = 3) -> np.ndarray:
    """Give every instance of a label stack one of ``colours`` classes so that instances closer than ``gap`` px
    differ (greedy colouring of the touching graph). Returns an array ``colour[label]`` (colour[0] = 0)."""
    rng = np.random.default_rng(seed)
    count = int(labels.max())
    neighbours: list[set[int]] = [set() for _ in range(count + 1)]
    for frame in labels.reshape(-1, *labels.shape[-2:]):
        grown = ndimage.grey_dilation(frame, size=(2 * gap + 1, 2 * gap + 1))
        touching = (frame > 0) & (grown > 0) & (grown != frame)
        for a, b in set(zip(frame[touching].tolist(), grown[touching].tolist())):
            neighbours[a].add(b)
            neighbours[b].add(a)
    colour = np.zeros(count + 1, dtype=np.int32)
    for label in range(1, count + 1):
        used = {colour[other] for other in neighbours[label]}
        free = [c for c in range(1, colours + 1) if c not in used]
        if not free:
            raise ValueError("not enough colours for the touching graph; use more colours")
        colour[label] = free[rng.integers(len(free))]
    return colour


def oracle_frame_pair(
    shape: tuple[int, int], cells: int, noise: float = 0.05, seed: int = 0, colours: int = 15, dim: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Return oracle-like embeddings (2, h, w, dim) and labels (2, h, w) of a frame pair of random ellipse cells.

    Frame t+1 is frame t moved by one pixel down and right. Each cell takes one of ``colours`` orthogonal
    directions, touching cells different ones; background lies along e_b; Gaussian ``noise`` is added.
    """
    labels = shifted_pair(random_ellipse_labels(shape, cells, seed))
    colour = colour_instances(labels, colours, seed)
    directions = instance_directions(colours, dim)
    return embeddings_from_labels(colour[labels], directions, noise, seed), labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label arrays describe the same partition (background 0 exactly, other labels up to renaming)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


# ---------------------------------------------------------------------------------------------------------------
# Training-data cases (data_io.sampling)


def moving_disks(num_frames: int = 10, shape: Sequence[int] = (96, 128), num_cells: int = 6, radius: int = 9,
                 seed: int = 0) -> np.ndarray:
    """Labels (T, H, W) uint16 of ``num_cells`` disks (ids 2, 4, 6, …) drifting by about a pixel per frame."""
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    centres = np.stack([rng.uniform(radius + 2, height - radius - 2, num_cells),
                        rng.uniform(radius + 2, width - radius - 2, num_cells)], axis=1)
    velocity = rng.uniform(-1.0, 1.0, size=(num_cells, 2))
    labels = np.zeros((num_frames, height, width), dtype=np.uint16)
    for t in range(num_frames):
        for cell in range(num_cells):
            cy, cx = centres[cell] + t * velocity[cell]
            labels[t][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = 2 * (cell + 1)
    return labels


def paint(labels: np.ndarray) -> np.ndarray:
    """An intensity image where every label has its own value (0.01 · id − 0.5); float32."""
    return (np.asarray(labels, np.float32) * 0.01 - 0.5).astype(np.float32)


def training_video(labels: np.ndarray, frames: Optional[np.ndarray] = None, complete: Sequence[int] = (),
                   band: int = 0, name: str = "case/01"):
    """A ``data_io.sampling.TrainingVideo`` from arrays (frames default to :func:`paint`; ``complete``: the
    complete-SEG frames; ``band``: border band in pixels)."""
    from data_io.sampling import TrainingVideo

    labels = np.asarray(labels, np.uint16)
    flags = np.zeros(labels.shape[0], dtype=bool)
    flags[list(complete)] = True
    region = np.ones(labels.shape[1:], dtype=np.uint8)
    region[band:labels.shape[1] - band, band:labels.shape[2] - band] = 2
    return TrainingVideo(name=name, frames=paint(labels) if frames is None else np.asarray(frames, np.float32),
                         frame_origin=(0.0, 0.0), labels=labels, complete=flags, seg=flags.copy(), region=region)


def small_config(tile: int = 64, length: int = 4):
    """Paper defaults (``rshn_tf.config.Config``) with a small tile and window (model.levels lowered so the tile
    size is valid)."""
    from rshn_tf.config import Config

    config = Config()
    config.model.levels = 3
    config.data.tile_size = [tile, tile]
    config.data.sequence_length = length
    return config


def training_data(videos: Sequence, config=None):
    """``data_io.sampling.TrainingData`` over in-memory videos (default config: :func:`small_config`)."""
    from data_io.sampling import TrainingData

    return TrainingData(list(videos), config if config is not None else small_config())


def reference_neighbours(labels: np.ndarray, label: int, radius: float) -> set[int]:
    """The paper's neighbour rule (§2.2) written out with plain loops in float64: every other label with a pixel, in
    any frame, closer than ``radius`` to the centre of gravity of ``label`` over all frames of ``labels``."""
    _, y, x = np.nonzero(labels == label)
    cy, cx = y.mean(), x.mean()
    found = set()
    for other in np.unique(labels):
        if other in (0, label):
            continue
        _, oy, ox = np.nonzero(labels == other)
        if np.any(np.hypot(oy - cy, ox - cx) < radius):
            found.add(int(other))
    return found
