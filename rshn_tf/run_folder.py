"""The unfinished run of ``rshn predict`` / ``rshn postprocess`` beside its output: finished label frames,
checkpoints, resuming and clean-up (issue 16).

A run writing ``OUT`` keeps everything it needs to continue in the hidden folder ``.OUT.partial`` beside it:

* ``run.json``: what the run is (command, input, frames, original size, embeddings folder, model, weights);
* ``config.yaml``: the resolved configuration;
* ``frames/``: the finished frames (tracker ids at the original size, :class:`~rshn_tf.label_store.LabelStore`);
* ``checkpoint.npz``: the post-processing state every ``inference.checkpoint_every`` frame pairs (pairs done,
  tracker numbers and its last frames), written to a temporary file, flushed to the disk and renamed over the
  previous one, so that a checkpoint is always complete;
* ``result/``: the CTC result while it is being written, renamed to ``OUT`` when complete.

The folder is removed when the run succeeds. Without ``--resume`` an existing one with a checkpoint is refused
(:meth:`RunFolder.open`); one without a checkpoint has nothing worth keeping and is replaced. This module must not
import TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from rshn_tf.atomic import atomic_file
from rshn_tf.config import Config, load_config, save_config
from rshn_tf.errors import RshnError
from rshn_tf.label_store import LabelStore

log = logging.getLogger(__name__)

#: Keys that do not change results and may differ when a run is resumed.
RESUME_MAY_CHANGE = frozenset({"inference.threads", "inference.overlap_postprocessing", "inference.checkpoint_every"})

CHECKPOINT = "checkpoint.npz"


def partial_path(target: str | os.PathLike) -> Path:
    """The folder of an unfinished run writing ``target``: ``.NAME.partial`` beside it."""
    target = Path(target)
    return target.parent / f".{target.name}.partial"


def save_checkpoint(path: Path, numbers: dict, arrays: Sequence[np.ndarray]) -> None:
    """Write ``numbers`` (JSON) and ``arrays`` to ``path`` atomically and durably (temporary file, fsync,
    rename, fsync of the folder)."""
    with atomic_file(path, durable=True) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, numbers=np.array(json.dumps(numbers)), **{f"array_{i}": a for i, a in enumerate(arrays)})


def load_checkpoint(path: Path) -> tuple[dict, list[np.ndarray]]:
    """Read what :func:`save_checkpoint` wrote.

    Raises:
        RshnError: If the file cannot be read.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            numbers = json.loads(str(data["numbers"][()]))
            arrays = [data[f"array_{i}"] for i in range(len(data.files) - 1)]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise RshnError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc}); delete "
                        f"{path.parent} and start the run over without --resume") from exc
    return numbers, arrays


def _differences(saved: dict, now: dict) -> list[str]:
    return [key for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]


def _config_differences(saved: Config, now: Config) -> list[str]:
    old, new = saved.to_dict(), now.to_dict()
    return [f"{section}.{key}" for section in new for key in new[section]
            if f"{section}.{key}" not in RESUME_MAY_CHANGE and old.get(section, {}).get(key) != new[section][key]]


