"""Building a Cell Tracking Challenge submission folder (``rshn package``).

The challenge runs every participant's software on its own machines, per dataset and sequence, from the command
line: ``SW/<DATASET>-01.sh`` reads ``../<DATASET>/01`` and writes ``../<DATASET>/01_RES`` (relative paths, no
network). :func:`package_submission` writes such a folder::

    SUBMISSION_DIR/
      SW/
        <DATASET>-01.sh, <DATASET>-02.sh   launchers (one pair per packaged dataset)
        rshn_sw.sh                         shared helper: input check, virtual environment SW/.venv
        models/<DATASET>/                  config.yaml (resolved, no data paths) + the chosen weights + model_info.json
        src/                               the rshn-tf packages and a pyproject.toml (installed into SW/.venv)
        requirements.txt                   the runtime dependencies, pinned to this environment
        README.md                          how to run, hardware, time per frame, parameters, citation
        wheels/                            only with ``wheels=True``: every requirement for an offline install
      <DATASET>/01_RES, 02_RES             only with ``data_dir``: the results, produced by the launchers

Several datasets share one ``SW/``: each call replaces its own dataset's launchers and model and keeps the others.
``SW/`` is built completely in a temporary folder beside it and renamed into place. The code is copied from where
the running ``rshn_tf``, ``data_io`` and ``ctc_submission`` packages are imported (a source checkout or a
non-editable installation alike). Nothing written contains an absolute path; a final scan refuses to publish a
folder that mentions this machine's paths.

With ``data_dir`` the launchers are then run the way the organisers run them: the dataset's sequences are linked
into ``SUBMISSION_DIR/<DATASET>/0X`` (the challenge layout), ``bash SW/<DATASET>-0X.sh`` writes
``SUBMISSION_DIR/<DATASET>/0X_RES``, the links and the virtual environment are removed again (the submission holds
results, not inputs), the time per frame is recorded in the README and the result is checked with
:func:`ctc_submission.check.check_submission`. This module must not import TensorFlow.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

import rshn_tf
from ctc_submission import sw_files
from ctc_submission.check import check_submission, packaged_datasets
from ctc_submission.sw_files import (
    ENV_SCRIPT,
    MODELS_DIR,
    README_FILE,
    REQUIREMENTS_FILE,
    SEQUENCES,
    SRC_DIR,
    SW_DIR,
    VENV_DIR,
    VENV_LOCK,
    WHEELS_DIR,
    launcher_name,
)
from data_io.ctc import count_frames
from rshn_tf.atomic import atomic_folder, write_text_atomic
from rshn_tf.config import Config, apply_overrides, preset_dir, save_config, validate
from rshn_tf.errors import RshnError
from rshn_tf.extras import EXTRAS, needed_packages
from rshn_tf.model_folder import MODEL_INFO_FILE, WEIGHTS_FILES, ModelFolder, model_info
from rshn_tf.output_lock import claim_output

log = logging.getLogger(__name__)

#: The project's packages bundled in ``SW/src`` (``rshn_tf.presets`` is added from :func:`preset_dir`).
BUNDLED_PACKAGES = ("rshn_tf", "data_io", "ctc_submission")
#: Distribution name of the project.
DISTRIBUTION = "rshn-tf"
#: The extra whose TensorFlow a submission declares: ``cpu`` (the base requirements name no TensorFlow; the pinned
#: version is the one installed here, ``tensorflow-cpu`` or ``tensorflow``, see :func:`runtime_requirements`).
SUBMISSION_EXTRA = "cpu"
#: Dataset names become file and folder names: letters, digits and ``. _ + -`` (e.g. ``Fluo-N2DH-SIM+``).
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
#: Paper §3.1: "Network inference with subsequent instance prediction takes from 4.5 s per frame (DIC-C2DH-HeLa,
#: no overlapping tiles) to 140 s per frame (Fluo-N2DL-HeLa, 40 overlapping tiles)" on an NVIDIA Titan V.
PAPER_SECONDS_PER_FRAME = {1: 4.5, 40: 140.0}
_IGNORED_FILES = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


@dataclass
class PackageResult:
    """What :func:`package_submission` did.

    Attributes:
        sw_dir: The ``SW/`` folder.
        datasets: All datasets packaged in it (this one and earlier ones), sorted.
        results: Result folders written by the launchers (only with ``data_dir``).
        seconds_per_frame: Sequence -> measured wall-clock seconds per frame of its launcher (only with ``data_dir``).
    """

    sw_dir: Path
    datasets: list[str]
    results: list[Path] = field(default_factory=list)
    seconds_per_frame: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Public functions


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it can name launchers and folders, else raise :class:`RshnError`."""
    if not isinstance(name, str) or not _DATASET_NAME.fullmatch(name):
        raise RshnError(f"dataset name {name!r}: use a CTC dataset name such as DIC-C2DH-HeLa (letters, digits and "
                        f". _ + - only; it names the launchers <DATASET>-01.sh and the folder ../<DATASET>)")
    return name


