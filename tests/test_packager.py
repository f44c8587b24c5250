"""Tests of the CTC submission packager and checker (ctc_submission.packager, ctc_submission.check, rshn package).

The layout, several-dataset and error tests use a hand-made model folder (a real config, placeholder weights): the
packager only copies weights. The launchers run in a fresh ``bash`` with a clean environment, as the organisers run
them; their virtual environment is created with ``RSHN_SW_SYSTEM_SITE_PACKAGES=1`` so that the packages of the
test environment satisfy the pinned requirements without downloads (the bundled code is still pip-installed into
``SW/.venv``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from ctc_submission.check import check_submission, packaged_datasets
from ctc_submission.packager import package_submission
from ctc_submission.sw_files import SEQUENCES
from ctc_submission.writer import write_ctc_result
from data_io.ctc import write_tiff
from data_io.synthetic import SyntheticParams, generate_sequence
from rshn_tf.cli import main
from rshn_tf.config import load_config
from rshn_tf.errors import RshnError
from rshn_tf.model_folder import ModelFolder

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET = "Fluo-N2DH-SIM+"
OTHER = "DIC-C2DH-HeLa"
SMALL = ["data.tile_size=[64, 64]", "data.sequence_length=3", "data.border_band=0", "model.levels=3",
         "model.filters=8", "model.embedding_size=8", "loss.max_instances=4", "inference.tile_overlap=16",
         "postprocessing.min_size=20"]


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def fake_model(folder: Path, dataset: str = "custom", *overrides: str) -> Path:
    """A model folder as ``rshn train`` leaves it, with placeholder weights, checkpoints and logs."""
    config = load_config(None, [*SMALL, *overrides])
    config.data.dataset = dataset
    config.data.dataset_dir = str(folder.parent / "training-data")  # an absolute path that must not be shipped
    model = ModelFolder(folder)
    model.write_config(config)
    (folder / "weights.best.weights.h5").write_bytes(b"best weights of " + folder.name.encode())
    (folder / "weights.last.weights.h5").write_bytes(b"last weights of " + folder.name.encode())
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "ckpt-4.index").write_bytes(b"checkpoint")
    (folder / "logs").mkdir()
    (folder / "logs" / "losses.csv").write_text("step,total\n1,0.5\n")
    model.write_state({"step": 40, "iterations": 40, "best_step": 35, "finished": True})
    return folder


def challenge_sequence(dataset_dir: Path, sequence: str, frames: int = 6, seed: int = 0):
    """Write ``dataset_dir/sequence/tNNN.tif`` (challenge input, no ground truth); return the synthetic video."""
    video = generate_sequence(SyntheticParams(frames=frames, size=(96, 96)), seed=seed)
    (dataset_dir / sequence).mkdir(parents=True)
    for t, frame in enumerate(video.frames):
        write_tiff(dataset_dir / sequence / f"t{t:03d}.tif", frame)
    return video


def finished_submission(tmp_path: Path, datasets=(DATASET,)) -> Path:
    """A packaged submission with inputs in the challenge layout and valid hand-made results (the ground truth)."""
    out = tmp_path / "submission"
    for k, dataset in enumerate(datasets):
        package_submission(fake_model(tmp_path / f"model{k}"), dataset, out)
        for s, sequence in enumerate(SEQUENCES):
            video = challenge_sequence(out / dataset, sequence, frames=5 + s, seed=10 * k + s)
            write_ctc_result(out / dataset / f"{sequence}_RES", video.labels, video.tracks)
    return out


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def local_paths(tmp_path: Path) -> list[bytes]:
    """Absolute paths of this machine that must not appear in a submission."""
    needles = {"/work/", "/tmp/", "/root", "/home/", str(tmp_path), str(REPO_ROOT), sys.prefix, sys.base_prefix,
               str(Path.home())}
    return sorted({n.encode() for n in needles if len(n) > 1})


def assert_no_local_paths_or_data(folder: Path, tmp_path: Path) -> None:
    needles = local_paths(tmp_path)
    for path in all_files(folder):
        assert not path.is_symlink(), f"{path} is a symbolic link"
        content = path.read_bytes()
        found = [n.decode() for n in needles if n in content]
        assert not found, f"{path.relative_to(folder)} contains the absolute path(s) {found}"
        name = path.name
        is_input = name.startswith("t") and name.endswith(".tif")
        assert not is_input and not name.startswith("man_"), f"{path} looks like input or training data"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh login shell: only PATH (with this Python first) and HOME."""
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    return {"PATH": path, "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8", **extra}


