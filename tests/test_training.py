"""Tests of rshn_tf.training and rshn_tf.model_folder: schedule, optimisers, the loop, resume, signals, weights,
tf.distribute.

The loop runs on hand-made samples (moving textured disks; every sample a function of (seed, index)) with a small
CPU network (3 levels, 8 filters, 8-d embeddings, 32 × 32 tiles, 3 frames), so the file needs no training data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from rshn_tf.config import Config, load_config, validate
from rshn_tf.errors import RshnError
from rshn_tf.losses import total_loss
from rshn_tf.model_folder import ModelFolder, load_trained_model
from rshn_tf.models import build_model
from rshn_tf.training import (
    NesterovAdam,
    StopRequest,
    build_optimizer,
    build_strategy,
    check_resume_config,
    learning_rate_schedule,
    pipeline_dataset_fn,
    pipeline_validation_fn,
    train,
)
from rshn_tf.training_logs import read_loss_log

REPO_ROOT = Path(__file__).resolve().parents[1]
LOSS_COLUMNS = ("total", "regularization", "hourglass_0/loss", "hourglass_1/loss", "hourglass_0/background",
                "hourglass_1/instances")


# ---------------------------------------------------------------------------------------------------------------
# Hand-made training data


def small_config(**training: object) -> Config:
    """The small CPU configuration of these tests; ``training`` overrides keys of the training section."""
    config = Config()
    config.data.tile_size = [32, 32]
    config.data.sequence_length = 3
    config.inference.tile_overlap = 16
    config.model.levels = 3
    config.model.filters = 8
    config.model.embedding_size = 8
    config.loss.max_instances = 4
    config.training.iterations = 12
    config.training.checkpoint_every = 4
    config.training.log_every = 2
    config.training.image_every = 4
    config.training.seed = 3
    for key, value in training.items():
        setattr(config.training, key, value)
    validate(config)
    return config


def disk_sample(seed: int, index: int, config: Config) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sample ``index`` of stream ``seed``: 2–3 textured disks moving over the frames, noise, full targets.

    Every instance's neighbours are all other instances; background and foreground cover every frame.
    """
    rng = np.random.default_rng([seed, index])
    frames_count = config.data.sequence_length
    height, width = config.data.tile_size
    max_instances = config.loss.max_instances
    count = int(rng.integers(2, 4))
    yy, xx = np.mgrid[:height, :width]
    labels = np.zeros((frames_count, height, width), np.int32)
    image = rng.normal(0.0, 0.15, size=labels.shape)
    for k in range(count):
        centre = rng.uniform(8, height - 8, size=2)
        velocity = rng.uniform(-1.5, 1.5, size=2)
        radius = rng.uniform(4.5, 7.5)
        brightness = rng.uniform(0.6, 1.4)
        for t in range(frames_count):
            cy, cx = centre + t * velocity
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
            labels[t][disk] = k + 1
            image[t][disk] += brightness
    instances = np.stack([labels == k + 1 for k in range(max_instances)])
    neighbours = np.stack([(labels > 0) & (labels != k + 1) if k < count else np.zeros_like(labels, bool)
                           for k in range(max_instances)])
    targets = dict(instance_masks=instances, neighbour_masks=neighbours, background_mask=labels == 0,
                   foreground_mask=labels > 0, valid_mask=np.ones(labels.shape, bool))
    return image[..., None].astype(np.float32), targets