def runtime_requirements(extras: Sequence[str] = (SUBMISSION_EXTRA,)) -> list[str]:
    """The runtime dependencies of rshn-tf pinned to the versions installed here (``name==version``).

    The declared requirements come from the ``setup.cfg`` beside the imported ``rshn_tf`` package (source checkout)
    or from the installed distribution's metadata: the base ones and those of ``extras`` (by default the TensorFlow
    of the ``cpu`` extra; other extras such as ``test`` are left out). Of alternatives such as ``tensorflow-cpu`` /
    ``tensorflow`` the installed ones are pinned.

    Raises:
        RshnError: If the requirements cannot be found or a non-alternative requirement is not installed.
    """
    pins, missing = [], []
    for name, alternatives in _declared_requirements(extras):
        version = _installed_version(name)
        if version is not None:
            pins.append(f"{name}=={version}")
        elif not any(_installed_version(other) for other in alternatives):
            missing.append(name)
    if missing:
        raise RshnError(f"requirements of rshn-tf not installed in this environment: {', '.join(missing)}; "
                        f"install them (pip install {' '.join(missing)}) before packaging")
    return pins


def package_submission(
    model_dir: str | os.PathLike,
    dataset: str,
    out_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    weights: str = "auto",
    overrides: Sequence[str] = (),
    wheels: bool = False,
) -> PackageResult:
    """Add one dataset's model and launchers to the submission folder ``out_dir`` (see the module docstring).

    Args:
        model_dir: A model folder written by ``rshn train``.
        dataset: The CTC dataset name, e.g. ``DIC-C2DH-HeLa``.
        out_dir: The submission folder; created if needed. Its ``SW/`` must be absent or written by this function.
        data_dir: The dataset's challenge data (a folder holding ``01`` and ``02``, or a folder holding
            ``<dataset>/01`` ...): if given, the launchers are run and their results checked.
        weights: Which weights of the model folder to bundle: ``best``, ``last`` or ``auto`` (best when the folder
            holds them, else last).
        overrides: ``section.key=value`` changes of the bundled config (e.g. post-processing parameters).
        wheels: Download every requirement as a wheel into ``SW/wheels`` for an installation without network
            (needs a package index now).

    Returns:
        A :class:`PackageResult`.

    Raises:
        RshnError: On a bad name, model folder, config, weights, an ``SW/`` not written by rshn-tf, a submission
            folder that cannot be written or that another process writes, a failed launcher or a result that fails
            the check.
    """
    check_dataset_name(dataset)
    folder = ModelFolder(model_dir)
    if weights == "auto":
        weights = folder.default_weights() if folder.root.is_dir() else "best"  # a missing folder is reported below
    if weights not in WEIGHTS_FILES:
        raise RshnError(f"weights must be one of {', '.join(WEIGHTS_FILES)} or auto, got {weights!r}")
    config = _bundle_config(folder, dataset, overrides)
    weights_path = folder.weights_path(weights)
    if not weights_path.is_file():
        other = [w for w in WEIGHTS_FILES if w != weights and folder.weights_path(w).is_file()]
        hint = f"; choose --weights {other[0]}" if other else "; the run exported no weights yet (train longer)"
        raise RshnError(f"{weights_path}: missing ({weights} weights of model folder {folder.root}){hint}")
    data_dir = _dataset_input_dir(Path(data_dir), dataset) if data_dir is not None else None

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RshnError(f"{out_dir}: exists and is not a folder; choose another submission folder")
    with claim_output(out_dir, "submission folder", inside=True):  # one writer, so no dataset's run is lost
        sw_dir = out_dir / SW_DIR
        _check_replaceable(sw_dir)
        out_dir.mkdir(parents=True, exist_ok=True)

        with atomic_folder(sw_dir) as tmp:
            _build_sw(tmp, sw_dir, folder, weights, config, dataset, wheels)
            _refuse_local_paths(tmp, [folder.root, out_dir, Path(rshn_tf.__file__).resolve().parent.parent,
                                      Path.home(), Path(sys.prefix), Path(sys.base_prefix)])
        datasets = packaged_datasets(sw_dir)
        log.info("packaged %s into %s (datasets: %s)", dataset, sw_dir, ", ".join(datasets))
        result = PackageResult(sw_dir, datasets)
        if data_dir is not None:
            result.results, result.seconds_per_frame = _run_and_check(out_dir, dataset, data_dir)
        return result


