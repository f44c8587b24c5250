"""Experiments as resumable step lists: two-fold cross-validation (§5.2), one model on all sequences (§5.4), or a
hold-out split (the demo); every step's result on disk, ``results.json`` and ``results.md`` at the end.

A run is a list of :class:`Step` objects in execution order (:func:`experiment_plan`):

* ``train[FOLD]``: :func:`rshn_tf.training.train` into ``FOLD/model`` (resumes an interrupted training run).
* ``predict[FOLD/SEQ]``: network inference and post-processing of a test sequence into ``FOLD/SEQ_RES``; with
  post-processing variants it also saves the frame-pair embeddings (``FOLD/SEQ_embeddings``).
* ``postprocess[VARIANT, FOLD/SEQ]``: clustering, tile merging and tracking of those saved embeddings with another
  ``postprocessing`` / ``tracking`` section (Table 3's clustering rows reuse one network's embeddings, §5.3).
* ``evaluate[...]``: SEG / TRA / DET / OP_CTB with py-ctcmetrics (:func:`rshn_tf.evaluation.evaluate_result`).
* ``report``: ``results.json`` (per fold and mean) and ``results.md``.

After a step succeeds, a done-marker ``steps/NAME.json`` is written atomically (with a key of the configuration
values the step depends on). A re-run skips every step whose marker exists, whose key still matches and whose
outputs are present, unless a step it depends on ran again; ``dry_run`` only reports that plan. Outputs are written
to temporary folders and renamed, so an interrupted step leaves nothing half-written behind.

Folds (``experiment.mode``): ``two_fold`` uses the two ``data.train_sequences`` (``fold1`` trains on the first and
is evaluated on the second, ``fold2`` the reverse) and trains each fold for ``experiment.cv_iterations``
(the code's 40,000, docs/fidelity.md §4.2); ``train_all`` trains one model (``all``) for ``training.iterations`` and
evaluates it on its own training sequences; ``holdout`` trains on ``data.train_sequences`` and evaluates on
``experiment.test_sequences``; ``time_split`` trains on the frames before ``experiment.split_frame`` of
``data.train_sequences`` and evaluates on the later ones, which a ``split[SEQ]`` step first writes as a dataset of
their own (``OUT/time_split/data``, frames and ground truth renumbered from 0).

Run folder::

    OUT/config.yaml                       resolved configuration of the experiment
    OUT/experiment.log                    one line per step run or skipped
    OUT/steps/*.json                      done-markers
    OUT/FOLD/model/                       model folder (config.yaml, weights, logs)
    OUT/time_split/data/SEQ, SEQ_GT/      time_split mode: the evaluated frames as a CTC dataset
    OUT/FOLD/SEQ_RES/                     CTC result (maskNNN.tif, res_track.txt, config.yaml)
    OUT/FOLD/SEQ_scores.json              its scores
    OUT/FOLD/SEQ_embeddings/              pair_NNN.npy (only when there are variants)
    OUT/FOLD/variants/VARIANT/SEQ_RES/    CTC result of a post-processing variant, and SEQ_scores.json
    OUT/results.json, OUT/results.md
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional, Sequence

from rshn_tf.atomic import atomic_folder, swap_in, twin_path, write_json_atomic, write_text_atomic
from rshn_tf.config import Config, load_config_layers, resolve_config_path, save_config, validate
from rshn_tf.errors import RshnError
from rshn_tf.evaluation import REPORTED
from rshn_tf.extras import require_for_config
from rshn_tf.output_lock import OutputLock, claim_output

log = logging.getLogger(__name__)

#: Sections a post-processing variant may change; everything else must equal the experiment's configuration.
VARIANT_SECTIONS = ("postprocessing", "tracking")
#: Keys that may differ between a run folder's ``config.yaml`` and a re-run (paths, speed, bookkeeping).
RERUN_MAY_CHANGE = frozenset({
    "data.dataset_dir", "data.num_workers", "data.prefetch", "data.worker_type",
    "training.checkpoint_every", "training.max_checkpoints", "training.snapshot_every", "training.log_every",
    "training.image_every",
    "training.strategy", "inference.threads", "inference.batch_tiles", "inference.max_batch_tiles",
    "inference.encoded_steps", "inference.encoding_cache_mb", "inference.overlap_postprocessing",
    "experiment.output_dir",
})
#: Sections whose values shape the trained network (training-step key).
_TRAIN_SECTIONS = ("data", "model", "augmentation", "loss", "training")

STEPS_DIR = "steps"
LOG_FILE = "experiment.log"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


class StepInterrupted(Exception):
    """A step was stopped by SIGINT/SIGTERM after saving its progress; re-running the experiment continues it.

    Attributes:
        signal_name: ``SIGINT`` or ``SIGTERM``.
    """

    def __init__(self, step: str, signal_name: str) -> None:
        super().__init__(f"{step} stopped by {signal_name}; run the same command again to continue")
        self.signal_name = signal_name


# --------------------------------------------------------------------------------------------------------------
# Steps and plans


@dataclass
class Step:
    """One unit of work of a plan.

    Attributes:
        name: Display name, e.g. ``train[fold1]``.
        description: What the step does, for ``--dry-run``.
        action: Does the work; returns a JSON-serialisable dict stored in the done-marker (or None).
        outputs: Paths that must exist for the step to count as done.
        deps: Names of steps whose re-execution makes this step run again.
        key: Digest of the configuration values the step depends on; a changed key makes it run again.
    """

    name: str
    description: str
    action: Callable[[], Optional[dict]]
    outputs: tuple[Path, ...] = ()
    deps: tuple[str, ...] = ()
    key: str = ""


@dataclass
class StepStatus:
    """A step and whether a run would skip it (``done``) or execute it (``todo``)."""

    step: Step
    state: str


def marker_name(step_name: str) -> str:
    """File name of a step's done-marker: the name with brackets, commas, slashes and spaces as ``_``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", step_name).strip("_") + ".json"


