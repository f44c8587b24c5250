"""``rshn predict``: a sequence folder of frames in, a CTC result folder out (and optionally the pair embeddings).

A file adapter over the Python API (:class:`rshn_tf.api.RSHN`): the frames are read from the folder one at a time
(:class:`~rshn_tf.inference.FrameSource`), :meth:`RSHN.process <rshn_tf.api.RSHN.process>` runs the network and the
post-processing, and this module adds what a long run on files needs:

* the outputs are checked before the network runs and claimed by one process at a time
  (:func:`~rshn_tf.output_lock.claim_output`);
* finished frames wait on disk in ``.OUT.partial`` beside the output (:class:`~rshn_tf.run_folder.RunFolder`), so
  memory does not grow with the video, and the post-processing state is checkpointed there every
  ``inference.checkpoint_every`` frame pairs; ``--resume`` continues a killed run to the result an uninterrupted run
  gives, starting the network at the first window that gives a missing pair (exact, because every window starts
  from zero states);
* ``--save-embeddings`` writes the pair embeddings atomically (:class:`EmbeddingWriter`);
* the result folder is written atomically (:meth:`~rshn_tf.postprocess.PostProcessor.finish`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ctc_submission.writer import check_result_target
from data_io.ctc import FrameFiles, list_frames
from rshn_tf.atomic import fsync_written, swap_in
from rshn_tf.api import RSHN
from rshn_tf.config import Config, resolve_predict_config, save_config
from rshn_tf.errors import RshnError
from rshn_tf.extras import require_for_config
from rshn_tf.geometry import GridGeometry
from rshn_tf.inference import NETWORK_STAGES, FrameSource, PairEmbedder, PairEmbeddings
from rshn_tf.label_store import save_atomically
from rshn_tf.model_folder import ModelFolder
from rshn_tf.output_lock import claim_output
from rshn_tf.postprocess import STAGES, PostProcessor, checkpoint_due, resumable
from rshn_tf.run_folder import RunFolder, partial_path

log = logging.getLogger(__name__)


#: Files an embeddings folder may contain; a folder with anything else is not replaced.
_EMBEDDING_FILE_PATTERNS = ("pair_*.npy", "config.yaml")


def check_embeddings_target(folder: str | os.PathLike) -> None:
    """Check that an embeddings folder can be written: absent, or holding nothing but saved embeddings.

    Raises:
        RshnError: If the path is a file or a folder holding other files.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RshnError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and not all(
            any(e.is_file() and e.match(p) for p in _EMBEDDING_FILE_PATTERNS) for e in folder.iterdir()):
        raise RshnError(f"{folder}: folder exists and holds files other than saved embeddings; refusing "
                        "to replace it (choose another --save-embeddings folder or empty it)")


class EmbeddingWriter:
    """Writes ``pair_NNN.npy`` (float32 (2, h, w, D) on the network grid) into the hidden folder ``.NAME.partial``
    beside the target and renames it into place in :meth:`commit` (complete or absent, never half-written).

    Args:
        folder: The embeddings folder to create (an existing one is replaced only if it holds nothing but pair
            files and ``config.yaml``).
        config: The resolved configuration, saved as ``config.yaml`` beside the pairs.
        resume: Continue writing into the existing ``.NAME.partial`` of an unfinished run (the pairs before its
            checkpoint are there); otherwise start an empty one.

    Raises:
        RshnError: If the target cannot be replaced, or ``resume`` finds no unfinished folder.
    """

    def __init__(self, folder: str | os.PathLike, config: Config, resume: bool = False):
        self.folder = Path(folder)
        check_embeddings_target(self.folder)
        self.tmp = partial_path(self.folder)
        self._unsynced: list[Path] = []
        if resume:
            if not self.tmp.is_dir():
                raise RshnError(f"{self.tmp}: the saved embeddings of the unfinished run are missing; it cannot be "
                                f"resumed (start it over without --resume)")
            return
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        save_config(config, self.tmp / "config.yaml")

    def write(self, index: int, pair: np.ndarray) -> None:
        """Save pair ``index`` (atomically: a killed run leaves no half-written pair)."""
        path = self.tmp / f"pair_{index:03d}.npy"
        save_atomically(path, np.asarray(pair, dtype=np.float32))
        self._unsynced.append(path)

    def sync(self) -> None:
        """Flush the pairs written since the last call to the disk (before a checkpoint counts them)."""
        fsync_written(self._unsynced, self.tmp)

    def commit(self) -> Path:
        """Move the finished folder into place."""
        swap_in(self.tmp, self.folder)
        return self.folder

    def discard(self) -> None:
        """Remove the temporary folder."""
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class PredictionResult:
    """What :func:`predict` did.

    Attributes:
        output_dir: The CTC result folder written.
        num_frames: Frames of the video.
        timings: Seconds per stage: ``reading``, ``preprocessing``, ``network`` and the post-processing stages of
            :data:`rshn_tf.postprocess.STAGES`, plus ``total`` (wall clock of the whole call).
        frame_steps: Frames run through the network (each frame runs in up to l windows).
        embeddings_dir: The saved embeddings folder, if any.
    """

    output_dir: Path
    num_frames: int
    timings: dict[str, float] = field(default_factory=dict)
    frame_steps: int = 0
    embeddings_dir: Optional[Path] = None

    @property
    def network_seconds(self) -> float:
        """Reading, preprocessing and the network."""
        return sum(self.timings.get(s, 0.0) for s in NETWORK_STAGES)

    @property
    def postprocessing_seconds(self) -> float:
        """Clustering, merging, tracking, resampling, finalising and writing."""
        return sum(self.timings.get(s, 0.0) for s in STAGES)


