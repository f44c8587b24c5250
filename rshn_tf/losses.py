"""The cosine embedding loss of §2.2 (eqs. 1–6), its MICCAI 2018 variant, and the total training loss (§2.1, §3.1).

For one sample of ``l`` frames with raw (unnormalised) network embeddings e_p ∈ R^d:

* eq. 1: cos(a, b) = a·b / (‖a‖‖b‖). Both vectors are L2-normalised as x / sqrt(max(‖x‖², ε)) with
  ε = ``LossConfig.epsilon`` (1e-12, the ``tf.nn.l2_normalize`` default the authors' code uses), so a zero vector
  has cosine 0 with everything and every value and gradient stays finite.
* eq. 5: ē(i) is the mean of the raw embeddings over S(i), all frames of the sample together.
* eq. 3: L_S(i) = 1 − mean_{p∈S(i)} cos(ē(i), e_p)²;  eq. 4: L_N(i) = mean_{p∈N(i)} cos(ē(i), e_p)².
* eq. 2: L(i) = L_S(i) + L_N(i). The background b uses the same formulas with S(b) = background pixels,
  N(b) = foreground pixels and ē(b) fixed to e_b = (1, 0, …, 0).
* eq. 6: L = w_b · L(b) + mean_i L(i), with w_b = ``LossConfig.background_weight`` (paper: 1).

Edge cases (not spelled out in the paper; chosen so that no term is ever 0/0): an empty N(i) gives L_N(i) = 0;
instances with an empty S(i) are left out of the mean (padding masks are therefore harmless); without any
instance the mean term is 0; an empty S(b) makes L_S(b) = 0, so with S(b) and N(b) both empty L(b) = 0.
The authors' code differs in two corner cases that we do not copy (docs/fidelity.md §2.4, §2.7): it divides the sum of
the L(i) by the number of *non-zero* L(i) (an instance with loss exactly 0 is not counted), and its bit decoding
drops the background term of a sample that has background but no foreground pixel.

``variant='miccai2018'`` (Payer et al., MICCAI 2018, eq. 2; docs/fidelity.md §9.1) changes two things: L_S(i) = 1 − mean
cos(ē(i), e_p) (not squared) and ē(b) is learned, i.e. the mean raw embedding over S(b) like any instance.
The aggregation stays eq. 6 (background term plus the mean over instances), whereas the MICCAI code averaged the
background together with the instances.

Implementation: all masks are ANDed with the valid mask, then the loss runs two graph loops over time
(``tf.while_loop``): the first sums raw embeddings and pixel counts per instance, the second sums the per-pixel
cosine terms. Per frame only (B, K+1, H·W) cosines exist, never a (K, T, H, W, D) tensor, and tracing cost does
not grow with the number of frames. Computation is float32 (float64 when the embeddings are float64).

Distribution: ``total_loss`` reduces over the batch with ``tf.nn.compute_average_loss`` and scales the
regularisation with ``tf.nn.scale_regularization_loss``, so under ``tf.distribute.MirroredStrategy`` each replica
returns its share and the sum over replicas is the global-batch loss (outside a strategy: the batch mean).
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import tensorflow as tf

from rshn_tf.config import LossConfig
from rshn_tf.errors import RshnError

#: Keys of the targets dictionary produced by the data pipeline (shapes with a leading batch axis B).
TARGET_KEYS = ("instance_masks", "neighbour_masks", "background_mask", "foreground_mask", "valid_mask")

_VARIANTS = ("paper", "miccai2018")


class LossTerms(NamedTuple):
    """Per-sample terms of eq. 6, each of shape (B,).

    Attributes:
        background: L(b), unweighted.
        instances: mean_i L(i) over the instances with a non-empty S(i) (0 when there is none).
    """

    background: tf.Tensor
    instances: tf.Tensor


def _frame_loop(
    num_frames: tf.Tensor, body: Callable[..., tuple[tf.Tensor, ...]], initial: tuple[tf.Tensor, ...]
) -> tuple[tf.Tensor, ...]:
    """Accumulate ``body(t, *acc) -> acc`` over t = 0 … num_frames − 1 in one graph loop; return the final acc."""
    result = tf.while_loop(
        lambda t, *acc: t < num_frames,
        lambda t, *acc: (t + 1, *body(t, *acc)),
        (tf.constant(0, tf.int32), *initial),
        maximum_iterations=num_frames,
    )
    return tuple(result[1:])


def _shape(tensor: tf.Tensor) -> list:
    """The shape with static sizes as ints where known and dynamic scalars elsewhere (keeps loop shapes static)."""
    dynamic = tf.shape(tensor)
    return [size if size is not None else dynamic[axis] for axis, size in enumerate(tensor.shape.as_list())]


def _check_rank(name: str, tensor: tf.Tensor, rank: int, layout: str) -> None:
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise ValueError(f"{name} must have shape {layout}, got shape {tensor.shape}")


def cosine_embedding_loss_terms(
    embeddings: tf.Tensor,
    instance_masks: tf.Tensor,
    neighbour_masks: tf.Tensor,
    background_mask: tf.Tensor,
    foreground_mask: tf.Tensor,
    valid_mask: Optional[tf.Tensor] = None,
    config: Optional[LossConfig] = None,
) -> LossTerms:
    """Background term and instance mean of eq. 6 for every sample of a batch.

    Args:
        embeddings: (B, T, H, W, D) raw network output (any float type; computed in float32, or float64 if given).
        instance_masks: (B, K, T, H, W) bool, S(i) per instance; K may include padding (empty masks) or be 0.
        neighbour_masks: (B, K, T, H, W) bool, N(i) per instance.
        background_mask: (B, T, H, W) bool, S(b).
        foreground_mask: (B, T, H, W) bool, N(b).
        valid_mask: (B, T, H, W) bool or None (all valid); every other mask is ANDed with it.
        config: Loss settings (``variant``, ``epsilon``); paper defaults when None.

    Returns:
        The per-sample terms, each of shape (B,).

    Raises:
        RshnError: If ``config.variant`` is unknown.
        ValueError: If a tensor does not have the documented rank.
    """
    config = config if config is not None else LossConfig()
    if config.variant not in _VARIANTS:
        raise RshnError(f"key 'loss.variant' must be one of {', '.join(_VARIANTS)}, got {config.variant!r}")
    embeddings = tf.convert_to_tensor(embeddings)
    dtype = tf.float64 if embeddings.dtype == tf.float64 else tf.float32
    embeddings = tf.cast(embeddings, dtype)
    instance_masks = tf.cast(instance_masks, tf.bool)
    neighbour_masks = tf.cast(neighbour_masks, tf.bool)
    background_mask = tf.cast(background_mask, tf.bool)
    foreground_mask = tf.cast(foreground_mask, tf.bool)
    valid_mask = tf.ones_like(background_mask) if valid_mask is None else tf.cast(valid_mask, tf.bool)
    _check_rank("embeddings", embeddings, 5, "(B, T, H, W, D)")
    _check_rank("instance_masks", instance_masks, 5, "(B, K, T, H, W)")
    _check_rank("neighbour_masks", neighbour_masks, 5, "(B, K, T, H, W)")
    for name, mask in (("background_mask", background_mask), ("foreground_mask", foreground_mask),
                       ("valid_mask", valid_mask)):
        _check_rank(name, mask, 4, "(B, T, H, W)")

    batch, num_frames, height, width, dim = _shape(embeddings)
    pixels = height * width
    rows = _shape(instance_masks)[1] + 1  # row 0 is the background, rows 1… the instances
    epsilon = tf.constant(config.epsilon, dtype)

    def frame(t: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Embeddings (B, HW, D) and own/other masks (B, K+1, HW) of frame t, masks as 0/1 floats."""
        valid = tf.gather(valid_mask, t, axis=1)[:, tf.newaxis]
        own = tf.concat([tf.gather(background_mask, t, axis=1)[:, tf.newaxis],
                         tf.gather(instance_masks, t, axis=2)], axis=1)
        other = tf.concat([tf.gather(foreground_mask, t, axis=1)[:, tf.newaxis],
                           tf.gather(neighbour_masks, t, axis=2)], axis=1)
        own = tf.reshape(tf.cast(tf.logical_and(own, valid), dtype), [batch, rows, pixels])
        other = tf.reshape(tf.cast(tf.logical_and(other, valid), dtype), [batch, rows, pixels])
        values = tf.reshape(tf.gather(embeddings, t, axis=1), [batch, pixels, dim])
        return values, own, other

    def sum_embeddings(t, sums, own_count, other_count):
        values, own, other = frame(t)
        return (sums + tf.linalg.matmul(own, values), own_count + tf.reduce_sum(own, axis=-1),
                other_count + tf.reduce_sum(other, axis=-1))

    zeros_rows = tf.zeros([batch, rows], dtype)
    sums, own_count, other_count = _frame_loop(
        num_frames, sum_embeddings, (tf.zeros([batch, rows, dim], dtype), zeros_rows, zeros_rows))

    means = sums / tf.maximum(own_count, 1.0)[..., tf.newaxis]  # eq. 5
    directions = tf.math.l2_normalize(means, axis=-1, epsilon=epsilon)
    if config.variant == "paper":
        fixed_background = tf.one_hot(tf.zeros([batch, 1], tf.int32), dim, dtype=dtype)  # ē(b) = (1, 0, …, 0)
        directions = tf.concat([fixed_background, directions[:, 1:]], axis=1)
    squared_own = config.variant == "paper"

    def sum_cosines(t, own_sum, other_sum):
        values, own, other = frame(t)
        cosines = tf.linalg.matmul(directions, tf.math.l2_normalize(values, axis=-1, epsilon=epsilon),
                                   transpose_b=True)  # eq. 1, (B, K+1, HW)
        squared = tf.square(cosines)
        own_terms = squared if squared_own else cosines
        return own_sum + tf.reduce_sum(own * own_terms, axis=-1), other_sum + tf.reduce_sum(other * squared, axis=-1)

    own_sum, other_sum = _frame_loop(num_frames, sum_cosines, (zeros_rows, zeros_rows))

    has_own = own_count > 0.0
    own_loss = tf.where(has_own, 1.0 - own_sum / tf.maximum(own_count, 1.0), tf.zeros_like(own_sum))  # eq. 3
    other_loss = other_sum / tf.maximum(other_count, 1.0)  # eq. 4, 0 for an empty N
    per_row = own_loss + other_loss  # eq. 2
    present = tf.cast(has_own[:, 1:], dtype)
    instances = tf.reduce_sum(per_row[:, 1:] * present, axis=-1) / tf.maximum(tf.reduce_sum(present, axis=-1), 1.0)
    return LossTerms(background=per_row[:, 0], instances=instances)


