"""Tests of window sampling, make_sample, the parallel sample stream, the tf.data pipeline and show-sample."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from data_io.augment import AugmentationParams, identity_params, sample_params
from data_io.preprocess import preprocess_frame, to_network_grid
from data_io.sampling import TrainingData, load_training_video, make_sample, render_sample, silver_coverage
from data_io.stream import SampleStream
from data_io.targets import TARGET_KEYS, expand_targets
from rshn_tf.cli import main
from rshn_tf.config import Config, load_config, load_config_layers
from rshn_tf.errors import RshnError
from tests.cases import moving_disks, reference_neighbours, small_config, training_data, training_video


@pytest.fixture(scope="module")
def tiny():
    """Two in-memory videos of moving disks, 64x64 tiles, 4-frame windows."""
    config = small_config(tile=64, length=4)
    config.loss.max_instances = 5
    config.loss.neighbour_radius = 20.0
    videos = [training_video(moving_disks(num_frames=12, num_cells=7, seed=1), complete=[3], band=6, name="a/01"),
              training_video(moving_disks(num_frames=9, num_cells=4, seed=2), complete=[0, 8], name="a/02")]
    return training_data(videos, config)


def _same(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_make_sample_is_reproducible_from_seed_and_index(tiny):
    first = make_sample(tiny, 3, 10)
    again = make_sample(tiny, 3, 10)
    _same(first.arrays(5), again.arrays(5))
    assert (first.video, first.start) == (again.video, again.start)
    other = make_sample(tiny, 3, 11)
    assert not np.array_equal(first.frames, other.frames)
    assert not np.array_equal(first.frames, make_sample(tiny, 4, 10).frames)
    with pytest.raises(RshnError, match="non-negative"):
        make_sample(tiny, -1, 0)


def test_sample_arrays_have_the_loss_layout(tiny):
    arrays = make_sample(tiny, 0, 0).arrays(5)
    assert arrays["frames"].shape == (4, 64, 64) and arrays["frames"].dtype == np.float32
    assert arrays["instance_masks"].shape == (5, 4, 64, 64) and arrays["neighbour_masks"].shape == (5, 4, 64, 64)
    for key in TARGET_KEYS:
        assert arrays[key].dtype == bool
    assert not np.any(arrays["instance_masks"] & ~arrays["valid_mask"][None])


def _uniform_window_rate(num_frames: list[int], complete: list[list[int]], length: int, positions: range) -> float:
    """P(window contains a complete frame) for a uniform anchor frame and position, enumerated with plain loops."""
    hits, total = 0, 0
    for frames, marked in zip(num_frames, complete):
        for anchor in range(frames):
            for position in positions:
                start = min(max(anchor - position, 0), frames - length)
                hits += any(start <= t < start + length for t in marked)
                total += 1
    return hits / total


@pytest.mark.parametrize("mode", ["paper", "code"])
@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_about_every_second_window_contains_a_complete_seg_frame(fraction, mode):
    config = small_config(length=8)
    config.data.seg_sample_fraction = fraction
    config.data.seg_sample_mode = mode
    lengths, complete = [40, 30], [[5], [29]]
    videos = [training_video(np.zeros((n, 8, 8), np.uint16), complete=c) for n, c in zip(lengths, complete)]
    data = TrainingData(videos, config)
    rng = np.random.default_rng(0)
    windows = [data.draw_window(rng) for _ in range(4000)]
    contains = [any(start <= t < start + 8 for t in complete[v]) for v, start in windows]
    assert all(0 <= start <= lengths[v] - 8 for v, start in windows)
    if mode == "paper":  # exactly the configured fraction
        expected = fraction
    else:  # the authors' list: anchors at positions 1..7; windows around plain frames may contain SEG frames too
        expected = fraction + (1.0 - fraction) * _uniform_window_rate(lengths, complete, 8, range(1, 8))
    assert np.mean(contains) == pytest.approx(expected, abs=0.03)
    if fraction == 0.0:
        counts = np.bincount([v for v, _ in windows], minlength=2) / 4000
        if mode == "paper":  # uniform over the windows without a complete frame: starts 6..32 and 0..21
            assert counts[0] == pytest.approx(27 / 49, abs=0.02)
        else:  # uniform over all frames of both videos
            assert counts[0] == pytest.approx(40 / 70, abs=0.03)


def test_every_window_may_contain_a_seg_frame():
    config = small_config(length=4)
    config.data.seg_sample_fraction = 0.0
    video = training_video(np.zeros((6, 8, 8), np.uint16), complete=[3])  # every 4-frame window contains frame 3
    windows = [TrainingData([video], config).draw_window(np.random.default_rng(i)) for i in range(100)]
    assert {start for _, start in windows} == {0, 1, 2}


def test_any_seg_frames_can_anchor_windows_instead():
    config = small_config(length=4)
    config.data.seg_sample_fraction = 1.0
    config.data.seg_sample_frames = "any"
    video = training_video(np.zeros((30, 8, 8), np.uint16), complete=[2])
    video.seg[20] = True  # a SEG frame that is not complete
    windows = [TrainingData([video], config).draw_window(np.random.default_rng(i)) for i in range(200)]
    starts = np.array([start for _, start in windows])
    assert np.any(starts > 10) and np.all((starts <= 2) | ((starts >= 17) & (starts <= 20)))


def test_too_short_videos_are_rejected():
    with pytest.raises(RshnError, match="fewer than the window length"):
        TrainingData([training_video(np.zeros((3, 8, 8), np.uint16))], small_config(length=4))


def test_stream_gives_the_same_samples_with_any_number_of_threads(tiny):
    serial = list(SampleStream(tiny, 5, start=7, stop=11, num_workers=0))
    threaded = list(SampleStream(tiny, 5, start=7, stop=11, num_workers=2, worker_type="thread", prefetch=1))
    assert len(serial) == len(threaded) == 4
    for first, second in zip(serial, threaded):
        _same(first, second)
    _same(serial[0], make_sample(tiny, 5, 7).compact(5))


def test_stream_gives_the_same_samples_with_worker_processes(tiny):
    serial = list(SampleStream(tiny, 5, start=0, stop=3, num_workers=0))
    with SampleStream(tiny, 5, start=0, stop=3, num_workers=2, worker_type="process") as stream:
        processed = list(stream)
    for first, second in zip(serial, processed):
        _same(first, second)


def test_tf_dataset_yields_the_numpy_targets(tiny):
    import tensorflow as tf

    from data_io.pipeline import training_dataset

    dataset = training_dataset(tiny, seed=2, start=4, num_samples=4, batch_size=2, num_workers=1)
    frames_spec, targets_spec = dataset.element_spec
    assert frames_spec.shape == (2, 4, 64, 64, 1) and frames_spec.dtype == tf.float32
    assert targets_spec["instance_masks"].shape == (2, 5, 4, 64, 64)
    assert targets_spec["valid_mask"].shape == (2, 4, 64, 64)
    assert set(targets_spec) == set(TARGET_KEYS) and all(spec.dtype == tf.bool for spec in targets_spec.values())
    batches = list(dataset)
    assert len(batches) == 2
    for batch_index, (frames, targets) in enumerate(batches):
        for row in range(2):
            expected = make_sample(tiny, 2, 4 + 2 * batch_index + row).arrays(5)
            np.testing.assert_array_equal(frames[row, ..., 0].numpy(), expected["frames"])
            for key in TARGET_KEYS:
                np.testing.assert_array_equal(targets[key][row].numpy(), expected[key], err_msg=key)


def test_tf_batches_feed_the_loss(tiny):
    import tensorflow as tf

    from data_io.pipeline import training_dataset
    from rshn_tf.losses import total_loss

    frames, targets = next(iter(training_dataset(tiny, seed=0, num_samples=1, batch_size=1, num_workers=0)))
    embeddings = tf.random.stateless_normal(list(frames.shape[:-1]) + [16], seed=[1, 2])
    total, terms = total_loss([embeddings, embeddings], targets, [], tiny.config.loss)
    assert np.isfinite(total.numpy()) and total.numpy() > 0.0
    assert terms["hourglass_0/instances"].numpy() > 0.0


# ---------------------------------------------------------------------------------------------------------------
# Real CTC data


@pytest.fixture(scope="module")
def dic(ctc_dataset):
    # paper text: the preset's mirror padding (normalisation over the padded frame, as the authors' code does) and
    # label blur would make a neutral training sample differ from test-time preprocessing on purpose
    config = load_config_layers(["DIC-C2DH-HeLa", "profiles/paper_text"], ['data.train_sequences=["01"]'])
    return TrainingData.from_config(config, ctc_dataset("DIC-C2DH-HeLa"))


@pytest.mark.ctc
def test_neutral_dic_sample_equals_test_time_preprocessing(dic, ctc_dataset):
    from data_io.ctc import load_sequence

    sequence = load_sequence(ctc_dataset("DIC-C2DH-HeLa"), "01")
    params = identity_params(dic.config.augmentation, 8)
    sample = render_sample(dic, 0, 28, params, np.random.default_rng(0))
    for t in range(8):
        expected = to_network_grid(preprocess_frame(sequence.frames[28 + t], dic.config.data), dic.config.data)
        np.testing.assert_allclose(sample.frames[t], expected, atol=1e-5)
        np.testing.assert_array_equal(sample.labels[t], to_network_grid(sequence.merged[28 + t], dic.config.data,
                                                                         labels=True))
    arrays = sample.arrays(31)
    band = 25  # 50 original px at 512 -> 256
    complete = [t for t in range(8) if 28 + t in sequence.seg_frames_with_coverage(0.8)]
    assert complete == [3, 5, 6] and np.flatnonzero(sample.complete).tolist() == complete  # frames 31, 33, 34
    for t in range(8):
        used = arrays["background_mask"][t] | arrays["foreground_mask"][t]
        if t in complete:
            assert used[band:-band, band:-band].all() and used.sum() == (256 - 2 * band) ** 2
        else:
            assert not used.any()


@pytest.mark.ctc
def test_augmented_dic_samples_keep_ids_and_respect_the_band(dic):
    from data_io.augment import SpatialTransform

    config = dataclasses.replace(dic.config, data=dataclasses.replace(dic.config.data, seg_sample_fraction=1.0))
    data = TrainingData(dic.videos, config)  # every window contains a complete-SEG frame
    video = data.videos[0]
    for index in range(3):
        sample = make_sample(data, 11, index)
        assert sample.complete.any()
        arrays = sample.arrays(31)
        for t in range(8):
            assert set(np.unique(sample.labels[t])) <= set(np.unique(video.labels[sample.start + t]))
            if not sample.complete[t]:
                assert not arrays["background_mask"][t].any()
        ids = sample.targets.instance_ids
        assert set(ids) == set(np.unique(sample.labels)) - {0}
        for slot, label in enumerate(ids):
            np.testing.assert_array_equal(arrays["instance_masks"][slot], sample.labels == label)
            assert not np.any(arrays["neighbour_masks"][slot] & ((sample.labels == label) | (sample.labels == 0)))
        transform = SpatialTransform(sample.params.spatial, (256, 256), (256, 256), (512, 512))
        where = np.round(transform.coordinates()[arrays["background_mask"].any(axis=0)])
        assert where.size and where.min() >= 50 and where.max() <= 511 - 50
        assert not np.any(arrays["background_mask"] & ~arrays["valid_mask"])


@pytest.mark.ctc
@pytest.mark.slow
def test_fluo_hela_samples_take_a_subset_of_31_instances(ctc_dataset):
    config = load_config("Fluo-N2DL-HeLa", ['data.train_sequences=["01"]', "data.seg_sample_fraction=1.0"])
    data = TrainingData.from_config(config, ctc_dataset("Fluo-N2DL-HeLa"))
    sample = make_sample(data, 0, 0)
    assert sample.complete.any()  # seg_sample_fraction 1: frame 13 or 52 (complete at coverage 0.8) is in it
    neutral = identity_params(config.augmentation, 8)
    zoomed_out = dataclasses.replace(neutral.spatial, scale=(1.5, 1.5), offset=(150.0, -300.0))  # a dense corner
    sample = render_sample(data, 0, 49, AugmentationParams(zoomed_out, neutral.intensity), np.random.default_rng(0))
    assert sample.targets.instance_ids.size == 31 and sample.targets.label_ids.size > 31
    arrays = sample.arrays(31)
    assert arrays["background_mask"][3].any() and not arrays["background_mask"][0].any()  # frame 52 is complete
    assert all(arrays["instance_masks"][slot].any() for slot in range(31))
    assert all(arrays["neighbour_masks"][slot].sum() < arrays["foreground_mask"][3].sum() for slot in range(31))


# ---------------------------------------------------------------------------------------------------------------
# data.train_frames and data.silver_truth (load_training_video); the synthetic dataset has 0X_ST/SEG on every frame


def _video_config(**data: object) -> Config:
    """The default configuration with ``data`` keys changed (load_training_video reads only the data section)."""
    config = Config()
    for key, value in data.items():
        setattr(config.data, key, value)
    return config


def _assert_same_video(video, expected, frames: slice = slice(None)) -> None:
    """``video`` equals ``expected`` restricted to ``frames``: frames, labels, complete and SEG flags, region."""
    np.testing.assert_array_equal(video.frames, expected.frames[frames])
    np.testing.assert_array_equal(video.labels, expected.labels[frames])
    np.testing.assert_array_equal(video.complete, expected.complete[frames])
    np.testing.assert_array_equal(video.seg, expected.seg[frames])
    np.testing.assert_array_equal(video.region, expected.region)
    assert video.frame_origin == expected.frame_origin and video.name == expected.name


def test_train_frames_keep_exactly_the_frame_range(synthetic_dataset):
    full = load_training_video(synthetic_dataset, "01", _video_config())
    assert full.num_frames == 24
    cut = load_training_video(synthetic_dataset, "01", _video_config(train_frames=[5, 17]))
    assert cut.num_frames == 12 and cut.labels.shape == (12, 128, 128)
    _assert_same_video(cut, full, slice(5, 17))
    assert cut.complete.any() and cut.seg.any()  # the range holds SEG frames, so the slices are not trivially empty
    _assert_same_video(load_training_video(synthetic_dataset, "01", _video_config(train_frames=[0, 24])), full)
    # with the silver truth too: filled first, then cut
    silver = load_training_video(synthetic_dataset, "01", _video_config(silver_truth=True))
    both = load_training_video(synthetic_dataset, "01", _video_config(silver_truth=True, train_frames=[20, 24]))
    _assert_same_video(both, silver, slice(20, 24))
    data = TrainingData.from_config(_video_config(train_frames=[2, 10], train_sequences=["01", "02"]),
                                    synthetic_dataset)
    assert [video.num_frames for video in data.videos] == [8, 8]


def test_train_frames_beyond_the_sequence_name_it(synthetic_dataset):
    with pytest.raises(RshnError, match=r"Synthetic/02: data\.train_frames = \[3, 25\] needs 25 frames, the "
                                        r"sequence has 24$"):
        load_training_video(synthetic_dataset, "02", _video_config(train_frames=[3, 25]))


def test_silver_coverage_by_hand():
    markers = np.zeros((4, 6), np.uint16)
    markers[0, 0], markers[0, 3], markers[3, 5] = 1, 2, 3
    silver = np.zeros_like(markers)
    silver[0:2, 0:2] = 1
    silver[2:4, 4:6] = 3
    silver[2:4, 0:2] = 7  # an object without a marker does not count
    assert silver_coverage(silver, markers) == pytest.approx(2 / 3)  # markers 1 and 3 of 1, 2, 3
    silver[0:2, 2:4] = 2
    assert silver_coverage(silver, markers) == 1.0
    assert silver_coverage(np.zeros_like(markers), markers) == 0.0
    assert silver_coverage(silver, np.zeros_like(markers)) == 1.0  # no markers: nothing is missing


def test_silver_truth_fills_the_frames_without_gold_seg(synthetic_dataset):
    from data_io.ctc import load_sequence, read_tiff

    gold = load_training_video(synthetic_dataset, "01", _video_config())
    silver = load_training_video(synthetic_dataset, "01", _video_config(silver_truth=True))
    sequence = load_sequence(synthetic_dataset, "01")
    gold_frames = sorted(sequence.seg)
    assert 0 < len(gold_frames) < 24
    np.testing.assert_array_equal(silver.frames, gold.frames)
    assert silver.seg.all()
    for t in range(24):
        if t in gold_frames:
            np.testing.assert_array_equal(silver.labels[t], gold.labels[t], err_msg=f"frame {t}")
            assert silver.complete[t] == gold.complete[t]
            continue
        # the synthetic silver truth carries the track ids already, so relabelling leaves it as written
        st = read_tiff(synthetic_dataset / "01_ST" / "SEG" / f"man_seg{t:03d}.tif")
        expected = sequence.tra[t].copy()
        expected[st > 0] = st[st > 0]
        np.testing.assert_array_equal(silver.labels[t], expected, err_msg=f"frame {t}")
        assert not np.array_equal(silver.labels[t], gold.labels[t])  # gold holds only the markers there
        assert silver.complete[t]  # every marker lies inside its silver object
    assert not gold.seg[[t for t in range(24) if t not in gold_frames]].any()


def test_silver_frames_are_complete_at_the_coverage_threshold(synthetic_dataset, tmp_path):
    from data_io.ctc import load_sequence, read_tiff, write_tiff

    dataset = shutil.copytree(synthetic_dataset, tmp_path / "Synthetic")
    sequence = load_sequence(dataset, "01")
    frame = 4
    assert frame not in sequence.seg
    markers = [int(label) for label in np.unique(sequence.tra[frame]) if label]
    assert len(markers) == 8
    path = dataset / "01_ST" / "SEG" / f"man_seg{frame:03d}.tif"
    st = read_tiff(path)
    dropped = markers[0]
    removed = st == dropped
    st[removed] = 0  # 7 of the 8 markers keep a silver object: coverage 7/8 = 0.875
    write_tiff(path, st)
    loose = load_training_video(dataset, "01", _video_config(silver_truth=True, complete_seg_min_coverage=0.85))
    strict = load_training_video(dataset, "01", _video_config(silver_truth=True, complete_seg_min_coverage=0.9))
    assert loose.seg[frame] and strict.seg[frame]
    assert loose.complete[frame] and not strict.complete[frame]
    # where the silver object is gone only the TRA marker remains
    expected = np.where(sequence.tra[frame] == dropped, dropped, 0)
    np.testing.assert_array_equal(strict.labels[frame][removed], expected[removed])
    # the gold SEG frames keep their own completeness at each threshold
    for video, coverage in ((loose, 0.85), (strict, 0.9)):
        assert [t for t in sorted(sequence.seg) if video.complete[t]] == sequence.seg_frames_with_coverage(coverage)


def test_silver_truth_without_an_st_folder_is_an_error(synthetic_dataset, tmp_path):
    dataset = shutil.copytree(synthetic_dataset, tmp_path / "Synthetic")
    shutil.rmtree(dataset / "02_ST")
    with pytest.raises(RshnError, match=r"Synthetic/02_ST/SEG: no silver truth found \(data\.silver_truth is "
                                        r"true\)$"):
        load_training_video(dataset, "02", _video_config(silver_truth=True))
    load_training_video(dataset, "02", _video_config())  # without silver truth the folder is not needed


# ---------------------------------------------------------------------------------------------------------------
# show-sample


SYNTHETIC_YAML = """\
data:
  tile_size: [64, 64]
  sequence_length: 6
  border_band: 8
