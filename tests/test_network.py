"""Tests of rshn_tf.layers and rshn_tf.models against NumPy float64 references written here.

The small CPU configuration (3 levels, 8 filters, 4-d embeddings, 32 px, T = 3) keeps the file fast; the paper
model is only built (parameter count, kernel shapes) and run once on a 64 × 64 frame.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from rshn_tf.config import ModelConfig
from rshn_tf.errors import RshnError
from rshn_tf.layers import ConvGRU2D
from rshn_tf.models import (
    RecurrentStackedHourglass,
    RecurrentStream,
    StackedHourglass,
    VolumetricStackedHourglass,
    build_model,
    build_rshn,
    build_shn,
    build_volumetric_shn,
)

SMALL = dict(levels=3, filters=8, embedding_size=4)
SIZE, T = 32, 3


# ------------------------------------------------------------------------------------------------------------------
# NumPy float64 references


def np_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Stride-1 convolution with zero 'same' padding; x (B, *spatial, Cin), kernel (*k, Cin, Cout)."""
    ksize = kernel.shape[:-2]
    pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in ksize] + [(0, 0)]
    padded = np.pad(x, pads)
    out = np.zeros(x.shape[:-1] + (kernel.shape[-1],))
    for offset in np.ndindex(*ksize):
        window = (slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset, x.shape[1:-1])) + (slice(None),)
        out += padded[window] @ kernel[offset]
    return out + bias


