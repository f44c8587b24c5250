"""Tests of rshn_tf.console: progress lines when stderr is not a terminal, and the quiet TensorFlow import set-up.

The TensorFlow side end to end (no start-up lines on a real stderr) is checked in a subprocess by
``tests/test_bad_inputs.py::test_a_tensorflow_verb_prints_no_tensorflow_start_up_noise``.
"""

from __future__ import annotations

import logging
import os
import sys

from tqdm import tqdm

from rshn_tf import console
from rshn_tf.console import LineProgress, progress_bar


def test_lines_are_logged_every_ten_percent(caplog):
    caplog.set_level(logging.INFO, logger="rshn.progress")
    bar = LineProgress(200, unit="frame", desc="predict")
    for _ in range(200):
        bar.set_postfix(loss="0.5")
        bar.update(1)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 10
    assert lines[0].startswith("predict: 20/200 frame (10 %)") and lines[0].endswith("left, loss=0.5")
    assert lines[-1].startswith("predict: 200/200 frame (100 %)") and "left" not in lines[-1]


def test_a_line_is_logged_when_time_passes_without_a_step(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="rshn.progress")
    monkeypatch.setattr(console, "LINE_SECONDS", 0.0)
    bar = LineProgress(10_000, initial=5_000, desc="training")
    bar.update(1)
    bar.update(1)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["training: 5001/10000 it (50 %)",
                                                                       "training: 5002/10000 it (50 %)"]


def test_the_display_follows_the_terminal(capsys):
    assert not sys.stderr.isatty()  # pytest captures it
    assert isinstance(progress_bar(5, desc="x"), LineProgress)
    with progress_bar(5, desc="x", enabled=True, file=sys.stderr) as bar:
        assert isinstance(bar, tqdm) and not bar.disable
    with progress_bar(5, desc="x", enabled=False) as bar:
        assert isinstance(bar, tqdm) and bar.disable


def test_quiet_tensorflow_sets_the_log_level_without_overriding_the_user(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    for name in ("tensorflow", "absl"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    console.quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert logging.getLogger("tensorflow").level == logging.ERROR
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    console.quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert sum(isinstance(f, console._QuietTensorFlowFinder) for f in sys.meta_path) <= 1
