"""Training the networks (paper §3.1; docs/fidelity.md §4): train step, schedule, checkpoints, resume, logs.

:func:`train` writes a model folder (:mod:`rshn_tf.model_folder`) and runs ``training.iterations`` updates of a
custom ``tf.function`` step (``tf.GradientTape``, the loss of :func:`rshn_tf.losses.total_loss` on every hourglass
plus the weight decay) under the ``tf.distribute`` strategy of ``training.strategy``:

* Optimiser (§3.1): Adam with ``training.learning_rate`` (1e-4) for the first
  round(``learning_rate_drop_fraction`` × ``iterations``) updates and ``learning_rate_final`` (1e-5) afterwards
  (:class:`StepLearningRate`); β1, β2 are the Keras defaults 0.9 / 0.999, equal to TF1's, and ε is
  ``training.adam_epsilon`` (TF1's 1e-8). ``training.optimizer: nadam`` selects the paper-era code's
  ``tf.contrib.opt.NadamOptimizer`` (:class:`NesterovAdam`).
* Data: a *dataset function* ``dataset_fn(first_sample, batch_size)`` returns an endless ``tf.data.Dataset`` of
  ``(frames (B, T, H, W, 1), targets)`` batches made of samples ``first_sample, first_sample + 1, …``; every sample
  is a deterministic function of (``training.seed``, sample index), so the stream resumes at any index. The default
  (:func:`pipeline_dataset_fn`) is the training pipeline of :mod:`data_io.pipeline` on ``data.train_sequences``.
* Checkpoints (``tf.train.CheckpointManager``, every ``checkpoint_every`` updates, at the end and when stopped by
  SIGINT/SIGTERM): model, optimiser (slots and iteration count, hence the learning-rate schedule), the step, the
  state of the random sample stream (seed and next sample index) and the bookkeeping of the ``best`` weights.
  ``resume=True`` restores the latest one and continues the same stream, so a killed run that is resumed gives the
  loss curve of an uninterrupted run (on CPU bit for bit; ``training.deterministic`` extends that to GPUs).
* Logs: ``logs/losses.csv`` (every iteration: learning rate, every loss term, seconds of the iteration and of
  them the seconds spent waiting for the input pipeline), TensorBoard scalars every
  ``log_every`` updates (interval means of every loss term, learning rate, iterations/s, samples/s and the
  fraction of time spent waiting for input) and images every ``image_every`` updates (three dimensions of the last
  hourglass's normalised embeddings of the first sample as RGB, next to its input frames), a tqdm progress bar
  (plain log lines when stderr is not a terminal).
* Exported weights: ``weights.last`` at every checkpoint and at the end; ``weights.best`` whenever the validation
  loss (``validation_every`` > 0, samples of ``validation_sequences``) or, without validation, the mean training
  loss of a checkpoint interval reaches a new minimum. Both criteria use the loss without the weight decay.

Distribution: ``training.batch_size`` is the global batch of one update; each replica gets an equal share and
:func:`rshn_tf.losses.total_loss` scales its loss so that the summed gradients are those of the global-batch mean
(Mirrored on one machine; MultiWorkerMirrored across machines, with the cluster in ``$TF_CONFIG`` and the model
folder on a filesystem shared by all workers; only the chief writes it).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import keras
import numpy as np
import tensorflow as tf

from rshn_tf.config import Config, TrainingConfig
from rshn_tf.console import progress_bar
from rshn_tf.errors import RshnError
from rshn_tf.losses import total_loss
from rshn_tf.model_folder import WEIGHTS_FILES, ModelFolder, save_weights_atomic
from rshn_tf.models import build_model
from rshn_tf.os_faults import remove_checkpoint_temps
from rshn_tf.output_lock import claim_output
from rshn_tf.training_logs import CsvLog, TensorBoardLog

log = logging.getLogger(__name__)

#: ``dataset_fn(first_sample, batch_size)`` → endless dataset of ``(frames, targets)`` batches.
DatasetFn = Callable[[int, int], tf.data.Dataset]
#: ``validation_fn(batch_size)`` → finite dataset of ``(frames, targets)`` batches (the same at every call).
ValidationFn = Callable[[int], tf.data.Dataset]

#: Sections whose values shape the sequence of updates; a resumed run must keep them, apart from the keys below.
TRAINING_SECTIONS = ("data", "model", "augmentation", "loss", "training")
#: Keys that may change on ``--resume`` because they do not change the updates (paths, speed, bookkeeping).
RESUME_MAY_CHANGE = frozenset({
    "data.dataset_dir", "data.num_workers", "data.prefetch", "data.worker_type",
    "training.checkpoint_every", "training.max_checkpoints", "training.snapshot_every", "training.log_every",
    "training.image_every", "training.strategy",
})

_SUM = tf.distribute.ReduceOp.SUM


# --------------------------------------------------------------------------------------------------------------
# Schedule and optimisers


@keras.saving.register_keras_serializable(package="rshn_tf")
class StepLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-constant learning rate with one drop (§3.1): ``initial`` for updates 0 … ``drop_step`` − 1, then
    ``final``. The step is the optimiser's count of updates already applied (0 for the first update)."""

    def __init__(self, initial: float, final: float, drop_step: int) -> None:
        self.initial = float(initial)
        self.final = float(final)
        self.drop_step = int(drop_step)

    def __call__(self, step: Any) -> tf.Tensor:
        step = tf.convert_to_tensor(step)
        return tf.where(step < tf.cast(self.drop_step, step.dtype), tf.constant(self.initial, tf.float32),
                        tf.constant(self.final, tf.float32))

    def value(self, step: int) -> float:
        """The learning rate of update ``step`` as a Python float."""
        return self.initial if step < self.drop_step else self.final

    def get_config(self) -> dict[str, Any]:
        return {"initial": self.initial, "final": self.final, "drop_step": self.drop_step}


