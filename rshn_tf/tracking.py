"""Propagating 2-frame instances over time and finishing the cell lineage (paper §2.5, §4.2; docs/fidelity.md §7).

Two stages:

* :class:`PairTracker` (network grid, incremental): links the labels of consecutive frame pairs ⟨t, t+1⟩ and
  ⟨t+1, t+2⟩ by greedy highest IoU on the shared frame t+1, gives unmatched instances of frame t+2 new ids and
  repairs false mitoses that split and re-merge within t_merge frames.
  Only the last ``merge_search_frames`` + 2 frames can still change; older ones are handed out
  (:meth:`PairTracker.release_finished`), so the tracker's memory does not grow with the video.
* :func:`finalize_stream` (original grid, after resampling back): removes parent-less tracks shorter than
  t_length, removes instances lying wholly inside the un-annotated CTC border band (splitting their tracks),
  numbers tracks 1..N, finds the parent of every new track by IoU with previous frames and makes the lineage
  consistent with the CTC rules (a parent ends before its children start; ids are never reused). It reads the
  frames one at a time from a store (:class:`LabelFrames`, e.g. on disk); :func:`finalize_tracks` runs it on an
  array.

Everything works on whole label images with counting (``np.bincount``) and bounding boxes
(``scipy.ndimage.find_objects``); Python loops run over tracks, instances or events, never over the pixels of an
image per label. This module must not import TensorFlow.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol, Sequence

import numpy as np
from scipy import ndimage

from rshn_tf.config import TrackingConfig
from rshn_tf.tiling import relabel_consecutive

log = logging.getLogger(__name__)


def overlap_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count the pixels of every pair of labels (label in ``a``, label in ``b``) at the same positions.

    Args:
        a: Integer label image (any shape, non-negative).
        b: Integer label image of the same shape.

    Returns:
        ``(labels_a, labels_b, counts)``: 1-D arrays over all pairs with a non-zero count (label 0 included),
        sorted by ``labels_a`` then ``labels_b``.
    """
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"label images differ in size: {a.size} vs {b.size}")
    ids_a = np.flatnonzero(np.bincount(a))
    ids_b = np.flatnonzero(np.bincount(b))
    lut_a = np.zeros(ids_a[-1] + 1 if ids_a.size else 1, dtype=np.int64)
    lut_a[ids_a] = np.arange(ids_a.size)
    lut_b = np.zeros(ids_b[-1] + 1 if ids_b.size else 1, dtype=np.int64)
    lut_b[ids_b] = np.arange(ids_b.size)
    codes = lut_a[a] * ids_b.size + lut_b[b]
    counts = np.bincount(codes, minlength=ids_a.size * ids_b.size)
    nonzero = np.flatnonzero(counts)
    return ids_a[nonzero // ids_b.size], ids_b[nonzero % ids_b.size], counts[nonzero]


def greedy_iou_matching(previous: np.ndarray, current: np.ndarray, threshold: float) -> dict[int, int]:
    """Match the labels of two label images of the same frame by greedy highest IoU (docs/fidelity.md §7.1).

    The IoU matrix includes label 0 (background) on both sides; repeatedly the pair with the largest IoU is taken
    and its row and column removed, until the largest remaining IoU is below ``threshold``.

    Args:
        previous: Labels of the frame from the earlier pair (track ids).
        current: Labels of the same frame from the new pair.
        threshold: Minimum IoU of a match (``tracking.link_iou_threshold``).

    Returns:
        Mapping ``current label → previous label`` for matched pairs (may contain 0 on either side).
    """
    ids_p, ids_c, inter = overlap_counts(previous, current)
    area_p = np.bincount(previous.ravel())
    area_c = np.bincount(current.ravel())
    iou = inter / (area_p[ids_p] + area_c[ids_c] - inter)
    order = np.lexsort((ids_c, ids_p, -iou))  # largest IoU first, ties by label
    used_p: set[int] = set()
    mapping: dict[int, int] = {}
    for index in order:
        if iou[index] < threshold:
            break
        p, c = int(ids_p[index]), int(ids_c[index])
        if p in used_p or c in mapping:
            continue
        used_p.add(p)
        mapping[c] = p
    return mapping


class PairTracker:
    """Incremental linking of 2-frame label images into one label stack with track ids (paper §2.5, Fig. 5).

    Feed the pairs ⟨0, 1⟩, ⟨1, 2⟩, … in order with :meth:`add_pair`. Only the last :attr:`window` frames can still
    change (pair linking reads the last frame, the t_merge repair relabels at most ``merge_search_frames`` + 1
    frames back and looks one frame further), so :meth:`release_finished` hands out every older frame for good and
    the tracker's memory does not grow with the video. :attr:`labels` is the (T, H, W) stack while nothing has been
    released.

    Args:
        config: ``link_iou_threshold``, ``merge_search_frames`` and ``parent_iou_threshold`` are read.
    """

    def __init__(self, config: TrackingConfig):
        self.config = config
        #: Frames that later pairs may still read or relabel (``merge_search_frames`` + 2).
        self.window = config.merge_search_frames + 2
        self._frames: list[np.ndarray] = []
        self._offset = 0  # global index of self._frames[0]
        self._first: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._next_id = 1

    @property
    def num_frames(self) -> int:
        """Frames tracked so far (released or not)."""
        return self._offset + len(self._frames)

    @property
    def labels(self) -> np.ndarray:
        """The tracked label stack (T, H, W) int32 (a copy); only while no frame has been released."""
        if self._offset:
            raise ValueError(f"frames 0 … {self._offset - 1} were released; the whole stack is no longer held")
        return np.stack(self._frames) if self._frames else np.zeros((0, 0, 0), dtype=np.int32)

    def release_finished(self) -> list[tuple[int, np.ndarray]]:
        """Hand out the frames no later pair can change, in order, and forget them.

        Returns:
            ``(t, labels)`` for every frame t older than the last :attr:`window` frames not released before.
        """
        count = max(len(self._frames) - self.window, 0)
        return self._release(count)

    def release_all(self) -> list[tuple[int, np.ndarray]]:
        """Hand out every frame not released yet (after the last pair), in order."""
        return self._release(len(self._frames))

    def _release(self, count: int) -> list[tuple[int, np.ndarray]]:
        released = list(enumerate(self._frames[:count], start=self._offset))
        del self._frames[:count]
        self._offset += count
        return released

    def _frame(self, t: int) -> np.ndarray:
        if t < self._offset:
            raise RuntimeError(f"frame {t} was released before the tracker finished with it")
        return self._frames[t - self._offset]

    def state(self) -> tuple[dict, list[np.ndarray]]:
        """The tracker's state for a checkpoint: ``(numbers, frames)``; :meth:`restore` takes it back.

        ``numbers`` holds plain integers and lists (JSON-serialisable), ``frames`` the frames not released yet.
        """
        labels = list(self._first)
        numbers = {"offset": self._offset, "next_id": self._next_id, "labels": labels,
                   "first": [self._first[k] for k in labels], "last": [self._last[k] for k in labels]}
        return numbers, list(self._frames)

    def restore(self, numbers: dict, frames: Sequence[np.ndarray]) -> None:
        """Continue from a :meth:`state` (the frames before ``offset`` were released before it was taken)."""
        self._offset = int(numbers["offset"])
        self._next_id = int(numbers["next_id"])
        self._first = {int(k): int(v) for k, v in zip(numbers["labels"], numbers["first"])}
        self._last = {int(k): int(v) for k, v in zip(numbers["labels"], numbers["last"])}
        self._frames = [np.asarray(f, dtype=np.int32) for f in frames]

    def add_pair(self, pair: np.ndarray) -> None:
        """Link one 2-frame label image ⟨t+1, t+2⟩ to the stack and append its frame t+2.

        The first pair initialises the stack with both frames. For later pairs the labels of the pair's first frame
        are matched to the stack's last frame (:func:`greedy_iou_matching` with ``link_iou_threshold``); the
        mapping is applied to the pair's second frame, which is appended, and labels of that frame without a match
        get new ids. An instance whose best match is the background of the stack's frame counts as unmatched (the
        code would map it to background and so erase it). Then false mitoses are repaired (:meth:`_repair`).

        Args:
            pair: (2, H, W) integer labels of one frame pair, 0 = background.
        """
        pair = np.asarray(pair)
        if pair.ndim != 3 or pair.shape[0] != 2:
            raise ValueError(f"a frame pair must have shape (2, H, W), got {pair.shape}")
        if self._frames and pair.shape[1:] != self._frames[-1].shape:
            raise ValueError(f"pair of size {pair.shape[1:]} does not match the stack's {self._frames[-1].shape}")
        pair = pair.astype(np.int32, copy=False)
        if not self.num_frames:
            pair = relabel_consecutive(pair)
            self._next_id = int(pair.max(initial=0)) + 1
            for t in (0, 1):
                self._append(pair[t])
            return
        if not self._frames:
            raise ValueError("all frames were released; no pair can follow release_all()")
        mapping = greedy_iou_matching(self._frames[-1], pair[0], self.config.link_iou_threshold)
        second = pair[1]
        present = np.flatnonzero(np.bincount(second.ravel(), minlength=1))
        lut = np.zeros(int(present[-1]) + 1, dtype=np.int32)
        for label in present[present > 0]:
            target = mapping.get(int(label), 0)
            if target == 0:
                target = self._next_id
                self._next_id += 1
            lut[label] = target
        self._append(lut[second])
        self._repair()

    def _append(self, frame: np.ndarray) -> None:
        t = self.num_frames
        self._frames.append(frame)
        for label in np.flatnonzero(np.bincount(frame.ravel()))[1:]:
            self._first.setdefault(int(label), t)
            self._last[int(label)] = t

    def _repair(self) -> None:
        """Undo false mitoses (paper §2.5 t_merge; docs/fidelity.md §7.2).

        For each label a of frame t+1, b is the label of frame t+2 with the largest intersection (more than
        ``parent_iou_threshold`` of a's area). If b ≠ a, a's track spans at most ``merge_search_frames`` frames
        (last − first), and a's first mask overlaps b most in the frame before a started, a was a spurious split
        of b that re-merged: the whole track a is relabelled to b. A track starting in frame 0 has no frame before;
        the code repairs it anyway, the paper not (``merge_first_frame_tracks``).
        """
        t2 = self.num_frames - 1
        before, after = self._frame(t2 - 1), self._frame(t2)
        ids_a, ids_b, inter = overlap_counts(before, after)
        keep = (ids_a > 0) & (ids_b > 0)
        ids_a, ids_b, inter = ids_a[keep], ids_b[keep], inter[keep]
        if ids_a.size == 0:
            return
        area_a = np.bincount(before.ravel())
        # per label a, the b with the largest intersection (ties: smallest b)
        order = np.lexsort((ids_b, -inter, ids_a))
        first_rows = order[np.r_[True, ids_a[order][1:] != ids_a[order][:-1]]]
        renamed: dict[int, int] = {}
        for row in first_rows:
            a, b = int(ids_a[row]), int(ids_b[row])
            b = renamed.get(b, b)
            if a == b or a in renamed or inter[row] <= self.config.parent_iou_threshold * area_a[a]:
                continue
            first, last = self._first[a], self._last[a]
            if last - first > self.config.merge_search_frames:
                continue
            if first == 0 and not self.config.merge_first_frame_tracks:
                continue
            if first > 0 and self._best_overlap(self._frame(first) == a, self._frame(first - 1)) != b:
                continue
            for t in range(first, last + 1):
                frame = self._frame(t)
                frame[frame == a] = b
            self._first[b] = min(self._first[b], first)
            self._last[b] = max(self._last[b], last)
            del self._first[a], self._last[a]
            renamed[a] = b
            log.debug("t_merge: track %d (frames %d-%d) re-merged into %d", a, first, last, b)

    @staticmethod
    def _best_overlap(mask: np.ndarray, frame: np.ndarray) -> int:
        counts = np.bincount(frame[mask])
        counts[0] = 0
        return int(np.argmax(counts)) if counts.size > 1 and counts.max() > 0 else 0


# --------------------------------------------------------------------------------------------------------------
# Finalisation


def disk(radius: int) -> np.ndarray:
    """Boolean disk footprint x² + y² ≤ radius² of shape (2·radius + 1, 2·radius + 1)."""
    r = np.arange(-radius, radius + 1)
    return r[:, None] ** 2 + r[None, :] ** 2 <= radius ** 2


class LabelFrames(Protocol):
    """Read access to a (T, H, W) label stack frame by frame (in memory, or on disk:
    :class:`rshn_tf.label_store.LabelStore`)."""

    def __len__(self) -> int: ...

    def read(self, t: int) -> np.ndarray:
        """Frame t, (H, W) integer labels."""

    def read_box(self, t: int, box: tuple[slice, slice]) -> np.ndarray:
        """The part ``box`` of frame t."""


class ArrayFrames:
    """:class:`LabelFrames` of an in-memory (T, H, W) array."""

    def __init__(self, labels: np.ndarray):
        self.labels = labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def read(self, t: int) -> np.ndarray:
        """Frame t."""
        return self.labels[t]

    def read_box(self, t: int, box: tuple[slice, slice]) -> np.ndarray:
        """The part ``box`` of frame t."""
        return self.labels[t][box]


@dataclass
class _Segment:
    src: int  # label of the segment in the input stack
    first: int
    last: int
    parent: int = -1  # segment index, -1 = none
    alive: bool = True


@dataclass
class _FrameStats:
    """The instances of one frame: labels (ascending), areas, bounding boxes (y0, y1, x0, x1) and the pixels
    inside the border band's inner rectangle (``inner``, only with a border band): 36 bytes per instance."""

    ids: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray
    inner: Optional[np.ndarray]

    def position(self, src: int) -> int:
        """Index of label ``src`` in :attr:`ids`, or -1 when it is absent."""
        i = int(np.searchsorted(self.ids, src))
        return i if i < self.ids.size and self.ids[i] == src else -1


def frame_stats(frame: np.ndarray, border_band: int = 0) -> _FrameStats:
    """Labels, areas, bounding boxes and (with ``border_band`` > 0) inner-rectangle pixels of one label frame."""
    counts = np.bincount(frame.ravel())
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    objects = ndimage.find_objects(frame)
    boxes = np.array([(o[0].start, o[0].stop, o[1].start, o[1].stop) for o in (objects[i - 1] for i in ids)],
                     dtype=np.int32).reshape(-1, 4)
    inner = None
    if border_band > 0:
        H, W = frame.shape
        inner = np.bincount(frame[border_band:H - border_band, border_band:W - border_band].ravel(),
                            minlength=counts.size)[ids]
    return _FrameStats(ids.astype(np.int32), counts[ids].astype(np.int64), boxes, inner)


class _Lineage:
    """Tracks as contiguous segments of input labels; masks are only relabelled once at the end.

    Nothing per pixel is held: one streaming pass over the frames collects the instances of every frame
    (:class:`_FrameStats`, a few numbers per instance), and the parent search reads the few boxes it needs.
    """

    def __init__(self, frames: LabelFrames, border_band: int = 0):
        self.frames = frames
        self.T = len(frames)
        self.stats: list[_FrameStats] = []
        self.shape: tuple[int, int] = (0, 0)
        runs: list[tuple[int, int, int]] = []  # (label, first, last)
        open_runs: dict[int, int] = {}  # label -> first frame of its current run
        for t in range(self.T):
            frame = np.asarray(frames.read(t))
            self.shape = frame.shape
            stats = frame_stats(frame, border_band)
            self.stats.append(stats)
            present = set(stats.ids.tolist())
            for label in [k for k in open_runs if k not in present]:
                runs.append((label, open_runs.pop(label), t - 1))
            for label in stats.ids.tolist():
                open_runs.setdefault(label, t)
        runs.extend((label, first, self.T - 1) for label, first in open_runs.items())
        self.segments: list[_Segment] = []
        self._by_src: dict[int, list[int]] = {}  # label -> its alive segments, by first frame
        for label, first, last in sorted(runs):
            self.add(label, first, last)
        gaps = len(self.segments) - len(self._by_src)
        if gaps:
            log.info("%d tracks vanish in some frame and reappear (e.g. after resampling); split them", gaps)

    def add(self, src: int, first: int, last: int, parent: int = -1) -> int:
        index = len(self.segments)
        self.segments.append(_Segment(src, first, last, parent))
        indices = self._by_src.setdefault(src, [])
        indices.insert(bisect.bisect_left(indices, first, key=lambda i: self.segments[i].first), index)
        return index

    def remove(self, index: int) -> None:
        seg = self.segments[index]
        seg.alive = False
        self._by_src[seg.src].remove(index)

    def split(self, index: int, frame: int) -> int:
        """Cut segment ``index`` before ``frame``; the part from ``frame`` on becomes a new segment."""
        seg = self.segments[index]
        last = seg.last
        seg.last = frame - 1
        return self.add(seg.src, frame, last)

    def segment_at(self, t: int, src: int) -> int:
        """The alive segment of label ``src`` containing frame t, or -1."""
        indices = self._by_src.get(src)
        if not indices:
            return -1
        k = bisect.bisect_right(indices, t, key=lambda i: self.segments[i].first) - 1
        return indices[k] if k >= 0 and self.segments[indices[k]].last >= t else -1

    def area(self, t: int, src: int) -> int:
        stats = self.stats[t]
        i = stats.position(src)
        return int(stats.areas[i]) if i >= 0 else 0

    def alive(self) -> list[int]:
        return [i for i, s in enumerate(self.segments) if s.alive]

    def find_parent(self, index: int, config: TrackingConfig) -> int:
        """Parent of a segment by IoU with previous frames (docs/fidelity.md §7.6); -1 when none.

        The first mask, dilated with a disk of diameter ``parent_dilation``, is replicated over the
        k = min(``parent_search_frames``, first) previous frames; the IoU over that k-frame block is computed with
        every track present there, and the best one is the parent if its IoU exceeds ``parent_iou_threshold``.
        """
        seg = self.segments[index]
        f = seg.first
        if f == 0:
            return -1
        k = min(config.parent_search_frames, f)
        radius = config.parent_dilation // 2
        y0, y1, x0, x1 = self.stats[f].boxes[self.stats[f].position(seg.src)].tolist()
        H, W = self.shape
        box = (slice(max(y0 - radius, 0), min(y1 + radius, H)), slice(max(x0 - radius, 0), min(x1 + radius, W)))
        mask = self.frames.read_box(f, box) == seg.src
        if radius > 0:
            mask = ndimage.binary_dilation(mask, structure=disk(radius))
        counts: dict[int, int] = {}  # candidate segment -> pixels of the block under the mask
        for t in range(f - k, f):
            under = np.bincount(np.asarray(self.frames.read_box(t, box))[mask])
            for src in np.flatnonzero(under).tolist():
                candidate = self.segment_at(t, src)
                if candidate >= 0:
                    counts[candidate] = counts.get(candidate, 0) + int(under[src])
        if not counts:
            return -1
        ids = np.array(sorted(counts), dtype=np.int64)
        inter = np.array([counts[i] for i in ids.tolist()], dtype=np.int64)
        volume = np.zeros(ids.size)
        for j, cand in enumerate(ids.tolist()):
            other = self.segments[cand]
            lo, hi = max(other.first, f - k), min(other.last, f - 1)
            volume[j] = sum(self.area(t, other.src) for t in range(lo, hi + 1))
        iou = inter / (k * mask.sum() + volume - inter)
        best = int(np.argmax(iou))
        return int(ids[best]) if iou[best] > config.parent_iou_threshold else -1


def finalize_stream(
    frames: LabelFrames,
    config: TrackingConfig,
    border_band: int,
) -> tuple[np.ndarray, Iterator[tuple[int, np.ndarray]]]:
    """Finish the tracking result at the original resolution (docs/fidelity.md §7.3–§7.7, paper §2.5, §4.2), streaming.

    Reads the frames twice in order (once to collect the instances, once to relabel them) and a few bounding boxes
    in between; memory holds a few numbers per instance (label, area, box) but no image beyond the current one. Steps, in the order of the authors' code:

    0. Tracks that vanish in some frame and reappear (possible after resampling to the original size) are split
       into contiguous pieces.
    1. t_length: tracks shorter than ``min_track_length`` frames are removed, unless they have a parent.
    2. Border band: an instance lying wholly within ``border_band`` pixels of the image edge is removed from that
       frame; the rest of its track after that frame becomes a new track.
    3. Tracks are numbered 1..N by first frame (then input label).
    4. Every track starting after frame 0 gets the parent found by :meth:`_Lineage.find_parent` (or 0).
    5. CTC consistency: while a parent still exists at or after its child's first frame, the parent is split
       there; its continuation gets a new id whose parent is the parent, and its later children move to the
       continuation. Ids are never reused.

    Args:
        frames: The (T, H, W) integer label stack with track ids (e.g. the tracker's frames resampled back).
        config: ``min_track_length``, ``parent_dilation``, ``parent_search_frames``, ``parent_iou_threshold``.
        border_band: Width in pixels of the un-annotated image rim (``data.border_band``); 0 = no removal.

    Returns:
        ``(tracks, masks)``: the (N, 4) int64 array of ``L B E P`` rows, sorted by label, and an iterator over
        ``(t, labels)`` with the final (H, W) labels of every frame in order (it reads ``frames`` again as it goes).
    """
    lineage = _Lineage(frames, border_band)

    # 1. t_length, only for tracks without a parent
    for index in lineage.alive():
        seg = lineage.segments[index]
        if seg.last - seg.first + 1 < config.min_track_length and lineage.find_parent(index, config) < 0:
            lineage.remove(index)

    # 2. instances wholly inside the border band
    if border_band > 0:
        events: dict[int, list[int]] = {}
        for t, stats in enumerate(lineage.stats):
            for src in stats.ids[stats.inner == 0].tolist():
                index = lineage.segment_at(t, src)
                if index >= 0:
                    events.setdefault(index, []).append(t)
        for index, deleted in events.items():
            seg = lineage.segments[index]
            lineage.remove(index)
            bounds = [seg.first - 1] + sorted(deleted) + [seg.last + 1]
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                if hi - lo > 1:
                    lineage.add(seg.src, lo + 1, hi - 1)

    # 3. numbering by first frame
    alive = sorted(lineage.alive(), key=lambda i: (lineage.segments[i].first, lineage.segments[i].src))
    final_id = {index: n for n, index in enumerate(alive, start=1)}

    # 4. parents
    for index in alive:
        lineage.segments[index].parent = lineage.find_parent(index, config)

    # 5. CTC lineage consistency
    next_id = len(alive) + 1
    children = sorted((i for i in alive if lineage.segments[i].parent >= 0),
                      key=lambda i: (lineage.segments[i].first, final_id[i]))
    for child in children:
        c = lineage.segments[child]
        p = lineage.segments[c.parent]
        if p.last < c.first:
            continue
        parent = c.parent
        continuation = lineage.split(parent, c.first)
        lineage.segments[continuation].parent = parent
        final_id[continuation] = next_id
        next_id += 1
        for other in children:
            o = lineage.segments[other]
            if o.parent == parent and o.first > c.first:
                o.parent = continuation

    rows = [(n, lineage.segments[i].first, lineage.segments[i].last, final_id.get(lineage.segments[i].parent, 0))
            for i, n in final_id.items()]
    tracks = np.array(rows, dtype=np.int64).reshape(-1, 4)
    tracks = tracks[np.argsort(tracks[:, 0], kind="stable")]

    def masks() -> Iterator[tuple[int, np.ndarray]]:
        """Relabel the masks once, frame by frame."""
        for t in range(lineage.T):
            frame = np.asarray(frames.read(t))
            ids = lineage.stats[t].ids
            lut = np.zeros(int(ids[-1]) + 1 if ids.size else 1, dtype=frame.dtype)
            for src in ids.tolist():
                lut[src] = final_id.get(lineage.segment_at(t, src), 0)
            yield t, lut[frame]

    return tracks, masks()


def finalize_tracks(
    labels: np.ndarray, config: TrackingConfig, border_band: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`finalize_stream` of an in-memory label stack.

    Args:
        labels: (T, H, W) integer label stack with track ids (e.g. :attr:`PairTracker.labels` resampled back).
        config: The tracking settings (see :func:`finalize_stream`).
        border_band: Width in pixels of the un-annotated image rim (``data.border_band``); 0 = no removal.

    Returns:
        ``(labels, tracks)``: the final (T, H, W) int32 labels and an (N, 4) int64 array of ``L B E P`` rows.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (T, H, W), got {labels.shape}")
    labels = labels.astype(np.int32, copy=False)
    out = np.empty_like(labels)
    tracks, masks = finalize_stream(ArrayFrames(labels), config, border_band)
    for t, frame in masks:
        out[t] = frame
    return out, tracks
