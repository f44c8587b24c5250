"""Synthetic cell videos with Cell Tracking Challenge (CTC) ground truth.

The generator simulates textured, roughly elliptical cells on an unevenly lit background. Cells move smoothly,
deform slowly, press against each other (touching cells share a boundary, masks never overlap) and divide: a cell
elongates for a few frames, then splits along its major axis into two daughters. The images are blurred and carry
Poisson and Gaussian noise. Everything is drawn from one NumPy generator, so one seed gives one video, bit for bit.

Cells stay completely inside the field (a soft wall keeps them a few pixels from the border), so every track is
one contiguous run of frames, no track ends except by division, and every TRA marker is a small disk well inside
its cell, like the markers of DIC-C2DH-HeLa.

Two entry points:

* :func:`generate_sequence` returns one video in memory (:class:`SyntheticSequence`).
* :func:`write_synthetic_dataset` writes a CTC training layout (raw frames, ``0X_GT/TRA``, ``0X_GT/SEG`` on some
  frames, ``0X_ST/SEG`` on every frame) plus ``synthetic.yaml`` with the parameters and seeds.

It is the built-in data of ``rshn demo`` and of self-contained tests. It must not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage

from data_io.ctc import write_tiff, write_track_file
from rshn_tf.atomic import atomic_folder
from rshn_tf.errors import RshnError
from rshn_tf.os_faults import prepare_output

LOG = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bumped whenever the same parameters and seed would give different data."""

METADATA_FILE = "synthetic.yaml"
_TEXTURE_SIZE = 32  # side of the per-cell texture tile, stretched over the cell
_TEXTURE_SMOOTHING = 2.5  # Gaussian sigma (tile pixels) that makes the texture low-frequency
_FOURIER_ORDERS = np.array([3.0, 4.0, 5.0])
# Internal time constants of the shape dynamics (per frame); the visible amounts are SyntheticParams fields.
_WOBBLE_LIMIT = 0.08  # largest amplitude of one boundary wobble order
_WOBBLE_PERSISTENCE = 0.9  # frame-to-frame correlation of the wobble amplitudes
_PHASE_NOISE = 0.1  # random walk step (radians) of the wobble phases
_ROTATION_PERSISTENCE = 0.8  # frame-to-frame correlation of the angular velocity
_ASPECT_RELAXATION = 0.1  # fraction of the gap to the preferred log axis ratio closed per frame
_ASPECT_NOISE = 0.02  # random step of the log axis ratio


