"""Validation and length planning for denoiser mixtures (pure Python, no TensorFlow).

Planning picks, for every denoiser, the longest raw chunk that still fits the feature
lengths after `seqio.preprocessors.append_eos_after_trim` (which keeps one slot for EOS in
each feature) for *every* random draw, so nothing is ever truncated. The per-length tables
it builds are what the TensorFlow graph samples from, so the bounds proven here are the
bounds the graph obeys (T5's `random_spans_helper` solves the same problem for one
denoiser; we solve it exactly per chunk length instead of from expected values).

Per chunk length `length` (tokens of text, before the mode prefix), with `P` prefix tokens:

* span: `N = clip(round(r * length), 1, length - 1)` noise tokens in `n` spans, `n` drawn by
  stochastic rounding of `N / mu` (so the mean span length is `mu` on average even when
  `N / mu` is small) and clipped to `[1, min(N, length - N, max_sentinels)]`.
  inputs = `P + (length - N) + n`, targets = `N + n`.
* prefix_lm: `T` target tokens drawn from `[t_lo, t_hi]`; inputs = `P + length - T`,
  targets = `T`.
* causal_lm: inputs = `P`, targets = `length`.
* bart: targets = `length`; inputs = `P + x + ceil(insert_ratio * x)` with `x = length +
  zero_span_reserve` (masking never lengthens the text but for zero-length spans; see
  `bart.max_inputs`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from t5x_ext.errors import UserError
from t5x_ext.objectives import bart
from t5x_ext.objectives.denoisers import KINDS, MODES, PREFIX_SPLITS, Denoiser, normalized_rates

# Chunks shorter than this are dropped: a 1-token chunk cannot be split into an input and
# a non-empty target.
MIN_CHUNK_LENGTH = 2


@dataclasses.dataclass(frozen=True)
class DenoiserPlan:
  """What planning decided for one denoiser.

  Attributes:
    chunk_length: longest raw text chunk (tokens) this denoiser consumes.
    max_inputs_length: longest `inputs` it can emit (without EOS).
    max_targets_length: longest `targets` it can emit (without EOS).
    max_spans: most sentinels one example can use (0 unless `span`).
    sentinel_limited: True when the chunk was shortened to stay within the extra ids.
    table_a: int32 [chunk_length + 1]: span: noise tokens N(length); prefix_lm: lowest T.
    table_b: int32 [chunk_length + 1]: span: floor of the span count; prefix_lm: highest
      T.
    table_frac: float32 [chunk_length + 1]: span: probability of one more span.
  """

  chunk_length: int
  max_inputs_length: int
  max_targets_length: int
  max_spans: int
  sentinel_limited: bool
  table_a: np.ndarray
  table_b: np.ndarray
  table_frac: np.ndarray


def _round_half_up(x: float) -> int:
  return int(math.floor(x + 0.5))


def _span_params(d: Denoiser, length: int, max_sentinels: int) -> tuple[int, int, float, int]:
  """Returns (N, n_floor, p_extra, n_max) of a span denoiser for a chunk of `length` tokens."""
  n_noise = min(max(_round_half_up(d.noise_density * length), 1), length - 1)
  q = n_noise / float(d.mean_span_length)
  cap = max(1, min(n_noise, length - n_noise, max_sentinels))
  lo, frac = int(math.floor(q)), q - math.floor(q)
  if lo < 1:
    lo, frac = 1, 0.0
  if lo >= cap:
    lo, frac = cap, 0.0
  n_max = lo + (1 if frac > 0 else 0)
  return n_noise, lo, frac, n_max


def _prefix_bounds(d: Denoiser, length: int) -> tuple[int, int]:
  """Returns the (lowest, highest) target length of a prefix_lm for a chunk of `length` tokens."""
  if d.prefix_split == "uniform":
    return 1, length - 1
  if d.prefix_split == "pivot":  # targets = length - pivot, pivot in [ceil(L/10), floor(9L/10)]
    return max(1, -(-length // 10)), min(length - 1, 9 * length // 10)
  if d.prefix_split == "fixed":
    t = min(max(_round_half_up(d.noise_density * length), 1), length - 1)
    return t, t
  return 1, min(max(_round_half_up(2 * d.noise_density * length), 1), length - 1)


def _lengths(d: Denoiser, length: int, prefix_len: int, max_sentinels: int):
  """Returns (max inputs, max targets, max spans, a, b, frac) for a chunk of `length` tokens."""
  if d.kind == "span":
    n_noise, lo, frac, n_max = _span_params(d, length, max_sentinels)
    return prefix_len + (length - n_noise) + n_max, n_noise + n_max, n_max, n_noise, lo, frac
  if d.kind == "prefix_lm":
    t_lo, t_hi = _prefix_bounds(d, length)
    return prefix_len + length - t_lo, t_hi, 0, t_lo, t_hi, 0.0
  if d.kind == "bart":
    return prefix_len + bart.max_inputs(d.bart, length), length, 0, 0, 0, 0.0
  return prefix_len, length, 0, 0, 0, 0.0


def check_denoisers(denoisers: Sequence[Denoiser]) -> None:
  """Checks the settings of each denoiser that need no vocabulary or lengths.

  Args:
    denoisers: the mixture.

  Raises:
    ValueError: naming the denoiser and the offending value.
  """
  if not denoisers:
    raise UserError("A mixture needs at least one Denoiser; got none.")
  names = set()
  for i, d in enumerate(denoisers):
    if not isinstance(d, Denoiser):
      raise UserError(f"denoisers[{i}] must be a Denoiser, got {d!r}.")
    where = f"Denoiser {d.name!r} (index {i})"
    if not d.name:
      raise UserError(f"{where}: name must be non-empty.")
    if d.name in names:
      raise UserError(f"{where}: duplicate name; names must be unique in a mixture.")
    names.add(d.name)
    if d.kind not in KINDS:
      raise UserError(f"{where}: unknown kind {d.kind!r}; expected one of {KINDS}.")
    if d.mode not in MODES:
      raise UserError(f"{where}: unknown mode {d.mode!r}; expected one of {MODES}.")
    if not (math.isfinite(d.rate) and d.rate >= 0):
      raise UserError(f"{where}: rate must be a finite number >= 0, got {d.rate!r}.")
    if d.kind == "span":
      if not (math.isfinite(d.mean_span_length) and d.mean_span_length > 0):
        raise UserError(f"{where}: mean_span_length must be > 0, got {d.mean_span_length!r}.")
      if not 0 < d.noise_density < 1:
        raise UserError(f"{where}: noise_density must be in (0, 1), got {d.noise_density!r}.")
    if d.kind == "bart":
      if not isinstance(d.bart, bart.BartNoise):
        raise UserError(f"{where}: kind 'bart' needs bart=BartNoise(...), got {d.bart!r}.")
      d.bart.check(where)
    if d.kind == "prefix_lm":
      if d.prefix_split not in PREFIX_SPLITS:
        raise UserError(
          f"{where}: unknown prefix_split {d.prefix_split!r}; expected one of {PREFIX_SPLITS}."
        )
      if d.prefix_split not in ("uniform", "pivot") and not 0 < d.noise_density < 1:
        raise UserError(
          f"{where}: noise_density (mean target fraction) must be in (0, 1), got "
          f"{d.noise_density!r}."
        )
      if d.prefix_split == "paper" and d.noise_density > 0.5:
        raise UserError(
          f"{where}: prefix_split 'paper' draws the target fraction from "
          f"Uniform(0, 2 * noise_density), so noise_density must be <= 0.5, got "
          f"{d.noise_density!r}."
        )
  normalized_rates(denoisers)


def plan_denoiser(
  d: Denoiser,
  sequence_length: Mapping[str, int | None],
  *,
  prefix_length: int = 0,
  max_sentinels: int = 0,
  name_for_errors: str | None = None,
) -> DenoiserPlan:
  """Plans the longest chunk a denoiser can take so that no example is ever truncated.

  Args:
    d: the denoiser (already checked with `check_denoisers`).
    sequence_length: feature lengths, e.g. {"inputs": 512, "targets": 512}; each feature
      keeps one slot for the EOS that `append_eos_after_trim` adds. Without "inputs", only
      a `causal_lm` without a mode prefix can be planned.
    prefix_length: number of mode-prefix tokens at the start of `inputs`.
    max_sentinels: number of extra ids usable as sentinels.
    name_for_errors: how errors name the denoiser (defaults to its name).

  Returns:
    The `DenoiserPlan`.

  Raises:
    ValueError: the lengths are too short for this denoiser, or it needs sentinels the
      vocabulary does not have; the message names the denoiser and the numbers.
  """
  who = name_for_errors or f"Denoiser {d.name!r}"
  lt = sequence_length.get("targets")
  li = sequence_length.get("inputs")
  if lt is None or lt < 2:
    raise UserError(f"{who}: needs sequence_length['targets'] >= 2, got {lt!r}.")
  has_inputs = li is not None
  if not has_inputs and (d.kind != "causal_lm" or prefix_length):
    raise UserError(
      f"{who}: kind {d.kind!r} with mode {d.mode!r} needs an 'inputs' length, but "
      f"sequence_length is {dict(sequence_length)}."
    )
  if d.kind == "span" and max_sentinels < 1:
    raise UserError(
      f"{who}: span corruption needs sentinel ids, but the vocabulary has "
      f"{max_sentinels} usable extra ids."
    )
  budget_in = (li - 1) if has_inputs else 0
  budget_tgt = lt - 1

  def fits(length: int, sentinels: int) -> bool:
    ins, tgt, *_ = _lengths(d, length, prefix_length, sentinels)
    return ins <= budget_in and tgt <= budget_tgt

  def longest(sentinels: int) -> int:
    length = MIN_CHUNK_LENGTH - 1
    while fits(length + 1, sentinels):
      length += 1
    return length

  # A generous bound lets us see whether the sentinel count, not the lengths, is binding.
  unlimited = longest(10**9) if d.kind == "span" else None
  chunk = longest(max_sentinels)
  sentinel_limited = False
  if d.kind == "span":
    # Plan down until no chunk length up to `chunk` needs more spans than sentinels.
    while chunk >= MIN_CHUNK_LENGTH and _lengths(d, chunk, prefix_length, 10**9)[2] > max_sentinels:
      chunk -= 1
    sentinel_limited = chunk < unlimited
    if sentinel_limited:
      logging.info(
        "%s: chunk planned down from %d to %d tokens so that at most %d sentinels are used.",
        who,
        unlimited,
        chunk,
        max_sentinels,
      )
  if chunk < MIN_CHUNK_LENGTH:
    raise UserError(
      f"{who}: sequence_length {dict(sequence_length)} is too short: with {prefix_length} "
      f"mode-prefix tokens and one EOS slot per feature, not even a "
      f"{MIN_CHUNK_LENGTH}-token chunk fits."
    )
  if d.kind == "span":
    noise = _span_params(d, chunk, max_sentinels)[0]
    if noise < d.mean_span_length:
      need = int(math.ceil(d.mean_span_length / d.noise_density))
      reason = (
        f"only {max_sentinels} sentinel ids allow"
        if sentinel_limited
        else f"sequence_length {dict(sequence_length)} (with {prefix_length} prefix tokens) allows"
      )
      raise UserError(
        f"{who}: chunks of >= {need} tokens are needed to hold one noise span of mean "
        f"length {d.mean_span_length:g} at noise_density {d.noise_density:g}, but {reason} "
        f"at most {chunk} tokens ({noise} noise tokens)."
      )
  a = np.zeros([chunk + 1], np.int32)
  b = np.zeros([chunk + 1], np.int32)
  frac = np.zeros([chunk + 1], np.float32)
  max_in = max_tgt = max_sp = 0
  for length in range(MIN_CHUNK_LENGTH, chunk + 1):
    ins, tgt, sp, a[length], b[length], frac[length] = _lengths(
      d, length, prefix_length, max_sentinels
    )
    max_in, max_tgt, max_sp = max(max_in, ins), max(max_tgt, tgt), max(max_sp, sp)
  return DenoiserPlan(chunk, max_in, max_tgt, max_sp, sentinel_limited, a, b, frac)


def usable_sentinels(vocab_size: int, extra_ids: int, reserved_ids: Sequence[int] = ()) -> int:
  """Returns how many sentinels (`<extra_id_0>` = vocab_size - 1, descending) are free.

  Args:
    vocab_size: full vocabulary size, extra ids included.
    extra_ids: number of extra ids at the top of the vocabulary.
    reserved_ids: ids taken for other uses (mode tokens); sentinels stop above the
      highest reserved id inside the extra-id range.

  Returns:
    The number of usable sentinel ids.
  """
  n = extra_ids
  for t in reserved_ids:
    if vocab_size - extra_ids <= t < vocab_size:
      n = min(n, vocab_size - 1 - t)
  return max(n, 0)


def plan_mixture(
  denoisers: Sequence[Denoiser],
  sequence_length: Mapping[str, int | None],
  *,
  prefix_lengths: Sequence[int],
  max_sentinels: int,
) -> list[DenoiserPlan]:
  """Plans every denoiser of a mixture (see `plan_denoiser`).

  Args:
    denoisers: the mixture (checked with `check_denoisers` first).
    sequence_length: feature lengths.
    prefix_lengths: mode-prefix token count per denoiser.
    max_sentinels: usable sentinel ids.

  Returns:
    One `DenoiserPlan` per denoiser.

  Raises:
    ValueError: see `check_denoisers` and `plan_denoiser`.
  """
  check_denoisers(denoisers)
  return [
    plan_denoiser(d, sequence_length, prefix_length=p, max_sentinels=max_sentinels)
    for d, p in zip(denoisers, prefix_lengths, strict=True)
  ]
