"""The MICCAI 2018 variant end to end: a tiny ``loss.variant: miccai2018`` model trained with ``rshn train`` on the
synthetic data, then ``rshn predict`` and ``rshn postprocess`` with the background rule of the MICCAI submission
(docs/fidelity.md §9.1): background vector = median embedding of the first frame pair, foreground where the dot product
< 0.95."""

from __future__ import annotations

import numpy as np
import pytest

from data_io.ctc import read_tiff, write_tiff
from rshn_tf.cli import main
from rshn_tf.clustering import cluster_tiles, first_pair_background, foreground_mask
from rshn_tf.config import Config, load_config
from rshn_tf.postprocess import run_postprocess

MICCAI_YAML = """\
data:
  train_sequences: ["01"]
  tile_size: [64, 64]
  sequence_length: 3
  border_band: 0
  num_workers: 1
model: {levels: 3, filters: 8, embedding_size: 8}
loss: {variant: miccai2018, max_instances: 4, neighbour_radius: 20}
inference: {tile_overlap: 32}
training: {iterations: 30, checkpoint_every: 30, log_every: 10, image_every: 0}
postprocessing: {min_size: 1, num_seeds: 16}
tracking: {resample_interpolation: nearest}
"""


def test_the_variant_selects_the_background_rule():
    config = Config()
    assert config.background_rule == "fixed"
    config.loss.variant = "miccai2018"
    assert config.background_rule == "first_pair_median"
    config.postprocessing.background_rule = "fixed"
    assert config.background_rule == "fixed"
    config.loss.variant = "paper"
    config.postprocessing.background_rule = "first_pair_median"
    assert config.background_rule == "first_pair_median"


def test_dot_product_rule_by_hand():
    embeddings = np.zeros((1, 1, 4, 3), np.float32)
    embeddings[0, 0] = [[1, 0, 0], [0.96, 0.28, 0], [0.8, 0.6, 0], [0, 0, 0]]
    background = np.array([1.0, 0.0, 0.0])
    # dots 1, 0.96, 0.8 and padding: only the third pixel is foreground (dot < 0.95)
    assert foreground_mask(embeddings, 0.5, background, 0.95)[0, 0].tolist() == [False, False, True, False]
    # the fixed rule calls it background (cos² with e_b = 0.64 > 0.5)
    assert foreground_mask(embeddings, 0.5)[0, 0].tolist() == [False, False, False, False]
    # a background vector that is not e_b: (0, 1, 0) makes the first two pixels foreground (dots 0, 0.28)
    assert foreground_mask(embeddings, 0.5, np.array([0.0, 1.0, 0.0]), 0.95)[0, 0].tolist() == [
        True, True, True, False]
    tiles = [np.arange(24, dtype=np.float32).reshape(2, 2, 2, 3), np.zeros((2, 1, 1, 3), np.float32)]
    np.testing.assert_array_equal(first_pair_background(tiles), [10.5, 11.5, 12.5])  # padding left out


@pytest.mark.slow
def test_a_trained_miccai_model_predicts_with_the_median_background(synthetic_dataset, tmp_path):
    config_path = tmp_path / "miccai.yaml"
    config_path.write_text(MICCAI_YAML)
    model = tmp_path / "model"
    assert main(["train", str(config_path), "--data", str(synthetic_dataset), "--model-dir", str(model)]) == 0
    video = tmp_path / "01"
    video.mkdir()
    for t in range(4):
        write_tiff(video / f"t{t:03d}.tif", read_tiff(synthetic_dataset / "01" / f"t{t:03d}.tif"))
    emb, out = tmp_path / "emb", tmp_path / "01_RES"
    assert main(["predict", "--model", str(model), "--input", str(video), "--output", str(out),
                 "--set", "inference.full_frame=true", "--save-embeddings", str(emb)]) == 0
    config = load_config(emb / "config.yaml")
    assert config.loss.variant == "miccai2018" and config.postprocessing.background_rule is None
    assert config.background_rule == "first_pair_median"

    # rshn postprocess of the saved embeddings reproduces predict, and its background vector is the median of the
    # first pair's tiles (128 x 128 grid, tiles of 64 at offsets 0, 32, 64), computed here independently
    again = tmp_path / "again"
    processor = run_postprocess(emb, again, config, (128, 128))
    first = np.load(emb / "pair_000.npy")
    tiles = [first[:, y:y + 64, x:x + 64] for y in (0, 32, 64) for x in (0, 32, 64)]
    median = np.median(np.concatenate([t.reshape(-1, 8) for t in tiles]).astype(np.float64), axis=0)
    np.testing.assert_array_equal(processor.background, median)
    for name in sorted(p.name for p in out.glob("mask*.tif")):
        np.testing.assert_array_equal(read_tiff(out / name), read_tiff(again / name))

    # the pixels of the first pair classified by the dot product with the median (min_size 1: every foreground
    # pixel of a tile keeps a label), and the fixed e_b rule would classify many of them otherwise
    dots = np.stack(tiles).astype(np.float64) @ median
    miccai = dots < 0.95
    assert 0.05 < miccai.mean() < 0.95
    fixed = foreground_mask(np.stack(tiles), config.postprocessing.background_threshold)
    assert np.count_nonzero(fixed != miccai) > 0.05 * miccai.size
    labels = cluster_tiles(tiles, config.postprocessing, seed=0, background=processor.background)
    np.testing.assert_array_equal(np.stack(labels) > 0, miccai)
