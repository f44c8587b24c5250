"""Tests of rshn_tf.atomic: files and folders appear whole or not at all, and nothing is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rshn_tf.atomic import (
    atomic_file,
    atomic_folder,
    fresh_folder,
    twin_path,
    write_json_atomic,
    write_text_atomic,
)
from rshn_tf.os_faults import remove_stale_temps


class Boom(Exception):
    pass


def test_a_file_replaces_its_target_only_when_complete(tmp_path):
    target = tmp_path / "sub" / "scores.json"
    write_json_atomic(target, {"SEG": 0.5})
    assert json.loads(target.read_text()) == {"SEG": 0.5}
    with pytest.raises(Boom):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise Boom
    assert json.loads(target.read_text()) == {"SEG": 0.5}
    assert sorted(p.name for p in target.parent.iterdir()) == ["scores.json"]


def test_the_twin_keeps_the_suffix_a_writer_needs_and_names_this_process(tmp_path):
    seen = []
    with atomic_file(tmp_path / "weights.last.weights.h5", suffix=".weights.h5") as tmp:
        seen.append(tmp.name)
        tmp.write_bytes(b"w")
    assert seen[0].startswith(f".weights.last.weights.h5.tmp-{os.getpid()}-") and seen[0].endswith(".weights.h5")
    assert (tmp_path / "weights.last.weights.h5").read_bytes() == b"w"
    write_text_atomic(tmp_path / "note.txt", "é\n", durable=True)
    assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "é\n"


def test_a_folder_is_swapped_in_whole_or_the_old_one_stays(tmp_path):
    target = tmp_path / "01_RES"
    target.mkdir()
    (target / "mask000.tif").write_text("old")
    with pytest.raises(Boom):
        with atomic_folder(target) as tmp:
            (tmp / "mask000.tif").write_text("new")
            raise Boom
    assert (target / "mask000.tif").read_text() == "old"
    with atomic_folder(target) as tmp:
        (tmp / "mask000.tif").write_text("new")
        (tmp / "res_track.txt").write_text("1 0 0 0\n")
    assert sorted(p.name for p in target.iterdir()) == ["mask000.tif", "res_track.txt"]
    assert (target / "mask000.tif").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01_RES"]


def test_a_signal_right_after_the_folder_is_made_leaves_no_folder(tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def mkdir_then_interrupt(self, *args, **kwargs):
        real_mkdir(self, *args, **kwargs)
        if self.name.startswith(".out.tmp-"):
            raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", mkdir_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        fresh_folder(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_twins_of_a_dead_process_are_removed_and_the_own_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "model"
    target.mkdir()
    own = twin_path(target / "weights.best.weights.h5", suffix=".weights.h5")
    stale = [Path(str(twin_path(target / "weights.best.weights.h5", suffix=".weights.h5")).replace(
                 f"-{os.getpid()}-", f"-{dead.pid}-")),
             Path(str(twin_path(tmp_path / "model")).replace(f"-{os.getpid()}-", f"-{dead.pid}-"))]
    for path in (own, *stale):
        path.write_text("half")
    removed = remove_stale_temps(target, inside=True)
    assert sorted(removed) == sorted(stale) and own.exists()
