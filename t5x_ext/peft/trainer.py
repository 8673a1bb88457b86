"""`LoraTrainer`: a `Trainer` whose state holds the LoRA adapters, the base frozen beside it.

  trainer = LoraTrainer(model, tx, mesh, lora=LoraConfig(rank=8))
  trainer.load_base("/path/to/base", first_batch)    # or trainer.set_base(params)
  state = trainer.init_state(jax.random.key(0), first_batch)   # adapters + their opt state
  state, metrics = trainer.train_step(state, trainer.shard_batch(batch))
  merged = trainer.merged_params(state.params)        # full params, for decoding or export

The base parameters live in `trainer.frozen` (in `LoraConfig.base_dtype`, sharded by their
logical names, as a full run shards them) and enter every jitted step as an argument that is
neither differentiated nor donated: they get no gradient, no optimizer state, and stay
bit-identical. `TrainState.params` is the adapter tree, so checkpoints (`Checkpointer`)
hold the adapters and their optimizer state only, and resume exactly as full runs do.

Never imports TensorFlow or gin.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from t5x_ext.peft import lora
from t5x_ext.training import checkpointing, partitioning
from t5x_ext.training.trainer import Trainer

# Folded into the step's dropout rng for LoRA's own dropout masks.
_LORA_RNG_SALT = 0x10AA


class LoraTrainer(Trainer):
  """Trains LoRA adapters of `model` with its base parameters frozen.

  Attributes:
    lora: the `LoraConfig`.
    base_shardings: NamedShardings of the base params (after `base_abstract`).
    (others): see `Trainer`.
  """

  def __init__(self, model: Any, tx: Any, mesh: Any, rules=partitioning.DEFAULT_RULES, **kw):
    """Configures the trainer.

    Args:
      model: the model (`EncoderDecoderModel` or `DecoderOnlyModel`).
      tx: the optax optimizer of the adapters.
      mesh: the mesh.
      rules: logical axis rules.
      **kw: `lora=LoraConfig(...)` (default `LoraConfig()`) and `Trainer`'s keyword arguments.
    """
    self.lora = kw.pop("lora", None) or lora.LoraConfig()
    super().__init__(model, tx, mesh, rules, **kw)
    self.base_shardings: Any = None
    self._base_abstract: Any = None

  # ----------------------------------------------------------------------------- params

  def _base_init(self, rng, batch):
    return Trainer._init_params(self, rng, batch)  # the full model's (boxed) params

  def _init_params(self, rng, batch):
    # The adapters read only the base's shapes and logical names.
    boxed_base = jax.eval_shape(self._base_init, rng, batch)
    return lora.init_adapters(jax.random.fold_in(rng, 1), boxed_base, self.lora)

  def base_abstract(self, batch: Mapping[str, Any]) -> Any:
    """The base params' shapes (in `base_dtype`) with their shardings (the restore target).

    Args:
      batch: a (numpy or abstract) batch with the training shapes.

    Returns:
      Unboxed tree of `jax.ShapeDtypeStruct` with `.sharding`.
    """
    if self._base_abstract is None:
      boxed = jax.eval_shape(self._base_init, jax.random.key(0), batch)
      self.base_shardings = partitioning.logical_shardings(boxed, self.mesh, self.rules)
      shapes = lora.cast_floats(nn.unbox(boxed), lora.DTYPES[self.lora.base_dtype])
      self._base_abstract = partitioning.with_shardings(shapes, self.base_shardings)
    return self._base_abstract

  def set_base(self, params: Any, batch: Mapping[str, Any]) -> Any:
    """Places `params` as the frozen base: cast to `base_dtype`, in the base's shardings.

    Args:
      params: the model's full params (unboxed; any placement).
      batch: a batch with the training shapes.

    Returns:
      The placed base (also `self.frozen`).
    """
    self.base_abstract(batch)  # sets base_shardings
    dtype = lora.DTYPES[self.lora.base_dtype]
    cast = jax.jit(lambda p: lora.cast_floats(p, dtype), out_shardings=self.base_shardings)
    return self._freeze(cast(params))

  def load_base(self, path: str | os.PathLike, batch: Mapping[str, Any]) -> Any:
    """Restores the frozen base from a checkpoint (`checkpointing.restore_params` reads it).

    Args:
      path: a MODEL_DIR, step directory, converted weights or T5X checkpoint.
      batch: a batch with the training shapes.

    Returns:
      The placed base (also `self.frozen`), in `base_dtype`.
    """
    return self._freeze(checkpointing.restore_params(path, self.base_abstract(batch)))

  def _freeze(self, base: Any) -> Any:
    self.frozen = base
    self.frozen_shardings = self.base_shardings
    return base

  def model_params(self, params: Any, frozen: Any, rng: jax.Array | None = None) -> Any:
    """The base with the adapters added (see `lora.apply`).

    Args:
      params: the adapters.
      frozen: the base params.
      rng: the step's dropout rng (None when evaluating).

    Returns:
      The model's params.
    """
    if frozen is None:
      raise RuntimeError("LoraTrainer has no base params: call load_base or set_base first.")
    lora_rng = None if rng is None else jax.random.fold_in(rng, _LORA_RNG_SALT)
    return lora.apply(frozen, params, self.lora, rng=lora_rng)

  def merged_params(self, adapters: Any, dtype: Any = np.float32) -> Any:
    """The adapters folded into the frozen base, sharded like the base (for decoding, export).

    Args:
      adapters: `state.params`.
      dtype: the merged dtype.

    Returns:
      The full params tree.
    """
    merge = jax.jit(
      lambda base, ad: lora.merge(base, ad, self.lora, dtype), out_shardings=self.base_shardings
    )
    with partitioning.axis_rules(self.mesh, self.rules):
      return merge(self.frozen, adapters)
