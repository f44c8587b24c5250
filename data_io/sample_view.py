"""``rshn show-sample``: write one augmented training sample as PNGs and arrays, to check augmentations by eye.

Output folder:

* ``overview.png``: one row per view, one column per frame: the frames; the labels (one colour per id); the
  background targets (S(b) blue, N(b) yellow, pixels outside the frame dark red); and for a few instances S(i) green
  and N(i) magenta over the frame. Frames without complete SEG have no background target.
* ``frames.png``, ``labels.png``, ``background.png``, ``instance_<slot>_id<id>.png``: the same rows one by one.
* ``sample.npz``: ``frames`` (T, H, W) and the targets ``instance_masks``, ``neighbour_masks`` (K, T, H, W),
  ``background_mask``, ``foreground_mask``, ``valid_mask`` (T, H, W) exactly as fed to the loss (K =
  ``loss.max_instances``), plus ``labels`` (T, H, W) and ``instance_ids`` (ids of the used slots).
* ``sample.json``: source video, first frame, complete-SEG flags and the augmentation parameters.
* ``config.yaml``: the resolved configuration.

The folder is written next to its target under a temporary name and then renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from data_io.sampling import Sample, TrainingData, make_sample
from rshn_tf.atomic import atomic_folder
from rshn_tf.config import Config, save_config
from rshn_tf.errors import RshnError
from rshn_tf.os_faults import prepare_output

#: Instances drawn in the overview (the ones with the most S(i) pixels).
SHOWN_INSTANCES = 4

_INVALID = np.array([90, 0, 0], np.float64)
_SELF = np.array([0, 220, 0], np.float64)
_NEIGHBOUR = np.array([230, 0, 230], np.float64)
_BACKGROUND = np.array([40, 90, 255], np.float64)
_FOREGROUND = np.array([255, 220, 0], np.float64)
_OUTPUT_NAMES = ("overview.png", "frames.png", "labels.png", "background.png", "sample.npz", "sample.json",
                 "config.yaml")


def _grey(frames: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Frames as RGB float images scaled to the 1st/99th percentile of their valid pixels."""
    values = frames[valid] if valid.any() else frames.ravel()
    low, high = np.percentile(values, [1, 99])
    scaled = np.clip((frames - low) / max(high - low, 1e-6), 0.0, 1.0) * 255.0
    return np.repeat(scaled[..., None], 3, axis=-1)


