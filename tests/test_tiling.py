"""Tests of the tile grid, tile extraction and tile merging (rshn_tf.tiling)."""

from __future__ import annotations

import numpy as np
import pytest

from rshn_tf.config import PostprocessingConfig
from rshn_tf.tiling import axis_offsets, extract_tiles, merge_tiles, relabel_consecutive, tile_grid
from tests import cases


@pytest.mark.parametrize("size, expected", [
    (256, [0]), (512, [0, 128, 256]), (384, [0, 128]), (700, [0, 128, 256, 384, 444]),
    (1100, [0, 128, 256, 384, 512, 640, 768, 844]), (200, [-28]), (257, [0, 1]),
])
def test_axis_offsets(size, expected):
    assert axis_offsets(size, 256, 128) == expected


@pytest.mark.parametrize("shape, count", [((256, 256), 1), ((512, 512), 9), ((700, 1100), 40), ((384, 512), 6)])
def test_tile_counts_of_the_paper_datasets(shape, count):
    # docs/fidelity.md §5.3: DIC 1, GOWT1/SIM+ 9, N2DL-HeLa 40 (8 x 5), U373 6
    assert len(tile_grid(shape, (256, 256), 128)) == count


def test_tiles_enumerate_y_fastest_and_know_their_outer_edges():
    grid = tile_grid((512, 384), (256, 256), 128)
    assert [t.offset for t in grid.tiles] == [(0, 0), (128, 0), (256, 0), (0, 128), (128, 128), (256, 128)]
    assert grid.tiles[0].outer == (True, False, True, False)
    assert grid.tiles[1].outer == (False, False, True, False)
    assert grid.tiles[5].outer == (False, True, False, True)


def test_an_axis_smaller_than_the_tile_is_centred_and_padded():
    grid = tile_grid((40, 96), (64, 64), 32)
    assert [t.offset for t in grid.tiles] == [(-12, 0), (-12, 32)]
    tile = grid.tiles[1]
    assert tile.outer == (True, True, False, True)
    image = np.arange(40 * 96 * 3, dtype=np.float32).reshape(40, 96, 3)
    cut = tile.extract(image, pad_value=np.array([1.0, 0.0, 0.0], np.float32))
    assert cut.shape == (64, 64, 3)
    np.testing.assert_array_equal(cut[12:52], image[:, 32:96])
    np.testing.assert_array_equal(cut[:12], np.broadcast_to([1.0, 0.0, 0.0], (12, 64, 3)))
    np.testing.assert_array_equal(cut[52:], np.broadcast_to([1.0, 0.0, 0.0], (12, 64, 3)))
    np.testing.assert_array_equal(tile.crop(cut), image[:, 32:96])


def test_extract_tiles_with_leading_and_trailing_axes():
    grid = tile_grid((64, 96), (64, 64), 32)
    pair = np.random.default_rng(0).normal(size=(2, 64, 96, 5)).astype(np.float32)
    tiles = extract_tiles(pair, grid, pad_value=0.0, axis=1)
    assert tiles.shape == (2, 2, 64, 64, 5) and tiles.dtype == np.float32
    np.testing.assert_array_equal(tiles[1], pair[:, :, 32:96])
    with pytest.raises(ValueError, match="does not match"):
        extract_tiles(pair, grid, axis=0)


@pytest.mark.parametrize("mode", ["instance", "blob"])
@pytest.mark.parametrize("case", cases.catalogue(), ids=lambda c: c.name)
def test_perfect_tiles_merge_back_to_the_frame_pair(case, mode):
    grid = tile_grid(cases.SHAPE, cases.TILE, cases.OVERLAP)
    config = PostprocessingConfig(merge_mode=mode)
    for t in range(case.observed.shape[0] - 1):
        pair = case.observed[t:t + 2]
        merged = merge_tiles(cases.tile_labels_of_pair(pair, grid), grid, cases.SHAPE, config)
        assert merged.dtype == np.int32 and merged.shape == (2,) + cases.SHAPE
        assert cases.same_partition(pair, merged), f"{case.name} pair {t}"
        ids = np.unique(merged)
        np.testing.assert_array_equal(ids, np.arange(ids.size))  # consecutive 0..K


def _two_tiles():
    return tile_grid(cases.SHAPE, cases.TILE, cases.OVERLAP)