def run_launcher(sw: Path, script: str, **extra: str) -> subprocess.CompletedProcess:
    """``bash <script>`` from inside ``sw`` in a clean environment, as the organisers run it."""
    return subprocess.run(["bash", script], cwd=sw, env=clean_env(**extra), capture_output=True, text=True,
                          timeout=900, check=False)


# ---------------------------------------------------------------------------------------------------------------
# Packaging


def test_package_writes_a_self_contained_sw_folder(tmp_path):
    model = fake_model(tmp_path / "model")
    out = tmp_path / "submission"
    assert main(["package", "--model", str(model), "--dataset", DATASET, "--out", str(out)]) == 0
    sw = out / "SW"
    assert sorted(p.name for p in out.iterdir()) == ["SW"]  # no hidden temporary folders left behind
    expected = {f"{DATASET}-01.sh", f"{DATASET}-02.sh", "rshn_sw.sh", "README.md", "requirements.txt", "models",
                "src"}
    assert {p.name for p in sw.iterdir()} == expected
    for name in (f"{DATASET}-01.sh", f"{DATASET}-02.sh", "rshn_sw.sh"):
        script = sw / name
        assert script.stat().st_mode & stat.S_IXUSR and script.read_text().startswith("#!/usr/bin/env bash\n")
    launcher = (sw / f"{DATASET}-02.sh").read_text()
    assert "set -euo pipefail" in launcher and 'cd "$(dirname "$0")"' in launcher
    assert (f'-m rshn_tf.cli predict --model "models/{DATASET}" --input "../{DATASET}/02" '
            f'--output "../{DATASET}/02_RES" \\\n    --weights best\n') in launcher

    # the model: resolved config (named dataset, no training-data path) and the chosen weights only
    bundled = sw / "models" / DATASET
    assert sorted(p.name for p in bundled.iterdir()) == ["config.yaml", "model_info.json", "weights.best.weights.h5"]
    assert (bundled / "weights.best.weights.h5").read_bytes() == b"best weights of model"
    config = ModelFolder(bundled).read_config()
    assert config.data.dataset == DATASET and config.data.dataset_dir is None
    assert config.model.filters == 8 and config.postprocessing.min_size == 20
    info = json.loads((bundled / "model_info.json").read_text())
    assert info["weights"] == "best" and info["training"]["best_step"] == 35

    # requirements pinned to the versions installed here (independently read from the setup.cfg and metadata)
    pins = [line for line in (sw / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    for name in ("numpy", "scipy", "SimpleITK", "tifffile", "pyyaml", "py-ctcmetrics", "scikit-learn"):
        assert f"{name}=={metadata.version(name)}" in pins
    assert any(p.startswith(("tensorflow==", "tensorflow-cpu==")) for p in pins)
    assert all("==" in p for p in pins) and not any(p.startswith("pytest") for p in pins)
    # optional packages only where a model needs them: mean shift needs neither hdbscan nor matplotlib
    assert not any(p.startswith(("hdbscan==", "matplotlib==")) for p in pins)

    # the code: the three packages (no byte code) and the presets, installable by pip from pyproject.toml
    src = sw / "src"
    for package in ("rshn_tf", "data_io", "ctc_submission"):
        copied = sorted(p.name for p in (src / package).glob("*.py"))
        assert copied == sorted(p.name for p in (REPO_ROOT / package).glob("*.py"))
    assert not list(src.rglob("__pycache__"))
    assert sorted(p.name for p in (src / "rshn_tf" / "presets").glob("*.yaml")) == \
        sorted(p.name for p in (REPO_ROOT / "experiments").glob("*.yaml"))
    pyproject = (src / "pyproject.toml").read_text()
    assert 'packages = ["rshn_tf", "data_io", "ctc_submission", "rshn_tf.presets"]' in pyproject

    readme = (sw / "README.md").read_text()
    for text in ("## How to run", f"bash {DATASET}-01.sh", "## Hardware and time per frame",
                 "estimated (not measured)", "RSHN_SW_SYSTEM_SITE_PACKAGES", "--wheels", "Medical Image Analysis 57",
                 "Cell Tracking Challenge", "| clustering | mean_shift, h = 0.1, c = 0.005, t_size = 20 |"):
        assert text in readme, text
    assert_no_local_paths_or_data(out, tmp_path)


def test_several_datasets_share_one_submission_folder(tmp_path):
    out = tmp_path / "submission"
    first = package_submission(fake_model(tmp_path / "m1"), DATASET, out)
    package_submission(fake_model(tmp_path / "m2", OTHER), OTHER, out)
    sw = first.sw_dir
    assert packaged_datasets(sw) == [OTHER, DATASET]
    other_weights = (sw / "models" / OTHER / "weights.best.weights.h5").read_bytes()

    # re-packaging one dataset replaces its model and keeps the other one untouched
    result = package_submission(fake_model(tmp_path / "m3"), DATASET, out, weights="last",
                                overrides=["postprocessing.bandwidth=0.2"])
    assert result.datasets == [OTHER, DATASET]
    assert sorted(p.name for p in (sw / "models" / DATASET).iterdir()) == [
        "config.yaml", "model_info.json", "weights.last.weights.h5"]
    assert (sw / "models" / DATASET / "weights.last.weights.h5").read_bytes() == b"last weights of m3"
    assert (sw / f"{DATASET}-01.sh").read_text().endswith("--weights last\n")
    assert (sw / f"{OTHER}-01.sh").read_text().endswith("--weights best\n")
    assert ModelFolder(sw / "models" / DATASET).read_config().postprocessing.bandwidth == 0.2
    assert (sw / "models" / OTHER / "weights.best.weights.h5").read_bytes() == other_weights
    assert ModelFolder(sw / "models" / OTHER).read_config().data.dataset == OTHER
    scripts = sorted(p.name for p in sw.glob("*-0?.sh"))
    assert scripts == [f"{OTHER}-01.sh", f"{OTHER}-02.sh", f"{DATASET}-01.sh", f"{DATASET}-02.sh"]
    readme = (sw / "README.md").read_text()
    assert f"### {OTHER}" in readme and f"### {DATASET}" in readme and "the `last` weights" in readme
    assert sorted(p.name for p in out.iterdir()) == ["SW"]


def test_hdbscan_is_a_requirement_while_a_packaged_model_clusters_with_it(tmp_path, monkeypatch):
    def pins(sw: Path) -> list[str]:
        return [line for line in (sw / "requirements.txt").read_text().splitlines() if not line.startswith("#")]

    hdbscan_pin = f"hdbscan=={metadata.version('hdbscan')}"
    out = tmp_path / "submission"
    sw = package_submission(fake_model(tmp_path / "m1", DATASET, "postprocessing.clustering=hdbscan"), DATASET,
                            out).sw_dir
    assert hdbscan_pin in pins(sw)
    assert '"hdbscan>=' in (sw / "src" / "pyproject.toml").read_text()
    # another dataset (mean shift) joins: the first one still needs hdbscan
    package_submission(fake_model(tmp_path / "m2", OTHER), OTHER, out)
    assert hdbscan_pin in pins(sw)
    # the first one re-packaged with mean shift: nothing needs it any more
    package_submission(fake_model(tmp_path / "m3", DATASET), DATASET, out)
    assert not any(p.startswith("hdbscan==") for p in pins(sw))
    assert "hdbscan" not in (sw / "src" / "pyproject.toml").read_text()
    # packaging from an environment without it says what to install
    from ctc_submission import packager

    installed = packager._installed_version
    monkeypatch.setattr(packager, "_installed_version", lambda name: None if name == "hdbscan" else installed(name))
    with pytest.raises(RshnError, match=r"requirements of rshn-tf not installed in this environment: hdbscan"):
        package_submission(fake_model(tmp_path / "m4", DATASET, "postprocessing.clustering=hdbscan"), DATASET, out)
    assert not any(p.startswith("hdbscan==") for p in pins(sw))  # the submission is unchanged


def test_package_refuses_bad_input_with_clear_errors(tmp_path, capsys):
    model = fake_model(tmp_path / "model", OTHER)
    out = tmp_path / "submission"
    with pytest.raises(RshnError, match=r"dataset name 'DIC/HeLa'"):
        package_submission(model, "DIC/HeLa", out)
    with pytest.raises(RshnError, match=rf"trained for dataset '{OTHER}' .*--set data.dataset={DATASET}"):
        package_submission(model, DATASET, out)
    package_submission(model, DATASET, out, overrides=[f"data.dataset={DATASET}"])  # confirmed explicitly
    (model / "weights.best.weights.h5").unlink()
    with pytest.raises(RshnError, match=r"weights.best.weights.h5: missing .*choose --weights last"):
        package_submission(model, OTHER, out, weights="best")
    with pytest.raises(RshnError, match="model folder .* does not exist"):
        package_submission(tmp_path / "nothing", OTHER, out)
    foreign = tmp_path / "foreign"
    (foreign / "SW").mkdir(parents=True)
    (foreign / "SW" / "notes.txt").write_text("mine")
    with pytest.raises(RshnError, match="was not written by 'rshn package'"):
        package_submission(model, OTHER, foreign, weights="last")
    assert (foreign / "SW" / "notes.txt").read_text() == "mine"
    data = tmp_path / "data"
    challenge_sequence(data, "01")
    with pytest.raises(RshnError, match="no challenge sequence folder 02"):
        package_submission(model, OTHER, out, weights="last", data_dir=data)
    (data / "02").mkdir()
    with pytest.raises(RshnError, match=r"02: holds no t\*\.tif frames"):
        package_submission(model, OTHER, out, weights="last", data_dir=data)
    # the command line: missing arguments and mixed modes
    assert main(["package", "--model", str(model)]) == 2
    assert "package needs --dataset, --out" in capsys.readouterr().err
    assert main(["package", "--check", str(out), "--model", str(model)]) == 2
    assert "it takes only --data, not --model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Launchers


def test_launcher_fails_clearly_when_the_input_is_missing_or_empty(tmp_path):
    out = tmp_path / "submission"
    sw = package_submission(fake_model(tmp_path / "model"), DATASET, out).sw_dir
    result = run_launcher(sw, f"{DATASET}-01.sh")
    assert result.returncode == 1
    assert f"error: input folder ../{DATASET}/01 not found" in result.stderr
    (out / DATASET / "01").mkdir(parents=True)
    (out / DATASET / "01" / "notes.txt").write_text("no frames")
    # run from another directory: the launcher changes into SW/ itself
    result = subprocess.run(["bash", str(sw / f"{DATASET}-01.sh")], cwd=tmp_path, env=clean_env(),
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert f"error: input folder ../{DATASET}/01 holds no t*.tif frames" in result.stderr
    assert not (sw / ".venv").exists() and not (out / DATASET / "01_RES").exists()


@pytest.mark.slow
def test_failing_launcher_leaves_no_inputs_or_environment_in_the_submission(tmp_path, monkeypatch):
    """``--data`` with a model whose weights are not a weights file: the launcher fails, the packager says so and
    removes the input links and SW/.venv it created."""
    monkeypatch.setenv("RSHN_SW_SYSTEM_SITE_PACKAGES", "1")
    monkeypatch.setenv("RSHN_SW_PYTHON", sys.executable)
    data = tmp_path / "challenge" / DATASET
    for sequence in SEQUENCES:
        challenge_sequence(data, sequence, frames=4)
    out = tmp_path / "submission"
    with pytest.raises(RshnError, match=re.escape(f"{DATASET}-01.sh: failed with exit status ")):
        package_submission(fake_model(tmp_path / "model"), DATASET, out, data_dir=data.parent)
    assert sorted(p.name for p in (out / "SW").iterdir()) == sorted(
        [f"{DATASET}-01.sh", f"{DATASET}-02.sh", "rshn_sw.sh", "README.md", "requirements.txt", "models", "src"])
    assert list((out / DATASET).iterdir()) == []
    assert sorted(p.name for p in (data / "01").iterdir()) == [f"t00{t}.tif" for t in range(4)]  # inputs untouched


# ---------------------------------------------------------------------------------------------------------------
# Checking


def test_check_accepts_a_complete_submission(tmp_path, capsys):
    out = finished_submission(tmp_path, datasets=(DATASET, OTHER))
    report = check_submission(out)
    assert report.ok, report.format()
    text = report.format()
    assert f"launcher {DATASET}-02.sh executable" in text and "02_RES valid (py-ctcmetrics)" in text
    assert "01_RES: one mask per input frame (5)" in text and "02_RES: one mask per input frame (6)" in text
    assert text.endswith("result: OK, ready to submit")
    assert main(["package", "--check", str(out)]) == 0
    assert "result: OK" in capsys.readouterr().out


def test_check_finds_a_deleted_mask(tmp_path, capsys):
    out = finished_submission(tmp_path)
    (out / DATASET / "02_RES" / "mask005.tif").unlink()  # the last frame: the tracks still validate
    report = check_submission(out)
    assert report.problems == [f"{DATASET}: 02_RES: 5 masks for 6 input frames; missing mask005.tif"]
    assert main(["package", "--check", str(out)]) == 1
    assert "FAIL  02_RES: 5 masks for 6 input frames" in capsys.readouterr().out


def test_check_finds_a_missing_or_unusable_script(tmp_path):
    out = finished_submission(tmp_path)
    (out / "SW" / f"{DATASET}-01.sh").unlink()
    (out / "SW" / f"{DATASET}-02.sh").chmod(0o644)
    assert check_submission(out).problems == [f"{DATASET}: launcher {DATASET}-01.sh missing",
                                              f"{DATASET}: launcher {DATASET}-02.sh not executable (chmod +x)"]


def test_check_finds_a_malformed_track_file(tmp_path):
    out = finished_submission(tmp_path)
    track_file = out / DATASET / "01_RES" / "res_track.txt"
    lines = track_file.read_text().splitlines()
    track_file.write_text("\n".join(lines[:-1] + [lines[-1] + " 7"]) + "\n")  # five numbers on the last line
    assert check_submission(out).problems == [
        f"{DATASET}: 01_RES: res_track.txt, line {len(lines)}: expected 4 integers 'L B E P', got '{lines[-1]} 7'"]
    # a well-formed file that contradicts the masks: py-ctcmetrics' validation rejects it
    label, begin, end, parent = lines[0].split()
    track_file.write_text("\n".join([f"{label} {begin} {int(end) - 1} {parent}"] + lines[1:]) + "\n")
    problems = check_submission(out).problems
    assert len(problems) == 1 and problems[0].startswith(f"{DATASET}: 01_RES: not a valid CTC result: ")
    assert f"mask{int(end):03d}.tif" in problems[0]


def test_check_compares_with_inputs_given_by_data(tmp_path):
    out = finished_submission(tmp_path)
    data = tmp_path / "challenge"
    (data / DATASET).mkdir(parents=True)
    for sequence in SEQUENCES:  # the inputs live elsewhere, the results in the submission
        shutil.move(out / DATASET / sequence, data / DATASET / sequence)
    without = check_submission(out).problems
    assert without == [f"{DATASET}: {s}_RES: input frames {DATASET}/{s} not found, frame count not compared (pass "
                       "--data with the challenge data)" for s in SEQUENCES]
    assert check_submission(out, data_dir=data).ok
    assert check_submission(out, data_dir=data / DATASET).ok
    shutil.rmtree(out / DATASET / "02_RES")
    assert check_submission(out, data_dir=data).problems == [f"{DATASET}: 02_RES missing (run {DATASET}-02.sh)"]


# ---------------------------------------------------------------------------------------------------------------
# End to end: a tiny trained model, packaged and run as the organisers run it


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, synthetic_dataset) -> Path:
    """A model folder of a tiny network trained on the synthetic CTC dataset: 40 iterations at a high learning rate
    are enough for it to find cells (an empty result would not exercise the writer and the validation)."""
    from rshn_tf.training import train

    config = load_config(None, [*SMALL, 'data.train_sequences=["01"]', "data.num_workers=1",
                                "training.iterations=40", "training.learning_rate=0.001",
                                "training.learning_rate_final=0.001", "training.checkpoint_every=20",
                                "training.log_every=10", "training.image_every=0"])
    config.data.dataset_dir = str(synthetic_dataset)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    train(config, folder, progress=False)
    return folder


def challenge_data(root: Path, frames: int = 8) -> list:
    """``root/<DATASET>/01`` and ``02`` with raw frames only, as the challenge distributes its test data."""
    return [challenge_sequence(root / DATASET, sequence, frames=frames, seed=20 + s)
            for s, sequence in enumerate(SEQUENCES)]


@pytest.mark.slow
def test_organisers_run_the_packaged_launchers(tmp_path, tiny_model):
    from rshn_tf.evaluation import validate_result

    out = tmp_path / "submission"
    package_submission(tiny_model, DATASET, out)
    sw = out / "SW"
    assert_no_local_paths_or_data(out, tmp_path)
    challenge_data(out)
    runs = [run_launcher(sw, f"{DATASET}-{sequence}.sh", RSHN_SW_SYSTEM_SITE_PACKAGES="1") for sequence in SEQUENCES]
    for result in runs:
        assert result.returncode == 0, result.stderr[-3000:]
    creating = "creating the Python environment .venv (system-site-packages)"
    assert creating in runs[0].stderr and creating not in runs[1].stderr  # the second launcher reuses it
    for sequence in SEQUENCES:
        res = out / DATASET / f"{sequence}_RES"
        validate_result(res)  # py-ctcmetrics
        assert sorted(p.name for p in res.glob("mask*.tif")) == [f"mask{t:03d}.tif" for t in range(8)]
        assert (res / "res_track.txt").read_text().strip(), "the tiny model found no cell"
    report = check_submission(out)
    assert report.ok, report.format()

    # the launchers ran the bundled code installed (non-editable) into SW/.venv, not this checkout ...
    venv_python = sw / ".venv" / "bin" / "python"
    where = subprocess.run([str(venv_python), "-c", "import rshn_tf; print(rshn_tf.__file__)"], cwd=tmp_path,
                           env=clean_env(), capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(sw / ".venv")
    # ... and that installation packages the same submission again
    again = subprocess.run([str(venv_python), "-m", "rshn_tf.cli", "package", "--model", f"models/{DATASET}",
                            "--dataset", DATASET, "--out", "../../again"], cwd=sw, env=clean_env(),
                           capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    copy = tmp_path / "again" / "SW"
    assert sorted(p.relative_to(copy) for p in all_files(copy)) == sorted(
        p.relative_to(sw) for p in all_files(sw) if not p.relative_to(sw).parts[0].startswith(".venv"))
    for path in all_files(copy):
        assert path.read_bytes() == (sw / path.relative_to(copy)).read_bytes(), path


@pytest.mark.slow
def test_package_with_data_runs_the_launchers_and_checks_the_results(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("RSHN_SW_SYSTEM_SITE_PACKAGES", "1")
    monkeypatch.setenv("RSHN_SW_PYTHON", sys.executable)
    videos = challenge_data(tmp_path / "challenge", frames=6)
    out = tmp_path / "submission"
    assert main(["package", "--model", str(tiny_model), "--dataset", DATASET, "--out", str(out),
                 "--data", str(tmp_path / "challenge")]) == 0
    assert sorted(p.name for p in out.iterdir()) == [DATASET, "SW"]
    assert sorted(p.name for p in (out / DATASET).iterdir()) == ["01_RES", "02_RES"]  # results, no inputs
    assert not (out / "SW" / ".venv").exists() and not (out / "SW" / ".venv.lock").exists()
    for sequence, video in zip(SEQUENCES, videos):
        assert len(list((out / DATASET / f"{sequence}_RES").glob("mask*.tif"))) == len(video.frames)
    assert check_submission(out, data_dir=tmp_path / "challenge").ok
    readme = (out / "SW" / "README.md").read_text()
    assert f"- {DATASET}: measured: " in readme and "01: 6 frames in" in readme
    timing = json.loads((out / "SW" / "models" / DATASET / "model_info.json").read_text())["timing"]
    assert sorted(timing["sequences"]) == list(SEQUENCES) and timing["seconds_per_frame"] > 0
    assert_no_local_paths_or_data(out, tmp_path)
