"""Verifying a finished Cell Tracking Challenge submission folder (``rshn package --check``).

For every dataset packaged in ``SW/`` (its ``models/<DATASET>/`` and launchers) and both challenge sequences:

* the launcher ``SW/<DATASET>-0X.sh`` exists, is an executable file and starts with a ``#!`` line;
* the bundled model has a readable ``config.yaml`` and weights; the shared files of ``SW/`` exist;
* the result ``<DATASET>/0X_RES`` exists and passes py-ctcmetrics' validation
  (:func:`rshn_tf.evaluation.validate_result`);
* it has one ``maskNNN.tif`` per input frame ``tNNN.tif`` (same numbers), the inputs being ``<DATASET>/0X`` inside
  the submission folder or, when given, in ``data_dir``.

Every finding goes into a :class:`CheckReport`; the check never stops at the first problem. This module must not
import TensorFlow.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ctc_submission.sw_files import (
    ENV_SCRIPT,
    MODELS_DIR,
    README_FILE,
    REQUIREMENTS_FILE,
    SEQUENCES,
    SRC_DIR,
    SW_DIR,
    launcher_name,
)
from data_io.ctc import MASK_PATTERN, RAW_PATTERN, numbered_files
from rshn_tf.errors import RshnError

_MAX_LISTED = 5


@dataclass
class CheckReport:
    """Findings of :func:`check_submission`.

    Attributes:
        submission_dir: The checked folder.
        findings: ``(ok, subject, text)`` in check order; ``subject`` is ``SW`` or a dataset name.
    """

    submission_dir: Path
    findings: list[tuple[bool, str, str]] = field(default_factory=list)

    def add(self, ok: bool, subject: str, text: str) -> None:
        """Record one finding."""
        self.findings.append((ok, subject, text))

    @property
    def problems(self) -> list[str]:
        """The failed findings as ``subject: text``."""
        return [f"{subject}: {text}" for ok, subject, text in self.findings if not ok]

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.problems

    def format(self) -> str:
        """A readable report: one line per finding grouped by subject, then the verdict."""
        lines = [f"CTC submission check of {self.submission_dir}"]
        subject = None
        for ok, name, text in self.findings:
            if name != subject:
                lines.append(f"  {name}")
                subject = name
            lines.append(f"    {'ok  ' if ok else 'FAIL'}  {text}")
        count = len(self.problems)
        lines.append("result: OK, ready to submit" if not count else
                     f"result: {count} problem{'s' if count > 1 else ''}")
        return "\n".join(lines)


def packaged_datasets(sw_dir: str | os.PathLike) -> list[str]:
    """Datasets packaged in a ``SW/`` folder: the names of ``models/<DATASET>/`` and of the launchers, sorted."""
    sw_dir = Path(sw_dir)
    names = {p.name for p in (sw_dir / MODELS_DIR).glob("*") if p.is_dir()}
    for script in sw_dir.glob("*.sh"):
        match = re.fullmatch(r"(.+)-(\d\d)\.sh", script.name)
        if match and match.group(2) in SEQUENCES:
            names.add(match.group(1))
    return sorted(names)


def check_submission(
    submission_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    datasets: Optional[Sequence[str]] = None,
) -> CheckReport:
    """Check a submission folder written by ``rshn package`` (see the module docstring).

    Args:
        submission_dir: The folder holding ``SW/`` and the ``<DATASET>/0X_RES`` results.
        data_dir: Where the inputs are when not in ``submission_dir/<DATASET>/0X``: a folder holding
            ``<DATASET>/0X`` (the challenge download), or, for a single dataset, the dataset folder itself.
        datasets: Check only these datasets (default: every dataset packaged in ``SW/``).

    Returns:
        The :class:`CheckReport`; ``report.ok`` tells whether the submission is complete and valid.

    Raises:
        RshnError: If ``submission_dir`` is not a folder.
    """
    root = Path(submission_dir)
    if not root.is_dir():
        raise RshnError(f"{root}: submission folder not found")
    report = CheckReport(root)
    sw = root / SW_DIR
    if not sw.is_dir():
        report.add(False, SW_DIR, f"{sw} not found; a submission holds the software in SW/")
        return report
    for name in (ENV_SCRIPT, REQUIREMENTS_FILE, README_FILE, f"{SRC_DIR}/pyproject.toml",
                 f"{SRC_DIR}/rshn_tf/cli.py"):
        report.add((sw / name).is_file(), SW_DIR, f"{name} {'present' if (sw / name).is_file() else 'missing'}")
    names = list(datasets) if datasets is not None else packaged_datasets(sw)
    if not names:
        report.add(False, SW_DIR, f"no dataset packaged (no {MODELS_DIR}/<DATASET>/ and no <DATASET>-0X.sh)")
    single = len(names) == 1
    for dataset in names:
        _check_model(report, sw / MODELS_DIR / dataset, dataset)
        for sequence in SEQUENCES:
            _check_launcher(report, sw / launcher_name(dataset, sequence), dataset)
            inputs = _find_input(root, dataset, sequence, None if data_dir is None else Path(data_dir), single)
            _check_result(report, root / dataset / f"{sequence}_RES", inputs, dataset)
    return report


def _check_model(report: CheckReport, model: Path, dataset: str) -> None:
    from rshn_tf.model_folder import ModelFolder

    try:
        ModelFolder(model).read_config()
    except RshnError as exc:
        report.add(False, dataset, f"model: {exc}")
        return
    weights = sorted(p.name for p in model.glob("*.weights.h5"))
    report.add(bool(weights), dataset, f"model {MODELS_DIR}/{dataset}: config.yaml and "
                                       f"{', '.join(weights) if weights else 'NO weights file (*.weights.h5)'}")


def _check_launcher(report: CheckReport, script: Path, dataset: str) -> None:
    if not script.is_file():
        report.add(False, dataset, f"launcher {script.name} missing")
        return
    with open(script, "rb") as handle:
        shebang = handle.read(2) == b"#!"
    executable = os.access(script, os.X_OK)
    problems = [text for ok, text in ((executable, "not executable (chmod +x)"), (shebang, "no #! line")) if not ok]
    report.add(not problems, dataset, f"launcher {script.name} " + ("; ".join(problems) or "executable"))


def _find_input(root: Path, dataset: str, sequence: str, data: Optional[Path], single: bool) -> Optional[Path]:
    candidates = [root / dataset / sequence]
    if data is not None:
        candidates.append(data / dataset / sequence)
        if single or data.name == dataset:
            candidates.append(data / sequence)
    return next((c for c in candidates if c.is_dir()), None)


def _check_result(report: CheckReport, res: Path, inputs: Optional[Path], dataset: str) -> None:
    from data_io.ctc import read_track_file
    from rshn_tf.evaluation import validate_result

    name = res.name
    if not res.is_dir():
        report.add(False, dataset, f"{name} missing (run {launcher_name(dataset, name[:2])})")
        return
    if inputs is None:
        report.add(False, dataset, f"{name}: input frames {dataset}/{name[:2]} not found, frame count not compared "
                                   "(pass --data with the challenge data)")
    else:
        _check_frame_numbers(report, res, inputs, dataset)
    try:
        read_track_file(res / "res_track.txt")  # names the bad line, where py-ctcmetrics fails obscurely
        validate_result(res)
        report.add(True, dataset, f"{name} valid (py-ctcmetrics)")
    except RshnError as exc:
        report.add(False, dataset, f"{name}: {str(exc).replace(f'{res}{os.sep}', '').removeprefix(f'{res}: ')}")


def _check_frame_numbers(report: CheckReport, res: Path, inputs: Path, dataset: str) -> None:
    """One ``maskNNN.tif`` per input frame ``tNNN.tif``, with the same numbers."""
    name = res.name
    frames, masks = numbered_files(inputs, RAW_PATTERN), numbered_files(res, MASK_PATTERN)
    expected = {f"mask{number}.tif" for number in frames}
    found = {f"mask{number}.tif" for number in masks}
    missing, extra = sorted(expected - found), sorted(found - expected)
    if not frames:
        report.add(False, dataset, f"{name}: the input folder {inputs} holds no t*.tif frames")
    elif missing or extra:
        text = f"{name}: {len(masks)} masks for {len(frames)} input frames"
        text += f"; missing {_listed(missing)}" if missing else ""
        text += f"; unexpected {_listed(extra)}" if extra else ""
        report.add(False, dataset, text)
    else:
        report.add(True, dataset, f"{name}: one mask per input frame ({len(frames)})")


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")