def learning_rate_schedule(training: TrainingConfig) -> StepLearningRate:
    """The schedule of ``training``: the drop after round(``learning_rate_drop_fraction`` × ``iterations``) updates
    (§3.1: 30,000 of 60,000; the code's cross-validation folds: 20,000 of 40,000)."""
    drop_step = int(round(training.learning_rate_drop_fraction * training.iterations))
    return StepLearningRate(training.learning_rate, training.learning_rate_final, drop_step)


@keras.saving.register_keras_serializable(package="rshn_tf")
class NesterovAdam(keras.optimizers.Adam):
    """Adam with the Nesterov-style update of TF1's ``ApplyAdam(use_nesterov=True)``, i.e. the
    ``tf.contrib.opt.NadamOptimizer`` of the paper-era code (docs/fidelity.md §4.1).

    With m, v updated as in Adam and α = lr·√(1 − β2^t)/(1 − β1^t):
    θ ← θ − α·(β1·m + (1 − β1)·g)/(√v + ε). (Keras' own ``Nadam`` uses Dozat's momentum schedule instead.)
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        ops = keras.ops
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1 = ops.cast(self.beta_1, variable.dtype)
        beta_2 = ops.cast(self.beta_2, variable.dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        alpha = lr * ops.sqrt(1 - ops.power(beta_2, local_step)) / (1 - ops.power(beta_1, local_step))
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - beta_2))
        nesterov = ops.add(ops.multiply(m, beta_1), ops.multiply(gradient, 1 - beta_1))
        self.assign_sub(variable, ops.divide(ops.multiply(nesterov, alpha), ops.add(ops.sqrt(v), self.epsilon)))


def build_model_and_optimizer(config: Config, strategy: tf.distribute.Strategy) -> tuple[keras.Model, Any]:
    """The network and its built optimizer under ``strategy``, after seeding Keras with ``training.seed`` (§3.1)."""
    keras.utils.set_random_seed(config.training.seed)
    with strategy.scope():
        model = build_model(config.model)
        optimizer = build_optimizer(config.training)
        optimizer.build(model.trainable_variables)
    return model, optimizer


def build_optimizer(training: TrainingConfig) -> keras.optimizers.Optimizer:
    """Adam (§3.1) or the code's Nadam (:class:`NesterovAdam`) with the schedule of ``training``."""
    optimizer_class = {"adam": keras.optimizers.Adam, "nadam": NesterovAdam}[training.optimizer]
    return optimizer_class(learning_rate=learning_rate_schedule(training), epsilon=training.adam_epsilon)


# --------------------------------------------------------------------------------------------------------------
# Distribution


