"""Search over a cached decoder: greedy, temperature sampling (top-k / top-p), beam search.

Every algorithm runs in one `jax.lax.while_loop` that costs one decoder step per
generated token and never returns to the host. The model side supplies
`step_fn(tokens_N, cache, i) -> (logits_NV, cache)`, which feeds the token generated at
output position `i` and returns the logits of position `i + 1`, and the logits of
position 0 (from a prefill over the prompt).

Shape key: B batch, K beams, N = B or B * K decoder rows, T decode_len, V vocab.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t5x_ext.errors import UserError

Array = jax.Array
StepFn = Callable[[Array, Any, Array], tuple[Array, Any]]

NEG_INF = np.float32(-1e30)


def filter_top_k(logits_NV: Array, top_k: int) -> Array:
  """Keeps the `top_k` largest logits per row (0 keeps all).

  Args:
    logits_NV: float logits.
    top_k: number of tokens to keep; 0 disables the filter.

  Returns:
    logits with the others set to a large negative value.
  """
  if top_k <= 0 or top_k >= logits_NV.shape[-1]:
    return logits_NV
  kth = jax.lax.top_k(logits_NV, top_k)[0][..., -1:]
  return jnp.where(logits_NV < kth, NEG_INF, logits_NV)


def filter_top_p(logits_NV: Array, top_p: float) -> Array:
  """Nucleus filter: keeps the smallest set of tokens whose probability reaches `top_p`.

  Args:
    logits_NV: float logits.
    top_p: cumulative probability in (0, 1]; 1 disables the filter.

  Returns:
    logits with tokens outside the nucleus set to a large negative value. The most likely
    token is always kept.
  """
  if top_p >= 1.0:
    return logits_NV
  sorted_NV = jnp.sort(logits_NV, axis=-1)[..., ::-1]
  probs_NV = jax.nn.softmax(sorted_NV, axis=-1)
  # A token stays if the mass of the tokens ranked above it is below top_p.
  mass_before_NV = jnp.cumsum(probs_NV, axis=-1) - probs_NV
  keep_NV = mass_before_NV < top_p
  threshold_N1 = jnp.min(jnp.where(keep_NV, sorted_NV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_NV < threshold_N1, NEG_INF, logits_NV)


def sample_decode(
  step_fn: StepFn,
  first_logits_BV: Array,
  cache: Any,
  *,
  decode_len: int,
  eos_id: int,
  rng: Array | None = None,
  temperature: float = 0.0,
  top_k: int = 0,
  top_p: float = 1.0,
) -> Array:
  """Greedy (temperature 0) or temperature/top-k/top-p sampling.

  Args:
    step_fn: the model's cached decoder step (see the module docstring).
    first_logits_BV: logits of output position 0.
    cache: the decoder cache after the prefill.
    decode_len: T, number of tokens to generate at most.
    eos_id: end-of-sequence id; a row stops after it.
    rng: PRNG key for sampling (unused when greedy).
    temperature: 0 is greedy (argmax); otherwise logits are divided by it.
    top_k: keep only the k most likely tokens (0: all).
    top_p: nucleus sampling mass (1: all).

  Returns:
    int32 [B, T] tokens; after EOS, zeros.
  """
  if decode_len < 1:
    raise UserError(f"decode_len={decode_len} must be >= 1")
  if temperature < 0:
    raise UserError(f"temperature={temperature} must be >= 0")
  if not 0.0 < top_p <= 1.0:
    raise UserError(f"top_p={top_p} must be in (0, 1]")
  greedy = temperature == 0.0
  if rng is None:
    rng = jax.random.PRNGKey(0)
  b = first_logits_BV.shape[0]

  def pick(logits_BV, key, done_B):
    if greedy:
      tok = jnp.argmax(logits_BV, axis=-1)
    else:
      logits_BV = filter_top_p(filter_top_k(logits_BV / temperature, top_k), top_p)
      tok = jax.random.categorical(key, logits_BV, axis=-1)
    return jnp.where(done_B, 0, tok).astype(jnp.int32)

  def cond(state):
    i, _, done_B, *_ = state
    return (i < decode_len - 1) & ~jnp.all(done_B)

  def body(state):
    i, tokens_BT, done_B, logits_BV, cache, key = state
    key, sub = jax.random.split(key)
    tok_B = pick(logits_BV, sub, done_B)
    tokens_BT = jax.lax.dynamic_update_slice(tokens_BT, tok_B[:, None], (0, i))
    done_B = done_B | (tok_B == eos_id)
    logits_BV, cache = step_fn(tok_B, cache, i)
    return i + 1, tokens_BT, done_B, logits_BV.astype(jnp.float32), cache, key

  state = (
    jnp.int32(0),
    jnp.zeros((b, decode_len), jnp.int32),
    jnp.zeros((b,), jnp.bool_),
    first_logits_BV.astype(jnp.float32),
    cache,
    rng,
  )
  i, tokens_BT, done_B, logits_BV, _, key = jax.lax.while_loop(cond, body, state)
  # The last position needs no decoder step after it, so it is picked outside the loop.
  tok_B = pick(logits_BV, jax.random.split(key)[1], done_B)
  return jax.lax.dynamic_update_slice(tokens_BT, tok_B[:, None], (0, i))


def brevity_penalty(length: Array, alpha: float) -> Array:
  """GNMT's length normalisation ((5 + length) / 6) ** alpha (Wu et al., 2016)."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def beam_search(
  step_fn: StepFn,
  first_logits_NV: Array,
  cache: Any,
  reorder_cache: Callable[[Any, Array], Any],
  *,
  beam_size: int,
  decode_len: int,
  eos_id: int,
  length_penalty: float = 0.6,
) -> tuple[Array, Array]:
  """Beam search with a length penalty; returns the best sequence per example.

  At each position the K alive beams are expanded to their 2K best continuations. A
  continuation ending in EOS is finished only if it ranks among the K best (so beam
  size 1 follows greedy decoding); the K best others stay alive. Finished sequences
  are scored `log p / brevity_penalty(length, length_penalty)`; alive ones are added as
  candidates when `decode_len` is reached. The loop stops early once no alive beam can
  beat the worst of K finished ones.

  Args:
    step_fn: the model's cached decoder step over B * K rows.
    first_logits_NV: [B * K, V] logits of position 0 (the K copies of each example are
      identical).
    cache: the decoder cache over B * K rows (beams of an example are adjacent).
    reorder_cache: `(cache, rows_N) -> cache` gathering cache rows.
    beam_size: K.
    decode_len: T.
    eos_id: end-of-sequence id.
    length_penalty: alpha of the brevity penalty (0 ranks by total log-probability).

  Returns:
    (int32 [B, T] best sequences, EOS then zeros; float32 [B] their scores).
  """
  if beam_size < 1:
    raise UserError(f"beam_size={beam_size} must be >= 1")
  if decode_len < 1:
    raise UserError(f"decode_len={decode_len} must be >= 1")
  k = beam_size
  n, v = first_logits_NV.shape
  b = n // k
  offsets_B1 = (jnp.arange(b) * k)[:, None]

  def take(x_BK, idx_BJ):
    return jnp.take_along_axis(x_BK, idx_BJ.reshape(idx_BJ.shape + (1,) * (x_BK.ndim - 2)), axis=1)

  def expand(i, alive_seq, alive_logp, fin_seq, fin_score, logits_NV):
    logp_BKV = jax.nn.log_softmax(logits_NV.astype(jnp.float32)).reshape(b, k, v)
    cand_BKV = alive_logp[:, :, None] + logp_BKV
    top_logp, top_idx = jax.lax.top_k(cand_BKV.reshape(b, k * v), 2 * k)
    beam_B2K, tok_B2K = top_idx // v, (top_idx % v).astype(jnp.int32)
    seq_B2KT = take(alive_seq, beam_B2K)
    seq_B2KT = jax.lax.dynamic_update_slice(seq_B2KT, tok_B2K[:, :, None], (0, 0, i))
    is_eos = tok_B2K == eos_id
    in_top_k = jnp.arange(2 * k)[None, :] < k
    new_fin = jnp.where(
      is_eos & in_top_k, top_logp / brevity_penalty(i + 1, length_penalty), NEG_INF
    )
    all_score = jnp.concatenate([fin_score, new_fin], axis=1)
    all_seq = jnp.concatenate([fin_seq, seq_B2KT], axis=1)
    fin_score, sel = jax.lax.top_k(all_score, k)
    fin_seq = take(all_seq, sel)
    alive_cand = jnp.where(is_eos, NEG_INF, top_logp)
    alive_logp, sel = jax.lax.top_k(alive_cand, k)
    return (
      take(seq_B2KT, sel),
      alive_logp,
      fin_seq,
      fin_score,
      take(beam_B2K, sel),
      take(tok_B2K, sel),
    )

  def cond(state):
    i, _, alive_logp, _, fin_score, *_ = state
    best_possible = alive_logp[:, 0] / brevity_penalty(jnp.int32(decode_len), length_penalty)
    can_improve = best_possible > jnp.min(fin_score, axis=1)
    return (i < decode_len - 1) & jnp.any(can_improve)

  def body(state):
    i, alive_seq, alive_logp, fin_seq, fin_score, logits_NV, cache = state
    alive_seq, alive_logp, fin_seq, fin_score, beam_BK, tok_BK = expand(
      i, alive_seq, alive_logp, fin_seq, fin_score, logits_NV
    )
    cache = reorder_cache(cache, (offsets_B1 + beam_BK).reshape(-1))
    logits_NV, cache = step_fn(tok_BK.reshape(-1), cache, i)
    return i + 1, alive_seq, alive_logp, fin_seq, fin_score, logits_NV, cache

  # Only the first copy of each example is alive at the start, so the K copies do not
  # produce K identical beams.
  alive_logp = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)[None], (b, 1))
  state = (
    jnp.int32(0),
    jnp.zeros((b, k, decode_len), jnp.int32),
    alive_logp.astype(jnp.float32),
    jnp.zeros((b, k, decode_len), jnp.int32),
    jnp.full((b, k), NEG_INF, jnp.float32),
    first_logits_NV.astype(jnp.float32),
    cache,
  )
  i, alive_seq, alive_logp, fin_seq, fin_score, logits_NV, _ = jax.lax.while_loop(cond, body, state)
  # The last expansion needs no decoder step after it; sequences still alive then have
  # reached decode_len and compete with the finished ones.
  alive_seq, alive_logp, fin_seq, fin_score, _, _ = expand(
    i, alive_seq, alive_logp, fin_seq, fin_score, logits_NV
  )
  alive_score = jnp.where(
    i == decode_len - 1,
    alive_logp / brevity_penalty(jnp.int32(decode_len), length_penalty),
    NEG_INF,
  )
  all_score = jnp.concatenate([fin_score, alive_score], axis=1)
  all_seq = jnp.concatenate([fin_seq, alive_seq], axis=1)
  best = jnp.argmax(all_score, axis=1)
  seq_BT = jnp.take_along_axis(all_seq, best[:, None, None], axis=1)[:, 0]
  return seq_BT, jnp.max(all_score, axis=1)
