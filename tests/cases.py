"""Small hand-built cases shared by several test files."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from data_io.sampling import TrainingData, TrainingVideo
from rshn_tf.config import Config


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
                   band: int = 0, name: str = "case/01") -> TrainingVideo:
    """A :class:`TrainingVideo` from arrays (frames default to :func:`paint`; ``complete``: complete-SEG frames)."""
    labels = np.asarray(labels, np.uint16)
    flags = np.zeros(labels.shape[0], dtype=bool)
    flags[list(complete)] = True
    region = np.ones(labels.shape[1:], dtype=np.uint8)
    region[band:labels.shape[1] - band, band:labels.shape[2] - band] = 2
    return TrainingVideo(name=name, frames=paint(labels) if frames is None else np.asarray(frames, np.float32),
                         frame_origin=(0.0, 0.0), labels=labels, complete=flags, seg=flags.copy(), region=region)


def small_config(tile: int = 64, length: int = 4) -> Config:
    """Paper defaults with a small tile and window (model.levels lowered so the tile size is valid)."""
    config = Config()
    config.model.levels = 3
    config.data.tile_size = [tile, tile]
    config.data.sequence_length = length
    return config


def training_data(videos: Sequence[TrainingVideo], config: Optional[Config] = None) -> TrainingData:
    """:class:`TrainingData` over in-memory videos."""
    return TrainingData(list(videos), config if config is not None else small_config())