def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def max_pool_hw(x):
    """2 × 2 max pooling over the last two spatial axes (H, W)."""
    *lead, h, w, c = x.shape
    return x.reshape(*lead, h // 2, 2, w // 2, 2, c).max(axis=(-4, -2))


def upsample_hw(x):
    return np.repeat(np.repeat(x, 2, axis=-3), 2, axis=-2)


def l2n(x, eps=1e-4):
    return x / np.sqrt(np.maximum((x**2).sum(-1, keepdims=True), eps))


def weights_by_path(model) -> dict[str, np.ndarray]:
    return {v.path: np.asarray(v, dtype=np.float64) for v in model.weights}


def np_gru(w, prefix, x, h, activation=relu):
    conv = lambda name, inp: np_conv(inp, w[f"{prefix}/{name}/kernel"], w[f"{prefix}/{name}/bias"])  # noqa: E731
    xh = np.concatenate([x, h], -1)
    r = sigmoid(conv("conv_r", xh))
    u = sigmoid(conv("conv_u", xh))
    y = activation(conv("conv_y", np.concatenate([x, r * h], -1)))
    return u * h + (1 - u) * y


def np_hourglass(w, prefix, x, levels, states=None, input_conv=True):
    """One hourglass per docs/fidelity.md §1.1, §9.2; states given → ConvGRU parallel path."""
    conv = lambda name, inp, act=relu: act(np_conv(inp, w[f"{prefix}/{name}/kernel"], w[f"{prefix}/{name}/bias"]))  # noqa: E731
    if input_conv:
        x = conv("input_conv", x)
    contracted = []
    for level in range(levels):
        if level:
            x = max_pool_hw(x)
        x = conv(f"contracting_{level}", x)
        contracted.append(x)
    if states is not None:
        parallel = [np_gru(w, f"{prefix}/parallel_{lv}", c, s) for lv, (c, s) in enumerate(zip(contracted, states))]
    else:
        parallel = [conv(f"parallel_{lv}", c) for lv, c in enumerate(contracted)]
    x = conv(f"expanding_{levels - 1}", parallel[-1])
    for level in reversed(range(levels - 1)):
        x = conv(f"expanding_{level}", upsample_hw(x) + parallel[level])
    return conv("output_conv", x, act=lambda v: v), parallel


def np_rshn(w, frames, levels, filters, stacks=2, prefix="rshn/hourglass_stack"):
    """The whole RSHN over a (B, T, H, W, 1) sequence from zero states."""
    b, t, h, wd, _ = frames.shape
    states = [[np.zeros((b, h >> lv, wd >> lv, filters)) for lv in range(levels)] for _ in range(stacks)]
    outputs = [[] for _ in range(stacks)]
    for step in range(t):
        frame = frames[:, step]
        x = frame
        for k in range(stacks):
            if k:
                x = np.concatenate([frame, l2n(outputs[k - 1][-1])], -1)
            emb, states[k] = np_hourglass(w, f"{prefix}/hourglass_{k}", x, levels, states[k])
            outputs[k].append(emb)
    return [np.stack(o, 1) for o in outputs]


def np_feed_forward(w, prefix, image, levels, stacks=2, input_conv=True):
    outputs = []
    for k in range(stacks):
        x = image if k == 0 else np.concatenate([image, l2n(outputs[-1])], -1)
        outputs.append(np_hourglass(w, f"{prefix}/hourglass_{k}", x, levels, input_conv=input_conv)[0])
    return outputs


def expected_parameters(levels, filters, embedding_size, stacks=2, kernel_volume=9, gru=True, input_conv=True,
                        in_channels=1, output_kernel_volume=1):
    """Parameter count written out layer by layer (docs/fidelity.md §1.2, §9.2)."""
    conv = lambda k, cin, cout: k * cin * cout + cout  # noqa: E731
    total = 0
    for k in range(stacks):
        cin = in_channels + (embedding_size if k else 0)
        if input_conv:
            total += conv(1, cin, filters)
            cin = filters
        total += conv(kernel_volume, cin, filters) + (levels - 1) * conv(kernel_volume, filters, filters)
        total += levels * (3 * conv(kernel_volume, 2 * filters, filters) if gru else conv(kernel_volume, filters, filters))
        total += levels * conv(kernel_volume, filters, filters)
        total += conv(output_kernel_volume, filters, embedding_size)
    return total


# ------------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def small_rshn():
    keras.utils.set_random_seed(1)
    model = build_rshn(**SMALL)
    randomize_biases(model)
    return model


def randomize_biases(model, seed=0):
    """Zero biases hide mistakes (e.g. a missing bias add, or regularised biases); give them random values."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.path.endswith("bias"):
            variable.assign(rng.normal(0.0, 0.1, variable.shape).astype("float32"))


def random_frames(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# ------------------------------------------------------------------------------------------------------------------
# Parameter counts and structure


def test_paper_rshn_has_the_checkpoint_parameter_count_and_kernel_shapes():
    model = build_rshn()
    assert model.count_params() == 4_136_608
    assert expected_parameters(7, 64, 16) == 4_136_608
    shapes = {v.path: tuple(v.shape) for v in model.trainable_variables}
    assert len(shapes) == 2 * (2 + 7 * 2 * 5 + 2)  # per hourglass: input, 7 x (contr, 3 gru, exp), output; k+b
    for k, cin in ((0, 1), (1, 17)):
        prefix = f"rshn/hourglass_stack/hourglass_{k}"
        assert shapes[f"{prefix}/input_conv/kernel"] == (1, 1, cin, 64)
        for level in range(7):
            assert shapes[f"{prefix}/contracting_{level}/kernel"] == (3, 3, 64, 64)
            assert shapes[f"{prefix}/expanding_{level}/kernel"] == (3, 3, 64, 64)
            for gate in ("conv_r", "conv_u", "conv_y"):
                assert shapes[f"{prefix}/parallel_{level}/{gate}/kernel"] == (3, 3, 128, 64)
                assert shapes[f"{prefix}/parallel_{level}/{gate}/bias"] == (64,)
        assert shapes[f"{prefix}/output_conv/kernel"] == (1, 1, 64, 16)


def test_paper_baselines_parameter_counts():
    assert build_shn().count_params() == expected_parameters(7, 64, 16, gru=False)
    assert build_volumetric_shn().count_params() == expected_parameters(
        7, 64, 16, kernel_volume=27, gru=False, input_conv=False
    )


@pytest.mark.parametrize("architecture", ["rshn", "shn", "volumetric"])
def test_build_model_reads_every_value_from_the_config(architecture):
    config = ModelConfig(architecture=architecture, stacks=3, levels=2, filters=5, embedding_size=6, kernel_size=5,
                         output_kernel_size=3, activation="elu", gru_activation="tanh", l2_factor=0.0)
    model = build_model(config)
    expected_class = {"rshn": RecurrentStackedHourglass, "shn": StackedHourglass,
                      "volumetric": VolumetricStackedHourglass}[architecture]
    assert type(model) is expected_class
    volumetric = architecture == "volumetric"
    assert model.count_params() == expected_parameters(
        2, 5, 6, stacks=3, kernel_volume=125 if volumetric else 25, gru=architecture == "rshn",
        input_conv=not volumetric, output_kernel_volume=27 if volumetric else 9,
    )
    assert model.losses == []  # l2_factor 0: no regulariser at all
    conv = model.hourglasses[0].contracting[0]
    assert conv.activation is keras.activations.elu
    if architecture == "rshn":
        assert model.hourglasses[0].parallel_blocks[0].conv_y.activation is keras.activations.tanh
    # input_conv: explicit values win over the architecture default
    flipped = build_model(dataclasses.replace(config, input_conv=volumetric))
    assert (flipped.hourglasses[0].input_conv is not None) == volumetric


def test_unknown_architecture_is_a_user_error():
    with pytest.raises(RshnError, match="model.architecture"):
        build_model(ModelConfig(architecture="unet"))  # type: ignore[arg-type]


def test_initializers_follow_the_reference_code():
    keras.utils.set_random_seed(3)
    gru = ConvGRU2D(64, 3)
    gru(np.zeros((1, 4, 4, 64), "float32"), np.zeros((1, 4, 4, 64), "float32"))
    fan_in = 3 * 3 * 128
    for conv, scale in ((gru.conv_r, 1.0), (gru.conv_u, 1.0), (gru.conv_y, 2.0)):
        kernel = np.asarray(conv.kernel)
        target = np.sqrt(scale / fan_in)
        assert abs(kernel.std() / target - 1) < 0.02, conv.name
        # truncated at two standard deviations of the underlying (widened) normal
        assert np.abs(kernel).max() <= 2 * target / 0.87962566 + 1e-6
        assert not np.asarray(conv.bias).any()
    assert gru.conv_r.activation is keras.activations.sigmoid
    assert gru.conv_y.activation is keras.activations.relu
    model = build_rshn(**SMALL)
    conv = model.hourglasses[1].contracting[1]  # He: variance 2 / fan_in
    assert abs(np.asarray(conv.kernel).std() / np.sqrt(2 / (9 * 8)) - 1) < 0.15


# ------------------------------------------------------------------------------------------------------------------
# Numerics against NumPy


@pytest.mark.parametrize("activation, channels", [("relu", 5), ("tanh", 7)])
def test_conv_gru_matches_the_numpy_gate_equations(activation, channels):
    keras.utils.set_random_seed(2)
    layer = ConvGRU2D(6, 3, activation=activation)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 11, channels)).astype("float32")
    h = rng.normal(size=(2, 9, 11, 6)).astype("float32")
    layer(x, h)
    for conv in (layer.conv_r, layer.conv_u, layer.conv_y):
        conv.bias.assign(rng.normal(0, 0.3, 6).astype("float32"))
    out = np.asarray(layer(x, h), np.float64)
    w = {f"g/{conv.name}/{v.name}": np.asarray(v, np.float64)
         for conv in (layer.conv_r, layer.conv_u, layer.conv_y) for v in conv.weights}
    ref = np_gru(w, "g", x.astype(np.float64), h.astype(np.float64), {"relu": relu, "tanh": np.tanh}[activation])
    assert out.shape == (2, 9, 11, 6)
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


@pytest.mark.parametrize("zero_state", [False, True])
def test_conv_gru_split_into_input_and_state_halves_matches_the_numpy_gate_equations(zero_state):
    """Inference splits each convolution over [x, h] into an input half (reusable) and a state half (skipped for
    the zero state of a window's first frame); the result is the same GRU."""
    keras.utils.set_random_seed(3)
    layer = ConvGRU2D(6, 3)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9, 11, 5)).astype("float32")
    h = np.zeros((2, 9, 11, 6), np.float32) if zero_state else rng.normal(size=(2, 9, 11, 6)).astype("float32")
    layer(x, h)
    for conv in (layer.conv_r, layer.conv_u, layer.conv_y):
        conv.bias.assign(rng.normal(0, 0.3, 6).astype("float32"))
    terms = layer.input_terms(x)
    assert [tuple(t.shape) for t in terms] == [(2, 9, 11, 6)] * 3
    out = np.asarray(layer.update(terms, None if zero_state else h), np.float64)
    w = {f"g/{conv.name}/{v.name}": np.asarray(v, np.float64)
         for conv in (layer.conv_r, layer.conv_u, layer.conv_y) for v in conv.weights}
    ref = np_gru(w, "g", x.astype(np.float64), h.astype(np.float64))
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