def _per_sample_loss(terms: LossTerms, config: LossConfig) -> tf.Tensor:
    """Eq. 6 per sample: w_b · L(b) + mean_i L(i)."""
    return config.background_weight * terms.background + terms.instances


def cosine_embedding_loss(
    embeddings: tf.Tensor,
    instance_masks: tf.Tensor,
    neighbour_masks: tf.Tensor,
    background_mask: tf.Tensor,
    foreground_mask: tf.Tensor,
    valid_mask: Optional[tf.Tensor] = None,
    config: Optional[LossConfig] = None,
) -> tf.Tensor:
    """Cosine embedding loss L of eq. 6 for one sample.

    Args:
        embeddings: (T, H, W, D) raw network output.
        instance_masks: (K, T, H, W) bool, S(i); padding instances have empty masks.
        neighbour_masks: (K, T, H, W) bool, N(i).
        background_mask: (T, H, W) bool, S(b).
        foreground_mask: (T, H, W) bool, N(b).
        valid_mask: (T, H, W) bool or None (all valid); ANDed with every other mask.
        config: Loss settings (``variant``, ``background_weight``, ``epsilon``); paper defaults when None.

    Returns:
        Scalar loss (float32, or float64 for float64 embeddings).
    """
    config = config if config is not None else LossConfig()
    terms = cosine_embedding_loss_terms(
        embeddings[tf.newaxis], instance_masks[tf.newaxis], neighbour_masks[tf.newaxis],
        background_mask[tf.newaxis], foreground_mask[tf.newaxis],
        None if valid_mask is None else valid_mask[tf.newaxis], config)
    return _per_sample_loss(terms, config)[0]


