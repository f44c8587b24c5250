"""rshn-tf: recurrent stacked hourglass networks with cosine embeddings for cell segmentation and tracking.

A TensorFlow 2 / Keras reproduction of Payer et al., "Segmenting and tracking cell instances with cosine embeddings
and recurrent hourglass networks", Medical Image Analysis 57 (2019).

Importing this package is cheap: TensorFlow is imported only by the modules that need it (layers, models,
losses, training, inference).
"""

from rshn_tf.errors import RshnError

__version__ = "0.1.0"
__all__ = ["RshnError", "__version__"]