def run_launchers(submission_dir: str | os.PathLike, dataset: str) -> dict[str, float]:
    """Run ``bash SW/rshn_sw.sh setup`` and then the dataset's launchers, as the organisers would.

    Args:
        submission_dir: The submission folder; the inputs must be at ``<submission_dir>/<dataset>/0X``.
        dataset: The dataset whose launchers run.

    Returns:
        Sequence -> wall-clock seconds of its launcher (environment already set up).

    Raises:
        RshnError: If a script fails (its messages went to this process's stderr).
    """
    sw_dir = Path(submission_dir) / SW_DIR
    seconds = {}
    for name, key in [(ENV_SCRIPT, None)] + [(launcher_name(dataset, s), s) for s in SEQUENCES]:
        command = ["bash", name] + (["setup"] if key is None else [])
        log.info("running %s in %s", " ".join(command), sw_dir)
        start = time.perf_counter()
        status = subprocess.run(command, cwd=sw_dir, check=False).returncode
        if status != 0:
            raise RshnError(f"{sw_dir / name}: failed with exit status {status} (its messages are above)")
        if key is not None:
            seconds[key] = time.perf_counter() - start
    return seconds


# ----------------------------------------------------------------------------------------------------------------
# Building SW/


def _bundle_config(folder: ModelFolder, dataset: str, overrides: Sequence[str]) -> Config:
    """The model's resolved config for the submission: overrides applied, dataset named, no training-data path."""
    config = folder.read_config()
    apply_overrides(config, overrides)
    trained_for = config.data.dataset
    if trained_for not in ("custom", dataset):
        raise RshnError(f"{folder.config_path}: the model was trained for dataset '{trained_for}' (data.dataset), "
                        f"not '{dataset}'; package it as --dataset {trained_for}, or confirm with "
                        f"--set data.dataset={dataset}")
    config.data.dataset = dataset
    config.data.dataset_dir = None  # where the training data was is no business of the submission
    validate(config, str(folder.config_path))
    return config