def batch_cosine_embedding_loss(
    embeddings: tf.Tensor,
    instance_masks: tf.Tensor,
    neighbour_masks: tf.Tensor,
    background_mask: tf.Tensor,
    foreground_mask: tf.Tensor,
    valid_mask: Optional[tf.Tensor] = None,
    config: Optional[LossConfig] = None,
) -> tf.Tensor:
    """Eq. 6 averaged over the samples of a batch (plain mean over B; the paper trains with B = 1).

    Args: as :func:`cosine_embedding_loss_terms` (every tensor with a leading batch axis B).

    Returns:
        Scalar mean over the batch of the per-sample loss.
    """
    config = config if config is not None else LossConfig()
    terms = cosine_embedding_loss_terms(embeddings, instance_masks, neighbour_masks, background_mask,
                                        foreground_mask, valid_mask, config)
    return tf.reduce_mean(_per_sample_loss(terms, config))


def total_loss(
    outputs: Sequence[tf.Tensor],
    targets: Mapping[str, tf.Tensor],
    regularization_losses: Sequence[tf.Tensor],
    loss_config: LossConfig,
    global_batch_size: Optional[int] = None,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Training loss: eq. 6 on the output of every hourglass (§2.1) plus the L2 weight decay (§3.1).

    total = Σ_k w_k · batch-average_b(w_b · L_k(b) + mean_i L_k(i)) + scaled Σ regularization_losses, with
    w_k = ``loss_config.hourglass_weights[k]`` (docs/fidelity.md §2.4: 1 each) and w_b =
    ``loss_config.background_weight``.

    The batch average is ``tf.nn.compute_average_loss``: the sum over the local samples divided by
    ``global_batch_size`` (default: local batch × replicas in sync); the regularisation sum is divided by the
    number of replicas (``tf.nn.scale_regularization_loss``). Outside a distribution strategy this is the plain
    batch mean plus the full regularisation. Every entry of the returned dictionary is scaled the same way, so
    summing it over replicas gives the global value.

    Args:
        outputs: One (B, T, H, W, D) raw embedding tensor per hourglass.
        targets: Dictionary with the ``TARGET_KEYS``: ``instance_masks`` and ``neighbour_masks`` (B, K, T, H, W)
            bool, ``background_mask``, ``foreground_mask`` and ``valid_mask`` (B, T, H, W) bool.
        regularization_losses: Scalar regularisation tensors (e.g. ``model.losses`` of L2 kernel regularisers).
        loss_config: Loss settings.
        global_batch_size: Samples over all replicas per step, or None (see above).

    Returns:
        The scalar total and a dictionary for logging: ``hourglass_{k}/background`` (L(b), unweighted),
        ``hourglass_{k}/instances`` (mean_i L(i)), ``hourglass_{k}/loss`` (eq. 6), ``regularization`` and
        ``total``.

    Raises:
        RshnError: If ``loss.hourglass_weights`` does not give one weight per output.
        ValueError: If a target key is missing.
    """
    weights = list(loss_config.hourglass_weights)
    if len(weights) != len(outputs):
        raise RshnError(f"key 'loss.hourglass_weights' has {len(weights)} weights but the model has "
                        f"{len(outputs)} hourglass outputs; give one weight per hourglass (model.stacks)")
    missing = [key for key in TARGET_KEYS if key not in targets]
    if missing:
        raise ValueError(f"targets lack {', '.join(missing)}; expected keys {', '.join(TARGET_KEYS)}")

    def average(per_sample: tf.Tensor) -> tf.Tensor:
        return tf.nn.compute_average_loss(per_sample, global_batch_size=global_batch_size)

    terms: dict[str, tf.Tensor] = {}
    total = None
    for index, (output, weight) in enumerate(zip(outputs, weights)):
        sample_terms = cosine_embedding_loss_terms(
            output, targets["instance_masks"], targets["neighbour_masks"], targets["background_mask"],
            targets["foreground_mask"], targets["valid_mask"], loss_config)
        terms[f"hourglass_{index}/background"] = average(sample_terms.background)
        terms[f"hourglass_{index}/instances"] = average(sample_terms.instances)
        hourglass = average(_per_sample_loss(sample_terms, loss_config))
        terms[f"hourglass_{index}/loss"] = hourglass
        total = weight * hourglass if total is None else total + weight * hourglass
    dtype = total.dtype if total is not None else tf.float32
    regularization = tf.nn.scale_regularization_loss(
        tf.add_n([tf.cast(loss, dtype) for loss in regularization_losses]) if regularization_losses
        else tf.zeros([], dtype))
    total = regularization if total is None else total + regularization
    terms["regularization"] = regularization
    terms["total"] = total
    return total, terms
