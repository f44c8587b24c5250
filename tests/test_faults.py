"""Faults of the environment and of concurrent or killed runs (issue 18): a catalogue of cases, each answered by one
clear error (exit status 2, or 128 + the signal number), no traceback and nothing half-written or left behind.

Most cases call ``rshn_tf.cli.main`` in this process; lock holders and signalled runs are subprocesses. A read-only
folder is ``chmod 0o555``, except for root, whom the kernel lets write anyway: then ``os.open`` and ``os.mkdir``
refuse paths in that folder with EACCES, as the kernel does for other users. :func:`test_a_chmod_read_only_folder`
checks the real kernel refusal too (as root: in a process without the capability to override permissions). A full
disk is an ``OSError(ENOSPC)`` raised by the write that would fill it.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest

from ctc_submission.writer import write_ctc_result
from data_io.preprocess import network_shape
from data_io.synthetic import write_synthetic_dataset
from rshn_tf.cli import main
from rshn_tf.config import load_config
from rshn_tf.model_folder import ModelFolder
from rshn_tf.output_lock import lock_path
from tests.conftest import REPO_ROOT
from tests.test_output_lock import HOLDER
from tests.test_packager import fake_model

IS_ROOT = os.geteuid() == 0

TRAIN_YAML = """\
data:
  train_sequences: ["01"]
  tile_size: [32, 32]
  sequence_length: 3
  border_band: 0
  num_workers: 1
model: {levels: 2, filters: 4, embedding_size: 4}
loss: {max_instances: 4, neighbour_radius: 20}
inference: {tile_overlap: 16, checkpoint_every: 0}
training: {iterations: 2, checkpoint_every: 1, log_every: 1, image_every: 0, batch_size: 1}
"""


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: data, read-only folders, lock holders


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny synthetic CTC dataset (01, 02 with ground truth; 6 frames of 128x128)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("faults") / "Synthetic", frames=6, size=(128, 128), seed=0)


@pytest.fixture
def world(tmp_path, data):
    """Inputs of every writing verb: a training YAML, a placeholder model folder, saved embeddings, a CTC result
    and a folder of CTC datasets for ``table3``."""
    config_path = tmp_path / "train.yaml"
    config_path.write_text(TRAIN_YAML)
    model = fake_model(tmp_path / "inputs" / "model", "DIC-C2DH-HeLa")
    config = load_config(str(config_path))
    shape = network_shape((128, 128), config.data)
    embeddings = tmp_path / "inputs" / "emb"
    embeddings.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        pair = rng.normal(size=(2, *shape, 4)).astype(np.float32)
        np.save(embeddings / f"pair_{index:03d}.npy", pair / np.linalg.norm(pair, axis=-1, keepdims=True))
    result = write_ctc_result(tmp_path / "inputs" / "RES", np.zeros((6, 128, 128), np.uint16), np.zeros((0, 4)))
    ctc = tmp_path / "inputs" / "ctc"
    ctc.mkdir()
    (ctc / "DIC-C2DH-HeLa").symlink_to(data)
    return {"yaml": str(config_path), "model": str(model), "emb": str(embeddings), "res": str(result),
            "data": str(data), "ctc": str(ctc), "tmp": tmp_path}


@pytest.fixture
def read_only(monkeypatch):
    """Factory: make a (new) folder read-only for this process and return it."""
    blocked: list[str] = []
    chmodded: list[Path] = []

    def refuse(path) -> bool:
        return any(os.path.abspath(os.fspath(path)).startswith(folder + os.sep) for folder in blocked)

    if IS_ROOT:
        real_open, real_mkdir = os.open, os.mkdir

        def fake_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and refuse(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            if refuse(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True)
        if IS_ROOT:
            blocked.append(os.path.abspath(folder))
        else:
            folder.chmod(0o555)
            chmodded.append(folder)
        return folder

    yield make
    for folder in chmodded:
        folder.chmod(0o755)


@pytest.fixture
def hold():
    """Factory: a process that holds the lock of an output until the test ends; returns it."""
    processes = []

    def start(target: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], cwd=REPO_ROOT,
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "locked"
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()


def dead_pid() -> int:
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def listing(folder: Path) -> list[tuple[str, int]]:
    """Every path below ``folder`` with its size (files) or -1 (folders), sorted."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*"))