def disk_dataset_fn(config: Config, bank: int = 8, interrupt_at_sample: int | None = None):
    """A dataset function over ``bank`` distinct disk samples (sample i = bank[i % bank]); optionally sends
    SIGINT to this process when sample ``interrupt_at_sample`` is produced (a Ctrl-C in the middle of training)."""
    samples = [disk_sample(config.training.seed, i, config) for i in range(bank)]
    frames_array = np.stack([s[0] for s in samples])
    targets_arrays = {key: np.stack([s[1][key] for s in samples]) for key in samples[0][1]}

    def interrupt(index):
        if int(index) == interrupt_at_sample:
            os.kill(os.getpid(), signal.SIGINT)
        return index

    def dataset_fn(first_sample: int, batch_size: int) -> tf.data.Dataset:
        # tensors are made here, not above: a MultiWorkerMirroredStrategy must be created before TF initialises
        frames = tf.constant(frames_array)
        targets = {key: tf.constant(value) for key, value in targets_arrays.items()}
        indices = tf.data.Dataset.range(first_sample, first_sample + 10**9)
        if interrupt_at_sample is not None:
            indices = indices.map(lambda i: tf.py_function(interrupt, [i], tf.int64))
        dataset = indices.map(lambda i: (tf.gather(frames, i % bank),
                                         {key: tf.gather(value, i % bank) for key, value in targets.items()}))
        return dataset.batch(batch_size, drop_remainder=True)

    return dataset_fn


def disk_validation_fn(config: Config, count: int = 4):
    """Validation batches: samples of another seed, the same at every call."""
    samples = [disk_sample(config.training.seed + 100, i, config) for i in range(count)]

    def validation_fn(batch_size: int) -> tf.data.Dataset:
        frames = np.stack([s[0] for s in samples])
        targets = {key: np.stack([s[1][key] for s in samples]) for key in samples[0][1]}
        return tf.data.Dataset.from_tensor_slices((frames, targets)).batch(batch_size, drop_remainder=True)

    return validation_fn


def losses_of(model_dir: Path) -> dict[str, np.ndarray]:
    return read_loss_log(ModelFolder(model_dir).losses_path)


# ---------------------------------------------------------------------------------------------------------------
# Schedule and optimisers


@pytest.mark.parametrize("iterations, drop", [(60000, 30000), (40000, 20000), (7, 4)])
def test_learning_rate_drops_after_the_configured_fraction_of_iterations(iterations, drop):
    config = Config()
    config.training.iterations = iterations
    schedule = learning_rate_schedule(config.training)
    for step, expected in [(0, 1e-4), (drop - 1, 1e-4), (drop, 1e-5), (iterations - 1, 1e-5)]:
        assert schedule.value(step) == expected
        assert float(schedule(tf.constant(step, tf.int64))) == pytest.approx(expected, rel=1e-6)


def numpy_tf1_adam(gradients, start, lr_of_step, epsilon, nesterov, beta1=0.9, beta2=0.999):
    """TF1 ApplyAdam (training_ops.cc) in float64: the paper's Adam and, with nesterov, the code's Nadam."""
    var = np.array(start, np.float64)
    m = np.zeros_like(var)
    v = np.zeros_like(var)
    for t, g in enumerate(gradients, start=1):
        alpha = lr_of_step(t - 1) * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
        m += (g - m) * (1 - beta1)
        v += (g * g - v) * (1 - beta2)
        direction = (g * (1 - beta1) + beta1 * m) if nesterov else m
        var -= direction * alpha / (np.sqrt(v) + epsilon)
    return var


@pytest.mark.parametrize("name", ["adam", "nadam"])
def test_optimizers_follow_the_tf1_update_rules_and_the_schedule(name):
    config = Config()
    config.training.optimizer = name
    config.training.iterations = 6
    config.training.learning_rate = 1e-2
    config.training.learning_rate_final = 1e-3
    config.training.adam_epsilon = 1e-3  # large enough that a wrong epsilon placement shows
    optimizer = build_optimizer(config.training)
    assert isinstance(optimizer, NesterovAdam) == (name == "nadam")
    rng = np.random.default_rng(0)
    start = rng.normal(size=5)
    gradients = rng.normal(size=(6, 5))
    variable = keras.Variable(start.astype(np.float32))
    for g in gradients:
        optimizer.apply_gradients([(tf.constant(g, tf.float32), variable)])
    schedule = learning_rate_schedule(config.training)
    expected = numpy_tf1_adam(gradients, start, schedule.value, 1e-3, nesterov=name == "nadam")
    np.testing.assert_allclose(np.asarray(variable), expected, rtol=1e-5, atol=1e-7)
    other = numpy_tf1_adam(gradients, start, schedule.value, 1e-3, nesterov=name != "nadam")
    assert np.max(np.abs(other - expected)) > 1e-3  # the two rules are distinguishable with these numbers


