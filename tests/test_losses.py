"""Tests of rshn_tf.losses against an independent float64 NumPy implementation of eqs. 1–6 (paper §2.2)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from rshn_tf.config import LossConfig
from rshn_tf.errors import RshnError
from rshn_tf.losses import (
    batch_cosine_embedding_loss,
    cosine_embedding_loss,
    cosine_embedding_loss_terms,
    total_loss,
)

RTOL = 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Independent reference, written straight from the equations (loops over instances, float64)


def ref_cosines(direction: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Eq. 1 between one vector and each row of ``vectors``; 0 where either vector is zero."""
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(direction)
    dots = vectors @ direction
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)


def ref_instance_loss(mean: np.ndarray, own: np.ndarray, other: np.ndarray, squared_own: bool) -> float:
    """Eqs. 2–4 for one instance given its mean embedding and the embeddings of S and N (rows)."""
    if len(own):
        cos_own = ref_cosines(mean, own)
        loss_own = 1.0 - np.mean(cos_own ** 2 if squared_own else cos_own)
    else:
        loss_own = 0.0
    loss_other = np.mean(ref_cosines(mean, other) ** 2) if len(other) else 0.0
    return loss_own + loss_other


def ref_loss(embeddings, instances, neighbours, background, foreground, valid=None, variant="paper",
             background_weight=1.0):
    """Eq. 6 (or the MICCAI variant) for one sample; returns (L, L(b), mean_i L(i))."""
    e = np.asarray(embeddings, np.float64)
    valid = np.ones(background.shape, bool) if valid is None else valid
    squared_own = variant == "paper"
    losses = []
    for own_mask, other_mask in zip(instances, neighbours):
        own_mask, other_mask = own_mask & valid, other_mask & valid
        if not own_mask.any():
            continue
        mean = e[own_mask].mean(axis=0)  # eq. 5
        losses.append(ref_instance_loss(mean, e[own_mask], e[other_mask], squared_own))
    instance_mean = float(np.mean(losses)) if losses else 0.0
    own_b, other_b = background & valid, foreground & valid
    if variant == "paper":
        mean_b = np.zeros(e.shape[-1])
        mean_b[0] = 1.0
    else:
        mean_b = e[own_b].mean(axis=0) if own_b.any() else np.zeros(e.shape[-1])
    loss_b = ref_instance_loss(mean_b, e[own_b], e[other_b], squared_own)
    return background_weight * loss_b + instance_mean, loss_b, instance_mean


# ---------------------------------------------------------------------------------------------------------------
# Random samples


def random_sample(seed, frames=3, size=(9, 11), dim=6, labels=4, padding=2, invalid_fraction=0.1):
    """Random embeddings and label-based masks; K = labels + padding (padding masks empty).

    Neighbours of i: a random subset of the other labels. Background/foreground: only in some "completely
    segmented" frames. Random invalid pixels, which the masks still contain (the loss must drop them).
    """
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(frames, *size, dim)).astype(np.float32)
    label = rng.integers(0, labels + 1, size=(frames, *size))
    instances = [label == i for i in range(1, labels + 1)]
    neighbours = []
    for i in range(1, labels + 1):
        others = [j for j in range(1, labels + 1) if j != i and rng.random() < 0.6]
        neighbours.append(np.isin(label, others))
    empty = np.zeros(label.shape, bool)
    instances += [empty] * padding
    neighbours += [empty] * padding
    complete = rng.random(frames) < 0.7
    complete[0] = True
    background = (label == 0) & complete[:, None, None]
    foreground = (label > 0) & complete[:, None, None]
    valid = rng.random(label.shape) >= invalid_fraction
    return dict(embeddings=emb, instances=np.stack(instances), neighbours=np.stack(neighbours),
                background=background, foreground=foreground, valid=valid)


def tf_loss(sample, config=None, **overrides):
    s = {**sample, **overrides}
    return cosine_embedding_loss(s["embeddings"], s["instances"], s["neighbours"], s["background"],
                                 s["foreground"], s["valid"], config=config).numpy()