def predict(
    model_dir: str | os.PathLike,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    weights: str = "auto",
    save_embeddings: Optional[str | os.PathLike] = None,
    progress: Optional[bool] = None,
    model: Any = None,
    resume: bool = False,
) -> PredictionResult:
    """``rshn predict``: segment and track one sequence folder with a trained model and write a CTC result folder.

    Finished frames wait on disk in ``.OUT.partial`` beside the output (:class:`~rshn_tf.run_folder.RunFolder`), so
    memory does not grow with the video; every ``inference.checkpoint_every`` frame pairs the post-processing state
    is saved there, and ``resume`` continues a killed run to the result an uninterrupted run gives. One process
    at a time may write the output (and the embeddings folder), which is checked for writability before the
    network runs: :func:`~rshn_tf.output_lock.claim_output`.

    Args:
        model_dir: Model folder (``config.yaml`` + weights) written by ``rshn train``.
        input_dir: Sequence folder of frames ``tNNN.tif`` (e.g. ``DATASET/02``).
        output_dir: Result folder to write (e.g. ``DATASET/02_RES``): ``maskNNN.tif`` with the input's digit
            count, ``res_track.txt`` and the resolved ``config.yaml``.
        overrides: ``section.key=value`` changes on top of the model folder's config (not ``model.*``).
        weights: ``best``, ``last``, ``auto`` (best when the folder holds them, else last) or the path of a
            ``.weights.h5`` file.
        save_embeddings: Also write the pair embeddings there (see :class:`EmbeddingWriter`; in tiles mode each
            pixel comes from the tile in which it lies most centrally, so ``rshn postprocess`` on them reproduces
            this result only approximately; exactly in full-frame mode).
        progress: Show a tqdm bar over frames (None: on a terminal; plain log lines when stderr is not one).
        model: An already loaded network of the folder (skips loading; for benchmarks and tests).
        resume: Continue the unfinished run writing ``output_dir`` from its last checkpoint (start afresh when there
            is none); without it, an unfinished run there is refused.

    Returns:
        A :class:`PredictionResult` with the timings.

    Raises:
        RshnError: For a missing/empty/inconsistent input folder, a broken model folder, a bad override, an output
            folder that cannot be replaced or that another process is writing, or an unfinished run without
            ``resume`` (or one that differs from this call with it).
    """
    wall = time.perf_counter()
    config = resolve_predict_config(ModelFolder(model_dir).read_config(), overrides)
    require_for_config(config)
    files = list_frames(input_dir)
    check_result_target(output_dir)  # fail before the network runs, not after
    rshn = RSHN(config, model, folder=model_dir, weights=weights)  # checks the weights unless a model is given
    if save_embeddings is not None:
        check_embeddings_target(save_embeddings)
        if Path(save_embeddings).resolve() == Path(output_dir).resolve():
            raise RshnError(f"{output_dir}: --save-embeddings and --output must be different folders")
    num_frames = len(files.paths)
    total_pairs = max(num_frames - 1, 1)
    identity = {"command": "predict", "input": str(Path(input_dir).resolve()), "frames": num_frames,
                "pairs": total_pairs, "original_shape": list(files.shape), "digits": files.digits,
                "model": str(Path(model_dir).resolve()), "weights": weights,
                "embeddings": None if save_embeddings is None else str(Path(save_embeddings).resolve())}
    with contextlib.ExitStack() as locks:
        locks.enter_context(claim_output(output_dir, "result folder"))
        if save_embeddings is not None:
            locks.enter_context(claim_output(save_embeddings, "embeddings folder"))
        run = RunFolder.open(output_dir, identity, config, resume)
        try:
            result = _predict_run(rshn, input_dir, output_dir, files, run, save_embeddings, progress)
        except BaseException as exc:
            resumable(run, exc)
            raise
        run.remove()
    result.timings["total"] = time.perf_counter() - wall
    timings = result.timings
    log.info("per frame: network %.3f s (%d frame steps, %.3f s each), reading+preprocessing %.3f s, "
             "post-processing %.3f s, total %.3f s", timings.get("network", 0.0) / num_frames, result.frame_steps,
             timings.get("network", 0.0) / max(result.frame_steps, 1),
             (timings.get("reading", 0.0) + timings.get("preprocessing", 0.0)) / num_frames,
             result.postprocessing_seconds / num_frames, timings["total"] / num_frames)
    return result


