"""Small synthetic cases shared by the tests (and the benchmarks).

Training-data cases (moving disks, painted frames, in-memory training videos) import ``data_io.sampling`` only
when called, so this module stays light.

Embedding builders produce oracle-like network outputs: every instance has one unit direction, background lies
along e_b = (1, 0, …, 0), optionally plus Gaussian noise, and every pixel is L2-normalised.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage


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