def test_default_strategy_is_one_replica_and_strategy_names_are_validated(tmp_path):
    assert build_strategy(Config().training).num_replicas_in_sync == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  strategy: horovod\n")
    with pytest.raises(RshnError, match="training.strategy"):
        load_config(bad)
    bad.write_text("training:\n  batch_size: 2\n  validation_samples: 3\n")
    with pytest.raises(RshnError, match="training.validation_samples"):
        load_config(bad)


# ---------------------------------------------------------------------------------------------------------------
# The loop


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted 12-iteration run; (config, model folder, result)."""
    config = small_config()
    model_dir = tmp_path_factory.mktemp("uninterrupted") / "model"
    result = train(config, model_dir, dataset_fn=disk_dataset_fn(config), progress=False)
    return config, model_dir, result


def test_a_run_writes_the_whole_model_folder(uninterrupted):
    config, model_dir, result = uninterrupted
    assert result.finished and not result.interrupted and result.step == 12
    folder = ModelFolder(model_dir)
    assert folder.read_config().to_dict() == config.to_dict()
    state = folder.read_state()
    assert state["step"] == 12 and state["finished"] and not state["interrupted"]
    assert folder.weights_path("best").is_file() and folder.weights_path("last").is_file()
    # max_checkpoints defaults to 3: steps 4, 8, 12
    assert sorted(p.name for p in folder.checkpoint_dir.glob("ckpt-*.index")) == \
        ["ckpt-12.index", "ckpt-4.index", "ckpt-8.index"]
    losses = losses_of(model_dir)
    np.testing.assert_array_equal(losses["step"], np.arange(1, 13))
    # iterations 12, drop fraction 0.5: updates 0..5 (steps 1..6) at 1e-4, then 1e-5
    np.testing.assert_allclose(losses["learning_rate"], [1e-4] * 6 + [1e-5] * 6)
    np.testing.assert_allclose(losses["total"], losses["hourglass_0/loss"] + losses["hourglass_1/loss"]
                               + losses["regularization"], rtol=1e-5)
    assert list(folder.log_dir.glob("events.out.tfevents.*"))


def read_events(log_dir: Path) -> dict[str, list[tuple[int, np.ndarray, str]]]:
    """tag -> [(step, value, plugin name)] from the TensorBoard event files of ``log_dir`` (TensorFlow only)."""
    events: dict[str, list] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                events.setdefault(value.tag, []).append(
                    (event.step, tf.make_ndarray(value.tensor), value.metadata.plugin_data.plugin_name))
    return events


def test_tensorboard_holds_every_loss_term_speed_and_embedding_images(uninterrupted):
    _, model_dir, _ = uninterrupted
    events = read_events(ModelFolder(model_dir).log_dir)
    for key in ("loss/total", "loss/regularization", "loss/hourglass_1/background", "loss/hourglass_0/instances",
                "learning_rate", "speed/iterations_per_second", "speed/samples_per_second",
                "speed/input_wait_fraction"):
        assert [step for step, _, _ in events[key]] == [2, 4, 6, 8, 10, 12], key
        assert {plugin for _, _, plugin in events[key]} == {"scalars"}
    # the logged value is the mean over the interval (steps 1 and 2)
    assert float(events["loss/total"][0][1]) == pytest.approx(float(np.mean(losses_of(model_dir)["total"][:2])),
                                                             rel=1e-5)
    assert [float(v) for _, v, _ in events["learning_rate"]] == pytest.approx([1e-4, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5])
    for tag, channels in (("embeddings/dims_0-2_rgb", 3), ("input/frames", 1)):
        assert [step for step, _, _ in events[tag]] == [4, 8, 12]
        step, blobs, plugin = events[tag][0]
        assert plugin == "images" and [int(b) for b in blobs[:2]] == [32, 32]
        pngs = [tf.io.decode_png(blob).numpy() for blob in blobs[2:]]
        assert len(pngs) == 3 and all(png.shape == (32, 32, channels) for png in pngs)  # one per frame
    rgb = np.stack([tf.io.decode_png(blob).numpy() for blob in events["embeddings/dims_0-2_rgb"][-1][1][2:]])
    assert rgb.std() > 0  # the embeddings are not constant


def test_killed_and_resumed_run_reproduces_the_uninterrupted_loss_curve(uninterrupted, tmp_path):
    config, reference_dir, reference_result = uninterrupted
    model_dir = tmp_path / "model"
    # Ctrl-C while sample 6 is produced: the loop finishes the current iteration, saves and returns.
    first = train(config, model_dir, dataset_fn=disk_dataset_fn(config, interrupt_at_sample=6), progress=False)
    assert first.interrupted and first.signal_name == "SIGINT" and not first.finished
    assert 1 <= first.step < 12
    folder = ModelFolder(model_dir)
    state = folder.read_state()
    assert state["interrupted"] and state["step"] == first.step
    assert (folder.checkpoint_dir / f"ckpt-{first.step}.index").is_file()
    assert len(losses_of(model_dir)["step"]) == first.step
    # a run killed hard (SIGKILL) also leaves rows after its last checkpoint: resuming must replace them
    columns = len(losses_of(model_dir))
    with open(folder.losses_path, "a", encoding="utf-8") as handle:
        handle.write(",".join([str(first.step + 1)] + ["9.0"] * (columns - 1)) + "\n")

    second = train(config, model_dir, resume=True, dataset_fn=disk_dataset_fn(config), progress=False)
    assert second.finished and second.step == 12
    assert second.best_step == reference_result.best_step
    assert second.best_loss == pytest.approx(reference_result.best_loss, rel=1e-6)
    resumed, reference = losses_of(model_dir), losses_of(reference_dir)
    np.testing.assert_array_equal(resumed["step"], np.arange(1, 13))
    np.testing.assert_array_equal(resumed["learning_rate"], reference["learning_rate"])
    for column in LOSS_COLUMNS:
        np.testing.assert_allclose(resumed[column], reference[column], rtol=1e-6, atol=1e-7, err_msg=column)
    final, _ = load_trained_model(model_dir, "last")
    expected, _ = load_trained_model(reference_dir, "last")
    for a, b in zip(final.weights, expected.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_best_weights_follow_the_mean_training_loss_of_each_checkpoint_interval(uninterrupted):
    _, model_dir, result = uninterrupted
    losses = losses_of(model_dir)
    data_loss = losses["total"] - losses["regularization"]
    interval_means = data_loss.reshape(3, 4).mean(axis=1)  # checkpoints at 4, 8, 12
    assert result.best_step == 4 * (int(np.argmin(interval_means)) + 1)
    assert result.best_loss == pytest.approx(float(interval_means.min()), rel=1e-6)


@pytest.fixture(scope="module")
def snapshot_run(tmp_path_factory):
    """An uninterrupted 6-iteration run with a weight snapshot every 2 iterations; (config, model folder)."""
    config = small_config(iterations=6, snapshot_every=2)
    model_dir = tmp_path_factory.mktemp("snapshots") / "model"
    result = train(config, model_dir, dataset_fn=disk_dataset_fn(config), progress=False)
    assert result.finished and result.step == 6
    return config, model_dir


def weights_of(model_dir: Path, weights: str) -> list[np.ndarray]:
    """The weight arrays of ``weights`` (``best``, ``last`` or a file) loaded into the network of ``model_dir``."""
    model, _ = load_trained_model(model_dir, weights)
    return [np.asarray(w) for w in model.weights]


def test_snapshots_are_taken_every_snapshot_every_iterations(snapshot_run, uninterrupted):
    _, model_dir = snapshot_run
    folder = ModelFolder(model_dir)
    snapshots = folder.snapshots()
    assert list(snapshots) == [2, 4, 6]
    assert snapshots == {step: folder.snapshot_dir / f"weights.{step:06d}.weights.h5" for step in (2, 4, 6)}
    assert all(folder.snapshot_path(step) == path for step, path in snapshots.items())
    assert sorted(p.name for p in folder.snapshot_dir.iterdir()) == [
        "weights.000002.weights.h5", "weights.000004.weights.h5", "weights.000006.weights.h5"]  # no temporary files
    last, six, two = (weights_of(model_dir, name) for name in ("last", str(snapshots[6]), str(snapshots[2])))
    for a, b in zip(last, six):
        np.testing.assert_array_equal(a, b)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(two, six)) > 0  # training moved on after step 2
    # the default (0) takes none
    assert not ModelFolder(uninterrupted[1]).snapshot_dir.exists() and ModelFolder(uninterrupted[1]).snapshots() == {}


def test_snapshots_lists_only_numbered_weights_in_step_order(tmp_path):
    folder = ModelFolder(tmp_path / "model")
    assert folder.snapshots() == {}
    folder.snapshot_dir.mkdir(parents=True)
    for name in ("weights.000100.weights.h5", "weights.000020.weights.h5", "weights.000003.weights.h5",
                 "weights.best.weights.h5", "weights.000007.h5", "notes.txt"):
        (folder.snapshot_dir / name).write_bytes(b"")
    assert list(folder.snapshots()) == [3, 20, 100]
    assert folder.snapshot_path(1234567).name == "weights.1234567.weights.h5"
    assert folder.snapshots()[20] == folder.snapshot_path(20)


def test_resume_with_another_snapshot_interval(snapshot_run, tmp_path):
    config, reference_dir = snapshot_run
    model_dir = tmp_path / "model"
    first = train(config, model_dir, dataset_fn=disk_dataset_fn(config, interrupt_at_sample=3), progress=False)
    assert first.interrupted and 1 <= first.step < 6
    folder = ModelFolder(model_dir)
    assert list(folder.snapshots()) == [step for step in (2, 4) if step <= first.step]
    changed = small_config(iterations=6, snapshot_every=3)
    assert check_resume_config(config, changed) == []
    second = train(changed, model_dir, resume=True, dataset_fn=disk_dataset_fn(changed), progress=False)
    assert second.finished and second.step == 6
    expected = {step for step in (2, 4, 6) if step <= first.step} | {step for step in (3, 6) if step > first.step}
    assert list(folder.snapshots()) == sorted(expected)
    for a, b in zip(weights_of(model_dir, "last"), weights_of(model_dir, str(folder.snapshot_path(6)))):
        np.testing.assert_array_equal(a, b)
    # the resumed run reproduces the uninterrupted one, snapshots included
    for a, b in zip(weights_of(model_dir, str(folder.snapshot_path(6))),
                    weights_of(reference_dir, str(ModelFolder(reference_dir).snapshot_path(6)))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_loss_falls_clearly_and_validation_picks_the_best_weights(tmp_path):
    config = small_config(iterations=60, validation_every=15, learning_rate=2e-3, learning_rate_final=2e-3,
                          checkpoint_every=60, log_every=30, image_every=0)
    validation_fn = disk_validation_fn(config)
    result = train(config, tmp_path / "model", dataset_fn=disk_dataset_fn(config, bank=16),
                   validation_fn=validation_fn, progress=False)
    total = losses_of(tmp_path / "model")["total"]
    first, last = total[:10].mean(), total[-10:].mean()
    assert last < 0.7 * first, (first, last)
    validation = read_loss_log(ModelFolder(tmp_path / "model").validation_path)
    np.testing.assert_array_equal(validation["step"], [15, 30, 45, 60])
    assert validation["validation_loss"][-1] < validation["validation_loss"][0]
    assert result.best_step == int(validation["step"][np.argmin(validation["validation_loss"])])
    model, loaded_config = load_trained_model(tmp_path / "model", "best")
    batch = next(iter(validation_fn(4)))
    recomputed, _ = total_loss(model(batch[0]), batch[1], [], loaded_config.loss)
    assert float(recomputed) == pytest.approx(float(validation["validation_loss"].min()), rel=1e-5)


def test_pipeline_sources_read_the_training_and_validation_sequences(synthetic_dataset):
    config = load_config(None, ["data.train_sequences=[\"01\"]", "data.tile_size=[64, 64]",
                                "data.sequence_length=3", "data.border_band=0", "loss.max_instances=4",
                                "inference.tile_overlap=16", "training.batch_size=2",
                                "training.validation_samples=4", "training.validation_sequences=[\"02\"]"])
    config.data.dataset_dir = str(synthetic_dataset)
    train_batches = iter(pipeline_dataset_fn(config)(6, 2))
    frames, targets = next(train_batches)
    assert frames.shape == (2, 3, 64, 64, 1) and targets["instance_masks"].shape == (2, 4, 3, 64, 64)
    validation_fn = pipeline_validation_fn(config)
    first = [batch[0].numpy() for batch in validation_fn(2)]
    second = [batch[0].numpy() for batch in validation_fn(2)]
    assert len(first) == 2  # 4 samples in batches of 2
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)  # the same validation samples at every evaluation
    assert not np.array_equal(first[0], next(iter(pipeline_dataset_fn(config)(0, 2)))[0].numpy())
    config.training.validation_sequences = []
    with pytest.raises(RshnError, match="needs 'training.validation_sequences'"):
        pipeline_validation_fn(config)
    config.data.dataset_dir = None
    with pytest.raises(RshnError, match="no dataset folder"):
        pipeline_dataset_fn(config)


# ---------------------------------------------------------------------------------------------------------------
# Folder rules and errors


def test_an_existing_run_is_not_overwritten_and_resume_needs_a_run(uninterrupted, tmp_path):
    config, model_dir, _ = uninterrupted
    with pytest.raises(RshnError, match="already holds a training run; continue it with --resume"):
        train(config, model_dir, dataset_fn=disk_dataset_fn(config), progress=False)
    with pytest.raises(RshnError, match="config.yaml not found"):
        train(config, tmp_path / "nothing", resume=True, dataset_fn=disk_dataset_fn(config), progress=False)


def test_resume_refuses_a_config_that_changes_the_run(uninterrupted):
    config, model_dir, _ = uninterrupted
    changed = small_config(learning_rate=5e-4, log_every=7)
    changed.model.filters = 16
    assert check_resume_config(config, changed) == ["model.filters", "training.learning_rate"]
    with pytest.raises(RshnError, match=r"model.filters: 8 -> 16; training.learning_rate: 0.0001 -> 0.0005"):
        train(changed, model_dir, resume=True, dataset_fn=disk_dataset_fn(config), progress=False)


def test_resuming_a_finished_run_does_nothing(uninterrupted):
    config, model_dir, _ = uninterrupted
    before = losses_of(model_dir)["total"].copy()
    result = train(config, model_dir, resume=True, dataset_fn=disk_dataset_fn(config), progress=False)
    assert result.finished and result.step == 12
    np.testing.assert_array_equal(losses_of(model_dir)["total"], before)


def test_load_trained_model_rebuilds_the_network_and_reports_problems(uninterrupted, tmp_path):
    config, model_dir, _ = uninterrupted
    model, loaded = load_trained_model(model_dir)
    assert loaded.model == config.model and model.levels == 3 and model.embedding_size == 8
    with pytest.raises(RshnError, match="does not exist"):
        load_trained_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RshnError, match="config.yaml: missing"):
        load_trained_model(tmp_path / "empty")
    folder = ModelFolder(tmp_path / "partial")
    folder.write_config(config)
    with pytest.raises(RshnError, match="partial: no weights .* the run exported none yet"):
        load_trained_model(folder.root)
    with pytest.raises(RshnError, match="best weights of model folder .* the run exported no weights yet"):
        load_trained_model(folder.root, "best")
    other = small_config()
    other.model.levels = 2  # fewer layers: Keras alone would load a subset silently
    other_folder = ModelFolder(tmp_path / "other")
    other_folder.write_config(other)
    with pytest.raises(RshnError, match="do not belong to a network built from this config"):
        load_trained_model(other_folder.root, str(ModelFolder(model_dir).weights_path("best")))
    with pytest.raises(RshnError, match="weights must be one of best, last"):
        ModelFolder(model_dir).weights_path("first")


def test_stop_request_turns_signals_into_a_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_number == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------------------------------------------------------
# Subprocesses: SIGTERM and tf.distribute (logical devices must be set before TensorFlow initialises)


def run_python(code: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


SMALL_YAML = """\
data:
  train_sequences: ["01"]
  tile_size: [64, 64]
  sequence_length: 3
  border_band: 0
  num_workers: 1
