"""Keras building blocks of the (recurrent) stacked hourglass networks (paper §2.1, §3.1, §5.1, §5.2;
docs/fidelity.md §1, §9).

Everything here is written with ``keras.layers`` and ``keras.ops`` only, so it is backend-neutral. Data layout is
channels-last. The blocks:

* :class:`ConvGRU2D`: the convolutional GRU of the parallel (skip) path, called as ``layer(x, h) -> h'``; for
  inference also as ``update(input_terms(x), h)``, with the input and state halves of its convolutions apart.
* :class:`Hourglass`: one hourglass (input conv, contracting / parallel / expanding paths, output conv), 2D with a
  ConvGRU or a convolution in the parallel path, or volumetric (3D convolutions, time never pooled).
* :class:`RecurrentStackCell`: the stacked recurrent hourglasses for one frame, usable as a ``keras.layers.RNN`` cell.
* :func:`l2_normalize`, :func:`stack_input`, :func:`kernel_regularizer`: the small shared pieces.

Default argument values are read from :class:`rshn_tf.config.ModelConfig`, the one home of the paper's numbers.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence

import keras
from keras import ops

from rshn_tf.config import ModelConfig

_DEFAULTS = ModelConfig()

#: Down- and up-sampling factor between hourglass levels (§2.1: max pooling 2×2, nearest-neighbour upsampling ×2).
DOWNSAMPLING_FACTOR = 2


def kernel_regularizer(l2_factor: float) -> Optional[keras.regularizers.Regularizer]:
    """The weight decay of one convolution kernel, or ``None`` when ``l2_factor`` is 0.

    The paper's term is λ·Σw²/2 (§3.1; TF1 ``tf.nn.l2_loss``, docs/fidelity.md §1.6), Keras' ``L2(f)`` adds f·Σw², hence
    ``L2(λ/2)``. Only kernels are regularised, never biases.

    Args:
        l2_factor: λ of the paper (``ModelConfig.l2_factor``).
    """
    if l2_factor < 0:
        raise ValueError(f"l2_factor must be non-negative, got {l2_factor}")
    return keras.regularizers.L2(l2_factor / 2.0) if l2_factor > 0 else None


def he_initializer() -> keras.initializers.Initializer:
    """He initialisation as in the authors' code: variance scaling, scale 2, fan-in, truncated normal (§3.1)."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_in", distribution="truncated_normal")


def gate_initializer(scale: float) -> keras.initializers.Initializer:
    """Initialiser of the ConvGRU gate kernels: variance scaling with ``scale`` (fan-in, truncated normal).

    ``scale`` 1.0 is the authors' MIA code (docs/fidelity.md §1.3), 2.0 the paper's text (He), 0.0 all-zero kernels (the
    MICCAI 2018 code, docs/fidelity.md §9.1).
    """
    if scale < 0:
        raise ValueError(f"gate_init_scale must be non-negative, got {scale}")
    if scale == 0:
        return keras.initializers.Zeros()
    return keras.initializers.VarianceScaling(scale=scale, mode="fan_in", distribution="truncated_normal")


def l2_normalize(x: Any, epsilon: float = _DEFAULTS.normalization_epsilon) -> Any:
    """L2-normalise ``x`` over its last (channel) axis as TF does: ``x / sqrt(max(Σx², epsilon))``
    (docs/fidelity.md §1.4)."""
    squared_norm = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared_norm, epsilon))


def stack_input(image: Any, previous_embeddings: Any, epsilon: float = _DEFAULTS.normalization_epsilon) -> Any:
    """Input of hourglass k > 0: ``concat(image, l2_normalize(embeddings of hourglass k-1))`` on channels (§2.1)."""
    return ops.concatenate([image, l2_normalize(previous_embeddings, epsilon)], axis=-1)


