"""Tests for data_io.ctc: CTC sequence / result loading, checks and TRA+SEG merging."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_io.ctc import (
    MergeIssue,
    check_tracks,
    clip_tracks,
    list_sequences,
    load_frames,
    load_result,
    load_sequence,
    merge_seg_into_tra,
    read_tiff,
    read_track_file,
    write_tiff,
    write_time_window,
    write_track_file,
)
from rshn_tf.errors import RshnError

# ------------------------------------------------------------------------------------------------------------------
# Small synthetic CTC folders
# ------------------------------------------------------------------------------------------------------------------

H, W = 12, 14
# Track 1 lives through frames 0-2; track 2 divides after frame 0 into 3 and 4.
TRACKS = np.array([[1, 0, 2, 0], [2, 0, 0, 0], [3, 1, 2, 2], [4, 1, 2, 2]], dtype=np.int64)


def _synthetic_video() -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Raw frames (3, H, W) uint8, TRA markers matching TRACKS, and a SEG mask on frame 1 (labels unrelated)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(3, H, W), dtype=np.uint8)
    tra = np.zeros((3, H, W), dtype=np.uint16)
    tra[:, 2:4, 2:4] = 1
    tra[0, 7:9, 7:9] = 2
    tra[1:, 6:8, 6:8] = 3
    tra[1:, 9:11, 10:12] = 4
    seg = np.zeros((H, W), dtype=np.uint16)
    seg[1:5, 1:5] = 20  # covers marker 1
    seg[5:9, 5:9] = 7  # covers marker 3
    return frames, tra, {1: seg}


def _write_series(folder: Path, prefix: str, images, digits: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        write_tiff(folder / f"{prefix}{index:0{digits}d}.tif", image)


def _make_dataset(root: Path, *, raw: bool = True, tra: bool = True, seg: bool = True) -> Path:
    """Write a valid small CTC dataset folder ``root/DS`` with sequence 01 and return it."""
    frames, markers, seg_masks = _synthetic_video()
    dataset = root / "DS"
    if raw:
        _write_series(dataset / "01", "t", frames)
    if tra:
        _write_series(dataset / "01_GT" / "TRA", "man_track", markers)
        write_track_file(dataset / "01_GT" / "TRA" / "man_track.txt", TRACKS)
    if seg:
        (dataset / "01_GT" / "SEG").mkdir(parents=True, exist_ok=True)
        for t, mask in seg_masks.items():
            write_tiff(dataset / "01_GT" / "SEG" / f"man_seg{t:03d}.tif", mask)
    return dataset


# ------------------------------------------------------------------------------------------------------------------
# Synthetic: loading in the different GT situations
# ------------------------------------------------------------------------------------------------------------------


def test_load_synthetic_sequence_with_full_gt(tmp_path):
    dataset = _make_dataset(tmp_path)
    frames, tra, seg = _synthetic_video()
    sequence = load_sequence(dataset, "01")
    assert sequence.seq == "01" and sequence.dataset_dir == dataset and sequence.has_gt
    assert sequence.num_frames == 3 and sequence.shape == (H, W) and sequence.digits == 3
    assert sequence.frames.dtype == np.uint8 and np.array_equal(sequence.frames, frames)
    assert [path.name for path in sequence.frame_paths] == ["t000.tif", "t001.tif", "t002.tif"]
    assert sequence.tra.dtype == np.uint16 and np.array_equal(sequence.tra, tra)
    assert np.array_equal(sequence.tracks, TRACKS)
    assert list(sequence.seg) == [1] and np.array_equal(sequence.seg[1], seg[1])
    expected = tra.copy()
    expected[1][seg[1] == 20] = 1
    expected[1][seg[1] == 7] = 3
    assert sequence.merged.dtype == np.uint16 and np.array_equal(sequence.merged, expected)
    # Marker 4 got no SEG object, so frame 1 is not complete.
    assert sequence.complete_seg_frames == [] and sequence.unsegmented == {1: [4]}
    assert sequence.seg_frames_with_coverage(2 / 3) == [1] and sequence.seg_frames_with_coverage(0.7) == []
    assert sequence.merge_issues == [] and sequence.silver_seg == {}
    assert load_sequence(dataset, 1).seq == "01"


def test_complete_seg_frame_when_every_marker_is_segmented(tmp_path):
    dataset = _make_dataset(tmp_path)
    seg = read_tiff(dataset / "01_GT" / "SEG" / "man_seg001.tif")
    seg[9:12, 9:13] = 5  # now marker 4 is segmented too
    write_tiff(dataset / "01_GT" / "SEG" / "man_seg001.tif", seg)
    sequence = load_sequence(dataset, "01")
    assert sequence.complete_seg_frames == [1] and sequence.unsegmented == {1: []}
    assert np.array_equal(np.unique(sequence.merged[1][seg > 0]), [1, 3, 4])


def test_load_challenge_sequence_without_gt(tmp_path):
    dataset = _make_dataset(tmp_path, tra=False, seg=False)
    sequence = load_sequence(dataset, "01")
    assert not sequence.has_gt and sequence.tra is None and sequence.merged is None
    assert sequence.tracks.shape == (0, 4) and sequence.tracks.dtype == np.int64
    assert sequence.seg == {} and sequence.complete_seg_frames == []
    assert sequence.num_frames == 3 and sequence.shape == (H, W)


def test_load_tra_without_seg(tmp_path):
    dataset = _make_dataset(tmp_path, seg=False)
    sequence = load_sequence(dataset, "01")
    assert sequence.has_gt and sequence.seg == {} and sequence.complete_seg_frames == []
    assert np.array_equal(sequence.merged, sequence.tra) and sequence.merged is not sequence.tra


def test_load_gt_only_synthetic(tmp_path):
    dataset = _make_dataset(tmp_path, raw=False)
    sequence = load_sequence(dataset, "01", require_frames=False)
    assert sequence.frames is None and sequence.frame_paths == []
    assert sequence.num_frames == 3 and sequence.shape == (H, W) and sequence.digits == 3
    assert sequence.merged[1][2, 2] == 1


def test_seg_without_tra_keeps_file_labels(tmp_path):
    dataset = _make_dataset(tmp_path, tra=False)
    sequence = load_sequence(dataset, "01")
    assert not sequence.has_gt and sequence.merged is None
    assert np.array_equal(np.unique(sequence.seg[1]), [0, 7, 20])


def test_load_silver_relabels_to_tra_ids(tmp_path):
    dataset = _make_dataset(tmp_path)
    silver = np.zeros((3, H, W), dtype=np.uint16)
    silver[:, 1:5, 1:5] = 9  # track 1 in every frame
    silver[2, 9:12, 9:13] = 3  # track 4 on frame 2
    silver[0, 10:12, 0:2] = 4  # no marker there
    _write_series(dataset / "01_ST" / "SEG", "man_seg", silver)
    assert load_sequence(dataset, "01").silver_seg == {}
    sequence = load_sequence(dataset, "01", load_silver=True)
    assert sorted(sequence.silver_seg) == [0, 1, 2]
    assert set(np.unique(sequence.silver_seg[1])) == {0, 1}
    assert set(np.unique(sequence.silver_seg[2])) == {0, 1, 4}
    fresh = int(TRACKS[:, 0].max()) + 1
    assert set(np.unique(sequence.silver_seg[0])) == {0, 1, fresh}
    assert sequence.merge_issues == [MergeIssue(frame=0, source="ST", seg_label=4, kind="no_marker", new_id=fresh)]
    # The GT merge is unaffected by the silver truth.
    assert np.array_equal(sequence.merged, load_sequence(dataset, "01").merged)


def test_list_sequences(tmp_path):
    dataset = _make_dataset(tmp_path)
    _write_series(dataset / "02", "t", _synthetic_video()[0])
    (dataset / "03_GT" / "TRA").mkdir(parents=True)
    (dataset / "01_RES").mkdir()
    (dataset / "notes").mkdir()
    assert list_sequences(dataset) == ["01", "02"]
    assert list_sequences(dataset, require_frames=False) == ["01", "02", "03"]
    assert list_sequences(dataset, require_gt=True) == ["01"]
    assert list_sequences(dataset, require_frames=False, require_gt=True) == ["01", "03"]
    with pytest.raises(RshnError, match=r"missing_ds: dataset folder not found"):
        list_sequences(tmp_path / "missing_ds")


def test_load_frames_four_digits(tmp_path):
    frames = _synthetic_video()[0]
    _write_series(tmp_path / "01", "t", frames, digits=4)
    loaded, paths, digits = load_frames(tmp_path / "01")
    assert digits == 4 and [path.name for path in paths] == ["t0000.tif", "t0001.tif", "t0002.tif"]
    assert loaded.dtype == np.uint8 and np.array_equal(loaded, frames)


def test_writers_leave_no_partial_files(tmp_path):
    write_tiff(tmp_path / "a.tif", np.ones((3, 4), dtype=np.uint16))
    write_track_file(tmp_path / "t.txt", TRACKS[::-1])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.tif", "t.txt"]
    assert np.array_equal(read_track_file(tmp_path / "t.txt"), TRACKS)


# ------------------------------------------------------------------------------------------------------------------
# Merging conflicts
# ------------------------------------------------------------------------------------------------------------------


def test_merge_resolves_unmatched_and_duplicate_objects():
    tra = np.zeros((10, 12), dtype=np.uint16)
    tra[1:3, 1:3] = 5  # 4 px
    tra[6:8, 8:10] = 7
    seg = np.zeros_like(tra)
    seg[0:3, 0:3] = 1
    seg[1:3, 2:4] = 2
    seg[1:2, 1:2] = 6
    seg[8:10, 0:3] = 3  # touches no marker
    seg[5:9, 7:11] = 4  # covers marker 7
    # Pixels of marker 5: (1,1) in object 6, (2,1) in object 1, (1,2) and (2,2) in object 2: object 2 keeps id 5.
    relabelled, issues, next_id = merge_seg_into_tra(seg, tra, 100, frame=3, source="GT")
    lut = {1: 100, 2: 5, 3: 101, 4: 7, 6: 102}
    expected = np.zeros_like(seg)
    for label, new in lut.items():
        expected[seg == label] = new
    assert relabelled.dtype == np.uint16 and np.array_equal(relabelled, expected)
    assert next_id == 103
    assert issues == [
        MergeIssue(frame=3, source="GT", seg_label=1, kind="duplicate", new_id=100, marker=5, overlap=1),
        MergeIssue(frame=3, source="GT", seg_label=3, kind="no_marker", new_id=101),
        MergeIssue(frame=3, source="GT", seg_label=6, kind="duplicate", new_id=102, marker=5, overlap=1),
    ]


def test_merge_takes_marker_with_largest_overlap_and_breaks_ties_by_smaller_id():
    tra = np.zeros((4, 8), dtype=np.uint16)
    tra[0, 0:3] = 9
    tra[0, 3:4] = 2
    tra[2, 0:2] = 8
    tra[2, 2:4] = 6
    seg = np.zeros_like(tra)
    seg[0, 0:4] = 1  # 3 px of 9, 1 px of 2 -> 9
    seg[2, 0:4] = 2  # 2 px of 8, 2 px of 6 -> tie -> 6
    seg[3, 5:7] = 3
    relabelled, issues, next_id = merge_seg_into_tra(seg, tra, 50)
    assert relabelled[0, 0] == 9 and relabelled[2, 0] == 6 and relabelled[3, 5] == 50
    assert next_id == 51 and [issue.kind for issue in issues] == ["no_marker"]


def test_merge_of_empty_seg_frame():
    relabelled, issues, next_id = merge_seg_into_tra(np.zeros((3, 3), np.uint16), np.ones((3, 3), np.uint16), 4)
    assert not relabelled.any() and issues == [] and next_id == 4


def test_sequence_records_merge_issues_and_fresh_ids_above_tracks(tmp_path, caplog):
    dataset = _make_dataset(tmp_path)
    seg = read_tiff(dataset / "01_GT" / "SEG" / "man_seg001.tif")
    seg[0:2, 10:14] = 30  # no marker
    seg[4:5, 2:4] = 31  # below marker 1 (rows 2-3): no marker
    seg[3:4, 2:4] = 32  # 2 px of marker 1; object 20 keeps the other 2 px and wins the tie (smaller label)
    write_tiff(dataset / "01_GT" / "SEG" / "man_seg001.tif", seg)
    with caplog.at_level("WARNING", logger="data_io.ctc"):
        sequence = load_sequence(dataset, "01")
    first_fresh = int(TRACKS[:, 0].max()) + 1
    assert [(issue.seg_label, issue.kind, issue.new_id) for issue in sequence.merge_issues] == [
        (30, "no_marker", first_fresh), (31, "no_marker", first_fresh + 1), (32, "duplicate", first_fresh + 2)]
    assert sequence.merged[1][0, 10] == first_fresh and sequence.merged[1][3, 2] == first_fresh + 2
    assert sequence.merged[1][2, 2] == 1
    assert "3 GT SEG objects got fresh ids" in caplog.text and "2 overlap no TRA marker, 1 lost" in caplog.text


# ------------------------------------------------------------------------------------------------------------------
# Malformed folders: each error names the file or folder and the problem
# ------------------------------------------------------------------------------------------------------------------


def _break_missing_sequence(dataset: Path) -> None:
    shutil.rmtree(dataset / "01")


def _break_no_frames(dataset: Path) -> None:
    for path in (dataset / "01").iterdir():
        path.unlink()
    (dataset / "01" / "readme.txt").write_text("no frames here")


def _break_gap(dataset: Path) -> None:
    write_tiff(dataset / "01" / "t003.tif", read_tiff(dataset / "01" / "t000.tif"))
    (dataset / "01" / "t001.tif").unlink()


def _break_mixed_digits(dataset: Path) -> None:
    (dataset / "01" / "t002.tif").rename(dataset / "01" / "t0002.tif")


def _break_broken_tiff(dataset: Path) -> None:
    (dataset / "01" / "t001.tif").write_bytes(b"II*\x00 this is not really a tiff")


def _break_truncated_tiff(dataset: Path) -> None:
    path = dataset / "01" / "t002.tif"
    path.write_bytes(path.read_bytes()[:-40])


def _break_3d_frame(dataset: Path) -> None:
    write_tiff(dataset / "01" / "t001.tif", np.zeros((2, H, W), dtype=np.uint8))


def _break_frame_shape(dataset: Path) -> None:
    write_tiff(dataset / "01" / "t002.tif", np.zeros((H, W + 1), dtype=np.uint8))


def _break_frame_dtype(dataset: Path) -> None:
    write_tiff(dataset / "01" / "t001.tif", np.zeros((H, W), dtype=np.uint16))


def _write_tracks_text(dataset: Path, text: str) -> None:
    (dataset / "01_GT" / "TRA" / "man_track.txt").write_text(text)


def _break_track_line(dataset: Path) -> None:
    _write_tracks_text(dataset, "1 0 2 0\n2 0 0\n3 1 2 2\n4 1 2 2\n")


def _break_track_parent(dataset: Path) -> None:
    _write_tracks_text(dataset, "1 0 2 0\n2 0 0 0\n3 1 2 9\n4 1 2 2\n")


def _break_track_b_after_e(dataset: Path) -> None:
    _write_tracks_text(dataset, "1 2 0 0\n2 0 0 0\n3 1 2 2\n4 1 2 2\n")


def _break_track_duplicate(dataset: Path) -> None:
    _write_tracks_text(dataset, "1 0 2 0\n2 0 0 0\n3 1 2 2\n4 1 2 2\n3 1 2 2\n")


def _break_track_parent_order(dataset: Path) -> None:
    _write_tracks_text(dataset, "1 0 2 0\n2 0 1 0\n3 1 2 2\n4 1 2 2\n")


def _break_track_past_end(dataset: Path) -> None:
    _write_tracks_text(dataset, "1 0 5 0\n2 0 0 0\n3 1 2 2\n4 1 2 2\n")


def _break_tra_labels(dataset: Path) -> None:
    tra = read_tiff(dataset / "01_GT" / "TRA" / "man_track002.tif")
    tra[tra == 4] = 0
    tra[0, 0] = 8
    write_tiff(dataset / "01_GT" / "TRA" / "man_track002.tif", tra)


def _break_tra_count(dataset: Path) -> None:
    (dataset / "01_GT" / "TRA" / "man_track002.tif").unlink()


def _break_tra_shape(dataset: Path) -> None:
    for path in sorted((dataset / "01_GT" / "TRA").glob("*.tif")):
        write_tiff(path, read_tiff(path)[:, :-1])


def _break_tra_float(dataset: Path) -> None:
    path = dataset / "01_GT" / "TRA" / "man_track001.tif"
    write_tiff(path, read_tiff(path).astype(np.float32))


def _break_seg_index(dataset: Path) -> None:
    write_tiff(dataset / "01_GT" / "SEG" / "man_seg007.tif", np.zeros((H, W), dtype=np.uint16))


def _break_seg_shape(dataset: Path) -> None:
    write_tiff(dataset / "01_GT" / "SEG" / "man_seg001.tif", np.zeros((H + 2, W), dtype=np.uint16))


def _break_no_tra_masks(dataset: Path) -> None:
    shutil.rmtree(dataset / "01")
    for path in (dataset / "01_GT" / "TRA").glob("*.tif"):
        path.unlink()


MALFORMED = {
    "missing sequence folder": (_break_missing_sequence, r"DS/01: raw frame folder of sequence 01 not found; training "
                                                         r"needs the frames tNNN\.tif of every sequence it uses "
                                                         r"\(check --data, data\.train_sequences and "
                                                         r"training\.validation_sequences\)$"),
    "no frames": (_break_no_frames, r"DS/01: no raw frame files \(expected names like t000\.tif\)$"),
    "gap": (_break_gap, r"DS/01: raw frame numbers are not contiguous from 0: t001\.tif is missing \(found 3 files, "
                        r"numbers 0\.\.3\)$"),
    "mixed digits": (_break_mixed_digits, r"DS/01: mixed digit counts in raw frame file names: t000\.tif \(3 digits\), "
                                          r"t0002\.tif \(4 digits\); use one width for all$"),
    "broken tiff": (_break_broken_tiff, r"DS/01/t001\.tif: unreadable TIFF \(no image pages; the file may be "
                                        r"truncated\)$"),
    "truncated tiff": (_break_truncated_tiff, r"DS/01/t002\.tif: unreadable TIFF \(\w+Error: "),
    "3-D frame": (_break_3d_frame, r"DS/01/t001\.tif: expected a 2-D image, got an array of shape \(2, 12, 14\)$"),
    "frame shape": (_break_frame_shape, r"DS/01/t002\.tif: frame shape \(12, 15\) differs from t000\.tif \(12, 14\)$"),
    "frame dtype": (_break_frame_dtype, r"DS/01/t001\.tif: frame dtype uint16 differs from t000\.tif \(uint8\)$"),
    "track line": (_break_track_line, r"TRA/man_track\.txt, line 2: expected 4 integers 'L B E P', got '2 0 0'$"),
    "unknown parent": (_break_track_parent, r"TRA/man_track\.txt: track 3 has parent 9, which is not a track label "
                                            r"in this file$"),
    "B > E": (_break_track_b_after_e, r"TRA/man_track\.txt: track 1 begins at frame 2 after it ends at frame 0 "
                                      r"\(B > E\)$"),
    "duplicate labels": (_break_track_duplicate, r"TRA/man_track\.txt: duplicate track labels \[3\]; every label must "
                                                 r"appear once$"),
    "parent ends late": (_break_track_parent_order, r"TRA/man_track\.txt: track 3 begins at frame 1 but its parent 2 "
                                                    r"ends at frame 1; a parent must end before its child begins$"),
    "track past end": (_break_track_past_end, r"TRA/man_track\.txt: track 1 ends at frame 5, but the sequence has "
                                              r"only 3 frames \(0\.\.2\)$"),
    "TRA labels": (_break_tra_labels, r"TRA/man_track002\.tif: labels \[8\] are in the mask but not alive at frame 2 "
                                      r"in man_track\.txt; labels \[4\] are alive at frame 2 in man_track\.txt "
                                      r"\(B <= 2 <= E\) but absent from the mask$"),
    "TRA count": (_break_tra_count, r"01_GT/TRA: 2 TRA masks but 3 raw frames in .*DS/01$"),
    "TRA shape": (_break_tra_shape, r"TRA/man_track000\.tif: mask shape \(12, 13\) does not match the raw frames "
                                    r"\(12, 14\) in .*DS/01$"),
    "TRA float": (_break_tra_float, r"TRA/man_track001\.tif: a label image must hold integers, got dtype float32$"),
    "SEG index": (_break_seg_index, r"SEG/man_seg007\.tif: SEG file for frame 7, but the sequence has only 3 frames "
                                    r"\(0\.\.2\)$"),
    "SEG shape": (_break_seg_shape, r"SEG/man_seg001\.tif: SEG shape \(14, 14\) does not match the sequence frames "
                                    r"\(12, 14\)$"),
    "no TRA masks": (_break_no_tra_masks, r"01_GT/TRA: no TRA mask files \(expected names like man_track000\.tif\)$"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_folder_raises_clear_error(tmp_path, case):
    breaker, pattern = MALFORMED[case]
    dataset = _make_dataset(tmp_path)
    breaker(dataset)
    with pytest.raises(RshnError, match=pattern):
        load_sequence(dataset, "01", require_frames=case != "no TRA masks")


def test_missing_dataset_and_empty_sequence_errors(tmp_path):
    with pytest.raises(RshnError, match=r"nowhere: dataset folder not found$"):
        load_sequence(tmp_path / "nowhere", "01")
    (tmp_path / "DS").mkdir()
    with pytest.raises(RshnError, match=r"DS: sequence 01 has neither a raw frame folder 01/ nor ground truth 01_GT/$"):
        load_sequence(tmp_path / "DS", "01", require_frames=False)
    with pytest.raises(RshnError, match=r"DS/02: sequence folder not found$"):
        load_frames(tmp_path / "DS" / "02")


def test_check_tracks_rejects_non_positive_labels(tmp_path):
    with pytest.raises(RshnError, match=r"x\.txt: track row '0 0 1 0' has label L = 0, which must be >= 1$"):
        check_tracks(np.array([[0, 0, 1, 0]]), tmp_path / "x.txt")
    with pytest.raises(RshnError, match=r"track row '2 -1 1 0' has first frame B = -1, which must be >= 0$"):
        check_tracks(np.array([[2, -1, 1, 0]]), tmp_path / "x.txt")
    check_tracks(np.zeros((0, 4), dtype=np.int64), tmp_path / "x.txt", num_frames=3)


# ------------------------------------------------------------------------------------------------------------------
# Time windows: clip_tracks and write_time_window
# ------------------------------------------------------------------------------------------------------------------

# Ten frames; the window used below is frames 3 ... 6 (start 3, stop 7).
WINDOW_TRACKS = np.array([
    [1, 0, 2, 0],  # entirely before the window: dropped
    [2, 7, 9, 0],  # begins at stop: dropped
    [3, 1, 4, 0],  # crosses start: B clipped to 3
    [4, 5, 9, 3],  # crosses stop (E clipped to 6); its parent 3 is in the window: kept
    [5, 3, 6, 1],  # exactly the window; its parent 1 ended before start: parent 0
    [6, 2, 8, 0],  # crosses both ends
    [7, 8, 8, 0],  # entirely after the window: dropped
    [8, 0, 3, 0],  # ends at start: one frame left
    [9, 6, 6, 8],  # begins at stop - 1; its parent 8 ends at start and is kept
], dtype=np.int64)
# By hand: B' = max(B, 3) - 3, E' = min(E, 6) - 3, in the input order.
WINDOW_EXPECTED = np.array([[3, 0, 1, 0], [4, 2, 3, 3], [5, 0, 3, 0], [6, 0, 3, 0], [8, 0, 0, 0], [9, 3, 3, 8]])
WINDOW_SEG_FRAMES = (1, 4, 6, 8)
WH, WW = 16, 20


def _window_marker(label: int) -> tuple[int, int]:
    """Top-left corner of the 2x2 TRA marker of track ``label`` (a 3 x 4 grid, 5 px apart)."""
    return 1 + 5 * ((label - 1) // 4), 1 + 5 * ((label - 1) % 4)


def _write_window_dataset(root: Path) -> Path:
    """Write ``root/DS/01``: ten random uint8 frames, TRA markers of WINDOW_TRACKS and SEG on WINDOW_SEG_FRAMES.

    Every SEG object is the 4x4 square around one alive marker, labelled 20 + track (frame 8 leaves track 4 out).
    """
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 255, size=(10, WH, WW), dtype=np.uint8)
    tra = np.zeros((10, WH, WW), dtype=np.uint16)
    seg = {t: np.zeros((WH, WW), dtype=np.uint16) for t in WINDOW_SEG_FRAMES}
    for label, begin, end, _ in WINDOW_TRACKS:
        y, x = _window_marker(int(label))
        tra[begin:end + 1, y:y + 2, x:x + 2] = label
        for t, mask in seg.items():
            if begin <= t <= end and (t, label) != (8, 4):
                mask[y - 1:y + 3, x - 1:x + 3] = 20 + label
    dataset = root / "DS"
    _write_series(dataset / "01", "t", frames)
    _write_series(dataset / "01_GT" / "TRA", "man_track", tra)
    write_track_file(dataset / "01_GT" / "TRA" / "man_track.txt", WINDOW_TRACKS)
    (dataset / "01_GT" / "SEG").mkdir()
    for t, mask in seg.items():
        write_tiff(dataset / "01_GT" / "SEG" / f"man_seg{t:03d}.tif", mask)
    return dataset


def test_clip_tracks_drops_clips_and_orphans_by_hand():
    clipped = clip_tracks(WINDOW_TRACKS, 3, 7)
    assert clipped.dtype == np.int64 and np.array_equal(clipped, WINDOW_EXPECTED)
    assert np.array_equal(clip_tracks(WINDOW_TRACKS, 0, 10), WINDOW_TRACKS)  # the whole sequence: unchanged
    # frames 7 ... 9: track 4 lost its parent 3 (ends at 4), track 2 begins at 0, track 7 is frame 1 only
    assert np.array_equal(clip_tracks(WINDOW_TRACKS, 7, 10), [[2, 0, 2, 0], [4, 0, 2, 0], [6, 0, 1, 0],
                                                               [7, 1, 1, 0]])
    assert clip_tracks(np.zeros((0, 4)), 0, 5).shape == (0, 4)
    assert clip_tracks([[1, 0, 2, 0]], 3, 5).shape == (0, 4)


def test_write_time_window_copies_frames_and_renumbers_ground_truth(tmp_path):
    dataset = _write_window_dataset(tmp_path / "src")
    out = tmp_path / "cut" / "W"
    assert write_time_window(dataset, "01", 3, 7, out) == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["W"]  # no temporary folder left
    assert sorted(p.name for p in out.iterdir()) == ["01", "01_GT"]
    source = load_sequence(dataset, "01")
    window = load_sequence(out, "01")
    assert window.num_frames == 4 and window.digits == 3 and window.shape == (WH, WW)
    assert [p.name for p in window.frame_paths] == ["t000.tif", "t001.tif", "t002.tif", "t003.tif"]
    for new, path in enumerate(window.frame_paths):
        assert path.read_bytes() == (dataset / "01" / f"t{3 + new:03d}.tif").read_bytes()
    assert np.array_equal(window.frames, source.frames[3:7])
    assert np.array_equal(window.tra, source.tra[3:7])
    assert np.array_equal(window.tracks, WINDOW_EXPECTED)
    # SEG frames 4 and 6 of the source become 1 and 3; 1 and 8 are outside
    assert sorted(p.name for p in (out / "01_GT" / "SEG").iterdir()) == ["man_seg001.tif", "man_seg003.tif"]
    assert sorted(window.seg) == [1, 3]
    assert np.array_equal(window.seg[1], source.seg[4]) and np.array_equal(window.seg[3], source.seg[6])
    assert np.array_equal(window.merged, source.merged[3:7]) and window.merge_issues == []
    assert window.complete_seg_frames == [1, 3]


def test_write_time_window_without_seg_frames_writes_no_seg_folder(tmp_path):
    dataset = _write_window_dataset(tmp_path / "src")
    out = write_time_window(dataset, 1, 9, 10, tmp_path / "last")
    assert not (out / "01_GT" / "SEG").exists()
    window = load_sequence(out, "01")
    assert window.num_frames == 1 and window.seg == {}
    assert np.array_equal(window.tracks, [[2, 0, 0, 0], [4, 0, 0, 0]])


@pytest.mark.parametrize("start, stop", [(5, 5), (6, 4), (-1, 3), (8, 11)])
def test_write_time_window_rejects_an_empty_or_outside_range(tmp_path, start, stop):
    dataset = _write_window_dataset(tmp_path / "src")
    out = tmp_path / "cut" / "W"
    out.parent.mkdir()
    with pytest.raises(RshnError, match=rf"DS/01: frames \[{start}, {stop}\) are not a non-empty range of its 10 "
                                        r"frames$"):
        write_time_window(dataset, "01", start, stop, out)
    assert list(out.parent.iterdir()) == []


def test_write_time_window_refuses_an_existing_folder_and_missing_tracks(tmp_path):
    dataset = _write_window_dataset(tmp_path / "src")
    out = tmp_path / "cut" / "W"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RshnError, match=r"cut/W: already exists; remove it to write the frames 3-6 again$"):
        write_time_window(dataset, "01", 3, 7, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["W"] and (out / "keep.txt").read_text() == "mine"
    shutil.rmtree(dataset / "01_GT")
    with pytest.raises(RshnError, match=r"DS/01_GT/TRA: tracking ground truth not found$"):
        write_time_window(dataset, "01", 3, 7, tmp_path / "cut" / "V")
    assert sorted(p.name for p in out.parent.iterdir()) == ["W"]


def test_write_time_window_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    import data_io.ctc

    dataset = _write_window_dataset(tmp_path / "src")
    out = tmp_path / "cut" / "W"
    out.parent.mkdir()

    def failing_write(path, tracks):
        raise OSError("disk full")

    monkeypatch.setattr(data_io.ctc, "write_track_file", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_time_window(dataset, "01", 3, 7, out)
    assert list(out.parent.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------------
# Result folders
# ------------------------------------------------------------------------------------------------------------------


def _write_result(res_dir: Path, digits: int = 3) -> np.ndarray:
    labels = _synthetic_video()[1].astype(np.int32) * 1000  # large ids survive the uint16 round trip
    _write_series(res_dir, "mask", labels.astype(np.uint16), digits=digits)
    tracks = TRACKS.copy()
    tracks[:, 0] *= 1000
    tracks[:, 3] *= 1000
    write_track_file(res_dir / "res_track.txt", tracks)
    return labels


@pytest.mark.parametrize("digits", [3, 4])
def test_load_result_round_trip(tmp_path, digits):
    labels = _write_result(tmp_path / "01_RES", digits)
    result = load_result(tmp_path / "01_RES")
    assert result.labels.dtype == np.int32 and np.array_equal(result.labels, labels)
    assert result.digits == digits and len(result.mask_paths) == 3 and result.res_dir == tmp_path / "01_RES"
    assert np.array_equal(result.tracks[:, 0], [1000, 2000, 3000, 4000])
    assert np.array_equal(result.tracks[:, 3], [0, 0, 2000, 2000])


def test_load_result_errors(tmp_path):
    res = tmp_path / "01_RES"
    with pytest.raises(RshnError, match=r"01_RES: result folder not found$"):
        load_result(res)
    _write_result(res)
    (res / "res_track.txt").unlink()
    with pytest.raises(RshnError, match=r"01_RES/res_track\.txt: track file not found$"):
        load_result(res)
    _write_result(res)
    (res / "mask001.tif").unlink()
    with pytest.raises(RshnError, match=r"01_RES: result mask numbers are not contiguous from 0: mask001\.tif is "
                                        r"missing"):
        load_result(res)
    _write_result(res)
    write_track_file(res / "res_track.txt", [[1000, 0, 2, 0], [2000, 0, 0, 0], [3000, 1, 2, 2000]])
    with pytest.raises(RshnError, match=r"01_RES/mask001\.tif: labels \[4000\] are in the mask but not alive at "
                                        r"frame 1 in res_track\.txt$"):
        load_result(res)
    _write_result(res)
    (res / "res_track.txt").write_text("1000 0 2 0\n2000 0 0 0\n3000 1 2 2000\n4000 1 2 2000 7\n")
    with pytest.raises(RshnError, match=r"res_track\.txt, line 4: expected 4 integers"):
        load_result(res)


# ------------------------------------------------------------------------------------------------------------------
# Real CTC data
# ------------------------------------------------------------------------------------------------------------------

# Counts from shared/data/ctc/SOURCES.md: frames, (H, W), dtype, tracks, division children, SEG frames, SEG objects.
REAL = {
    ("DIC-C2DH-HeLa", "01"): (84, (512, 512), np.uint8, 38, 18, [2, 5, 21, 31, 33, 34, 39, 54, 67], 98),
    ("DIC-C2DH-HeLa", "02"): (84, (512, 512), np.uint8, 32, 13, [6, 7, 14, 27, 34, 38, 42, 61, 67], 97),
    ("Fluo-N2DL-HeLa", "01"): (92, (700, 1100), np.uint16, 265, 188,
                               [12, 13, 14, 15, 20, 21, 22, 23, 25, 29, 38, 39, 40, 44, 50, 51, 52, 53, 54, 55, 62,
                                76, 77, 78, 79, 80, 81, 88], 491),
}


@pytest.fixture(scope="module")
def real_sequences(ctc_dataset):
    """Load each real sequence once per module (N2DL-HeLa is 92 frames of 700x1100); DIC 01 with silver truth."""
    cache = {}

    def get(name: str, seq: str):
        if (name, seq) not in cache:
            cache[name, seq] = load_sequence(ctc_dataset(name), seq, load_silver=(name, seq) == ("DIC-C2DH-HeLa", "01"))
        return cache[name, seq]

    return get


def _best_marker(mask: np.ndarray, tra: np.ndarray) -> int:
    """Independent reference: the TRA label with most pixels inside ``mask`` (loop over markers), 0 if none."""
    best, best_count = 0, 0
    inside = tra[mask]
    for marker in np.unique(inside):
        if marker == 0:
            continue
        count = int(np.count_nonzero(inside == marker))
        if count > best_count:
            best, best_count = int(marker), count
    return best


@pytest.mark.ctc
@pytest.mark.parametrize("name,seq", sorted(REAL))
def test_real_sequence_consistency(real_sequences, name, seq):
    sequence = real_sequences(name, seq)
    num_frames, shape, dtype, num_tracks, children, seg_frames, seg_objects = REAL[name, seq]
    assert sequence.has_gt and sequence.digits == 3
    assert sequence.num_frames == num_frames and sequence.shape == shape
    assert sequence.frames.shape == (num_frames,) + shape and sequence.frames.dtype == dtype
    assert len(sequence.frame_paths) == num_frames and sequence.frame_paths[-1].name == f"t{num_frames - 1:03d}.tif"
    assert sequence.tra.shape == sequence.merged.shape == sequence.frames.shape
    assert sequence.tra.dtype == sequence.merged.dtype == np.uint16
    tracks = sequence.tracks
    assert tracks.shape == (num_tracks, 4) and int(np.count_nonzero(tracks[:, 3])) == children
    assert sorted(sequence.seg) == seg_frames
    assert sum(len(np.unique(mask)) - 1 for mask in sequence.seg.values()) == seg_objects
    assert sequence.merge_issues == []

    for t in range(num_frames):
        alive = {int(label) for label, begin, end, _ in tracks if begin <= t <= end}
        assert set(np.unique(sequence.tra[t]).tolist()) - {0} == alive
        if t not in sequence.seg:
            assert np.array_equal(sequence.merged[t], sequence.tra[t])
            continue
        seg = sequence.seg[t]
        merged = sequence.merged[t]
        assert np.array_equal(merged[seg == 0], sequence.tra[t][seg == 0])
        covered = set()
        for label in np.unique(seg)[1:]:
            mask = seg == label
            ids = np.unique(merged[mask])
            assert ids.size == 1 and int(ids[0]) in alive and ids[0] == _best_marker(mask, sequence.tra[t])
            covered.add(int(ids[0]))
        assert len(covered) == len(np.unique(seg)) - 1  # no two objects share an id
        assert sequence.unsegmented[t] == sorted(alive - covered)
        assert (t in sequence.complete_seg_frames) == (covered == alive)
    assert sequence.complete_seg_frames == [t for t in seg_frames if not sequence.unsegmented[t]]


@pytest.mark.ctc
def test_real_merge_matches_marker_inside_each_object(real_sequences):
    sequence = real_sequences("DIC-C2DH-HeLa", "02")
    seg, tra, merged = sequence.seg[6], sequence.tra[6], sequence.merged[6]
    labels = np.unique(seg)[1:]
    assert labels.size == 10
    expected = {int(label): _best_marker(seg == label, tra) for label in labels}
    assert 0 not in expected.values() and len(set(expected.values())) == labels.size
    for label, marker in expected.items():
        assert np.all(merged[seg == label] == marker)
    assert 6 in sequence.complete_seg_frames


@pytest.mark.ctc
def test_real_silver_truth_relabelled(real_sequences):
    sequence = real_sequences("DIC-C2DH-HeLa", "01")
    assert sorted(sequence.silver_seg) == list(range(84))
    max_track = int(sequence.tracks[:, 0].max())
    for t in (0, 40, 83):
        silver = sequence.silver_seg[t]
        assert silver.dtype == np.uint16 and silver.shape == (512, 512)
        raw = read_tiff(sequence.dataset_dir / "01_ST" / "SEG" / f"man_seg{t:03d}.tif")
        assert np.array_equal(silver > 0, raw > 0)
        for label in np.unique(raw)[1:]:
            ids = np.unique(silver[raw == label])
            marker = _best_marker(raw == label, sequence.tra[t])
            assert ids.size == 1 and (int(ids[0]) == marker or (marker == 0 and ids[0] > max_track))


@pytest.mark.ctc
def test_real_load_frames_and_list_sequences(real_sequences, ctc_dataset):
    dataset = ctc_dataset("DIC-C2DH-HeLa")
    assert list_sequences(dataset) == ["01", "02"]
    frames, paths, digits = load_frames(dataset / "02")
    assert digits == 3 and paths == real_sequences("DIC-C2DH-HeLa", "02").frame_paths
    assert np.array_equal(frames, real_sequences("DIC-C2DH-HeLa", "02").frames)


@pytest.mark.ctc
def test_real_gt_only_sim_plus(ctc_dataset):
    dataset = ctc_dataset("Fluo-N2DH-SIM+")
    assert list_sequences(dataset) == [] and list_sequences(dataset, require_frames=False) == ["01"]
    sequence = load_sequence(dataset, "01", require_frames=False)
    assert sequence.frames is None and sequence.frame_paths == [] and sequence.has_gt
    assert sequence.num_frames == 65 and sequence.shape == (690, 628) and sequence.digits == 3
    assert sequence.tracks.shape == (95, 4) and int(np.count_nonzero(sequence.tracks[:, 3])) == 59
    assert sequence.seg == {} and np.array_equal(sequence.merged, sequence.tra)
    missing = re.escape(str(dataset / "01"))
    with pytest.raises(RshnError, match=rf"^{missing}: raw frame folder of sequence 01 not found"):
        load_sequence(dataset, "01")


@pytest.mark.ctc
def test_real_result_round_trip_from_gt(real_sequences, tmp_path):
    sequence = real_sequences("DIC-C2DH-HeLa", "01")
    res = tmp_path / "01_RES"
    res.mkdir()
    for t in range(sequence.num_frames):
        write_tiff(res / f"mask{t:03d}.tif", sequence.tra[t])
    write_track_file(res / "res_track.txt", sequence.tracks)
    result = load_result(res)
    assert np.array_equal(result.labels, sequence.tra.astype(np.int32))
    assert np.array_equal(result.tracks, sequence.tracks[np.argsort(sequence.tracks[:, 0])])
