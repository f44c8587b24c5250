"""Frozen copy of ``rshn_tf/tracking.py`` before issue 16 (whole label stack in memory): the reference the
streaming tracker and finalisation are compared with, byte for byte (``tests/test_tracking.py``). Not used by the
package; do not change it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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

    Feed the pairs ⟨0, 1⟩, ⟨1, 2⟩, … in order with :meth:`add_pair`; :attr:`labels` is the (T, H, W) stack.

    Args:
        config: ``link_iou_threshold``, ``merge_search_frames`` and ``parent_iou_threshold`` are read.
    """

    def __init__(self, config: TrackingConfig):
        self.config = config
        self.frames: list[np.ndarray] = []
        self._first: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._next_id = 1

    @property
    def labels(self) -> np.ndarray:
        """The tracked label stack (T, H, W) int32 (a copy)."""
        return np.stack(self.frames) if self.frames else np.zeros((0, 0, 0), dtype=np.int32)

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
        if self.frames and pair.shape[1:] != self.frames[-1].shape:
            raise ValueError(f"pair of size {pair.shape[1:]} does not match the stack's {self.frames[-1].shape}")
        pair = pair.astype(np.int32, copy=False)
        if not self.frames:
            pair = relabel_consecutive(pair)
            self._next_id = int(pair.max(initial=0)) + 1
            for t in (0, 1):
                self._append(pair[t])
            return
        mapping = greedy_iou_matching(self.frames[-1], pair[0], self.config.link_iou_threshold)
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
        t = len(self.frames)
        self.frames.append(frame)
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
        t2 = len(self.frames) - 1
        before, after = self.frames[t2 - 1], self.frames[t2]
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
            if first > 0 and self._best_overlap(self.frames[first] == a, self.frames[first - 1]) != b:
                continue
            for t in range(first, last + 1):
                frame = self.frames[t]
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


@dataclass
class _Segment:
    src: int  # label of the segment in the input stack
    first: int
    last: int
    parent: int = -1  # segment index, -1 = none
    alive: bool = True


class _Lineage:
    """Tracks as contiguous segments of input labels; masks are only relabelled once at the end."""

    def __init__(self, labels: np.ndarray):
        self.labels = labels
        self.T = labels.shape[0]
        max_label = int(labels.max(initial=0))
        self.areas = np.stack([np.bincount(f.ravel(), minlength=max_label + 1) for f in labels])
        self.areas[:, 0] = 0
        self.segment_of = np.full(self.areas.shape, -1, dtype=np.int64)
        self.segments: list[_Segment] = []
        self._objects: dict[int, list] = {}
        present = np.zeros((self.T + 2, max_label + 1), dtype=np.int8)
        present[1:-1] = self.areas > 0
        change = np.diff(present, axis=0)
        starts_t, starts_l = np.nonzero(change == 1)
        ends_t, ends_l = np.nonzero(change == -1)
        starts = sorted(zip(starts_l.tolist(), starts_t.tolist()))
        ends = sorted(zip(ends_l.tolist(), (ends_t - 1).tolist()))
        for (label, first), (_, last) in zip(starts, ends):
            self.add(label, first, last)
        gaps = len(self.segments) - len(set(s.src for s in self.segments))
        if gaps:
            log.info("%d tracks vanish in some frame and reappear (e.g. after resampling); split them", gaps)

    def add(self, src: int, first: int, last: int, parent: int = -1) -> int:
        index = len(self.segments)
        self.segments.append(_Segment(src, first, last, parent))
        self.segment_of[first:last + 1, src] = index
        return index

    def remove(self, index: int) -> None:
        seg = self.segments[index]
        seg.alive = False
        self.segment_of[seg.first:seg.last + 1, seg.src] = -1

    def split(self, index: int, frame: int) -> int:
        """Cut segment ``index`` before ``frame``; the part from ``frame`` on becomes a new segment."""
        seg = self.segments[index]
        new = self.add(seg.src, frame, seg.last)
        seg.last = frame - 1
        return new

    def alive(self) -> list[int]:
        return [i for i, s in enumerate(self.segments) if s.alive]

    def objects(self, t: int) -> list:
        if t not in self._objects:
            self._objects[t] = ndimage.find_objects(self.labels[t])
        return self._objects[t]

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
        box = self.objects(f)[seg.src - 1]
        H, W = self.labels.shape[1:]
        box = (slice(max(box[0].start - radius, 0), min(box[0].stop + radius, H)),
               slice(max(box[1].start - radius, 0), min(box[1].stop + radius, W)))
        mask = self.labels[f][box] == seg.src
        if radius > 0:
            mask = ndimage.binary_dilation(mask, structure=disk(radius))
        block = self.labels[f - k:f][(slice(None),) + box][:, mask]  # (k, n) labels under the mask
        frames = np.broadcast_to(np.arange(f - k, f)[:, None], block.shape)
        candidates = self.segment_of[frames, block]
        candidates = candidates[candidates >= 0]
        if candidates.size == 0:
            return -1
        inter = np.bincount(candidates)
        ids = np.flatnonzero(inter)
        inter = inter[ids]
        volume = np.zeros(ids.size)
        for j, cand in enumerate(ids):
            other = self.segments[cand]
            lo, hi = max(other.first, f - k), min(other.last, f - 1)
            volume[j] = self.areas[lo:hi + 1, other.src].sum()
        iou = inter / (k * mask.sum() + volume - inter)
        best = int(np.argmax(iou))
        return int(ids[best]) if iou[best] > config.parent_iou_threshold else -1


