"""Tests of the ``rshn`` command line: verbs, help, errors and the not-yet-available contract."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from rshn_tf.cli import EXIT_USER_ERROR, build_parser, main

VERBS = ["train", "predict", "postprocess", "evaluate", "experiment", "table3", "package", "demo", "synth",
         "check-config", "show-sample", "overlay"]


def test_every_verb_exists_and_has_help(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    assert set(VERBS) <= set(sub.choices)
    for verb in VERBS:
        with pytest.raises(SystemExit) as exc:
            main([verb, "--help"])
        assert exc.value.code == 0
        assert f"usage: rshn {verb}" in capsys.readouterr().out


def test_check_config_validates_presets_and_files(tmp_path, capsys):
    assert main(["check-config", "DIC-C2DH-HeLa", "Fluo-N2DL-HeLa"]) == 0
    assert "OK  DIC-C2DH-HeLa" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("tracking:\n  t_merge: 10\n")
    assert main(["check-config", str(bad)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "rshn check-config: error:" in err and "unknown key 'tracking.t_merge'" in err and str(bad) in err


def test_check_config_show_applies_set_and_data(capsys, tmp_path):
    assert main(["check-config", "DIC-C2DH-HeLa", "--show", "--set", "postprocessing.bandwidth=0.15",
                 "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "bandwidth: 0.15" in out and f"dataset_dir: {tmp_path}" in out


def test_check_config_keys_lists_every_section(capsys):
    assert main(["check-config", "--keys"]) == 0
    out = capsys.readouterr().out
    for section in ("data:", "model:", "augmentation:", "loss:", "training:", "inference:", "postprocessing:",
                    "tracking:"):
        assert section in out


def test_a_closed_pipe_ends_the_listing_quietly():
    """``rshn check-config --keys | head -1``: the reader leaves early; no BrokenPipeError traceback, exit status 0."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: every write fails with EPIPE
    try:
        process = subprocess.run([sys.executable, "-m", "rshn_tf.cli", "check-config", "--keys"], stdout=write_end,
                                 stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    stderr = process.stderr.decode()
    assert process.returncode == 0 and "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_set_is_rejected_with_a_clear_message(capsys):
    assert main(["check-config", "DIC-C2DH-HeLa", "--set", "model.levels=seven"]) == EXIT_USER_ERROR
    assert "key 'model.levels' must be int, got 'seven'" in capsys.readouterr().err


def test_console_script_runs_when_installed():
    exe = shutil.which("rshn")
    if exe is None:
        pytest.skip("the rshn console script is not installed in this environment (pip install . provides it)")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "check-config" in result.stdout


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "rshn_tf.cli", "check-config", "PhC-C2DH-U373"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "OK  PhC-C2DH-U373" in result.stdout




def test_a_missing_tensorflow_names_the_install_extras(tmp_path):
    """An install without the [cpu] or [gpu] extra has no TensorFlow: the verb that needs it says how to get it."""
    code = ("import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
            "from rshn_tf.cli import main\n"
            f"sys.exit(main(['train', 'demo', '--model-dir', {str(tmp_path / 'model')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 2, result.stderr
    assert "rshn train: error: TensorFlow is not installed" in result.stderr
    assert 'pip install "rshn-tf[cpu]"' in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "model").exists()