def build_strategy(training: TrainingConfig) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy named by ``training.strategy``.

    ``default``: the current (default) strategy, one device. ``mirrored``: ``MirroredStrategy`` over all local GPUs,
    or over all logical CPU devices when there is no GPU. ``multi_worker``: ``MultiWorkerMirroredStrategy`` (the
    cluster comes from ``$TF_CONFIG``; without it, one worker with its local devices).
    """
    if training.strategy == "default":
        return tf.distribute.get_strategy()
    if training.strategy == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the model folder (always, except on non-chief workers of a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        return True
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and int(resolver.task_id) == 0


# --------------------------------------------------------------------------------------------------------------
# Steps


def make_train_step(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    strategy: tf.distribute.Strategy,
    config: Config,
) -> Callable[[Any], dict[str, tf.Tensor]]:
    """The distributed train step: ``step(batch) -> loss terms`` (summed over replicas = global-batch values).

    ``batch`` is an element of ``strategy.experimental_distribute_dataset(dataset)`` (a plain ``(frames, targets)``
    batch under the default strategy). Each replica computes :func:`rshn_tf.losses.total_loss` on its share,
    differentiates it with ``tf.GradientTape`` and the optimiser sums the gradients over replicas before the update.
    """
    loss_config = config.loss
    global_batch_size = config.training.batch_size

    def replica_step(frames: tf.Tensor, targets: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            outputs = model(frames, training=True)
            total, terms = total_loss(outputs, targets, model.losses, loss_config, global_batch_size)
        gradients = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return terms

    @tf.function
    def train_step(batch: Any) -> dict[str, tf.Tensor]:
        frames, targets = batch
        terms = strategy.run(replica_step, args=(frames, targets))
        return {key: strategy.reduce(_SUM, value, axis=None) for key, value in terms.items()}

    return train_step


def make_eval_step(model: keras.Model, strategy: tf.distribute.Strategy, config: Config) -> Callable[[Any], tf.Tensor]:
    """``step(batch) -> loss`` without weight decay and without an update (the validation criterion)."""
    loss_config = config.loss
    global_batch_size = config.training.batch_size

    def replica_step(frames: tf.Tensor, targets: dict[str, tf.Tensor]) -> tf.Tensor:
        outputs = model(frames, training=False)
        total, _ = total_loss(outputs, targets, [], loss_config, global_batch_size)
        return total

    @tf.function
    def eval_step(batch: Any) -> tf.Tensor:
        frames, targets = batch
        return strategy.reduce(_SUM, strategy.run(replica_step, args=(frames, targets)), axis=None)

    return eval_step


def make_image_fn(model: keras.Model) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """``images(frames) -> (embedding RGB, input grey)`` for the first sample of a (B, T, H, W, 1) batch.

    RGB = embedding dimensions 0, 1, 2 of the last hourglass's L2-normalised embeddings mapped from [−1, 1] to
    [0, 1] (dimension 0 is the background direction e_b, §2.2); the input frames are min–max scaled. Both are
    (T, H, W, C) float32.
    """

    @tf.function
    def images(frames: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        first = frames[:1]
        embeddings = model.normalized_embeddings(model(first, training=False))[0]
        rgb = embeddings[..., :3]
        missing = 3 - rgb.shape[-1]
        if missing > 0:
            rgb = tf.pad(rgb, [[0, 0], [0, 0], [0, 0], [0, missing]])
        rgb = tf.clip_by_value((rgb + 1.0) / 2.0, 0.0, 1.0)
        grey = tf.cast(first[0], tf.float32)
        low, high = tf.reduce_min(grey), tf.reduce_max(grey)
        grey = (grey - low) / tf.maximum(high - low, 1e-12)
        return rgb, grey

    return images


def data_loss(terms: dict[str, Any]) -> float:
    """The loss of eq. 6 summed over the weighted hourglasses, without the weight decay."""
    return float(terms["total"]) - float(terms["regularization"])


# --------------------------------------------------------------------------------------------------------------
# Data


def pipeline_dataset_fn(config: Config) -> DatasetFn:
    """The training stream of :mod:`data_io.pipeline` on ``data.train_sequences`` of ``data.dataset_dir``.

    Raises:
        RshnError: If the dataset folder is not set or cannot be read.
    """
    from data_io.pipeline import training_dataset
    from data_io.sampling import TrainingData

    data = TrainingData.from_config(config)

    def dataset_fn(first_sample: int, batch_size: int) -> tf.data.Dataset:
        return training_dataset(data, seed=config.training.seed, start=first_sample, batch_size=batch_size)

    return dataset_fn


def pipeline_validation_fn(config: Config) -> ValidationFn:
    """Samples 0 … ``validation_samples`` − 1 of the stream of ``training.seed`` on ``validation_sequences``.

    Raises:
        RshnError: If ``training.validation_sequences`` is empty or cannot be read.
    """
    from data_io.pipeline import training_dataset
    from data_io.sampling import TrainingData

    if not config.training.validation_sequences:
        raise RshnError("key 'training.validation_every' > 0 needs 'training.validation_sequences' (e.g. [\"02\"]); "
                        "or set training.validation_every: 0 to pick the best weights by the training loss")
    validation_config = copy.deepcopy(config)
    validation_config.data.train_sequences = list(config.training.validation_sequences)
    data = TrainingData.from_config(validation_config)

    def validation_fn(batch_size: int) -> tf.data.Dataset:
        return training_dataset(data, seed=config.training.seed, start=0,
                                num_samples=config.training.validation_samples, batch_size=batch_size)

    return validation_fn


def _distribute(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset) -> Any:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


# --------------------------------------------------------------------------------------------------------------
# Stopping on signals


class StopRequest:
    """Context manager: SIGINT and SIGTERM set :attr:`signal_number` instead of killing the process, so the loop
    can save a checkpoint and return. A second SIGINT raises ``KeyboardInterrupt`` (stop without saving).
    Handlers are installed only in the main thread and restored on exit."""

    def __init__(self) -> None:
        self.signal_number: Optional[int] = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signal_number is not None

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signal_number is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = signum
        log.warning("%s received: saving a checkpoint after the current iteration, then stopping",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


# --------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class TrainingResult:
    """What :func:`train` did.

    Attributes:
        model_dir: The model folder.
        step: Updates done in total (including earlier runs of a resumed training).
        iterations: Updates asked for (``training.iterations``).
        finished: Whether ``step == iterations``.
        interrupted: Whether a SIGINT/SIGTERM stopped the run (a checkpoint of ``step`` was saved).
        signal_name: The name of that signal, or None.
        best_step: Step of the ``best`` weights (None when not exported yet).
        best_loss: Their criterion value (validation or smoothed training loss, without weight decay).
    """

    model_dir: Path
    step: int
    iterations: int
    finished: bool
    interrupted: bool
    signal_name: Optional[str]
    best_step: Optional[int]
    best_loss: Optional[float]


def check_resume_config(saved: Config, new: Config) -> list[str]:
    """Keys of the training sections in which ``new`` differs from ``saved`` and that may not change on resume.

    Returns:
        ``section.key`` names (empty when resuming is safe); see :data:`RESUME_MAY_CHANGE`.
    """
    saved_dict, new_dict = saved.to_dict(), new.to_dict()
    changed = []
    for section in TRAINING_SECTIONS:
        for key, value in new_dict[section].items():
            name = f"{section}.{key}"
            if name not in RESUME_MAY_CHANGE and saved_dict[section].get(key) != value:
                changed.append(name)
    return changed


def _failure(folder: ModelFolder) -> Optional[str]:
    """What a rerun of a failed run (``training_state.json`` records ``failed``) reads, or None."""
    failed = (folder.read_state() or {}).get("failed")
    if not failed:
        return None
    return (f"the training run in {folder.root} failed ({failed}); start it over with 'rshn train --restart' "
            f"(discards its config, weights, checkpoints and logs) or by deleting {folder.root}")


def _prepare_folder(folder: ModelFolder, config: Config, resume: bool) -> None:
    failure = _failure(folder)
    if resume and failure:
        raise RshnError(f"--resume: {failure}; resuming would repeat the failure")
    if resume:
        if not folder.config_path.is_file():
            raise RshnError(f"--resume: {folder.config_path} not found; {folder.root} is not a model folder of an "
                            "earlier 'rshn train' run (drop --resume to start a new one)")
        saved = folder.read_config()
        changed = check_resume_config(saved, config)
        if changed:
            details = "; ".join(
                f"{name}: {getattr(getattr(saved, name.split('.')[0]), name.split('.')[1])!r} -> "
                f"{getattr(getattr(config, name.split('.')[0]), name.split('.')[1])!r}" for name in changed)
            raise RshnError(f"--resume: the config differs from {folder.config_path} in keys that change the "
                            f"training run ({details}); resume with that file as the config, train into a new "
                            "--model-dir, or start the run over with --restart (discards it)")
    elif folder.has_training_output():
        if failure:
            raise RshnError(f"{failure}, or choose another --model-dir")
        raise RshnError(f"model folder {folder.root} already holds a training run; continue it with --resume, start "
                        "it over with --restart (discards it), or choose another --model-dir")


def train(
    config: Config,
    model_dir: str | os.PathLike,
    *,
    resume: bool = False,
    restart: bool = False,
    dataset_fn: Optional[DatasetFn] = None,
    validation_fn: Optional[ValidationFn] = None,
    progress: Optional[bool] = None,
) -> TrainingResult:
    """Train the network of ``config`` into ``model_dir`` (see the module docstring).

    Args:
        config: The resolved configuration (``data``, ``model``, ``loss``, ``training`` … sections).
        model_dir: The model folder to write; it must not hold a run unless ``resume`` is set.
        resume: Continue the run in ``model_dir`` from its latest checkpoint (from scratch, with a warning, when it
            was stopped before its first checkpoint). The config must match the folder's ``config.yaml`` except for
            :data:`RESUME_MAY_CHANGE`.
        restart: Discard the run in ``model_dir`` (e.g. one that failed with a non-finite loss) once the folder is
            locked, and start a new one.
        dataset_fn: Source of training batches (default :func:`pipeline_dataset_fn`).
        validation_fn: Source of validation batches when ``training.validation_every`` > 0 (default
            :func:`pipeline_validation_fn`).
        progress: Show a tqdm progress bar (None: on a terminal; plain log lines when stderr is not one).

    With ``training.strategy: multi_worker``, nothing may start TensorFlow's runtime before this call (e.g. create
    tensors in ``dataset_fn`` only when it is called): TensorFlow configures the collectives at startup.

    The folder is checked for writability and locked for the whole run (one writer; a second ``rshn train`` or a
    ``--resume`` while the run lives is refused, naming it): :func:`~rshn_tf.output_lock.claim_output`.

    Returns:
        A :class:`TrainingResult`; ``interrupted`` is set when SIGINT/SIGTERM stopped the run after saving.

    Raises:
        RshnError: On a folder conflict, a config that cannot be resumed, a batch size the replicas cannot share,
            missing data, or a dataset that ends early.
    """
    if resume and restart:
        raise RshnError("--resume continues a run and --restart discards it; give one of them")
    if not _writes_folder(config.training):  # a non-chief worker: the chief holds the folder
        return _train(config, ModelFolder(model_dir), resume, dataset_fn, validation_fn, progress)
    with claim_output(model_dir, "model folder", inside=True):
        folder = ModelFolder(model_dir)
        if restart and folder.has_training_output():
            discard_run(folder)
        remove_checkpoint_temps(folder.checkpoint_dir)  # of a killed run
        try:
            return _train(config, folder, resume, dataset_fn, validation_fn, progress)
        except BaseException:
            remove_checkpoint_temps(folder.checkpoint_dir)  # of a save that failed (e.g. the disk is full)
            raise


def _writes_folder(training: TrainingConfig) -> bool:
    """Whether this process writes the model folder, decided before TensorFlow starts (the rule of
    :func:`is_chief`, read from ``$TF_CONFIG``)."""
    if training.strategy != "multi_worker":
        return True
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        return True
    cluster, task = tf_config.get("cluster") or {}, tf_config.get("task") or {}
    if not cluster:
        return True
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def discard_run(folder: ModelFolder) -> None:
    """Remove what ``rshn train`` wrote into ``folder`` (other files are kept), for ``--restart``."""
    log.warning("--restart: discarding the training run in %s", folder.root)
    for path in (folder.config_path, folder.state_path, *(folder.weights_path(w) for w in WEIGHTS_FILES)):
        path.unlink(missing_ok=True)
    for path in (folder.checkpoint_dir, folder.log_dir, folder.snapshot_dir, *folder.root.glob(".worker_*")):
        shutil.rmtree(path, ignore_errors=True)


def _train(config: Config, folder: ModelFolder, resume: bool, dataset_fn: Optional[DatasetFn],
           validation_fn: Optional[ValidationFn], progress: Optional[bool]) -> TrainingResult:
    """The work of :func:`train` once the folder is held."""
    training = config.training
    _prepare_folder(folder, config, resume)
    # the data first: a wrong path fails before anything is written (and before TensorFlow starts, which
    # MultiWorkerMirroredStrategy requires)
    if dataset_fn is None:
        dataset_fn = pipeline_dataset_fn(config)
    if training.validation_every > 0 and validation_fn is None:
        validation_fn = pipeline_validation_fn(config)
    if training.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = build_strategy(training)
    replicas = strategy.num_replicas_in_sync
    if training.batch_size % replicas:
        raise RshnError(f"key 'training.batch_size' = {training.batch_size} must be a multiple of the "
                        f"{replicas} replicas of training.strategy = {training.strategy!r}")
    chief = is_chief(strategy)
    writer_folder = folder if chief else ModelFolder(folder.root / f".worker_{strategy.cluster_resolver.task_id}")
    if chief:
        folder.root.mkdir(parents=True, exist_ok=True)
        folder.write_config(config)

    model, optimizer = build_model_and_optimizer(config, strategy)
    state = _State.create(training.seed)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **state.variables())
    if resume:
        _restore(checkpoint, folder, state, training)
    manager = tf.train.CheckpointManager(checkpoint, str(writer_folder.checkpoint_dir),
                                         max_to_keep=training.max_checkpoints, checkpoint_name="ckpt")
    loop = _Loop(config, writer_folder, chief, strategy, model, optimizer, state, manager, dataset_fn,
                 validation_fn, progress)
    try:
        result = loop.run()
    except BaseException:
        try:
            loop.close()
        except OSError:  # the logs of the failed run cannot be written either; report the first error
            pass
        raise
    finally:
        if not chief:
            shutil.rmtree(writer_folder.root, ignore_errors=True)
    loop.close()
    return TrainingResult(model_dir=folder.root, **result)


@dataclass
class _State:
    """Checkpointed bookkeeping besides model and optimiser (tf.Variables, so the checkpoint holds them)."""

    step: tf.Variable
    seed: tf.Variable
    next_sample: tf.Variable
    best_loss: tf.Variable
    best_step: tf.Variable
    window_sum: tf.Variable
    window_count: tf.Variable

    @classmethod
    def create(cls, seed: int) -> "_State":
        return cls(
            step=tf.Variable(0, dtype=tf.int64, trainable=False),
            seed=tf.Variable(seed, dtype=tf.int64, trainable=False),
            next_sample=tf.Variable(0, dtype=tf.int64, trainable=False),
            best_loss=tf.Variable(math.inf, dtype=tf.float64, trainable=False),
            best_step=tf.Variable(-1, dtype=tf.int64, trainable=False),
            window_sum=tf.Variable(0.0, dtype=tf.float64, trainable=False),
            window_count=tf.Variable(0, dtype=tf.int64, trainable=False),
        )

    def variables(self) -> dict[str, tf.Variable]:
        return dict(self.__dict__)


def _restore(checkpoint: tf.train.Checkpoint, folder: ModelFolder, state: _State, training: TrainingConfig) -> None:
    latest = tf.train.latest_checkpoint(str(folder.checkpoint_dir))
    if latest is None:
        log.warning("%s has no checkpoint yet: starting the run from step 0", folder.checkpoint_dir)
        return
    try:
        checkpoint.restore(latest).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        raise RshnError(f"{latest}: cannot be restored into the network of {folder.config_path} "
                        f"({str(exc).splitlines()[0]})") from exc
    if int(state.seed.numpy()) != training.seed:
        raise RshnError(f"{latest}: written with training.seed {int(state.seed.numpy())}, the config has "
                        f"{training.seed}")
    log.info("resumed %s at step %d", latest, int(state.step.numpy()))


class _Loop:
    """The iteration loop of :func:`train` with its logs, checkpoints and exports."""

    def __init__(self, config: Config, folder: ModelFolder, chief: bool, strategy: tf.distribute.Strategy,
                 model: keras.Model, optimizer: keras.optimizers.Optimizer, state: _State,
                 manager: tf.train.CheckpointManager, dataset_fn: DatasetFn, validation_fn: Optional[ValidationFn],
                 progress: Optional[bool]) -> None:
        self.config = config
        self.training = config.training
        self.folder = folder
        self.chief = chief
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.state = state
        self.manager = manager
        self.dataset_fn = dataset_fn
        self.validation_fn = validation_fn
        self.progress = progress
        self.schedule = learning_rate_schedule(self.training)
        restored = int(state.step.numpy())
        self.losses = CsvLog(folder.losses_path, restored) if chief else None
        self.validation_log = CsvLog(folder.validation_path, restored) if chief else None
        self.board = TensorBoardLog(folder.log_dir, chief)
        self.saved_step = restored if manager.latest_checkpoint else -1
        self._eval_step: Optional[Callable[[Any], tf.Tensor]] = None
        self._interval: list[Any] = [time.perf_counter(), 0.0, 0]

    def close(self) -> None:
        for csv_log in (self.losses, self.validation_log):
            if csv_log is not None:
                csv_log.close()
        self.board.flush()

    # ---- the loop

    def run(self) -> dict[str, Any]:
        training, state = self.training, self.state
        step = int(state.step.numpy())
        if step >= training.iterations:
            log.info("nothing to do: the run in %s finished %d of %d iterations", self.folder.root, step,
                     training.iterations)
            self._finish(step)
            return self._result(step, None)
        train_step = make_train_step(self.model, self.optimizer, self.strategy, self.config)
        images = make_image_fn(self.model) if training.image_every > 0 and self.chief else None
        bar = progress_bar(training.iterations, initial=step, unit="it", desc="training", enabled=self.progress,
                           dynamic_ncols=True)
        stop = StopRequest()
        with stop:  # before the input pipeline starts, so that no signal is lost
            first_sample = int(state.next_sample.numpy())
            batches = iter(_distribute(self.strategy, self.dataset_fn(first_sample, training.batch_size)))
            self._interval = [time.perf_counter(), 0.0, 0]  # start, seconds waiting for input, iterations
            while step < training.iterations and not stop.requested:
                tic = time.perf_counter()
                batch = self._next(batches, step)
                waited = time.perf_counter() - tic
                learning_rate = self.schedule.value(step)
                terms = {key: float(value) for key, value in train_step(batch).items()}
                step += 1
                self._record(step, terms, learning_rate, time.perf_counter() - tic, waited)
                bar.set_postfix(loss=f"{terms['total']:.4f}", lr=f"{learning_rate:.0e}")
                bar.update(1)
                self._periodic(step, batch, learning_rate, images)
        bar.close()
        if stop.requested:
            self._checkpoint(step, interrupted=True)
            log.warning("stopped at step %d of %d; continue with --resume", step, training.iterations)
            return self._result(step, signal.Signals(stop.signal_number).name)
        self._finish(step)
        return self._result(step, None)

    def _record(self, step: int, terms: dict[str, float], learning_rate: float, seconds: float,
                waited: float) -> None:
        """Book one finished iteration: state variables, CSV row, TensorBoard interval sums."""
        if not math.isfinite(terms["total"]):
            failure = f"the loss became {terms['total']} at step {step}"
            self._write_state(int(self.state.step.numpy()), finished=False, interrupted=False, failed=failure)
            raise RshnError(f"{failure}; lower training.learning_rate or check the training data, then start the "
                            "run over with --restart (resuming would repeat the failure)")
        self.state.step.assign(step)
        self.state.next_sample.assign(step * self.training.batch_size)
        self.state.window_sum.assign_add(data_loss(terms))
        self.state.window_count.assign_add(1)
        if self.losses is not None:
            self.losses.write({"step": step, "learning_rate": learning_rate, "seconds": seconds,
                               "input_seconds": waited, **terms})
        self.board.accumulate(terms)
        self._interval[1] += waited
        self._interval[2] += 1

    def _periodic(self, step: int, batch: Any, learning_rate: float, images: Optional[Callable[..., Any]]) -> None:
        """What is due after iteration ``step``: scalars, images, validation, best weights, checkpoint."""
        training = self.training
        last = step == training.iterations
        if step % training.log_every == 0 or last:
            start, waited, iterations = self._interval
            elapsed = time.perf_counter() - start
            self.board.scalars(step, {
                "learning_rate": learning_rate,
                "speed/iterations_per_second": iterations / elapsed,
                "speed/samples_per_second": iterations * training.batch_size / elapsed,
                "speed/input_wait_fraction": waited / elapsed,
            })
            self._interval = [time.perf_counter(), 0.0, 0]
        if images is not None and step % training.image_every == 0:
            rgb, grey = images(self.strategy.experimental_local_results(batch[0])[0])
            self.board.images(step, "embeddings/dims_0-2_rgb", rgb,
                              "last hourglass, normalised embeddings, dimensions 0-2 as RGB")
            self.board.images(step, "input/frames", grey)
        if self.validation_fn is not None and training.validation_every > 0 and (
                step % training.validation_every == 0 or last):
            self._validate(step)
        if self.chief and training.snapshot_every > 0 and step % training.snapshot_every == 0:
            save_weights_atomic(self.model, self.folder.snapshot_path(step))
        if step % training.checkpoint_every == 0 or last:
            if training.validation_every == 0:
                self._update_best_from_window(step)
            self._checkpoint(step)

    def _next(self, batches: Iterator[Any], step: int) -> Any:
        try:
            return next(batches)
        except (StopIteration, tf.errors.OutOfRangeError):
            raise RshnError(f"the training dataset ended after {step} iterations; it must be endless") from None

    # ---- best weights, checkpoints, exports

    def _validate(self, step: int) -> None:
        if self._eval_step is None:
            self._eval_step = make_eval_step(self.model, self.strategy, self.config)
        losses = [float(self._eval_step(batch)) for batch in _distribute(
            self.strategy, self.validation_fn(self.training.batch_size))]
        if not losses:
            raise RshnError("the validation dataset is empty; check training.validation_samples")
        value = float(np.mean(losses))
        log.info("step %d: validation loss %.5f", step, value)
        if self.validation_log is not None:
            self.validation_log.write({"step": step, "validation_loss": value})
            self.validation_log.flush()
        self.board.scalar(step, "validation/loss", value)
        self._offer_best(step, value)

    def _update_best_from_window(self, step: int) -> None:
        count = int(self.state.window_count.numpy())
        if count:
            self._offer_best(step, float(self.state.window_sum.numpy()) / count)
        self.state.window_sum.assign(0.0)
        self.state.window_count.assign(0)

    def _offer_best(self, step: int, value: float) -> None:
        if value < float(self.state.best_loss.numpy()):
            self.state.best_loss.assign(value)
            self.state.best_step.assign(step)
            if self.chief:
                save_weights_atomic(self.model, self.folder.weights_path("best"))

    def _checkpoint(self, step: int, interrupted: bool = False) -> None:
        if step != self.saved_step:
            save_weights_atomic(self.model, self.folder.weights_path("last"))
            self.manager.save(checkpoint_number=step)
            self.saved_step = step
        for csv_log in (self.losses, self.validation_log):
            if csv_log is not None:
                csv_log.flush()
        self.board.flush()
        self._write_state(step, finished=False, interrupted=interrupted)

    def _finish(self, step: int) -> None:
        self._checkpoint(step)
        self._write_state(step, finished=step >= self.training.iterations, interrupted=False)

    def _write_state(self, step: int, finished: bool, interrupted: bool, failed: Optional[str] = None) -> None:
        if not self.chief:
            return
        best_step = int(self.state.best_step.numpy())
        best_loss = float(self.state.best_loss.numpy())
        self.folder.write_state({
            "step": step,
            "iterations": self.training.iterations,
            "finished": finished,
            "interrupted": interrupted,
            "best_step": best_step if best_step >= 0 else None,
            "best_loss": best_loss if math.isfinite(best_loss) else None,
            "best_criterion": "validation_loss" if self.training.validation_every > 0 else "mean_training_loss",
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **({"failed": failed} if failed else {}),
        })

    def _result(self, step: int, signal_name: Optional[str]) -> dict[str, Any]:
        best_step = int(self.state.best_step.numpy())
        best_loss = float(self.state.best_loss.numpy())
        return dict(step=step, iterations=self.training.iterations, finished=step >= self.training.iterations,
                    interrupted=signal_name is not None, signal_name=signal_name,
                    best_step=best_step if best_step >= 0 else None,
                    best_loss=best_loss if math.isfinite(best_loss) else None)