class RunFolder:
    """The ``.OUT.partial`` folder of one run (see the module docstring); made by :meth:`open`.

    Attributes:
        target: The output folder the run writes.
        folder: The run's folder.
        identity: What the run is (``run.json``).
        frames: The finished frames.
        checkpoint: The state loaded from the last checkpoint when resuming (``(numbers, arrays)``), else None.
    """

    def __init__(self, target: Path, folder: Path, identity: dict, checkpoint: Optional[tuple[dict, list]]):
        self.target = target
        self.folder = folder
        self.identity = identity
        self.checkpoint = checkpoint
        self.frames = LabelStore(folder / "frames", count=checkpoint[0]["stored"] if checkpoint else 0)
        self.pairs_saved = checkpoint[0]["num_pairs"] if checkpoint else 0
        self.saved_at: Optional[float] = checkpoint[0]["saved"] if checkpoint else None

    @classmethod
    def open(cls, target: str | os.PathLike, identity: dict, config: Config, resume: bool) -> "RunFolder":
        """Start a run writing ``target``, or continue the unfinished one there.

        Args:
            target: The output folder.
            identity: JSON-serialisable description of the run (command, input, frames, …); resuming requires the
                same.
            config: The resolved configuration; resuming requires the same apart from :data:`RESUME_MAY_CHANGE`.
            resume: Continue an unfinished run from its last checkpoint (start afresh when there is none).

        Raises:
            RshnError: If an unfinished run with a checkpoint exists and ``resume`` is false, or if ``resume`` is
                true and the unfinished run differs from this one.
        """
        target = Path(target)
        identity = json.loads(json.dumps(identity))  # as it reads back from run.json (tuples become lists)
        folder = partial_path(target)
        checkpoint_file = folder / CHECKPOINT
        if folder.exists() and not checkpoint_file.exists():
            log.info("%s: removing an unfinished run that saved no checkpoint", folder)
            shutil.rmtree(folder)
        if folder.exists():
            saved_identity = json.loads((folder / "run.json").read_text())
            numbers, arrays = load_checkpoint(checkpoint_file)
            progress = (f"{numbers['num_pairs']} of {saved_identity.get('pairs', '?')} frame pairs done at its last "
                        f"checkpoint, {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(numbers['saved']))}")
            if not resume:
                raise RshnError(
                    f"{target}: an unfinished run of 'rshn {saved_identity.get('command', '?')}' is kept in {folder} "
                    f"({progress}); continue it with the same command and --resume, or delete {folder} to start "
                    f"over")
            different = _differences(saved_identity, identity)
            different += _config_differences(load_config(folder / "config.yaml"), config)
            if different:
                raise RshnError(
                    f"{target}: cannot resume the unfinished run in {folder}: it differs in {', '.join(different)} "
                    f"(see {folder / 'run.json'} and {folder / 'config.yaml'}); resume with the same arguments, or "
                    f"delete {folder} to start over")
            log.info("%s: resuming the unfinished run (%s)", target, progress)
            return cls(target, folder, identity, (numbers, arrays))
        if resume:
            log.info("%s: no unfinished run to resume; starting from the first frame", target)
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps(identity, indent=1) + "\n")
        save_config(config, folder / "config.yaml")
        return cls(target, folder, identity, None)

    @property
    def result_dir(self) -> Path:
        """Where the result is written before it is renamed to :attr:`target`."""
        return self.folder / "result"

    def save(self, numbers: dict, arrays: Sequence[np.ndarray]) -> None:
        """Save a checkpoint: ``numbers`` must hold ``num_pairs`` (pairs done) and ``stored`` (frames in
        :attr:`frames`); the stored frames are flushed to the disk first."""
        self.frames.sync()
        numbers = dict(numbers, saved=time.time())
        save_checkpoint(self.folder / CHECKPOINT, numbers, arrays)
        self.pairs_saved = numbers["num_pairs"]
        self.saved_at = numbers["saved"]

    @property
    def has_checkpoint(self) -> bool:
        """Whether a checkpoint exists (then the run can be resumed)."""
        return (self.folder / CHECKPOINT).exists()

    def resume_hint(self) -> str:
        """What a user reads when the run fails: where its files are and how to continue."""
        if not self.has_checkpoint:
            return f"the run saved no checkpoint yet; nothing to resume (its temporary files {self.folder} are removed)"
        return (f"the unfinished run is kept in {self.folder} ({self.pairs_saved} of {self.identity.get('pairs', '?')} "
                f"frame pairs done at its last checkpoint); run the same command with --resume to continue it, or "
                f"delete that folder to start over")

    def discard_if_empty(self) -> None:
        """Remove the folder when it holds no checkpoint (after a failure: nothing to resume)."""
        self.frames.close()
        if not self.has_checkpoint:
            shutil.rmtree(self.folder, ignore_errors=True)

    def remove(self) -> None:
        """Remove the folder (after success)."""
        self.frames.close()
        (self.folder / CHECKPOINT).unlink(missing_ok=True)  # first: a half-removed folder is never resumed
        shutil.rmtree(self.folder, ignore_errors=True)

