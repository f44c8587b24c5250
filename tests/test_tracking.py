"""Tests of pair linking and lineage finalisation (rshn_tf.tracking)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rshn_tf.config import TrackingConfig
from rshn_tf.label_store import LabelStore, MemoryLabelStore
from rshn_tf.tracking import PairTracker, finalize_stream, finalize_tracks, greedy_iou_matching, overlap_counts
from tests import cases, legacy_tracking


def run_tracking(video: np.ndarray, border_band: int = 0, seed: int = 0, **overrides) -> tuple[np.ndarray, np.ndarray]:
    config = TrackingConfig(**overrides)
    tracker = PairTracker(config)
    for pair in cases.pairs_from_video(video, seed=seed):
        tracker.add_pair(pair)
    return finalize_tracks(tracker.labels, config, border_band)


@pytest.mark.parametrize("case", cases.catalogue(), ids=lambda c: c.name)
def test_catalogue_case_gives_the_expected_labels_and_lineage(case):
    labels, tracks = run_tracking(case.observed, case.border_band, **case.tracking)
    got_labels, got_tracks = cases.canonical(labels, tracks)
    want_labels, want_tracks = cases.canonical(case.expected, case.tracks)
    np.testing.assert_array_equal(got_tracks, want_tracks)
    np.testing.assert_array_equal(got_labels, want_labels)


def test_catalogue_results_do_not_depend_on_cluster_label_order():
    case = cases.false_split()
    a = cases.canonical(*run_tracking(case.observed, seed=1))
    b = cases.canonical(*run_tracking(case.observed, seed=7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_overlap_counts_match_a_brute_force_count():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 6, size=(17, 23))
    b = rng.integers(0, 9, size=(17, 23)) * 3
    ids_a, ids_b, counts = overlap_counts(a, b)
    expected = {}
    for x, y in zip(a.ravel().tolist(), b.ravel().tolist()):
        expected[(x, y)] = expected.get((x, y), 0) + 1
    assert dict(zip(zip(ids_a.tolist(), ids_b.tolist()), counts.tolist())) == expected
    assert list(zip(ids_a.tolist(), ids_b.tolist())) == sorted(expected)


def test_greedy_matching_takes_the_largest_iou_first_and_respects_the_threshold():
    prev = np.zeros((10, 10), int)
    cur = np.zeros((10, 10), int)
    prev[0:4, 0:5] = 1      # 20 px
    prev[0:4, 5:7] = 2      # 8 px
    cur[0:4, 1:7] = 7       # 24 px: IoU with 1 = 16/28, with 2 = 8/24
    cur[0:4, 0:1] = 8       # 4 px: IoU with 1 = 4/20 = 0.2 < 0.25
    cur[8:10, 8:10] = 9     # new cell over background
    mapping = greedy_iou_matching(prev, cur, 0.25)
    # background pairs first (IoU ~ 0.9), then 7 -> 1; 8 cannot take 1 (used) and 2 does not overlap it
    assert mapping == {0: 0, 7: 1}
    # a per-row argmax without greedy exclusion would also map 8 -> 1; a lower threshold lets 8 take nothing else
    assert greedy_iou_matching(prev, cur, 0.1) == {0: 0, 7: 1}


def test_tracker_gives_new_ids_to_unmatched_instances_and_never_reuses_ids():
    v = np.zeros((4, 20, 20), np.int32)
    v[0:2, 2:6, 2:6] = 1          # ends after frame 1
    v[:, 10:14, 10:14] = 2
    v[2:4, 2:6, 14:18] = 3        # appears in frame 2
    tracker = PairTracker(TrackingConfig())
    for pair in cases.pairs_from_video(v):
        tracker.add_pair(pair)
    stack = tracker.labels
    first_ids = set(np.unique(stack[0])) - {0}
    new_id = int(stack[2, 3, 15])
    assert new_id not in first_ids and new_id > max(first_ids)
    assert stack[2, 11, 11] == stack[0, 11, 11]   # the stationary cell keeps its id


def test_tracker_rejects_pairs_of_the_wrong_shape():
    tracker = PairTracker(TrackingConfig())
    with pytest.raises(ValueError, match="shape"):
        tracker.add_pair(np.zeros((3, 4, 4), int))
    tracker.add_pair(np.zeros((2, 4, 4), int))
    with pytest.raises(ValueError, match="does not match"):
        tracker.add_pair(np.zeros((2, 5, 4), int))


def test_short_track_with_parent_is_kept():
    # mother 0..3 divides in the last frame: both daughters live one frame but have a parent
    v = np.zeros((5,) + cases.SHAPE, np.int32)
    for t in range(4):
        cases.paint_disk(v, t, 1, 32, 40, 8)
    cases.paint_disk(v, 4, 2, 32, 34, 6)
    cases.paint_disk(v, 4, 3, 32, 46, 6)
    labels, tracks = run_tracking(v)
    got = cases.canonical(labels, tracks)[1]
    np.testing.assert_array_equal(got, [[1, 0, 3, 0], [2, 4, 4, 1], [3, 4, 4, 1]])


def test_parent_dilation_finds_a_parent_separated_by_a_gap():
    # daughter B appears one column beside where the mother was; only a disk of diameter 5 (radius 2) reaches it
    v = np.zeros((6, 40, 40), np.int32)
    v[0:3, 10:20, 10:20] = 1
    v[3:6, 10:20, 10:20] = 2          # daughter A in the mother's place
    v[3:6, 10:20, 21:30] = 3          # daughter B, gap at column 20
    for dilation, parent_of_b in ((0, 0), (3, 0), (5, 1)):
        labels, tracks = finalize_tracks(v, TrackingConfig(parent_dilation=dilation))
        _, got = cases.canonical(labels, tracks)
        np.testing.assert_array_equal(got, [[1, 0, 2, 0], [2, 3, 5, 1], [3, 3, 5, parent_of_b]])


def test_parent_search_window_limits_how_far_back_the_parent_is_searched():
    v = np.zeros((8, 30, 30), np.int32)
    v[0:3, 5:15, 5:15] = 1          # ends in frame 2
    v[6:8, 5:15, 5:15] = 2          # starts in frame 6 at the same place: 3 frames gap
    v[:, 20:25, 20:25] = 3
    for frames, parent in ((2, 0), (8, 1)):
        labels, tracks = finalize_tracks(v, TrackingConfig(parent_search_frames=frames))
        _, canon = cases.canonical(labels, tracks)
        row = canon[canon[:, 1] == 6][0]
        assert row[3] == parent


def test_parent_iou_matches_a_float64_reference():
    # child mask C (first frame 3) replicated over k = 3 frames vs parent P in frames 0..2: IoU = |C∩P|·3 / ...
    v = np.zeros((5, 30, 30), np.int32)
    v[0:3, 0:10, 0:10] = 1
    v[3:5, 8:12, 8:12] = 2     # 16 px, 4 px overlap with the parent box
    v[3:5, 0:5, 0:5] = 3       # keeps track 1's place: no lineage split influence on 2's parent
    inter = 3 * 4.0
    iou = inter / (3 * 16.0 + 3 * 100.0 - inter)
    for threshold, parent in ((iou - 1e-6, 1), (iou + 1e-6, 0)):
        labels, tracks = finalize_tracks(v, TrackingConfig(parent_iou_threshold=threshold))
        row = tracks[tracks[:, 0] == labels[3, 10, 10]][0]
        assert (row[3] != 0) == bool(parent)


def test_lineage_consistency_splits_a_parent_that_continues():
    # the mother keeps its id after a daughter buds off: CTC needs mother -> (continuation, daughter)
    v = np.zeros((6, 40, 40), np.int32)
    v[0:3, 10:20, 10:20] = 1
    v[3:6, 10:20, 10:16] = 1
    v[3:6, 10:20, 16:20] = 2
    labels, tracks = finalize_tracks(v, TrackingConfig())
    got_labels, got = cases.canonical(labels, tracks)
    np.testing.assert_array_equal(got, [[1, 0, 2, 0], [2, 3, 5, 1], [3, 3, 5, 1]])
    assert got_labels[5, 15, 12] == 2 and got_labels[5, 15, 18] == 3
    assert np.all(got_labels[:3][v[:3] == 1] == 1)


def test_lineage_consistency_moves_later_children_to_the_continuation():
    v = np.zeros((8, 40, 40), np.int32)
    v[0:2, 10:20, 10:20] = 1
    v[2:5, 10:20, 10:16] = 1
    v[5:8, 10:20, 13:16] = 1
    v[2:8, 10:20, 16:20] = 2        # first child, frame 2
    v[5:8, 10:20, 10:13] = 3        # second child, frame 5, budding off the mother's continuation
    labels, tracks = finalize_tracks(v, TrackingConfig())
    _, got = cases.canonical(labels, tracks)
    # 1: mother 0-1; frame 2: continuation (raster-first, x=10) = 2 and child = 3; frame 5: the second child
    # (x=10) is raster-first = 4, the continuation's continuation (x=13) = 5; both are children of 2
    np.testing.assert_array_equal(got, [[1, 0, 1, 0], [2, 2, 4, 1], [3, 2, 7, 1], [4, 5, 7, 2], [5, 5, 7, 2]])


def test_border_band_removal_splits_the_track():
    # a cell slides into the band for frame 3 only: the track is cut; the later piece gets a new id
    v = np.zeros((6, 40, 40), np.int32)
    xs = [10, 6, 3, 0, 3, 8]
    for t, x in enumerate(xs):
        v[t, 15:20, x:x + 3] = 1          # frame 3: x 0..2, wholly inside a 3-px band
    v[:, 30:35, 30:35] = 2
    labels, tracks = finalize_tracks(v, TrackingConfig(parent_search_frames=1), border_band=3)
    _, got = cases.canonical(labels, tracks)
    np.testing.assert_array_equal(got, [[1, 0, 2, 0], [2, 0, 5, 0], [3, 4, 5, 0]])
    assert not labels[3, 15:20, 0:3].any()


def test_a_track_that_vanishes_for_a_frame_is_split_into_contiguous_tracks():
    v = np.zeros((5, 20, 20), np.int32)
    v[[0, 1, 3, 4], 5:10, 5:10] = 1   # missing in frame 2 (e.g. lost by resampling)
    labels, tracks = finalize_tracks(v, TrackingConfig(parent_search_frames=1))
    _, got = cases.canonical(labels, tracks)
    np.testing.assert_array_equal(got, [[1, 0, 1, 0], [2, 3, 4, 0]])


def test_finalized_tracks_agree_with_the_masks():
    case = cases.enter_leave()
    labels, tracks = run_tracking(case.observed, case.border_band)
    for label, first, last, parent in tracks:
        present = [t for t in range(labels.shape[0]) if (labels[t] == label).any()]
        assert present == list(range(first, last + 1))
        if parent:
            assert tracks[tracks[:, 0] == parent][0, 2] < first
    assert sorted(np.unique(labels)[1:].tolist()) == sorted(tracks[:, 0].tolist())


def test_early_division_keeps_its_lineage_with_the_codes_first_frame_repair():
    case = cases.early_division()
    for code in (False, True):
        labels, tracks = run_tracking(case.observed, merge_first_frame_tracks=code)
        got = cases.canonical(labels, tracks)
        want = cases.canonical(case.expected, case.tracks)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


def test_first_frame_repair_is_the_codes_option_only():
    # cell A (frames 0-3) runs into cell B and vanishes; in frame 4 it overlaps B most. The paper's rule keeps A
    # (it never split off B); the code's rule relabels the short frame-0 track A to B, merging both masks.
    v = np.zeros((8, 40, 64), np.int32)
    for t in range(8):
        cases.paint_disk(v, t, 2, 20, 40, 8)
    for t, x in enumerate((15, 19, 23, 27)):
        cases.paint_disk(v, t, 1, 20, x, 6)
    labels, tracks = run_tracking(v)
    np.testing.assert_array_equal(cases.canonical(labels, tracks)[1], [[1, 0, 7, 0], [2, 0, 3, 0]])  # B is raster-first
    labels, tracks = run_tracking(v, merge_first_frame_tracks=True)
    got_labels, got = cases.canonical(labels, tracks)
    np.testing.assert_array_equal(got, [[1, 0, 7, 0]])
    np.testing.assert_array_equal(got_labels > 0, v > 0)


# --------------------------------------------------------------------------------------------------------------
# Streaming (issue 16): the tracker releases finished frames, the finalisation reads them back from disk


def stream_to_store(tracker, pairs, store):
    """Feed the pairs, writing every released frame to ``store``; returns the most frames the tracker held."""
    held = 0
    for pair in pairs:
        tracker.add_pair(pair)
        held = max(held, tracker.num_frames - store.count)
        for t, frame in tracker.release_finished():
            store.write(t, frame)
    for t, frame in tracker.release_all():
        store.write(t, frame)
    return held


@pytest.mark.parametrize("seed, border_band, overrides", [
    (0, 0, {}),
    (1, 3, {}),
    (2, 0, {"merge_search_frames": 2}),
    (3, 2, {"parent_dilation": 3, "parent_search_frames": 2}),
    (4, 0, {"min_track_length": 3, "merge_first_frame_tracks": True}),
    (5, 4, {"merge_search_frames": 1, "parent_search_frames": 1}),
])
def test_streaming_tracking_equals_the_whole_stack_reference(tmp_path, seed, border_band, overrides):
    """Byte for byte what the pre-issue-16 code (whole stack in memory, tests/legacy_tracking.py) gives, with the
    frames on disk and at most ``merge_search_frames`` + 3 of them in the tracker."""
    video = cases.messy_video(cases.SHAPE, cells=7, frames=24, seed=seed)
    config = TrackingConfig(**overrides)
    pairs = cases.pairs_from_video(video, seed=seed)
    legacy = legacy_tracking.PairTracker(config)
    for pair in pairs:
        legacy.add_pair(pair)
    want_labels, want_tracks = legacy_tracking.finalize_tracks(legacy.labels, config, border_band)
    assert (want_tracks[:, 3] > 0).any()  # the case has a lineage to get right
    store = LabelStore(tmp_path / "frames", open_maps=2)
    held = stream_to_store(PairTracker(config), pairs, store)
    assert held <= config.merge_search_frames + 3
    tracks, masks = finalize_stream(store, config, border_band)
    np.testing.assert_array_equal(tracks, want_tracks)
    got = [labels for _, labels in masks]
    assert len(got) == len(want_labels)
    for t, labels in enumerate(got):
        np.testing.assert_array_equal(labels, want_labels[t])


def test_tracker_state_round_trip_continues_identically():
    config = TrackingConfig(merge_search_frames=3)
    pairs = cases.pairs_from_video(cases.messy_video(cases.SHAPE, cells=6, frames=20, seed=7), seed=7)
    whole = MemoryLabelStore()
    stream_to_store(PairTracker(config), pairs, whole)
    first = PairTracker(config)
    resumed = MemoryLabelStore()
    for pair in pairs[:9]:
        first.add_pair(pair)
        for t, frame in first.release_finished():
            resumed.write(t, frame)
    numbers, frames = first.state()
    second = PairTracker(config)
    second.restore(json.loads(json.dumps(numbers)), [f.copy() for f in frames])
    first.add_pair(pairs[9])  # the first tracker goes on changing its own frames, not the restored copies
    stream_to_store(second, pairs[9:], resumed)
    assert resumed.count == whole.count == 20
    for t in range(20):
        np.testing.assert_array_equal(resumed.read(t), whole.read(t))


def test_the_whole_stack_is_gone_once_frames_are_released():
    tracker = PairTracker(TrackingConfig(merge_search_frames=0))
    for pair in cases.pairs_from_video(cases.messy_video(cases.SHAPE, cells=3, frames=5, seed=1)):
        tracker.add_pair(pair)
    assert tracker.labels.shape[0] == 5
    assert [t for t, _ in tracker.release_finished()] == [0, 1, 2]
    with pytest.raises(ValueError, match="released"):
        tracker.labels
    assert [t for t, _ in tracker.release_all()] == [3, 4]
