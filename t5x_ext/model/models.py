"""Models: a network plus its loss, metrics, scoring and prediction.

`EncoderDecoderModel` (T5.1.1 / UL2) and `DecoderOnlyModel` (causal or prefix LM) share
one interface, fixed in docs/internals.md: `init_variables`, `loss_fn` (with the aux dict
the trainer sums, including per-token `token_loss`), `score_batch`, `predict_batch` and
`flops_per_token`. Batches are the feature converters' dicts (numpy or jax arrays).

Shape key: B batch, I encoder length, T decoder length, V vocab, K beams.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_ext.errors import UserError
from t5x_ext.model import decoding, flops, layers, losses
from t5x_ext.model.network import (
  PREFILL,
  STEP,
  DecoderOnly,
  EncoderDecoder,
  TransformerConfig,
  insert_prompt,
  prompt_tokens,
)

Array = jax.Array
Batch = Mapping[str, Any]

PREDICT_METHODS = ("greedy", "sample", "beam")
# The decoder layers' cross-attention module (`layers.DecoderLayer`): its cache is shared by
# the beams of an example.
_CROSS_ATTENTION = "encoder_decoder_attention"


# XLA options for the decoding executable on CPU. A decoder step multiplies a few rows
# (the batch, or batch x beams) by every weight matrix, so it is bound by reading the weights.
# XLA:CPU hands those dots to YNNPACK by default, which packs the weight matrix again at
# every step; with its fusions off they go to Eigen, which reads the matrix in place. On an
# AVX2 AMD EPYC (2 cores, T5.1.1 small fp32, batch 4, 256 in, 64 out) this took greedy
# decoding from 1.83 to 1.61 s and beam search (4 beams) from 3.82 to 3.24 s, with the same
# tokens; the encoder pass is as fast either way (`bench/decode.py`, docs/internals.md).
CPU_DECODE_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def decode_compiler_options() -> dict[str, str] | None:
  """XLA compiler options `predict_batch` compiles with on the default backend.

  Returns:
    A copy of `CPU_DECODE_COMPILER_OPTIONS` when JAX's default backend is the CPU, else
    None (the backend's defaults).
  """
  return dict(CPU_DECODE_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else None


class BaseModel:
  """Loss, metrics and decoding shared by both model families.

  Args:
    config: the network's TransformerConfig.
    z_loss: coefficient of the z-loss (`z_loss * log(Z)^2` per target token).
    label_smoothing: label smoothing in [0, 1).
    loss_normalizing_factor: see `losses.normalize`: None (mean over real target tokens),
      'NUM_REAL_TARGET_TOKENS', 'NUM_TOTAL_TARGET_TOKENS', 'AVERAGE_PER_SEQUENCE', or a
      positive constant.
    eos_id: end-of-sequence id (T5's SentencePiece vocabularies use 1).
  """

  feature_converter_name: str = ""
  # Features the network reads; others (e.g. decoder_denoiser_ids) are dropped before jit.
  _network_features: tuple[str, ...] = ()

  def __init__(
    self,
    config: TransformerConfig,
    *,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
    loss_normalizing_factor: float | str | None = None,
    eos_id: int = 1,
  ):
    if not isinstance(config, TransformerConfig):
      raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    if z_loss < 0:
      raise UserError(f"z_loss={z_loss} must be >= 0")
    if not 0.0 <= label_smoothing < 1.0:
      raise UserError(f"label_smoothing={label_smoothing} must be in [0, 1)")
    losses.check_normalizing_factor(loss_normalizing_factor)
    if not 0 <= eos_id < config.vocab_size:
      raise UserError(f"eos_id={eos_id} is outside the vocabulary (size {config.vocab_size})")
    self.config = config
    self.z_loss = float(z_loss)
    self.label_smoothing = float(label_smoothing)
    self.loss_normalizing_factor = loss_normalizing_factor
    self.eos_id = int(eos_id)
    self.module = self._make_module()
    self._predict_jit_fn = None

  def _make_module(self) -> nn.Module:
    raise NotImplementedError

  @property
  def _predict_jit(self):
    # Built at the first prediction, not in __init__: asking for the backend here would
    # initialise JAX before a multi-process run's `jax.distributed.initialize`.
    if self._predict_jit_fn is None:
      self._predict_jit_fn = jax.jit(
        self._predict,
        static_argnames=(
          "decode_len",
          "method",
          "temperature",
          "top_k",
          "top_p",
          "beam_size",
          "length_penalty",
          "prompt_offset",
        ),
        compiler_options=decode_compiler_options(),
      )
    return self._predict_jit_fn

  # ---- batches ---------------------------------------------------------------------

  def validate_batch(self, batch: Batch) -> None:
    """Checks a batch: required features, and the token ids of its numpy arrays.

    Device arrays and traced values (inside `jax.jit` / `jax.eval_shape`) are not read.

    Args:
      batch: a feature-converted batch.

    Raises:
      ValueError: a missing feature, or a token id outside [0, vocab_size).
    """
    for name in self._required_features():
      if name not in batch:
        raise UserError(f"{type(self).__name__} needs batch feature {name!r}; got {sorted(batch)}")
    self._check_token_ids(batch)

  def _check_token_ids(self, batch: Batch) -> None:
    for name in self._network_features:
      value = batch.get(name)
      # Only host arrays: reading a device array would cost a transfer (and is impossible
      # for a global array spread over hosts); traced values have no contents.
      if not name.endswith("_tokens") or not isinstance(value, np.ndarray):
        continue
      arr = value
      if arr.size and (arr.max() >= self.config.vocab_size or arr.min() < 0):
        raise UserError(
          f"batch[{name!r}] has token ids in [{arr.min()}, {arr.max()}] but "
          f"TransformerConfig.vocab_size={self.config.vocab_size}; the vocabulary "
          "must cover every id (set vocab_size / VOCAB_SIZE >= the vocabulary's size)"
        )

  def _required_features(self) -> tuple[str, ...]:
    raise NotImplementedError

  def _features(self, batch: Batch) -> dict[str, Array]:
    return {k: jnp.asarray(batch[k]) for k in self._network_features if k in batch}

  # ---- training ----------------------------------------------------------------------

  def init_variables(self, rng: Array, batch: Batch) -> dict[str, Any]:
    """Initialises the parameters for batches shaped like `batch`.

    Works under `jax.eval_shape` and `jax.jit` (only shapes are read).

    Args:
      rng: PRNG key.
      batch: a batch (arrays or `jax.ShapeDtypeStruct`s) with the model's features.

    Returns:
      {"params": ...} with `nn.LogicallyPartitioned` leaves.
    """
    self.validate_batch(batch)
    dummy = {
      k: jnp.ones(batch[k].shape, jnp.int32)
      for k in self._network_features
      if k in batch and not k.endswith("_segment_ids")
    }
    variables = self.module.init({"params": rng}, **dummy, deterministic=True)
    return {"params": variables["params"]}

  def _apply(
    self, params, batch: Batch, dropout_rng: Array | None, prompt=None, prompt_offset=0
  ) -> Array:
    deterministic = dropout_rng is None or self.config.dropout_rate == 0.0
    rngs = None if deterministic else {"dropout": dropout_rng}
    # A soft prompt (prompt tuning, `t5x_ext.peft.prompt_tuning`) goes to the network.
    extra = {} if prompt is None else {"prompt": prompt, "prompt_offset": prompt_offset}
    return self.module.apply(
      {"params": params}, **self._features(batch), deterministic=deterministic, rngs=rngs, **extra
    )

  def loss_fn(
    self,
    params: Any,
    batch: Batch,
    dropout_rng: Array | None,
    *,
    prompt: Array | None = None,
    prompt_offset: int = 0,
  ) -> tuple[Array, dict[str, Array]]:
    """Training loss and its summable parts.

    Args:
      params: unboxed parameters.
      batch: a feature-converted batch.
      dropout_rng: PRNG key for dropout, or None for deterministic evaluation.
      prompt: a soft prompt [P, D] in front of the encoder inputs (decoder-only: of the
        sequence) after the token embedding lookup (prompt tuning); None: none. Needs an
        unpacked batch.
      prompt_offset: the input position the prompt goes before (0: in front).

    Returns:
      (scalar loss to differentiate, aux) where aux holds float32 sums over the batch:
      "loss_sum" (cross entropy + z-loss), "z_loss_sum", "correct" (argmax hits),
      "num_tokens" (sum of loss weights), and "token_loss" [B, T] (per-token cross entropy
      + z-loss, 0 where the weight is 0).
    """
    logits_BTV = self._apply(params, batch, dropout_rng, prompt, prompt_offset)
    targets_BT = jnp.asarray(batch["decoder_target_tokens"])
    weights_BT = self._loss_weights(batch)
    total_BT, z_BT, _ = losses.cross_entropy_with_z_loss(
      logits_BTV, targets_BT, z_loss=self.z_loss, label_smoothing=self.label_smoothing
    )
    token_loss_BT = total_BT * weights_BT
    segment_ids = batch.get("decoder_segment_ids")
    loss = losses.normalize(
      token_loss_BT,
      weights_BT,
      None if segment_ids is None else jnp.asarray(segment_ids),
      self.loss_normalizing_factor,
    )
    correct = (jnp.argmax(logits_BTV, axis=-1) == targets_BT).astype(jnp.float32)
    aux = {
      "loss_sum": jnp.sum(token_loss_BT),
      "z_loss_sum": jnp.sum(z_BT * weights_BT),
      "correct": jnp.sum(correct * weights_BT),
      "num_tokens": jnp.sum(weights_BT),
      "token_loss": token_loss_BT,
    }
    return loss, aux

  def _loss_weights(self, batch: Batch) -> Array:
    if "decoder_loss_weights" in batch:
      return jnp.asarray(batch["decoder_loss_weights"]).astype(jnp.float32)
    return (jnp.asarray(batch["decoder_target_tokens"]) > 0).astype(jnp.float32)

  def score_batch(
    self, params: Any, batch: Batch, *, prompt: Array | None = None, prompt_offset: int = 0
  ) -> Array:
    """Log-likelihood of each example's targets (no z-loss, no smoothing).

    Args:
      params: unboxed parameters.
      batch: an unpacked batch.
      prompt: a soft prompt (see `loss_fn`), or None.
      prompt_offset: its place (see `loss_fn`).

    Returns:
      float32 [B]: sum over target tokens (loss weight > 0) of log p(token).
    """
    logits_BTV = self._apply(params, batch, None, prompt, prompt_offset)
    _, _, logp_BT = losses.cross_entropy_with_z_loss(
      logits_BTV, jnp.asarray(batch["decoder_target_tokens"])
    )
    return jnp.sum(logp_BT * self._loss_weights(batch), axis=-1)

  # ---- prediction --------------------------------------------------------------------

  def predict_batch(
    self,
    params: Any,
    batch: Batch,
    rng: Array | None = None,
    *,
    decode_len: int,
    method: str = "greedy",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    prompt: Array | None = None,
    prompt_offset: int = 0,
  ) -> Array:
    """Generates continuations with a key/value cache (one decoder step per token).

    Encoder-decoder models decode from the start token given the encoder inputs;
    decoder-only models continue after the prompt (the part marked by
    `decoder_causal_attention`, i.e. the inputs, mode prefix included).

    Args:
      params: unboxed parameters.
      batch: an unpacked batch with the model's features.
      rng: PRNG key for sampling (default PRNGKey(0)).
      decode_len: number of tokens to generate at most.
      method: "greedy", "sample" or "beam".
      temperature: sampling temperature ("sample"; 0 is greedy).
      top_k: sample among the k most likely tokens (0: all).
      top_p: nucleus mass (1: all).
      beam_size: beams ("beam").
      length_penalty: brevity-penalty alpha ("beam").
      prompt: a soft prompt (see `loss_fn`), or None.
      prompt_offset: its place (see `loss_fn`; decoder-only: in the prompt before its
        right-alignment, so decoding sees the positions training saw).

    Returns:
      int32 [B, decode_len]: tokens, EOS, then zeros.
    """
    if method not in PREDICT_METHODS:
      raise UserError(f"method={method!r}: expected one of {PREDICT_METHODS}")
    if decode_len < 1:
      raise ValueError(f"decode_len={decode_len} must be >= 1")
    if "decoder_segment_ids" in batch or "encoder_segment_ids" in batch:
      raise ValueError("predict_batch needs an unpacked batch (no *_segment_ids)")
    self._check_token_ids(batch)
    if rng is None:
      rng = jax.random.PRNGKey(0)
    return self._predict_jit(
      params,
      self._features(batch),
      rng,
      decode_len=int(decode_len),
      method=method,
      temperature=float(temperature) if method == "sample" else 0.0,
      top_k=int(top_k),
      top_p=float(top_p),
      beam_size=int(beam_size) if method == "beam" else 1,
      length_penalty=float(length_penalty),
      prompt=None if prompt is None else jnp.asarray(prompt),
      prompt_offset=int(prompt_offset),
    )

  def _batch_axis(self) -> int:
    # Scanned layers stack the cache on a leading layers axis.
    return 1 if self.config.scan_layers else 0

  def _repeat_cache(self, cache, k: int):
    """The prefilled cache of B rows, laid out for K beams per example.

    The cross-attention cache (the encoder's keys and values) is the same for every beam
    of an example, so it keeps one row per example: the step attends the K beams of an
    example as K queries of that row (`layers._attend_cached`); repeating and reordering
    it would move K times the encoder K/V at every step (100 MB per step at T5.1.1 small,
    batch 4, 256 inputs, 4 beams). The self-attention caches take the beam layout of
    `layers.to_beam_cache`, in which following the beams' parents moves only small index
    arrays, never keys or values.
    """
    if k == 1:
      return cache
    ax = self._batch_axis()

    def walk(tree, cross):
      if not isinstance(tree, Mapping):
        return tree
      if "cached_key" in tree:
        return tree if cross else layers.to_beam_cache(tree, k, ax)
      return {name: walk(sub, cross or name == _CROSS_ATTENTION) for name, sub in tree.items()}

    return walk(cache, False)

  def _reorder_cache(self, cache, rows):
    """Makes beam row n continue the beam `rows[n]` (a flat index over B * K rows)."""
    ax = self._batch_axis()

    def walk(tree, cross):
      if not isinstance(tree, Mapping):
        return tree
      if "cached_key" in tree:
        if cross:
          return tree
        if layers.BEAM_SOURCE in tree:
          return {**tree, layers.BEAM_SOURCE: jnp.take(tree[layers.BEAM_SOURCE], rows, axis=ax)}
        # One beam per example: the plain layout, reordered by a gather.
        return jax.tree.map(lambda x: jnp.take(x, rows, axis=ax), tree)
      return {name: walk(sub, cross or name == _CROSS_ATTENTION) for name, sub in tree.items()}

    return walk(cache, False)

  def _run_search(self, first_logits_BV, cache, step_fn, rng, **kw) -> Array:
    if kw["method"] == "beam":
      k = kw["beam_size"]
      seq, _ = decoding.beam_search(
        step_fn,
        jnp.repeat(first_logits_BV, k, axis=0),
        self._repeat_cache(cache, k),
        self._reorder_cache,
        beam_size=k,
        decode_len=kw["decode_len"],
        eos_id=self.eos_id,
        length_penalty=kw["length_penalty"],
      )
      return seq
    return decoding.sample_decode(
      step_fn,
      first_logits_BV,
      cache,
      decode_len=kw["decode_len"],
      eos_id=self.eos_id,
      rng=rng,
      temperature=kw["temperature"],
      top_k=kw["top_k"],
      top_p=kw["top_p"],
    )

  def _predict(self, params, features, rng, prompt=None, prompt_offset=0, **kw) -> Array:
    raise NotImplementedError

  def flops_per_token(self, lengths: Mapping[str, int]) -> float:
    """Training FLOPs (forward + backward, matmuls only) per decoder position.

    Multiply by batch size x decoder length (targets length for encoder-decoder,
    inputs + targets for decoder-only) to get the FLOPs of one training step.

    The count is `t5x_ext.model.flops.flops_per_token(self.config, lengths)` (documented
    there; `t5x_ext.training.flops` re-exports it).

    Args:
      lengths: {"inputs": I, "targets": T} task feature lengths ("inputs" may be absent
        for a decoder-only causal LM).

    Returns:
      FLOPs per decoder position, counting 2 per multiply-add and the backward pass as
      twice the forward.
    """
    return flops.flops_per_token(self.config, lengths)


class EncoderDecoderModel(BaseModel):
  """T5.1.1 / UL2 encoder-decoder model (SeqIO's EncDecFeatureConverter batches)."""

  feature_converter_name = "EncDecFeatureConverter"
  _network_features = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "encoder_segment_ids",
    "decoder_segment_ids",
  )

  def _make_module(self) -> nn.Module:
    if self.config.decoder_only:
      raise UserError("EncoderDecoderModel needs TransformerConfig.decoder_only=False")
    return EncoderDecoder(self.config)

  def _required_features(self) -> tuple[str, ...]:
    return ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")

  def logits(
    self,
    params: Any,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None = None,
  ) -> Array:
    """Teacher-forced decoder logits.

    Args:
      params: unboxed parameters.
      encoder_input_tokens: int [B, I] (0 is padding).
      decoder_input_tokens: int [B, T] (starting with the 0 start token).
      decoder_target_tokens: int [B, T] marking padding with 0, or None (no padding).

    Returns:
      float32 [B, T, V].
    """
    return self.module.apply(
      {"params": params},
      jnp.asarray(encoder_input_tokens),
      jnp.asarray(decoder_input_tokens),
      None if decoder_target_tokens is None else jnp.asarray(decoder_target_tokens),
    )

  def _predict(self, params, features, rng, prompt=None, prompt_offset=0, **kw) -> Array:
    enc_tokens = features["encoder_input_tokens"]
    decode_len = kw["decode_len"]
    b = enc_tokens.shape[0]
    encoded = self.module.apply(
      {"params": params},
      enc_tokens,
      prompt=prompt,
      prompt_offset=prompt_offset,
      method=EncoderDecoder.encode,
    )
    if prompt is not None:  # the cross-attention mask covers the prompt's positions
      enc_tokens = prompt_tokens(enc_tokens, prompt.shape[-2], prompt_offset)
    start = jnp.zeros((b, 1), jnp.int32)
    logits, variables = self.module.apply(
      {"params": params},
      encoded,
      enc_tokens,
      start,
      mode=PREFILL,
      cache_length=decode_len,
      method=EncoderDecoder.decode,
      mutable=["cache"],
    )

    def step_fn(tok_N, cache, i):
      # The token generated at output position i sits in cache slot i + 1 (slot 0: start).
      # The encoder tokens (the cross-attention mask) keep one row per example, as the
      # cross-attention cache does in beam search (see `_repeat_cache`).
      out, new_vars = self.module.apply(
        {"params": params, "cache": cache},
        None,
        enc_tokens,
        tok_N[:, None],
        mode=STEP,
        cache_length=decode_len,
        index=i + 1,
        method=EncoderDecoder.decode,
        mutable=["cache"],
      )
      return out[:, 0], new_vars["cache"]

    return self._run_search(logits[:, 0], variables["cache"], step_fn, rng, **kw)


class DecoderOnlyModel(BaseModel):
  """Decoder-only model: a prefix LM on SeqIO's PrefixLMFeatureConverter batches (inputs
  attended bidirectionally), or a causal LM.

  Args:
    config: TransformerConfig with decoder_only=True.
    inputs_bidirectional_attention: attend bidirectionally over the inputs part marked by
      `decoder_causal_attention` (prefix LM); False gives a causal LM on the same batches.
    feature_converter_name: "PrefixLMFeatureConverter" (default) or
      "DecoderFeatureConverter".
    **kwargs: as `BaseModel` (z_loss, label_smoothing, loss_normalizing_factor, eos_id).
  """

  _network_features = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_segment_ids",
    "decoder_causal_attention",
  )

  def __init__(
    self,
    config: TransformerConfig,
    *,
    inputs_bidirectional_attention: bool = True,
    feature_converter_name: str = "PrefixLMFeatureConverter",
    **kwargs,
  ):
    if feature_converter_name not in ("PrefixLMFeatureConverter", "DecoderFeatureConverter"):
      raise UserError(
        f"feature_converter_name={feature_converter_name!r}: expected "
        "'PrefixLMFeatureConverter' or 'DecoderFeatureConverter'"
      )
    self.inputs_bidirectional_attention = bool(inputs_bidirectional_attention)
    self.feature_converter_name = feature_converter_name
    super().__init__(config, **kwargs)

  def _make_module(self) -> nn.Module:
    if not self.config.decoder_only:
      raise UserError("DecoderOnlyModel needs TransformerConfig.decoder_only=True")
    return DecoderOnly(self.config)

  def _required_features(self) -> tuple[str, ...]:
    return ("decoder_input_tokens", "decoder_target_tokens")

  def _loss_weights(self, batch: Batch) -> Array:
    if "decoder_loss_weights" in batch or "decoder_causal_attention" not in batch:
      return super()._loss_weights(batch)
    # Without explicit weights, score only the targets part. The target at position t is
    # an input token when position t + 1 (same segment) is still in the prefix, because
    # `decoder_causal_attention` covers BOS + the inputs.
    targets = jnp.asarray(batch["decoder_target_tokens"])
    causal = jnp.asarray(batch["decoder_causal_attention"]) > 0
    next_causal = jnp.pad(causal[:, 1:], ((0, 0), (0, 1)))
    if "decoder_segment_ids" in batch:
      seg = jnp.asarray(batch["decoder_segment_ids"])
      next_causal = next_causal & (jnp.pad(seg[:, 1:], ((0, 0), (0, 1))) == seg)
    return ((targets > 0) & ~next_causal).astype(jnp.float32)

  def _apply(
    self, params, batch: Batch, dropout_rng: Array | None, prompt=None, prompt_offset=0
  ) -> Array:
    if not self.inputs_bidirectional_attention and "decoder_causal_attention" in batch:
      # A causal LM on prefix-LM batches: the prefix is attended causally. Only the
      # network's view drops the feature; prediction still reads it to find the prompt.
      batch = {k: v for k, v in batch.items() if k != "decoder_causal_attention"}
    return super()._apply(params, batch, dropout_rng, prompt, prompt_offset)

  def _predict(self, params, features, rng, prompt=None, prompt_offset=0, **kw) -> Array:
    inputs_BP = features["decoder_input_tokens"]
    b, p = inputs_BP.shape
    decode_len = kw["decode_len"]
    if "decoder_causal_attention" in features:
      # BOS + the inputs: the positions a prefix LM sees bidirectionally.
      prompt_len_B = jnp.sum(features["decoder_causal_attention"] > 0, axis=1)
    else:
      prompt_len_B = jnp.ones((b,), jnp.int32)
    prompt_len_B = jnp.clip(prompt_len_B, 1, p).astype(jnp.int32)
    # Right-align the prompts so that every row generates from slot p; the relative
    # position bias only sees offsets, so the left padding changes nothing.
    shift_B = p - prompt_len_B
    src = jnp.arange(p)[None, :] - shift_B[:, None]
    aligned_BP = jnp.where(src >= 0, jnp.take_along_axis(inputs_BP, jnp.maximum(src, 0), 1), 0)
    real_BP = src >= 0
    prefix = real_BP.astype(jnp.int32) if self.inputs_bidirectional_attention else None
    extra = {}
    if prompt is not None:
      # The soft prompt goes where training put it: `prompt_offset` tokens into the
      # right-aligned prompt, so it sits next to the tokens (no padding in between).
      num = prompt.shape[-2]
      offset_B = shift_B + prompt_offset
      extra = {"prompt": prompt, "prompt_offset": offset_B}
      real_BP = insert_prompt(real_BP, jnp.ones((num,), jnp.bool_), offset_B)
      p += num
    cache_length = p + decode_len - 1
    cache_mask_BC = jnp.concatenate([real_BP, jnp.ones((b, cache_length - p), jnp.bool_)], axis=1)
    logits, variables = self.module.apply(
      {"params": params},
      aligned_BP,
      decoder_causal_attention=prefix,
      mode=PREFILL,
      cache_length=cache_length,
      cache_mask=cache_mask_BC,
      mutable=["cache"],
      **extra,
    )
    rows = b * (kw["beam_size"] if kw["method"] == "beam" else 1)
    step_mask = cache_mask_BC if rows == b else jnp.repeat(cache_mask_BC, rows // b, axis=0)

    def step_fn(tok_N, cache, i):
      out, new_vars = self.module.apply(
        {"params": params, "cache": cache},
        tok_N[:, None],
        mode=STEP,
        cache_length=cache_length,
        index=p + i,
        cache_mask=step_mask,
        mutable=["cache"],
      )
      return out[:, 0], new_vars["cache"]

    return self._run_search(logits[:, -1], variables["cache"], step_fn, rng, **kw)