loss:
  neighbour_radius: 20
model:
  levels: 3
inference:
  tile_overlap: 32
"""


@pytest.fixture(scope="module")
def synthetic_config(tmp_path_factory, synthetic_dataset):
    path = tmp_path_factory.mktemp("config") / "synthetic.yaml"
    path.write_text(SYNTHETIC_YAML)
    return path


def test_synthetic_samples_obey_the_target_rules(synthetic_dataset, synthetic_config):
    from data_io.augment import SpatialTransform

    config = load_config(synthetic_config)
    data = TrainingData.from_config(config, synthetic_dataset)
    seen_background = 0
    for index in range(6):
        sample = make_sample(data, 1, index)
        video = data.videos[[v.name for v in data.videos].index(sample.video)]
        arrays = sample.arrays(31)
        for t in range(6):  # ids are the source frame's TRA ids
            assert set(np.unique(sample.labels[t])) <= set(np.unique(video.labels[sample.start + t]))
        np.testing.assert_array_equal(sample.complete, video.complete[sample.start:sample.start + 6])
        ids = sample.targets.instance_ids
        assert ids.tolist() == sorted(set(np.unique(sample.labels)) - {0})
        for slot, label in enumerate(ids):
            np.testing.assert_array_equal(arrays["instance_masks"][slot], sample.labels == label)
            expected = reference_neighbours(sample.labels, int(label), 20.0)
            np.testing.assert_array_equal(arrays["neighbour_masks"][slot], np.isin(sample.labels, list(expected)))
        background = arrays["background_mask"] | arrays["foreground_mask"]
        assert not background[~sample.complete].any()
        assert not np.any(background & ~arrays["valid_mask"])
        np.testing.assert_array_equal(arrays["foreground_mask"], background & (sample.labels > 0))
        coordinates = SpatialTransform(sample.params.spatial, (64, 64), (128, 128), (128, 128)).coordinates()
        where = np.round(coordinates[background.any(axis=0)])
        assert where.size == 0 or (where.min() >= 8 and where.max() <= 127 - 8)  # never in the border band
        seen_background += int(background.any())
    assert seen_background >= 2


def test_show_sample_cli_writes_pngs_npz_and_config(synthetic_dataset, synthetic_config, tmp_path, capsys):
    out = tmp_path / "sample"
    args = ["show-sample", str(synthetic_config), "--data", str(synthetic_dataset), "--out", str(out), "--seed", "4"]
    assert main(args) == 0
    assert str(out) in capsys.readouterr().out
    names = {path.name for path in out.iterdir()}
    assert {"overview.png", "frames.png", "labels.png", "background.png", "sample.npz", "sample.json",
            "config.yaml"} <= names
    assert any(name.startswith("instance_") for name in names)
    config = load_config(out / "config.yaml")
    assert config.data.dataset_dir == str(synthetic_dataset) and config.data.tile_size == [64, 64]
    expected = make_sample(TrainingData.from_config(config), 4, 0).arrays(31)
    with np.load(out / "sample.npz") as saved:
        for key in ("frames",) + TARGET_KEYS:
            np.testing.assert_array_equal(saved[key], expected[key], err_msg=key)
        assert saved["instance_masks"].shape == (31, 6, 64, 64)
    assert json.loads((out / "sample.json").read_text())["video"].startswith("Synthetic/")
    assert main(args) == 0  # an earlier output is replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(args[:5] + [str(other)] + args[6:]) == 2
    assert "not an earlier show-sample output" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me"


def test_show_sample_without_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["show-sample", "DIC-C2DH-HeLa", "--data", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_given_params_render_the_same_sample(tiny):
    rng = np.random.default_rng(1)
    params = sample_params(rng, tiny.config.augmentation, (64, 64), (96, 128), 4)
    first = render_sample(tiny, 0, 2, params, np.random.default_rng(5))
    second = render_sample(tiny, 0, 2, params, np.random.default_rng(5))
    _same(first.arrays(5), second.arrays(5))
    neutral = AugmentationParams(params.spatial, identity_params(tiny.config.augmentation, 4).intensity)
    plain = render_sample(tiny, 0, 2, neutral, np.random.default_rng(5))
    expected = (plain.frames.astype(np.float64) + params.intensity.shift) * params.intensity.scale
    np.testing.assert_allclose(first.frames, expected, atol=1e-5)
    _same(expand_targets(first.targets, 5), expand_targets(plain.targets, 5))