def test_the_larger_candidate_wins_and_a_mostly_covered_smaller_one_is_dropped():
    grid = _two_tiles()
    t0 = np.zeros((2, 64, 64), np.int32)
    t1 = np.zeros((2, 64, 64), np.int32)
    t0[:, 20:30, 40:50] = 1          # 200 px in image x 40..49
    t1[:, 20:31, 8:19] = 4           # the same cell seen by tile 1 (offset 32), 242 px, image x 40..50
    merged = merge_tiles([t0, t1], grid, cases.SHAPE, PostprocessingConfig())
    expected = np.zeros((2,) + cases.SHAPE, np.int32)
    expected[:, 20:31, 40:51] = 1
    np.testing.assert_array_equal(merged, expected)


def test_a_smaller_candidate_overlapping_less_than_the_fraction_keeps_its_free_pixels():
    grid = _two_tiles()
    t0 = np.zeros((2, 64, 64), np.int32)
    t1 = np.zeros((2, 64, 64), np.int32)
    t0[:, 20:30, 40:50] = 1          # 200 px
    t1[:, 20:30, 15:23] = 1          # image x 47..54: 160 px, 60 on the larger one (37.5 %)
    merged = merge_tiles([t0, t1], grid, cases.SHAPE, PostprocessingConfig(merge_overlap_fraction=0.5))
    expected = np.zeros((2,) + cases.SHAPE, np.int32)
    expected[:, 20:30, 40:50] = 1
    expected[:, 20:30, 50:55] = 2
    np.testing.assert_array_equal(merged, expected)
    merged = merge_tiles([t0, t1], grid, cases.SHAPE, PostprocessingConfig(merge_overlap_fraction=0.3))
    expected[expected == 2] = 0
    np.testing.assert_array_equal(merged, expected)


def test_instances_touching_inner_edges_are_dropped_and_outer_edges_kept():
    grid = _two_tiles()
    t0 = np.zeros((2, 64, 64), np.int32)
    t1 = np.zeros((2, 64, 64), np.int32)
    t0[0, 50:60, 58:64] = 1          # touches tile 0's right edge (inner): dropped
    t0[1, 0:5, 0:5] = 2              # touches the image's top/left edges (outer) in frame 1 only: kept
    t1[0, 5:10, 0:4] = 3             # touches tile 1's left edge (inner): dropped
    t1[0, 30:40, 60:64] = 4          # touches the image's right edge: kept
    merged = merge_tiles([t0, t1], grid, cases.SHAPE, PostprocessingConfig())
    expected = np.zeros((2,) + cases.SHAPE, np.int32)
    expected[0, 30:40, 92:96] = 1     # larger (40 px) than the corner instance (25 px): numbered first
    expected[1, 0:5, 0:5] = 2
    np.testing.assert_array_equal(merged, expected)


def test_padding_of_a_small_axis_is_ignored_when_merging():
    grid = tile_grid((40, 96), (64, 64), 32)
    t0 = np.zeros((2, 64, 64), np.int32)
    t0[:, 0:12] = 5                  # junk in the padding above the image
    t0[:, 20:30, 10:20] = 1          # image rows 8..17
    t1 = np.zeros((2, 64, 64), np.int32)
    merged = merge_tiles([t0, t1], grid, (40, 96), PostprocessingConfig())
    expected = np.zeros((2, 40, 96), np.int32)
    expected[:, 8:18, 10:20] = 1
    np.testing.assert_array_equal(merged, expected)


def test_blob_mode_ignore_band_skips_instances_only_inside_the_band():
    grid = _two_tiles()
    t0 = np.zeros((2, 64, 64), np.int32)
    t0[:, 10:20, 50:60] = 1          # reaches into the 8-px band along tile 0's right edge (x >= 56): kept
    t0[:, 30:40, 57:62] = 2          # wholly within the band (x 57..61 >= 56): ignored
    t1 = np.zeros((2, 64, 64), np.int32)
    config = PostprocessingConfig(merge_mode="blob", merge_ignore_border=8)
    merged = merge_tiles([t0, t1], grid, cases.SHAPE, config)
    expected = np.zeros((2,) + cases.SHAPE, np.int32)
    expected[:, 10:20, 50:60] = 1
    np.testing.assert_array_equal(merged, expected)
    # the same band on the left inner edge of tile 1 (the code excludes only one column there; we do not)
    t1[:, 30:40, 2:7] = 3            # image x 34..38, inside tile 1's left band; tile 0 does not see it
    merged = merge_tiles([np.zeros_like(t0), t1], grid, cases.SHAPE, config)
    assert not merged.any()


