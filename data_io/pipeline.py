"""The tf.data input pipeline of training (the only data_io module that imports TensorFlow).

``training_dataset`` yields ``(frames, targets)`` batches for :func:`rshn_tf.losses.total_loss`:

* ``frames``: (B, T, H, W, 1) float32;
* ``targets``: ``instance_masks`` and ``neighbour_masks`` (B, K, T, H, W) bool with K = ``loss.max_instances``
  (unused instance slots are empty masks), ``background_mask``, ``foreground_mask`` and ``valid_mask``
  (B, T, H, W) bool. All shapes are static.

Samples are computed by :class:`data_io.stream.SampleStream` (``data.num_workers`` threads or processes,
``data.worker_type``) in a compact form: the frames, one index image and a neighbour table per sample instead of
2 × K dense masks (a few MB instead of ~36 MB), batched, and expanded to the dense masks by TensorFlow ops inside
the pipeline (:func:`expand_targets_tf`, the twin of :func:`data_io.targets.expand_targets`). ``data.prefetch``
batches are prefetched, so the train step does not wait for augmentation as long as the workers keep up.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from data_io.sampling import TrainingData
from data_io.stream import SampleStream
from data_io.targets import TARGET_KEYS


def compact_signature(data: TrainingData) -> dict[str, tf.TensorSpec]:
    """``tf.TensorSpec`` of the compact sample dictionaries produced by :class:`SampleStream`."""
    length = data.config.data.sequence_length
    height, width = data.config.data.tile_size
    frames = (length, height, width)
    return {
        "frames": tf.TensorSpec(frames, tf.float32),
        "index_map": tf.TensorSpec(frames, tf.int32),
        "neighbour_table": tf.TensorSpec((data.config.loss.max_instances, None), tf.bool),
        "background_mask": tf.TensorSpec(frames, tf.bool),
        "foreground_mask": tf.TensorSpec(frames, tf.bool),
        "valid_mask": tf.TensorSpec(frames, tf.bool),
    }


def expand_targets_tf(batch: dict[str, tf.Tensor], max_instances: int) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Expand a batch of compact samples to ``(frames (B, T, H, W, 1), dense targets)``.

    ``instance_masks[b, k] = index_map[b] == k + 1`` and ``neighbour_masks[b, k] = neighbour_table[b, k,
    index_map[b]]``, exactly as :func:`data_io.targets.expand_targets` does for one sample.

    Args:
        batch: Compact samples with a leading batch axis (``neighbour_table`` padded with False columns).
        max_instances: K, the instance slots.
    """
    index_map = batch["index_map"]
    slots = tf.range(1, max_instances + 1, dtype=tf.int32)[tf.newaxis, :, tf.newaxis, tf.newaxis, tf.newaxis]
    # Gather rows of the transposed table, then move the instance axis forward: on CPU several times faster than
    # gathering along the table's second axis.
    by_label = tf.transpose(batch["neighbour_table"], [0, 2, 1])  # (B, L + 1, K)
    neighbours = tf.transpose(tf.gather(by_label, index_map, batch_dims=1), [0, 4, 1, 2, 3])
    targets = {
        "instance_masks": tf.equal(index_map[:, tf.newaxis], slots),
        "neighbour_masks": tf.ensure_shape(neighbours, [index_map.shape[0], max_instances, *index_map.shape[1:]]),
        "background_mask": batch["background_mask"],
        "foreground_mask": batch["foreground_mask"],
        "valid_mask": batch["valid_mask"],
    }
    return batch["frames"][..., tf.newaxis], {key: targets[key] for key in TARGET_KEYS}


def training_dataset(
    data: TrainingData,
    seed: Optional[int] = None,
    start: int = 0,
    num_samples: Optional[int] = None,
    batch_size: Optional[int] = None,
    num_workers: Optional[int] = None,
    worker_type: Optional[str] = None,
    prefetch: Optional[int] = None,
) -> tf.data.Dataset:
    """The training input pipeline: sample indices ``start, start + 1, …`` → augmented, batched samples.

    Args:
        data: Training videos and configuration.
        seed: Training seed (default ``training.seed``).
        start: First sample index (resume: ``step × batch_size``).
        num_samples: Number of samples, or None for an endless dataset.
        batch_size: Samples per batch (default ``training.batch_size``); incomplete batches are dropped.
        num_workers: Sample workers (default ``data.num_workers``).
        worker_type: ``thread`` or ``process`` (default ``data.worker_type``).
        prefetch: Batches prefetched (default ``data.prefetch``).

    Returns:
        A ``tf.data.Dataset`` of ``(frames, targets)`` (see the module docstring).
    """
    config = data.config
    seed = config.training.seed if seed is None else seed
    batch_size = config.training.batch_size if batch_size is None else batch_size
    num_workers = config.data.num_workers if num_workers is None else num_workers
    worker_type = config.data.worker_type if worker_type is None else worker_type
    prefetch = config.data.prefetch if prefetch is None else prefetch
    max_instances = config.loss.max_instances
    stop = None if num_samples is None else start + num_samples

    def generate():
        with SampleStream(data, seed, start=start, stop=stop, num_workers=num_workers, worker_type=worker_type,
                          prefetch=prefetch) as stream:
            yield from stream

    dataset = tf.data.Dataset.from_generator(generate, output_signature=compact_signature(data))
    # Batch the compact samples (cheap; neighbour tables are padded with False columns), then expand.
    dataset = dataset.padded_batch(batch_size, drop_remainder=True)
    dataset = dataset.map(lambda batch: expand_targets_tf(batch, max_instances),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(max(prefetch, 1))
