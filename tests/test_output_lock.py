"""Tests of rshn_tf.output_lock: one writer per output, the holder named, a dead holder's lock taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from rshn_tf.errors import RshnError
from rshn_tf.output_lock import OutputLock, lock_path
from tests.conftest import REPO_ROOT

HOLDER = """
import sys, time
from rshn_tf.output_lock import OutputLock
OutputLock(sys.argv[1], command="holder").acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A process that holds the lock of tmp_path/RES until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "RES")], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield process
    process.kill()
    process.wait()


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, holder):
    with pytest.raises(RshnError) as error:
        OutputLock(tmp_path / "RES").acquire()
    message = str(error.value)
    assert f"process {holder.pid}" in message and "(holder)" in message and f"kill {holder.pid}" in message
    assert str(lock_path(tmp_path / "RES")) in message


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, holder, caplog):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    path = lock_path(tmp_path / "RES")
    assert json.loads(path.read_text())["pid"] == holder.pid  # left behind
    with caplog.at_level(logging.WARNING, logger="rshn_tf.output_lock"):
        lock = OutputLock(tmp_path / "RES").acquire()
    assert f"process {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()


def test_release_lets_the_next_writer_in_and_removes_the_file(tmp_path):
    with OutputLock(tmp_path / "RES") as lock:
        assert lock.held and lock.path.exists()
        with pytest.raises(RshnError, match=f"process {os.getpid()}"):
            OutputLock(tmp_path / "RES").acquire()
    assert not lock.path.exists()
    with OutputLock(tmp_path / "RES"):
        pass
    assert os.listdir(tmp_path) == []


def test_shared_holders_coexist_exclude_an_exclusive_one_and_the_last_removes_the_file(tmp_path):
    first = OutputLock(tmp_path / "RUN", command="first", shared=True).acquire()
    second = OutputLock(tmp_path / "RUN", command="second", shared=True).acquire()
    with pytest.raises(RshnError, match=r"\(first\) since .* is writing this output"):
        OutputLock(tmp_path / "RUN").acquire()
    first.release()
    assert first.path.exists()  # the second still holds it
    with pytest.raises(RshnError, match="is writing this output"):
        OutputLock(tmp_path / "RUN").acquire()
    second.release()
    assert not second.path.exists()
    with OutputLock(tmp_path / "RUN", command="full"):
        with pytest.raises(RshnError, match=r"\(full\) since .* is writing this output"):
            OutputLock(tmp_path / "RUN", shared=True).acquire()
    assert os.listdir(tmp_path) == []