def assert_one_clear_error(capsys, verb: str, status: int, expected_status: int, *words: str) -> str:
    err = capsys.readouterr().err
    assert status == expected_status, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"rshn {verb}:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def enospc(path: object = None) -> OSError:
    if path is None:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


# ---------------------------------------------------------------------------------------------------------------
# The catalogue of in-process cases


class Case(NamedTuple):
    """One fault: ``setup(world, read_only, hold, monkeypatch)`` prepares it and returns the arguments and the
    folder that must be unchanged (``watch``); the run must exit with ``status`` and name ``words``."""

    verb: str
    setup: Callable[..., tuple[list[str], Path]]
    words: tuple[str, ...]
    status: int = 2


def ro(verb, args_of, name="out"):
    """A read-only output folder for ``verb``: ``args_of(world, output_path)`` gives the arguments."""

    def setup(world, read_only, hold, monkeypatch):
        folder = read_only(world["tmp"] / "ro")
        return args_of(world, folder / name), folder

    return Case(verb, setup, ("cannot write", "not writable", "Permission denied"))


def held(verb, args_of, target_of=lambda world: world["tmp"] / "out"):
    """Another process holds the lock of the output."""

    def setup(world, read_only, hold, monkeypatch):
        target = target_of(world)
        process = hold(target)
        world["holder"] = process.pid
        return args_of(world, target), target.parent

    return Case(verb, setup, ("is writing this output", "kill", "only one rshn process"))


def _train(world, out):
    return ["train", world["yaml"], "--model-dir", str(out), "--data", world["data"]]


def _predict(world, out):
    return ["predict", "--model", world["model"], "--input", f"{world['data']}/01", "--output", str(out)]


def _embed(world, out):
    return _predict(world, world["tmp"] / "01_RES") + ["--save-embeddings", str(out)]


def _postprocess(world, out):
    return ["postprocess", world["emb"], str(out), "--config", world["yaml"], "--original-shape", "128", "128"]


def _export(world, out):
    return ["export", "--model", world["model"], "--out", str(out)]


def _package(world, out):
    return ["package", "--model", world["model"], "--dataset", "DIC-C2DH-HeLa", "--out", str(out)]


def _experiment(world, out):
    return ["experiment", "DIC-C2DH-HeLa", "--data", world["data"], "--out", str(out)]


def _table3(world, out):
    return ["table3", "--data", world["ctc"], "--out", str(out), "--rows", "rshn_h0.1"]


def _overlay(world, out):
    return ["overlay", world["res"], f"{world['data']}/01", "--out", str(out)]


def _show_sample(world, out):
    return ["show-sample", world["yaml"], "--out", str(out), "--data", world["data"]]


def _synth(world, out):
    return ["synth", str(out), "--frames", "3", "--size", "128", "128"]


def _demo(world, out):
    return ["demo", "--out", str(out)]


def _full_disk_at_check(world, read_only, hold, monkeypatch):
    import rshn_tf.os_faults as os_faults

    def full(folder):
        raise enospc()

    monkeypatch.setattr(os_faults, "_probe", full)
    return _predict(world, world["tmp"] / "out"), world["tmp"]


def _full_disk_writing_masks(world, read_only, hold, monkeypatch):
    import ctc_submission.writer as writer

    def write_tiff(path, array):
        Path(path).write_bytes(b"half a mask")
        raise enospc()

    monkeypatch.setattr(writer, "write_tiff", write_tiff)
    return _postprocess(world, world["tmp"] / "out"), world["tmp"]