model: {levels: 3, filters: 8, embedding_size: 8}
loss: {max_instances: 4, neighbour_radius: 20}
inference: {tile_overlap: 16}
training: {iterations: 40, checkpoint_every: 5, log_every: 5, image_every: 0}
"""


@pytest.mark.slow
def test_rshn_train_killed_by_sigterm_and_resumed_reproduces_the_uninterrupted_run(tmp_path, synthetic_dataset):
    """``rshn train`` end to end on a synthetic CTC video through the data_io pipeline. A run in its own process
    gets SIGTERM after its first checkpoint (exit status 128 + 15, checkpoint of the step reached), ``--resume``
    finishes it, and its loss curve equals that of an uninterrupted run."""
    from rshn_tf.cli import EXIT_USER_ERROR, main

    data = synthetic_dataset
    config_path = tmp_path / "small.yaml"
    config_path.write_text(SMALL_YAML)
    args = ["train", str(config_path), "--data", str(data)]
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen([sys.executable, "-m", "rshn_tf.cli", *args, "--model-dir", str(killed)],
                               cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_checkpoint = killed / "checkpoints" / "ckpt-5.index"
    try:
        deadline = time.monotonic() + 300
        while not first_checkpoint.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first_checkpoint.is_file(), process.communicate()[1][-3000:]
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM at iteration" in err and "continue with --resume" in err
    folder = ModelFolder(killed)
    state = folder.read_state()
    stopped = state["step"]
    assert state["interrupted"] and not state["finished"] and 5 <= stopped < 40
    assert (folder.checkpoint_dir / f"ckpt-{stopped}.index").is_file()
    np.testing.assert_array_equal(losses_of(killed)["step"], np.arange(1, stopped + 1))
    # resuming with a different network is refused before anything runs
    assert main([*args, "--model-dir", str(killed), "--resume", "--set", "model.filters=16"]) == EXIT_USER_ERROR

    assert main([*args, "--model-dir", str(killed), "--resume"]) == 0
    assert main([*args, "--model-dir", str(reference)]) == 0
    resumed, uninterrupted = losses_of(killed), losses_of(reference)
    np.testing.assert_array_equal(resumed["step"], np.arange(1, 41))
    for column in LOSS_COLUMNS:
        np.testing.assert_allclose(resumed[column], uninterrupted[column], rtol=1e-6, atol=1e-7, err_msg=column)
    model, config = load_trained_model(killed)
    assert config.data.dataset_dir == str(data) and model.filters == 8


@pytest.mark.slow
def test_mirrored_strategy_on_two_cpu_devices_matches_the_single_device_step():
    """One update on the same 2-sample batch: MirroredStrategy (one sample per replica) vs one device: the same loss
    terms and the same updated weights. (train() under a 2-replica strategy: the multi-worker test below.)"""
    code = f"""
        import json
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tests.test_training import small_config, disk_sample
        from rshn_tf.training import build_model_and_optimizer, build_strategy, make_train_step

        def one_step(strategy_name):
            config = small_config(strategy=strategy_name, batch_size=2)
            strategy = build_strategy(config.training)
            model, optimizer = build_model_and_optimizer(config, strategy)
            samples = [disk_sample(config.training.seed, i, config) for i in range(2)]
            batch = (np.stack([s[0] for s in samples]), {{k: np.stack([s[1][k] for s in samples])
                                                          for k in samples[0][1]}})
            distributed = next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))))
            initial = [np.asarray(w) for w in model.weights]
            terms = make_train_step(model, optimizer, strategy, config)(distributed)
            return initial, strategy.num_replicas_in_sync, {{k: float(v) for k, v in terms.items()}}, \\
                [np.asarray(w) for w in model.weights]

        _, replicas_m, terms_m, weights_m = one_step("mirrored")
        initial, replicas_d, terms_d, weights_d = one_step("default")
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights_m, weights_d))
        moved = max(float(np.max(np.abs(a - b))) for a, b in zip(weights_d, initial))
        print("RESULT" + json.dumps(dict(replicas=[replicas_m, replicas_d], terms=[terms_m, terms_d],
                                         weight_diff=diff, moved=moved)))
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.split("RESULT")[1])
    assert report["replicas"] == [2, 1]
    terms_m, terms_d = report["terms"]
    assert set(terms_m) == set(terms_d)
    for key in terms_d:
        assert terms_m[key] == pytest.approx(terms_d[key], rel=1e-5, abs=1e-7), key
    assert report["weight_diff"] < 1e-6
    assert report["moved"] > 100 * report["weight_diff"] and report["moved"] > 1e-5  # the update is not empty