def _conv(
    rank: int,
    filters: int,
    kernel_size: int,
    activation: Optional[str],
    l2_factor: float,
    name: str,
    kernel_initializer: Optional[keras.initializers.Initializer] = None,
) -> keras.layers.Layer:
    """A stride-1, zero-'same'-padded convolution with bias (zero-initialised) and the kernel regulariser."""
    layer_class = {2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[rank]
    return layer_class(
        filters,
        kernel_size,
        padding="same",
        activation=activation,
        use_bias=True,
        kernel_initializer=kernel_initializer or he_initializer(),
        bias_initializer="zeros",
        kernel_regularizer=kernel_regularizer(l2_factor),
        name=name,
    )


@keras.saving.register_keras_serializable(package="rshn_tf")
class ConvGRU2D(keras.layers.Layer):
    """Convolutional GRU of the parallel path (§2.1; Ballas et al. 2016; the MIA code's cell, docs/fidelity.md §1.3).

    Called as ``layer(x, h)`` with x of shape (B, H, W, C) and the previous state h of shape (B, H, W, filters);
    returns the new state h', which is also the output::

        r  = sigmoid(conv_r([x, h]))
        u  = sigmoid(conv_u([x, h]))
        y  = activation(conv_y([x, r * h]))
        h' = u * h + (1 - u) * y

    ``[a, b]`` is channel concatenation. Three separate convolutions with bias, zero-initialised biases; the gate
    kernels use variance scaling with ``gate_init_scale`` (fan-in, truncated normal), the candidate kernel He.

    Attributes:
        conv_r: Reset-gate convolution on [x, h].
        conv_u: Update-gate convolution on [x, h].
        conv_y: Candidate convolution on [x, r * h].
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int = _DEFAULTS.kernel_size,
        activation: str = _DEFAULTS.gru_activation,
        gate_init_scale: float = _DEFAULTS.gate_init_scale,
        l2_factor: float = 0.0,
        **kwargs: Any,
    ) -> None:
        """Create the cell.

        Args:
            filters: Channels of the state and output.
            kernel_size: Kernel size of the three convolutions.
            activation: Activation of the candidate (§3.1: ReLU; Ballas et al.: tanh).
            gate_init_scale: Variance-scaling factor of the gate kernels (see :func:`gate_initializer`).
            l2_factor: λ of the paper's weight decay λ·Σw²/2 on the three kernels (0 = none).
            **kwargs: Standard ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).
        """
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.activation = activation
        self.gate_init_scale = float(gate_init_scale)
        self.l2_factor = float(l2_factor)
        self.conv_r = _conv(2, filters, kernel_size, "sigmoid", l2_factor, "conv_r", gate_initializer(gate_init_scale))
        self.conv_u = _conv(2, filters, kernel_size, "sigmoid", l2_factor, "conv_u", gate_initializer(gate_init_scale))
        self.conv_y = _conv(2, filters, kernel_size, activation, l2_factor, "conv_y", he_initializer())

    def build(self, x_shape: Sequence[Optional[int]], h_shape: Sequence[Optional[int]]) -> None:
        """Create the kernels for inputs with ``x_shape[-1]`` channels (h must have ``filters`` channels)."""
        if h_shape[-1] is not None and h_shape[-1] != self.filters:
            raise ValueError(f"{self.name}: state has {h_shape[-1]} channels, expected {self.filters}")
        concat_shape = tuple(x_shape[:-1]) + (x_shape[-1] + self.filters,)
        for conv in (self.conv_r, self.conv_u, self.conv_y):
            conv.build(concat_shape)

    def call(self, x: Any, h: Any) -> Any:
        """Return the new state h' for input x and previous state h."""
        xh = ops.concatenate([x, h], axis=-1)
        r = self.conv_r(xh)
        u = self.conv_u(xh)
        y = self.conv_y(ops.concatenate([x, r * h], axis=-1))
        return y + u * (h - y)  # = u * h + (1 - u) * y with fewer full-size temporaries (less inference memory)

    # -- inference with the input and state halves of the convolutions computed separately

    def _split_kernel(self, conv: keras.layers.Layer) -> tuple[Any, Any]:
        """(input half, state half) of a kernel over [x, h] along its input channels."""
        inputs = conv.kernel.shape[-2] - self.filters
        return conv.kernel[:, :, :inputs, :], conv.kernel[:, :, inputs:, :]

    def input_terms(self, x: Any) -> tuple[Any, Any, Any]:
        """The parts of the three pre-activations that depend on x only (biases included).

        A convolution of [x, h] is the sum of a convolution of x with the input half of its kernel and one of h
        with the state half. The input part of a frame does not depend on the state, so it can be computed once and
        reused by every window that contains the frame (inference, §2.5). Continue with :meth:`update`.

        Returns:
            (a_r, a_u, a_y), each (B, H, W, filters).
        """
        return tuple(
            ops.add(ops.conv(x, self._split_kernel(conv)[0], padding="same"), conv.bias)
            for conv in (self.conv_r, self.conv_u, self.conv_y)
        )

    def update(self, terms: Sequence[Any], h: Optional[Any] = None) -> Any:
        """The new state from :meth:`input_terms` of x and the previous state h; equals ``call(x, h)`` up to
        float rounding.

        Args:
            terms: (a_r, a_u, a_y) from :meth:`input_terms`.
            h: Previous state, or None for the zero state (the first frame of a window): then every state term
                vanishes (r · h = 0), so no state convolution runs.
        """
        a_r, a_u, a_y = terms
        if h is None:
            u = self.conv_u.activation(a_u)
            y = self.conv_y.activation(a_y)
            return y - u * y  # y + u * (0 - y)
        r = self.conv_r.activation(a_r + ops.conv(h, self._split_kernel(self.conv_r)[1], padding="same"))
        u = self.conv_u.activation(a_u + ops.conv(h, self._split_kernel(self.conv_u)[1], padding="same"))
        y = self.conv_y.activation(a_y + ops.conv(r * h, self._split_kernel(self.conv_y)[1], padding="same"))
        return y + u * (h - y)

    def compute_output_shape(self, x_shape: Sequence[Optional[int]], h_shape: Sequence[Optional[int]]) -> tuple:
        return tuple(x_shape[:-1]) + (self.filters,)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            activation=self.activation,
            gate_init_scale=self.gate_init_scale,
            l2_factor=self.l2_factor,
        )
        return config