def test_blob_mode_larger_blob_replaces_the_old_one():
    grid = _two_tiles()
    t0 = np.zeros((2, 64, 64), np.int32)
    t0[:, 10:20, 36:46] = 1          # tile 0 sees one cell (200 px)
    t1 = np.zeros((2, 64, 64), np.int32)
    t1[:, 10:20, 4:9] = 1            # tile 1 sees two touching cells forming one larger blob (240 px)
    t1[:, 10:20, 9:16] = 2
    merged = merge_tiles([t0, t1], grid, cases.SHAPE, PostprocessingConfig(merge_mode="blob"))
    expected = np.zeros((2,) + cases.SHAPE, np.int32)
    expected[:, 10:20, 36:41] = 1
    expected[:, 10:20, 41:48] = 2
    np.testing.assert_array_equal(merged, expected)
    # paper mode compares single instances: the 200-px cell beats the 140-px one (100 px of it lie on the
    # larger cell, more than half) and the 100-px one
    merged = merge_tiles([t0, t1], grid, cases.SHAPE, PostprocessingConfig(merge_mode="instance"))
    expected = np.zeros((2,) + cases.SHAPE, np.int32)
    expected[:, 10:20, 36:46] = 1
    np.testing.assert_array_equal(merged, expected)


def reference_instance_merge(tile_labels, grid, fraction):
    """The paper's merge written plainly: whole-image masks per candidate, largest candidate first."""
    shape = grid.image_shape
    candidates = []
    for tile, labels in zip(grid.tiles, tile_labels):
        part = tile.crop(labels, axis=1)
        h, w = part.shape[1:]
        top, bottom, left, right = tile.outer
        for label in np.unique(part)[1:]:
            mask = part == label
            rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
            if ((rows[0] == 0 and not top) or (rows[-1] == h - 1 and not bottom)
                    or (cols[0] == 0 and not left) or (cols[-1] == w - 1 and not right)):
                continue
            whole = np.zeros((2,) + shape, bool)
            whole[(slice(None),) + tile.image_slice] = mask
            candidates.append((-int(mask.sum()), tile.index, int(label), whole))
    candidates.sort(key=lambda c: c[:3])
    out = np.zeros((2,) + shape, np.int32)
    next_id = 1
    for negative_area, _, _, whole in candidates:
        occupied = out[whole][out[whole] > 0]
        if occupied.size and max(np.count_nonzero(occupied == v) for v in set(occupied.tolist())) > \
                fraction * -negative_area:
            continue
        out[whole & (out == 0)] = next_id
        next_id += 1
    return relabel_consecutive(out)


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_instance_merge_equals_a_plain_reference_on_conflicting_tiles(fraction):
    # a dense video cut into 5 x 5 overlapping tiles; every tile sees its instances grown or shrunk at random, so
    # candidates of neighbouring tiles disagree: candidates are dropped, pasted whole, pasted on their free pixels,
    # decided by the largest of several kept instances under them, and (fraction 0.5) left without a free pixel
    from scipy import ndimage

    video = cases.drifting_disks((160, 160), 60, 2, radius=(6.0, 11.0), seed=2)
    grid = tile_grid((160, 160), (64, 64), 40)
    rng = np.random.default_rng(2)
    tiles = []
    for labels in cases.tile_labels_of_pair(video, grid):
        grown = ndimage.grey_dilation(labels, size=(1, 11, 11))
        shrunk = np.where(ndimage.grey_erosion(labels, size=(1, 11, 11)) == labels, labels, 0)
        pick = rng.integers(3, size=int(labels.max()) + 1)[labels]
        tiles.append(np.select([pick == 1, pick == 2], [grown, shrunk], labels).astype(np.int32))
    merged = merge_tiles(tiles, grid, (160, 160), PostprocessingConfig(merge_overlap_fraction=fraction))
    np.testing.assert_array_equal(merged, reference_instance_merge(tiles, grid, fraction))
    assert merged.max() > 30


def test_merge_validates_its_inputs():
    grid = _two_tiles()
    with pytest.raises(ValueError, match="grid"):
        merge_tiles([np.zeros((2, 64, 64), int)] * 2, grid, (64, 90), PostprocessingConfig())
    with pytest.raises(ValueError, match="2 tiles"):
        merge_tiles([np.zeros((2, 64, 64), int)], grid, cases.SHAPE, PostprocessingConfig())
    with pytest.raises(ValueError, match="tile 0"):
        merge_tiles([np.zeros((2, 60, 64), int)] * 2, grid, cases.SHAPE, PostprocessingConfig())


def test_relabel_consecutive():
    np.testing.assert_array_equal(relabel_consecutive(np.array([[0, 7, 7], [3, 0, 9]])), [[0, 2, 2], [1, 0, 3]])
