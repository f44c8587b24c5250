"""Tests of rshn_tf.label_store: frames on disk, written atomically, read whole or by box."""

from __future__ import annotations

import numpy as np
import pytest

from rshn_tf.label_store import LabelStore, MemoryLabelStore


def test_frames_round_trip_whole_and_by_box(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 50, size=(6, 20, 30)).astype(np.int32)
    store = LabelStore(tmp_path / "frames", open_maps=2)
    for t, frame in enumerate(frames):
        store.write(t, frame)
    store.sync()
    assert len(store) == 6 and sorted(p.name for p in (tmp_path / "frames").iterdir()) == [
        f"{t:06d}.npy" for t in range(6)]  # no temporary files left
    box = (slice(3, 11), slice(7, 29))
    for t in [0, 5, 1, 0, 3, 5]:  # more frames than open maps
        np.testing.assert_array_equal(store.read(t), frames[t])
        np.testing.assert_array_equal(store.read_box(t, box), frames[t][box])
    store.write(1, frames[2])  # a rewritten frame is read back new, also through an open map
    np.testing.assert_array_equal(store.read_box(1, box), frames[2][box])
    with pytest.raises(IndexError):
        store.read(6)
    again = LabelStore(tmp_path / "frames", count=4)  # reopened after a checkpoint that stored 4 frames
    assert len(again) == 4
    np.testing.assert_array_equal(again.read(3), frames[3])


def test_memory_store_takes_frames_in_order():
    store = MemoryLabelStore()
    store.write(0, np.ones((2, 2)))
    with pytest.raises(IndexError):
        store.write(2, np.ones((2, 2)))
    store.write(0, np.zeros((2, 2)))
    assert store.count == 1 and store.read(0).dtype == np.int32 and store.read(0).max() == 0