@keras.saving.register_keras_serializable(package="rshn_tf")
class Hourglass(keras.layers.Layer):
    """One hourglass of the stacked hourglass networks (§2.1, Fig. 2; docs/fidelity.md §1.1, §1.2, §9.2, §9.3).

    Per level ℓ = 0..levels-1: a contracting convolution (max pooling between levels), a parallel block on the
    contracting output (ConvGRU2D for ``parallel='gru'``, a convolution for ``parallel='conv'``) and an expanding
    convolution. The expanding path starts from the deepest parallel output; above it, the upsampled result is
    added to the level's parallel output before the level's expanding convolution. An optional 1×1 input
    convolution (code) comes first and a linear output convolution to ``embedding_size`` channels last.

    ``rank=2`` works on frames (B, H, W, C); ``rank=3`` is the volumetric hourglass of Table 3 on windows
    (B, T, H, W, C) with k×k×k kernels and pooling/upsampling (1, 2, 2), so time is never pooled.

    Sub-layers are named ``input_conv``, ``contracting_{ℓ}``, ``parallel_{ℓ}``, ``expanding_{ℓ}`` and
    ``output_conv``, so variable paths read e.g. ``.../hourglass_1/parallel_3/conv_u/kernel``.

    Calling: ``parallel='gru'``: ``hourglass(x, states) -> (embeddings, new_states)`` with ``states`` a list of one
    (B, H/2^ℓ, W/2^ℓ, filters) tensor per level; otherwise ``hourglass(x) -> embeddings``.
    """

    def __init__(
        self,
        filters: int = _DEFAULTS.filters,
        levels: int = _DEFAULTS.levels,
        embedding_size: int = _DEFAULTS.embedding_size,
        kernel_size: int = _DEFAULTS.kernel_size,
        activation: str = _DEFAULTS.activation,
        parallel: Literal["gru", "conv"] = "gru",
        rank: int = 2,
        gru_activation: str = _DEFAULTS.gru_activation,
        gate_init_scale: float = _DEFAULTS.gate_init_scale,
        input_conv: bool = True,
        output_kernel_size: int = _DEFAULTS.output_kernel_size,
        l2_factor: float = _DEFAULTS.l2_factor,
        **kwargs: Any,
    ) -> None:
        """Create the hourglass.

        Args:
            filters: Filters of every convolution and ConvGRU (§2.1: 64).
            levels: Number of levels (§3.1: 7).
            embedding_size: Output channels (§3.1: 16).
            kernel_size: Kernel size of the level convolutions and ConvGRUs (§2.1: 3).
            activation: Activation of the convolutions (§3.1: ReLU).
            parallel: ``gru`` (RSHN) or ``conv`` (SHN §5.1, volumetric §5.2) in the parallel path.
            rank: 2 for frames, 3 for volumetric windows (requires ``parallel='conv'``).
            gru_activation: Candidate activation of the ConvGRUs.
            gate_init_scale: Variance-scaling factor of the ConvGRU gate kernels.
            input_conv: Whether a 1×1 input convolution with ``filters`` outputs and ``activation`` comes first.
            output_kernel_size: Kernel size of the linear output convolution.
            l2_factor: λ of the weight decay λ·Σw²/2 on every kernel.
            **kwargs: Standard ``keras.layers.Layer`` arguments.
        """
        super().__init__(**kwargs)
        if parallel not in ("gru", "conv"):
            raise ValueError(f"parallel must be 'gru' or 'conv', got {parallel!r}")
        if rank not in (2, 3) or (rank == 3 and parallel == "gru"):
            raise ValueError(f"rank must be 2, or 3 with parallel='conv'; got rank={rank}, parallel={parallel!r}")
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        self.filters = int(filters)
        self.levels = int(levels)
        self.embedding_size = int(embedding_size)
        self.kernel_size = int(kernel_size)
        self.activation = activation
        self.parallel = parallel
        self.rank = int(rank)
        self.gru_activation = gru_activation
        self.gate_init_scale = float(gate_init_scale)
        self.use_input_conv = bool(input_conv)
        self.output_kernel_size = int(output_kernel_size)
        self.l2_factor = float(l2_factor)

        def conv(name: str, kernel: int = kernel_size, out: int = filters, act: Optional[str] = activation):
            return _conv(rank, out, kernel, act, l2_factor, name)

        self.input_conv = conv("input_conv", kernel=1) if input_conv else None
        self.contracting = [conv(f"contracting_{level}") for level in range(levels)]
        if parallel == "gru":
            self.parallel_blocks = [
                ConvGRU2D(filters, kernel_size, gru_activation, gate_init_scale, l2_factor, name=f"parallel_{level}")
                for level in range(levels)
            ]
        else:
            self.parallel_blocks = [conv(f"parallel_{level}") for level in range(levels)]
        self.expanding = [conv(f"expanding_{level}") for level in range(levels)]
        self.output_conv = conv("output_conv", kernel=output_kernel_size, out=embedding_size, act=None)
        factor = DOWNSAMPLING_FACTOR
        if rank == 2:
            self.pool = keras.layers.MaxPooling2D(factor, factor, padding="same", name="pool")
            self.upsample = keras.layers.UpSampling2D(factor, interpolation="nearest", name="upsample")
        else:
            self.pool = keras.layers.MaxPooling3D((1, factor, factor), (1, factor, factor), padding="same", name="pool")
            self.upsample = keras.layers.UpSampling3D((1, factor, factor), name="upsample")

    @property
    def recurrent(self) -> bool:
        """Whether the parallel path holds ConvGRUs (the hourglass then takes and returns states)."""
        return self.parallel == "gru"

    def level_shape(self, level: int, spatial: Sequence[Optional[int]]) -> tuple:
        """Spatial shape at ``level`` for input spatial shape ``spatial`` ((H, W) or (T, H, W))."""
        scale = DOWNSAMPLING_FACTOR**level
        pooled = [None if s is None else s // scale for s in spatial[-2:]]
        return tuple(spatial[:-2]) + tuple(pooled)

    def build(self, x_shape: Sequence[Optional[int]], states_shape: Any = None) -> None:
        """Create all kernels for inputs of shape ``x_shape`` (only the channel count must be known)."""
        batch, spatial, channels = x_shape[0], tuple(x_shape[1:-1]), x_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the number of input channels must be known to build the hourglass")
        if self.input_conv is not None:
            self.input_conv.build(tuple(x_shape))
            channels = self.filters
        for level in range(self.levels):
            level_input = (batch,) + self.level_shape(level, spatial) + (channels,)
            level_features = (batch,) + self.level_shape(level, spatial) + (self.filters,)
            self.contracting[level].build(level_input)
            if self.recurrent:
                self.parallel_blocks[level].build(level_features, level_features)
            else:
                self.parallel_blocks[level].build(level_features)
            self.expanding[level].build(level_features)
            channels = self.filters
        self.output_conv.build((batch,) + spatial + (self.filters,))

    def call(self, x: Any, states: Optional[Sequence[Any]] = None) -> Any:
        """Run the hourglass on one input (and, if recurrent, one state per level); see the class docstring."""
        parallel = self.parallel_path(x, states)
        embeddings = self.expanding_path(parallel)
        if self.recurrent:
            return embeddings, parallel
        return embeddings

    def parallel_path(self, x: Any, states: Optional[Sequence[Any]] = None) -> list[Any]:
        """Input convolution, contracting path and parallel blocks: the outputs of the parallel path, one per level
        (for ``parallel='gru'`` these are the new states). Call on a built hourglass."""
        if self.recurrent and (states is None or len(states) != self.levels):
            raise ValueError(f"{self.name}: expected a list of {self.levels} states, got {states!r}")
        contracted = self.contracting_path(x)
        if self.recurrent:
            return [block(c, s) for block, c, s in zip(self.parallel_blocks, contracted, states)]
        return [block(c) for block, c in zip(self.parallel_blocks, contracted)]

    def contracting_path(self, x: Any) -> list[Any]:
        """Input convolution and contracting path: the input of the parallel block of every level."""
        if self.input_conv is not None:
            x = self.input_conv(x)
        contracted = []
        for level in range(self.levels):
            if level > 0:
                x = self.pool(x)
            x = self.contracting[level](x)
            contracted.append(x)
        return contracted

    def encode(self, x: Any) -> list[tuple[Any, Any, Any]]:
        """Everything of a recurrent hourglass that does not depend on the states: the contracting path and the
        input terms of every ConvGRU (:meth:`ConvGRU2D.input_terms`), one triple per level."""
        if not self.recurrent:
            raise ValueError(f"{self.name}: encode needs ConvGRUs in the parallel path")
        return [block.input_terms(c) for block, c in zip(self.parallel_blocks, self.contracting_path(x))]

    def parallel_from_encoded(self, encoded: Sequence[Sequence[Any]], states: Optional[Sequence[Any]]) -> list[Any]:
        """The new states from :meth:`encode` of x and the states (None: all zero, the first frame of a window);
        equal to :meth:`parallel_path` up to float rounding."""
        states = [None] * self.levels if states is None else states
        return [block.update(terms, s) for block, terms, s in zip(self.parallel_blocks, encoded, states)]

    def expanding_path(self, parallel: Sequence[Any]) -> Any:
        """Expanding path and output convolution on the parallel outputs: the raw embeddings."""
        x = self.expanding[-1](parallel[-1])
        for level in reversed(range(self.levels - 1)):
            x = self.expanding[level](self.upsample(x) + parallel[level])
        return self.output_conv(x)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            filters=self.filters,
            levels=self.levels,
            embedding_size=self.embedding_size,
            kernel_size=self.kernel_size,
            activation=self.activation,
            parallel=self.parallel,
            rank=self.rank,
            gru_activation=self.gru_activation,
            gate_init_scale=self.gate_init_scale,
            input_conv=self.use_input_conv,
            output_kernel_size=self.output_kernel_size,
            l2_factor=self.l2_factor,
        )
        return config


