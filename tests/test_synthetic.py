"""Tests of the synthetic CTC video generator (data_io/synthetic.py)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from scipy import ndimage

from data_io import synthetic
from data_io.synthetic import SyntheticParams, generate_sequence, sequence_seed, write_synthetic_dataset
from rshn_tf.errors import RshnError

SMALL = SyntheticParams(frames=8, size=(96, 128), seg_frames=4, seg_partial_frames=2)


def mitotic_parents(tracks: np.ndarray) -> np.ndarray:
    """Labels that have children."""
    return np.unique(tracks[tracks[:, 3] > 0, 3])


def adjacent_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (a, b), a < b, of different non-zero labels that are 4-neighbours somewhere in a 2-D label image."""
    pairs = set()
    for first, second in ((labels[:, 1:], labels[:, :-1]), (labels[1:, :], labels[:-1, :])):
        touching = (first != second) & (first > 0) & (second > 0)
        for a, b in zip(first[touching], second[touching]):
            pairs.add((int(min(a, b)), int(max(a, b))))
    return pairs


def read_track_lines(path: Path) -> np.ndarray:
    """Parse man_track.txt independently of data_io.ctc: every line exactly 'L B E P'."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        assert re.fullmatch(r"\d+ \d+ \d+ \d+", line), line
        rows.append([int(v) for v in line.split()])
    return np.array(rows, dtype=np.int64)


@pytest.fixture(scope="module")
def default_sequence():
    return generate_sequence(seed=5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A default-sized dataset (2 sequences x 40 frames x 256 x 256) written once for the module."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "SYN", seed=3)


# ---------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_arrays_and_other_seeds_differ():
    first = generate_sequence(seed=11)
    second = generate_sequence(seed=11)
    other = generate_sequence(seed=12)
    for name in ("frames", "labels", "markers", "tracks", "seg_frames", "seg_complete", "seg_masks"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)
    assert not np.array_equal(first.frames, other.frames)
    assert not np.array_equal(first.labels, other.labels)


def test_same_seed_gives_byte_identical_files(tmp_path):
    one = write_synthetic_dataset(tmp_path / "a", seed=7, params=SMALL)
    two = write_synthetic_dataset(tmp_path / "b", seed=7, params=SMALL)
    three = write_synthetic_dataset(tmp_path / "c", seed=8, params=SMALL)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert len(files) > 40
    for rel in files:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    assert (one / "01" / "t000.tif").read_bytes() != (three / "01" / "t000.tif").read_bytes()


def test_sequences_have_own_seeds_independent_of_the_other_names(tmp_path):
    both = write_synthetic_dataset(tmp_path / "both", seed=4, params=SMALL)
    alone = write_synthetic_dataset(tmp_path / "alone", seed=4, params=SMALL, sequences=("02",))
    assert not (alone / "01").exists()
    assert (both / "02" / "t003.tif").read_bytes() == (alone / "02" / "t003.tif").read_bytes()
    assert not np.array_equal(tifffile.imread(both / "01" / "t000.tif"), tifffile.imread(both / "02" / "t000.tif"))
    assert sequence_seed(4, "01") != sequence_seed(4, "02")
    metadata = yaml.safe_load((both / "synthetic.yaml").read_text())
    assert metadata["seed"] == 4
    assert metadata["sequence_seeds"] == {"01": sequence_seed(4, "01"), "02": sequence_seed(4, "02")}
    assert SyntheticParams.from_dict(metadata["params"]) == SMALL
    regenerated = generate_sequence(SMALL, seed=metadata["sequence_seeds"]["01"])
    for t in range(SMALL.frames):
        np.testing.assert_array_equal(regenerated.frames[t], tifffile.imread(both / "01" / f"t{t:03d}.tif"))


# ---------------------------------------------------------------------- CTC layout and consistency
def test_layout_follows_the_ctc_format(dataset):
    assert (dataset / "synthetic.yaml").is_file()
    for seq in ("01", "02"):
        raw = sorted(p.name for p in (dataset / seq).iterdir())
        assert raw == [f"t{t:03d}.tif" for t in range(40)]
        tra = sorted(p.name for p in (dataset / f"{seq}_GT" / "TRA").iterdir())
        assert tra == sorted([f"man_track{t:03d}.tif" for t in range(40)] + ["man_track.txt"])
        st = sorted(p.name for p in (dataset / f"{seq}_ST" / "SEG").iterdir())
        assert st == [f"man_seg{t:03d}.tif" for t in range(40)]
        seg = sorted(p.name for p in (dataset / f"{seq}_GT" / "SEG").iterdir())
        assert len(seg) == SyntheticParams().seg_frames
        assert all(re.fullmatch(r"man_seg\d{3}\.tif", name) for name in seg)
        frame = tifffile.imread(dataset / seq / "t000.tif")
        assert frame.dtype == np.uint16 and frame.shape == (256, 256)
        assert tifffile.imread(dataset / f"{seq}_GT" / "TRA" / "man_track000.tif").dtype == np.uint16
        assert tifffile.imread(dataset / f"{seq}_ST" / "SEG" / "man_seg000.tif").dtype == np.uint16
        assert tifffile.imread(dataset / f"{seq}_GT" / "SEG" / seg[0]).dtype == np.uint16
        read_track_lines(dataset / f"{seq}_GT" / "TRA" / "man_track.txt")
    first, second = (tifffile.imread(dataset / seq / "t005.tif") for seq in ("01", "02"))
    assert not np.array_equal(first, second)
    assert [p.name for p in dataset.parent.iterdir()] == ["SYN"]  # no temporary folder left behind


@pytest.mark.parametrize("seq", ["01", "02"])
def test_tra_and_st_labels_follow_the_track_file(dataset, seq):
    tracks = read_track_lines(dataset / f"{seq}_GT" / "TRA" / "man_track.txt")
    assert len(np.unique(tracks[:, 0])) == len(tracks)
    assert np.all(tracks[:, 1] <= tracks[:, 2])
    for t in range(40):
        markers = tifffile.imread(dataset / f"{seq}_GT" / "TRA" / f"man_track{t:03d}.tif")
        cells = tifffile.imread(dataset / f"{seq}_ST" / "SEG" / f"man_seg{t:03d}.tif")
        alive = set(tracks[(tracks[:, 1] <= t) & (tracks[:, 2] >= t), 0].tolist())
        assert set(np.unique(markers).tolist()) - {0} == alive, t
        assert set(np.unique(cells).tolist()) - {0} == alive, t
        # every marker lies inside its own cell
        inside = markers > 0
        np.testing.assert_array_equal(cells[inside], markers[inside])


@pytest.mark.parametrize("seq", ["01", "02"])
def test_parents_end_one_frame_before_their_two_daughters(dataset, seq):
    tracks = read_track_lines(dataset / f"{seq}_GT" / "TRA" / "man_track.txt")
    by_label = {row[0]: row for row in tracks}
    parents = mitotic_parents(tracks)
    assert len(parents) >= 3
    for parent in parents:
        children = tracks[tracks[:, 3] == parent]
        assert len(children) == 2
        assert np.all(children[:, 1] == by_label[parent][2] + 1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_at_least_three_mitoses_in_forty_frames(seed):
    sequence = generate_sequence(seed=seed)
    assert sequence.frames.shape == (40, 256, 256)
    tracks = sequence.tracks
    parents = mitotic_parents(tracks)
    assert len(parents) >= 3
    for parent in parents:
        children = tracks[tracks[:, 3] == parent, 0]
        birth = int(tracks[tracks[:, 0] == children[0], 1][0])
        # the daughters split the parent: they touch each other and cover most of the parent's last mask
        assert (int(children.min()), int(children.max())) in adjacent_pairs(sequence.labels[birth])
        before = sequence.labels[birth - 1] == parent
        after = np.isin(sequence.labels[birth], children)
        assert (before & after).sum() / (before | after).sum() > 0.5


def test_markers_are_small_blobs_well_inside_connected_cells(default_sequence):
    labels, markers = default_sequence.labels, default_sequence.markers
    for t in range(labels.shape[0]):
        for label in np.unique(labels[t])[1:]:
            cell = labels[t] == label
            marker = markers[t] == label
            assert ndimage.label(cell)[1] == 1
            assert ndimage.label(marker)[1] == 1
            assert not np.any(marker & ~ndimage.binary_erosion(cell))
            assert 5 <= marker.sum() <= 0.25 * cell.sum()


def test_cells_touch_in_many_frames(default_sequence):
    touching_frames = [t for t in range(40) if adjacent_pairs(default_sequence.labels[t])]
    assert len(touching_frames) >= 10
    assert any(len(adjacent_pairs(default_sequence.labels[t])) >= 2 for t in touching_frames)


@pytest.mark.parametrize("seq", ["01", "02"])
def test_seg_files_are_complete_or_partial_with_own_labels(dataset, seq):
    kinds = []
    differs_from_track_ids = False
    for path in sorted((dataset / f"{seq}_GT" / "SEG").iterdir()):
        t = int(path.stem[len("man_seg") :])
        seg = tifffile.imread(path).astype(np.int64)
        cells = tifffile.imread(dataset / f"{seq}_ST" / "SEG" / f"man_seg{t:03d}.tif").astype(np.int64)
        seg_labels = np.unique(seg)[1:]
        np.testing.assert_array_equal(seg_labels, np.arange(1, len(seg_labels) + 1))
        annotated = set()
        for label in seg_labels:
            under = np.unique(cells[seg == label])
            assert len(under) == 1 and under[0] > 0
            np.testing.assert_array_equal(cells == under[0], seg == label)  # the full mask of one cell
            annotated.add(int(under[0]))
            differs_from_track_ids |= int(under[0]) != int(label)
        present = set(np.unique(cells).tolist()) - {0}
        assert 0 < len(annotated) <= len(present)
        kinds.append("complete" if annotated == present else "partial")
    assert kinds.count("complete") >= 1 and kinds.count("partial") >= 1
    assert differs_from_track_ids


def test_in_memory_seg_flags_match_the_masks(default_sequence):
    s = default_sequence
    assert len(s.seg_frames) == len(s.seg_complete) == len(s.seg_masks) == SyntheticParams().seg_frames
    assert np.all(np.diff(s.seg_frames) > 0)
    for t, complete, mask in zip(s.seg_frames, s.seg_complete, s.seg_masks):
        n_cells = len(np.unique(s.labels[t])) - 1
        assert (len(np.unique(mask)) - 1 == n_cells) == complete
    assert s.seg_complete.sum() == SyntheticParams().seg_frames - SyntheticParams().seg_partial_frames


def test_images_show_bright_cells_with_dark_seams_between_touching_cells(default_sequence):
    frames = default_sequence.frames.astype(np.float64)
    labels, markers = default_sequence.labels, default_sequence.markers
    assert default_sequence.frames.dtype == np.uint16
    background = frames[labels == 0].mean()
    interior = frames[markers > 0].mean()
    assert interior > 1.5 * background
    seams = np.zeros(labels.shape, bool)
    for axis in (1, 2):
        a = np.moveaxis(labels, axis, 0)
        contact = (a[1:] != a[:-1]) & (a[1:] > 0) & (a[:-1] > 0)
        seam = np.moveaxis(seams, axis, 0)
        seam[1:] |= contact
        seam[:-1] |= contact
    assert seams.sum() > 100
    assert frames[seams].mean() < 0.8 * interior
    # noise: two nearly equal background neighbours are not all identical
    assert np.std(np.diff(frames[0], axis=1)[labels[0][:, 1:] == 0]) > 3.0


# ---------------------------------------------------------------------- ctc metrics on the ground truth itself
@pytest.mark.parametrize("seq", ["01", "02"])
def test_ctc_metrics_score_the_ground_truth_as_perfect(dataset, tmp_path, seq):
    from ctc_metrics import evaluate_sequence

    res = tmp_path / f"{seq}_RES"
    res.mkdir()
    for t in range(40):
        shutil.copyfile(dataset / f"{seq}_ST" / "SEG" / f"man_seg{t:03d}.tif", res / f"mask{t:03d}.tif")
    shutil.copyfile(dataset / f"{seq}_GT" / "TRA" / "man_track.txt", res / "res_track.txt")
    scores = evaluate_sequence(str(res), str(dataset / f"{seq}_GT"), metrics=["SEG", "TRA"], threads=1)
    assert scores["SEG"] == pytest.approx(1.0)
    assert scores["TRA"] == pytest.approx(1.0)

    # the scorer is not blind: cutting the marker region out of one annotated cell lowers both scores
    seg_frames = sorted(int(p.stem[-3:]) for p in (dataset / f"{seq}_GT" / "SEG").iterdir())
    frame = seg_frames[len(seg_frames) // 2]
    mask = tifffile.imread(res / f"mask{frame:03d}.tif")
    annotated = tifffile.imread(dataset / f"{seq}_GT" / "SEG" / f"man_seg{frame:03d}.tif")
    victim = int(np.unique(mask[annotated == 1])[0])
    marker = tifffile.imread(dataset / f"{seq}_GT" / "TRA" / f"man_track{frame:03d}.tif") == victim
    assert marker.any() and (mask == victim).sum() > marker.sum()
    mask[marker] = 0
    tifffile.imwrite(res / f"mask{frame:03d}.tif", mask)
    worse = evaluate_sequence(str(res), str(dataset / f"{seq}_GT"), metrics=["SEG", "TRA"], threads=1)
    assert worse["SEG"] < 1.0 and worse["TRA"] < 1.0


# ---------------------------------------------------------------------- writing safely, validating input
def test_refuses_to_overwrite_a_non_empty_folder_unless_asked(tmp_path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(RshnError, match="not empty"):
        write_synthetic_dataset(target, params=SMALL)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    write_synthetic_dataset(target, params=SMALL, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "01_GT" / "TRA" / "man_track.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]

    empty = tmp_path / "empty"
    empty.mkdir()
    write_synthetic_dataset(empty, params=SMALL, sequences=("01",))
    assert (empty / "01" / "t000.tif").is_file()

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RshnError, match="not a folder"):
        write_synthetic_dataset(a_file, params=SMALL)


def test_a_failure_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
    original = synthetic._write_sequence
    calls = []

    def fail_on_second(root, name, sequence):
        calls.append(name)
        original(root, name, sequence)
        if len(calls) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(synthetic, "_write_sequence", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_dataset(tmp_path / "ds", params=SMALL)
    assert list(tmp_path.iterdir()) == []


def test_frames_and_size_arguments_override_the_parameters(tmp_path):
    out = write_synthetic_dataset(tmp_path / "ds", frames=3, size=(96, 88), params=SMALL, sequences=("05",))
    assert sorted(p.name for p in (out / "05").iterdir()) == ["t000.tif", "t001.tif", "t002.tif"]
    assert tifffile.imread(out / "05" / "t002.tif").shape == (96, 88)
    assert yaml.safe_load((out / "synthetic.yaml").read_text())["params"]["size"] == [96, 88]


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"frames": 0}, "frames"),
        ({"size": (16, 64)}, "size"),
        ({"mitoses": (4, 2)}, "mitoses"),
        ({"radius": (12.0, 100.0)}, "radius"),
        ({"persistence": 1.0}, "persistence"),
        ({"seg_partial_fraction": (0.5, 1.5)}, "seg_partial_fraction"),
        ({"gain": 0.0}, "gain"),
    ],
)
def test_invalid_parameters_raise_naming_the_key(changes, key):
    with pytest.raises(RshnError, match=key):
        generate_sequence(SyntheticParams(**changes))


def test_invalid_arguments_raise(tmp_path):
    with pytest.raises(RshnError, match="seed"):
        generate_sequence(SMALL, seed=-1)
    with pytest.raises(RshnError, match="sequence name"):
        write_synthetic_dataset(tmp_path / "a", params=SMALL, sequences=("1",))
    with pytest.raises(RshnError, match="distinct"):
        write_synthetic_dataset(tmp_path / "b", params=SMALL, sequences=("01", "01"))
    with pytest.raises(RshnError, match="unknown key"):
        SyntheticParams.from_dict({"frames": 10, "colour": "red"})
    assert list(tmp_path.iterdir()) == []


def test_tiny_videos_stay_consistent():
    params = SyntheticParams(frames=6, size=(64, 64), radius=(6.0, 9.0), cells=(5, 6))
    sequence = generate_sequence(params, seed=2)
    tracks = sequence.tracks
    assert len(mitotic_parents(tracks)) >= 3
    for t in range(6):
        alive = set(tracks[(tracks[:, 1] <= t) & (tracks[:, 2] >= t), 0].tolist())
        assert set(np.unique(sequence.markers[t]).tolist()) - {0} == alive
        assert np.all(sequence.labels[t][sequence.markers[t] > 0] == sequence.markers[t][sequence.markers[t] > 0])


def test_round_trip_through_load_sequence(dataset):
    """What the generator holds in memory is exactly what ``load_sequence`` reads back from its files."""
    from data_io.ctc import load_sequence
    from data_io.synthetic import sequence_seed

    seq = load_sequence(dataset, "01", load_silver=True)
    expected = generate_sequence(SyntheticParams(), seed=sequence_seed(3, "01"))
    np.testing.assert_array_equal(seq.frames, expected.frames)
    np.testing.assert_array_equal(seq.tra, expected.markers)
    np.testing.assert_array_equal(seq.tracks[np.argsort(seq.tracks[:, 0])], expected.tracks[np.argsort(expected.tracks[:, 0])])
    assert sorted(seq.seg) == list(expected.seg_frames)
    assert seq.complete_seg_frames == [int(f) for f, c in zip(expected.seg_frames, expected.seg_complete) if c]
    for t in seq.complete_seg_frames:  # complete SEG relabelled to TRA ids = the full label masks
        np.testing.assert_array_equal(seq.merged[t], expected.labels[t])
    for t in range(seq.num_frames):  # the silver truth relabelled to TRA ids is the full label masks too
        np.testing.assert_array_equal(seq.silver_seg[t], expected.labels[t])
    assert seq.digits == 3 and seq.has_gt


def test_synth_cli_writes_a_loadable_dataset(tmp_path):
    from data_io.ctc import list_sequences, load_sequence
    from rshn_tf.cli import main

    out = tmp_path / "synthetic"
    assert main(["synth", str(out), "--frames", "6", "--size", "96", "128", "--seed", "4", "--sequences", "01"]) == 0
    assert list_sequences(out) == ["01"]
    seq = load_sequence(out, "01")
    assert seq.frames.shape == (6, 96, 128) and seq.frames.dtype == np.uint16
    assert main(["synth", str(out), "--frames", "6"]) == 2  # refuses to overwrite without --overwrite
