"""The suite's data side: fixed per-family examples, prefix swapping, and numpy batches.

Imports TensorFlow and SeqIO; the suite imports this module only when it reads data.

The mode-prefix matrix needs the SAME examples under every prefix. So each family's examples
are generated once, without any prefix (`tasks.evaluation.register_family_task`), with a fixed
seed and with an inputs budget shortened by the longest prefix, and then every column puts its
prefix ids in front:

  generated:      inputs [a <extra_id_0> d EOS]            targets [<extra_id_0> b c EOS]
  "[NLU]" column: inputs [[NLU] a <extra_id_0> d EOS]      targets unchanged
  "none" column:  inputs [a <extra_id_0> d EOS]            targets unchanged

The matching column is what the model saw in pretraining (same prefix, same denoiser), with
chunks a few tokens shorter than the pretraining task plans for the full inputs length.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from t5x_ext import objectives
from t5x_ext.data import feature_converters
from t5x_ext.training import hosts


def prefix_ids(corpus: str, modes: Sequence[str]) -> dict[str, list[int]]:
  """The ids each mode prefix has in a corpus's pretraining tasks ("" -> []).

  Args:
    corpus: the corpus prefix ("pydocs", ...).
    modes: mode strings.

  Returns:
    Mode -> ids, encoded as `<corpus>`'s tasks encode them (text or reserved tokens).
  """
  from tasks import evaluation as eval_tasks

  base = eval_tasks.corpus_task(corpus)
  settings = eval_tasks.mode_prefix_settings(base)
  vocab = base.output_features["targets"].vocabulary
  ids = objectives.mode_prefix_tokens(
    [objectives.Denoiser(f"prefix{i}", "causal_lm", mode=m) for i, m in enumerate(modes)],
    vocabulary=vocab,
    **settings,
  )
  return {m: list(x) for m, x in zip(modes, ids)}


def fitting_denoisers(
  denoisers: Sequence[objectives.Denoiser], vocabulary, lengths: Mapping[str, int]
) -> tuple[objectives.Denoiser, ...]:
  """The denoisers whose planned chunks fit `lengths`; the others are skipped with a warning.

  UL2's X(mu=64, r=0.15) needs ~512 input positions; a suite run at shorter lengths still
  reports the X family from its other denoisers.

  Args:
    denoisers: candidates.
    vocabulary: the task's vocabulary.
    lengths: the lengths the examples are generated for.

  Returns:
    Those that fit, in order.
  """
  out = []
  for d in denoisers:
    try:
      objectives.validate_denoisers((d,), vocabulary=vocabulary, sequence_length=dict(lengths))
      out.append(d)
    except ValueError as e:
      logging.warning("Evaluation suite: skipping denoiser %s: %s", d.name, e)
  return tuple(out)


def family_examples(
  corpus: str,
  family: str,
  task_feature_lengths: Mapping[str, int],
  *,
  num_examples: int,
  seed: int = 0,
  split: str = "validation",
  reserve: int = 0,
  denoiser_names: Sequence[str] = (),
) -> list[dict]:
  """Generates one family's examples, without mode prefix, once and deterministically.

  Args:
    corpus: the corpus prefix.
    family: "R", "X" or "S".
    task_feature_lengths: the lengths the model is evaluated at.
    num_examples: at most this many examples (fewer when the split runs out).
    seed: seed of the denoisers' random draws.
    split: the split of the corpus.
    reserve: input positions kept free for the longest prefix.
    denoiser_names: the names `denoiser_id` indexes (default: the family's denoisers); the
      examples' ids are rewritten into this list.

  Returns:
    Dicts with int32 numpy `inputs`, `targets` (EOS included) and int `denoiser_id`.
  """
  from tasks import evaluation as eval_tasks

  base = eval_tasks.corpus_task(corpus)
  vocab = base.output_features["targets"].vocabulary
  lengths = dict(task_feature_lengths)
  lengths["inputs"] = int(lengths["inputs"]) - int(reserve)
  chosen = fitting_denoisers(eval_tasks.family_denoisers(family), vocab, lengths)
  if not chosen:
    logging.warning("Evaluation suite: no %s denoiser fits %s; family skipped.", family, lengths)
    return []
  name = eval_tasks.register_family_task(corpus, family, denoisers=chosen)
  from t5x_ext.data.providers import get_provider

  task = get_provider(name)
  if split not in task.splits:
    split = "train"
  ds = task.get_dataset(lengths, split=split, shuffle=False, seed=seed, num_epochs=1)
  names = list(denoiser_names) or [d.name for d in chosen]
  out = []
  for ex in ds.take(num_examples).as_numpy_iterator():
    out.append(
      {
        "inputs": np.asarray(ex["inputs"], np.int32),
        "targets": np.asarray(ex["targets"], np.int32),
        "denoiser_id": names.index(chosen[int(ex["denoiser_id"])].name),
      }
    )
  return out


def with_prefix(examples: Sequence[Mapping], ids: Sequence[int]) -> list[dict]:
  """The same examples with `ids` in front of `inputs` (targets untouched).

  Args:
    examples: from `family_examples`.
    ids: prefix ids ([] for none).

  Returns:
    New dicts.
  """
  head = np.asarray(list(ids), np.int32)
  return [{**ex, "inputs": np.concatenate([head, ex["inputs"]])} for ex in examples]


def to_batches(
  examples: Sequence[Mapping],
  task_feature_lengths: Mapping[str, int],
  *,
  feature_converter_name: str,
  batch_size: int,
  num_batches: int | None = None,
) -> list[dict[str, np.ndarray]]:
  """Converts examples to the model's unpacked batches (rows in example order).

  Args:
    examples: dicts with `inputs`, `targets` and optionally `denoiser_id`.
    task_feature_lengths: lengths; longer examples are an error, never truncated.
    feature_converter_name: the model's converter.
    batch_size: rows per batch; the last batch is padded with all-zero rows.
    num_batches: pad with all-zero batches up to this many (multi-host: every process runs
      the same number of steps).

  Returns:
    A list of numpy batches (with `decoder_denoiser_ids`).

  Raises:
    ValueError: an example does not fit the lengths.
  """
  lengths = {k: int(v) for k, v in task_feature_lengths.items()}
  for i, ex in enumerate(examples):
    for k in ("inputs", "targets"):
      if k in lengths and len(ex[k]) > lengths[k]:
        raise ValueError(f"example {i}: {k} has {len(ex[k])} tokens > length {lengths[k]}")
  converter = feature_converters.get_feature_converter(feature_converter_name, pack=False)
  spec = {
    "inputs": tf.TensorSpec([None], tf.int32),
    "targets": tf.TensorSpec([None], tf.int32),
    "denoiser_id": tf.TensorSpec([], tf.int32),
  }

  def gen():
    for ex in examples:
      yield {
        "inputs": ex["inputs"],
        "targets": ex["targets"],
        "denoiser_id": np.int32(ex.get("denoiser_id", 0)),
      }

  ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
  rows = list(converter(ds, lengths).as_numpy_iterator())
  batches = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start : start + batch_size]
    batches.append(_pad({k: np.stack([r[k] for r in chunk]) for k in chunk[0]}, batch_size))
  if num_batches is not None and batches:
    zeros = hosts.zero_batch(batches[0])
    batches += [zeros] * (num_batches - len(batches))
  return batches


def _pad(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  n = len(next(iter(batch.values())))
  if n == batch_size:
    return batch
  return {
    k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)])
    for k, v in batch.items()
  }
