"""The configuration schema of rshn-tf: one nested set of dataclasses whose defaults are the paper's values.

Every number of the method has exactly one home here. Defaults follow Payer et al., Medical Image Analysis 2019
("the paper", section numbers given as §); where the authors' public TF1 code behaves differently, the code's
behaviour is offered as an option and the docstring says so ("code:"). Per-dataset values (paper Table 1 and the
authors' code, docs/fidelity.md §10) live in the YAML presets of ``experiments/`` and are layered over these defaults.

Loading rules:
    * A YAML file holds some of the sections ``data``, ``model``, ``augmentation``, ``loss``, ``training``,
      ``inference``, ``postprocessing``, ``tracking`` and ``experiment``, plus an optional top-level ``base`` (a
      preset name such as ``DIC-C2DH-HeLa``, or a path relative to the YAML file, or a list of them) that is loaded
      first and then overridden.
    * ``--set section.key=value`` overrides (value parsed as YAML) are applied last.
    * The schema owns validation: unknown keys, values of the wrong type and values out of range
      (:data:`SECTION_CHECKS`, one list of checks per section) are all reported at once, in one :class:`RshnError`
      naming each key and the file or ``--set`` it came from.

Saved configurations (``config.yaml`` of model, result and run folders) start with ``schema_version``
(:data:`SCHEMA_VERSION`). Loading brings an older layout up to date step by step (:data:`MIGRATIONS`, in the manner of
CSBDeep's ``update_loaded_config``); a file without ``schema_version`` (every folder saved before versioning, and
hand-written YAMLs) is version 1, and a file of a newer version is refused with a clear message.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from rshn_tf.atomic import write_text_atomic
from rshn_tf.errors import RshnError

#: The six CTC datasets evaluated in the paper (§4.2, Table 1); each has a preset YAML in ``experiments/``.
PAPER_DATASETS = (
    "DIC-C2DH-HeLa",
    "Fluo-C2DL-MSC",
    "Fluo-N2DH-GOWT1",
    "Fluo-N2DL-HeLa",
    "PhC-C2DH-U373",
    "Fluo-N2DH-SIM+",
)


@dataclass
class DataConfig:
    """Where the data is and how frames are brought to the network grid (§3.1, §4.2, Table 1).

    Attributes:
        dataset: CTC dataset name (e.g. ``DIC-C2DH-HeLa``); selects nothing by itself, presets set the values.
        dataset_dir: Folder of the CTC dataset holding ``01``, ``01_GT``, ... ; ``--data PATH`` overrides it.
        train_sequences: Sequences used for training (§5.4: both training videos for the challenge models).
        resampled_size: Network-grid size (height, width) every frame is resampled to before tiling (Table 1, which
            lists width × height); ``null`` keeps the original size.
        extra_scale: Additional fixed zoom at test time (code: 0.95 for Fluo-C2DL-MSC; paper: 1).
        tile_size: Network input size s (height, width); training crops and inference tiles (§2.4, §3.1: 256 × 256).
        sequence_length: Frames per training sample and per inference window, l (§3.1, §4.2: 8).
        smoothing_sigma: Gaussian smoothing σ in pixels applied to every input frame (§3.1: 1).
        normalization_percentiles: Robust minimum/maximum percentiles mapped to -1/1 (§3.1: 0.1 % / 99.9 %;
            code: 0.05 / 99.95).
        border_band: Width in original pixels of the un-annotated CTC image rim (docs/fidelity.md §3.8, §7.5): no
            background loss there, and instances lying wholly inside it are removed from results
            (50 px for most datasets, 25 for Fluo-N2DL-HeLa, 0 for Fluo-N2DH-SIM+).
        seg_sample_fraction: Fraction of training samples that contain a frame with SEG ground truth (§4.2: about
            every second mini-batch).
        complete_seg_min_coverage: A SEG frame counts as completely segmented, and so enters the background term
            (§4.2: "frames on which every cell is segmented"), when at least this fraction of its TRA markers got a
            SEG mask. The authors' hand-made lists (docs/fidelity.md §3.8) accept frames with one or two unsegmented
            cells: 0.8 reproduces their DIC-C2DH-HeLa count (17 of 18 SEG frames). 1.0 is the literal reading, which
            leaves Fluo-N2DL-HeLa 01 without a single complete frame.
        mirror_padding: Code: mirror-pad frames by half their size before cropping (DIC, GOWT1, SIM+, N2DL-HeLa);
            paper: no padding, pixels outside the image are invalid.
        crop_border: Code: pixels cropped from every side of training frames before augmentation (MSC: 20).
        label_blur_sigma: Code: per-label Gaussian smoothing σ of training label crops (DIC: 2); paper: 0 (off).
        num_workers: Parallel workers that produce augmented training samples.
        prefetch: Training samples prepared ahead of the train step.
        seg_sample_frames: Which frames anchor the ``seg_sample_fraction`` windows: ``complete`` (frames with
            complete SEG, the ones that feed the background term; §4.2 read with the background term in mind) or
            ``any`` frame with SEG ground truth (code: its id list repeats every SEG frame, docs/fidelity.md §3.4).
        worker_type: ``thread`` or ``process``: how the ``num_workers`` sample workers run (same samples either way).
        seg_sample_mode: ``paper``: a ``seg_sample_fraction`` of the windows contain a ``seg_sample_frames`` frame,
            the others none (§4.2, "approximately every second mini-batch"). ``code``: the authors' id list, all
            frames once plus the SEG frames repeated to make up that fraction of the anchors (docs/fidelity.md §3.4);
            more windows then contain a SEG frame (DIC-C2DH-HeLa: about 80 %).
        train_frames: ``[start, stop]``: train only on frames start … stop - 1 of every training sequence (e.g. to
            score a model on the later frames of a dataset with one annotated video); ``null`` = all frames.
        silver_truth: Train on the CTC silver truth (``0X_ST/SEG``) too: every frame without gold SEG takes the
            silver-truth masks (relabelled to the TRA ids), counts as a SEG frame and, at
            ``complete_seg_min_coverage``, as completely segmented. The CTC allows silver truth as training data
            ("GT+ST" submissions); the paper trains on the gold truth only, so off.
    """

    dataset: str = "custom"
    dataset_dir: Optional[str] = None
    train_sequences: list[str] = field(default_factory=lambda: ["01", "02"])
    resampled_size: Optional[list[int]] = None
    extra_scale: float = 1.0
    tile_size: list[int] = field(default_factory=lambda: [256, 256])
    sequence_length: int = 8
    smoothing_sigma: float = 1.0
    normalization_percentiles: list[float] = field(default_factory=lambda: [0.1, 99.9])
    border_band: int = 50
    seg_sample_fraction: float = 0.5
    complete_seg_min_coverage: float = 0.8
    mirror_padding: bool = False
    crop_border: int = 0
    label_blur_sigma: float = 0.0
    num_workers: int = 2
    prefetch: int = 4
    seg_sample_frames: Literal["complete", "any"] = "complete"
    worker_type: Literal["thread", "process"] = "thread"
    seg_sample_mode: Literal["paper", "code"] = "paper"
    train_frames: Optional[list[int]] = None
    silver_truth: bool = False


@dataclass
class ModelConfig:
    """The recurrent stacked hourglass network and its baselines (§2.1, §3.1, §5.1, §5.2; docs/fidelity.md §1, §9).

    Attributes:
        architecture: ``rshn`` (recurrent stacked hourglass, §2.1), ``shn`` (non-recurrent: each ConvGRU replaced by
            a 3×3 conv, §5.1) or ``volumetric`` (3×3×3 convolutions over time, Table 3, §5.2).
        stacks: Number of stacked hourglasses (§2.1: 2).
        levels: Levels per hourglass (§3.1: 7).
        filters: Filters of every convolution and ConvGRU (§2.1: 64).
        embedding_size: Embedding dimension d (§3.1: 16).
        kernel_size: Kernel size of the level convolutions and ConvGRUs (§2.1: 3).
        activation: Activation of the convolutions (§3.1: ReLU).
        gru_activation: Activation of the ConvGRU candidate (§3.1: ReLU; Ballas et al. use tanh).
        gate_init_scale: Variance-scaling factor (fan-in, truncated normal) of the ConvGRU gate kernels. Code: 1.0
            (LeCun-like, docs/fidelity.md §1.3), the default here; paper text: He (2.0) for all convs; 0: all-zero
            gate kernels (the MICCAI 2018 code, docs/fidelity.md §9.1).
        input_conv: Per-hourglass 1×1 input convolution with ``filters`` outputs and ReLU (code,
            docs/fidelity.md §1.2; needed for the authors' parameter count of 4,136,608; not drawn in the paper).
            ``null`` = the architecture's code default: on for ``rshn`` and ``shn``, off for ``volumetric``
            (docs/fidelity.md §9.2).
        output_kernel_size: Kernel size of the linear output convolution (code MIA: 1; MICCAI: 3).
        normalization_epsilon: ε of the L2 normalisation of the first hourglass's embeddings before they are fed to
            the next one (code: 1e-4).
        l2_factor: Weight decay factor λ of the paper's λ·Σw²/2 over all kernels (§3.1: 0.00001; biases excluded).
    """

    architecture: Literal["rshn", "shn", "volumetric"] = "rshn"
    stacks: int = 2
    levels: int = 7
    filters: int = 64
    embedding_size: int = 16
    kernel_size: int = 3
    activation: str = "relu"
    gru_activation: str = "relu"
    gate_init_scale: float = 1.0
    input_conv: Optional[bool] = None
    output_kernel_size: int = 1
    normalization_epsilon: float = 1e-4
    l2_factor: float = 1e-5


@dataclass
class AugmentationConfig:
    """Random intensity and spatial augmentation of a whole l-frame sample, one transform for all frames (§3.1).

    Attributes:
        mirror_probability: Probability of mirroring along each axis, f_p (§3.1: 0.5).
        rotation_range: Rotation angle range in degrees, r (§3.1: [-180, 180]).
        scale_range: Scale range sc (§3.1: [0.5, 1.5]).
        scale_mode: ``uniform``: one isotropic draw from ``scale_range`` (paper). ``code_product``: per-axis
            U(1 ± ``code_scale_delta``) times isotropic U(1 ± ``code_scale_delta``) (code, docs/fidelity.md §3.5).
        code_scale_delta: Half-width of each of the code's two scale draws (code: 0.25).
        elastic_grid: Control-point grid of the elastic B-spline deformation, g (§3.1: 6 × 6).
        elastic_displacement: Maximum control-point displacement in pixels, b (§3.1: [-10, 10]).
        elastic_spline_order: Order of the B-spline interpolation of the deformation (§3.1: 3).
        translation_fraction: Code: random translation of up to this fraction of the tile (0.35); paper: 0, the
            crop position alone is random.
        intensity_shift: Intensity shift range v_shift (§3.1: [-0.65, 0.65]).
        intensity_scale: Intensity scale range v_scale (§3.1: [0.35, 1.65]).
        gamma_range: Code: random gamma λ range applied before shift/scale ([0.6, 1.4]); ``null`` = off (paper).
        per_frame_shift: Code: extra per-frame intensity shift half-range (0.1); 0 = off (paper).
        per_frame_scale: Code: extra per-frame intensity scale half-range (0.1); 0 = off (paper).
        image_interpolation: Interpolation of intensities (``linear`` or ``bspline``); labels always nearest.
    """

    mirror_probability: float = 0.5
    rotation_range: list[float] = field(default_factory=lambda: [-180.0, 180.0])
    scale_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    scale_mode: Literal["uniform", "code_product"] = "uniform"
    code_scale_delta: float = 0.25
    elastic_grid: list[int] = field(default_factory=lambda: [6, 6])
    elastic_displacement: float = 10.0
    elastic_spline_order: int = 3
    translation_fraction: float = 0.0
    intensity_shift: list[float] = field(default_factory=lambda: [-0.65, 0.65])
    intensity_scale: list[float] = field(default_factory=lambda: [0.35, 1.65])
    gamma_range: Optional[list[float]] = None
    per_frame_shift: float = 0.0
    per_frame_scale: float = 0.0
    image_interpolation: Literal["linear", "bspline"] = "linear"


@dataclass
class LossConfig:
    """The cosine embedding loss and its targets (§2.2, §4.2; docs/fidelity.md §2).

    Attributes:
        variant: ``paper`` for eqs. 1–6 (squared cosine in both terms, background mean fixed to
            e_b = (1, 0, …, 0)) or ``miccai2018`` for the preliminary work (1 − cos in the similarity term,
            background treated as an instance with a learned mean).
        max_instances: Instances per sample entering the loss; a random subset is taken when there are more
            (code: 31, forced by its bit packing).
        neighbour_radius: r_N in network-grid pixels (Table 1): instance j is a neighbour of i when a pixel of j lies
            within r_N of the centre of gravity of S(i) over the window (§2.2).
        code_neighbour_radius: Code (published models): the radius the authors' code used instead, a factor × the
            width of its test size (docs/fidelity.md §2.6, e.g. 0.03 × 1024 = 30.7 for Fluo-N2DL-HeLa); when set it
            replaces ``neighbour_radius`` in either ``neighbour_mode``. ``null``: Table 1's r_N (paper).
        neighbour_mode: ``centroid`` (paper definition) or ``code`` (the authors' on-the-fly recipe: instance
            dilated by ``neighbour_dilation`` px, disk of radius r_N at the sequence centroid in frames where the
            instance lives ±1; docs/fidelity.md §2.6).
        neighbour_dilation: Code: diameter of the disk the instance is dilated with in ``code`` mode (5).
        hourglass_weights: Weight of the loss on each hourglass output (docs/fidelity.md §2.4: 1 and 1).
        background_weight: Weight of the background term L(b) (eq. 6: 1).
        epsilon: ε of the L2 normalisation of pixel and mean embeddings inside the loss, x / sqrt(max(‖x‖², ε))
            (code: the ``tf.nn.l2_normalize`` default 1e-12, docs/fidelity.md §2.1); a zero vector gets cosine 0.
    """

    variant: Literal["paper", "miccai2018"] = "paper"
    max_instances: int = 31
    neighbour_radius: float = 50.0
    code_neighbour_radius: Optional[float] = None
    neighbour_mode: Literal["centroid", "code"] = "centroid"
    neighbour_dilation: int = 5
    hourglass_weights: list[float] = field(default_factory=lambda: [1.0, 1.0])
    background_weight: float = 1.0
    epsilon: float = 1e-12

    @property
    def radius(self) -> float:
        """The r_N the targets use: ``code_neighbour_radius`` when set, else ``neighbour_radius``."""
        return self.neighbour_radius if self.code_neighbour_radius is None else self.code_neighbour_radius


@dataclass
class TrainingConfig:
    """Optimisation schedule and bookkeeping (§3.1; docs/fidelity.md §4).

    Attributes:
        iterations: Training iterations (§3.1: 60,000; Table 3 cross-validation in the code: 40,000).
        batch_size: Mini-batch size (§3.1: 1): samples per iteration over all replicas of the ``strategy``; a
            multiple of the number of replicas.
        optimizer: ``adam`` (§3.1) or ``nadam``: the paper-era code's ``tf.contrib.opt.NadamOptimizer``, i.e. Adam
            with a Nesterov-style update (TF1 ``ApplyAdam(use_nesterov=True)``), not Keras' Nadam schedule.
        learning_rate: Initial learning rate (§3.1: 0.0001).
        learning_rate_final: Learning rate after the drop (§3.1: 0.00001).
        learning_rate_drop_fraction: Fraction of ``iterations`` after which the rate drops (§3.1: 30,000 of 60,000):
            updates 0 … round(fraction × iterations) − 1 use ``learning_rate``, later ones ``learning_rate_final``.
        adam_epsilon: ε of Adam/Nadam (TF1 default used by the paper's code: 1e-8).
        seed: Seed of every random choice in training (sampling, augmentation, initialisation).
        checkpoint_every: Iterations between checkpoints (model, optimiser, step, RNG state).
        max_checkpoints: Checkpoints kept on disk.
        snapshot_every: Iterations between weight snapshots kept for good in ``snapshots/`` of the model folder
            (``weights.NNNNNN.weights.h5``), e.g. to score the model along training; 0 = none (the code keeps a
            snapshot every 10,000 iterations, docs/fidelity.md §4.3).
        log_every: Iterations between TensorBoard scalar summaries.
        image_every: Iterations between TensorBoard embedding images (0 = none).
        validation_every: Iterations between validation-loss evaluations used to pick the ``best`` weights
            (0 = never; ``best`` then follows the smoothed training loss: the mean loss over each
            ``checkpoint_every`` interval). Losses compared exclude the weight decay.
        strategy: ``default`` (one device), ``mirrored`` (all local GPUs, else all logical CPU devices) or
            ``multi_worker`` (``tf.distribute.MultiWorkerMirroredStrategy``, cluster from ``$TF_CONFIG``).
        validation_sequences: Sequences of ``data.dataset_dir`` whose samples give the validation loss (needed when
            ``validation_every`` > 0; e.g. the held-out video of a cross-validation fold).
        validation_samples: Validation samples (indices 0 … n−1 of the sample stream of ``seed`` on the validation
            sequences, augmented like training samples; the same samples at every evaluation); a multiple of
            ``batch_size``.
        deterministic: Call ``tf.config.experimental.enable_op_determinism()`` (process-wide) so that reruns are
            bitwise identical on every device; slower on GPUs. CPU runs repeat without it.
    """

    iterations: int = 60000
    batch_size: int = 1
    optimizer: Literal["adam", "nadam"] = "adam"
    learning_rate: float = 1e-4
    learning_rate_final: float = 1e-5
    learning_rate_drop_fraction: float = 0.5
    adam_epsilon: float = 1e-8
    seed: int = 0
    checkpoint_every: int = 1000
    max_checkpoints: int = 3
    snapshot_every: int = 0
    log_every: int = 50
    image_every: int = 1000
    validation_every: int = 0
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    validation_sequences: list[str] = field(default_factory=list)
    validation_samples: int = 16
    deterministic: bool = False


@dataclass
class InferenceConfig:
    """Sliding windows and tiles at test time (§2.4, §2.5, §4.2; docs/fidelity.md §5).

    Attributes:
        tile_size: Size of the inference tiles (height, width), the units of the network (tiles mode) and of the
            clustering and tile merging (both modes); null = ``data.tile_size``, as in the paper (§2.4, §4.2: 256 ×
            256 for training and inference). With ``full_frame`` a smaller training crop can keep the paper's
            clustering tiles, so that large cells are not cut by tile borders.
        tile_overlap: Overlap o of neighbouring tiles in pixels (§4.2: 128).
        full_frame: Compute each window on the whole frame (padded with -1 to a multiple of 2^(levels-1)) and cut
            the tiles for the clustering from its embeddings, instead of running every tile separately (fewer
            pixels through the network, no overlap; every pixel sees the whole frame as context, so results differ
            slightly from the paper's tiles).
        batch_tiles: Run the tiles of a frame through the network together, in batches of ``max_batch_tiles``
            (off: one tile per call, the same as ``max_batch_tiles: 1``).
        max_batch_tiles: Tiles per network call with ``batch_tiles`` (1 = one tile at a time, the authors' loop;
            0 = all tiles of a frame). A window runs one batch of tiles through all its frames before the next
            batch, so this bounds the ConvGRU states and activations alive at once; results are equal up to float
            rounding. Default 1: on 2 CPU cores batches of 8 save ~9 % of the network time but need ~0.2 GB more
            per extra tile (Fluo-N2DL-HeLa, 40 tiles: 2.8 GB peak with 1, 3.4 GB with 4; docs/performance.md).
            Larger batches pay off on a GPU.
        threads: TensorFlow intra-op threads (0 = all cores available to the process); the inter-op pool is 1.
        encoded_steps: RSHN: compute the input and state halves of the ConvGRU convolutions separately
            (:class:`rshn_tf.inference.EncodedRecurrence`): the first frame of every window, whose states are zero
            (§2.5), skips all state convolutions, and hourglass 0's state-independent part of a frame can be reused
            by the overlapping windows (``encoding_cache_mb``). Same results up to float rounding; false runs the
            plain step (the training graph).
        encoding_cache_mb: With ``encoded_steps``: memory (MB) allowed for reusing hourglass 0's encodings across
            windows; used when the encodings of l frames of all inputs fit (paper network: 67 MB per 256 × 256
            input, so DIC-C2DH-HeLa's one tile needs 0.5 GB, Fluo-N2DL-HeLa's 40 tiles 21 GB); 0 = never reuse.
        overlap_postprocessing: Post-process (cluster, merge, track) each frame pair in a worker thread while the
            network computes the next pair; pairs are still processed one at a time and in order, so results are
            the same. Uses the cores the other stage leaves idle (e.g. the clustering of a one-tile frame runs on
            one core).
        checkpoint_every: ``rshn predict`` and ``rshn postprocess`` save their progress (tracker, lineage, the
            finished frames, position in the video) beside the output every this many frame pairs, so that a killed
            run continues with ``--resume`` and gives the same result as an uninterrupted one; 0 = no checkpoints
            (``--resume`` then starts over). Default 10: a checkpoint costs a few tens of milliseconds (the last
            ``tracking.merge_search_frames`` + 2 label frames are written), and a killed CPU run loses at most
            10 frames of work.
    """

    tile_size: Optional[list[int]] = None
    tile_overlap: int = 128
    full_frame: bool = False
    batch_tiles: bool = True
    threads: int = 0
    max_batch_tiles: int = 1
    encoded_steps: bool = True
    encoding_cache_mb: int = 1024
    overlap_postprocessing: bool = True
    checkpoint_every: int = 10


@dataclass
class PostprocessingConfig:
    """Clustering one 2-frame tile into instances and merging tiles (§2.3, §2.4, Table 1; docs/fidelity.md §6).

    Attributes:
        clustering: ``mean_shift`` (cosine mean shift, §2.3) or ``hdbscan`` (preliminary work, Table 3).
        background_threshold: Pixels with cos(e, e_b)² above this are background (§2.3: 0.5).
        bandwidth: Mean-shift bandwidth h as a cosine distance (§3.1: 0.1).
        coordinate_factor: Factor c of the pixel coordinates appended to the embeddings (§3.1: 0.005).
        num_seeds: Randomly chosen foreground pixels that start mean-shift iterations (code: 128).
        max_iterations: Mean-shift iterations per seed (code: 300).
        convergence_tolerance: A seed has converged when its mean moves less than this × bandwidth (code: 1e-3).
        min_size: t_size: components smaller than this (pixels over both frames, network grid) are removed
            (Table 1).
        seed: Seed of the mean-shift seed selection.
        hdbscan_min_cluster_size: HDBSCAN min_cluster_size (= min_samples), preliminary-work values per dataset.
        hdbscan_coordinate_factor: Coordinate factor c used with HDBSCAN (preliminary work, per dataset).
        merge_ignore_border: Code: width of the band along inner tile edges in which instances are ignored when
            merging tiles (submission: 32); paper: 0.
        merge_mode: ``instance``: the largest candidate instance wins (§2.4). ``blob``: the code's comparison of
            connected foreground blobs (docs/fidelity.md §6.6).
        merge_overlap_fraction: ``instance`` mode: a candidate is the same instance as an already kept larger one
            when more than this fraction of its area lies on it (then dropped); otherwise its free pixels are kept
            as a new instance. The paper does not say how candidates of different tiles are matched; 0.5 is ours
            (the matching rule of the CTC SEG measure).
        background_rule: How background pixels are found. ``fixed``: the fixed background embedding
            e_b = (1, 0, …, 0) and ``background_threshold`` (§2.3). ``first_pair_median``: the rule of the MICCAI 2018
            submission (docs/fidelity.md §9.1; the MICCAI paper, §2, only says background is learned as an ordinary
            instance): the background vector is the component-wise median of the embeddings of all pixels of the first
            frame pair (all its tiles; not normalised), kept for the whole video, and a pixel is foreground where its
            dot product with it is below ``background_dot_threshold``. null (default): ``first_pair_median`` when
            ``loss.variant`` is ``miccai2018`` (that model learns its background embedding instead of e_b), else
            ``fixed``.
        background_dot_threshold: ``first_pair_median``: pixels whose dot product with the background vector is
            at least this are background (MICCAI 2018 code, docs/fidelity.md §9.1: 0.95).
    """

    clustering: Literal["mean_shift", "hdbscan"] = "mean_shift"
    background_threshold: float = 0.5
    bandwidth: float = 0.1
    coordinate_factor: float = 0.005
    num_seeds: int = 128
    max_iterations: int = 300
    convergence_tolerance: float = 1e-3
    min_size: int = 500
    seed: int = 0
    hdbscan_min_cluster_size: int = 1000
    hdbscan_coordinate_factor: float = 0.02
    merge_ignore_border: int = 0
    merge_mode: Literal["instance", "blob"] = "instance"
    merge_overlap_fraction: float = 0.5
    background_rule: Optional[Literal["fixed", "first_pair_median"]] = None
    background_dot_threshold: float = 0.95


@dataclass
class TrackingConfig:
    """Linking frame pairs into tracks and finishing the lineage (§2.5, §4.2; docs/fidelity.md §7).

    Attributes:
        link_iou_threshold: Minimum IoU for linking an instance of the shared frame of two pairs (code: 0.25).
        parent_iou_threshold: Minimum IoU for a parent candidate, and minimum overlap fraction when repairing false
            mitoses (code: 0.01).
        parent_dilation: Diameter of the disk a new track's first mask is dilated with before the parent search
            (code, per dataset: 0, 3 or 5; 0 = none).
        parent_search_frames: Previous frames searched for the parent (code, per dataset: 8 or 2).
        min_track_length: t_length: parent-less tracks shorter than this many frames are removed (§4.2: 2).
        merge_search_frames: t_merge: a split that re-merges within this many frames is undone (§4.2: 10).
        merge_first_frame_tracks: Code: a track that starts in frame 0 and merges into another track within
            t_merge frames is also treated as a false split and relabelled (docs/fidelity.md §7.2); paper (§2.5): only
            instances that split off another one are repaired, so off.
        resample_interpolation: Interpolation of labels back to the original size: ``label_gaussian`` (code) or
            ``nearest``.
        label_gaussian_sigma: σ of the label-Gaussian interpolation (code: 1.0).
    """

    link_iou_threshold: float = 0.25
    parent_iou_threshold: float = 0.01
    parent_dilation: int = 0
    parent_search_frames: int = 8
    min_track_length: int = 2
    merge_search_frames: int = 10
    merge_first_frame_tracks: bool = False
    resample_interpolation: Literal["label_gaussian", "nearest"] = "label_gaussian"
    label_gaussian_sigma: float = 1.0


@dataclass
class ExperimentConfig:
    """How ``rshn experiment`` trains and evaluates (§5.2).

    Attributes:
        mode: ``two_fold``: train on 01 and evaluate on 02, and the reverse (§5.2); ``train_all``: train one model on
            all ``data.train_sequences`` (§5.4) and evaluate on them; ``holdout``: train one model on
            ``data.train_sequences`` and evaluate on ``test_sequences`` (the demo); ``time_split``: for a dataset
            with one annotated video, train on frames 0 … ``split_frame`` - 1 of ``data.train_sequences`` and
            evaluate on their later frames (written as sequences of their own, renumbered from 0).
        output_dir: Folder of the run (models, predictions, results.json/results.md).
        cv_iterations: Iterations of each cross-validation fold (code: 40,000, docs/fidelity.md §4.2); ``train_all`` and
            ``holdout`` train for ``training.iterations``.
        test_sequences: ``holdout`` mode: the sequences that are predicted and evaluated.
        split_frame: ``time_split`` mode: the first frame of the evaluated part (e.g. 60 of Fluo-N2DL-HeLa's 92).
        weights: Weights of the trained model used for prediction: ``last`` (the end of training, as the paper's
            code evaluates its folds at max_iter, docs/fidelity.md §4.3) or ``best`` (lowest validation or smoothed
            training loss).
        synthetic_frames: ``rshn demo``: frames of each synthetic sequence (not a paper value).
        synthetic_size: ``rshn demo``: frame size (height, width) of the synthetic sequences (not a paper value).
    """

    mode: Literal["two_fold", "train_all", "holdout", "time_split"] = "two_fold"
    output_dir: str = "runs/experiment"
    cv_iterations: int = 40000
    test_sequences: list[str] = field(default_factory=list)
    split_frame: int = 0
    weights: Literal["last", "best"] = "last"
    synthetic_frames: int = 40
    synthetic_size: list[int] = field(default_factory=lambda: [256, 256])


@dataclass
class Config:
    """The complete configuration of an rshn-tf run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    postprocessing: PostprocessingConfig = field(default_factory=PostprocessingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def __post_init__(self) -> None:
        #: Where each ``section.key`` got its value (a YAML path or ``--set ...``); not a field, so not saved.
        self.sources: dict[str, str] = {}

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as plain nested dicts and lists (YAML-ready)."""
        return dataclasses.asdict(self)

    @property
    def inference_tile_size(self) -> tuple[int, int]:
        """The inference tile (height, width): ``inference.tile_size``, or ``data.tile_size`` when that is null."""
        size = self.inference.tile_size if self.inference.tile_size is not None else self.data.tile_size
        return int(size[0]), int(size[1])

    @property
    def background_rule(self) -> str:
        """The background rule in force: ``postprocessing.background_rule``, or when that is null the one of the
        loss variant (``first_pair_median`` for ``miccai2018``, else ``fixed``)."""
        if self.postprocessing.background_rule is not None:
            return self.postprocessing.background_rule
        return "first_pair_median" if self.loss.variant == "miccai2018" else "fixed"


#: Section names in file order.
SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))


# --------------------------------------------------------------------------------------------------------------
# Validation


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"a list of {_type_name(item)}"
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to ``annotation``; raise TypeError/ValueError when it does not fit."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise TypeError
    if origin is Literal:
        if value in typing.get_args(annotation) and isinstance(value, str):
            return value
        raise ValueError
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return [_coerce(v, item) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. sequence names written as 01 in YAML arrive as 1; callers pad if needed
        raise TypeError
    raise TypeError


def _conforms(value: Any, annotation: Any) -> bool:
    """Whether ``value`` already has the type ``annotation`` (strictly: no conversion; an int is a float)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return isinstance(value, str) and value in typing.get_args(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_conforms(v, item) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return False


def _suggest(key: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Problems:
    """Errors collected while a configuration is assembled and checked, reported together in one RshnError.

    Attributes:
        messages: One line per error, each naming the key (or section) and where its value came from.
        keys: ``section.key`` of every key whose given value was refused; range checks that read such a key are
            skipped, because the key still holds its previous value.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.keys: set[str] = set()

    def add(self, message: str, key: Optional[str] = None) -> None:
        """Record one error; ``key`` marks a ``section.key`` whose value was refused."""
        self.messages.append(message)
        if key is not None:
            self.keys.add(key)

    def raise_if_any(self) -> None:
        """Raise one RshnError holding every recorded error (none: return).

        Raises:
            RshnError: The only error, or ``N invalid config values:`` and one indented line per error.
        """
        messages = list(dict.fromkeys(self.messages))
        if len(messages) == 1:
            raise RshnError(messages[0])
        if messages:
            raise RshnError(f"{len(messages)} invalid config values:\n  " + "\n  ".join(messages))


def _apply_section(section_obj: Any, section: str, values: Any, source: str, sources: dict[str, str],
                   problems: _Problems) -> None:
    if not isinstance(values, dict):
        problems.add(f"{source}: section '{section}' must be a mapping of keys to values, got {values!r}")
        return
    hints = typing.get_type_hints(type(section_obj))
    for key, value in values.items():
        if key not in hints:
            problems.add(f"{source}: unknown key '{section}.{key}'{_suggest(str(key), hints)}; "
                         f"valid keys of '{section}': {', '.join(hints)}", f"{section}.{key}")
            continue
        message = _set_value(section_obj, section, key, value, hints[key], source)
        if message is None:
            sources[f"{section}.{key}"] = source
        else:
            problems.add(message, f"{section}.{key}")


def _set_value(section_obj: Any, section: str, key: str, value: Any, annotation: Any, source: str) -> Optional[str]:
    """Set one key from a parsed YAML value; return the error message instead when the value does not fit."""
    try:
        coerced = _coerce(value, annotation)
    except (TypeError, ValueError):
        return f"{source}: key '{section}.{key}' must be {_type_name(annotation)}, got {value!r}"
    if not _all_finite(coerced):
        return f"{source}: key '{section}.{key}' must be finite (no NaN or infinity), got {value!r}"
    if (section, key) in (("data", "train_sequences"), ("training", "validation_sequences"),
                          ("experiment", "test_sequences")):
        coerced = [normalize_sequence_name(v) for v in coerced]
    setattr(section_obj, key, coerced)
    return None


def _all_finite(value: Any) -> bool:
    """Whether no float in ``value`` (a scalar or a list) is NaN or infinite."""
    if isinstance(value, list):
        return all(_all_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def normalize_sequence_name(name: str | int) -> str:
    """Return a CTC sequence name with two digits (``1`` → ``01``), leaving other names untouched."""
    text = str(name)
    return text.zfill(2) if text.isdigit() else text


def _apply_dict(config: Config, values: Any, source: str, problems: _Problems) -> None:
    """:func:`apply_dict` that records key errors in ``problems`` instead of raising them."""
    if not isinstance(values, dict):
        problems.add(f"{source}: expected a mapping of sections, got {type(values).__name__}")
        return
    for section, section_values in values.items():
        if section not in SECTIONS:
            problems.add(f"{source}: unknown section '{section}'{_suggest(str(section), SECTIONS)}; "
                         f"valid sections: {', '.join(SECTIONS)}")
            continue
        if section_values is None:
            continue
        _apply_section(getattr(config, section), section, section_values, source,
                       config.__dict__.setdefault("sources", {}), problems)


def apply_dict(config: Config, values: dict[str, Any], source: str) -> Config:
    """Override ``config`` in place with nested ``values`` and return it.

    Every key that fits is set; the errors of all others are reported together.

    Args:
        config: Configuration to change.
        values: Mapping ``{section: {key: value}}``.
        source: Name used in error messages (a file path or ``--set``).

    Raises:
        RshnError: On unknown sections or keys, or values of the wrong type (all of them in one error).
    """
    problems = _Problems()
    _apply_dict(config, values, source, problems)
    problems.raise_if_any()
    return config


# --------------------------------------------------------------------------------------------------------------
# Presets and YAML files


def preset_dir() -> Path:
    """Folder of the bundled experiment YAMLs: ``rshn_tf/presets`` when installed (setup.cfg maps the source
    tree's ``experiments/`` there), else ``experiments/`` beside the package in a source checkout."""
    try:
        module = importlib.import_module("rshn_tf.presets")  # a data-only (namespace) package when installed
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "experiments"
    return Path(next(iter(module.__path__)))


def list_presets() -> list[str]:
    """Names of the bundled top-level presets (one per dataset plus the synthetic demo)."""
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def resolve_config_path(name: str | os.PathLike, relative_to: Path | None = None) -> Path:
    """Find a YAML given as a path (relative to ``relative_to`` or the working directory) or a preset name.

    Args:
        name: A path to a YAML file, or the name of a bundled preset such as ``DIC-C2DH-HeLa`` or
            ``table3/DIC-C2DH-HeLa_rshn_h0.1``.
        relative_to: Folder that relative paths are resolved against first.

    Raises:
        RshnError: If neither a file nor a preset of that name exists.
    """
    text = str(name)
    candidates = []
    if relative_to is not None:
        candidates.append(relative_to / text)
    candidates.append(Path(text))
    stem = text[:-5] if text.endswith(".yaml") else text
    candidates.append(preset_dir() / f"{stem}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RshnError(
        f"config '{text}' not found: neither a file nor a bundled preset (presets: {', '.join(list_presets())})"
    )


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping gives the same key twice (PyYAML would silently keep the last one)."""

    def __init__(self, key: Any, first_line: int, line: int):
        super().__init__(f"line {line}: duplicate key '{key}' (first given on line {first_line}); give every key once")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys in every mapping, at every level."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_lines:
                    raise DuplicateKeyError(key, first_lines[key], line)
                first_lines[key] = line
            except TypeError:  # unhashable key: the base class reports it
                break
        return super().construct_mapping(node, deep=deep)


def load_yaml(stream: Any) -> Any:
    """Parse YAML text or an open file like ``yaml.safe_load``, but reject duplicate keys.

    Raises:
        yaml.YAMLError: For invalid YAML, including :class:`DuplicateKeyError`.
    """
    return yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            content = load_yaml(handle)
    except DuplicateKeyError as exc:
        raise RshnError(f"{path}, {exc}") from exc
    except yaml.YAMLError as exc:
        raise RshnError(f"{path}: not valid YAML ({exc})") from exc
    except OSError as exc:
        raise RshnError(f"{path}: cannot be read ({exc.strerror})") from exc
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise RshnError(f"{path}: expected a mapping of sections at the top level, got {type(content).__name__}")
    return content


def _load_layers(path: Path, config: Config, chain: tuple[Path, ...], problems: _Problems) -> None:
    path = path.resolve()
    if path in chain:
        raise RshnError(f"{path}: 'base' includes itself ({' -> '.join(str(p) for p in chain + (path,))})")
    content = _read_yaml(path)
    bases = content.pop("base", None)
    content = migrate(content, str(path))
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
            raise RshnError(f"{path}: 'base' must be a preset name, a path or a list of them, got {bases!r}")
        for base in bases:
            _load_layers(resolve_config_path(base, relative_to=path.parent), config, chain + (path,), problems)
    _apply_dict(config, content, str(path), problems)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse one ``section.key=value`` override; the value is read as YAML (``0.05``, ``true``, ``[1, 2]``).

    Raises:
        RshnError: If the text is not of that form.
    """
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise RshnError(f"--set {text!r}: expected section.key=value, e.g. --set postprocessing.bandwidth=0.05")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RshnError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    return section, key, value


def _apply_overrides(config: Config, overrides: typing.Sequence[str], problems: _Problems,
                     frozen: typing.Collection[str] = ()) -> None:
    """Apply ``--set`` overrides in order, recording every error in ``problems``; ``frozen`` sections refuse."""
    for text in overrides:
        try:
            section, key, value = parse_override(text)
        except RshnError as exc:
            problems.add(str(exc))
            continue
        if section in frozen:
            problems.add(f"--set {text}: '{section}.*' keys describe the trained network and cannot be changed for "
                         f"prediction; train a new model for another network", f"{section}.{key}")
            continue
        _apply_dict(config, {section: {key: value}}, f"--set {text}", problems)


def apply_overrides(config: Config, overrides: typing.Sequence[str]) -> Config:
    """Apply ``--set section.key=value`` overrides in order and return the configuration.

    Raises:
        RshnError: Naming every override that is malformed, unknown or of the wrong type.
    """
    problems = _Problems()
    _apply_overrides(config, overrides, problems)
    problems.raise_if_any()
    return config


def load_config(path: str | os.PathLike | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a configuration: defaults, then the YAML file and its ``base`` chain, then ``--set`` overrides.

    Args:
        path: A YAML file or a preset name; ``None`` gives the paper defaults.
        overrides: ``section.key=value`` strings applied last.

    Returns:
        The resolved configuration.

    Raises:
        RshnError: On missing or unreadable files, and for all unknown keys, wrong types and invalid values at once.
    """
    return load_config_layers([] if path is None else [path], overrides)


def load_config_layers(
    paths: typing.Sequence[str | os.PathLike], overrides: typing.Sequence[str] = ()
) -> Config:
    """Like :func:`load_config` with several YAML files (or preset names) applied in order, each with its ``base``
    chain, e.g. a dataset preset, then a Table 3 row, then a profile.

    Raises:
        RshnError: On missing or unreadable files, and for all unknown keys, wrong types and invalid values at once.
    """
    config = Config()
    problems = _Problems()
    for path in paths:
        _load_layers(resolve_config_path(path), config, (), problems)
    _apply_overrides(config, overrides, problems)
    _validate(config, "config", SECTIONS, problems)
    return config


def config_from_dict(values: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a validated configuration from nested dicts, e.g. a saved ``config.yaml`` already parsed.

    A ``schema_version`` entry is honoured as in a file (:func:`migrate`); without one the values are read as
    version 1.

    Raises:
        RshnError: For a newer ``schema_version``, and for all unknown keys, wrong types and invalid values at once.
    """
    config = Config()
    problems = _Problems()
    _apply_dict(config, migrate(copy.deepcopy(values), source), source, problems)
    _validate(config, source, SECTIONS, problems)
    return config


def config_yaml(config: Config) -> str:
    """The YAML text of a fully resolved configuration: ``schema_version`` first, then every section."""
    return yaml.safe_dump({"schema_version": SCHEMA_VERSION, **config.to_dict()}, sort_keys=False,
                          default_flow_style=None)


def save_config(config: Config, path: str | os.PathLike) -> Path:
    """Write the fully resolved configuration as YAML (atomically), with its ``schema_version``, and return the path."""
    header = "# Resolved rshn-tf configuration: every key, after presets and --set overrides.\n"
    return write_text_atomic(path, header + config_yaml(config))


def resolve_predict_config(model_config: Config, overrides: typing.Sequence[str]) -> Config:
    """The model folder's configuration with ``--set`` overrides applied; ``model.*`` may not change.

    Raises:
        RshnError: Naming every override of the ``model`` section (the weights belong to that network) and every
            invalid one.
    """
    problems = _Problems()
    _apply_overrides(model_config, overrides, problems, frozen=("model",))
    _validate(model_config, "config", SECTIONS, problems)
    return model_config


# --------------------------------------------------------------------------------------------------------------
# Schema versions of saved configurations


#: Layout version of configurations, saved as ``schema_version`` at the top of every ``config.yaml``. Raise it when
#: a key is renamed, moved or removed, and register the step from the previous version in :data:`MIGRATIONS`.
SCHEMA_VERSION = 2


def move_key(values: dict[str, Any], old: str, new: str) -> None:
    """Move ``old`` (``section.key``) to ``new`` in parsed YAML sections, in place; for migrations.

    Nothing happens when ``old`` is absent. A missing target section is created; when both keys are given, the
    old one is dropped and the new one kept.
    """
    old_section, old_key = old.split(".", 1)
    new_section, new_key = new.split(".", 1)
    section = values.get(old_section)
    if not isinstance(section, dict) or old_key not in section:
        return
    value = section.pop(old_key)
    if not section:
        values.pop(old_section)
    target = values.setdefault(new_section, {})
    if isinstance(target, dict):
        target.setdefault(new_key, value)


def drop_key(values: dict[str, Any], key: str) -> None:
    """Remove ``key`` (``section.key``) from parsed YAML sections, in place, when present; for migrations."""
    section_name, name = key.split(".", 1)
    section = values.get(section_name)
    if isinstance(section, dict):
        section.pop(name, None)


def _version_1_to_2(values: dict[str, Any]) -> dict[str, Any]:
    """Version 1 (no ``schema_version``, as saved before versioning) to 2: ``experiment.synthetic_seg``, a key
    removed before versioning that no code read, is dropped; all other keys are unchanged."""
    drop_key(values, "experiment.synthetic_seg")
    return values


#: ``MIGRATIONS[v]`` turns the parsed sections of a version-``v`` configuration into version ``v + 1`` (in the
#: manner of CSBDeep's ``update_loaded_config``). Hand-written YAMLs and presets without ``schema_version`` are read
#: as version 1, so a migration must leave keys that already have their new name untouched.
MIGRATIONS: dict[int, typing.Callable[[dict[str, Any]], dict[str, Any]]] = {1: _version_1_to_2}


def migrate(values: Any, source: str) -> Any:
    """Bring parsed YAML sections to :data:`SCHEMA_VERSION`: pop ``schema_version`` and run the migrations.

    Args:
        values: The parsed top level of a YAML file or saved ``config.yaml`` (changed in place); anything but a
            mapping is returned as it is, for :func:`apply_dict` to report.
        source: Named in error messages.

    Returns:
        The sections in the current layout, without ``schema_version``.

    Raises:
        RshnError: If ``schema_version`` is not a positive integer, or is newer than this version of rshn-tf reads.
    """
    if not isinstance(values, dict):
        return values
    version = values.pop("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RshnError(f"{source}: 'schema_version' must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise RshnError(f"{source}: written by a newer rshn-tf (schema_version {version}); this version reads "
                        f"configurations up to schema_version {SCHEMA_VERSION}: upgrade rshn-tf to load it")
    for step in range(version, SCHEMA_VERSION):
        values = MIGRATIONS[step](values)
    return values


#: Element-wise Keras activations accepted by ``model.activation`` and ``model.gru_activation``.
ACTIVATIONS = ("celu", "elu", "exponential", "gelu", "hard_shrink", "hard_sigmoid", "hard_silu", "hard_swish",
               "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "mish", "relu", "relu6", "selu", "sigmoid", "silu",
               "soft_shrink", "softplus", "softsign", "sparse_plus", "sparse_sigmoid", "squareplus", "swish", "tanh",
               "tanh_shrink")

#: Most levels per hourglass: tile sides are multiples of 2^(levels-1), 32768 pixels at 16 levels.
MAX_LEVELS = 16

#: One range check: the key it is reported under, what the value must be, the test, and other keys the test reads.
_Check = tuple[str, str, typing.Callable[[], bool], tuple[str, ...]]


def _pair(values: Optional[list], minimum: float, allow_none: bool = False) -> bool:
    """Whether ``values`` is two numbers of at least ``minimum`` (or None when ``allow_none``)."""
    if values is None:
        return allow_none
    return len(values) == 2 and min(values) >= minimum


def _interval(values: Optional[list], minimum: float = -math.inf, allow_none: bool = False) -> bool:
    """Whether ``values`` is ``[low, high]`` with ``minimum <= low <= high`` (or None when ``allow_none``)."""
    if values is None:
        return allow_none
    return len(values) == 2 and minimum <= values[0] <= values[1]


def _grid(model: ModelConfig) -> Optional[int]:
    """2^(levels-1), the multiple of every tile side; None when ``model.levels`` is not an int in 1 … MAX_LEVELS
    (the checks that need it then cannot be evaluated and the check of ``model.levels`` reports the problem)."""
    levels = model.levels
    if isinstance(levels, int) and not isinstance(levels, bool) and 1 <= levels <= MAX_LEVELS:
        return 2 ** (levels - 1)
    return None


def _data_checks(c: Config) -> list[_Check]:
    """The range and relation checks of ``data.*`` keys."""
    d = c.data
    grid = _grid(c.model)
    return [
        ("data.tile_size", "two positive integers (height, width)", lambda: _pair(d.tile_size, 1), ()),
        ("data.tile_size", f"divisible by 2^(model.levels-1) = {grid}",
         lambda: all(s % grid == 0 for s in d.tile_size), ("model.levels",)),
        ("data.resampled_size", "null or two positive integers (height, width)",
         lambda: _pair(d.resampled_size, 1, allow_none=True), ()),
        ("data.train_sequences", "a non-empty list of sequence names", lambda: len(d.train_sequences) >= 1, ()),
        ("data.extra_scale", "positive", lambda: d.extra_scale > 0, ()),
        ("data.sequence_length", "at least 2 (frames are clustered in pairs)", lambda: d.sequence_length >= 2, ()),
        ("data.smoothing_sigma", "non-negative (0 = no smoothing)", lambda: d.smoothing_sigma >= 0, ()),
        ("data.normalization_percentiles", "two increasing percentiles in [0, 100]",
         lambda: len(d.normalization_percentiles) == 2
         and 0 <= d.normalization_percentiles[0] < d.normalization_percentiles[1] <= 100, ()),
        ("data.border_band", "non-negative", lambda: d.border_band >= 0, ()),
        ("data.seg_sample_fraction", "in [0, 1]", lambda: 0.0 <= d.seg_sample_fraction <= 1.0, ()),
        ("data.complete_seg_min_coverage", "in [0, 1]", lambda: 0.0 <= d.complete_seg_min_coverage <= 1.0, ()),
        ("data.crop_border", "non-negative", lambda: d.crop_border >= 0, ()),
        ("data.label_blur_sigma", "non-negative (0 = off)", lambda: d.label_blur_sigma >= 0, ()),
        ("data.num_workers", "non-negative", lambda: d.num_workers >= 0, ()),
        ("data.prefetch", "non-negative", lambda: d.prefetch >= 0, ()),
        ("data.train_frames", "null or [start, stop] with 0 <= start < stop",
         lambda: d.train_frames is None
         or (len(d.train_frames) == 2 and 0 <= d.train_frames[0] < d.train_frames[1]), ()),
    ]


def _model_checks(c: Config) -> list[_Check]:
    """The range and relation checks of ``model.*`` keys."""
    m = c.model
    return [
        ("model.levels", f"in 1 ... {MAX_LEVELS} (tile sides are multiples of 2^(levels-1))",
         lambda: 1 <= m.levels <= MAX_LEVELS, ()),
        ("model.stacks", "at least 1", lambda: m.stacks >= 1, ()),
        ("model.filters", "at least 1", lambda: m.filters >= 1, ()),
        ("model.embedding_size", "at least 2", lambda: m.embedding_size >= 2, ()),
        ("model.activation", f"an element-wise Keras activation ({', '.join(ACTIVATIONS)})",
         lambda: m.activation in ACTIVATIONS, ()),
        ("model.gru_activation", "an element-wise Keras activation (see model.activation)",
         lambda: m.gru_activation in ACTIVATIONS, ()),
        ("model.kernel_size", "at least 1", lambda: m.kernel_size >= 1, ()),
        ("model.output_kernel_size", "at least 1", lambda: m.output_kernel_size >= 1, ()),
        ("model.gate_init_scale", "non-negative (0: all-zero gate kernels, MICCAI 2018 code)",
         lambda: m.gate_init_scale >= 0, ()),
        ("model.normalization_epsilon", "positive", lambda: m.normalization_epsilon > 0, ()),
        ("model.l2_factor", "non-negative", lambda: m.l2_factor >= 0, ()),
    ]


def _augmentation_checks(c: Config) -> list[_Check]:
    """The range and relation checks of ``augmentation.*`` keys."""
    a = c.augmentation
    return [
        ("augmentation.mirror_probability", "in [0, 1]", lambda: 0.0 <= a.mirror_probability <= 1.0, ()),
        ("augmentation.rotation_range", "two values [low, high] with low <= high",
         lambda: _interval(a.rotation_range), ()),
        ("augmentation.scale_range", "two values [low, high] with low <= high",
         lambda: _interval(a.scale_range), ()),
        ("augmentation.scale_range", "positive", lambda: a.scale_range[0] > 0, ()),
        ("augmentation.intensity_shift", "two values [low, high] with low <= high",
         lambda: _interval(a.intensity_shift), ()),
        ("augmentation.intensity_scale", "two values [low, high] with low <= high",
         lambda: _interval(a.intensity_scale), ()),
        ("augmentation.code_scale_delta", "in [0, 1)", lambda: 0.0 <= a.code_scale_delta < 1.0, ()),
        ("augmentation.elastic_grid", "two integers of at least 2 (control points per axis)",
         lambda: _pair(a.elastic_grid, 2), ()),
        ("augmentation.elastic_displacement", "non-negative", lambda: a.elastic_displacement >= 0, ()),
        ("augmentation.elastic_spline_order", "in 0 ... 5", lambda: 0 <= a.elastic_spline_order <= 5, ()),
        ("augmentation.translation_fraction", "in [0, 1]", lambda: 0.0 <= a.translation_fraction <= 1.0, ()),
        ("augmentation.gamma_range", "null or two positive values [low, high] with low <= high",
         lambda: _interval(a.gamma_range, allow_none=True) and (a.gamma_range is None or a.gamma_range[0] > 0), ()),
        ("augmentation.per_frame_shift", "non-negative", lambda: a.per_frame_shift >= 0, ()),
        ("augmentation.per_frame_scale", "in [0, 1)", lambda: 0.0 <= a.per_frame_scale < 1.0, ()),
    ]


def _loss_checks(c: Config) -> list[_Check]:
    """The range and relation checks of ``loss.*`` keys."""
    lo, m = c.loss, c.model
    return [
        ("loss.max_instances", "at least 1", lambda: lo.max_instances >= 1, ()),
        ("loss.neighbour_radius", "non-negative", lambda: lo.neighbour_radius >= 0, ()),
        ("loss.code_neighbour_radius", "null or non-negative",
         lambda: lo.code_neighbour_radius is None or lo.code_neighbour_radius >= 0, ()),
        ("loss.neighbour_dilation", "non-negative", lambda: lo.neighbour_dilation >= 0, ()),
        ("loss.hourglass_weights", "one non-negative weight per hourglass (model.stacks)",
         lambda: len(lo.hourglass_weights) == m.stacks and min(lo.hourglass_weights) >= 0, ("model.stacks",)),
        ("loss.background_weight", "non-negative", lambda: lo.background_weight >= 0, ()),
        ("loss.epsilon", "positive", lambda: lo.epsilon > 0.0, ()),
    ]


def _training_checks(c: Config) -> list[_Check]:
    """The range and relation checks of ``training.*`` keys."""
    t = c.training
    return [
        ("training.iterations", "at least 1", lambda: t.iterations >= 1, ()),
        ("training.batch_size", "at least 1", lambda: t.batch_size >= 1, ()),
        ("training.learning_rate", "positive", lambda: t.learning_rate > 0, ()),
        ("training.learning_rate_final", "positive", lambda: t.learning_rate_final > 0, ()),
        ("training.learning_rate_drop_fraction", "in [0, 1]", lambda: 0.0 <= t.learning_rate_drop_fraction <= 1.0,
         ()),
        ("training.adam_epsilon", "positive", lambda: t.adam_epsilon > 0, ()),
        ("training.seed", "in 0 ... 2^32 - 1 (the seeds keras.utils.set_random_seed accepts)",
         lambda: 0 <= t.seed < 2 ** 32, ()),
        ("training.checkpoint_every", "at least 1", lambda: t.checkpoint_every >= 1, ()),
        ("training.max_checkpoints", "at least 1", lambda: t.max_checkpoints >= 1, ()),
        ("training.snapshot_every", "non-negative (0 = no snapshots)", lambda: t.snapshot_every >= 0, ()),
        ("training.log_every", "at least 1", lambda: t.log_every >= 1, ()),
        ("training.image_every", "non-negative (0 = no images)", lambda: t.image_every >= 0, ()),
        ("training.validation_every", "non-negative (0 = no validation)", lambda: t.validation_every >= 0, ()),
        ("training.validation_samples", "a positive multiple of training.batch_size",
         lambda: t.validation_samples >= 1 and t.validation_samples % t.batch_size == 0, ("training.batch_size",)),
    ]


def _inference_checks(c: Config) -> list[_Check]:
    """The range and relation checks of ``inference.*`` keys."""
    i = c.inference
    grid = _grid(c.model)
    return [
        ("inference.tile_size", f"null or two positive integers, divisible by 2^(model.levels-1) = {grid} unless "
                                f"inference.full_frame",
         lambda: i.tile_size is None
         or (_pair(i.tile_size, 1) and (i.full_frame or all(s % grid == 0 for s in i.tile_size))),
         ("model.levels", "inference.full_frame")),
        ("inference.tile_overlap", "non-negative and smaller than the inference tile size",
         lambda: 0 <= i.tile_overlap < min(c.inference_tile_size), ("inference.tile_size", "data.tile_size")),
        ("inference.max_batch_tiles", "non-negative (0 = all tiles)", lambda: i.max_batch_tiles >= 0, ()),
        ("inference.encoding_cache_mb", "non-negative (0 = no reuse)", lambda: i.encoding_cache_mb >= 0, ()),
        ("inference.threads", "non-negative (0 = all available cores)", lambda: i.threads >= 0, ()),
        ("inference.checkpoint_every", "non-negative (0 = no checkpoints)", lambda: i.checkpoint_every >= 0, ()),
    ]


def _postprocessing_checks(c: Config) -> list[_Check]:
    """The range and relation checks of ``postprocessing.*`` keys."""
    p = c.postprocessing
    return [
        ("postprocessing.bandwidth", "in (0, 2) (a cosine distance)", lambda: 0.0 < p.bandwidth < 2.0, ()),
        ("postprocessing.background_threshold", "in (0, 1)", lambda: 0.0 < p.background_threshold < 1.0, ()),
        ("postprocessing.background_dot_threshold", "in (-1, 1]", lambda: -1.0 < p.background_dot_threshold <= 1.0,
         ()),
        ("postprocessing.coordinate_factor", "non-negative", lambda: p.coordinate_factor >= 0, ()),
        ("postprocessing.num_seeds", "at least 1", lambda: p.num_seeds >= 1, ()),
        ("postprocessing.max_iterations", "at least 1", lambda: p.max_iterations >= 1, ()),
        ("postprocessing.convergence_tolerance", "positive", lambda: p.convergence_tolerance > 0, ()),
        ("postprocessing.min_size", "non-negative", lambda: p.min_size >= 0, ()),
        ("postprocessing.seed", "non-negative", lambda: p.seed >= 0, ()),
        ("postprocessing.hdbscan_min_cluster_size", "at least 2 (HDBSCAN needs clusters of two or more points)",
         lambda: p.hdbscan_min_cluster_size >= 2, ()),
        ("postprocessing.hdbscan_coordinate_factor", "non-negative", lambda: p.hdbscan_coordinate_factor >= 0, ()),
        ("postprocessing.merge_overlap_fraction", "in [0, 1)", lambda: 0.0 <= p.merge_overlap_fraction < 1.0, ()),
        ("postprocessing.merge_ignore_border", "non-negative", lambda: p.merge_ignore_border >= 0, ()),
    ]


def _tracking_checks(c: Config) -> list[_Check]:
    """The range and relation checks of ``tracking.*`` keys."""
    tr = c.tracking
    return [
        ("tracking.link_iou_threshold", "in [0, 1]", lambda: 0.0 <= tr.link_iou_threshold <= 1.0, ()),
        ("tracking.parent_iou_threshold", "in [0, 1]", lambda: 0.0 <= tr.parent_iou_threshold <= 1.0, ()),
        ("tracking.parent_dilation", "non-negative (0 = none)", lambda: tr.parent_dilation >= 0, ()),
        ("tracking.parent_search_frames", "at least 1", lambda: tr.parent_search_frames >= 1, ()),
        ("tracking.min_track_length", "at least 1", lambda: tr.min_track_length >= 1, ()),
        ("tracking.merge_search_frames", "non-negative", lambda: tr.merge_search_frames >= 0, ()),
        ("tracking.label_gaussian_sigma", "positive", lambda: tr.label_gaussian_sigma > 0, ()),
    ]


def _experiment_checks(c: Config) -> list[_Check]:
    """The range and relation checks of ``experiment.*`` keys."""
    e, d = c.experiment, c.data
    return [
        ("experiment.output_dir", "a non-empty path", lambda: e.output_dir.strip() != "", ()),
        ("experiment.cv_iterations", "at least 1", lambda: e.cv_iterations >= 1, ()),
        ("experiment.test_sequences", "a non-empty list of sequence names in holdout mode (the evaluated ones)",
         lambda: e.mode != "holdout" or len(e.test_sequences) >= 1, ("experiment.mode",)),
        ("experiment.split_frame", "at least data.sequence_length in time_split mode (frames to train on)",
         lambda: e.mode != "time_split" or e.split_frame >= d.sequence_length,
         ("experiment.mode", "data.sequence_length")),
        ("experiment.synthetic_frames", "at least 2", lambda: e.synthetic_frames >= 2, ()),
        ("experiment.synthetic_size", "two integers (height, width) of at least 32",
         lambda: _pair(e.synthetic_size, 32), ()),
    ]


#: The checks of each section, in file order; a check is listed under the section of the key it reports, and may
#: read keys of other sections (named in its fourth element).
SECTION_CHECKS: dict[str, typing.Callable[[Config], list[_Check]]] = {
    "data": _data_checks,
    "model": _model_checks,
    "augmentation": _augmentation_checks,
    "loss": _loss_checks,
    "training": _training_checks,
    "inference": _inference_checks,
    "postprocessing": _postprocessing_checks,
    "tracking": _tracking_checks,
    "experiment": _experiment_checks,
}


def _source_of(config: Config, keys: typing.Iterable[str], default: str) -> str:
    """Where the first of ``keys`` that a file or ``--set`` gave was set (``default`` when none was)."""
    sources = getattr(config, "sources", {})
    return next((sources[key] for key in keys if key in sources), default)


def _section_types() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _validate(config: Config, source: str, sections: typing.Iterable[str], problems: _Problems) -> None:
    """Check the types, then the ranges and relations of ``sections``, adding to ``problems``; raise all at once."""
    sections = tuple(sections)
    types_of = _section_types()
    for section in sections:
        obj = getattr(config, section, None)
        if not isinstance(obj, types_of[section]):
            problems.add(f"{source}: section '{section}' must be a {types_of[section].__name__}, got {obj!r}",
                         section)
            continue
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            key = f"{section}.{f.name}"
            value = getattr(obj, f.name)
            if key in problems.keys:
                continue
            if not _conforms(value, hints[f.name]):
                requirement = _type_name(hints[f.name])
            elif not _all_finite(value):
                requirement = "finite (no NaN or infinity)"
            else:
                continue
            problems.add(f"{_source_of(config, (key,), source)}: key '{key}' must be {requirement}, got {value!r}",
                         key)
    refused = set(problems.keys)  # keys that kept an older value, and broken sections

    def reads_refused(keys: tuple[str, ...]) -> bool:
        return any(k in refused or k.split(".")[0] in refused for k in keys)

    unevaluated: list[str] = []
    for section in sections:
        if section in refused:
            continue
        try:
            checks = SECTION_CHECKS[section](config)
        except AttributeError:  # another section is not a dataclass; reported above
            continue
        for key, requirement, ok, related in checks:
            if reads_refused((key, *related)):
                continue
            where = _source_of(config, (key, *related), source)
            try:
                passed = bool(ok())
            except (TypeError, ValueError, IndexError, ZeroDivisionError, AttributeError, OverflowError):
                unevaluated.append(f"{where}: key '{key}' must be {requirement}")
                continue
            if not passed:
                section_name, name = key.split(".")
                value = getattr(getattr(config, section_name), name)
                problems.add(f"{where}: key '{key}' must be {requirement}, got {value!r}", key)
    if not problems.messages:
        problems.messages.extend(unevaluated)
    problems.raise_if_any()


def validate(config: Config, source: str = "config", sections: Optional[typing.Iterable[str]] = None) -> None:
    """Check every key's type, then value ranges and relations that types alone cannot express, all at once.

    The checks of each section live in :data:`SECTION_CHECKS`. A check whose test cannot even be evaluated
    (e.g. ``inference.tile_overlap`` while ``data.tile_size`` holds one number) is left to the check of the broken
    key, which fails too.

    Args:
        config: The configuration to check (also one built or changed in Python).
        source: Named in messages for keys that no file or ``--set`` gave (their defaults).
        sections: Check only these sections (default: all); their checks may still read other sections.

    Raises:
        RshnError: Naming every offending key, its value and the file or ``--set`` it came from.
    """
    _validate(config, source, SECTIONS if sections is None else sections, _Problems())


def describe_keys() -> str:
    """Return a human-readable list of every section and key with its default (for ``rshn check-config --keys``)."""
    lines = []
    defaults = Config()
    for section in SECTIONS:
        obj = getattr(defaults, section)
        lines.append(f"{section}:")
        for f in dataclasses.fields(obj):
            lines.append(f"  {f.name}: {getattr(obj, f.name)!r}")
    return "\n".join(lines)