def finalize_tracks(
    labels: np.ndarray, config: TrackingConfig, border_band: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Finish the tracking result at the original resolution (docs/fidelity.md §7.3–§7.7, paper §2.5, §4.2).

    Steps, in the order of the authors' code:

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
        labels: (T, H, W) integer label stack with track ids (e.g. :attr:`PairTracker.labels` resampled back).
        config: ``min_track_length``, ``parent_dilation``, ``parent_search_frames``, ``parent_iou_threshold``.
        border_band: Width in pixels of the un-annotated image rim (``data.border_band``); 0 = no removal.

    Returns:
        ``(labels, tracks)``: the final (T, H, W) int32 labels and an (N, 4) int64 array of ``L B E P`` rows.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (T, H, W), got {labels.shape}")
    labels = labels.astype(np.int32, copy=False)
    lineage = _Lineage(labels)

    # 1. t_length, only for tracks without a parent
    for index in lineage.alive():
        seg = lineage.segments[index]
        if seg.last - seg.first + 1 < config.min_track_length and lineage.find_parent(index, config) < 0:
            lineage.remove(index)

    # 2. instances wholly inside the border band
    if border_band > 0:
        T, H, W = labels.shape
        inner = np.stack([
            np.bincount(f[border_band:H - border_band, border_band:W - border_band].ravel(),
                        minlength=lineage.areas.shape[1]) for f in labels
        ])
        frames, srcs = np.nonzero((lineage.areas > 0) & (inner == 0))
        events: dict[int, list[int]] = {}
        for t, src in zip(frames.tolist(), srcs.tolist()):
            index = int(lineage.segment_of[t, src])
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

    # relabel the masks once
    ids = np.zeros(len(lineage.segments) + 1, dtype=np.int64)  # segment index -> final id; index -1 -> 0
    for index, n in final_id.items():
        ids[index] = n
    out = np.empty_like(labels)
    for t in range(labels.shape[0]):
        out[t] = ids[lineage.segment_of[t]][labels[t]]
    rows = [(n, lineage.segments[i].first, lineage.segments[i].last, ids[lineage.segments[i].parent])
            for i, n in final_id.items()]
    tracks = np.array(rows, dtype=np.int64).reshape(-1, 4)
    tracks = tracks[np.argsort(tracks[:, 0], kind="stable")]
    return out, tracks
