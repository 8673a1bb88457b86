"""TF-side data glue: feature converters with per-denoiser ids, the numpy batch iterator the
trainer consumes, and the data inspector (`python -m t5x_ext.data inspect --task NAME`).

Imports TensorFlow and SeqIO, never JAX model code.
"""

from t5x_ext.data.feature_converters import DENOISER_IDS, get_feature_converter
from t5x_ext.data.pipeline import BatchIterator, get_batches, get_infer_batches

__all__ = [
  "DENOISER_IDS",
  "BatchIterator",
  "get_batches",
  "get_feature_converter",
  "get_infer_batches",
]
