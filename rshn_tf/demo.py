"""``rshn demo``: the whole method on a synthetic video, on a CPU, in minutes.

Steps (a :mod:`rshn_tf.experiments` plan in ``holdout`` mode, so a second ``rshn demo`` skips what is done):

1. ``synthesize``: textured, touching, dividing cells (:mod:`data_io.synthetic`), sequences ``data.train_sequences``
   and ``experiment.test_sequences`` of ``experiment.synthetic_frames`` frames of ``experiment.synthetic_size``.
2. ``train[holdout]``: the small network of ``experiments/demo.yaml`` on the training sequence.
3. ``predict[holdout/SEQ]``: sliding windows, clustering, tracking on the held-out sequence → CTC result folder.
4. ``evaluate[holdout/SEQ]``: SEG, TRA, DET, OP with py-ctcmetrics; ``report``: results.json / results.md.
5. ``overlay``: an animated GIF of the tracked contours over the held-out frames.

The defaults (``experiments/demo.yaml``) are a reduced configuration, documented there; they are not the paper's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from rshn_tf.config import Config
from rshn_tf.experiments import RunOutcome, Step, config_digest, load_experiment_config, run_experiment

log = logging.getLogger(__name__)

#: The bundled configuration of the demo (``experiments/demo.yaml``).
DEMO_PRESET = "demo"
DATA_DIR = "data"
OVERLAY_FILE = "overlay.gif"


@dataclass
class DemoOutcome:
    """What :func:`run_demo` produced.

    Attributes:
        run: The experiment run (folder, steps that ran, results).
        data_dir: The synthetic dataset.
        result_dirs: CTC result folder of each held-out sequence.
        overlay: The overlay GIF (of the first held-out sequence).
    """

    run: RunOutcome
    data_dir: Path
    result_dirs: list[Path]
    overlay: Path


def demo_config(seed: int = 0, overrides: Sequence[str] = (), out_dir: Optional[str | os.PathLike] = None) -> Config:
    """The demo's configuration: ``experiments/demo.yaml``, the seed (synthetic data and training), ``--set``."""
    config = load_experiment_config(DEMO_PRESET, overrides=[f"training.seed={int(seed)}", *overrides])
    if out_dir is not None:
        config.experiment.output_dir = str(out_dir)
    config.data.dataset_dir = str(Path(config.experiment.output_dir) / DATA_DIR)
    return config


def run_demo(config: Config, seed: int = 0, dry_run: bool = False) -> DemoOutcome:
    """Run the demo (see the module docstring) into ``experiment.output_dir``.

    Args:
        config: From :func:`demo_config` (``data.dataset_dir`` is where the synthetic data goes).
        seed: Seed of the synthetic data.
        dry_run: Only lay out the steps.

    Raises:
        RshnError: On invalid settings or a folder of another run.
    """
    root = Path(config.experiment.output_dir)
    data_dir = Path(config.data.dataset_dir)
    sequences = tuple(dict.fromkeys([*config.data.train_sequences, *config.experiment.test_sequences]))
    synth = Step(
        name="synthesize",
        description=f"write synthetic sequences {', '.join(sequences)} ({config.experiment.synthetic_frames} frames "
                    f"of {config.experiment.synthetic_size[0]}x{config.experiment.synthetic_size[1]}, seed {seed}) "
                    f"-> {data_dir}",
        action=lambda: _synthesize(data_dir, config, seed, sequences),
        outputs=(data_dir,),
        key=f"{config_digest(config, ('experiment',))}-{seed}-{','.join(sequences)}",
    )
    test = config.experiment.test_sequences[0] if config.experiment.test_sequences else "02"
    result = root / "holdout" / f"{test}_RES"
    overlay_path = root / OVERLAY_FILE
    overlay = Step(
        name="overlay",
        description=f"contours coloured by track over {data_dir / test} -> {overlay_path}",
        action=lambda: {"path": str(_overlay(result, data_dir / test, overlay_path))},
        outputs=(overlay_path,), deps=(f"predict[holdout/{test}]",),
    )
    run = run_experiment(config, root, dry_run=dry_run, before=[synth], after=[overlay])
    results = [root / "holdout" / f"{seq}_RES" for seq in config.experiment.test_sequences]
    return DemoOutcome(run=run, data_dir=data_dir, result_dirs=results, overlay=overlay_path)


def _synthesize(data_dir: Path, config: Config, seed: int, sequences: Sequence[str]) -> dict:
    from data_io.synthetic import write_synthetic_dataset

    write_synthetic_dataset(data_dir, frames=config.experiment.synthetic_frames,
                            size=tuple(config.experiment.synthetic_size), seed=seed, sequences=tuple(sequences),
                            overwrite=True)
    return {"sequences": list(sequences), "seed": seed}


def _overlay(result: Path, frames: Path, out: Path) -> Path:
    from rshn_tf.visualize import render_overlay

    return render_overlay(result, frames, out)


def summary(outcome: DemoOutcome, seconds: float) -> str:
    """The lines ``rshn demo`` prints at the end: scores and where the outputs are."""
    results = outcome.run.results or {}
    root = outcome.run.experiment.root
    lines = [f"rshn demo finished in {seconds / 60:.1f} min "
             f"({'all steps were already done' if not outcome.run.ran else f'{len(outcome.run.ran)} steps ran'})"]
    for row in results.get("folds", []):
        lines.append(f"  held-out sequence {row['test']} (trained on {'+'.join(row['train'])}): "
                     + ", ".join(f"{k.replace('_CTB', '')} {row[k]:.3f}" for k in ("SEG", "TRA", "DET", "OP_CTB")
                                 if row.get(k) is not None))
    lines += [
        f"  synthetic data:  {outcome.data_dir}",
        f"  trained model:   {root / 'holdout' / 'model'}",
        *[f"  CTC result:      {path}" for path in outcome.result_dirs],
        f"  overlay movie:   {outcome.overlay}",
        f"  scores:          {root / 'results.json'} and {root / 'results.md'}",
    ]
    return "\n".join(lines)
