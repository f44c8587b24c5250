"""Effect of ``inference.full_frame`` on results and speed: tiles (paper) vs whole frames, on a trained model.

A small RSHN (5 levels, 16 filters, 16-d embeddings, 128 × 128 tiles, l = 8) is trained on sequence 01 of a
synthetic CTC dataset (256 × 256 frames, so every frame is 3 × 3 = 9 tiles with overlap 64) and predicts sequence
02 twice, once per mode; both results are scored against 02_GT (SEG, TRA, DET with py-ctcmetrics). Also printed:
the network seconds of each mode and how far the embeddings of the two modes are apart (the tiles-mode embeddings
stitched from the most central tile, as ``--save-embeddings`` writes them).

With oracle embeddings the two modes cannot differ: an oracle embedding does not depend on the surrounding pixels,
so the tiles cut from the whole frame are the tiles themselves. The difference measured here is the network's
dependence on context (zero padding at tile borders vs. the real neighbourhood).

Usage (from the repository root)::

    python benchmarks/bench_full_frame.py --out runs/full_frame                 # synthesise, train, compare
    python benchmarks/bench_full_frame.py --out runs/full_frame --model DIR     # compare with a trained model
    python benchmarks/bench_full_frame.py --data CTC/Fluo-N2DL-HeLa --sequence 01 --model DIR   # real data
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The small configuration trained on the synthetic videos (cells of radius 12–20 px in 256 × 256 frames).
SMALL = {
    "data": {"dataset": "synthetic", "tile_size": [128, 128], "border_band": 0, "train_sequences": ["01"]},
    "model": {"levels": 5, "filters": 16},
    "loss": {"neighbour_radius": 30},
    "inference": {"tile_overlap": 64},
    "postprocessing": {"min_size": 100},
    "training": {"learning_rate": 5e-4, "learning_rate_final": 5e-5, "checkpoint_every": 500, "image_every": 0},
}


def train_small(data: Path, model_dir: Path, iterations: int) -> None:
    from rshn_tf.config import Config, apply_dict, validate
    from rshn_tf.training import train

    config = apply_dict(Config(), SMALL, "bench_full_frame")
    config.data.dataset_dir = str(data)
    config.training.iterations = iterations
    validate(config)
    began = time.perf_counter()
    result = train(config, model_dir, progress=False)
    print(f"trained {result.step} iterations in {time.perf_counter() - began:.0f} s -> {model_dir}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/full_frame"), help="working folder")
    parser.add_argument("--data", type=Path, help="CTC dataset folder (default: a synthetic one in --out)")
    parser.add_argument("--sequence", default="02", help="sequence to predict and score")
    parser.add_argument("--model", type=Path, help="trained model folder (default: train the small one)")
    parser.add_argument("--iterations", type=int, default=3000, help="training iterations of the small model")
    parser.add_argument("--frames", type=int, default=40, help="frames of the synthetic videos")
    args = parser.parse_args(argv)

    import numpy as np

    from data_io.synthetic import write_synthetic_dataset
    from rshn_tf.evaluation import evaluate_result
    from rshn_tf.predict_folder import predict

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        data = args.out / "Synthetic"
        if not data.exists():
            write_synthetic_dataset(data, frames=args.frames, size=(256, 256), seed=7)
    model = args.model
    if model is None:
        model = args.out / "model"
        if not (model / "weights.best.weights.h5").exists():
            train_small(data, model, args.iterations)
    seq = data / args.sequence
    scores, timings = {}, {}
    for mode in ("tiles", "full_frame"):
        out = args.out / f"{args.sequence}_RES_{mode}"
        result = predict(model, seq, out, overrides=[f"inference.full_frame={'true' if mode == 'full_frame' else 'false'}"],
                         save_embeddings=args.out / f"emb_{mode}", progress=False)
        timings[mode] = result.timings
        scores[mode] = evaluate_result(out, data / f"{args.sequence}_GT")
        print(f"{mode:10}: SEG {scores[mode]['SEG']:.4f}  TRA {scores[mode]['TRA']:.4f}  DET {scores[mode]['DET']:.4f}"
              f"  network {result.timings['network'] / result.num_frames:.3f} s/frame, post-processing "
              f"{result.postprocessing_seconds / result.num_frames:.3f} s/frame", flush=True)
    for key in ("SEG", "TRA", "DET"):
        print(f"full_frame - tiles {key}: {scores['full_frame'][key] - scores['tiles'][key]:+.4f}")
    cosines = []
    for path in sorted((args.out / "emb_tiles").glob("pair_*.npy")):
        a = np.load(path)
        b = np.load(args.out / "emb_full_frame" / path.name)
        cosines.append(np.sum(a * b, axis=-1).ravel())
    cos = np.concatenate(cosines)
    print(f"embeddings tiles vs full frame: mean cosine {cos.mean():.4f}, 1st percentile {np.percentile(cos, 1):.4f}, "
          f"fraction of pixels with cosine < 0.9: {np.mean(cos < 0.9):.4f}")
    print(f"(load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; 2 shared cores)")


if __name__ == "__main__":
    main()