def test_encoded_steps_match_the_numpy_reference_and_advance_gives_their_states(small_rshn):
    """encode + step_encoded (states None = zero states for the first frame) computes the same network."""
    frames = random_frames((2, T, 16, 16, 1), seed=8)
    ref = np_rshn(weights_by_path(small_rshn), frames.astype(np.float64), SMALL["levels"], SMALL["filters"])
    states = None
    for t in range(T):
        frame = tf.constant(frames[:, t])
        encoded = small_rshn.encode(frame)
        assert [tuple(a.shape) for a, _, _ in encoded] == [(2, 16 >> lv, 16 >> lv, 8) for lv in range(3)]
        advanced = small_rshn.advance_encoded(frame, encoded, states)
        outputs, states = small_rshn.step_encoded(frame, encoded, states)
        for out, expected in zip(outputs, ref):
            assert np.abs(np.asarray(out, np.float64) - expected[:, t]).max() / np.abs(expected).max() < 1e-5
        for got, want in zip(small_rshn.cell.flatten_states(advanced), small_rshn.cell.flatten_states(states)):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("first_output_scale", [1.0, 1e-3])
def test_rshn_matches_a_numpy_reference_of_the_whole_network(first_output_scale):
    keras.utils.set_random_seed(1)
    model = build_rshn(**SMALL)
    randomize_biases(model)
    # scaled down, the first embeddings have squared norms below eps = 1e-4, so eps matters in the coupling
    output_conv = model.hourglasses[0].output_conv
    for variable in output_conv.weights:
        variable.assign(variable * first_output_scale)
    frames = random_frames((2, T, 16, 16, 1))
    outputs = model(frames)
    ref = np_rshn(weights_by_path(model), frames.astype(np.float64), SMALL["levels"], SMALL["filters"])
    assert len(outputs) == 2
    for out, expected in zip(outputs, ref):
        assert out.shape == (2, T, 16, 16, SMALL["embedding_size"])
        assert np.abs(np.asarray(out) - expected).max() / np.abs(expected).max() < 1e-5


