"""Throughput of the UL2 Mixture-of-Denoisers data pipeline vs. the UL2 paper's appendix.

Usage:
  python bench/data_throughput.py [--examples 20000] [--rounds 2] [--inputs 512 --targets 512]

Prints one JSON object on stdout (progress on stderr):
  {"mixture_of_denoisers": {"with_eos": {"examples_per_s", "tokens_per_s",
                                         "examples_per_cpu_s", ...},
                            "with_seqio_eos": {...}, "preprocessor_only": {...}},
   "appendix_t5": {"with_eos": {...}, "preprocessor_only": {...}} or {"skipped": "<why>"},
   "speedup": {"with_eos": {...ratios...}, "with_seqio_eos": {...},
               "preprocessor_only": {...}},
   "bart_large": {"with_eos": {...}},
   "vs_ul2_mixture": {"bart_large": {...ratios to mixture_of_denoisers with_eos...}}, ...}

Both pipelines read the same documents, already tokenized in memory with the same
vocabulary (tokenizing is the same work for both and not what is compared). Variants:
- "with_eos": the examples a task yields, EOS included. Ours as the tasks run it
  (`mixture_of_denoisers(..., append_eos=True)`, the EOS added per batch); the appendix
  pipeline followed by `seqio.preprocessors.append_eos_after_trim`.
- "with_seqio_eos": ours followed by `append_eos_after_trim` too (the plain SeqIO chain),
  compared with the same appendix run.
- "preprocessor_only": both without any EOS step.
Rounds alternate between the pipelines and the best round of each is reported. `examples_per_cpu_s` divides by the
process's CPU time instead of wall time: on a machine shared with other jobs it measures
the work each pipeline does, where wall time also measures how many threads each gets.

`bart_large` is BART's released noises (`objectives.BART_LARGE`: text infilling, sentence
permutation) through the same `mixture_of_denoisers`, as the `<corpus>_bart_v1` tasks run it.

The corpus is the embedded CPython-docs corpus of `tasks` with its vocabulary; without
`tasks` it falls back to `pydoc_data` topics and the shared 32K SentencePiece model.

The appendix pipeline follows the code in the appendix of Tay et al. 2022 (UL2): random
chunks of at most 65,536 tokens concatenated 128 at a time, then one
`t5.data.preprocessors.denoise` branch per span denoiser (chunk lengths from
`random_spans_helper`, masks from `random_spans_noise_mask`, sentinels from
`noise_span_to_unique_sentinel`), a prefix-LM branch (`random_prefix_noise_mask`, uniform
split), the mode prefix prepended per branch, and the branches mixed by rate. It needs
`pip install --no-deps t5==0.9.4` plus babel, sacrebleu, scikit-learn and rouge-score
(the `bench` extra); without them it is reported as skipped.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPM32K = REPO.parent / "shared" / "data" / "spm" / "spm32k.model"


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def load_corpus():
  """Returns (token arrays, vocabulary, description) for the benchmark corpus."""
  import numpy as np
  import seqio

  try:
    from tasks import corpus, vocab

    texts = [d["text"] for d in corpus.split_documents("train")]
    vocabulary = vocab.default_vocabulary()
    name = "tasks embedded pydocs corpus (train) + its SentencePiece vocabulary"
  except ImportError as e:  # the tasks package is not there (or broken): fall back
    log(f"tasks unavailable ({e}); falling back to pydoc_data + spm32k")
    import pydoc_data.topics

    if not SPM32K.exists():
      raise SystemExit(f"no corpus: neither `tasks` nor {SPM32K} is available") from e
    texts = list(pydoc_data.topics.topics.values())
    vocabulary = seqio.SentencePieceVocabulary(str(SPM32K), extra_ids=100)
    name = "pydoc_data.topics + spm32k"
  ids = vocabulary.tokenizer.encode(texts)  # one batched SentencePiece call
  docs = [np.asarray(x, np.int32) for x in ids if len(x) >= 2]
  return docs, vocabulary, name


def docs_dataset(docs):
  """An endless dataset of {"targets": int32 [n]} over the in-memory documents."""
  import tensorflow as tf

  ragged = tf.RaggedTensor.from_row_lengths(
    tf.concat([tf.constant(d) for d in docs], 0), [len(d) for d in docs]
  )
  return tf.data.Dataset.from_tensor_slices({"targets": ragged}).repeat()


def ours(docs, lengths, features, eos=True, seqio_eos=False):
  """The t5x_ext pipeline: mixture_of_denoisers with the EOS added in its batched step, as
  the tasks run it (`seqio_eos`: followed by seqio's `append_eos_after_trim` instead)."""
  import seqio

  from t5x_ext import objectives

  ds = objectives.mixture_of_denoisers(
    docs_dataset(docs), lengths, features, seed=0, append_eos=eos and not seqio_eos
  )
  return seqio.preprocessors.append_eos_after_trim(ds, features, lengths) if seqio_eos else ds


def ours_bart(docs, lengths, features, eos=True):
  """BART's released noises (`objectives.bart.BART_LARGE`) through the same machinery."""
  from t5x_ext import objectives

  return objectives.mixture_of_denoisers(
    docs_dataset(docs), lengths, features, objectives.BART_LARGE, seed=0, append_eos=eos
  )


def appendix(docs, lengths, features, eos=True):
  """The UL2 appendix pipeline on the `t5` package's preprocessors (see module doc)."""
  import seqio
  import tensorflow as tf
  from t5.data import preprocessors as t5p

  from t5x_ext import objectives

  vocabulary = features["inputs"].vocabulary
  denoisers = objectives.UL2_DENOISERS
  rates = objectives.normalized_rates(denoisers)

  def prepend(ds, mode):
    ids = tf.constant(vocabulary.encode(mode), tf.int32)
    return ds.map(
      lambda ex: {**ex, "inputs": tf.concat([ids, tf.cast(ex["inputs"], tf.int32)], 0)},
      num_parallel_calls=tf.data.AUTOTUNE,
    )

  branches = []
  with seqio.map_seed_manager(0):
    for d in denoisers:
      # Each branch reads its own copy of the stream (the appendix's `shard_ds=False`):
      # `shard` would make every branch read and skip 6 of 7 documents.
      ds = docs_dataset(docs)
      ds = t5p.select_random_chunk(ds, features, max_length=65536, feature_key="targets")
      ds = t5p.reduce_concat_tokens(ds, feature_key="targets", batch_size=128)
      if d.kind == "span":
        tokens_length, _ = t5p.random_spans_helper(
          inputs_length=lengths["inputs"],
          noise_density=d.noise_density,
          mean_noise_span_length=d.mean_span_length,
          extra_tokens_per_span_inputs=1,
          extra_tokens_per_span_targets=1,
        )
        ds = t5p.split_tokens(ds, max_tokens_per_segment=tokens_length)
        ds = t5p.denoise(
          ds,
          features,
          noise_density=d.noise_density,
          noise_mask_fn=functools.partial(
            t5p.random_spans_noise_mask, mean_noise_span_length=d.mean_span_length
          ),
          inputs_fn=t5p.noise_span_to_unique_sentinel,
          targets_fn=t5p.nonnoise_span_to_unique_sentinel,
        )
      else:
        ds = t5p.split_tokens(ds, max_tokens_per_segment=lengths["inputs"] - 1)
        ds = t5p.denoise(
          ds,
          features,
          noise_density=0.5,
          noise_mask_fn=t5p.random_prefix_noise_mask,
          inputs_fn=t5p.drop_nonnoise_tokens,
          targets_fn=t5p.drop_noise_tokens,
        )
      branches.append(prepend(ds, d.mode))
  ds = tf.data.Dataset.sample_from_datasets(branches, weights=rates, seed=0)
  return seqio.preprocessors.append_eos_after_trim(ds, features, lengths) if eos else ds


def measure(make, n_examples: int, warmup: int = 1000, batch: int = 1000) -> dict:
  """Runs a fresh pipeline, consumed in ragged batches of `batch` examples (as a feature
  converter or trainer would; per-example Python would dominate otherwise): `warmup`
  examples untimed, then `n_examples` timed. Reports wall-clock and CPU-time rates; the
  latter (all threads of this process) is robust to other load on the machine."""
  import numpy as np

  it = iter(make().ragged_batch(batch))
  for _ in range(max(warmup // batch, 1)):
    next(it)
  examples = tokens = 0
  wall, cpu = time.perf_counter(), time.process_time()
  while examples < n_examples:
    b = next(it)
    examples += int(b["targets"].nrows())
    tokens += int(np.size(b["inputs"].flat_values) + np.size(b["targets"].flat_values))
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return {
    "examples_per_s": examples / wall,
    "tokens_per_s": tokens / wall,
    "examples_per_cpu_s": examples / cpu,
    "tokens_per_cpu_s": tokens / cpu,
    "seconds": wall,
    "examples": examples,
    "mean_tokens_per_example": tokens / examples,
  }


def main() -> None:
  """Runs the benchmark and prints the JSON report."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=20000, help="timed examples per round")
  parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=512)
  flags = parser.parse_args()

  import seqio
  import tensorflow as tf

  docs, vocabulary, corpus_name = load_corpus()
  lengths = {"inputs": flags.inputs, "targets": flags.targets}
  features = {"inputs": seqio.Feature(vocabulary), "targets": seqio.Feature(vocabulary)}
  log(f"corpus: {corpus_name}: {len(docs)} documents, {sum(map(len, docs))} tokens")

  try:
    import t5.data.preprocessors  # noqa: F401

    have_t5, why = True, ""
  except Exception as e:  # ImportError or a broken dependency of t5
    have_t5, why = False, f"t5 not importable: {type(e).__name__}: {e}"

  pipelines = {"mixture_of_denoisers": ours, "bart_large": ours_bart}
  if have_t5:
    pipelines["appendix_t5"] = appendix
  # See the module doc for the variants and `BASELINE_OF` for what is compared with what.
  variants = {
    "mixture_of_denoisers": {
      "with_eos": {"eos": True},
      "with_seqio_eos": {"eos": True, "seqio_eos": True},
      "preprocessor_only": {"eos": False},
    },
    "appendix_t5": {"with_eos": {"eos": True}, "preprocessor_only": {"eos": False}},
    "bart_large": {"with_eos": {"eos": True}},
  }
  results = {(name, v): [] for name in pipelines for v in variants[name]}
  for r in range(flags.rounds):
    for (name, variant), runs in results.items():
      log(f"round {r + 1}/{flags.rounds}: {name} {variant}")
      kwargs = variants[name][variant]
      make = functools.partial(pipelines[name], docs, lengths, features, **kwargs)
      runs.append(measure(make, flags.examples))

  report = {
    "corpus": corpus_name,
    "documents": len(docs),
    "vocab_size": vocabulary.vocab_size,
    "sequence_length": lengths,
    "cpu_count": os.cpu_count(),
    "load_average_1min": os.getloadavg()[0],
    "tensorflow": tf.__version__,
    "rounds": flags.rounds,
  }
  for name in ("mixture_of_denoisers", "appendix_t5", "bart_large"):
    if name not in pipelines:
      report[name] = {"skipped": why}
      continue
    report[name] = {
      v: max(results[name, v], key=lambda x: x["examples_per_s"]) for v in variants[name]
    }
  if have_t5:
    report["speedup"] = speedups(report["mixture_of_denoisers"], report["appendix_t5"])
  # Each other objective against UL2's mixture, both with EOS (> 1: faster; the tokens_*
  # ratios compare per token, the examples_* ones per example).
  report["vs_ul2_mixture"] = {
    name: {
      k: report[name]["with_eos"][k] / report["mixture_of_denoisers"]["with_eos"][k]
      for k in (*RATE_KEYS, "tokens_per_cpu_s")
    }
    for name in ("bart_large",)
  }
  print(json.dumps(report, indent=2))


# Which appendix run each of ours is compared with: the appendix has no batched EOS, so its
# "with_eos" run (append_eos_after_trim) is the baseline of both of ours that end in EOS.
BASELINE_OF = {
  "with_eos": "with_eos",
  "with_seqio_eos": "with_eos",
  "preprocessor_only": "preprocessor_only",
}
RATE_KEYS = ("examples_per_s", "tokens_per_s", "examples_per_cpu_s")


def speedups(ours_runs: dict, appendix_runs: dict) -> dict:
  """Ratios of our rates to the matching appendix run's (see `BASELINE_OF`).

  Args:
    ours_runs: variant -> measured rates of the Mixture-of-Denoisers pipeline.
    appendix_runs: variant -> measured rates of the appendix pipeline.

  Returns:
    variant -> {rate key: ours / appendix}.
  """
  return {
    v: {k: run[k] / appendix_runs[BASELINE_OF[v]][k] for k in RATE_KEYS}
    for v, run in ours_runs.items()
  }


if __name__ == "__main__":
  main()
