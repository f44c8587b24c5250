"""rshn-tf: recurrent stacked hourglass networks with cosine embeddings for cell segmentation and tracking.

A TensorFlow 2 / Keras reproduction of Payer et al., "Segmenting and tracking cell instances with cosine embeddings
and recurrent hourglass networks", Medical Image Analysis 57 (2019).

Python API (:mod:`rshn_tf.api`)::

    model = rshn_tf.RSHN.from_folder("models/DIC-C2DH-HeLa-cpu")
    labels, tracks = model.segment_and_track(frames)

Importing this package is cheap: :class:`RSHN` and :class:`Segmentation` are imported on first use, and
TensorFlow only by the modules that need it (layers, models, losses, training, inference) when they run.
"""

from typing import Any

from rshn_tf.errors import RshnError

__version__ = "0.1.0"
__all__ = ["RSHN", "RshnError", "Segmentation", "__version__"]

_API = ("RSHN", "Segmentation")


def __getattr__(name: str) -> Any:
    """Import the Python API (:mod:`rshn_tf.api`) when one of its names is first used."""
    if name in _API:
        from rshn_tf import api

        return getattr(api, name)
    raise AttributeError(f"module 'rshn_tf' has no attribute {name!r}")