def test_shn_runs_a_sequence_frame_by_frame():
    """Training on videos feeds the SHN (B, T, H, W, C); each frame must get what it gets alone (no temporal flow)."""
    keras.utils.set_random_seed(5)
    shn = build_shn(**SMALL)
    randomize_biases(shn)
    video = random_frames((2, 3, 16, 16, 1), seed=2)
    outputs = shn(video)
    assert [tuple(out.shape) for out in outputs] == [(2, 3, 16, 16, SMALL["embedding_size"])] * len(outputs)
    for b in range(2):
        for t in range(3):
            alone = shn(video[b:b + 1, t])
            for out, single in zip(outputs, alone):
                np.testing.assert_allclose(np.asarray(out)[b, t], np.asarray(single)[0], rtol=1e-5, atol=1e-6)
    ref = np_feed_forward(weights_by_path(shn), "shn", video[1, 2:3].astype(np.float64), SMALL["levels"])
    for out, expected in zip(outputs, ref):
        assert np.abs(np.asarray(out)[1, 2] - expected[0]).max() / np.abs(expected).max() < 1e-5


def test_feed_forward_baselines_match_numpy_references():
    keras.utils.set_random_seed(4)
    shn = build_shn(**SMALL)
    randomize_biases(shn)
    image = random_frames((2, 16, 16, 1), seed=1)
    ref = np_feed_forward(weights_by_path(shn), "shn", image.astype(np.float64), SMALL["levels"])
    for out, expected in zip(shn(image), ref):
        assert np.abs(np.asarray(out) - expected).max() / np.abs(expected).max() < 1e-5

    vol = build_volumetric_shn(**SMALL)
    randomize_biases(vol)
    window = random_frames((1, T, 8, 8, 1), seed=2)
    ref = np_feed_forward(weights_by_path(vol), "volumetric_shn", window.astype(np.float64), SMALL["levels"],
                          input_conv=False)
    for out, expected in zip(vol(window), ref):
        assert out.shape == (1, T, 8, 8, SMALL["embedding_size"])
        assert np.abs(np.asarray(out) - expected).max() / np.abs(expected).max() < 1e-5
    # time is never pooled: frame 0 sees frame 1 through the 3x3x3 kernels, frame 2 does too
    changed = window.copy()
    changed[:, 0] += 1.0
    delta = np.abs(np.asarray(vol(changed)[1]) - np.asarray(vol(window)[1])).max(axis=(0, 2, 3, 4))
    assert (delta > 0).all()


