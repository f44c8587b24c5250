"""Tests of the overlay renderer (rshn_tf.visualize) and the ``rshn overlay`` verb."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctc_submission.writer import write_ctc_result
from data_io.ctc import write_tiff
from rshn_tf.cli import EXIT_USER_ERROR, main
from rshn_tf.errors import RshnError
from rshn_tf.visualize import MITOSIS_COLOUR, contours, mitosis_ids, render_overlay, track_colours
from tests import cases


def test_contours_are_the_boundary_pixels():
    labels = np.zeros((6, 7), int)
    labels[1:5, 1:4] = 1
    labels[1:5, 4:6] = 2
    expected = np.zeros((6, 7), bool)
    expected[1:5, 1:4] = True
    expected[2:4, 2] = False          # interior of 1 (its right column touches 2)
    expected[1:5, 4:6] = True         # 2 is two columns wide: all boundary
    np.testing.assert_array_equal(contours(labels), expected)
    edge = np.zeros((3, 3), int)
    edge[:, :] = 4
    assert contours(edge).sum() == 8  # the image edge counts as background


def test_mitosis_ids_are_mothers_last_and_daughters_first_frames():
    tracks = np.array([[1, 0, 11, 0], [2, 12, 14, 1], [3, 12, 14, 1], [4, 0, 14, 0]])
    assert mitosis_ids(tracks, 11) == {1}
    assert mitosis_ids(tracks, 12) == {2, 3}
    assert mitosis_ids(tracks, 5) == set()
    assert mitosis_ids(tracks, 14) == set()


def test_track_colours_are_distinct_and_stable():
    colours = track_colours(range(1, 40))
    assert len(set(colours.values())) == 39
    assert track_colours([5]) == {5: colours[5]}


@pytest.fixture
def division_result(tmp_path):
    case = cases.division()
    res = write_ctc_result(tmp_path / "01_RES", case.expected, case.tracks)
    frames = tmp_path / "01"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for t in range(case.expected.shape[0]):
        write_tiff(frames / f"t{t:03d}.tif", rng.integers(0, 4000, size=cases.SHAPE).astype(np.uint16))
    return case, res, frames


def test_png_overlay_draws_track_colours_and_highlights_mitoses(division_result, tmp_path):
    case, res, frames = division_result
    out = render_overlay(res, frames, tmp_path / "movie.png")
    image = Image.open(out)
    assert image.n_frames == 15 and image.size == (cases.SHAPE[1], cases.SHAPE[0])
    colours = track_colours([1, 2, 3])
    image.seek(5)
    rgb = np.asarray(image.convert("RGB"))
    edge = contours(case.expected[5])
    assert np.all(rgb[edge] == colours[1])
    assert not np.any(np.all(rgb == MITOSIS_COLOUR, axis=-1))
    image.seek(12)                   # daughters' first frame
    rgb = np.asarray(image.convert("RGB"))
    highlighted = np.all(rgb == MITOSIS_COLOUR, axis=-1)
    np.testing.assert_array_equal(highlighted, contours(case.expected[12], thickness=3))


def test_gif_overlay_and_cli(division_result, tmp_path, capsys):
    _, res, frames = division_result
    assert main(["overlay", str(res), str(frames), "--out", str(tmp_path / "m.gif")]) == 0
    image = Image.open(tmp_path / "m.gif")
    assert image.format == "GIF" and image.n_frames == 15
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert main(["overlay", str(res), str(frames), "--out", str(tmp_path / "m.mp4")]) == EXIT_USER_ERROR
    assert ".gif or .png" in capsys.readouterr().err


def test_mismatched_frames_fail_clearly(division_result, tmp_path):
    _, res, frames = division_result
    (frames / "t014.tif").unlink()
    with pytest.raises(RshnError, match="15 masks but .* has 14 frames"):
        render_overlay(res, frames, tmp_path / "m.gif")
    with pytest.raises(RshnError, match="no raw frame files"):
        render_overlay(res, tmp_path / "01_RES", tmp_path / "m.gif")