@dataclass(frozen=True)
class SyntheticParams:
    """Parameters of the synthetic video generator. Lengths are in pixels, times in frames.

    Pairs ``(low, high)`` are ranges from which a value is drawn uniformly (integer ranges include ``high``).
    """

    frames: int = 40
    """Number of frames T."""
    size: tuple[int, int] = (256, 256)
    """Frame size (H, W)."""
    cells: tuple[int, int] = (8, 12)
    """Number of cells in the first frame."""
    radius: tuple[float, float] = (12.0, 20.0)
    """Equivalent radius sqrt(a * b) of a full-grown cell; daughters are born smaller and grow to a new draw."""
    aspect: tuple[float, float] = (1.0, 1.6)
    """Preferred axis ratio a / b of a cell outside mitosis."""
    mitoses: tuple[int, int] = (3, 5)
    """Number of divisions per video. Guaranteed when ``cells[0] >= mitoses[1]`` and ``frames >= 3``."""
    elongation_frames: int = 4
    """Frames over which a cell elongates before it splits (its last frames as a parent)."""
    mitotic_aspect: float = 2.2
    """Axis ratio reached in the last frame before the split; the daughters are the two halves."""
    mitotic_brightness: float = 1.3
    """Signal factor reached in the last frame before the split (mitotic cells round up and look brighter)."""
    min_cycle_frames: int = 10
    """A cell younger than this is chosen to divide only when no older cell is free."""
    growth_rate: float = 0.08
    """Fraction of the gap to its target radius that a cell closes per frame."""
    speed: float = 1.5
    """Root-mean-square speed (pixels per frame) of the random motion."""
    persistence: float = 0.85
    """Frame-to-frame correlation of the velocity (Ornstein-Uhlenbeck process)."""
    rotation: float = 0.04
    """Standard deviation of the angular velocity (radians per frame)."""
    shape_noise: float = 0.03
    """Standard deviation of each boundary wobble amplitude (Fourier orders 3-5, relative to the radius)."""
    contact: float = 0.9
    """Cells are pushed apart when their centres are closer than this fraction of the sum of their radii."""
    touching_fraction: float = 0.35
    """Fraction of the first-frame cells placed right against an already placed cell."""
    border_margin: int = 3
    """Smallest distance (pixels) between a cell and the field border."""
    marker_fraction: float = 0.35
    """TRA marker radius as a fraction of the cell's minor semi-axis."""
    marker_min_radius: float = 2.0
    """Smallest TRA marker radius (it shrinks further only where the cell is too thin)."""
    seg_frames: int = 12
    """Frames that get a gold-truth SEG file (``0X_GT/SEG``)."""
    seg_partial_frames: int = 4
    """How many of those annotate only a subset of the cells (at least one SEG frame stays complete)."""
    seg_partial_fraction: tuple[float, float] = (0.4, 0.8)
    """Fraction of the cells annotated in a partial SEG frame."""
    background: float = 200.0
    """Mean background level (grey values)."""
    background_gradient: float = 0.5
    """Relative background change across the field (linear ramp)."""
    background_blobs: float = 0.1
    """Relative standard deviation of the smooth background unevenness."""
    flicker: float = 0.02
    """Relative standard deviation of a per-frame illumination change."""
    cell_intensity: tuple[float, float] = (300.0, 600.0)
    """Signal a cell adds on top of the background at its centre."""
    dome: float = 0.3
    """Relative signal drop from a cell's centre to its edge."""
    texture: float = 0.2
    """Relative standard deviation of the low-frequency texture inside the cells."""
    rim_depth: float = 0.6
    """Relative signal drop at a cell's boundary (also between touching cells), so they stay separable."""
    rim_width: float = 1.5
    """Width (pixels) of that dark rim."""
    blur: float = 1.0
    """Gaussian blur sigma (pixels) of the optics."""
    gain: float = 1.0
    """Photons per grey value; Poisson noise is drawn on ``image * gain``."""
    read_noise: float = 6.0
    """Standard deviation (grey values) of the additive Gaussian noise."""

    def validate(self) -> None:
        """Check the parameters.

        Raises:
            RshnError: Naming the first invalid parameter and the allowed values.
        """

        def fail(name: str, rule: str) -> None:
            raise RshnError(f"synthetic parameter {name}={getattr(self, name)!r}: {rule}")

        def check_range(name: str, low: float, integer: bool = False) -> None:
            value = getattr(self, name)
            if len(value) != 2 or not all(np.isfinite(v) for v in value):
                fail(name, "expected a pair (low, high)")
            if integer and not all(float(v).is_integer() for v in value):
                fail(name, "expected two integers")
            if not low <= value[0] <= value[1]:
                fail(name, f"expected {low} <= low <= high")

        if not _is_integer(self.frames) or self.frames < 1:
            fail("frames", "expected an integer >= 1")
        if len(self.size) != 2 or not all(_is_integer(v) and v >= 32 for v in self.size):
            fail("size", "expected (H, W), two integers >= 32")
        check_range("cells", 1, integer=True)
        check_range("radius", 3.0)
        check_range("aspect", 1.0)
        check_range("mitoses", 0, integer=True)
        check_range("seg_partial_fraction", 0.0)
        if self.seg_partial_fraction[1] > 1.0:
            fail("seg_partial_fraction", "expected fractions in [0, 1]")
        check_range("cell_intensity", 0.0)
        largest_extent = self.radius[1] * (1.0 + _WOBBLE_LIMIT * len(_FOURIER_ORDERS)) * np.sqrt(self.mitotic_aspect)
        if 2 * (largest_extent + self.border_margin) > min(self.size):
            field_size = f"{self.size[0]}x{self.size[1]}"
            needed = int(np.ceil(2 * (largest_extent + self.border_margin)))
            fail("radius", f"cells this large do not fit into a {field_size} field; frames must be at least "
                           f"{needed} pixels on each side (rshn synth --size, or experiment.synthetic_size)")
        for name in ("elongation_frames", "min_cycle_frames", "border_margin", "seg_frames", "seg_partial_frames"):
            if not _is_integer(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "expected a non-negative integer")
        if self.elongation_frames < 1:
            fail("elongation_frames", "expected at least 1")
        if self.mitotic_aspect < 1.0:
            fail("mitotic_aspect", "expected >= 1")
        if not 0.0 <= self.persistence < 1.0:
            fail("persistence", "expected 0 <= persistence < 1")
        if not 0.0 < self.contact <= 1.0:
            fail("contact", "expected 0 < contact <= 1")
        for name in ("touching_fraction", "growth_rate", "dome", "rim_depth"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                fail(name, "expected a value in [0, 1]")
        for name in (
            "mitotic_brightness",
            "speed",
            "rotation",
            "shape_noise",
            "marker_fraction",
            "marker_min_radius",
            "background",
            "background_gradient",
            "background_blobs",
            "flicker",
            "texture",
            "rim_width",
            "blur",
            "read_noise",
        ):
            if not getattr(self, name) >= 0.0:
                fail(name, "expected a non-negative number")
        if not self.gain > 0.0:
            fail("gain", "expected a positive number")

    def to_dict(self) -> dict:
        """The parameters as plain YAML-friendly values (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict) -> SyntheticParams:
        """Parameters from :meth:`to_dict` output (for example the ``params`` of ``synthetic.yaml``).

        Raises:
            RshnError: On an unknown key or an invalid value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RshnError(
                f"synthetic parameters: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        params = cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})
        params.validate()
        return params


@dataclass
class SyntheticSequence:
    """One synthetic video with its ground truth (all arrays in memory).

    Attributes:
        frames: Raw images, (T, H, W) uint16.
        labels: Full instance masks, (T, H, W) int32; the value is the track id, 0 is background.
        markers: TRA markers, (T, H, W) int32: a small disk well inside each cell, value = track id.
        tracks: (N, 4) int64 rows ``L B E P`` (label, first frame, last frame, parent id or 0), sorted by label.
        seg_frames: Sorted frame indices that have a gold-truth SEG annotation.
        seg_complete: For each SEG frame, whether every cell is annotated.
        seg_masks: (len(seg_frames), H, W) int32 SEG annotations; labels are 1..k in a random order and
            differ from the track ids, as in real CTC SEG files.
        seed: The seed the video was generated from.
        params: The generator parameters.
    """

    frames: np.ndarray
    labels: np.ndarray
    markers: np.ndarray
    tracks: np.ndarray
    seg_frames: np.ndarray
    seg_complete: np.ndarray
    seg_masks: np.ndarray
    seed: int
    params: SyntheticParams = field(repr=False)


@dataclass
class _Cell:
    """Mutable state of one simulated cell."""

    label: int
    parent: int
    born: int
    centre: np.ndarray  # (y, x)
    velocity: np.ndarray  # (vy, vx)
    radius: float
    radius_target: float
    log_aspect: float
    log_aspect_target: float
    theta: float  # orientation of the major axis, radians from the x axis towards y
    omega: float
    amplitudes: np.ndarray  # boundary wobble per Fourier order
    phases: np.ndarray
    intensity: float
    texture: np.ndarray
    division_frame: int = -1  # frame in which the daughters appear, -1 = none scheduled

    def mitotic_progress(self, t: int, elongation_frames: int) -> float:
        """0 outside mitosis, rising to 1 in the last frame before the split."""
        if self.division_frame < 0:
            return 0.0
        start = self.division_frame - elongation_frames
        return float(np.clip((t - start + 1) / elongation_frames, 0.0, 1.0))

    def geometry(self, progress: float, params: SyntheticParams) -> tuple[float, float, float]:
        """Semi-axes (a, b) with a >= b and orientation theta as rendered."""
        aspect = np.exp(self.log_aspect) * (1.0 - progress) + params.mitotic_aspect * progress
        aspect = max(aspect, 1.0)
        return self.radius * np.sqrt(aspect), self.radius / np.sqrt(aspect), self.theta


def _is_integer(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _ornstein_uhlenbeck(value, persistence: float, std: float, rng: np.random.Generator) -> np.ndarray:
    """One step of an Ornstein-Uhlenbeck process whose stationary standard deviation is ``std``."""
    value = np.asarray(value, float)
    return persistence * value + np.sqrt(1.0 - persistence**2) * rng.normal(0.0, std, value.shape)


def _directional_radius(a: float, b: float, angle: float) -> float:
    """Distance from an ellipse's centre to its boundary at ``angle`` from the major axis (semi-axes a, b)."""
    return a * b / math.hypot(b * math.cos(angle), a * math.sin(angle))


def sequence_seed(seed: int, name: str) -> int:
    """The seed of sequence ``name`` ("01", "02", ...) in a dataset written with ``seed``.

    Derived from both, so sequences differ and each one can be regenerated alone with :func:`generate_sequence`.
    """
    state = np.random.SeedSequence([int(seed), zlib.crc32(name.encode("utf-8"))]).generate_state(1)
    return int(state[0])


def generate_sequence(params: SyntheticParams | None = None, *, seed: int = 0) -> SyntheticSequence:
    """Simulate one video with its ground truth.

    Args:
        params: Generator parameters; defaults to ``SyntheticParams()`` (40 frames of 256 x 256).
        seed: Non-negative integer; the same seed and parameters give identical arrays.

    Returns:
        The video, full masks, TRA markers, tracks and SEG annotations.

    Raises:
        RshnError: If a parameter or the seed is invalid.
    """
    params = SyntheticParams() if params is None else params
    params.validate()
    if not _is_integer(seed) or seed < 0:
        raise RshnError(f"synthetic seed {seed!r}: expected a non-negative integer")
    rng = np.random.default_rng(int(seed))
    return _Simulator(params, rng).run(int(seed))


class _Simulator:
    """Runs the cell simulation and renders every frame (one instance per video)."""

    def __init__(self, params: SyntheticParams, rng: np.random.Generator) -> None:
        self.p = params
        self.rng = rng
        self.height, self.width = (int(v) for v in params.size)
        self.next_label = 1
        self.cells: list[_Cell] = []
        self.tracks: dict[int, list[int]] = {}

    # ------------------------------------------------------------------ simulation
    def run(self, seed: int) -> SyntheticSequence:
        p = self.p
        n_frames = p.frames
        shape = (n_frames, self.height, self.width)
        frames = np.zeros(shape, np.uint16)
        labels = np.zeros(shape, np.int32)
        markers = np.zeros(shape, np.int32)

        background = self._background()
        division_frames = self._division_schedule()
        self._place_initial_cells()
        for t in range(n_frames):
            if t > 0:
                self._divide(t)
            for t_division in division_frames:
                if max(0, t_division - p.elongation_frames) == t:
                    self._start_mitosis(t, t_division)
            if t > 0:
                self._move(t)
            signal = self._render(t, labels[t], markers[t])
            frames[t] = self._image(background, signal)
        tracks = np.array(
            [[label, begin, end, parent] for label, (begin, end, parent) in sorted(self.tracks.items())],
            dtype=np.int64,
        ).reshape(-1, 4)
        seg_frames, seg_complete, seg_masks = self._seg_annotations(labels)
        return SyntheticSequence(
            frames=frames,
            labels=labels,
            markers=markers,
            tracks=tracks,
            seg_frames=seg_frames,
            seg_complete=seg_complete,
            seg_masks=seg_masks,
            seed=seed,
            params=p,
        )

    def _new_cell(self, centre: np.ndarray, radius: float, born: int, parent: int = 0) -> _Cell:
        p, rng = self.p, self.rng
        log_aspect_target = float(np.log(rng.uniform(*p.aspect)))
        noise = rng.standard_normal((_TEXTURE_SIZE, _TEXTURE_SIZE))
        texture = ndimage.gaussian_filter(noise, _TEXTURE_SMOOTHING, mode="wrap")
        texture = (texture - texture.mean()) / max(texture.std(), 1e-12)
        axis_speed = p.speed / np.sqrt(2.0)
        cell = _Cell(
            label=self.next_label,
            parent=parent,
            born=born,
            centre=np.asarray(centre, float),
            velocity=rng.normal(0.0, axis_speed, 2),
            radius=float(radius),
            radius_target=float(rng.uniform(*p.radius)),
            log_aspect=log_aspect_target,
            log_aspect_target=log_aspect_target,
            theta=float(rng.uniform(0.0, np.pi)),
            omega=float(rng.normal(0.0, p.rotation)),
            amplitudes=rng.normal(0.0, p.shape_noise, len(_FOURIER_ORDERS)),
            phases=rng.uniform(0.0, 2 * np.pi, len(_FOURIER_ORDERS)),
            intensity=float(rng.uniform(*p.cell_intensity)),
            texture=texture.astype(np.float32),
        )
        self.tracks[cell.label] = [born, born, parent]
        self.next_label += 1
        return cell

    def _half_extent(self, cell: _Cell, progress: float) -> np.ndarray:
        """Half height and half width of the axis-aligned box around the cell."""
        a, b, theta = cell.geometry(progress, self.p)
        wobble = 1.0 + float(np.abs(cell.amplitudes).sum()) * (1.0 - progress)
        return wobble * np.array(
            [np.hypot(a * np.sin(theta), b * np.cos(theta)), np.hypot(a * np.cos(theta), b * np.sin(theta))]
        )

    def _place_initial_cells(self) -> None:
        p, rng = self.p, self.rng
        n_cells = int(rng.integers(p.cells[0], p.cells[1] + 1))
        placed: list[tuple[np.ndarray, float]] = []
        for _ in range(n_cells):
            radius = float(rng.uniform(*p.radius))
            lo = p.border_margin + radius * 1.3
            hi = np.array([self.height, self.width]) - 1 - lo
            touching = bool(placed) and rng.random() < p.touching_fraction
            centre = None
            for _attempt in range(200):
                if touching:
                    other_centre, other_radius = placed[int(rng.integers(len(placed)))]
                    angle = rng.uniform(0.0, 2 * np.pi)
                    distance = 0.95 * (radius + other_radius)
                    candidate = other_centre + distance * np.array([np.sin(angle), np.cos(angle)])
                else:
                    candidate = rng.uniform(lo, hi)
                if np.any(candidate < lo) or np.any(candidate > hi):
                    continue
                if all(np.linalg.norm(candidate - c) >= 0.93 * (radius + r) for c, r in placed):
                    centre = candidate
                    break
            if centre is None:
                continue  # the field is full; fewer cells than drawn
            placed.append((centre, radius))
            self.cells.append(self._new_cell(centre, radius, born=0))
        LOG.debug("placed %d of %d initial cells", len(self.cells), n_cells)

    def _division_schedule(self) -> list[int]:
        """Frames in which daughters appear, spread over the video (stratified draws)."""
        p, rng = self.p, self.rng
        n_mitoses = int(rng.integers(p.mitoses[0], p.mitoses[1] + 1))
        if p.frames < 3 or n_mitoses == 0:
            return []
        first = min(p.elongation_frames, p.frames - 2)
        last = p.frames - 2  # daughters live at least two frames
        edges = np.floor(np.linspace(first, last + 1, n_mitoses + 1)).astype(int)
        frames = [int(rng.integers(lo, max(hi, lo + 1))) for lo, hi in zip(edges[:-1], edges[1:])]
        return sorted(min(f, last) for f in frames)

    def _start_mitosis(self, t: int, t_division: int) -> None:
        """Choose a free cell (preferably one that has lived a full cycle) to divide at ``t_division``."""
        free = [c for c in self.cells if c.division_frame < 0]
        mature = [c for c in free if t - c.born >= self.p.min_cycle_frames]
        candidates = mature or free
        if not candidates:
            LOG.warning("synthetic video: no free cell to divide at frame %d; one mitosis fewer", t_division)
            return
        candidates[int(self.rng.integers(len(candidates)))].division_frame = t_division

    def _divide(self, t: int) -> None:
        """Replace every cell scheduled to split at frame ``t`` by its two daughters."""
        p, rng = self.p, self.rng
        survivors = []
        for cell in self.cells:
            if cell.division_frame != t:
                survivors.append(cell)
                continue
            self.tracks[cell.label][1] = t - 1
            a, b, theta = cell.geometry(1.0, p)
            axis = np.array([np.sin(theta), np.cos(theta)])
            half = a / 2.0
            offset = p.contact * half  # the halves overlap a little, so the daughters share a boundary
            if half >= b:
                daughter_theta, log_aspect = theta, np.log(half / b)
            else:
                daughter_theta, log_aspect = theta + np.pi / 2, np.log(b / half)
            for sign in (-1.0, 1.0):
                centre = cell.centre + sign * offset * axis
                daughter = self._new_cell(centre, np.sqrt(half * b), born=t, parent=cell.label)
                daughter.theta = daughter_theta
                daughter.log_aspect = float(log_aspect)
                daughter.velocity = cell.velocity / 2.0 + sign * 0.5 * p.speed * axis
                daughter.intensity = cell.intensity * float(rng.uniform(0.9, 1.1))
                survivors.append(daughter)
        self.cells = survivors

    def _move(self, t: int) -> None:
        """One time step: random motion, deformation, growth, contact forces, walls."""
        p, rng = self.p, self.rng
        for cell in self.cells:
            cell.velocity = _ornstein_uhlenbeck(cell.velocity, p.persistence, p.speed / np.sqrt(2.0), rng)
            if cell.born < t:  # daughters start where the split put them, pressed together
                cell.centre = cell.centre + cell.velocity
            cell.omega = float(_ornstein_uhlenbeck(cell.omega, _ROTATION_PERSISTENCE, p.rotation, rng))
            cell.theta = float(cell.theta + cell.omega)
            cell.log_aspect += _ASPECT_RELAXATION * (cell.log_aspect_target - cell.log_aspect)
            cell.log_aspect = max(cell.log_aspect + float(rng.normal(0.0, _ASPECT_NOISE)), 0.0)
            cell.radius += p.growth_rate * (cell.radius_target - cell.radius)
            amplitudes = _ornstein_uhlenbeck(cell.amplitudes, _WOBBLE_PERSISTENCE, p.shape_noise, rng)
            cell.amplitudes = np.clip(amplitudes, -_WOBBLE_LIMIT, _WOBBLE_LIMIT)
            cell.phases = cell.phases + rng.normal(0.0, _PHASE_NOISE, len(_FOURIER_ORDERS))
            self.tracks[cell.label][1] = t
        self._resolve_contacts(t)
        self._keep_inside(t)

    def _resolve_contacts(self, t: int) -> None:
        """Push overlapping cells apart until they only touch (a few relaxation sweeps over all pairs)."""
        p = self.p
        shapes = [c.geometry(c.mitotic_progress(t, p.elongation_frames), p) for c in self.cells]
        centres = [[float(c.centre[0]), float(c.centre[1])] for c in self.cells]
        for _sweep in range(4):
            for i in range(len(centres)):
                a_i, b_i, theta_i = shapes[i]
                for j in range(i + 1, len(centres)):
                    a_j, b_j, theta_j = shapes[j]
                    dy, dx = centres[j][0] - centres[i][0], centres[j][1] - centres[i][1]
                    distance = math.hypot(dy, dx)
                    if distance >= p.contact * (a_i + a_j):
                        continue
                    if distance < 1e-9:
                        dy, dx, distance = 0.0, 1e-9, 1e-9
                    angle = math.atan2(dy, dx)
                    reach = _directional_radius(a_i, b_i, angle - theta_i) + _directional_radius(
                        a_j, b_j, angle - theta_j
                    )
                    overlap = p.contact * reach - distance
                    if overlap > 0:
                        shift_y, shift_x = 0.5 * overlap * dy / distance, 0.5 * overlap * dx / distance
                        centres[i][0] -= shift_y
                        centres[i][1] -= shift_x
                        centres[j][0] += shift_y
                        centres[j][1] += shift_x
        for cell, centre in zip(self.cells, centres):
            cell.centre = np.array(centre)

    def _keep_inside(self, t: int) -> None:
        """Clamp every cell into the field, turning its velocity inwards at the wall."""
        p = self.p
        field_max = np.array([self.height - 1, self.width - 1], float)
        for cell in self.cells:
            extent = self._half_extent(cell, cell.mitotic_progress(t, p.elongation_frames)) + p.border_margin
            lo, hi = extent, field_max - extent
            for axis in range(2):
                if lo[axis] > hi[axis]:
                    cell.centre[axis] = field_max[axis] / 2
                elif cell.centre[axis] < lo[axis]:
                    cell.centre[axis] = lo[axis]
                    cell.velocity[axis] = abs(cell.velocity[axis])
                elif cell.centre[axis] > hi[axis]:
                    cell.centre[axis] = hi[axis]
                    cell.velocity[axis] = -abs(cell.velocity[axis])

    # ------------------------------------------------------------------ rendering
    def _background(self) -> np.ndarray:
        """Static uneven illumination: a linear ramp plus smooth blobs, mean ``params.background``."""
        p, rng = self.p, self.rng
        yy, xx = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        angle = rng.uniform(0.0, 2 * np.pi)
        ramp = (yy / self.height - 0.5) * np.sin(angle) + (xx / self.width - 0.5) * np.cos(angle)
        coarse = rng.standard_normal((6, 6))
        blobs = ndimage.zoom(coarse, (self.height / 6, self.width / 6), order=3, mode="grid-mirror", grid_mode=True)
        blobs = blobs[: self.height, : self.width]
        blobs = (blobs - blobs.mean()) / max(blobs.std(), 1e-12)
        return (p.background * (1.0 + p.background_gradient * ramp + p.background_blobs * blobs)).astype(np.float32)

    def _render(self, t: int, labels: np.ndarray, markers: np.ndarray) -> np.ndarray:
        """Fill ``labels`` and ``markers`` of frame ``t``; return the noiseless cell signal."""
        p = self.p
        best = np.full(labels.shape, np.inf, np.float32)
        crops = []
        for cell in self.cells:
            progress = cell.mitotic_progress(t, p.elongation_frames)
            a, b, theta = cell.geometry(progress, p)
            extent = self._half_extent(cell, progress) + 2.0
            y0, x0 = np.maximum(np.floor(cell.centre - extent).astype(int), 0)
            y1, x1 = np.minimum(np.ceil(cell.centre + extent).astype(int) + 1, labels.shape)
            dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cell.centre[0])
            dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cell.centre[1])
            cos, sin = np.float32(math.cos(theta)), np.float32(math.sin(theta))
            un = (dx * cos + dy * sin) / np.float32(a)
            vn = (dy * cos - dx * sin) / np.float32(b)
            angle = np.arctan2(vn, un)
            wobble = np.ones_like(angle)
            for order, amplitude, phase in zip(_FOURIER_ORDERS, cell.amplitudes, cell.phases):
                weight = np.float32(amplitude * (1.0 - progress))
                wobble += weight * np.cos(np.float32(order) * angle + np.float32(phase))
            distance = np.hypot(un, vn) / wobble
            window = (slice(y0, y1), slice(x0, x1))
            claim = (distance < 1.0) & (distance < best[window])
            best[window][claim] = distance[claim]
            labels[window][claim] = cell.label
            crops.append((cell, progress, b, window, un, vn, distance))

        signal = np.zeros(labels.shape, np.float32)
        for cell, progress, b, window, un, vn, distance in crops:
            mask = labels[window] == cell.label
            components, n_components = ndimage.label(mask)
            if n_components > 1:
                sizes = np.bincount(components.ravel())[1:]
                keep = int(np.argmax(sizes)) + 1
                labels[window][mask & (components != keep)] = 0
                mask = components == keep
            if not mask.any():
                raise RuntimeError(f"synthetic video: cell {cell.label} vanished in frame {t} (generator bug)")
            inside = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
            self._marker(cell, b, window, mask, inside, markers)
            brightness = cell.intensity * (1.0 + (p.mitotic_brightness - 1.0) * progress)
            rows = (un[mask] + 1.25) / 2.5 * (_TEXTURE_SIZE - 1)
            cols = (vn[mask] + 1.25) / 2.5 * (_TEXTURE_SIZE - 1)
            texture = ndimage.map_coordinates(cell.texture, [rows, cols], order=1, mode="grid-wrap")
            value = (
                brightness
                * (1.0 - p.dome * distance[mask] ** 2)
                * np.maximum(1.0 + p.texture * texture, 0.0)
                * (1.0 - p.rim_depth * np.exp(-(inside[mask] - 1.0) / max(p.rim_width, 1e-6)))
            )
            signal[window][mask] = value
        return signal

    def _marker(
        self,
        cell: _Cell,
        minor_axis: float,
        window: tuple[slice, slice],
        mask: np.ndarray,
        inside: np.ndarray,
        markers: np.ndarray,
    ) -> None:
        """Draw the TRA marker: a disk around the cell centre, moved inwards where the cell is squeezed."""
        p = self.p
        radius = max(p.marker_min_radius, p.marker_fraction * minor_axis)
        centre = np.round(cell.centre).astype(int) - np.array([window[0].start, window[1].start])
        if np.all(centre >= 0) and np.all(centre < mask.shape) and inside[tuple(centre)] >= radius + 1.0:
            point = centre
        else:
            point = np.array(np.unravel_index(int(np.argmax(inside)), inside.shape))
        radius = min(radius, float(inside[tuple(point)]) - 1.0)
        yy, xx = np.ogrid[0 : mask.shape[0], 0 : mask.shape[1]]
        disk = ((yy - point[0]) ** 2 + (xx - point[1]) ** 2 <= radius**2) & mask
        markers[window][disk] = cell.label

    def _image(self, background: np.ndarray, signal: np.ndarray) -> np.ndarray:
        """Optics and camera: blur, illumination flicker, Poisson and Gaussian noise, uint16."""
        p, rng = self.p, self.rng
        image = background * np.float32(1.0 + rng.normal(0.0, p.flicker)) + signal
        if p.blur > 0:
            image = ndimage.gaussian_filter(image, p.blur, mode="nearest")
        image = (rng.poisson(np.maximum(image, 0.0) * p.gain) / p.gain).astype(np.float32)
        image = image + np.float32(p.read_noise) * rng.standard_normal(image.shape, dtype=np.float32)
        return np.clip(np.round(image), 0, np.iinfo(np.uint16).max).astype(np.uint16)

    # ------------------------------------------------------------------ SEG annotations
    def _seg_annotations(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Choose SEG frames, annotate all cells (complete) or a random subset (partial), relabel 1..k randomly."""
        p, rng = self.p, self.rng
        n_seg = min(p.seg_frames, p.frames)
        seg_frames = np.sort(rng.choice(p.frames, size=n_seg, replace=False)).astype(np.int64)
        n_partial = min(p.seg_partial_frames, max(n_seg - 1, 0))
        partial = set(rng.choice(seg_frames, size=n_partial, replace=False).tolist()) if n_partial else set()
        complete = np.ones(n_seg, bool)
        masks = np.zeros((n_seg,) + labels.shape[1:], np.int32)
        for index, t in enumerate(seg_frames):
            present = np.unique(labels[t])
            present = present[present > 0]
            chosen = present
            if t in partial and len(present) > 1:
                k = int(round(rng.uniform(*p.seg_partial_fraction) * len(present)))
                k = min(max(k, 1), len(present) - 1)
                chosen = np.sort(rng.choice(present, size=k, replace=False))
            complete[index] = len(chosen) == len(present)
            lookup = np.zeros(int(labels[t].max()) + 1, np.int32)
            lookup[chosen] = rng.permutation(len(chosen)) + 1
            masks[index] = lookup[labels[t]]
        return seg_frames, complete, masks


# ---------------------------------------------------------------------- writing a CTC layout
def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    frames: int | None = None,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    sequences: tuple[str, ...] = ("01", "02"),
    params: SyntheticParams | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset in the CTC training layout.

    For every sequence name ``0X``: ``0X/tNNN.tif`` (uint16 frames), ``0X_GT/TRA/man_trackNNN.tif`` +
    ``man_track.txt``, ``0X_GT/SEG/man_segNNN.tif`` on ``params.seg_frames`` frames (some complete, some partial)
    and ``0X_ST/SEG/man_segNNN.tif`` (full masks with track ids) on every frame. ``synthetic.yaml`` records the
    parameters and seeds. The dataset is written into a temporary folder beside ``out_dir`` and renamed at the
    end, so ``out_dir`` never holds a half-written dataset.

    Args:
        out_dir: Dataset folder to create.
        frames: Frames per sequence; overrides ``params.frames`` (default 40).
        size: Frame size (H, W); overrides ``params.size`` (default (256, 256)).
        seed: Dataset seed; each sequence derives its own seed from it and its name (:func:`sequence_seed`).
        sequences: Sequence names, two digits each.
        params: Generator parameters; defaults to ``SyntheticParams()``.
        overwrite: Replace ``out_dir`` if it exists and is not empty.

    Returns:
        The dataset folder.

    Raises:
        RshnError: On invalid arguments, or if ``out_dir`` is a file or a non-empty folder and not ``overwrite``.
    """
    params = SyntheticParams() if params is None else params
    if frames is not None:
        params = dataclasses.replace(params, frames=int(frames))
    if size is not None:
        params = dataclasses.replace(params, size=tuple(int(v) for v in size))
    params.validate()
    if not _is_integer(seed) or seed < 0:
        raise RshnError(f"synthetic seed {seed!r}: expected a non-negative integer")
    sequences = tuple(sequences)
    for name in sequences:
        if not isinstance(name, str) or not re.fullmatch(r"\d{2}", name):
            raise RshnError(f"synthetic sequence name {name!r}: expected two digits such as '01'")
    if not sequences or len(set(sequences)) != len(sequences):
        raise RshnError(f"synthetic sequences {sequences!r}: expected one or more distinct names")

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RshnError(f"{out_dir}: exists and is not a folder; choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise RshnError(f"{out_dir}: folder exists and is not empty; choose another path or replace it with "
                        f"--overwrite")
    prepare_output(out_dir, "dataset folder")
    with atomic_folder(out_dir) as temp_dir:
        seeds = {}
        for name in sequences:
            seeds[name] = sequence_seed(seed, name)
            LOG.info("synthetic sequence %s (seed %d): %d frames of %s", name, seeds[name], params.frames, params.size)
            _write_sequence(temp_dir, name, generate_sequence(params, seed=seeds[name]))
        metadata = {
            "generator": "data_io.synthetic",
            "generator_version": GENERATOR_VERSION,
            "seed": int(seed),
            "sequence_seeds": seeds,
            "params": params.to_dict(),
        }
        with open(temp_dir / METADATA_FILE, "w", encoding="utf-8", newline="\n") as handle:
            yaml.safe_dump(metadata, handle, sort_keys=False)
    return out_dir


def _write_sequence(root: Path, name: str, sequence: SyntheticSequence) -> None:
    """Write one sequence's CTC folders below ``root``."""
    n_frames = sequence.frames.shape[0]
    digits = 3 if n_frames <= 1000 else 4
    raw_dir = root / name
    tra_dir = root / f"{name}_GT" / "TRA"
    seg_dir = root / f"{name}_GT" / "SEG"
    st_dir = root / f"{name}_ST" / "SEG"
    for folder in (raw_dir, tra_dir, seg_dir, st_dir):
        folder.mkdir(parents=True)
    for t in range(n_frames):
        index = f"{t:0{digits}d}"
        write_tiff(raw_dir / f"t{index}.tif", sequence.frames[t])
        write_tiff(tra_dir / f"man_track{index}.tif", sequence.markers[t].astype(np.uint16))
        write_tiff(st_dir / f"man_seg{index}.tif", sequence.labels[t].astype(np.uint16))
    for t, mask in zip(sequence.seg_frames, sequence.seg_masks):
        write_tiff(seg_dir / f"man_seg{int(t):0{digits}d}.tif", mask.astype(np.uint16))
    write_track_file(tra_dir / "man_track.txt", sequence.tracks)