def reference(sample, variant="paper", background_weight=1.0, **overrides):
    s = {**sample, **overrides}
    return ref_loss(s["embeddings"], s["instances"], s["neighbours"], s["background"], s["foreground"],
                    s["valid"], variant=variant, background_weight=background_weight)


MICCAI = LossConfig(variant="miccai2018")


# ---------------------------------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("variant", ["paper", "miccai2018"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_samples_match_reference(seed, variant):
    sample = random_sample(seed, labels=3 + seed, padding=seed % 3)
    expected, loss_b, instance_mean = reference(sample, variant)
    assert loss_b > 0.1 and instance_mean > 0.1  # both terms really take part
    np.testing.assert_allclose(tf_loss(sample, LossConfig(variant=variant)), expected, rtol=RTOL)


def test_terms_and_background_weight():
    sample = random_sample(7)
    _, loss_b, instance_mean = reference(sample)
    terms = cosine_embedding_loss_terms(*(x[None] for x in sample.values()))
    np.testing.assert_allclose(terms.background.numpy(), [loss_b], rtol=RTOL)
    np.testing.assert_allclose(terms.instances.numpy(), [instance_mean], rtol=RTOL)
    config = LossConfig(background_weight=0.3)
    np.testing.assert_allclose(tf_loss(sample, config), 0.3 * loss_b + instance_mean, rtol=RTOL)


def test_float64_input_matches_reference_tightly():
    sample = random_sample(11)
    sample["embeddings"] = sample["embeddings"].astype(np.float64)
    value = tf_loss(sample)
    assert value.dtype == np.float64
    np.testing.assert_allclose(value, reference(sample)[0], rtol=1e-12)


def test_invalid_pixels_never_count():
    sample = random_sample(5, invalid_fraction=0.3)
    garbage = sample["embeddings"].copy()
    garbage[~sample["valid"]] = 1e3 * np.random.default_rng(0).normal(size=garbage[~sample["valid"]].shape)
    np.testing.assert_allclose(tf_loss(sample, embeddings=garbage), tf_loss(sample), rtol=RTOL)
    everything_valid = np.ones_like(sample["valid"])
    assert abs(tf_loss(sample, valid=everything_valid) - tf_loss(sample)) > 1e-3  # the valid mask matters


# ---------------------------------------------------------------------------------------------------------------
# Edge cases, each alone


@pytest.mark.parametrize("variant", ["paper", "miccai2018"])
def test_empty_neighbourhood_gives_zero_neighbour_term(variant):
    sample = random_sample(20, labels=3)
    sample["neighbours"][1] = False
    expected = reference(sample, variant)[0]
    np.testing.assert_allclose(tf_loss(sample, LossConfig(variant=variant)), expected, rtol=RTOL)
    # A single instance without neighbours and no background: L = L_S(i) exactly.
    only = dict(sample, instances=sample["instances"][1:2], neighbours=sample["neighbours"][1:2],
                background=np.zeros_like(sample["background"]), foreground=np.zeros_like(sample["foreground"]))
    own = sample["instances"][1] & sample["valid"]
    e = sample["embeddings"].astype(np.float64)[own]
    cos = ref_cosines(e.mean(axis=0), e)
    expected_own = 1 - np.mean(cos ** 2 if variant == "paper" else cos)
    np.testing.assert_allclose(tf_loss(only, LossConfig(variant=variant)), expected_own, rtol=RTOL)


@pytest.mark.parametrize("variant", ["paper", "miccai2018"])
def test_instance_with_empty_self_set_is_left_out(variant):
    sample = random_sample(21, labels=4, padding=0)
    sample["instances"][2] = False  # S empty, N not empty
    assert (sample["neighbours"][2] & sample["valid"]).any()
    config = LossConfig(variant=variant)
    keep = [0, 1, 3]
    dropped = tf_loss(sample, config, instances=sample["instances"][keep], neighbours=sample["neighbours"][keep])
    np.testing.assert_allclose(tf_loss(sample, config), dropped, rtol=RTOL)
    np.testing.assert_allclose(tf_loss(sample, config), reference(sample, variant)[0], rtol=RTOL)