def _full_disk_exporting(world, read_only, hold, monkeypatch):
    import rshn_tf.model_folder as model_folder

    def copyfile(source, target):
        Path(target).write_bytes(b"half the weights")
        raise enospc(target)

    monkeypatch.setattr(model_folder.shutil, "copyfile", copyfile)
    return _export(world, world["tmp"] / "out"), world["tmp"]


def _full_disk_synthesizing(world, read_only, hold, monkeypatch):
    import data_io.synthetic as synthetic

    calls = []

    def write_tiff(path, array):
        calls.append(path)
        if len(calls) > 2:
            raise enospc(path)
        Path(path).write_bytes(b"frame")

    monkeypatch.setattr(synthetic, "write_tiff", write_tiff)
    return _synth(world, world["tmp"] / "out"), world["tmp"]


def _read_only_file_system(world, read_only, hold, monkeypatch):
    import rshn_tf.os_faults as os_faults

    def read_only_fs(folder):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder / ".probe"))

    monkeypatch.setattr(os_faults, "_probe", read_only_fs)
    return _export(world, world["tmp"] / "out"), world["tmp"]


def _resume_while_alive(world, read_only, hold, monkeypatch):
    model = Path(world["model"])
    process = hold(model)
    world["holder"] = process.pid
    return ["train", world["yaml"], "--model-dir", str(model), "--data", world["data"], "--resume"], model