def test_l2_losses_equal_the_papers_weight_decay_term(small_rshn):
    lam = ModelConfig().l2_factor
    kernels = [np.asarray(v, np.float64) for v in small_rshn.trainable_variables if v.path.endswith("kernel")]
    expected = lam * sum((k**2).sum() for k in kernels) / 2
    assert len(small_rshn.losses) == len(kernels)  # one term per kernel, none for the (non-zero) biases
    assert float(sum(small_rshn.losses)) == pytest.approx(expected, rel=1e-5)
    for model in (build_shn(**SMALL), build_volumetric_shn(**SMALL)):
        kernels = [np.asarray(v, np.float64) for v in model.trainable_variables if v.path.endswith("kernel")]
        assert float(sum(model.losses)) == pytest.approx(lam * sum((k**2).sum() for k in kernels) / 2, rel=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Streaming and states


def test_streaming_one_frame_at_a_time_equals_the_sequence_call(small_rshn):
    frames = random_frames((3, T, SIZE, SIZE, 1), seed=5)
    sequence = [np.asarray(o) for o in tf.function(small_rshn)(frames)]
    step = tf.function(small_rshn.step)
    stream = RecurrentStream(small_rshn, step_fn=step)
    stream.reset(3, SIZE, SIZE)
    for t in range(T):
        outputs = stream(tf.constant(frames[:, t]))
        for k in range(2):
            np.testing.assert_allclose(np.asarray(outputs[k]), sequence[k][:, t], rtol=1e-5, atol=1e-5)
    assert step.experimental_get_tracing_count() == 1
    states = stream.get_states()
    assert [tuple(s.shape) for s in states[1]] == [(3, SIZE >> lv, SIZE >> lv, 8) for lv in range(3)]
    # the whole padded frame works as well as tiles: a different (batch, H, W) is just another shape
    stream.reset(1, 2 * SIZE, SIZE)
    assert stream(random_frames((1, 2 * SIZE, SIZE, 1)))[1].shape == (1, 2 * SIZE, SIZE, 4)
    np.testing.assert_allclose(
        np.asarray(small_rshn.normalized_embeddings(outputs)),
        l2n(np.asarray(outputs[-1], np.float64)), rtol=1e-5, atol=1e-6,
    )


def test_resetting_states_makes_a_window_independent_of_earlier_frames(small_rshn):
    video = random_frames((1, 6, SIZE, SIZE, 1), seed=6)
    window_start, window_length = 3, 3
    stream = RecurrentStream(small_rshn)

    def run_window(frames, reset=True):
        if reset:
            stream.reset(1, SIZE, SIZE)
        return [np.asarray(stream(frames[:, t])[1]) for t in range(window_start, window_start + window_length)]

    stream.reset(1, SIZE, SIZE)
    for t in range(window_start):
        stream(video[:, t])
    carried = run_window(video, reset=False)
    reset = run_window(video)
    fresh = np.asarray(small_rshn(video[:, window_start:])[1])
    perturbed = video.copy()
    perturbed[:, :window_start] = random_frames((1, window_start, SIZE, SIZE, 1), seed=7)
    reset_perturbed = run_window(perturbed)
    for t in range(window_length):
        np.testing.assert_allclose(reset[t], fresh[:, t], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(reset[t], reset_perturbed[t])
    assert np.abs(carried[0] - reset[0]).max() > 1e-3  # without the reset, earlier frames do matter


def test_states_and_sizes_are_checked(small_rshn):
    with pytest.raises(RshnError, match="multiples of 2\\^\\(levels-1\\) = 4"):
        small_rshn.zero_states(1, 30, 32)
    with pytest.raises(RshnError, match="multiples"):
        small_rshn(np.zeros((1, 2, 18, 16, 1), "float32"))
    with pytest.raises(RshnError, match="2 channels"):
        small_rshn(np.zeros((1, 2, 16, 16, 2), "float32"))
    with pytest.raises(RshnError, match="zero_states"):
        small_rshn.step(np.zeros((1, 16, 16, 1), "float32"), small_rshn.zero_states(1, 16, 16)[:1])
    with pytest.raises(RshnError, match="reset"):
        RecurrentStream(small_rshn).get_states()


def test_sequence_call_traces_one_symbolic_time_loop(small_rshn):
    def graph_ops(length):
        fn = tf.function(small_rshn).get_concrete_function(tf.TensorSpec((1, length, SIZE, SIZE, 1), tf.float32))
        return [op.type for op in fn.graph.get_operations()]

    short, long = graph_ops(2), graph_ops(6)
    assert any(t in ("While", "StatelessWhile") for t in short)
    assert len(short) == len(long)  # the graph does not grow with T: the loop is not unrolled


# ------------------------------------------------------------------------------------------------------------------
# Training and saving


@pytest.mark.parametrize("architecture", ["rshn", "shn", "volumetric"])
def test_loss_on_second_output_reaches_every_variable_of_both_hourglasses(architecture):
    keras.utils.set_random_seed(8)
    model = build_model(ModelConfig(architecture=architecture, **SMALL))
    shape = (2, SIZE, SIZE, 1) if architecture == "shn" else (1, T, SIZE, SIZE, 1)
    frames = tf.constant(random_frames(shape, seed=9))

    @tf.function
    def train_step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x)[1] - 0.5)) + tf.add_n(model.losses)
        return loss, tape.gradient(loss, model.trainable_variables)

    loss, grads = train_step(frames)
    assert np.isfinite(float(loss))
    paths = [v.path for v in model.trainable_variables]
    assert all("/hourglass_0/" in p or "/hourglass_1/" in p for p in paths)
    assert sum("/hourglass_0/" in p for p in paths) == sum("/hourglass_1/" in p for p in paths)
    for path, grad in zip(paths, grads):
        assert grad is not None, path
        assert float(tf.reduce_max(tf.abs(grad))) > 0, path


