"""The Trainer: sharded train state and the jitted, partitioned train and eval steps.

Shapes: B batch, LT target length, K number of denoisers.

  trainer = Trainer(model, tx, mesh, learning_rate_fn=schedule, denoiser_names=names)
  state = trainer.init_state(jax.random.key(0), first_batch)        # created sharded
  state, metrics = trainer.train_step(state, trainer.shard_batch(numpy_batch))
  metrics = trainer.eval_step(state.params, trainer.shard_batch(numpy_batch))

A subclass may train a subset of the model's parameters: `state.params` then holds the trained
tree, `trainer.frozen` the rest (placed once, passed to every jitted step as an argument that
is neither differentiated nor donated, so it has no gradient and no optimizer state), and
`model_params(params, frozen, rng)` combines the two into what the model is applied with
(`t5x_ext.peft.lora.LoraTrainer`: frozen base weights plus low-rank adapters).

`metrics` are replicated device arrays of sums (see `t5x_ext.training.metric_writers` for what is logged):
`loss` (the optimised scalar), `loss_sum`, `cross_entropy_sum`, `z_loss_sum`, `correct`,
`num_tokens`, `denoiser_loss_sum` [K], `denoiser_tokens` [K], `learning_rate`, `grad_norm`.

Per-denoiser losses come from the model's per-token loss `token_loss` [B, LT] grouped by the
batch's `decoder_denoiser_ids` [B, LT] (0 on padding, k + 1 for denoiser k), reduced to K
sums inside the step so that only K numbers leave the devices.

The training loop (checkpoints, logging, NaN stop) is `t5x_ext.training.loop.train_loop`; this module
holds what is jitted. Never imports TensorFlow or gin.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from t5x_ext.errors import DivergedError, UserError
from t5x_ext.training import hosts, optimizers, partitioning

# Features the data side adds for metrics only; the networks never see them.
METRIC_ONLY_FEATURES = ("decoder_denoiser_ids",)


@flax.struct.dataclass
class TrainState:
  """What a checkpoint holds of the model side: step, params and optimizer state.

  Attributes:
    step: int32 scalar, the number of updates applied.
    params: the unboxed parameter tree.
    opt_state: the optax state.
  """

  step: jax.Array
  params: Any
  opt_state: Any


class NonFiniteLossError(DivergedError):
  """Raised when a train step produced a NaN or infinite loss; nothing was saved after it."""


def _metric_sums(aux: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], num_denoisers: int):
  """Reduces the model's aux outputs to additive sums (so microbatches and steps add up)."""
  sums = {
    k: jnp.asarray(aux[k], jnp.float32)
    for k in ("loss_sum", "z_loss_sum", "correct", "num_tokens")
    if k in aux
  }
  if "loss_sum" in sums:
    # models.py's `loss_sum` is the summed cross entropy plus z-loss.
    sums["cross_entropy_sum"] = sums["loss_sum"] - sums.get("z_loss_sum", 0.0)
  ids = batch.get("decoder_denoiser_ids")
  if num_denoisers and ids is not None and "token_loss" in aux:
    token_loss = jnp.asarray(aux["token_loss"], jnp.float32)
    # one_hot maps id 0 (padding) to -1, i.e. an all-zero row: padding counts nowhere.
    onehot_BLK = jax.nn.one_hot(ids - 1, num_denoisers, dtype=jnp.float32)
    weights = batch.get("decoder_loss_weights")
    weights = (ids > 0) if weights is None else (weights > 0) & (ids > 0)
    sums["denoiser_loss_sum"] = jnp.einsum("bl,blk->k", token_loss, onehot_BLK)
    sums["denoiser_tokens"] = jnp.einsum("bl,blk->k", weights.astype(jnp.float32), onehot_BLK)
  return sums