CASES = {
    # read-only output of every writing verb, found before any computation
    "read-only model folder (train)": Case("train", lambda w, r, h, m: (_train(w, r(w["tmp"] / "ro")),
                                                                         w["tmp"] / "ro"),
                                           ("model folder", "not writable", "Permission denied")),
    "read-only result folder (predict)": ro("predict", _predict),
    "read-only --save-embeddings (predict)": ro("predict", _embed),
    "read-only result folder (postprocess)": ro("postprocess", _postprocess),
    "read-only export target": ro("export", _export),
    "read-only submission folder (package)": ro("package", _package),
    "read-only run folder (experiment)": ro("experiment", _experiment),
    "read-only run folder (table3)": ro("table3", _table3),
    "read-only overlay file": ro("overlay", _overlay, "movie.gif"),
    "read-only sample folder (show-sample)": ro("show-sample", _show_sample),
    "read-only dataset folder (synth)": ro("synth", _synth),
    "read-only demo folder": ro("demo", _demo),
    # full disk and read-only file system
    "full disk found before the network (predict)": Case("predict", _full_disk_at_check,
                                                         ("No space left on device", "disk is full")),
    "full disk while writing masks (postprocess)": Case("postprocess", _full_disk_writing_masks,
                                                        ("writing", "out", "No space left on device", "ENOSPC")),
    "full disk while copying weights (export)": Case("export", _full_disk_exporting,
                                                     ("No space left on device", "disk is full")),
    "full disk while writing frames (synth)": Case("synth", _full_disk_synthesizing,
                                                   ("No space left on device", "disk is full")),
    "read-only file system (export)": Case("export", _read_only_file_system,
                                           ("Read-only file system", "mounted read-only")),
    # one writer per folder
    "second writer of a model folder (train)": held("train", _train),
    "--resume while the run is alive (train)": Case("train", _resume_while_alive,
                                                    ("is writing this output", "only one rshn process")),
    "second writer of an export target": held("export", _export),
    "second writer of a submission folder (package)": held("package", _package),
    "second writer of a run folder (experiment)": held("experiment", _experiment),
    "second writer of a Table 3 folder": held("table3", _table3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fault_catalogue(name, world, read_only, hold, monkeypatch, capsys):
    case = CASES[name]
    args, watch = case.setup(world, read_only, hold, monkeypatch)
    before = listing(watch)
    status = main(args)
    line = assert_one_clear_error(capsys, case.verb, status, case.status, "error:", str(watch), *case.words)
    if "holder" in world:
        assert f"process {world['holder']}" in line
    after = [entry for entry in listing(watch) if not entry[0].endswith(".lock")]
    assert after == [entry for entry in before if not entry[0].endswith(".lock")], "something was written or left"


def _without_permission_override() -> list[str]:
    """Command prefix under which the kernel applies file permissions to this user: nothing for a normal user; for
    root, ``setpriv`` dropping the capabilities that let root write anywhere (root stays the owner of the files)."""
    if not IS_ROOT:
        return []
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]


@pytest.mark.parametrize("verb, args_of", [("synth", lambda w, out: ["synth", str(out), "--frames", "3"]),
                                           ("postprocess", _postprocess), ("train", _train)])
def test_a_chmod_read_only_folder_is_refused_by_the_kernel_and_reported(world, verb, args_of):
    prefix = _without_permission_override()
    if prefix and subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("root, and setpriv cannot drop the permission-override capabilities here")
    folder = world["tmp"] / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    try:
        done = subprocess.run([*prefix, sys.executable, "-m", "rshn_tf.cli", *args_of(world, folder / "out")],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"rshn {verb}: error: ") and "is not writable (Permission denied)" in lines[0]
    assert os.listdir(folder) == []


# ---------------------------------------------------------------------------------------------------------------
# Litter of killed runs


def test_stale_temporaries_of_dead_runs_are_removed_and_live_ones_kept(tmp_path, hold, capsys):
    dead, alive = dead_pid(), hold(tmp_path / "elsewhere").pid
    stale = [tmp_path / f".out.tmp-{dead}-0123abcd", tmp_path / f".out.old-{dead}-89abcdef",
             tmp_path / f".out.tmp-{dead}"]
    for folder in stale:
        (folder / "01").mkdir(parents=True)
        (folder / "01" / "t000.tif").write_bytes(b"x" * 1000)
    live = tmp_path / f".out.tmp-{alive}-0123abcd"
    live.mkdir()
    other = tmp_path / f".other.tmp-{dead}-0123abcd"  # another output's: not this run's to judge
    other.mkdir()
    assert main(_synth({}, tmp_path / "out")) == 0
    assert not any(folder.exists() for folder in stale)
    assert live.is_dir() and other.is_dir() and (tmp_path / "out" / "01").is_dir()


def test_stale_temporaries_inside_a_model_folder_are_removed_when_it_is_locked(tmp_path):
    from rshn_tf.output_lock import claim_output

    model = fake_model(tmp_path / "model")
    dead = dead_pid()
    (model / "snapshots").mkdir()
    stale = [model / f".{dead}.tmp.weights.last.weights.h5", model / f".training_state.json.{dead}.tmp",
             model / "snapshots" / f".{dead}.tmp.step_2000.weights.h5"]
    for path in stale:
        path.write_bytes(b"half")
    mine = model / f".{os.getpid()}.tmp.weights.best.weights.h5"
    mine.write_bytes(b"being written")
    with claim_output(model, "model folder", inside=True):
        assert not any(path.exists() for path in stale) and mine.exists()
    assert ModelFolder(model).weights_path("last").read_bytes() == b"last weights of model"


def run_rshn(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "rshn_tf.cli", *args], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_verb_with_one_line_and_no_litter(tmp_path, signum):
    out = tmp_path / "data"
    process = run_rshn(["synth", str(out), "--frames", "400", "--size", "256", "256"])
    wait_for(lambda: any(p.name.startswith(".data.tmp-") for p in tmp_path.iterdir()))
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and err.count("stopped by") == 1
    assert err.strip().splitlines()[-1] == f"rshn synth: stopped by {name}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def unit_embeddings(folder: Path, pairs: int, shape: tuple[int, int] = (64, 64), dim: int = 4) -> Path:
    """``pairs`` random pair files of unit embeddings (the network grid is the original size: no resampling)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for index in range(pairs):
        pair = rng.normal(size=(2, *shape, dim)).astype(np.float32)
        np.save(folder / f"pair_{index:03d}.npy", pair / np.linalg.norm(pair, axis=-1, keepdims=True))
    return folder


def test_sigterm_of_postprocess_gives_one_line_and_leaves_nothing(world):
    tmp = world["tmp"]
    emb = unit_embeddings(tmp / "emb", 120)
    out = tmp / "runs" / "RES"
    process = run_rshn(["postprocess", str(emb), str(out), "--config", world["yaml"], "--original-shape", "64", "64"])
    wait_for(lambda: any((out.parent / ".RES.partial" / "frames").glob("*")))
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err and err.count("stopped by") == 1
    assert err.strip().splitlines()[-1].startswith("rshn postprocess: stopped by SIGTERM; the run saved no checkpoint")
    assert sorted(p.name for p in out.parent.iterdir()) == []


def test_after_sigkill_the_next_run_removes_the_litter_and_takes_over_the_lock(world, capsys):
    tmp = world["tmp"]
    emb = unit_embeddings(tmp / "emb", 120)
    out = tmp / "runs" / "RES"
    process = run_rshn(["postprocess", str(emb), str(out), "--config", world["yaml"], "--original-shape", "64", "64"])
    wait_for(lambda: any((out.parent / ".RES.partial" / "frames").glob("*")))
    process.kill()
    process.communicate()
    litter = out.parent / f".RES.tmp-{process.pid}-0123abcd"  # a result being written when the run was killed
    (litter / "mask000.tif").parent.mkdir()
    (litter / "mask000.tif").write_bytes(b"half a mask")
    assert sorted(p.name for p in out.parent.iterdir()) == [".RES.lock", ".RES.partial", litter.name]
    small = unit_embeddings(tmp / "small", 2)
    assert main(["postprocess", str(small), str(out), "--config", world["yaml"], "--original-shape", "64", "64"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["RES"]
    assert len(list(out.glob("mask*.tif"))) == 3


# ---------------------------------------------------------------------------------------------------------------
# Training: a failed run is restarted with --restart; a full disk leaves no partial weights or logs


def test_a_training_that_died_of_a_nan_loss_is_restarted_with_restart(world, monkeypatch, capsys):
    import rshn_tf.training as training

    real = training.total_loss

    def nan_loss(*args, **kwargs):
        total, terms = real(*args, **kwargs)
        return total * float("nan"), dict(terms, total=terms["total"] * float("nan"))

    model = world["tmp"] / "model"
    args = _train(world, model)
    monkeypatch.setattr(training, "total_loss", nan_loss)
    assert_one_clear_error(capsys, "train", main(args), 2, "loss became nan at step 1", "--restart")
    assert ModelFolder(model).read_state()["failed"] == "the loss became nan at step 1"
    monkeypatch.setattr(training, "total_loss", real)
    assert_one_clear_error(capsys, "train", main(args), 2, "failed (the loss became nan", "--restart",
                           "another --model-dir")
    assert_one_clear_error(capsys, "train", main(args + ["--resume", "--set", "training.learning_rate=0.00001"]), 2,
                           "--resume", "failed", "--restart")
    assert main(args + ["--restart", "--set", "training.learning_rate=0.00001"]) == 0
    state = ModelFolder(model).read_state()
    assert state["finished"] and "failed" not in state
    losses = (model / "logs" / "losses.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in losses] == ["step", "1", "2"]
    assert not [p.name for p in model.iterdir() if p.name.startswith(".")]


def test_a_full_disk_in_training_leaves_no_partial_weights_and_a_whole_loss_log(world, monkeypatch, capsys):
    import keras

    def save_weights(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half the weights")
        raise enospc(path)

    monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    model = world["tmp"] / "model"
    status = main(_train(world, model))
    assert_one_clear_error(capsys, "train", status, 2, "No space left on device", "disk is full")
    assert not list(model.glob("*.h5")) and not [p.name for p in model.rglob(".*")]
    lines = (model / "logs" / "losses.csv").read_text().splitlines()
    assert lines[0].startswith("step,") and [line.split(",")[0] for line in lines[1:]] == ["1"]
    assert len({len(line.split(",")) for line in lines}) == 1


def test_a_checkpoint_save_that_fills_the_disk_leaves_no_unfinished_checkpoint(world, monkeypatch, capsys):
    import tensorflow as tf

    model = world["tmp"] / "model"

    def full_disk_save(self, *args, **kwargs):
        # what TensorFlow 2.21 leaves when SaveV2 hits a full disk (measured on a 200 kB tmpfs): the sharded save's
        # PREFIX_temp folder with a part file, and the error naming that file
        part = Path(self.directory) / "ckpt-1_temp" / "part-00000-of-00001.data-00000-of-00001.tempstate123"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"half a checkpoint")
        raise tf.errors.ResourceExhaustedError(None, None, f"{part}; No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full_disk_save)
    status = main(_train(world, model))
    assert_one_clear_error(capsys, "train", status, 2, "No space left on device", "disk is full")
    assert not list((model / "checkpoints").iterdir())
    monkeypatch.undo()
    litter = model / "checkpoints" / "ckpt-7_temp"  # a killed save's (SIGKILL: no clean-up at exit)
    litter.mkdir()
    (model / "checkpoints" / "checkpoint.tmp0123abcd").write_text("model_checkpoint_path")
    assert main(_train(world, model) + ["--resume"]) == 0
    assert sorted(p.name for p in (model / "checkpoints").iterdir() if "temp" in p.name or "tmp" in p.name) == []
    assert ModelFolder(model).read_state()["finished"]


def test_a_failed_append_leaves_the_loss_log_as_it_was(tmp_path, monkeypatch):
    from rshn_tf.training_logs import CsvLog

    path = tmp_path / "losses.csv"
    log = CsvLog(path, 0)
    log.write({"step": 1, "total": 0.5})
    log.flush()
    before = path.read_bytes()
    log.write({"step": 2, "total": 0.25})
    real_write = os.write

    def half_write(fd, data):
        if not bytes(data).startswith(b"2,"):
            return real_write(fd, data)
        real_write(fd, data[: len(data) // 2])
        raise enospc()

    monkeypatch.setattr(os, "write", half_write)
    with pytest.raises(OSError):
        log.flush()
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_bytes() == before == b"step,total\r\n1,0.5\r\n"


def test_lock_file_names_the_train_run(tmp_path, data, hold, capsys):
    process = hold(tmp_path / "model")
    assert lock_path(tmp_path / "model").is_file()
    (tmp_path / "train.yaml").write_text(TRAIN_YAML)
    status = main(["train", str(tmp_path / "train.yaml"), "--model-dir", str(tmp_path / "model"), "--data", str(data)])
    line = assert_one_clear_error(capsys, "train", status, 2, "(holder)", f"kill {process.pid}")
    assert str(lock_path(tmp_path / "model")) in line and not (tmp_path / "model").exists()


@pytest.mark.parametrize("error, words", [
    (OSError("Unable to synchronously create file (unable to open file: name = 'w.h5', errno = 28, error message = "
             "'No space left on device', flags = 13)"), ("No space left on device", "ENOSPC", "disk is full")),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/out/x"), ("/data/out/x", "permissions")),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), ("quota",)),
])
def test_fault_messages_name_the_problem_and_what_to_do(error, words):
    from rshn_tf.os_faults import fault_message

    message = fault_message(error)
    assert all(word in message for word in words), message


@pytest.mark.parametrize("error", [FileNotFoundError(errno.ENOENT, "No such file", "x"), ValueError("No space left"),
                                   OSError(errno.EIO, os.strerror(errno.EIO))])
def test_other_errors_are_not_taken_for_faults_of_the_environment(error):
    from rshn_tf.os_faults import fault_message

    assert fault_message(error) is None
