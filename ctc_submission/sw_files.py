"""Text of the files in a submission's ``SW/`` folder: the environment script, the launchers, the bundled code's
``pyproject.toml``, ``requirements.txt`` and ``README.md``.

Everything here is a pure function of its arguments (no file access), so the packager decides what goes where and
the tests can read the exact text. No text may contain an absolute path: the organisers of the Cell Tracking
Challenge run the scripts on their own machines from inside ``SW/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Sequence

#: The two challenge (test) sequences of every CTC dataset; one launcher each.
SEQUENCES = ("01", "02")
#: The software folder of a submission.
SW_DIR = "SW"
#: Shared helper sourced by every launcher (and runnable as ``bash rshn_sw.sh setup``).
ENV_SCRIPT = "rshn_sw.sh"
#: Virtual environment the launchers create beside the scripts on the first run.
VENV_DIR = ".venv"
#: Lock file that serialises the creation of the virtual environment when launchers run in parallel.
VENV_LOCK = ".venv.lock"
#: Optional folder of wheels for a fully offline installation (``rshn package --wheels``).
WHEELS_DIR = "wheels"
#: The bundled source tree of rshn-tf.
SRC_DIR = "src"
#: One folder per dataset with ``config.yaml`` and the chosen weights.
MODELS_DIR = "models"
REQUIREMENTS_FILE = "requirements.txt"
README_FILE = "README.md"
#: Environment variable: create the virtual environment with ``--system-site-packages``.
SYSTEM_SITE_VARIABLE = "RSHN_SW_SYSTEM_SITE_PACKAGES"
#: Environment variable: the interpreter that creates the virtual environment (default ``python3``).
PYTHON_VARIABLE = "RSHN_SW_PYTHON"

PAPER_CITATION = (
    "C. Payer, D. Štern, M. Feiner, H. Bischof, M. Urschler. Segmenting and tracking cell instances with cosine "
    "embeddings and recurrent hourglass networks. Medical Image Analysis 57:106–119, 2019. "
    "https://doi.org/10.1016/j.media.2019.06.015"
)
CTC_CITATIONS = (
    "M. Maška et al. A benchmark for comparison of cell tracking algorithms. Bioinformatics 30(11):1609–1617, 2014.",
    "V. Ulman et al. An objective comparison of cell-tracking algorithms. Nature Methods 14:1141–1152, 2017.",
    "M. Maška et al. The Cell Tracking Challenge: 10 years of objective benchmarking. Nature Methods "
    "20:1010–1020, 2023.",
)


def launcher_name(dataset: str, sequence: str) -> str:
    """File name of the launcher of one dataset and sequence, as the CTC expects: ``<DATASET>-<SEQ>.sh``."""
    return f"{dataset}-{sequence}.sh"


def env_script() -> str:
    """The shared shell helper: input check and creation (or reuse) of the virtual environment."""
    return f'''#!/usr/bin/env bash
# rshn-tf Cell Tracking Challenge submission: environment helper, sourced by every <DATASET>-0X.sh launcher.
#
#   bash {ENV_SCRIPT} setup      only create (or check) the virtual environment {VENV_DIR}, e.g. once before timing runs
#
# The first run creates {VENV_DIR} here with "python3 -m venv", installs {REQUIREMENTS_FILE} (pinned) and the bundled
# code from {SRC_DIR}/ into it; later runs reuse it. Prediction itself needs no network. Environment variables:
#   {PYTHON_VARIABLE}=python3.11       interpreter that creates {VENV_DIR} (default: python3)
#   {SYSTEM_SITE_VARIABLE}=1    create {VENV_DIR} with --system-site-packages: requirements already installed for
#                                    that interpreter (or its own virtual environment) satisfy pip without downloads;
#                                    the bundled code is still installed into {VENV_DIR} (needs setuptools and wheel there)
# When the folder {WHEELS_DIR}/ exists (rshn package --wheels), everything is installed from it without a package index.

unset PYTHONPATH PYTHONHOME
export PYTHONNOUSERSITE=1
export TF_CPP_MIN_LOG_LEVEL="${{TF_CPP_MIN_LOG_LEVEL:-2}}"

rshn_sw_fail() {{
    echo "rshn-tf submission: error: $*" >&2
    exit 1
}}

# rshn_sw_check_input ../DATASET/0X: the challenge sequence must exist and hold t*.tif frames.
rshn_sw_check_input() {{
    [ -d "$1" ] || rshn_sw_fail "input folder $1 not found (relative to SW/: the CTC layout puts the sequence at ../<DATASET>/0X)"
    compgen -G "$1/t*.tif" > /dev/null || rshn_sw_fail "input folder $1 holds no t*.tif frames"
}}

# The venv is (re)created when its stamp (mode, Python, requirements, bundled package) differs from the current one.
rshn_sw_stamp() {{
    local mode="$1" python="$2"
    echo "mode: $mode"
    "$python" -c 'import sys; print("python:", sys.version.split()[0])'
    cat {REQUIREMENTS_FILE} {SRC_DIR}/pyproject.toml
}}

rshn_sw_setup() {{
    local python="${{{PYTHON_VARIABLE}:-python3}}" mode=index venv_args=() pip_args=(--disable-pip-version-check --no-input --quiet)
    local build_args=() site work
    command -v "$python" > /dev/null 2>&1 || rshn_sw_fail "Python interpreter '$python' not found; install Python >= 3.10 or set {PYTHON_VARIABLE}"
    if [ "${{{SYSTEM_SITE_VARIABLE}:-0}}" = 1 ]; then
        mode=system-site-packages
        venv_args+=(--system-site-packages)
        build_args+=(--no-build-isolation)
    fi
    if [ -d {WHEELS_DIR} ]; then
        mode="$mode+wheels"
        pip_args+=(--no-index --find-links {WHEELS_DIR})
    fi
    exec 9> {VENV_LOCK}
    if command -v flock > /dev/null 2>&1; then flock 9; fi
    rshn_sw_stamp "$mode" "$python" > {VENV_LOCK}.stamp
    if [ -f {VENV_DIR}/rshn-sw.stamp ] && cmp -s {VENV_LOCK}.stamp {VENV_DIR}/rshn-sw.stamp; then
        rm -f {VENV_LOCK}.stamp
        exec 9>&-
        return 0
    fi
    echo "rshn-tf submission: creating the Python environment {VENV_DIR} ($mode); this happens once" >&2
    "$python" -m venv --clear ${{venv_args[@]+"${{venv_args[@]}}"}} {VENV_DIR} || rshn_sw_fail "could not create {VENV_DIR} with $python -m venv"
    if [ "$mode" != "${{mode#system-site-packages}}" ]; then
        # if $python itself runs in a virtual environment, its packages count as the "system" ones too
        site="$({VENV_DIR}/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
        "$python" -c 'import sys, sysconfig
if sys.prefix != sys.base_prefix:
    print(sysconfig.get_path("purelib")); print(sysconfig.get_path("platlib"))' > "$site/rshn_sw_parent_site.pth"
    fi
    {VENV_DIR}/bin/python -m pip install "${{pip_args[@]}}" -r {REQUIREMENTS_FILE} || rshn_sw_fail "installing {REQUIREMENTS_FILE} into {VENV_DIR} failed (see pip's message above)"
    # build from a copy so that SW/ stays unchanged (and may be read-only)
    work="$(mktemp -d)"
    cp -R {SRC_DIR} "$work/src"
    if ! {VENV_DIR}/bin/python -m pip install "${{pip_args[@]}}" ${{build_args[@]+"${{build_args[@]}}"}} --no-deps "$work/src"; then
        rm -rf "$work"
        rshn_sw_fail "installing the bundled code from {SRC_DIR}/ into {VENV_DIR} failed (see pip's message above)"
    fi
    rm -rf "$work"
    mv {VENV_LOCK}.stamp {VENV_DIR}/rshn-sw.stamp
    exec 9>&-
}}

if [ "${{BASH_SOURCE[0]}}" = "$0" ]; then
    set -euo pipefail
    cd "$(dirname "$0")"
    case "${{1:-}}" in
        setup) rshn_sw_setup ;;
        *) echo "usage: bash {ENV_SCRIPT} setup" >&2; exit 2 ;;
    esac
fi
'''


def launcher_script(dataset: str, sequence: str, weights: str = "best") -> str:
    """The CTC launcher of one dataset and sequence (run with ``bash`` from anywhere; uses relative paths only);
    ``weights`` names the bundled weights (``best`` or ``last``)."""
    data = f"../{dataset}/{sequence}"
    return f'''#!/usr/bin/env bash
# rshn-tf submission to the Cell Tracking Challenge: dataset {dataset}, sequence {sequence}.
# Reads {data}/t*.tif and writes {data}_RES (paths relative to this SW/ folder). See README.md.
set -euo pipefail
cd "$(dirname "$0")"
source ./{ENV_SCRIPT}
rshn_sw_check_input "{data}"
rshn_sw_setup
{VENV_DIR}/bin/python -m rshn_tf.cli predict --model "{MODELS_DIR}/{dataset}" --input "{data}" --output "{data}_RES" \\
    --weights {weights}
'''


def pyproject(version: str, packages: Sequence[str], package_data: dict[str, list[str]],
              dependencies: Sequence[str]) -> str:
    """``src/pyproject.toml``: the bundled code as an installable project declaring rshn-tf's requirement lines
    (the launchers install it with ``--no-deps`` after the pinned ``../requirements.txt``)."""
    lines = [
        "[build-system]",
        'requires = ["setuptools>=61", "wheel"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        'name = "rshn-tf"',
        f'version = "{version}"',
        'description = "Cell segmentation and tracking with cosine embeddings and recurrent stacked hourglass '
        'networks (Payer et al., MedIA 2019), bundled for a Cell Tracking Challenge submission"',
        'requires-python = ">=3.10"',
        "# Pinned versions of these are in ../requirements.txt; the launchers install them before this package.",
        "dependencies = [",
        *[f"    {json.dumps(line)}," for line in dependencies],
        "]",
        "",
        "[project.scripts]",
        'rshn = "rshn_tf.cli:main"',
        "",
        "[tool.setuptools]",
        "packages = [" + ", ".join(f'"{p}"' for p in packages) + "]",
        "",
        "[tool.setuptools.package-data]",
    ]
    lines += [f'"{package}" = [' + ", ".join(f'"{g}"' for g in globs) + "]" for package, globs in package_data.items()]
    return "\n".join(lines) + "\n"


def requirements(pins: Sequence[str], version: str, python: str, platform: str) -> str:
    """``requirements.txt``: one ``name==version`` line per runtime dependency of rshn-tf."""
    header = (f"# Runtime requirements of rshn-tf {version}, pinned to the environment that packaged this submission\n"
              f"# (Python {python}, {platform}). The launchers install them into {VENV_DIR}.\n")
    return header + "".join(f"{pin}\n" for pin in pins)


@dataclass(frozen=True)
class DatasetEntry:
    """What the README says about one packaged dataset.

    Attributes:
        dataset: CTC dataset name.
        weights: Which weights of the model folder were bundled (``best`` or ``last``).
        training: One line about the training run (iterations, best step), or None when unknown.
        parameters: (name, value) rows of the inference parameters of the bundled config.
        timing: One line with the measured time per frame, or None when not measured.
        estimate: One line with an estimate of the time per frame (used when ``timing`` is None).
    """

    dataset: str
    weights: str
    training: Optional[str]
    parameters: tuple[tuple[str, str], ...]
    timing: Optional[str]
    estimate: str


def readme(entries: Sequence[DatasetEntry], version: str, python: str, platform: str, offline: bool) -> str:
    """``SW/README.md``: how to run, hardware, time per frame, parameters and citation."""
    names = ", ".join(e.dataset for e in entries)
    first = entries[0].dataset if entries else "DATASET"
    out = [
        "# rshn-tf: Cell Tracking Challenge submission",
        "",
        "Cell instance segmentation and tracking with cosine embeddings and recurrent stacked hourglass networks "
        f"(RSHN), a TensorFlow 2 / Keras 3 reproduction (rshn-tf {version}) of Payer et al., Medical Image Analysis "
        f"2019. Datasets in this submission: {names}.",
        "",
        "## How to run",
        "",
        "The folder layout is the challenge's: this `SW/` folder sits next to the dataset folders.",
        "",
        "```",
        "SW/",
        "  <DATASET>-01.sh, <DATASET>-02.sh   one launcher per dataset and sequence",
        f"  {ENV_SCRIPT}                         shared helper: input check, Python environment",
        f"  {MODELS_DIR}/<DATASET>/                  config.yaml + trained weights",
        f"  {SRC_DIR}/                               rshn-tf source code (installable)",
        f"  {REQUIREMENTS_FILE}                   pinned Python requirements",
        "<DATASET>/01/t000.tif ...            challenge data (input)",
        "<DATASET>/01_RES/                    written by <DATASET>-01.sh",
        "```",
        "",
        "Run one launcher per sequence with bash, from any directory, e.g.",
        "",
        "```bash",
        f"cd SW && bash {launcher_name(first, '01')} && bash {launcher_name(first, '02')}",
        "```",
        "",
        "Each launcher reads `../<DATASET>/0X/t*.tif` and writes `../<DATASET>/0X_RES` (`maskNNN.tif` + "
        "`res_track.txt`). It stops with a non-zero exit status and a message when the input folder is missing or "
        "holds no `t*.tif` frames.",
        "",
        f"The first run creates a Python virtual environment `SW/{VENV_DIR}` with `python3 -m venv` (Python >= 3.10, "
        f"the one this was packaged with: {python}) and installs `{REQUIREMENTS_FILE}` and the bundled code into it; "
        "later runs reuse it (launchers may run in parallel; the creation is locked). "
        f"`bash {ENV_SCRIPT} setup` creates it without predicting. Prediction needs no network.",
        "",
    ]
    if offline:
        out += [f"All requirements are bundled as wheels in `{WHEELS_DIR}/` (for {platform}, Python {python}), so "
                "the installation needs no network either (`pip --no-index --find-links wheels`).", ""]
    else:
        out += ["Installing the requirements needs a package index (PyPI) the first time. For a fully offline "
                "bundle, package with `rshn package ... --wheels`.", ""]
    out += [
        "Environment variables:",
        "",
        f"- `{PYTHON_VARIABLE}=python3.11`: the interpreter that creates the environment (default `python3`).",
        f"- `{SYSTEM_SITE_VARIABLE}=1`: create the environment with `--system-site-packages`, so that packages "
        "already installed for that interpreter (or in the virtual environment it runs in) satisfy the requirements "
        "without downloads; the bundled code is still installed into the environment.",
        "- `CUDA_VISIBLE_DEVICES`: as usual for TensorFlow. The pinned TensorFlow is the one of the packaging "
        "machine; for a GPU, replace `tensorflow-cpu` by `tensorflow[and-cuda]` of the same version in "
        f"`{REQUIREMENTS_FILE}`.",
        "",
        "## Hardware and time per frame",
        "",
        "Runs on CPU or GPU (TensorFlow 2). Memory: a few GB of RAM for the network and the frames of one sequence.",
        "",
    ]
    for entry in entries:
        line = f"measured: {entry.timing}" if entry.timing else f"estimated (not measured): {entry.estimate}"
        out.append(f"- {entry.dataset}: {line}")
    out += ["", "## Models and parameters", ""]
    for entry in entries:
        out += [f"### {entry.dataset}", "",
                f"`{MODELS_DIR}/{entry.dataset}/`: `config.yaml` (the complete resolved configuration) and the "
                f"`{entry.weights}` weights of the training run" + (f" ({entry.training})." if entry.training else "."),
                "", "| parameter | value |", "|---|---|"]
        out += [f"| {name} | {value} |" for name, value in entry.parameters]
        out.append("")
    out += [
        "## Citation",
        "",
        "If you use this software, cite the paper and the Cell Tracking Challenge:",
        "",
        f"- {PAPER_CITATION}",
    ]
    out += [f"- {c}" for c in CTC_CITATIONS]
    out.append("")
    return "\n".join(out)