@pytest.mark.parametrize("architecture", ["rshn", "shn", "volumetric"])
def test_save_and_load_reproduce_outputs_exactly(architecture, tmp_path):
    model = build_model(ModelConfig(architecture=architecture, **SMALL))
    randomize_biases(model)
    shape = (1, 16, 16, 1) if architecture == "shn" else (1, T, 16, 16, 1)
    x = random_frames(shape, seed=10)
    expected = [np.asarray(o) for o in model(x)]

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
    for a, b in zip(expected, loaded(x)):
        np.testing.assert_array_equal(a, np.asarray(b))

    model.save_weights(tmp_path / "model.weights.h5")
    rebuilt = type(model).from_config(model.get_config())
    rebuilt.load_weights(tmp_path / "model.weights.h5")
    for a, b in zip(expected, rebuilt(x)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_paper_rshn_runs_on_the_smallest_valid_frame():
    model = build_rshn()
    outputs, states = model.step(random_frames((1, 64, 64, 1)), model.zero_states(1, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(1, 64, 64, 16)] * 2
    assert tuple(states[1][6].shape) == (1, 1, 1, 64)
    assert np.isfinite(np.asarray(outputs[1])).all()


def test_initialisation_is_reproducible_with_the_global_seed():
    def weights(seed):
        keras.utils.set_random_seed(seed)
        return [np.asarray(v) for v in build_rshn(**SMALL).weights]

    first, again, other = weights(11), weights(11), weights(12)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_unrolled_time_loop_gives_the_same_outputs(small_rshn):
    unrolled = RecurrentStackedHourglass.from_config({**small_rshn.get_config(), "unroll": True})
    unrolled.set_weights(small_rshn.get_weights())
    frames = random_frames((1, T, 16, 16, 1), seed=12)
    for a, b in zip(small_rshn(frames), unrolled(frames)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