def _build_sw(tmp: Path, sw_dir: Path, folder: ModelFolder, weights: str, config: Config, dataset: str,
              wheels: bool) -> None:
    """Write the complete new ``SW/`` into ``tmp``: kept datasets of ``sw_dir``, this dataset, shared files."""
    if sw_dir.is_dir():
        for other in packaged_datasets(sw_dir):
            if other == dataset:
                continue
            for sequence in SEQUENCES:
                script = sw_dir / launcher_name(other, sequence)
                if script.is_file():
                    shutil.copy2(script, tmp / script.name)
            if (sw_dir / MODELS_DIR / other).is_dir():
                shutil.copytree(sw_dir / MODELS_DIR / other, tmp / MODELS_DIR / other)
    model = tmp / MODELS_DIR / dataset
    model.mkdir(parents=True)
    save_config(config, model / "config.yaml")
    shutil.copyfile(folder.weights_path(weights), model / WEIGHTS_FILES[weights])
    _write_json(model / MODEL_INFO_FILE, model_info(folder, weights))
    for sequence in SEQUENCES:
        _write_executable(tmp / launcher_name(dataset, sequence), sw_files.launcher_script(dataset, sequence, weights))
    _write_executable(tmp / ENV_SCRIPT, sw_files.env_script())
    packages, package_data = _copy_code(tmp / SRC_DIR)
    extras = submission_extras(tmp)
    (tmp / SRC_DIR / "pyproject.toml").write_text(
        sw_files.pyproject(rshn_tf.__version__, packages, package_data, declared_requirements(extras)),
        encoding="utf-8")
    requirements = sw_files.requirements(runtime_requirements(extras), rshn_tf.__version__, _python_version(),
                                         _platform_name())
    (tmp / REQUIREMENTS_FILE).write_text(requirements, encoding="utf-8")
    if wheels:
        _download_wheels(tmp)
    elif (sw_dir / WHEELS_DIR).is_dir():
        old = sw_dir / REQUIREMENTS_FILE
        if old.is_file() and old.read_text(encoding="utf-8") == requirements:
            shutil.copytree(sw_dir / WHEELS_DIR, tmp / WHEELS_DIR)
        else:
            log.warning("%s: dropped, the requirements changed; package with --wheels again for an offline bundle",
                        sw_dir / WHEELS_DIR)
    _write_readme(tmp)


