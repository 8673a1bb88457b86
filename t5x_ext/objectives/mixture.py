"""`mixture_of_denoisers`: the UL2 Mixture-of-Denoisers as one SeqIO preprocessor.

Documents are batched and every step below runs on the whole batch with vectorized TF
ops (no Python and no tf.data stage per example, which is where per-example pipelines
spend their time):

1. `chunk_documents`: draw a sequence of denoisers by rate for each document (by default
   the concatenation of the batch's documents, as T5's `reduce_concat_tokens`) and cut it
   into consecutive chunks whose lengths are the drawn denoisers' planned chunk lengths
   (`planning.py`). Each chunk becomes one example, so example frequencies follow the
   rates (the number of chunks is a stopping time, so Wald's identity keeps the expected
   share of each denoiser equal to its rate).
2. `corruption.build_examples`: build every chunk's noise mask at once on a padded
   [C, L] tensor and assemble inputs/targets; then unbatch.

Randomness comes from a `seqio.map_over_dataset(num_seeds=1)` seed per batch, folded
with a fingerprint of the batch's tokens, so a fixed seed reproduces the examples and
different SeqIO shards (different documents, same seed stream) draw differently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from t5x_ext.errors import UserError
from t5x_ext.objectives import bart, bart_noise, corruption
from t5x_ext.objectives.denoisers import UL2_DENOISERS, Denoiser, normalized_rates
from t5x_ext.objectives.planning import (
  MIN_CHUNK_LENGTH,
  DenoiserPlan,
  check_denoisers,
  plan_mixture,
  usable_sentinels,
)

MODE_PREFIX_OPTIONS = ("text", "token")

# Documents processed together. Larger batches amortize TF's per-op overhead; past ~64
# the gain is small and latency grows.
DEFAULT_BATCH_SIZE = 64


def mode_prefix_tokens(
  denoisers: Sequence[Denoiser],
  *,
  vocabulary: seqio.Vocabulary | None,
  mode_prefix: str = "text",
  mode_token_ids: Mapping[str, int] | None = None,
) -> list[list[int]]:
  """Returns the token ids each denoiser puts at the start of `inputs`.

  Args:
    denoisers: the mixture.
    vocabulary: encodes text prefixes (needed for `mode_prefix="text"` and a non-empty
      mode).
    mode_prefix: "text" (encode the mode string, e.g. "[NLU]", with `vocabulary`: what
      released UL2 checkpoints expect) or "token" (one reserved id per mode).
    mode_token_ids: for "token": {mode: id}, e.g. {"[NLU]": 32000, ...}.

  Returns:
    One list of ids per denoiser (empty for mode "").

  Raises:
    ValueError: unknown `mode_prefix`, a mode without a token id, or an id outside the
      vocabulary.
  """
  if mode_prefix not in MODE_PREFIX_OPTIONS:
    raise UserError(f"mode_prefix must be one of {MODE_PREFIX_OPTIONS}, got {mode_prefix!r}.")
  out = []
  for d in denoisers:
    if not d.mode:
      out.append([])
    elif mode_prefix == "token":
      if not mode_token_ids or d.mode not in mode_token_ids:
        raise UserError(
          f"Denoiser {d.name!r}: mode {d.mode!r} has no id in mode_token_ids="
          f"{dict(mode_token_ids or {})}."
        )
      tok = int(mode_token_ids[d.mode])
      if tok < 0 or (vocabulary is not None and tok >= vocabulary.vocab_size):
        size = vocabulary.vocab_size if vocabulary is not None else "?"
        raise UserError(
          f"Denoiser {d.name!r}: mode token id {tok} for {d.mode!r} is outside the "
          f"vocabulary [0, {size})."
        )
      out.append([tok])
    else:
      if vocabulary is None:
        raise UserError(
          f"Denoiser {d.name!r}: a text mode prefix {d.mode!r} needs a vocabulary to encode it."
        )
      out.append([int(t) for t in vocabulary.encode(d.mode)])
  return out


def validate_denoisers(
  denoisers: Sequence[Denoiser],
  *,
  vocabulary: seqio.Vocabulary | None = None,
  sequence_length: Mapping[str, int | None] | None = None,
  mode_prefix: str = "text",
  mode_token_ids: Mapping[str, int] | None = None,
) -> list[DenoiserPlan] | None:
  """Checks a mixture early (tasks call it at registration) and plans it if it can.

  Args:
    denoisers: the mixture.
    vocabulary: the task's vocabulary; enables the extra-id and prefix checks.
    sequence_length: feature lengths; enables length planning (then `vocabulary` is
      required).
    mode_prefix: "text" or "token" (see `mode_prefix_tokens`).
    mode_token_ids: ids for "token" mode.

  Returns:
    The per-denoiser plans when `sequence_length` is given, else None.

  Raises:
    ValueError: naming the denoiser and the numbers: density outside (0, 1), span length
      <= 0, unknown kind/mode/split, rates not summing to a positive number, no extra ids
      for span corruption, lengths too short for a denoiser, more spans than sentinels.
  """
  check_denoisers(denoisers)
  if mode_prefix not in MODE_PREFIX_OPTIONS:
    raise UserError(f"mode_prefix must be one of {MODE_PREFIX_OPTIONS}, got {mode_prefix!r}.")
  if mode_prefix == "token" or vocabulary is not None:
    prefixes = mode_prefix_tokens(
      denoisers, vocabulary=vocabulary, mode_prefix=mode_prefix, mode_token_ids=mode_token_ids
    )
  if vocabulary is not None:
    extra = int(vocabulary.extra_ids or 0)
    reserved = [t for p in prefixes for t in p] + bart.check_vocabulary(
      denoisers, vocabulary, prefixes
    )
    sentinels = usable_sentinels(vocabulary.vocab_size, extra, reserved)
    for d in denoisers:
      if d.kind == "span" and sentinels < 1:
        raise UserError(
          f"Denoiser {d.name!r}: span corruption needs sentinel ids but the vocabulary has "
          f"{extra} extra ids ({sentinels} usable)."
        )
  if sequence_length is None:
    return None
  if vocabulary is None:
    raise ValueError("validate_denoisers: planning lengths needs the vocabulary.")
  return plan_mixture(
    denoisers, sequence_length, prefix_lengths=[len(p) for p in prefixes], max_sentinels=sentinels
  )


def _doc_fingerprint(tokens: tf.Tensor) -> tf.Tensor:
  """int64 fingerprint of a token sequence (mixes the document into the seed)."""
  return tf.bitcast(tf.fingerprint(tokens[tf.newaxis]), tf.int64)[0]


def mixture_of_denoisers(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int | None],
  output_features: Mapping[str, seqio.Feature],
  denoisers: Sequence[Denoiser] = UL2_DENOISERS,
  *,
  mode_prefix: str = "text",
  mode_token_ids: Mapping[str, int] | None = None,
  seed: int | None = None,
  concatenate_documents: bool = True,
  batch_size: int = DEFAULT_BATCH_SIZE,
  append_eos: bool = False,
  noise_record: bool = False,
) -> tf.data.Dataset:
  """SeqIO preprocessor: tokenized documents in, Mixture-of-Denoisers examples out.

  Follow it with `seqio.preprocessors.append_eos_after_trim`; every example then fits
  `sequence_length` without truncation (lengths are planned per denoiser, see
  `planning.py`). Or pass `append_eos=True` instead of that step: the same examples, with
  the EOS added to the whole batch before it is split into examples (the tasks do this;
  it saves a per-example map, about a third of the pipeline's time).

  Example (ids made up; "[NLU]" encodes to [11, 12]; `<extra_id_0>` = 8099):

    {"targets": [5, 6, 7, 8, 9, 10, 13, 14]}
    -> {"inputs": [11, 12, 5, 6, 8099, 9, 10, 13, 14], "targets": [8099, 7, 8],
        "denoiser_id": 0}

  Args:
    dataset: examples with an int `targets` feature (a whole document, any length).
      Other features are dropped.
    sequence_length: {"inputs": LI, "targets": LT}; "inputs" may be absent when every
      denoiser is a `causal_lm` without a mode (decoder-only LM).
    output_features: the task's features; `inputs` (or `targets`) vocabulary encodes the
      text mode prefix and gives the extra ids for sentinels.
    denoisers: the mixture; `denoiser_id` indexes it.
    mode_prefix: "text" (mode string encoded with the vocabulary) or "token" (one id per
      mode from `mode_token_ids`).
    mode_token_ids: {mode: id} for "token".
    seed: if set, overrides SeqIO's seed for this preprocessor (`seqio.map_seed_manager`).
      With SeqIO's `get_dataset(seed=...)`, leave it None.
    concatenate_documents: chunk the concatenation of each batch of documents (as T5's
      `reduce_concat_tokens` and the UL2 appendix do), so chunks are full length except
      at batch ends; if False, chunks never cross a document boundary and each document
      ends in a shorter chunk.
    batch_size: documents processed per vectorized step (the examples depend on it
      through which documents share a random stream and, when concatenating, where the
      stream is cut).
    append_eos: append each feature's EOS id (features with `add_eos`) in the batched
      step, giving exactly what `append_eos_after_trim` would (nothing needs trimming).
      Do not also follow it with `append_eos_after_trim`, which would add a second EOS.
    noise_record: with `bart` denoisers, add each example's noise record
      (`bart_noise.RECORD_KEYS`, empty for other kinds): for tests and the inspector.

  Returns:
    A dataset of {"inputs": int32 [n], "targets": int32 [m], "denoiser_id": int32 []}
    ("inputs" omitted when `output_features` has none; the noise record if asked for).

  Raises:
    ValueError: see `validate_denoisers`.
  """
  denoisers = tuple(denoisers)
  if sequence_length is None:
    raise UserError(
      "mixture_of_denoisers plans its chunk lengths from sequence_length, e.g. "
      "{'inputs': 512, 'targets': 512}; got None."
    )
  vocab_feature = "inputs" if "inputs" in output_features else "targets"
  vocabulary = output_features[vocab_feature].vocabulary
  plans = validate_denoisers(
    denoisers,
    vocabulary=vocabulary,
    sequence_length=sequence_length,
    mode_prefix=mode_prefix,
    mode_token_ids=mode_token_ids,
  )
  prefixes = mode_prefix_tokens(
    denoisers, vocabulary=vocabulary, mode_prefix=mode_prefix, mode_token_ids=mode_token_ids
  )
  bart_spec = bart_noise.BartSpec.build(denoisers, prefixes, vocabulary, sequence_length)
  # BART rows never reach `corruption.build_examples`; its tables see them as causal LMs.
  spec = corruption.MixtureSpec.build(
    [dataclasses.replace(d, kind="causal_lm") if d.kind == "bart" else d for d in denoisers],
    plans,
    prefixes,
    vocabulary.vocab_size,
  )
  emit_inputs = "inputs" in output_features
  eos_ids = {
    key: int(output_features[key].vocabulary.eos_id)
    for key in ("inputs", "targets")
    if append_eos and key in output_features and output_features[key].add_eos
  }

  rates = np.asarray(normalized_rates(denoisers), np.float64)
  logits = np.where(rates > 0, np.log(np.maximum(rates, 1e-30)), -1e9).astype(np.float32)
  chunk_lengths = np.asarray([p.chunk_length for p in plans], np.int32)
  min_chunk = int(chunk_lengths[rates > 0].min())

  def denoise_documents(batch: Mapping[str, Any], seed: tf.Tensor) -> dict[str, Any]:
    docs = batch["targets"]
    if not isinstance(docs, tf.RaggedTensor):  # a batch of equal-length documents
      docs = tf.RaggedTensor.from_tensor(docs)
    # The batch's tokens are mixed into its seed, so SeqIO shards, which receive the same
    # seed stream, still draw differently.
    flat = tf.cast(docs.flat_values, tf.int32)
    seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), _doc_fingerprint(flat))
    seeds = tf.random.experimental.stateless_split(seed, 2)
    if concatenate_documents:
      docs = tf.RaggedTensor.from_row_lengths(flat, tf.shape(flat, tf.int64), validate=False)
    else:
      docs = docs.with_flat_values(flat)
    chunks, ids = chunk_documents(docs, logits, chunk_lengths, min_chunk, seeds[0])
    eos = {"inputs_eos": eos_ids.get("inputs"), "targets_eos": eos_ids.get("targets")}
    if bart_spec is None:
      out = corruption.build_examples(chunks, ids, spec, seeds[1], **eos)
    else:
      others = None
      if any(d.kind != "bart" for d in denoisers):
        others = lambda c, i, s: corruption.build_examples(c, i, spec, s, **eos)  # noqa: E731
      out = bart_noise.build_examples(
        chunks, ids, bart_spec, others, seeds[1], record=noise_record, **eos
      )
    if not emit_inputs:
      out.pop("inputs")
    return out

  scope = seqio.map_seed_manager(seed) if seed is not None else contextlib.nullcontext()
  with scope:
    denoiser = seqio.map_over_dataset(denoise_documents, num_seeds=1)
    if set(dataset.element_spec) != {"targets"}:
      # Drop the other features before batching (they may not batch, and are not used).
      dataset = dataset.map(
        lambda ex: {"targets": ex["targets"]}, num_parallel_calls=tf.data.AUTOTUNE
      )
    ds = dataset.ragged_batch(batch_size)
    # Prefetch so that batches are denoised in parallel with the per-example stages
    # downstream (unbatch, append_eos_after_trim, packing).
    ds = denoiser(ds).prefetch(tf.data.AUTOTUNE).unbatch()
  return ds


def mod_preprocessor(task: Any) -> functools.partial | None:
  """A task's `functools.partial(mixture_of_denoisers, ...)` step, or None.

  Args:
    task: a SeqIO task.

  Returns:
    The first such preprocessor (its keywords are the mixture's settings), or None.
  """
  for p in getattr(task, "preprocessors", ()):
    if isinstance(p, functools.partial) and p.func is mixture_of_denoisers:
      return p
  return None


def denoisers_of(provider: Any) -> tuple | None:
  """The denoisers a task's `mixture_of_denoisers` step applies, in `decoder_denoiser_ids` order.

  For a mixture, its tasks must share one denoiser tuple (ids would collide otherwise).

  Args:
    provider: a SeqIO task or mixture.

  Returns:
    A tuple of `Denoiser`s, or None for tasks without a MoD preprocessor (and for a mixture
    whose tasks differ, with a warning).
  """
  found = set()
  for task in getattr(provider, "tasks", None) or [provider]:
    p = mod_preprocessor(task)
    found.add(tuple(p.keywords.get("denoisers", ())) if p is not None else None)
  if len(found) != 1:
    logging.warning("Tasks of %s use different denoisers: no per-denoiser losses.", provider.name)
    return None
  return found.pop() or None


def chunk_documents(
  docs: tf.RaggedTensor,
  logits: np.ndarray,
  chunk_lengths: np.ndarray,
  min_chunk: int,
  seed: tf.Tensor,
) -> tuple[tf.RaggedTensor, tf.Tensor]:
  """Cuts a batch of documents into chunks, drawing each chunk's denoiser by rate.

  Each document gets a sequence of i.i.d. denoiser draws; chunk j takes the next
  `chunk_lengths[draw_j]` tokens. Draws past the end are discarded, the last chunk may be
  shorter, and a tail under `MIN_CHUNK_LENGTH` tokens is dropped.

  Args:
    docs: int32 ragged [D, None] token documents.
    logits: float32 [K] log rates (very negative for rate 0).
    chunk_lengths: int32 [K] planned chunk length per denoiser.
    min_chunk: the shortest chunk length among denoisers with a positive rate.
    seed: stateless seed.

  Returns:
    (chunks int32 ragged [C, None] in document order, denoiser ids int32 [C]).
  """
  doc_lens = tf.cast(docs.row_lengths(), tf.int32)
  num_docs = tf.size(doc_lens)
  # Enough draws to cover the longest document even if every draw is the shortest chunk.
  n_draws = tf.reduce_max(tf.concat([doc_lens, [0]], 0)) // min_chunk + 1
  logits_DK = tf.tile(tf.constant(logits)[tf.newaxis], [num_docs, 1])
  ids = tf.cast(tf.random.stateless_categorical(logits_DK, n_draws, seed), tf.int32)
  lengths = tf.gather(tf.constant(chunk_lengths), ids)
  ends = tf.cumsum(lengths, axis=1)
  starts = ends - lengths
  lengths = tf.minimum(ends, doc_lens[:, tf.newaxis]) - starts
  # Kept chunks of a document are a prefix of its draws, covering a prefix of its tokens.
  keep = lengths >= MIN_CHUNK_LENGTH
  covered = tf.reduce_sum(tf.where(keep, lengths, 0), axis=1)
  # The only uncovered token a document can have is its last one (a dropped 1-token tail).
  flat = docs.flat_values
  tail = tf.boolean_mask(tf.cast(docs.row_limits(), tf.int32) - 1, covered < doc_lens)

  def drop_tails():
    dropped = tf.scatter_nd(
      tail[:, tf.newaxis], tf.ones_like(tail, tf.bool), tf.shape(flat, out_type=tf.int32)
    )
    return tf.boolean_mask(flat, ~dropped)

  # Usually nothing is dropped (always one document when concatenating): skip the copy.
  values = tf.cond(tf.size(tail) > 0, drop_tails, lambda: flat)
  chunks = tf.RaggedTensor.from_row_lengths(values, tf.boolean_mask(lengths, keep), validate=False)
  return chunks, tf.boolean_mask(ids, keep)


def bart_denoise(
  dataset: Any,
  sequence_length: Any,
  output_features: Any,
  noise: bart.BartNoise = bart.BART_LARGE[0].bart,
  *,
  mode: str = "",
  seed: int | None = None,
  append_eos: bool = False,
  noise_record: bool = False,
) -> Any:
  """SeqIO preprocessor: tokenized documents in, BART examples out (one BART denoiser).

  The same as `mixture_of_denoisers(dataset, sequence_length, output_features,
  (Denoiser("bart", "bart", mode=mode, bart=noise),), ...)`; follow it with
  `seqio.preprocessors.append_eos_after_trim` or pass `append_eos=True`. Random draws come
  from SeqIO's seed (`seqio.map_over_dataset(num_seeds=1)`) or `seed`.

  Example (text infilling + sentence permutation; ids made up, 8000 = the mask):

    {"targets": [5, 6, 7, 8, 9, 10, 11, 12]}   # "a b c. d e f g h." (two sentences)
    -> {"inputs": [8, 8000, 12, 5, 6, 7], "targets": [5, 6, 7, 8, 9, 10, 11, 12],
        "denoiser_id": 0}

  Args:
    dataset: examples with an int `targets` feature (a whole document).
    sequence_length: {"inputs": LI, "targets": LT}.
    output_features: the task's features (their vocabulary gives the mask and word tables).
    noise: the settings (default: the released BART-large ones).
    mode: a mode prefix for `inputs` ("" for none).
    seed: overrides SeqIO's seed for this preprocessor.
    append_eos: add EOS to both features in the batched step.
    noise_record: add the noise record (`bart_noise.RECORD_KEYS`).

  Returns:
    A dataset of {"inputs", "targets", "denoiser_id"} (+ the record).
  """
  return mixture_of_denoisers(
    dataset,
    sequence_length,
    output_features,
    (Denoiser("bart", "bart", mode=mode, bart=noise),),
    seed=seed,
    append_eos=append_eos,
    noise_record=noise_record,
  )
