"""t5x_ext: UL2-style pretraining with a Mixture-of-Denoisers, in JAX/Flax.

Data side (imports TensorFlow, never JAX model code): `t5x_ext.objectives`, `t5x_ext.data`
and the top-level `tasks` registry. Model side (never imports TensorFlow): networks,
models, decoding, partitioning, the trainer. `t5x_ext.train|eval|infer` join them.
"""

__version__ = "0.1.0"