def _copy_code(src: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Copy the imported project packages (and the presets) into ``src``; return the package list and data globs."""
    import importlib

    packages: list[str] = []
    for name in BUNDLED_PACKAGES:
        location = Path(importlib.import_module(name).__file__).resolve().parent
        shutil.copytree(location, src / name, ignore=_ignore_code(location / "presets"))
        packages += sorted(".".join(p.relative_to(src).parts) for p in [src / name, *(src / name).rglob("*")]
                           if p.is_dir() and (p / "__init__.py").is_file())
    presets = src / "rshn_tf" / "presets"
    shutil.copytree(preset_dir(), presets, ignore=_IGNORED_FILES)
    globs = sorted({str(p.parent.relative_to(presets) / "*.yaml").removeprefix("./") for p in presets.rglob("*.yaml")})
    packages.append("rshn_tf.presets")
    return packages, {"rshn_tf.presets": globs}


def _ignore_code(skip: Path):
    """``shutil.copytree`` filter: no byte code, and not ``skip`` (the installed presets, copied separately)."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        ignored = set(_IGNORED_FILES(folder, names))
        return ignored | {n for n in names if Path(folder, n) == skip}

    return ignore


def _write_readme(sw: Path) -> None:
    """(Re)write ``sw/README.md`` from the ``models/<DATASET>/`` folders in ``sw``."""
    entries = [_dataset_entry(sw / MODELS_DIR / name) for name in packaged_datasets(sw)
               if (sw / MODELS_DIR / name).is_dir()]
    text = sw_files.readme(entries, rshn_tf.__version__, _python_version(), _platform_name(),
                           offline=(sw / WHEELS_DIR).is_dir())
    write_text_atomic(sw / README_FILE, text)


def _dataset_entry(model: Path) -> sw_files.DatasetEntry:
    """README facts of one bundled model folder."""
    config = ModelFolder(model).read_config()
    info = _read_json(model / MODEL_INFO_FILE)
    training = info.get("training") or {}
    training_line = None
    if "step" in training:
        training_line = f"{training['step']} of {training.get('iterations', '?')} iterations"
        if training.get("best_step") is not None and info.get("weights") == "best":
            training_line += f", best weights from iteration {training['best_step']}"
    timing = info.get("timing")
    timing_line = None
    if timing:
        per_sequence = ", ".join(f"{s}: {t['frames']} frames in {t['seconds']:.1f} s"
                                 for s, t in sorted(timing["sequences"].items()))
        timing_line = (f"{timing['seconds_per_frame']:.2f} s per frame ({per_sequence}; wall clock of the launcher "
                       f"with the environment already set up, including TensorFlow start-up; {timing['hardware']})")
    return sw_files.DatasetEntry(model.name, info.get("weights", "best"), training_line, _parameter_rows(config),
                                 timing_line, _estimate(config))


def _parameter_rows(config: Config) -> tuple[tuple[str, str], ...]:
    """The inference parameters of a config as README table rows (Table 1 of the paper and the code's extras)."""
    data, post, tracking = config.data, config.postprocessing, config.tracking
    size = "original frame size" if data.resampled_size is None else "×".join(map(str, data.resampled_size))
    return (
        ("network grid (height×width)", size + (f", extra scale {data.extra_scale}" if data.extra_scale != 1 else "")),
        ("architecture", f"{config.model.architecture}, {config.model.stacks}×{config.model.levels} levels, "
                         f"{config.model.filters} filters, embeddings d = {config.model.embedding_size}"),
        ("tiles", f"{'×'.join(map(str, config.inference_tile_size))}, overlap {config.inference.tile_overlap} px"),
        ("frames per window l", str(data.sequence_length)),
        ("clustering", f"{post.clustering}, h = {post.bandwidth}, c = {post.coordinate_factor}, "
                       f"t_size = {post.min_size}"),
        ("border band (original px)", str(data.border_band)),
        ("parent search", f"dilation {tracking.parent_dilation}, {tracking.parent_search_frames} frames"),
        ("t_merge, t_length", f"{tracking.merge_search_frames}, {tracking.min_track_length}"),
    )


def _estimate(config: Config) -> str:
    """Time per frame from the paper's timings (§3.1), interpolated over the number of tiles per frame."""
    (one, t_one), (many, t_many) = sorted(PAPER_SECONDS_PER_FRAME.items())
    paper = (f"the paper reports {t_one:g} s per frame for {one} tile and {t_many:g} s for {many} tiles on an "
             "NVIDIA Titan V GPU (§3.1); CPUs are several times slower")
    if config.data.resampled_size is None:
        return f"depends on the frame size (tiles of {'×'.join(map(str, config.inference_tile_size))}); {paper}"
    from rshn_tf.geometry import GridGeometry

    # a fixed network grid does not depend on the frame size, so the grid's own size stands for the unknown one
    tiles = len(GridGeometry.of(config.data.resampled_size, config).tiles)
    seconds = t_one + (t_many - t_one) * (tiles - one) / (many - one)
    return f"about {seconds:.0f} s per frame on a GPU for {tiles} tile(s) per frame; {paper}"


def _download_wheels(sw: Path) -> None:
    """``pip wheel`` every requirement (and the build backend of ``src``) into ``sw/wheels``."""
    wheels = sw / WHEELS_DIR
    command = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--wheel-dir", str(wheels),
               "-r", str(sw / REQUIREMENTS_FILE), "setuptools>=61", "wheel"]
    log.info("downloading wheels for an offline installation into %s", wheels)
    status = subprocess.run(command, check=False).returncode
    if status != 0:
        raise RshnError(f"--wheels: 'pip wheel' failed with exit status {status} (it needs a package index; "
                        "see its messages above)")


# ----------------------------------------------------------------------------------------------------------------
# Running the launchers on the data


def _dataset_input_dir(data: Path, dataset: str) -> Path:
    """The folder holding the dataset's sequences ``01`` and ``02``: ``data`` itself or ``data/<dataset>``."""

    for candidate in (data, data / dataset):
        if all((candidate / s).is_dir() for s in SEQUENCES):
            for sequence in SEQUENCES:
                if not count_frames(candidate / sequence):
                    raise RshnError(f"{candidate / sequence}: holds no t*.tif frames (challenge input expected)")
            return candidate.resolve()
    if not data.is_dir():
        raise RshnError(f"{data}: dataset folder not found")
    missing = [s for s in SEQUENCES if not (data / s).is_dir()]
    raise RshnError(f"{data}: no challenge sequence folder {' and '.join(missing)} (neither in it nor in "
                    f"{data / dataset}); a CTC submission runs both sequences {' and '.join(SEQUENCES)}")