class Plan:
    """An ordered list of steps with done-markers under ``root/steps``.

    Args:
        root: The run folder.
        steps: Steps in execution order; dependencies must come before their dependants.
    """

    def __init__(self, root: Path, steps: Sequence[Step]) -> None:
        self.root = Path(root)
        self.steps = list(steps)
        names = [step.name for step in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate step names in {names}")
        seen: set[str] = set()
        for step in self.steps:
            unknown = [dep for dep in step.deps if dep not in seen]
            if unknown:
                raise ValueError(f"step {step.name} depends on {unknown}, which do not come before it")
            seen.add(step.name)

    def marker_path(self, step: Step) -> Path:
        """The done-marker of ``step``."""
        return self.root / STEPS_DIR / marker_name(step.name)

    def read_marker(self, step: Step) -> Optional[dict]:
        """The done-marker's content, or None when it is missing or unreadable."""
        return _read_json(self.marker_path(step))

    def cpu_seconds(self, prefixes: Sequence[str]) -> Optional[float]:
        """CPU seconds of the steps whose names start with one of ``prefixes`` (e.g. ``train[``), summed.

        Returns:
            None when such a step is not done or its marker predates CPU accounting; 0.0 when no name matches.
        """
        total = 0.0
        for step in self.steps:
            if not step.name.startswith(tuple(prefixes)):
                continue
            marker = self._done_marker(step)
            if marker is None or marker.get("cpu_seconds") is None:
                return None
            total += float(marker["cpu_seconds"])
        return total

    def is_done(self, step: Step) -> bool:
        """Whether the step's marker exists with the current key and all its outputs exist."""
        return self._done_marker(step) is not None

    def _done_marker(self, step: Step) -> Optional[dict]:
        """The marker of a done step (see :meth:`is_done`), or None when the step is not done."""
        marker = self.read_marker(step)
        if marker is None or marker.get("key") != step.key or not all(Path(path).exists() for path in step.outputs):
            return None
        return marker

    def statuses(self) -> list[StepStatus]:
        """What a run would do: ``done`` (skipped) or ``todo`` for every step, in order."""
        todo: set[str] = set()
        result = []
        for step in self.steps:
            if not self.is_done(step) or any(dep in todo for dep in step.deps):
                todo.add(step.name)
            result.append(StepStatus(step, "todo" if step.name in todo else "done"))
        return result

    def describe(self) -> str:
        """The plan as text: one line per step with its state and description."""
        statuses = self.statuses()
        width = max(len(s.step.name) for s in statuses)
        lines = [f"  [{s.state}] {s.step.name:<{width}}  {s.step.description}" for s in statuses]
        todo = sum(s.state == "todo" for s in statuses)
        return "\n".join([f"{self.root}: {len(statuses)} steps, {todo} to do, {len(statuses) - todo} done"] + lines)

    def run(self, only: Sequence[str] = ()) -> list[str]:
        """Execute the steps that are not done, in order, writing each marker after success.

        Args:
            only: Step names (``train[fold2]``) or shell-style patterns (``*fold1*``); when given, only matching steps run (e.g. the
                two folds' trainings in two processes or on two machines sharing the run folder) and each needs
                the steps it depends on to be done.

        Returns:
            Names of the steps that ran.

        Raises:
            StepInterrupted: When a step was stopped by a signal (its progress is saved; re-run to continue).
            RshnError: From a failing step (nothing is marked done for it), or when ``only`` matches no step or a
                selected step depends on one that is not done.
        """
        selected = {step.name for step in self.steps if not only or any(
            step.name == pattern or fnmatch.fnmatchcase(step.name, pattern) for pattern in only)}
        if not selected:
            raise RshnError(f"--only {' '.join(only)}: no step matches; steps: "
                            f"{', '.join(step.name for step in self.steps)}")
        ran: list[str] = []
        for step in self.steps:
            if step.name not in selected:
                continue
            with self._step_lock(step) if only else contextlib.nullcontext():
                if self.is_done(step) and not any(dep in ran for dep in step.deps):
                    self._log(f"skip {step.name} (done)")
                    continue
                if only:
                    missing = [dep for dep in step.deps if dep not in ran and not self.is_done(self._step(dep))]
                    if missing:
                        raise RshnError(f"{step.name} needs {', '.join(missing)} first (not done in {self.root})")
                self._run_step(step)
            ran.append(step.name)
        return ran

    def _step_lock(self, step: Step) -> OutputLock:
        """The lock of one step (beside its marker), taken while ``--only`` runs it; refused naming the holder."""
        lock = OutputLock(self.marker_path(step))
        try:
            return lock.acquire()
        except RshnError as exc:
            raise RshnError(f"step {step.name} is already running: {exc}") from None

    def _run_step(self, step: Step) -> None:
        """Run one step and write its done-marker with the wall and CPU seconds it took.

        A run that stops early (an interrupted training resumes on the next run) leaves its time in a ``.partial``
        file beside the marker, so the marker of the run that finishes counts every run of the step with this key.
        """
        self._log(f"run  {step.name}: {step.description}")
        self.marker_path(step).unlink(missing_ok=True)
        partial = self.marker_path(step).with_suffix(".partial")
        earlier = _read_json(partial) or {}
        if earlier.get("key") != step.key:
            earlier = {}
        seconds, cpu_seconds = earlier.get("seconds", 0.0), earlier.get("cpu_seconds", 0.0)
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            info = step.action() or {}
        except BaseException:
            write_json_atomic(partial, {
                "key": step.key, "seconds": round(seconds + time.perf_counter() - start, 3),
                "cpu_seconds": round(cpu_seconds + time.process_time() - cpu_start, 3),
            })
            raise
        seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu_start
        write_json_atomic(self.marker_path(step), {
            "step": step.name, "key": step.key, "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "info": info,
        })
        partial.unlink(missing_ok=True)
        self._log(f"done {step.name} in {format_seconds(seconds)} ({format_seconds(cpu_seconds)} of CPU)")

    def _step(self, name: str) -> Step:
        return next(step for step in self.steps if step.name == name)

    def _log(self, message: str) -> None:
        log.info("%s", message)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def _read_json(path: Path) -> Optional[dict]:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def format_seconds(seconds: float) -> str:
    """``75.2`` → ``1 min 15 s``; below a minute ``12.3 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def config_digest(config: Config, sections: Sequence[str], ignore: frozenset[str] = RERUN_MAY_CHANGE) -> str:
    """A short digest of the values of ``sections`` (minus the ``ignore`` keys): the key of a step."""
    values = config.to_dict()
    chosen = {section: {key: value for key, value in values[section].items() if f"{section}.{key}" not in ignore}
              for section in sections}
    text = json.dumps(chosen, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def changed_keys(saved: Config, new: Config, may_change: frozenset[str] = RERUN_MAY_CHANGE) -> list[str]:
    """``section.key`` names whose values differ between two configurations, apart from ``may_change``."""
    old, now = saved.to_dict(), new.to_dict()
    return [f"{section}.{key}" for section in now for key in now[section]
            if f"{section}.{key}" not in may_change and old[section].get(key) != now[section][key]]


# --------------------------------------------------------------------------------------------------------------
# Configurations of experiments


def load_experiment_config(
    config: str | os.PathLike,
    profile: Optional[str] = None,
    overrides: Sequence[str] = (),
    data: Optional[str | os.PathLike] = None,
    layers: Sequence[str] = (),
) -> Config:
    """Load an experiment's configuration: the YAML (and its ``base`` chain), then ``layers`` (e.g. a Table 3 row),
    then the profile ``profiles/PROFILE.yaml``, then ``--set`` overrides, then ``--data``.

    Args:
        config: A YAML file or a preset name (``DIC-C2DH-HeLa``).
        profile: Name of a bundled profile (``cpu``, ``paper``) or a YAML path; None for none.
        overrides: ``section.key=value`` strings.
        data: Dataset folder (sets ``data.dataset_dir``).
        layers: Further YAML files or preset names applied after ``config``.

    Raises:
        RshnError: On missing files, unknown keys or invalid values.
    """
    names: list[str | os.PathLike] = [config, *layers]
    if profile:
        names.append(resolve_profile(profile))
    config_obj = load_config_layers(names, overrides)
    if data is not None:
        config_obj.data.dataset_dir = str(data)
        validate(config_obj)
    return config_obj


def resolve_profile(profile: str) -> Path:
    """The YAML of a profile given by name (``cpu`` → the bundled ``profiles/cpu.yaml``) or path.

    Raises:
        RshnError: If there is no such profile.
    """
    path = Path(profile)
    if path.suffix == ".yaml" and path.is_file():
        return path
    try:
        return resolve_config_path(f"profiles/{profile}")
    except RshnError:
        from rshn_tf.config import preset_dir

        names = sorted(p.stem for p in (preset_dir() / "profiles").glob("*.yaml"))
        raise RshnError(f"profile '{profile}' not found; bundled profiles: {', '.join(names)}") from None


# --------------------------------------------------------------------------------------------------------------
# Folds


@dataclass(frozen=True)
class Fold:
    """One trained model of an experiment and the sequences it is evaluated on.

    Attributes:
        name: ``fold1``, ``fold2``, ``all`` or ``holdout``.
        train: Sequences it is trained on.
        test: Sequences it is evaluated on.
    """

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]


def make_folds(config: Config) -> list[Fold]:
    """The folds of ``experiment.mode`` (see the module docstring).

    Raises:
        RshnError: If ``two_fold`` does not have exactly two training sequences, or ``holdout`` has no test sequence.
    """
    mode = config.experiment.mode
    sequences = tuple(config.data.train_sequences)
    if mode == "two_fold":
        if len(sequences) != 2 or sequences[0] == sequences[1]:
            raise RshnError(f"experiment.mode two_fold needs exactly two distinct data.train_sequences (e.g. "
                            f"[\"01\", \"02\"]), got {list(sequences)}")
        first, second = sequences
        return [Fold("fold1", (first,), (second,)), Fold("fold2", (second,), (first,))]
    if mode == "train_all":
        return [Fold("all", sequences, sequences)]
    if mode == "time_split":
        return [Fold("time_split", sequences, sequences)]
    tests = tuple(config.experiment.test_sequences)
    if not tests:
        raise RshnError("experiment.mode holdout needs experiment.test_sequences (e.g. [\"02\"])")
    return [Fold("holdout", sequences, tests)]


def fold_config(config: Config, fold: Fold) -> Config:
    """The training configuration of one fold: its training sequences and, for cross-validation,
    ``experiment.cv_iterations`` as ``training.iterations``."""
    result = copy.deepcopy(config)
    result.data.train_sequences = list(fold.train)
    if config.experiment.mode == "two_fold":
        result.training.iterations = config.experiment.cv_iterations
    if config.experiment.mode == "time_split":
        result.data.train_frames = [0, config.experiment.split_frame]
    validate(result)
    return result


def variant_config(base: Config, variant: Config) -> Config:
    """``base`` with the post-processing and tracking sections of ``variant``."""
    result = copy.deepcopy(base)
    for section in VARIANT_SECTIONS:
        setattr(result, section, copy.deepcopy(getattr(variant, section)))
    return result


def check_variants(config: Config, variants: dict[str, Config]) -> None:
    """Raise RshnError when a variant differs from ``config`` outside :data:`VARIANT_SECTIONS` or has a bad name."""
    for name, variant in variants.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
            raise RshnError(f"variant name {name!r}: use letters, digits, '.', '_', '+', '-'")
        differing = [key for key in changed_keys(config, variant)
                     if key.split(".")[0] not in VARIANT_SECTIONS and key.split(".")[0] != "experiment"]
        if differing:
            raise RshnError(f"variant {name!r} changes {', '.join(differing)}; variants of one experiment share its "
                            f"network and embeddings and may change only {', '.join(VARIANT_SECTIONS)}")


def check_dataset(config: Config, folds: Sequence[Fold]) -> Path:
    """The dataset folder, after checking that it holds every needed sequence and the test ground truth.

    Raises:
        RshnError: Naming the first missing folder or file.
    """
    if not config.data.dataset_dir:
        raise RshnError("no dataset folder: set 'data.dataset_dir' in the YAML or pass --data")
    root = Path(config.data.dataset_dir)
    if not root.is_dir():
        raise RshnError(f"{root}: dataset folder not found (data.dataset_dir / --data)")
    needed = sorted({seq for fold in folds for seq in fold.train + fold.test})
    for seq in needed:
        if not (root / seq).is_dir():
            raise RshnError(f"{root / seq}: sequence folder not found (needed by experiment.mode "
                            f"{config.experiment.mode})")
        if not (root / f"{seq}_GT" / "TRA" / "man_track.txt").is_file():
            raise RshnError(f"{root / (seq + '_GT') / 'TRA' / 'man_track.txt'}: tracking ground truth not found; "
                            "training and evaluation need it")
        if config.experiment.mode == "time_split":
            from data_io.ctc import list_frames

            frames = len(list_frames(root / seq).paths)
            if config.experiment.split_frame >= frames:
                raise RshnError(f"experiment.split_frame = {config.experiment.split_frame} leaves no frame of "
                                f"{root / seq} ({frames} frames) to evaluate")
    return root


# --------------------------------------------------------------------------------------------------------------
# The experiment plan


@dataclass
class Experiment:
    """An experiment laid out as steps.

    Attributes:
        config: The resolved configuration.
        root: The run folder.
        folds: Its folds.
        variants: Post-processing variants by name (empty: only the configuration's own post-processing).
        plan: The steps.
    """

    config: Config
    root: Path
    folds: list[Fold]
    variants: dict[str, Config]
    plan: Plan = field(init=False)

    def model_dir(self, fold: Fold) -> Path:
        return self.root / fold.name / "model"

    def result_dir(self, fold: Fold, seq: str, variant: Optional[str] = None) -> Path:
        base = self.root / fold.name if variant is None else self.root / fold.name / "variants" / variant
        return base / f"{seq}_RES"

    def scores_path(self, fold: Fold, seq: str, variant: Optional[str] = None) -> Path:
        return self.result_dir(fold, seq, variant).with_name(f"{seq}_scores.json")

    def embeddings_dir(self, fold: Fold, seq: str) -> Path:
        return self.root / fold.name / f"{seq}_embeddings"

    def test_root(self, fold: Fold) -> Path:
        """The dataset folder holding the test sequences of a fold (and their ground truth)."""
        if self.config.experiment.mode == "time_split":
            return self.root / fold.name / "data"
        return Path(self.config.data.dataset_dir or ".")


def experiment_plan(
    config: Config,
    out_dir: Optional[str | os.PathLike] = None,
    variants: Optional[dict[str, Config]] = None,
    before: Sequence[Step] = (),
    after: Sequence[Step] = (),
) -> Experiment:
    """Lay out an experiment as a :class:`Plan` (nothing runs, nothing is written).

    Args:
        config: The resolved configuration (``experiment`` section: mode, folds, output folder).
        out_dir: Run folder (default ``experiment.output_dir``).
        variants: Post-processing variants (configurations that differ only in :data:`VARIANT_SECTIONS`); each is
            applied to the saved embeddings of every prediction.
        before: Steps to run first (e.g. writing the demo's synthetic data).
        after: Steps to run after the report (e.g. the demo's overlay movie).

    Raises:
        RshnError: On an invalid mode, variants that change more than post-processing, or bad names.
    """
    variants = dict(variants or {})
    check_variants(config, variants)
    root = Path(out_dir if out_dir is not None else config.experiment.output_dir)
    folds = make_folds(config)
    experiment = Experiment(config=config, root=root, folds=folds, variants=variants)
    steps: list[Step] = list(before)
    prior = tuple(step.name for step in before)
    evaluations: list[str] = []
    # all trainings first: they are the long part, and a prediction problem then costs no training time
    for fold in folds:
        train_config = fold_config(config, fold)
        train_name = f"train[{fold.name}]"
        steps.append(Step(
            name=train_name,
            description=f"train {config.model.architecture} on {'+'.join(fold.train)} for "
                        f"{train_config.training.iterations} iterations -> {experiment.model_dir(fold)}",
            action=_train_action(train_config, experiment.model_dir(fold), train_name),
            outputs=(experiment.model_dir(fold) / "config.yaml",),
            deps=prior, key=config_digest(train_config, _TRAIN_SECTIONS),
        ))
    for fold in folds:
        train_config = fold_config(config, fold)
        train_name = f"train[{fold.name}]"
        predict_key = config_digest(train_config, _TRAIN_SECTIONS + ("inference", "postprocessing", "tracking",
                                                                      "experiment"))
        test_root = experiment.test_root(fold)
        for seq in fold.test:
            where = f"{fold.name}/{seq}"
            embeddings = experiment.embeddings_dir(fold, seq) if variants else None
            predict_name = f"predict[{where}]"
            predict_deps: tuple[str, ...] = (train_name,)
            if config.experiment.mode == "time_split":
                split_name = f"split[{where}]"
                split = config.experiment.split_frame
                steps.append(Step(
                    name=split_name,
                    description=f"write frames {split}- of {seq} with their ground truth -> {test_root}",
                    action=_split_action(Path(config.data.dataset_dir or "."), seq, split, test_root),
                    outputs=(test_root / seq, test_root / f"{seq}_GT"), deps=prior,
                    key=config_digest(config, ("experiment",)),
                ))
                predict_deps += (split_name,)
            outputs = (experiment.result_dir(fold, seq),) + ((embeddings,) if embeddings else ())
            steps.append(Step(
                name=predict_name,
                description=f"predict {seq} -> {experiment.result_dir(fold, seq)}"
                            + (f" (+ embeddings {embeddings})" if embeddings else ""),
                action=_predict_action(train_config, experiment.model_dir(fold), test_root / seq,
                                       experiment.result_dir(fold, seq), embeddings),
                outputs=outputs, deps=predict_deps, key=predict_key,
            ))
            evaluations.append(_add_evaluate(steps, experiment, fold, seq, None, predict_name, predict_key))
            for name, variant in variants.items():
                post_config = variant_config(train_config, variant)
                post_key = config_digest(post_config, _TRAIN_SECTIONS + ("inference", "postprocessing", "tracking"))
                post_name = f"postprocess[{name}, {where}]"
                target = experiment.result_dir(fold, seq, name)
                if reproduces_prediction(config, variant):
                    description = (f"copy {experiment.result_dir(fold, seq)} (variant {name} has the experiment's "
                                   f"own post-processing; full-frame embeddings reproduce it exactly) -> {target}")
                    action = _copy_action(experiment.result_dir(fold, seq), target)
                else:
                    description = f"cluster and track the embeddings of {seq} with variant {name} -> {target}"
                    action = _postprocess_action(post_config, embeddings, test_root / seq, target)
                steps.append(Step(name=post_name, description=description, action=action, outputs=(target,),
                                  deps=(predict_name,), key=post_key))
                evaluations.append(_add_evaluate(steps, experiment, fold, seq, name, post_name, post_key))
    steps.append(Step(
        name="report", description=f"write {root / RESULTS_JSON} and {root / RESULTS_MD}",
        action=lambda: write_results(experiment), outputs=(root / RESULTS_JSON, root / RESULTS_MD),
        deps=tuple(evaluations), key=config_digest(config, ("experiment",)),
    ))
    steps.extend(after)
    experiment.plan = Plan(root, steps)
    return experiment


def _add_evaluate(steps: list[Step], experiment: Experiment, fold: Fold, seq: str, variant: Optional[str],
                  producer: str, key: str) -> str:
    label = f"{variant}, {fold.name}/{seq}" if variant else f"{fold.name}/{seq}"
    name = f"evaluate[{label}]"
    gt = experiment.test_root(fold) / f"{seq}_GT"
    res = experiment.result_dir(fold, seq, variant)
    scores = experiment.scores_path(fold, seq, variant)
    steps.append(Step(
        name=name, description=f"SEG/TRA/DET/OP_CTB of {res} against {gt} -> {scores.name}",
        action=_evaluate_action(res, gt, scores), outputs=(scores,), deps=(producer,), key=key,
    ))
    return name


# --------------------------------------------------------------------------------------------------------------
# Step actions


def _train_action(config: Config, model_dir: Path, step_name: str) -> Callable[[], dict]:
    def action() -> dict:
        from rshn_tf.model_folder import ModelFolder
        from rshn_tf.training import train

        folder = ModelFolder(model_dir)
        resume = folder.has_training_output()
        result = train(config, model_dir, resume=resume)
        if result.interrupted:
            raise StepInterrupted(step_name, result.signal_name or "a signal")
        return {"step": result.step, "iterations": result.iterations, "best_step": result.best_step,
                "best_loss": result.best_loss, "resumed": resume}

    return action


def _split_action(dataset_dir: Path, seq: str, split: int, out_root: Path) -> Callable[[], dict]:
    def action() -> dict:
        from data_io.ctc import list_frames, write_time_window

        num_frames = len(list_frames(dataset_dir / seq).paths)
        if split >= num_frames:
            raise RshnError(f"experiment.split_frame = {split} leaves no frame of {dataset_dir / seq} "
                            f"({num_frames} frames) to evaluate")
        tmp = twin_path(out_root)
        try:
            write_time_window(dataset_dir, seq, split, num_frames, tmp)
            out_root.mkdir(parents=True, exist_ok=True)
            for name in (seq, f"{seq}_GT"):
                swap_in(tmp / name, out_root / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {"frames": [split, num_frames]}

    return action


def _predict_action(config: Config, model_dir: Path, input_dir: Path, res_dir: Path,
                    embeddings_dir: Optional[Path]) -> Callable[[], dict]:
    def action() -> dict:
        return predict_into(model_dir, input_dir, res_dir, embeddings_dir, weights=config.experiment.weights)

    return action


def predict_into(model_dir: Path, input_dir: Path, res_dir: Path, embeddings_dir: Optional[Path],
                 weights: str = "last") -> dict:
    """``rshn predict`` of a model folder on one sequence (:func:`rshn_tf.predict_folder.predict`), with the model
    folder's configuration; the embeddings are saved when ``embeddings_dir`` is given (written atomically there).
    A prediction killed with the experiment continues from its last checkpoint when the step runs again.

    Returns:
        Information for the done-marker: frames and seconds per stage.
    """
    from rshn_tf.predict_folder import predict

    result = predict(model_dir, input_dir, res_dir, weights=weights, save_embeddings=embeddings_dir, resume=True)
    return {"frames": result.num_frames, "frame_steps": result.frame_steps,
            "seconds": {stage: round(value, 3) for stage, value in result.timings.items()}}


def _postprocess_action(config: Config, embeddings_dir: Optional[Path], input_dir: Path,
                        res_dir: Path) -> Callable[[], dict]:
    def action() -> dict:
        from data_io.ctc import load_frames
        from rshn_tf.postprocess import run_postprocess

        frames = load_frames(input_dir)
        processor = run_postprocess(embeddings_dir, res_dir, config, frames.frames.shape[1:], digits=frames.digits,
                                    resume=True)
        return {"frames": processor.num_frames,
                "seconds_per_frame": {k: round(v / max(processor.num_frames, 1), 4)
                                      for k, v in processor.timings.items()}}

    return action


def reproduces_prediction(config: Config, variant: Config) -> bool:
    """Whether post-processing the saved embeddings with ``variant`` gives exactly the prediction's own result:
    same post-processing and tracking, and full-frame inference (in tiles mode the saved full-grid embeddings
    merge the tiles, so ``rshn postprocess`` on them only approximates ``rshn predict``)."""
    return config.inference.full_frame and not [
        key for key in changed_keys(config, variant) if key.split(".")[0] in VARIANT_SECTIONS]


def _copy_action(source: Path, target: Path) -> Callable[[], dict]:
    def action() -> dict:
        with atomic_folder(target) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        return {"copied_from": str(source)}

    return action


def _evaluate_action(res_dir: Path, gt_dir: Path, scores_path: Path) -> Callable[[], dict]:
    def action() -> dict:
        from rshn_tf.evaluation import evaluate_result

        scores = evaluate_result(res_dir, gt_dir)
        write_json_atomic(scores_path, scores)
        return scores

    return action


# --------------------------------------------------------------------------------------------------------------
# Results


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return sum(present) / len(present) if len(present) == len(values) and present else None


def _read_scores(path: Path) -> dict[str, Optional[float]]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RshnError(f"{path}: scores missing or unreadable ({exc}); re-run the experiment") from exc


def collect_results(experiment: Experiment) -> dict[str, Any]:
    """The content of ``results.json``: scores per fold and test sequence, their mean, and the same per variant."""

    def block(variant: Optional[str]) -> dict[str, Any]:
        rows = []
        for fold in experiment.folds:
            for seq in fold.test:
                scores = _read_scores(experiment.scores_path(fold, seq, variant))
                rows.append({"fold": fold.name, "train": list(fold.train), "test": seq,
                             "result": str(experiment.result_dir(fold, seq, variant)),
                             **{metric: scores.get(metric) for metric in REPORTED}})
        mean = {metric: _mean([row[metric] for row in rows]) for metric in REPORTED}
        return {"folds": rows, "mean": mean}

    config = experiment.config
    results: dict[str, Any] = {
        "dataset": config.data.dataset,
        "dataset_dir": config.data.dataset_dir,
        "mode": config.experiment.mode,
        "architecture": config.model.architecture,
        "iterations": fold_config(config, experiment.folds[0]).training.iterations,
        "metrics": list(REPORTED),
        "run_folder": str(experiment.root),
        **block(None),
    }
    if experiment.variants:
        results["variants"] = {name: {"postprocessing": variant.to_dict()["postprocessing"], **block(name)}
                               for name, variant in experiment.variants.items()}
    return results


def _cell(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def results_markdown(results: dict[str, Any]) -> str:
    """``results.md``: the fold table (and a variant table) of :func:`collect_results` output."""
    metrics = results["metrics"]
    labels = {"OP_CTB": "OP"}
    header = "| Fold | Trained on | Evaluated on | " + " | ".join(labels.get(m, m) for m in metrics) + " |"
    lines = [
        f"# Results: {results['dataset']} ({results['mode']}, {results['architecture']}, "
        f"{results['iterations']} iterations per model)",
        "",
        f"Run folder `{results['run_folder']}`, data `{results['dataset_dir']}`; resolved configuration in "
        "`config.yaml`. Scores by py-ctcmetrics; OP = (SEG + TRA) / 2 (paper §3.2).",
        "",
        header,
        "|" + "---|" * (3 + len(metrics)),
    ]
    for row in results["folds"]:
        lines.append(f"| {row['fold']} | {'+'.join(row['train'])} | {row['test']} | "
                     + " | ".join(_cell(row[m]) for m in metrics) + " |")
    lines.append("| **mean** | | | " + " | ".join(f"**{_cell(results['mean'][m])}**" for m in metrics) + " |")
    variants = results.get("variants")
    if variants:
        lines += ["", "## Post-processing variants (same networks, same saved embeddings)", ""]
        first = next(iter(variants.values()))
        columns = [f"{row['fold']}/{row['test']}" for row in first["folds"]]
        lines.append("| Variant | " + " | ".join(f"{c} {labels.get(m, m)}" for c in columns for m in ("SEG", "TRA"))
                     + " | mean SEG | mean TRA | mean DET | mean OP |")
        lines.append("|" + "---|" * (1 + 2 * len(columns) + 4))
        for name, variant in variants.items():
            cells = [_cell(row[m]) for row in variant["folds"] for m in ("SEG", "TRA")]
            cells += [_cell(variant["mean"][m]) for m in ("SEG", "TRA", "DET", "OP_CTB")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(experiment: Experiment) -> dict:
    """Write ``results.json`` and ``results.md`` of a finished experiment; returns the mean scores."""
    results = collect_results(experiment)
    write_json_atomic(experiment.root / RESULTS_JSON, results)
    write_text_atomic(experiment.root / RESULTS_MD, results_markdown(results))
    return {"mean": results["mean"]}


# --------------------------------------------------------------------------------------------------------------
# Running


@dataclass
class RunOutcome:
    """What :func:`run_experiment` did.

    Attributes:
        experiment: The experiment (its plan, folders, folds).
        ran: Names of the steps that ran (empty for a dry run or a finished experiment).
        results: Content of ``results.json`` (None for a dry run, or when ``only`` left the report undone).
    """

    experiment: Experiment
    ran: list[str]
    results: Optional[dict[str, Any]]


def prepare_run_folder(experiment: Experiment) -> None:
    """Create the run folder and save the resolved configuration; refuse a folder of another experiment.

    Raises:
        RshnError: If ``config.yaml`` in the folder differs in keys that change results (naming them).
    """
    path = experiment.root / "config.yaml"
    if path.is_file():
        from rshn_tf.model_folder import ModelFolder

        saved = ModelFolder(experiment.root).read_config()
        changed = changed_keys(saved, experiment.config)
        if changed:
            details = "; ".join(f"{key}: {_value(saved, key)!r} -> {_value(experiment.config, key)!r}"
                                for key in changed[:8])
            raise RshnError(f"{experiment.root} holds an experiment with another configuration ({details}"
                            f"{'; …' if len(changed) > 8 else ''}); choose another output folder (--out or "
                            "experiment.output_dir) or delete that one")
    save_config(experiment.config, path)


def hold_run_folder(root: Path, only: Sequence[str] = ()) -> ContextManager[Any]:
    """Hold a run folder (experiment, Table 3) while steps run: check that it can be written, remove temporary
    files of killed runs, and take its lock (:func:`~rshn_tf.output_lock.claim_output`), so that a second full run
    is refused naming the first. With ``only`` (steps split over processes sharing the folder) the lock is shared:
    other ``--only`` runs are admitted, a full run is refused (and refuses them); each step then takes a lock of
    its own (:meth:`Plan.run`), so that no step runs twice at once."""
    return claim_output(root, "run folder", inside=True, shared=bool(only))


def _value(config: Config, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return getattr(getattr(config, section), key)


def run_experiment(
    config: Config,
    out_dir: Optional[str | os.PathLike] = None,
    *,
    dry_run: bool = False,
    variants: Optional[dict[str, Config]] = None,
    before: Sequence[Step] = (),
    after: Sequence[Step] = (),
    only: Sequence[str] = (),
) -> RunOutcome:
    """Run (or with ``dry_run`` only lay out) an experiment; see :func:`experiment_plan` for the arguments and
    :meth:`Plan.run` for ``only``.

    Raises:
        RshnError: On configuration or data problems and missing optional packages (checked before anything
            runs), and failing steps.
        StepInterrupted: When training was stopped by a signal (re-run to continue).
    """
    experiment = experiment_plan(config, out_dir, variants, before, after)
    if dry_run:
        return RunOutcome(experiment, [], None)
    if not before:  # steps in ``before`` may create the data (the demo)
        check_dataset(config, experiment.folds)
    for each in (config, *experiment.variants.values()):  # not after hours of training
        require_for_config(each)
    with hold_run_folder(experiment.root, only):
        prepare_run_folder(experiment)
        ran = experiment.plan.run(only)
    results_path = experiment.root / RESULTS_JSON
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else None
    return RunOutcome(experiment, ran, results)
