"""Where the frames of a video lie for the network and the post-processing: the original frame size, the network
grid the frames are resampled to, and the inference tiles that cover that grid (paper §2.4, §4.2).

:class:`GridGeometry` is computed once per video (:meth:`GridGeometry.of`) and shared by the network side
(:mod:`rshn_tf.inference`: which tiles run) and the post-processing (:mod:`rshn_tf.postprocess`: which tiles are
clustered and merged, what size the result is resampled back to), so the two cannot disagree. This module must not
import TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from data_io.preprocess import network_shape
from rshn_tf.config import Config
from rshn_tf.tiling import TileGrid, tile_grid


@dataclass(frozen=True)
class GridGeometry:
    """The grids of one video.

    Attributes:
        original_shape: Size (height, width) of the original frames; the result is resampled back to it.
        shape: Size (height, width) of the network grid (``data.resampled_size``, or the original size when null).
        tiles: The inference tiles covering the network grid (``inference.tile_size`` or ``data.tile_size``,
            overlapping by ``inference.tile_overlap``). In tiles mode the network runs on them; in full-frame mode
            the post-processing cuts them from the whole-grid embeddings.
    """

    original_shape: tuple[int, int]
    shape: tuple[int, int]
    tiles: TileGrid

    @classmethod
    def of(cls, original_shape: Sequence[int], config: Config) -> "GridGeometry":
        """The geometry of frames of size ``original_shape`` under ``config`` (``data``, ``inference``).

        Args:
            original_shape: Original frame size (height, width).
            config: The resolved configuration.
        """
        original = (int(original_shape[0]), int(original_shape[1]))
        shape = network_shape(original, config.data)
        return cls(original, shape, tile_grid(shape, config.inference_tile_size, config.inference.tile_overlap))