@keras.saving.register_keras_serializable(package="rshn_tf")
class RecurrentStackCell(keras.layers.Layer):
    """One time step of the recurrent stacked hourglass network (§2.1), usable as a ``keras.layers.RNN`` cell.

    Hourglass 0 sees the frame; hourglass k > 0 sees :func:`stack_input` of the frame and the embeddings of
    hourglass k-1 for the same frame (no stop-gradient). Each hourglass has one ConvGRU state per level.

    Two calling conventions:

    * :meth:`step`: ``step(frame, states) -> (outputs, new_states)`` with ``states[k][ℓ]`` the state of hourglass
      k at level ℓ and ``outputs`` a list of one (B, H, W, embedding_size) tensor per hourglass.
    * ``cell(frame, flat_states) -> (concatenated outputs, new flat states)``: the RNN-cell protocol (states
      flattened hourglass-major, outputs concatenated on channels; :meth:`split_outputs` undoes that).
    """

    def __init__(
        self,
        stacks: int = _DEFAULTS.stacks,
        normalization_epsilon: float = _DEFAULTS.normalization_epsilon,
        hourglass_kwargs: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        """Create the cell.

        Args:
            stacks: Number of stacked hourglasses (§2.1: 2).
            normalization_epsilon: ε of the L2 normalisation between hourglasses.
            hourglass_kwargs: Arguments of every :class:`Hourglass` (``parallel`` is forced to ``gru``).
            **kwargs: Standard ``keras.layers.Layer`` arguments.
        """
        super().__init__(**kwargs)
        if stacks < 1:
            raise ValueError(f"stacks must be at least 1, got {stacks}")
        self.stacks = int(stacks)
        self.normalization_epsilon = float(normalization_epsilon)
        hourglass_kwargs = {**(hourglass_kwargs or {}), "parallel": "gru", "rank": 2}
        self.hourglass_config = hourglass_kwargs
        self.hourglasses = [Hourglass(**hourglass_kwargs, name=f"hourglass_{k}") for k in range(stacks)]
        first = self.hourglasses[0]
        #: RNN protocol: one entry per flat state (channels; spatial sizes differ per level).
        self.state_size = [first.filters] * (self.stacks * first.levels)
        self.output_size = first.embedding_size * self.stacks

    @property
    def levels(self) -> int:
        """Levels per hourglass."""
        return self.hourglasses[0].levels

    def build(self, frame_shape: Sequence[Optional[int]], states_shape: Any = None) -> None:
        """Create all kernels for frames of shape (B, H, W, C)."""
        channels = frame_shape[-1]
        for k, hourglass in enumerate(self.hourglasses):
            extra = 0 if k == 0 else hourglass.embedding_size
            hourglass.build(tuple(frame_shape[:-1]) + (channels + extra,))

    def step(self, frame: Any, states: Sequence[Sequence[Any]]) -> tuple[list[Any], list[list[Any]]]:
        """One frame through all hourglasses; see the class docstring for the structures."""
        if len(states) != self.stacks:
            raise ValueError(f"{self.name}: expected states for {self.stacks} hourglasses, got {len(states)}")
        outputs, new_states = [], []
        x = frame
        for k, hourglass in enumerate(self.hourglasses):
            if k > 0:
                x = stack_input(frame, outputs[-1], self.normalization_epsilon)
            embeddings, hourglass_states = hourglass(x, list(states[k]))
            outputs.append(embeddings)
            new_states.append(list(hourglass_states))
        return outputs, new_states

    def encode(self, frame: Any) -> list[tuple[Any, Any, Any]]:
        """The state-independent part of hourglass 0 for a frame (:meth:`Hourglass.encode`): it is the same in
        every window that contains the frame, so inference can compute it once per frame."""
        return self.hourglasses[0].encode(frame)

    def step_encoded(
        self,
        frame: Any,
        encoded: Sequence[Sequence[Any]],
        states: Optional[Sequence[Sequence[Any]]] = None,
        embeddings: bool = True,
    ) -> tuple[list[Any], list[list[Any]]]:
        """:meth:`step` from ``encoded = encode(frame)``; equal up to float rounding.

        Args:
            frame: (B, H, W, C) frames (hourglasses k > 0 see them again).
            encoded: :meth:`encode` of ``frame``.
            states: ``states[k][ℓ]``, or None for all-zero states (the first frame of a window): then no state
                convolution runs in any hourglass.
            embeddings: False skips the expanding path and output convolution of the last hourglass (as
                :meth:`advance`); ``outputs`` then lacks its entry.

        Returns:
            ``(outputs, new_states)`` as :meth:`step`.
        """
        if states is not None and len(states) != self.stacks:
            raise ValueError(f"{self.name}: expected states for {self.stacks} hourglasses, got {len(states)}")
        outputs, new_states = [], []
        for k, hourglass in enumerate(self.hourglasses):
            previous = None if states is None else list(states[k])
            if k == 0:
                parallel = hourglass.parallel_from_encoded(encoded, previous)
            else:
                x = stack_input(frame, outputs[-1], self.normalization_epsilon)
                if previous is None:
                    parallel = hourglass.parallel_from_encoded(hourglass.encode(x), None)
                else:  # one convolution over [x, h] is faster than two halves when nothing is reused
                    parallel = hourglass.parallel_path(x, previous)
            new_states.append(list(parallel))
            if embeddings or k < self.stacks - 1:
                outputs.append(hourglass.expanding_path(parallel))
        return outputs, new_states

    def advance(self, frame: Any, states: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """Only the new states of :meth:`step`: the last hourglass's expanding path and output convolution, which
        no state depends on, are skipped (inference of frames whose embeddings are not used)."""
        if len(states) != self.stacks:
            raise ValueError(f"{self.name}: expected states for {self.stacks} hourglasses, got {len(states)}")
        new_states = []
        x = frame
        for k, hourglass in enumerate(self.hourglasses):
            if k == self.stacks - 1:
                new_states.append(list(hourglass.parallel_path(x, list(states[k]))))
                break
            embeddings, hourglass_states = hourglass(x, list(states[k]))
            new_states.append(list(hourglass_states))
            x = stack_input(frame, embeddings, self.normalization_epsilon)
        return new_states

    def nest_states(self, flat_states: Sequence[Any]) -> list[list[Any]]:
        """Flat (hourglass-major) state list → ``states[k][ℓ]``."""
        levels = self.levels
        return [list(flat_states[k * levels:(k + 1) * levels]) for k in range(self.stacks)]

    @staticmethod
    def flatten_states(states: Sequence[Sequence[Any]]) -> list[Any]:
        """``states[k][ℓ]`` → flat hourglass-major list."""
        return [state for hourglass_states in states for state in hourglass_states]

    def split_outputs(self, concatenated: Any) -> list[Any]:
        """Split channel-concatenated outputs (RNN protocol) into one tensor per hourglass."""
        return ops.split(concatenated, self.stacks, axis=-1)

    def call(self, frame: Any, states: Sequence[Any]) -> tuple[Any, list[Any]]:
        """RNN-cell protocol: flat states in, (channel-concatenated outputs, flat new states) out."""
        outputs, new_states = self.step(frame, self.nest_states(states))
        return ops.concatenate(outputs, axis=-1), self.flatten_states(new_states)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            stacks=self.stacks,
            normalization_epsilon=self.normalization_epsilon,
            hourglass_kwargs={k: v for k, v in self.hourglass_config.items() if k not in ("parallel", "rank")},
        )
        return config
