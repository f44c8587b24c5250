"""The networks of the paper as Keras models: RSHN (§2.1), non-recurrent SHN (§5.1), volumetric SHN (Table 3, §5.2).

All three stack ``stacks`` hourglasses (:class:`rshn_tf.layers.Hourglass`); hourglass k > 0 sees the image
concatenated with the L2-normalised embeddings of hourglass k-1, and every model returns a **list** with the raw
(unnormalised) embeddings of each hourglass, because the loss is applied to all of them (§2.1).

* :class:`RecurrentStackedHourglass` (RSHN): (B, T, H, W, C) → (B, T, H, W, D) per hourglass; the ConvGRU states
  start at zero for every call.
* :class:`StackedHourglass` (SHN): still images (B, H, W, C) → (B, H, W, D) per hourglass.
* :class:`VolumetricStackedHourglass`: a whole window (B, T, H, W, C) in one pass → (B, T, H, W, D) per hourglass.

H and W must be multiples of 2^(levels-1). Every model is built from a :class:`~rshn_tf.config.ModelConfig`, the one
home of its hyper-parameters (checked by the schema's ``model`` checks): :func:`build_model` picks the class from
``model.architecture``; :func:`build_rshn`, :func:`build_shn` and :func:`build_volumetric_shn` take a config (default:
the paper's values) and keyword overrides of its keys. ``get_config`` stores the config, so saved models rebuild
from it. Models are built on construction (``count_params()`` works at once); initialisation is deterministic after
``keras.utils.set_random_seed``.

Streaming (RSHN only, §2.5): :meth:`RecurrentStackedHourglass.zero_states` and
:meth:`RecurrentStackedHourglass.step` run one frame at a time with explicit states; :class:`RecurrentStream`
keeps the states for the caller (get / set / reset). Running T frames through ``step`` equals the sequence call.
:meth:`RecurrentStackedHourglass.advance` returns only the new states (cheaper; for frames whose embeddings are
not used). :meth:`RecurrentStackedHourglass.encode` splits off the state-independent part of a step (reusable
across the overlapping windows of inference); :meth:`~RecurrentStackedHourglass.step_encoded` and
:meth:`~RecurrentStackedHourglass.advance_encoded` finish it, and skip all state convolutions from zero states.
The sequence call loops over time with ``keras.layers.RNN`` (a symbolic ``while_loop`` under TensorFlow, so a
``tf.function`` traces one frame, not T).

Saving: ``model.save("m.keras")`` / ``keras.models.load_model`` (import :mod:`rshn_tf.models` first so the classes
are registered), or ``model.save_weights("m.weights.h5")`` and ``model.load_weights`` on a model built from the
same config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import keras
from keras import ops

from rshn_tf.config import Config, ModelConfig, config_from_dict, validate
from rshn_tf.errors import RshnError
from rshn_tf.layers import DOWNSAMPLING_FACTOR, Hourglass, RecurrentStackCell, l2_normalize, stack_input

#: Channels of the network input: CTC frames are single-channel grey values (§3.1).
IMAGE_CHANNELS = 1

__all__ = [
    "IMAGE_CHANNELS",
    "RecurrentStackedHourglass",
    "RecurrentStream",
    "StackedHourglass",
    "VolumetricStackedHourglass",
    "build_model",
    "build_rshn",
    "build_shn",
    "build_volumetric_shn",
    "resolve_input_conv",
]


class _StackedHourglassModel(keras.Model):
    """What the three models share: the ``ModelConfig`` they are built from, input checks, normalised embeddings.

    Subclasses set ``architecture`` (the value of ``model.architecture`` they build).
    """

    architecture = "rshn"

    def __init__(
        self,
        model_config: ModelConfig | dict[str, Any] | None = None,
        *,
        input_channels: int = IMAGE_CHANNELS,
        **kwargs: Any,
    ) -> None:
        """Check the hyper-parameters against the schema and keep them.

        Args:
            model_config: The ``model`` section (or its dict, as stored by ``get_config``); ``architecture`` is set to
                the class's own, and a ``null`` ``input_conv`` to the architecture's default
                (:func:`resolve_input_conv`). None: the paper's values.
            input_channels: Channels of the input frames.
            **kwargs: Passed to ``keras.Model`` (e.g. ``name``).

        Raises:
            RshnError: If a value is invalid (the schema's checks of the ``model`` section) or the channel count is
                not positive.
        """
        super().__init__(**kwargs)
        if isinstance(model_config, dict):
            model_config = config_from_dict({"model": model_config}, f"{type(self).__name__} config").model
        config = dataclasses.replace(model_config or ModelConfig(), architecture=self.architecture)
        config.input_conv = resolve_input_conv(config)
        validate(Config(model=config), f"{type(self).__name__}", sections=["model"])
        if not isinstance(input_channels, int) or input_channels < 1:
            raise RshnError(f"{type(self).__name__}: input_channels must be a positive integer, got {input_channels!r}")
        self.model_config = config
        self.input_channels = input_channels

    @property
    def stacks(self) -> int:
        """Stacked hourglasses."""
        return self.model_config.stacks

    @property
    def levels(self) -> int:
        """Levels per hourglass."""
        return self.model_config.levels

    @property
    def filters(self) -> int:
        """Filters of every convolution and ConvGRU."""
        return self.model_config.filters

    @property
    def embedding_size(self) -> int:
        """Embedding dimension D."""
        return self.model_config.embedding_size

    @property
    def normalization_epsilon(self) -> float:
        """ε of the L2 normalisation between hourglasses."""
        return self.model_config.normalization_epsilon

    @property
    def size_multiple(self) -> int:
        """H and W of the input must be multiples of this (2^(levels-1))."""
        return DOWNSAMPLING_FACTOR ** (self.levels - 1)

    def _hourglass_kwargs(self) -> dict[str, Any]:
        """The arguments of every :class:`~rshn_tf.layers.Hourglass` that the config gives."""
        c = self.model_config
        return dict(filters=c.filters, levels=c.levels, embedding_size=c.embedding_size, kernel_size=c.kernel_size,
                    activation=c.activation, input_conv=c.input_conv, output_kernel_size=c.output_kernel_size,
                    l2_factor=c.l2_factor)

    def _check_input_shape(self, shape: Sequence[Optional[int]], what: str, time_axis: bool) -> None:
        """Raise RshnError for a wrong rank, channel count or a spatial size not divisible by 2^(levels-1)."""
        expected = "(B, T, H, W, C)" if time_axis else "(B, H, W, C)"
        if len(shape) != (5 if time_axis else 4):
            raise RshnError(f"{self.name}: {what} must have shape {expected}, got {tuple(shape)}")
        if shape[-1] is not None and shape[-1] != self.input_channels:
            raise RshnError(
                f"{self.name}: {what} has {shape[-1]} channels, the model was built for {self.input_channels}"
            )
        self._check_spatial(shape[-3], shape[-2])

    def _check_spatial(self, height: Any, width: Any) -> None:
        for size in (height, width):
            if isinstance(size, int) and size % self.size_multiple != 0:
                raise RshnError(
                    f"{self.name}: image height and width must be multiples of 2^(levels-1) = {self.size_multiple} "
                    f"for {self.levels} levels, got {height} x {width}; pad the input (e.g. to "
                    f"{-(-height // self.size_multiple) * self.size_multiple} x "
                    f"{-(-width // self.size_multiple) * self.size_multiple})"
                )

    def normalized_embeddings(self, outputs: Sequence[Any]) -> Any:
        """L2-normalised embeddings of the last hourglass (the ones clustered at inference, §2.1, §2.3).

        Args:
            outputs: The list returned by the model (or by ``step``).
        """
        return l2_normalize(outputs[-1], self.normalization_epsilon)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(model_config=dataclasses.asdict(self.model_config), input_channels=self.input_channels)
        return config


@keras.saving.register_keras_serializable(package="rshn_tf")
class RecurrentStackedHourglass(_StackedHourglassModel):
    """The recurrent stacked hourglass network (RSHN, §2.1; docs/fidelity.md §1).

    ``model(frames)`` with frames (B, T, H, W, C) returns a list of ``stacks`` tensors (B, T, H, W, D); all ConvGRU
    states start at zero for every call (§2.1, docs/fidelity.md §1.5). Variables live under ``.../hourglass_{k}/...``.

    Streaming: ``states = model.zero_states(B, H, W)``, then per frame
    ``outputs, states = model.step(frames_t, states)`` with ``frames_t`` (B, H, W, C); ``states[k][ℓ]`` is the
    ConvGRU state of hourglass k at level ℓ, shape (B, H/2^ℓ, W/2^ℓ, filters). B may be a batch of tiles or one
    whole padded frame. ``tf.function(model.step)`` does not retrace for repeated shapes.
    """

    architecture = "rshn"

    def __init__(
        self,
        model_config: ModelConfig | dict[str, Any] | None = None,
        *,
        input_channels: int = IMAGE_CHANNELS,
        unroll: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create and build the model; see :func:`build_rshn` for the arguments."""
        super().__init__(model_config, input_channels=input_channels, **kwargs)
        self.unroll = bool(unroll)
        hourglass_kwargs = self._hourglass_kwargs()
        hourglass_kwargs.update(gru_activation=self.model_config.gru_activation,
                                gate_init_scale=self.model_config.gate_init_scale)
        cell = RecurrentStackCell(self.stacks, self.normalization_epsilon, hourglass_kwargs, name="hourglass_stack")
        self.time_loop = keras.layers.RNN(cell, return_sequences=True, unroll=self.unroll, name="time_loop")
        self.build((None, None, None, None, self.input_channels))

    @property
    def cell(self) -> RecurrentStackCell:
        """The per-frame network (all hourglasses)."""
        return self.time_loop.cell

    @property
    def hourglasses(self) -> list[Hourglass]:
        """The hourglasses, first to last."""
        return list(self.cell.hourglasses)

    def build(self, input_shape: Sequence[Optional[int]]) -> None:
        """Create all variables (called on construction; only the channel count matters)."""
        if not self.cell.built:
            self.cell.build((input_shape[0],) + tuple(input_shape[2:]))

    def zero_states(self, batch: Any, height: Any, width: Any) -> list[list[Any]]:
        """All-zero ConvGRU states for frames of size (batch, height, width): ``states[k][ℓ]``.

        Raises:
            RshnError: If height or width is not a multiple of 2^(levels-1).
        """
        self._check_spatial(height, width)
        states = []
        for _ in range(self.stacks):
            states.append([
                ops.zeros(
                    (batch, height // DOWNSAMPLING_FACTOR**level, width // DOWNSAMPLING_FACTOR**level, self.filters),
                    dtype=self.compute_dtype,
                )
                for level in range(self.levels)
            ])
        return states

    def step(self, frames: Any, states: Sequence[Sequence[Any]]) -> tuple[list[Any], list[list[Any]]]:
        """Run one frame per batch element: ``(outputs, new_states)``.

        Args:
            frames: (B, H, W, C) frames (tiles, or whole padded frames).
            states: ``states[k][ℓ]`` from :meth:`zero_states` or the previous ``step``.

        Returns:
            ``outputs``: one (B, H, W, D) tensor per hourglass (raw embeddings); ``new_states``: same structure as
            ``states``.
        """
        self._check_step(frames, states)
        return self.cell.step(frames, states)

    def advance(self, frames: Any, states: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """The new states of :meth:`step` without the embeddings: the last hourglass's expanding path and output
        convolution are skipped (about 6 % of a step). For frames whose embeddings are not used, e.g. all but the
        last two frames of an inference window (§2.5)."""
        self._check_step(frames, states)
        return self.cell.advance(frames, states)

    def encode(self, frames: Any) -> list[tuple[Any, Any, Any]]:
        """The part of a step that does not depend on the states: hourglass 0's input convolution, contracting path
        and the input terms of its ConvGRUs (:meth:`rshn_tf.layers.RecurrentStackCell.encode`), ``encoded[ℓ]`` =
        (a_r, a_u, a_y) of level ℓ. A frame has the same encoding in every window that contains it (§2.5), so
        inference computes it once per frame; continue with :meth:`step_encoded` / :meth:`advance_encoded`."""
        self._check_input_shape(tuple(frames.shape), "frames", time_axis=False)
        return self.cell.encode(frames)

    def step_encoded(
        self, frames: Any, encoded: Sequence[Sequence[Any]], states: Optional[Sequence[Sequence[Any]]] = None
    ) -> tuple[list[Any], list[list[Any]]]:
        """:meth:`step` with ``encoded = encode(frames)``; equal up to float rounding. ``states=None`` stands for
        all-zero states (the first frame of a window) and skips every state convolution."""
        self._check_encoded_step(frames, states)
        return self.cell.step_encoded(frames, encoded, states)

    def advance_encoded(
        self, frames: Any, encoded: Sequence[Sequence[Any]], states: Optional[Sequence[Sequence[Any]]] = None
    ) -> list[list[Any]]:
        """:meth:`advance` with ``encoded = encode(frames)`` (``states=None``: zero states)."""
        self._check_encoded_step(frames, states)
        return self.cell.step_encoded(frames, encoded, states, embeddings=False)[1]

    def _check_encoded_step(self, frames: Any, states: Optional[Sequence[Sequence[Any]]]) -> None:
        if states is None:
            self._check_input_shape(tuple(frames.shape), "frames", time_axis=False)
        else:
            self._check_step(frames, states)

    def _check_step(self, frames: Any, states: Sequence[Sequence[Any]]) -> None:
        self._check_input_shape(tuple(frames.shape), "frames", time_axis=False)
        if len(states) != self.stacks or any(len(s) != self.levels for s in states):
            raise RshnError(
                f"{self.name}: states must be a list of {self.stacks} lists of {self.levels} tensors "
                "(use model.zero_states(batch, height, width))"
            )

    def call(self, frames: Any, training: Optional[bool] = None) -> list[Any]:
        """Run whole sequences from zero states: (B, T, H, W, C) → list of (B, T, H, W, D) per hourglass."""
        self._check_input_shape(tuple(frames.shape), "frames", time_axis=True)
        shape = ops.shape(frames)
        states = self.zero_states(shape[0], shape[2], shape[3])
        concatenated = self.time_loop(frames, initial_state=self.cell.flatten_states(states))
        return self.cell.split_outputs(concatenated)

    def compute_output_shape(self, input_shape: Sequence[Optional[int]]) -> list[tuple]:
        return [tuple(input_shape[:-1]) + (self.embedding_size,) for _ in range(self.stacks)]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(unroll=self.unroll)
        return config


class _FeedForwardStack(_StackedHourglassModel):
    """Stacked hourglasses without states: the SHN (rank 2) and the volumetric SHN (rank 3).

    Subclasses set ``architecture`` and ``rank``.
    """

    rank = 2

    def __init__(
        self,
        model_config: ModelConfig | dict[str, Any] | None = None,
        *,
        input_channels: int = IMAGE_CHANNELS,
        **kwargs: Any,
    ) -> None:
        """Create and build the model; see :func:`build_shn` and :func:`build_volumetric_shn` for the arguments."""
        super().__init__(model_config, input_channels=input_channels, **kwargs)
        hourglass_kwargs = self._hourglass_kwargs()
        hourglass_kwargs.update(parallel="conv", rank=self.rank)
        self.hourglasses = [Hourglass(**hourglass_kwargs, name=f"hourglass_{k}") for k in range(self.stacks)]
        self.build((None,) * (self.rank + 1) + (self.input_channels,))

    def build(self, input_shape: Sequence[Optional[int]]) -> None:
        """Create all variables (called on construction; only the channel count matters)."""
        for k, hourglass in enumerate(self.hourglasses):
            if not hourglass.built:
                extra = 0 if k == 0 else self.embedding_size
                hourglass.build(tuple(input_shape[:-1]) + (input_shape[-1] + extra,))

    def call(self, inputs: Any, training: Optional[bool] = None) -> list[Any]:
        """Run all hourglasses; returns one raw-embedding tensor per hourglass, shaped like the input."""
        self._check_input_shape(tuple(inputs.shape), "input", time_axis=self.rank == 3)
        outputs = []
        for k, hourglass in enumerate(self.hourglasses):
            x = inputs if k == 0 else stack_input(inputs, outputs[-1], self.normalization_epsilon)
            outputs.append(hourglass(x))
        return outputs

    def compute_output_shape(self, input_shape: Sequence[Optional[int]]) -> list[tuple]:
        return [tuple(input_shape[:-1]) + (self.embedding_size,) for _ in range(self.stacks)]


@keras.saving.register_keras_serializable(package="rshn_tf")
class StackedHourglass(_FeedForwardStack):
    """The non-recurrent stacked hourglass (§5.1): each ConvGRU replaced by one convolution; (B, H, W, C) input.

    A sequence (B, T, H, W, C), as training on videos feeds it (the extra Table 3 row ``shn_h0.1``), runs frame by
    frame: time is folded into the batch, so no information passes between frames, and the outputs come back as
    (B, T, H, W, E) for the sequence loss.
    """

    architecture = "shn"
    rank = 2

    def call(self, inputs: Any, training: Optional[bool] = None) -> list[Any]:
        """Run all hourglasses on frames (B, H, W, C) or, frame by frame, on sequences (B, T, H, W, C)."""
        if len(inputs.shape) != 5:
            return super().call(inputs, training=training)
        self._check_input_shape(tuple(inputs.shape), "input", time_axis=True)
        batch, time, height, width, channels = ops.shape(inputs)
        outputs = super().call(ops.reshape(inputs, (-1, height, width, channels)), training=training)
        return [ops.reshape(output, (batch, time, height, width, self.embedding_size)) for output in outputs]


@keras.saving.register_keras_serializable(package="rshn_tf")
class VolumetricStackedHourglass(_FeedForwardStack):
    """The volumetric baseline of Table 3 (§5.2; docs/fidelity.md §9.2): k×k×k convolutions in all three paths, pooling
    and upsampling (1, 2, 2) so time is never pooled; a whole window (B, T, H, W, C) in one pass, no states."""

    architecture = "volumetric"
    rank = 3


class RecurrentStream:
    """Frame-by-frame RSHN inference that keeps the ConvGRU states for the caller (§2.5, docs/fidelity.md §1.5).

    Example (states reset at the start of every window, one tile batch)::

        stream = RecurrentStream(model, step_fn=tf.function(model.step))
        stream.reset(num_tiles, 256, 256)
        for frame in window:                    # (num_tiles, 256, 256, 1)
            outputs = stream(frame)             # list of (num_tiles, 256, 256, D)
        saved = stream.get_states(); ...; stream.set_states(saved)
    """

    def __init__(
        self,
        model: RecurrentStackedHourglass,
        step_fn: Optional[Callable[[Any, Any], tuple[list[Any], list[list[Any]]]]] = None,
    ) -> None:
        """Wrap ``model``; ``step_fn`` replaces ``model.step`` (e.g. ``tf.function(model.step)``)."""
        self.model = model
        self._step = step_fn or model.step
        self._states: Optional[list[list[Any]]] = None

    def reset(self, batch: int, height: int, width: int) -> None:
        """Set all states to zero for frames of size (batch, height, width)."""
        self._states = self.model.zero_states(batch, height, width)

    def get_states(self) -> list[list[Any]]:
        """The current states ``states[k][ℓ]``.

        Raises:
            RshnError: If neither :meth:`reset` nor :meth:`set_states` was called.
        """
        if self._states is None:
            raise RshnError("RecurrentStream: no states yet; call reset(batch, height, width) first")
        return [list(s) for s in self._states]

    def set_states(self, states: Sequence[Sequence[Any]]) -> None:
        """Replace the current states (e.g. with those saved for another tile)."""
        self._states = [list(s) for s in states]

    def __call__(self, frames: Any) -> list[Any]:
        """Run one frame (B, H, W, C) and keep the new states; returns one (B, H, W, D) output per hourglass."""
        outputs, self._states = self._step(frames, self.get_states())
        return list(outputs)


# ---------------------------------------------------------------------------------------------------------------
# Builders


def _with(model_config: Optional[ModelConfig], overrides: dict[str, Any], builder: str) -> ModelConfig:
    """``model_config`` (default: the paper's values) with keyword overrides of its keys."""
    config = model_config or ModelConfig()
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise RshnError(f"{builder}: unknown model keys {', '.join(unknown)}; the keys are those of ModelConfig")
    return dataclasses.replace(config, **overrides)


def build_rshn(
    model_config: Optional[ModelConfig] = None,
    *,
    input_channels: int = IMAGE_CHANNELS,
    unroll: bool = False,
    name: str = "rshn",
    **overrides: Any,
) -> RecurrentStackedHourglass:
    """Build the recurrent stacked hourglass network; defaults are the paper's (4,136,608 parameters).

    Args:
        model_config: The ``model`` section (:class:`~rshn_tf.config.ModelConfig`: stacks, levels, filters,
            embedding size, kernel sizes, activations, gate initialisation, input convolution, normalisation ε and
            weight decay, each documented there); None: the paper's values.
        input_channels: Channels of the input frames (1).
        unroll: Unroll the time loop in Python instead of a symbolic loop (needs a static T; slower tracing).
        name: Model name (prefix of every variable path).
        **overrides: Keys of ``ModelConfig`` that replace those of ``model_config``, e.g. ``levels=3, filters=8``.

    Raises:
        RshnError: For an unknown key or an invalid value.
    """
    config = _with(model_config, overrides, "build_rshn")
    return RecurrentStackedHourglass(config, input_channels=input_channels, unroll=unroll, name=name)


def build_shn(
    model_config: Optional[ModelConfig] = None,
    *,
    input_channels: int = IMAGE_CHANNELS,
    name: str = "shn",
    **overrides: Any,
) -> StackedHourglass:
    """Build the non-recurrent stacked hourglass for still images (§5.1); arguments as in :func:`build_rshn`
    (``gru_activation`` and ``gate_init_scale`` are not used)."""
    return StackedHourglass(_with(model_config, overrides, "build_shn"), input_channels=input_channels, name=name)


def build_volumetric_shn(
    model_config: Optional[ModelConfig] = None,
    *,
    input_channels: int = IMAGE_CHANNELS,
    name: str = "volumetric_shn",
    **overrides: Any,
) -> VolumetricStackedHourglass:
    """Build the volumetric stacked hourglass of Table 3 (§5.2): kernel_size³ convolutions, no input conv (code).

    Arguments as in :func:`build_rshn`; ``kernel_size`` and ``output_kernel_size`` are cubed.
    """
    return VolumetricStackedHourglass(_with(model_config, overrides, "build_volumetric_shn"),
                                      input_channels=input_channels, name=name)


def resolve_input_conv(model_config: ModelConfig) -> bool:
    """``model.input_conv`` of the config, or the architecture's default when it is ``null``.

    Defaults (authors' code): RSHN and SHN have the 1×1 input convolution (docs/fidelity.md §1.2), the volumetric
    network does not (docs/fidelity.md §9.2).
    """
    if model_config.input_conv is not None:
        return bool(model_config.input_conv)
    return model_config.architecture != "volumetric"


def build_model(
    model_config: ModelConfig, *, input_channels: int = IMAGE_CHANNELS, unroll: bool = False
) -> keras.Model:
    """Build the network selected by ``model_config.architecture`` with every value from the config.

    Args:
        model_config: The ``model`` section of the configuration.
        input_channels: Channels of the input frames.
        unroll: RSHN only: unroll the time loop in Python (see :func:`build_rshn`).

    Returns:
        A built :class:`RecurrentStackedHourglass`, :class:`StackedHourglass` or
        :class:`VolumetricStackedHourglass`.

    Raises:
        RshnError: For an unknown architecture.
    """
    classes = {"rshn": RecurrentStackedHourglass, "shn": StackedHourglass, "volumetric": VolumetricStackedHourglass}
    if model_config.architecture not in classes:
        raise RshnError(
            f"model.architecture must be one of 'rshn', 'shn', 'volumetric', got {model_config.architecture!r}"
        )
    extra = {"unroll": unroll} if model_config.architecture == "rshn" else {}
    default_names = {"rshn": "rshn", "shn": "shn", "volumetric": "volumetric_shn"}
    return classes[model_config.architecture](model_config, input_channels=input_channels,
                                              name=default_names[model_config.architecture], **extra)