def _run_and_check(out_dir: Path, dataset: str, data_dir: Path) -> tuple[list[Path], dict[str, float]]:
    """Link the inputs into the challenge layout, run the launchers, clean up, record the timing, check."""

    sw_dir = out_dir / SW_DIR
    links = _link_inputs(out_dir, dataset, data_dir)
    try:
        seconds = run_launchers(out_dir, dataset)
    finally:
        for link in links:
            link.unlink()
        for leftover in (VENV_DIR, VENV_LOCK, f"{VENV_LOCK}.stamp"):
            path = sw_dir / leftover
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    frames = {s: count_frames(data_dir / s) for s in SEQUENCES}
    timing = {
        "seconds_per_frame": sum(seconds.values()) / max(1, sum(frames.values())),
        "sequences": {s: {"frames": frames[s], "seconds": round(seconds[s], 2)} for s in SEQUENCES},
        "hardware": _hardware(),
    }
    info_path = sw_dir / MODELS_DIR / dataset / MODEL_INFO_FILE
    info = _read_json(info_path)
    info["timing"] = timing
    _write_json(info_path, info)
    _write_readme(sw_dir)
    report = check_submission(out_dir, data_dir=data_dir, datasets=[dataset])
    if not report.ok:
        raise RshnError(f"{out_dir}: the results of the launchers fail the submission check:\n{report.format()}")
    results = [out_dir / dataset / f"{s}_RES" for s in SEQUENCES]
    return results, {s: seconds[s] / max(1, frames[s]) for s in SEQUENCES}


def _link_inputs(out_dir: Path, dataset: str, data_dir: Path) -> list[Path]:
    """Make ``out_dir/<dataset>/0X`` the input sequences (symbolic links unless they already are those folders)."""
    links = []
    (out_dir / dataset).mkdir(exist_ok=True)
    for sequence in SEQUENCES:
        place, source = out_dir / dataset / sequence, data_dir / sequence
        if place.is_symlink():
            place.unlink()  # a leftover of an interrupted run
        elif place.exists():
            if place.resolve() == source.resolve():
                continue
            raise RshnError(f"{place}: already exists and is not the input {source}; remove it, or package without "
                            "--data and run the launchers yourself")
        place.symlink_to(source.resolve(), target_is_directory=True)
        links.append(place)
    return links


def _hardware() -> str:
    """One line about this machine: CPU model and cores, whether an NVIDIA GPU is present."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(encoding="utf-8", errors="replace"), re.M)
        cpu = match.group(1).strip() if match else cpu
    gpu = "NVIDIA GPU present (nvidia-smi found)" if shutil.which("nvidia-smi") else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPU cores, {gpu}"


# ----------------------------------------------------------------------------------------------------------------
# Helpers


_EXTRA_CLAUSE = re.compile(r"""\s*(?:\band\s+)?\(?\s*extra\s*==\s*["'](?P<extra>[^"']+)["']\s*\)?""")


def submission_extras(sw: Path) -> tuple[str, ...]:
    """The extras whose requirements the submission in ``sw`` declares: :data:`SUBMISSION_EXTRA`, and the extra of
    every optional package a packaged model's config needs (``hdbscan`` for HDBSCAN clustering)."""
    models = sorted(p for p in (sw / MODELS_DIR).iterdir() if p.is_dir()) if (sw / MODELS_DIR).is_dir() else []
    needed = {EXTRAS[package] for model in models for package in needed_packages(ModelFolder(model).read_config())
              .values()}
    return (SUBMISSION_EXTRA, *sorted(needed))


def _runtime_line(line: str, extras: Sequence[str]) -> Optional[str]:
    """A requirement line of the base or of one of ``extras`` without its ``extra ==`` clause; None for a
    requirement of another extra."""
    requirement, _, marker = line.partition(";")
    match = _EXTRA_CLAUSE.search(marker)
    if match is None:
        return line.strip()
    if match.group("extra") not in extras:
        return None
    rest = (marker[:match.start()] + marker[match.end():]).strip()
    return f"{requirement.strip()}; {rest}" if rest else requirement.strip()