def _blend(base: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    out = base.copy()
    out[mask] = (1.0 - alpha) * out[mask] + alpha * colour
    return out


def _label_colours(labels: np.ndarray) -> np.ndarray:
    """One fixed pseudo-random colour per label id (0 black)."""
    ids = np.unique(labels)
    palette = np.zeros((int(ids.max(initial=0)) + 1, 3))
    for value in ids[ids > 0]:
        palette[value] = np.random.default_rng(int(value)).integers(60, 256, size=3)
    return palette[labels]


def _row(images: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) → (H, T·W + gaps, 3) with 4-pixel white gaps between frames."""
    gap = np.full((images.shape[1], 4, 3), 255.0)
    parts = []
    for index, image in enumerate(images):
        if index:
            parts.append(gap)
        parts.append(image)
    return np.concatenate(parts, axis=1)


def render_rows(sample: Sample, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of the overview as uint8 RGB images, keyed by file name (without folder)."""
    valid = arrays["valid_mask"]
    grey = _grey(sample.frames, valid)
    rows = {
        "frames.png": _blend(grey, ~valid, _INVALID, 0.7),
        "labels.png": _blend(_label_colours(sample.labels), ~valid, _INVALID, 0.7),
        "background.png": _blend(_blend(_blend(grey, arrays["background_mask"], _BACKGROUND),
                                        arrays["foreground_mask"], _FOREGROUND), ~valid, _INVALID, 0.7),
    }
    sizes = arrays["instance_masks"].reshape(arrays["instance_masks"].shape[0], -1).sum(axis=1)
    for slot in [int(s) for s in np.argsort(-sizes, kind="stable")[:SHOWN_INSTANCES] if sizes[s] > 0]:
        image = _blend(_blend(grey, arrays["instance_masks"][slot], _SELF), arrays["neighbour_masks"][slot],
                       _NEIGHBOUR)
        ident = int(sample.targets.instance_ids[slot])
        rows[f"instance_{slot:02d}_id{ident}.png"] = _blend(image, ~valid, _INVALID, 0.7)
    return {name: _row(row).astype(np.uint8) for name, row in rows.items()}


def _describe(sample: Sample) -> dict:
    spatial, intensity = sample.params.spatial, sample.params.intensity
    return {
        "video": sample.video,
        "start_frame": sample.start,
        "complete_seg": sample.complete.tolist(),
        "instance_ids": sample.targets.instance_ids.tolist(),
        "spatial": {"flip_yx": list(spatial.flip), "angle_degrees": float(np.degrees(spatial.angle)),
                    "scale_yx": list(spatial.scale), "crop_offset_yx": list(spatial.offset),
                    "elastic_max_abs": float(np.abs(spatial.elastic).max(initial=0.0))},
        "intensity": {"shift": intensity.shift, "scale": intensity.scale, "gamma": intensity.gamma,
                      "frame_shift": intensity.frame_shift.tolist(), "frame_scale": intensity.frame_scale.tolist()},
    }


def write_sample(sample: Sample, config: Config, folder: Path) -> None:
    """Write the PNGs, ``sample.npz``, ``sample.json`` and ``config.yaml`` of a sample into an existing folder."""
    arrays = sample.arrays(config.loss.max_instances)
    rows = render_rows(sample, arrays)
    for name, row in rows.items():
        Image.fromarray(row).save(folder / name)
    width = max(row.shape[1] for row in rows.values())
    gap = np.full((6, width, 3), 255, np.uint8)
    stacked = []
    for row in rows.values():
        padded = np.full((row.shape[0], width, 3), 255, np.uint8)
        padded[:, :row.shape[1]] = row
        stacked += [padded, gap]
    Image.fromarray(np.concatenate(stacked[:-1], axis=0)).save(folder / "overview.png")
    np.savez_compressed(folder / "sample.npz", **arrays, labels=sample.labels,
                        instance_ids=sample.targets.instance_ids)
    (folder / "sample.json").write_text(json.dumps(_describe(sample), indent=2) + "\n", encoding="utf-8")
    save_config(config, folder / "config.yaml")


def show_sample(config: Config, out_dir: str | os.PathLike, seed: int = 0, index: int = 0,
                dataset_dir: Optional[str | os.PathLike] = None) -> Path:
    """Make training sample ``index`` of the stream with seed ``seed`` and write it to ``out_dir``.

    Args:
        config: Resolved configuration (``data.dataset_dir`` is used unless ``dataset_dir`` is given).
        out_dir: Folder to write. An existing folder is replaced only if it is empty or a previous
            ``show-sample`` output.
        seed: Training seed of the sample stream.
        index: Sample index in the stream.
        dataset_dir: CTC dataset folder.

    Returns:
        The output folder.

    Raises:
        RshnError: For missing data or an existing folder that is not a ``show-sample`` output.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not _replaceable(out_dir):
        raise RshnError(f"{out_dir}: exists and is not an earlier show-sample output; choose another --out or "
                        f"remove it")
    prepare_output(out_dir, "sample folder")
    data = TrainingData.from_config(config, dataset_dir)
    sample = make_sample(data, seed, index)
    with atomic_folder(out_dir) as tmp:
        write_sample(sample, config, tmp)
    return out_dir


def _replaceable(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    names = {entry.name for entry in folder.iterdir()}
    return not names or ("sample.npz" in names and all(
        name in _OUTPUT_NAMES or name.startswith("instance_") for name in names))