@pytest.mark.parametrize("variant", ["paper", "miccai2018"])
@pytest.mark.parametrize("kind", ["zero_k", "all_empty"])
def test_no_instances_leaves_only_background(kind, variant):
    sample = random_sample(22)
    if kind == "zero_k":
        sample["instances"] = sample["instances"][:0]
        sample["neighbours"] = sample["neighbours"][:0]
    else:
        sample["instances"][:] = False
        sample["neighbours"][:] = False
    _, loss_b, instance_mean = reference(sample, variant)
    assert instance_mean == 0.0 and loss_b > 0.1
    np.testing.assert_allclose(tf_loss(sample, LossConfig(variant=variant)), loss_b, rtol=RTOL)


def test_empty_background_self_set_leaves_neighbour_term():
    sample = random_sample(23)
    sample["background"][:] = False
    expected, loss_b, _ = reference(sample)
    other = sample["foreground"] & sample["valid"]
    np.testing.assert_allclose(loss_b, np.mean(ref_cosines(np.eye(6)[0], sample["embeddings"][other]) ** 2))
    np.testing.assert_allclose(tf_loss(sample), expected, rtol=RTOL)
    np.testing.assert_allclose(tf_loss(sample, MICCAI), reference(sample, "miccai2018")[0], rtol=RTOL)


@pytest.mark.parametrize("variant", ["paper", "miccai2018"])
def test_empty_background_and_foreground_give_zero_background_term(variant):
    sample = random_sample(24)
    sample["background"][:] = False
    sample["foreground"][:] = False
    _, loss_b, instance_mean = reference(sample, variant)
    assert loss_b == 0.0
    np.testing.assert_allclose(tf_loss(sample, LossConfig(variant=variant)), instance_mean, rtol=RTOL)


def test_everything_empty_is_zero():
    sample = random_sample(25)
    for key in ("instances", "neighbours", "background", "foreground"):
        sample[key] = np.zeros_like(sample[key])
    assert tf_loss(sample) == 0.0
    assert tf_loss(sample, MICCAI) == 0.0


@pytest.mark.parametrize("variant", ["paper", "miccai2018"])
def test_zero_embeddings_give_finite_value_and_gradient(variant):
    sample = random_sample(26)
    config = LossConfig(variant=variant)
    partly_zero = sample["embeddings"].copy()
    partly_zero[:, :4] = 0.0  # zero pixels inside instances, background and foreground
    for emb in (np.zeros_like(partly_zero), partly_zero):
        emb_tf = tf.constant(emb)
        with tf.GradientTape() as tape:
            tape.watch(emb_tf)
            loss = cosine_embedding_loss(emb_tf, sample["instances"], sample["neighbours"], sample["background"],
                                         sample["foreground"], sample["valid"], config)
        gradient = tape.gradient(loss, emb_tf).numpy()
        assert np.isfinite(loss.numpy()) and np.all(np.isfinite(gradient))
        np.testing.assert_allclose(loss.numpy(), reference(sample, variant, embeddings=emb)[0], rtol=RTOL)
    # All zero: every cosine is 0, so each non-empty L_S is 1 and each L_N is 0: L = 1 + 1.
    np.testing.assert_allclose(tf_loss(sample, config, embeddings=np.zeros_like(partly_zero)), 2.0, rtol=RTOL)


def ideal_sample(seed, dim=8, labels=5):
    """Embeddings that satisfy every term: one orthogonal direction per instance, background along e_b."""
    rng = np.random.default_rng(seed)
    sample = random_sample(seed, dim=dim, labels=labels, padding=1, invalid_fraction=0.0)
    label = np.zeros(sample["background"].shape, int)
    for i, mask in enumerate(sample["instances"][:labels]):
        label[mask] = i + 1
    scale = rng.uniform(0.5, 3.0, size=label.shape)
    sample["embeddings"] = (np.eye(dim)[label] * scale[..., None]).astype(np.float32)
    return sample, scale