def declared_requirements(extras: Sequence[str] = (SUBMISSION_EXTRA,)) -> list[str]:
    """The runtime requirement lines of rshn-tf (``name>=version; marker``): the base ones and those of ``extras``
    (by default the TensorFlow of the ``cpu`` extra, :data:`SUBMISSION_EXTRA`), other extras left out, sorted by
    name.

    Read from the ``setup.cfg`` beside the imported ``rshn_tf`` package (source checkout) or from the installed
    distribution's metadata (also of the bundled ``SW/src``, which declares the same lines).

    Raises:
        RshnError: If neither exists.
    """
    setup_cfg = Path(rshn_tf.__file__).resolve().parent.parent / "setup.cfg"
    lines: list[str] = []
    if setup_cfg.is_file():
        parser = configparser.ConfigParser()
        parser.read(setup_cfg, encoding="utf-8")
        if parser.get("metadata", "name", fallback="") == DISTRIBUTION:
            lines = parser.get("options", "install_requires", fallback="").splitlines()
            for extra in extras:
                lines += parser.get("options.extras_require", extra, fallback="").splitlines()
    if not lines:
        try:
            lines = metadata.requires(DISTRIBUTION) or []
        except metadata.PackageNotFoundError:
            raise RshnError(f"cannot find the requirements of rshn-tf: neither {setup_cfg} nor an installed "
                            f"'{DISTRIBUTION}' distribution") from None
    runtime = [_runtime_line(line, extras) for line in lines if line.strip() and not line.strip().startswith("#")]
    # sorted: an installed distribution's metadata lists requirements with markers last
    return sorted((line for line in runtime if line), key=str.lower)


def _declared_requirements(extras: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(name, alternative names) of every runtime requirement of rshn-tf with ``extras``, sorted by name."""
    names = []
    for line in declared_requirements(extras):
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if name and name.group(1) not in names:
            names.append(name.group(1))
    # requirements that differ only by an environment marker (tensorflow-cpu / tensorflow) are alternatives
    stem = {name: re.sub(r"[-_.](cpu|gpu)$", "", name.lower()) for name in names}
    return [(name, [other for other in names if other != name and stem[other] == stem[name]]) for name in names]


def _installed_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _python_version() -> str:
    return platform.python_version()


def _platform_name() -> str:
    return f"{platform.system()} {platform.machine()}"


def _write_executable(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")
    path.chmod(0o755)


def _write_json(path: Path, values: dict) -> None:
    write_text_atomic(path, json.dumps(values, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RshnError(f"{path}: cannot be read ({exc})") from exc


def _check_replaceable(sw_dir: Path) -> None:
    """Refuse to replace an ``SW/`` that rshn-tf did not write."""
    if sw_dir.exists() and (not sw_dir.is_dir() or (any(sw_dir.iterdir()) and not (sw_dir / ENV_SCRIPT).is_file())):
        raise RshnError(f"{sw_dir}: exists and was not written by 'rshn package' (no {ENV_SCRIPT}); refusing to "
                        "replace it; choose another --out folder")


def _refuse_local_paths(sw: Path, paths: Sequence[Path]) -> None:
    """Raise if a text file below ``sw`` mentions one of ``paths`` (this machine's folders)."""
    needles = sorted({str(p.resolve()) for p in paths if len(p.resolve().parts) > 1}
                     | {str(p) for p in paths if p.is_absolute() and len(p.parts) > 1}, key=len, reverse=True)
    for path in sorted(sw.rglob("*")):
        if not path.is_file() or path.suffix not in (".sh", ".md", ".txt", ".yaml", ".json", ".py", ".toml", ".cfg"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for needle in needles:
            if needle in text:
                raise RshnError(f"{path.relative_to(sw)}: mentions the local path {needle}; a submission must not "
                                "contain absolute paths (check --set values)")