def _predict_run(rshn: RSHN, input_dir: str | os.PathLike, output_dir: str | os.PathLike, files: FrameFiles,
                 run: RunFolder, save_embeddings: Optional[str | os.PathLike], progress: Optional[bool]
                 ) -> PredictionResult:
    """The work of :func:`predict` once the outputs are locked and the run folder is open: the frames are read
    from ``files`` as the network needs them, the pairs the run still lacks are post-processed (and saved), with
    checkpoints, and the result is written."""
    config = rshn.config
    source = FrameSource(files.paths, config.data, files.shape)
    num_frames = len(source)
    total_pairs = run.identity["pairs"]
    processor = PostProcessor(config, GridGeometry.of(files.shape, config), single_frame=num_frames == 1,
                              store=run.frames)
    if run.checkpoint is not None:
        processor.restore(*run.checkpoint)
    writer = None
    if save_embeddings is not None:
        emb_partial = partial_path(Path(save_embeddings))
        if run.checkpoint is None or emb_partial.is_dir():
            writer = EmbeddingWriter(save_embeddings, config, resume=run.checkpoint is not None)
        elif processor.num_pairs < total_pairs or not Path(save_embeddings).is_dir():
            raise RshnError(f"{emb_partial}: the saved embeddings of the unfinished run in {run.folder} are "
                            f"missing; delete {run.folder} and start over without --resume")
        # else: all pairs were done and the embeddings committed before the run was killed

    def save_and_checkpoint(pair: PairEmbeddings) -> None:
        if writer is not None:
            writer.write(pair.index, pair.grid())
        if checkpoint_due(processor, total_pairs):
            if processor.num_pairs == total_pairs:
                processor.flush()
            if writer is not None:
                writer.sync()
            run.save(*processor.state())

    try:
        embedder = rshn.process(source, processor, on_pair=save_and_checkpoint, progress=progress, desc="predict",
                                name=f"predict {input_dir}")
        out = processor.finish(output_dir, files.digits, tmp=run.result_dir)
    except BaseException:
        if writer is not None and not run.has_checkpoint:
            writer.discard()
        raise
    embeddings_dir = writer.commit() if writer is not None else (
        Path(save_embeddings) if save_embeddings is not None else None)
    return PredictionResult(out, num_frames, _timings(source, embedder, processor),
                            embedder.frame_steps if embedder else 0, embeddings_dir)


def _timings(source: FrameSource, embedder: Optional[PairEmbedder], processor: PostProcessor) -> dict[str, float]:
    """Seconds per stage of the network side and the post-processing."""
    timings = dict(source.timings)
    if embedder is not None:
        timings.update(embedder.timings)
    timings.update(processor.timings)
    return timings