@pytest.mark.parametrize("variant", ["paper", "miccai2018"])
def test_ideal_embeddings_give_zero(variant):
    sample, scale = ideal_sample(30)
    config = LossConfig(variant=variant)
    assert reference(sample, variant)[0] == pytest.approx(0.0, abs=1e-12)
    assert abs(tf_loss(sample, config)) < 1e-6
    if variant == "paper":  # squared cosines: the sign of an embedding does not matter
        flipped = sample["embeddings"] * np.where(np.random.default_rng(1).random(scale.shape) < 0.5, -1, 1)[..., None]
        assert abs(tf_loss(sample, config, embeddings=flipped.astype(np.float32))) < 1e-6
    # Rotating the background direction away from e_b costs only in the paper variant (fixed ē(b)).
    rotated = sample["embeddings"].copy()
    rotated[..., [0, -1]] = rotated[..., [-1, 0]]
    assert (tf_loss(sample, config, embeddings=rotated) > 0.5) == (variant == "paper")


# ---------------------------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("variant", ["paper", "miccai2018"])
def test_gradient_matches_central_differences_of_reference(variant):
    sample = random_sample(40, frames=2, size=(5, 6), dim=4, labels=3)
    emb = sample["embeddings"].astype(np.float64)
    emb_tf = tf.constant(emb)
    with tf.GradientTape() as tape:
        tape.watch(emb_tf)
        loss = cosine_embedding_loss(emb_tf, sample["instances"], sample["neighbours"], sample["background"],
                                     sample["foreground"], sample["valid"], LossConfig(variant=variant))
    gradient = tape.gradient(loss, emb_tf).numpy()
    rng = np.random.default_rng(0)
    flat = rng.choice(emb.size, size=40, replace=False)
    step = 1e-6
    for index in flat:
        coordinate = np.unravel_index(index, emb.shape)
        plus, minus = emb.copy(), emb.copy()
        plus[coordinate] += step
        minus[coordinate] -= step
        numeric = (reference(sample, variant, embeddings=plus)[0] - reference(sample, variant, embeddings=minus)[0])
        numeric /= 2 * step
        assert gradient[coordinate] == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    assert np.count_nonzero(gradient[sample["valid"]]) > 0.5 * gradient[sample["valid"]].size
    np.testing.assert_array_equal(gradient[~sample["valid"]], 0.0)


def test_full_jacobian_matches_finite_differences():
    sample = random_sample(41, frames=2, size=(3, 4), dim=3, labels=2, padding=1)
    def f(e):
        return cosine_embedding_loss(e, sample["instances"], sample["neighbours"], sample["background"],
                                     sample["foreground"], sample["valid"])
    theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(sample["embeddings"], tf.float64)],
                                                             delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------------------------
# Graph mode, batches, total loss


def test_runs_in_tf_function_with_static_shapes_and_a_graph_loop():
    sample = random_sample(50, frames=4)
    specs = [tf.TensorSpec(x.shape, tf.float32 if x.dtype == np.float32 else tf.bool) for x in sample.values()]
    function = tf.function(cosine_embedding_loss, input_signature=specs)
    np.testing.assert_allclose(function(*sample.values()).numpy(), reference(sample)[0], rtol=RTOL)
    graph = function.get_concrete_function().graph
    op_types = [op.type for op in graph.get_operations()]
    assert sum(t in ("While", "StatelessWhile") for t in op_types) == 2  # two passes over time, not unrolled
    assert graph.outputs[0].shape == ()


def test_batch_loss_is_mean_of_samples():
    samples = [random_sample(60 + b, labels=3, padding=1) for b in range(3)]
    batch = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
    value = batch_cosine_embedding_loss(*batch.values()).numpy()
    np.testing.assert_allclose(value, np.mean([reference(s)[0] for s in samples]), rtol=RTOL)
    terms = cosine_embedding_loss_terms(*batch.values(), config=MICCAI)
    np.testing.assert_allclose(terms.background.numpy(), [reference(s, "miccai2018")[1] for s in samples], rtol=RTOL)
    np.testing.assert_allclose(terms.instances.numpy(), [reference(s, "miccai2018")[2] for s in samples], rtol=RTOL)


