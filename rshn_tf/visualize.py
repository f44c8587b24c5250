"""Overlay movies of a tracking result: instance contours coloured by track id over the raw frames, mitoses
highlighted (as Fig. 1 of the paper), written as an animated GIF or PNG. People check tracking by looking.

This module must not import TensorFlow.
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image
from scipy import ndimage

from data_io.ctc import load_frames, load_result
from rshn_tf.atomic import atomic_file
from rshn_tf.errors import RshnError
from rshn_tf.os_faults import prepare_output

#: Display percentiles of the raw intensities mapped to black and white (display only, not a method parameter).
DISPLAY_PERCENTILES = (1.0, 99.0)
#: Colour of the cells in a mitosis frame: mothers in their last frame, daughters in their first.
MITOSIS_COLOUR = (255, 230, 0)
#: Milliseconds per movie frame.
FRAME_DURATION_MS = 200


def track_colours(ids: Iterable[int]) -> dict[int, tuple[int, int, int]]:
    """A distinct, stable colour per track id (hues spaced by the golden ratio, full saturation)."""
    colours = {}
    for label in ids:
        hue = (int(label) * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
        colours[int(label)] = (int(r * 255), int(g * 255), int(b * 255))
    return colours


def contours(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Boolean mask of instance boundary pixels: labelled pixels with a 4-neighbour of another label (the image
    edge counts as background), widened inwards to ``thickness`` pixels."""
    padded = np.pad(labels, 1)
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(labels.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy:dy + labels.shape[0], dx:dx + labels.shape[1]] != centre
    edge &= labels > 0
    if thickness > 1:
        edge = ndimage.binary_dilation(edge, iterations=thickness - 1) & (labels > 0)
    return edge


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """Grey values of a raw frame mapped to 0..255 between the :data:`DISPLAY_PERCENTILES`."""
    frame = np.asarray(frame, dtype=np.float64)
    if frame.ndim == 3:
        frame = frame.mean(axis=-1)
    low, high = np.percentile(frame, DISPLAY_PERCENTILES)
    scaled = (frame - low) / max(high - low, 1e-12)
    return (np.clip(scaled, 0.0, 1.0) * 255).round().astype(np.uint8)


def mitosis_ids(tracks: np.ndarray, frame: int) -> set[int]:
    """Tracks to highlight in ``frame``: daughters starting there and mothers ending there with daughters."""
    tracks = np.asarray(tracks).reshape(-1, 4)
    daughters = tracks[(tracks[:, 3] > 0) & (tracks[:, 1] == frame)]
    parents = set(tracks[tracks[:, 3] > 0, 3].tolist())
    mothers = tracks[(tracks[:, 2] == frame) & np.isin(tracks[:, 0], list(parents))]
    return set(daughters[:, 0].tolist()) | set(mothers[:, 0].tolist())


def overlay_frame(
    frame: np.ndarray, labels: np.ndarray, colours: dict[int, tuple[int, int, int]], highlight: set[int]
) -> np.ndarray:
    """Draw one frame: grey image, 1-px contours in track colours, mitosis cells tinted with a 3-px contour.

    Args:
        frame: Raw (H, W) frame.
        labels: (H, W) track ids.
        colours: Colour per track id.
        highlight: Track ids drawn as mitosis cells.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    grey = to_uint8(frame)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros((int(labels.max(initial=0)) + 1, 3), dtype=np.uint8)
    for label in ids.tolist():
        lut[label] = colours.get(label, (255, 255, 255))
    edge = contours(labels)
    rgb[edge] = lut[labels[edge]]
    if highlight:
        cells = np.isin(labels, list(highlight))
        tint = np.asarray(MITOSIS_COLOUR, dtype=np.float64)
        rgb[cells] = (0.65 * rgb[cells] + 0.35 * tint).astype(np.uint8)
        rgb[contours(np.where(cells, labels, 0), thickness=3)] = MITOSIS_COLOUR
    return rgb


def render_overlay(
    res_dir: str | os.PathLike, frames_dir: str | os.PathLike, out_path: str | os.PathLike,
    frames: Optional[slice] = None,
) -> Path:
    """Write an overlay movie of a CTC result over its raw frames.

    Args:
        res_dir: Result folder (``maskNNN.tif`` + ``res_track.txt``).
        frames_dir: Folder of the raw frames ``tNNN.tif`` (same count and size as the masks).
        out_path: ``.gif`` (animated GIF) or ``.png`` (animated PNG, first frame shown by viewers without APNG).
        frames: Optional slice of frame indices to render.

    Returns:
        The written file.

    Raises:
        RshnError: On missing folders, mismatched frame counts or sizes, or an unsupported extension.
    """
    res_dir, frames_dir, out_path = Path(res_dir), Path(frames_dir), Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in (".gif", ".png"):
        raise RshnError(f"{out_path}: the overlay is written as .gif or .png")
    prepare_output(out_path, "overlay")
    result = load_result(res_dir)
    raws = load_frames(frames_dir).frames
    if len(result.labels) != len(raws):
        raise RshnError(f"{res_dir} has {len(result.labels)} masks but {frames_dir} has {len(raws)} frames")
    if raws.shape[1:3] != result.labels.shape[1:]:
        raise RshnError(f"{frames_dir}: frame size {raws.shape[1:3]} differs from the masks of {res_dir} "
                        f"{result.labels.shape[1:]}")
    colours = track_colours(result.tracks[:, 0])
    images = [
        Image.fromarray(overlay_frame(raws[t], result.labels[t], colours, mitosis_ids(result.tracks, t)))
        for t in range(len(raws))[frames or slice(None)]
    ]
    if not images:
        raise RshnError(f"{out_path}: no frames selected")
    with atomic_file(out_path, suffix=suffix) as tmp:
        images[0].save(tmp, save_all=True, append_images=images[1:], duration=FRAME_DURATION_MS, loop=0,
                       format="GIF" if suffix == ".gif" else "PNG")
    return out_path