def free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def first_batch_loss(config: Config) -> float:
    """Eager reference: the loss of the seeded initial network on samples 0 … B−1 (what step 1 logs)."""
    keras.utils.set_random_seed(config.training.seed)
    model = build_model(config.model)
    samples = [disk_sample(config.training.seed, i, config) for i in range(config.training.batch_size)]
    frames = np.stack([sample[0] for sample in samples])
    targets = {key: np.stack([sample[1][key] for sample in samples]) for key in samples[0][1]}
    return float(total_loss(model(frames), targets, model.losses, config.loss)[0])


@pytest.mark.slow
def test_multi_worker_strategy_with_two_local_workers(tmp_path):
    """Two worker processes on this machine (cluster in $TF_CONFIG), one replica each, global batch 2: both finish,
    the chief writes the model folder and the other worker leaves nothing; step 1 logs the global-batch loss."""
    ports = free_ports(2)
    code = f"""
        import sys
        from tests.test_training import small_config, disk_dataset_fn
        from rshn_tf.training import train
        config = small_config(strategy="multi_worker", batch_size=2, iterations=4, checkpoint_every=2)
        result = train(config, {str(tmp_path / "model")!r}, dataset_fn=disk_dataset_fn(config), progress=False)
        sys.exit(0 if result.finished else 1)
    """
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"localhost:{port}" for port in ports]},
                     "task": {"type": "worker", "index": index}}
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(tf_config))
        processes.append(subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, env=env,
                                          text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        outputs = [process.communicate(timeout=600) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-4000:]
    folder = ModelFolder(tmp_path / "model")
    assert folder.read_state()["finished"] and folder.weights_path("best").is_file()
    assert sorted(p.name for p in folder.root.iterdir()) == sorted(
        ["checkpoints", "config.yaml", "logs", "training_state.json", "weights.best.weights.h5",
         "weights.last.weights.h5"])  # the non-chief's scratch folder is gone
    curve = losses_of(folder.root)
    np.testing.assert_array_equal(curve["step"], [1, 2, 3, 4])
    assert curve["total"][0] == pytest.approx(first_batch_loss(small_config(batch_size=2)), rel=1e-5)
