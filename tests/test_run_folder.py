"""Tests of rshn_tf.run_folder: the unfinished run beside an output (checkpoints, refusal, resume checks)."""

from __future__ import annotations

import numpy as np
import pytest

from rshn_tf.config import Config
from rshn_tf.errors import RshnError
from rshn_tf.run_folder import RunFolder, load_checkpoint, partial_path

IDENTITY = {"command": "postprocess", "embeddings": "/data/emb", "pairs": 9, "original_shape": (64, 96)}


def test_checkpoints_round_trip_and_replace_each_other(tmp_path):
    run = RunFolder.open(tmp_path / "RES", IDENTITY, Config(), resume=False)
    assert run.folder == partial_path(tmp_path / "RES") == tmp_path / ".RES.partial"
    run.frames.write(0, np.ones((4, 5)))
    run.save({"num_pairs": 2, "stored": 1, "tracker": {"next_id": 7}}, [np.arange(6).reshape(2, 3)])
    run.save({"num_pairs": 4, "stored": 1, "tracker": {"next_id": 9}}, [np.zeros((2, 2), np.int32)] * 2)
    numbers, arrays = load_checkpoint(run.folder / "checkpoint.npz")
    assert numbers["num_pairs"] == 4 and numbers["tracker"] == {"next_id": 9} and len(arrays) == 2
    assert sorted(p.name for p in run.folder.iterdir()) == ["checkpoint.npz", "config.yaml", "frames", "run.json"]
    resumed = RunFolder.open(tmp_path / "RES", IDENTITY, Config(), resume=True)
    assert resumed.checkpoint[0]["num_pairs"] == 4 and len(resumed.frames) == 1
    resumed.remove()
    assert list(tmp_path.iterdir()) == []


def test_an_unfinished_run_is_refused_without_resume_and_checked_with_it(tmp_path):
    run = RunFolder.open(tmp_path / "RES", IDENTITY, Config(), resume=False)
    run.save({"num_pairs": 3, "stored": 0, "tracker": {}}, [])
    with pytest.raises(RshnError, match=r"unfinished run of 'rshn postprocess'.*3 of 9 frame pairs.*--resume"):
        RunFolder.open(tmp_path / "RES", IDENTITY, Config(), resume=False)
    changed = Config()
    changed.postprocessing.bandwidth = 0.2
    changed.inference.threads = 1  # does not change results: allowed
    with pytest.raises(RshnError, match=r"differs in pairs, postprocessing\.bandwidth \("):
        RunFolder.open(tmp_path / "RES", dict(IDENTITY, pairs=10), changed, resume=True)
    (run.folder / "checkpoint.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(RshnError, match="cannot read the checkpoint.*start the run over"):
        RunFolder.open(tmp_path / "RES", IDENTITY, Config(), resume=True)


def test_a_run_without_checkpoint_is_replaced(tmp_path):
    run = RunFolder.open(tmp_path / "RES", IDENTITY, Config(), resume=False)
    run.frames.write(0, np.ones((4, 5)))
    assert "nothing to resume" in run.resume_hint()
    fresh = RunFolder.open(tmp_path / "RES", IDENTITY, Config(), resume=False)
    assert fresh.checkpoint is None and len(fresh.frames) == 0 and not (fresh.folder / "frames" / "000000.npy").exists()
