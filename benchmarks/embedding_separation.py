"""How well a trained network separates touching cells in embedding space, measured on gold SEG frames.

For every pair of touching gold cells (within 2 px) of the SEG frames, the cosine between the two cells' mean
embeddings (each pixel L2-normalised, the mean normalised again), split by whether the result put both cells into one
instance; and for every gold cell the mean cosine of its pixels to its own mean (how tight the cell's cluster is).
The loss asks touching cells to be orthogonal (cosine 0, paper §2.2); the mean shift with bandwidth h keeps
directions within a cosine of 1 - h together. Touching pairs that were merged with a high cosine are the network's
error; merged pairs with a low cosine would be the clustering's.

Input: the embeddings saved by ``rshn predict --save-embeddings DIR`` (``pair_NNN.npy`` holds frames NNN and
NNN + 1, on the network grid, which must equal the original size), the result of that run and its gold truth::

    rshn predict --model MODEL --input DATA/01 --output RES --save-embeddings EMB
    python benchmarks/embedding_separation.py EMB RES DATA/01_GT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from rshn_tf.error_analysis import seg_frames  # noqa: E402
from rshn_tf.errors import RshnError  # noqa: E402

#: Gold cells closer than this (pixels) count as touching.
TOUCH_DISTANCE = 2


def frame_embeddings(embeddings_dir: Path, frame: int) -> np.ndarray:
    """The L2-normalised (h, w, D) embeddings of one frame: the second frame of pair ``frame - 1``, for frame 0 the
    first frame of pair 0."""
    path = embeddings_dir / f"pair_{max(frame - 1, 0):03d}.npy"
    if not path.is_file():
        raise RshnError(f"{path}: embeddings of frame {frame} missing (written by rshn predict --save-embeddings)")
    pair = np.load(path).astype(np.float64)
    values = pair[1 if frame > 0 else 0]
    return values / (np.linalg.norm(values, axis=-1, keepdims=True) + 1e-12)


def touching_pairs(gold: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (a, b), a < b, of gold labels within :data:`TOUCH_DISTANCE` pixels of each other."""
    pairs = set()
    for label in np.unique(gold[gold > 0]):
        near = ndimage.binary_dilation(gold == label, iterations=TOUCH_DISTANCE)
        pairs.update((int(label), int(other)) for other in np.unique(gold[near]) if other > label)
    return sorted(pairs)


def measure(embeddings_dir: Path, res_dir: Path, gt_dir: Path) -> dict[str, np.ndarray]:
    """Cosines of touching gold pairs (``merged`` / ``separated`` by the result) and each cell's tightness."""
    merged, separated, tightness = [], [], []
    for frame, gold, result in seg_frames(res_dir, gt_dir):
        embeddings = frame_embeddings(embeddings_dir, frame)
        if embeddings.shape[:2] != gold.shape:
            raise RshnError(f"{embeddings_dir}: embeddings of {embeddings.shape[:2]} but gold masks of {gold.shape}; "
                            f"the network grid must be the original size")
        means, owner = {}, {}
        for label in np.unique(gold[gold > 0]):
            pixels = embeddings[gold == label]
            mean = pixels.mean(axis=0)
            means[label] = mean / np.linalg.norm(mean)
            tightness.append(float((pixels @ means[label]).mean()))
            owner[label] = np.bincount(result[gold == label]).argmax()
        for a, b in touching_pairs(gold):
            cosine = float(means[a] @ means[b])
            (merged if owner[a] == owner[b] and owner[a] > 0 else separated).append(cosine)
    return {"merged": np.array(merged), "separated": np.array(separated), "tightness": np.array(tightness)}


def summary(name: str, values: np.ndarray) -> str:
    if values.size == 0:
        return f"{name}: none"
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return (f"{name}: {values.size}, cosine mean {values.mean():.3f}, quartiles {q1:.3f} / {median:.3f} / {q3:.3f}, "
            f"above 0.9: {(values > 0.9).sum()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("embeddings", type=Path, help="folder of pair_NNN.npy (rshn predict --save-embeddings)")
    parser.add_argument("res", type=Path, help="the result folder of the same run")
    parser.add_argument("gt", type=Path, help="ground-truth folder 0X_GT with SEG/")
    args = parser.parse_args(argv)
    try:
        values = measure(args.embeddings, args.res, args.gt)
    except RshnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tight = values["tightness"]
    print(f"gold cells: {tight.size}, mean cosine of a cell's pixels to its mean {tight.mean():.3f} "
          f"(10th percentile {np.percentile(tight, 10):.3f})")
    print(summary("touching pairs merged by the result", values["merged"]))
    print(summary("touching pairs separated", values["separated"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
