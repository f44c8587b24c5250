"""Tests of the atomic CTC result writer (ctc_submission.writer)."""

from __future__ import annotations

import numpy as np
import pytest

import ctc_submission.writer as writer
from data_io.ctc import read_tiff, read_track_file
from rshn_tf.config import Config, load_config
from rshn_tf.errors import RshnError
from rshn_tf.evaluation import validate_result
from tests import cases


def _hidden_leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_writes_uint16_masks_and_the_track_file(tmp_path):
    case = cases.division()
    out = writer.write_ctc_result(tmp_path / "01_RES", case.expected, case.tracks, config=Config())
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.yaml"] + [f"mask{t:03d}.tif" for t in range(15)] + ["res_track.txt"]
    for t in range(15):
        mask = read_tiff(out / f"mask{t:03d}.tif")
        assert mask.dtype == np.uint16
        np.testing.assert_array_equal(mask, case.expected[t])
    assert (out / "res_track.txt").read_text() == "1 0 11 0\n2 12 14 1\n3 12 14 1\n"
    np.testing.assert_array_equal(read_track_file(out / "res_track.txt"), case.tracks)
    assert load_config(out / "config.yaml").to_dict() == Config().to_dict()
    assert _hidden_leftovers(tmp_path) == []


def test_four_digit_names_and_digit_choice(tmp_path):
    labels = np.zeros((2, 4, 4), np.int32)
    labels[:, 1, 1] = 1
    out = writer.write_ctc_result(tmp_path / "RES", labels, [[1, 0, 1, 0]], digits=4)
    assert sorted(p.name for p in out.iterdir()) == ["mask0000.tif", "mask0001.tif", "res_track.txt"]
    assert writer.mask_digits(1000) == 3 and writer.mask_digits(1001) == 4
    with pytest.raises(RshnError, match="5 digits"):
        writer.write_ctc_result(tmp_path / "RES2", labels, [[1, 0, 1, 0]], digits=5)


def test_ids_beyond_uint16_fail_clearly_and_write_nothing(tmp_path):
    labels = np.zeros((1, 4, 4), np.int32)
    labels[0, 0, 0] = 65536
    with pytest.raises(RshnError, match="65536 does not fit the uint16"):
        writer.write_ctc_result(tmp_path / "RES", labels, [[65536, 0, 0, 0]])
    assert list(tmp_path.iterdir()) == []
    labels[0, 0, 0] = 65535  # the largest id that fits
    out = writer.write_ctc_result(tmp_path / "RES", labels, [[65535, 0, 0, 0]])
    assert read_tiff(out / "mask000.tif")[0, 0] == 65535


def test_replaces_an_old_result_only_at_the_end(tmp_path, monkeypatch):
    target = tmp_path / "RES"
    old = np.zeros((3, 4, 4), np.int32)
    old[:, 0, 0] = 7
    writer.write_ctc_result(target, old, [[7, 0, 2, 0]])
    new = np.zeros((2, 4, 4), np.int32)
    new[:, 1, 1] = 1

    calls = []

    def failing_write(path, image):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(path, image)

    original = writer.write_tiff
    monkeypatch.setattr(writer, "write_tiff", failing_write)
    with pytest.raises(OSError, match="disk full"):
        writer.write_ctc_result(target, new, [[1, 0, 1, 0]])
    monkeypatch.setattr(writer, "write_tiff", original)
    # the old result is untouched and no temporary folder is left behind
    assert sorted(p.name for p in target.iterdir()) == ["mask000.tif", "mask001.tif", "mask002.tif",
                                                        "res_track.txt"]
    assert _hidden_leftovers(tmp_path) == []
    writer.write_ctc_result(target, new, [[1, 0, 1, 0]])
    assert sorted(p.name for p in target.iterdir()) == ["mask000.tif", "mask001.tif", "res_track.txt"]
    assert _hidden_leftovers(tmp_path) == []


def test_refuses_to_replace_a_folder_with_other_files(tmp_path):
    target = tmp_path / "RES"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    labels = np.ones((1, 2, 2), np.int32)
    with pytest.raises(RshnError, match="refusing to replace"):
        writer.write_ctc_result(target, labels, [[1, 0, 0, 0]])
    assert (target / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("case", cases.catalogue(), ids=lambda c: c.name)
def test_written_catalogue_results_pass_the_ctc_validator(case, tmp_path):
    out = writer.write_ctc_result(tmp_path / "RES", case.expected, case.tracks)
    validate_result(out)


def test_the_validator_rejects_an_inconsistent_lineage(tmp_path):
    case = cases.division()
    tracks = case.tracks.copy()
    tracks[0, 2] = 12  # the parent would end after its children start
    out = writer.write_ctc_result(tmp_path / "RES", case.expected, tracks)
    with pytest.raises(RshnError, match="not a valid CTC result"):
        validate_result(out)
