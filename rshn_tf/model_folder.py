"""The model folder: what training writes and what inference and packaging read back.

Layout (``docs``: architecture, "A model folder")::

    MODEL_DIR/
      config.yaml                  resolved configuration of the run (rshn_tf.config.save_config)
      checkpoints/                 tf.train.CheckpointManager: model, optimizer, step, data-stream position, best
      weights.best.weights.h5      weights with the lowest validation (or smoothed training) loss
      weights.last.weights.h5      weights of the latest checkpoint / the end of training
      snapshots/                   weights.NNNNNN.weights.h5 every training.snapshot_every iterations (optional)
      training_state.json          progress summary: step, iterations, finished, interrupted, best step and loss
      logs/                        TensorBoard events, losses.csv (one row per iteration), validation.csv

:func:`load_trained_model` rebuilds the network from ``config.yaml`` and loads the chosen weights, with no other
arguments, for ``rshn predict`` and the submission packager.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from rshn_tf.atomic import atomic_file, atomic_folder, write_text_atomic
from rshn_tf.config import Config, config_from_dict, load_yaml, save_config
from rshn_tf.errors import RshnError
from rshn_tf.output_lock import claim_output

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
SNAPSHOT_DIR = "snapshots"
STATE_FILE = "training_state.json"
LOSSES_FILE = "losses.csv"
VALIDATION_FILE = "validation.csv"
#: Facts about an exported model's training (``rshn export``, ``rshn package``).
MODEL_INFO_FILE = "model_info.json"
#: Exported weights by name (Keras requires the ``.weights.h5`` suffix).
WEIGHTS_FILES = {"best": "weights.best.weights.h5", "last": "weights.last.weights.h5"}


@dataclass(frozen=True)
class ModelFolder:
    """Paths of one model folder (nothing is created on construction)."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config_path(self) -> Path:
        """The resolved ``config.yaml``."""
        return self.root / CONFIG_FILE

    @property
    def checkpoint_dir(self) -> Path:
        """Folder of the ``tf.train.CheckpointManager``."""
        return self.root / CHECKPOINT_DIR

    @property
    def snapshot_dir(self) -> Path:
        """Folder of the weight snapshots (``training.snapshot_every``)."""
        return self.root / SNAPSHOT_DIR

    def snapshot_path(self, step: int) -> Path:
        """Path of the weight snapshot taken after iteration ``step``."""
        return self.snapshot_dir / f"weights.{step:06d}.weights.h5"

    def snapshots(self) -> dict[int, Path]:
        """The weight snapshots present, by iteration, in increasing order."""
        found = {}
        for path in self.snapshot_dir.glob("weights.*.weights.h5"):
            middle = path.name[len("weights."):-len(".weights.h5")]
            if middle.isdigit():
                found[int(middle)] = path
        return dict(sorted(found.items()))

    @property
    def log_dir(self) -> Path:
        """TensorBoard event files and the CSV loss logs."""
        return self.root / LOG_DIR

    @property
    def losses_path(self) -> Path:
        """``logs/losses.csv``: one row per iteration (step, learning rate, seconds, input_seconds, loss terms)."""
        return self.log_dir / LOSSES_FILE

    @property
    def validation_path(self) -> Path:
        """``logs/validation.csv``: step and validation loss of every evaluation."""
        return self.log_dir / VALIDATION_FILE

    @property
    def state_path(self) -> Path:
        """``training_state.json``."""
        return self.root / STATE_FILE

    def weights_path(self, which: str) -> Path:
        """Path of the exported ``best`` or ``last`` weights.

        Raises:
            RshnError: For another name.
        """
        if which not in WEIGHTS_FILES:
            raise RshnError(f"weights must be one of {', '.join(WEIGHTS_FILES)} or a .weights.h5 path, got {which!r}")
        return self.root / WEIGHTS_FILES[which]

    def default_weights(self) -> str:
        """``best`` when the folder holds best weights, else ``last`` (an exported folder holds only the chosen ones).

        Raises:
            RshnError: If the folder holds neither.
        """
        for which in WEIGHTS_FILES:
            if self.weights_path(which).is_file():
                return which
        raise RshnError(f"model folder {self.root}: no weights ({', '.join(WEIGHTS_FILES.values())}); the run "
                        "exported none yet")

    def has_training_output(self) -> bool:
        """Whether a run already wrote here (config, checkpoints or weights)."""
        return self.config_path.exists() or self.checkpoint_dir.exists() or any(
            (self.root / name).exists() for name in WEIGHTS_FILES.values())

    def read_config(self) -> Config:
        """The folder's resolved configuration.

        Raises:
            RshnError: If the folder or its ``config.yaml`` is missing or invalid.
        """
        if not self.root.is_dir():
            raise RshnError(f"model folder {self.root} does not exist")
        if not self.config_path.is_file():
            raise RshnError(f"{self.config_path}: missing; a model folder written by 'rshn train' holds the "
                            "resolved config.yaml of its run")
        try:
            with open(self.config_path, encoding="utf-8") as handle:
                values = load_yaml(handle)
        except (OSError, yaml.YAMLError) as exc:
            raise RshnError(f"{self.config_path}: cannot be read ({exc})") from exc
        return config_from_dict(values or {}, str(self.config_path))

    def write_config(self, config: Config) -> Path:
        """Write ``config.yaml`` atomically."""
        return save_config(config, self.config_path)

    def read_state(self) -> Optional[dict[str, Any]]:
        """``training_state.json`` as a dictionary, or None when it does not exist."""
        if not self.state_path.is_file():
            return None
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RshnError(f"{self.state_path}: cannot be read ({exc})") from exc

    def write_state(self, state: dict[str, Any]) -> None:
        """Write ``training_state.json`` atomically."""
        write_text_atomic(self.state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")


def model_info(folder: ModelFolder, weights: str) -> dict[str, Any]:
    """Facts about a model for an exported copy (no paths): the weights chosen, the rshn-tf version and the training
    progress; a folder that is itself an export passes on its own training facts."""
    import rshn_tf

    info: dict[str, Any] = {"weights": weights, "weights_file": WEIGHTS_FILES[weights],
                            "rshn_tf_version": rshn_tf.__version__}
    state = folder.read_state()
    info_path = folder.root / MODEL_INFO_FILE
    if state:
        info["training"] = {key: state[key] for key in ("step", "iterations", "best_step", "finished")
                            if key in state}
    elif info_path.is_file():
        try:
            bundled = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RshnError(f"{info_path}: cannot be read ({exc})") from exc
        if "training" in bundled:
            info["training"] = bundled["training"]
    return info


def export_model(model_dir: str | os.PathLike, out_dir: str | os.PathLike, weights: str = "last",
                 config: Optional[Config] = None, overwrite: bool = False) -> Path:
    """Write a self-contained copy of a model folder for predicting and sharing: ``config.yaml`` (without the
    training-data path), the chosen weights under their usual name and ``model_info.json``; no checkpoints, logs or
    snapshots. The folder is written under a temporary name beside ``out_dir`` and renamed into place, holding the
    lock of ``out_dir`` (:func:`~rshn_tf.output_lock.claim_output`).

    Args:
        model_dir: A model folder written by ``rshn train``.
        out_dir: Folder to create.
        weights: ``best`` or ``last``.
        config: The configuration to save instead of the folder's own (e.g. with changed post-processing).
        overwrite: Replace an existing ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        RshnError: If the weights are missing, ``out_dir`` exists and ``overwrite`` is false, cannot be written or
            another process writes it.
    """
    folder, out_dir = ModelFolder(model_dir), Path(out_dir)
    config = copy.deepcopy(config if config is not None else folder.read_config())
    source = folder.weights_path(weights)
    if not source.is_file():
        raise RshnError(f"{source}: missing ({weights} weights of model folder {folder.root})")
    config.data.dataset_dir = None
    _refuse_existing(out_dir, overwrite)  # before the lock file and the write probe touch the parent folder
    with claim_output(out_dir, "exported model folder"):
        _refuse_existing(out_dir, overwrite)  # another process may have written it meanwhile
        with atomic_folder(out_dir) as tmp:
            save_config(config, tmp / CONFIG_FILE)
            shutil.copyfile(source, tmp / WEIGHTS_FILES[weights])
            write_text_atomic(tmp / MODEL_INFO_FILE, json.dumps(model_info(folder, weights), indent=2,
                                                                sort_keys=True) + "\n")
    return out_dir


def _refuse_existing(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite:
        raise RshnError(f"{out_dir}: already exists; choose another folder or replace it with --overwrite")


def save_weights_atomic(model: Any, path: str | os.PathLike) -> Path:
    """``model.save_weights`` to a temporary ``.weights.h5`` beside ``path``, then rename it over ``path`` (on
    failure the temporary file is removed and ``path`` is unchanged)."""
    with atomic_file(path, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))
    return Path(path)


def _weight_shapes_in_file(path: Path) -> Counter:
    """Multiset of the shapes of all arrays stored in a Keras ``.weights.h5`` file."""
    import h5py

    shapes: Counter = Counter()

    def visit(_name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            shapes[tuple(item.shape)] += 1

    with h5py.File(path, "r") as handle:
        handle.visititems(visit)
    return shapes


def load_weights_checked(model: Any, path: str | os.PathLike) -> None:
    """Load a ``.weights.h5`` file into ``model`` and check that it holds exactly the model's variables.

    Keras silently ignores extra arrays (e.g. weights of a network with more levels); this check turns every
    mismatch into an error.

    Raises:
        RshnError: If the file is missing, unreadable or does not match the model.
    """
    path = Path(path)
    if not path.is_file():
        raise RshnError(f"{path}: weights file missing")
    hint = "the weights do not belong to a network built from this config (model section)"
    try:
        stored = _weight_shapes_in_file(path)
    except OSError as exc:
        raise RshnError(f"{path}: not a readable Keras weights file ({exc})") from exc
    expected = Counter(tuple(int(d) for d in weight.shape) for weight in model.weights)
    if stored != expected:
        raise RshnError(f"{path}: {hint}: the file holds {sum(stored.values())} arrays, the model has "
                        f"{sum(expected.values())} variables with different shapes")
    try:
        model.load_weights(str(path))
    except (ValueError, KeyError, OSError) as exc:
        raise RshnError(f"{path}: {hint} ({str(exc).splitlines()[0]})") from exc


def load_trained_model(model_dir: str | os.PathLike, weights: str = "auto") -> tuple[Any, Config]:
    """Rebuild the network of a model folder from its ``config.yaml`` and load its weights.

    Args:
        model_dir: A model folder written by ``rshn train``.
        weights: ``best``, ``last``, ``auto`` (best when present, else last: see
            :meth:`ModelFolder.default_weights`), or the path of a ``.weights.h5`` file.

    Returns:
        ``(model, config)``: the Keras model (see :func:`rshn_tf.models.build_model`) and the folder's configuration.

    Raises:
        RshnError: If the folder, its config or the weights are missing, or the weights do not fit the config.
    """
    from rshn_tf.models import build_model

    folder = ModelFolder(model_dir)
    config = folder.read_config()
    path = weights_file(model_dir, weights)
    model = build_model(config.model)
    load_weights_checked(model, path)
    return model, config


def weights_file(model_dir: str | os.PathLike, weights: str = "auto") -> Path:
    """The weights file that ``--weights`` chooses in a model folder, checked to exist (so that callers can fail
    before they write anything).

    Args:
        model_dir: A model folder.
        weights: ``best``, ``last``, ``auto`` (best when present, else last) or the path of a ``.weights.h5`` file.

    Raises:
        RshnError: If the chosen weights do not exist.
    """
    folder = ModelFolder(model_dir)
    if weights == "auto":
        weights = folder.default_weights()
    if weights not in WEIGHTS_FILES:
        path = Path(weights)
        if not path.is_file():
            raise RshnError(f"--weights {weights}: neither {', '.join(repr(w) for w in (*WEIGHTS_FILES, 'auto'))} "
                            f"nor an existing .weights.h5 file")
        return path
    path = folder.weights_path(weights)
    if not path.is_file():
        other = [name for name in WEIGHTS_FILES if name != weights and folder.weights_path(name).is_file()]
        hint = f"; '{other[0]}' exists" if other else "; the run exported no weights yet"
        raise RshnError(f"{path}: missing ({weights} weights of model folder {folder.root}){hint}")
    return path


def create_model_folder(config: Config, model: Any, model_dir: str | os.PathLike) -> ModelFolder:
    """Write a model folder for an already built (e.g. untrained) network: ``config.yaml`` and both weights files.

    For benchmarks and tests that need ``rshn predict`` without training: the folder loads with
    :func:`load_trained_model` like one written by ``rshn train`` (it has no checkpoints, logs or training state).

    Args:
        config: The configuration the network was built from (``model`` section).
        model: The Keras network (see :func:`rshn_tf.models.build_model`).
        model_dir: The folder to write; it must not hold a training run.

    Returns:
        The :class:`ModelFolder`.

    Raises:
        RshnError: If the folder already holds a model.
    """
    folder = ModelFolder(model_dir)
    if folder.has_training_output():
        raise RshnError(f"model folder {folder.root} already holds a model; choose another folder")
    folder.root.mkdir(parents=True, exist_ok=True)
    folder.write_config(config)
    for which in WEIGHTS_FILES:
        save_weights_atomic(model, folder.weights_path(which))
    return folder