def batch_targets(samples):
    return dict(
        instance_masks=np.stack([s["instances"] for s in samples]),
        neighbour_masks=np.stack([s["neighbours"] for s in samples]),
        background_mask=np.stack([s["background"] for s in samples]),
        foreground_mask=np.stack([s["foreground"] for s in samples]),
        valid_mask=np.stack([s["valid"] for s in samples]),
    )


def test_total_loss_two_hourglasses_and_regularisation():
    samples = [random_sample(70 + b) for b in range(2)]
    targets = batch_targets(samples)
    rng = np.random.default_rng(3)
    outputs = [rng.normal(size=samples[0]["embeddings"].shape[:-1] + (6,)) for _ in range(2)]
    outputs = [np.stack([o, o + rng.normal(size=o.shape)]).astype(np.float32) for o in outputs]
    regularization = [tf.constant(0.25), tf.constant(0.5)]
    config = LossConfig(hourglass_weights=[0.5, 2.0], background_weight=0.7)
    total, terms = total_loss(outputs, targets, regularization, config)

    expected_total = 0.75
    for k, output in enumerate(outputs):
        refs = [reference(s, background_weight=0.7, embeddings=output[b]) for b, s in enumerate(samples)]
        np.testing.assert_allclose(terms[f"hourglass_{k}/background"], np.mean([r[1] for r in refs]), rtol=RTOL)
        np.testing.assert_allclose(terms[f"hourglass_{k}/instances"], np.mean([r[2] for r in refs]), rtol=RTOL)
        np.testing.assert_allclose(terms[f"hourglass_{k}/loss"], np.mean([r[0] for r in refs]), rtol=RTOL)
        expected_total += config.hourglass_weights[k] * np.mean([r[0] for r in refs])
    np.testing.assert_allclose(terms["regularization"], 0.75, rtol=RTOL)
    np.testing.assert_allclose(total, expected_total, rtol=RTOL)
    assert terms["total"] is total
    assert set(terms) == {"hourglass_0/background", "hourglass_0/instances", "hourglass_0/loss",
                          "hourglass_1/background", "hourglass_1/instances", "hourglass_1/loss",
                          "regularization", "total"}

    # Per-replica scaling: the local sum over samples is divided by the global batch size.
    half, half_terms = total_loss(outputs, targets, [], config, global_batch_size=4)
    np.testing.assert_allclose(half, (expected_total - 0.75) / 2, rtol=RTOL)
    np.testing.assert_allclose(half_terms["regularization"], 0.0)


def test_total_loss_in_mirrored_strategy_train_step():
    samples = [random_sample(80 + b) for b in range(2)]
    targets = batch_targets(samples)
    config = LossConfig()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        weights = tf.Variable(np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32))

    @tf.function
    def step(targets):
        def replica(targets):
            with tf.GradientTape() as tape:
                features = tf.stack([tf.cast(targets["valid_mask"], tf.float32),
                                     tf.cast(targets["foreground_mask"], tf.float32)], axis=-1) + 0.1
                outputs = [tf.einsum("bthwc,cd->bthwd", features, weights)] * 2
                total, terms = total_loss(outputs, targets, [tf.reduce_sum(weights ** 2)], config,
                                          global_batch_size=2)
            return total, tape.gradient(total, weights)
        total, gradient = strategy.run(replica, args=(targets,))
        return strategy.reduce("SUM", total, axis=None), gradient

    total, gradient = step(targets)
    assert np.isfinite(total.numpy()) and np.all(np.isfinite(gradient.numpy()))
    assert np.any(gradient.numpy() != 0)


def test_wrong_number_of_hourglass_weights_and_bad_variant_raise():
    sample = random_sample(90)
    targets = batch_targets([sample])
    with pytest.raises(RshnError, match="loss.hourglass_weights"):
        total_loss([sample["embeddings"][None]], targets, [], LossConfig())
    with pytest.raises(ValueError, match="valid_mask"):
        total_loss([sample["embeddings"][None]] * 2, {k: v for k, v in targets.items() if k != "valid_mask"}, [],
                   LossConfig())
    with pytest.raises(RshnError, match="loss.variant"):
        tf_loss(sample, dataclasses.replace(LossConfig(), variant="unknown"))