def _model_batch(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  return {k: v for k, v in batch.items() if k not in METRIC_ONLY_FEATURES}


class Trainer:
  """Holds the model, optimizer and mesh; creates sharded state; runs jitted steps.

  Attributes:
    model: an `EncoderDecoderModel` / `DecoderOnlyModel` (see docs/internals.md).
    tx: the optax optimizer.
    mesh: the device mesh.
    rules: logical axis rules.
    state_shardings: a `TrainState` of NamedShardings (after `init_state`/`abstract_state`).
    compiled_train_step: the `jax.stages.Compiled` step of the last `compile_train_step`
      (None before), e.g. for its `memory_analysis()`; `train_step` then runs it.
    frozen: parameters the steps read but do not train (None: the model trains them all).
    frozen_shardings: their NamedShardings (set with `frozen`, before the first step).
  """

  def __init__(
    self,
    model: Any,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: partitioning.Rules = partitioning.DEFAULT_RULES,
    *,
    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
    num_microbatches: int = 1,
    denoiser_names: Sequence[str] = (),
    dropout_seed: int = 0,
  ):
    """Configures the trainer; nothing is compiled until the first step.

    Args:
      model: the model.
      tx: the optax optimizer (gradient clipping etc. already chained in).
      mesh: the mesh (`partitioning.make_mesh`).
      rules: logical axis rules.
      learning_rate_fn: step -> learning rate (or a float), logged as `learning_rate`.
      num_microbatches: gradient accumulation: split each batch into this many microbatches
        and apply one update with the summed gradient.
      denoiser_names: names of the data's denoisers, in `decoder_denoiser_ids` order.
      dropout_seed: seed of the dropout rng (folded with the step, so resuming is exact).
    """
    if not isinstance(num_microbatches, int) or num_microbatches < 1:
      raise UserError(f"NUM_MICROBATCHES = {num_microbatches!r}: must be a positive int.")
    self.model = model
    self.tx = tx
    self.mesh = mesh
    self.rules = tuple(rules)
    self.learning_rate_fn = learning_rate_fn
    self.num_microbatches = num_microbatches
    self.denoiser_names = tuple(denoiser_names)
    self.dropout_seed = dropout_seed
    # How microbatch losses combine (ValueError for a normalisation it does not know).
    self.accumulation_weighting = optimizers.accumulation_weighting(
      getattr(model, "loss_normalizing_factor", None)
    )
    self.state_shardings: TrainState | None = None
    self._abstract_state: TrainState | None = None
    self._train_step = None
    self._eval_step = None
    self.compile_seconds: float | None = None
    self.compiled_train_step: jax.stages.Compiled | None = None
    self.frozen: Any = None
    self.frozen_shardings: Any = None

  # ----------------------------------------------------------------------------- state

  @property
  def replicated(self) -> NamedSharding:
    """A fully replicated sharding on the mesh (for scalars and metrics)."""
    return NamedSharding(self.mesh, P())

  def _init_params(self, rng, batch):
    return self.model.init_variables(rng, _model_batch(batch))["params"]

  def model_params(self, params: Any, frozen: Any, rng: jax.Array | None = None) -> Any:
    """The parameters the model is applied with, from the trained ones and `frozen`.

    Here the trained params are all of them; a subclass that trains a subset overrides this.

    Args:
      params: the trained params (`state.params`).
      frozen: `self.frozen` as the jitted step sees it.
      rng: the step's dropout rng (None when evaluating).

    Returns:
      The model's params tree.
    """
    del frozen, rng
    return params

  def _loss_fn(self, frozen, params, batch, dropout_rng):
    return self.model.loss_fn(self.model_params(params, frozen, dropout_rng), batch, dropout_rng)

  def abstract_state(self, batch: Mapping[str, Any]) -> TrainState:
    """The state's shapes, dtypes and shardings, without allocating it (restore target).

    Args:
      batch: a (numpy or abstract) batch with the training shapes.

    Returns:
      A `TrainState` of `jax.ShapeDtypeStruct` with `.sharding` set.
    """
    if self._abstract_state is None:
      rng = jax.random.key(0)
      boxed = jax.eval_shape(self._init_params, rng, batch)
      param_shardings = partitioning.logical_shardings(boxed, self.mesh, self.rules)
      params = flax.linen.unbox(boxed)
      abstract_opt = jax.eval_shape(self.tx.init, params)
      opt_shardings = partitioning.optimizer_state_shardings(abstract_opt, params, param_shardings)
      self.state_shardings = TrainState(
        step=self.replicated, params=param_shardings, opt_state=opt_shardings
      )
      shapes = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=abstract_opt
      )
      self._abstract_state = partitioning.with_shardings(shapes, self.state_shardings)
    return self._abstract_state

  def init_state(self, rng: jax.Array, batch: Mapping[str, Any]) -> TrainState:
    """Creates params and optimizer state directly in their shardings.

    Args:
      rng: a `jax.random.key` for the parameter init.
      batch: a (numpy) batch with the training shapes; only its shapes matter.

    Returns:
      The sharded `TrainState` at step 0.
    """
    self.abstract_state(batch)
    # Init only reads the batch's shapes; zeros keep real data out of the init's inputs.
    zeros = hosts.zero_batch(batch)
    params, _ = partitioning.sharded_init(
      self._init_params, rng, zeros, mesh=self.mesh, rules=self.rules
    )
    opt_state, _ = partitioning.init_optimizer_state(self.tx, params, self.state_shardings.params)
    step = jax.device_put(jnp.zeros((), jnp.int32), self.replicated)
    return TrainState(step=step, params=params, opt_state=opt_state)

  def shard_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Places this process's numpy rows as global arrays sharded over the batch axes.

    Args:
      local_batch: numpy dict (this process's rows).

    Returns:
      Dict of global `jax.Array`s.
    """
    return partitioning.make_global_batch(local_batch, self.mesh)

  # ----------------------------------------------------------------------------- steps

  def _train_step_fn(self, state: TrainState, batch, frozen=None):
    dropout_rng = jax.random.fold_in(jax.random.key(self.dropout_seed), state.step)
    # Microbatches keep `token_loss` per example (put back in batch order), so the
    # per-denoiser sums are taken once over the whole batch afterwards.
    # Gradients are taken w.r.t. `state.params` only: `frozen` enters as a constant.
    loss, aux, grads = optimizers.accumulate_gradients(
      functools.partial(self._loss_fn, frozen),
      state.params,
      _model_batch(batch),
      self.num_microbatches,
      dropout_rng,
      weighting=self.accumulation_weighting,
    )
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = _metric_sums(aux, batch, len(self.denoiser_names))
    metrics["loss"] = jnp.asarray(loss, jnp.float32)
    metrics["grad_norm"] = optax.global_norm(grads).astype(jnp.float32)
    if self.learning_rate_fn is not None:
      metrics["learning_rate"] = optimizers.learning_rate_at(self.learning_rate_fn, state.step)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  def _eval_step_fn(self, params, batch, frozen=None):
    loss, aux = self._loss_fn(frozen, params, _model_batch(batch), None)
    sums = _metric_sums(aux, batch, len(self.denoiser_names))
    sums["loss"] = jnp.asarray(loss, jnp.float32)
    return sums

  def _batch_shardings(self):
    # One sharding as a pytree prefix: every feature splits its leading (batch) dim, and
    # batches with other feature sets (packed vs unpacked) reuse the same jit.
    return partitioning.batch_sharding(self.mesh)

  def _jit_train_step(self):
    # The one train-step jit (train_step and compile_train_step): state donated, `frozen`
    # an argument placed with its own shardings.
    return jax.jit(
      self._train_step_fn,
      in_shardings=(self.state_shardings, self._batch_shardings(), self.frozen_shardings),
      out_shardings=(self.state_shardings, self.replicated),
      donate_argnums=(0,),
    )

  def train_step(self, state: TrainState, batch: Mapping[str, jax.Array]):
    """One update. `state` is donated: do not use it after the call.

    Args:
      state: the sharded state.
      batch: global arrays from `shard_batch`.

    Returns:
      `(new_state, metrics)`; metrics are replicated device arrays (see the module doc).
    """
    if self._train_step is None:
      if self.state_shardings is None:
        raise RuntimeError("Call init_state or abstract_state before train_step.")
      self._train_step = self._jit_train_step()
    with partitioning.axis_rules(self.mesh, self.rules):
      return self._train_step(state, batch, self.frozen)

  def compile_train_step(self, batch: Mapping[str, Any]) -> float:
    """Compiles the train step ahead of time for these batch shapes; returns the seconds.

    Args:
      batch: a (numpy or global) batch with the training shapes.

    Returns:
      Wall seconds spent lowering and compiling.
    """
    abstract = self.abstract_state(batch)
    shapes = {
      k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self._batch_shardings())
      for k, v in batch.items()
    }
    start = time.perf_counter()
    jitted = self._jit_train_step()
    with partitioning.axis_rules(self.mesh, self.rules):
      frozen = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.frozen
      )
      compiled = jitted.lower(abstract, shapes, frozen).compile()
    self.compile_seconds = time.perf_counter() - start
    self._train_step = compiled
    self.compiled_train_step = compiled
    return self.compile_seconds

  def eval_step(self, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Teacher-forced metrics of one batch (no dropout, no update).

    Args:
      params: the sharded params.
      batch: global arrays from `shard_batch`.

    Returns:
      Replicated metric sums (`loss`, `loss_sum`, `correct`, `num_tokens`, per-denoiser sums).
    """
    if self._eval_step is None:
      if self.state_shardings is None:
        raise RuntimeError("Call init_state or abstract_state before eval_step.")
      self._eval_step = jax.jit(
        self._eval_step_fn,
        in_shardings=(
          self.state_shardings.params,
          self._batch_shardings(),
          self.frozen_shardings,
        ),
        out_shardings=self.replicated,
      )
    with partitioning.axis_rules(self.mesh, self.rules):
      return self._eval_step(params, batch, self.frozen)
