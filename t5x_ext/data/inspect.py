"""The data inspector: decoded examples and per-denoiser statistics of a SeqIO task.

`python -m t5x_ext.data inspect --task pydocs_ul2_mod_v1 --n 4` prints

* a few examples, decoded, with the mode prefix and the sentinels marked: sentinel k shows
  as `⟦k⟧` in both inputs and targets, so each corrupted span can be matched to its text;
* per denoiser, over `--stats_examples` examples: share of examples, measured noise density
  (span: noise tokens / text tokens; prefix LM: target tokens / text tokens; causal LM: 1),
  mean noise-span length, mean and max input/target lengths (EOS included);
* padding and packing efficiency through the feature converter: the share of non-padding
  tokens per row without packing and with packing, and examples per packed row.

Library code: no gin here (`__main__.py` parses gin).
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

import numpy as np
import seqio

from t5x_ext import objectives
from t5x_ext.data import display, feature_converters
from t5x_ext.data.display import sentinel_index  # the one definition (T5: top ids, descending)


@dataclasses.dataclass
class _Acc:
  count: int = 0
  in_len: list = dataclasses.field(default_factory=list)
  tgt_len: list = dataclasses.field(default_factory=list)
  noise: int = 0
  text: int = 0
  spans: int = 0


def render(ids: Sequence[int], vocabulary: seqio.Vocabulary, mask_id: int | None = None) -> str:
  """Decodes ids to text, showing sentinels as `⟦k⟧`, BART's mask as `⟦M⟧`, EOS as `</s>`.

  Args:
    ids: token ids (padding 0 is dropped).
    vocabulary: the vocabulary.
    mask_id: BART's mask token, if the example is a BART one.

  Returns:
    The text.
  """
  parts, run = [], []

  def flush():
    if run:
      parts.append(vocabulary.decode(list(run)))
      run.clear()

  for t in ids:
    t = int(t)
    if t == 0:
      continue
    k = sentinel_index(t, vocabulary)
    if t == mask_id:
      flush()
      parts.append("⟦M⟧")
    elif k is not None or t == vocabulary.eos_id:
      flush()
      parts.append(f"⟦{k}⟧" if k is not None else "</s>")
    else:
      run.append(t)
  flush()
  return " ".join(p for p in parts if p)


def _bart_summary(ex) -> str:
  """One line on what BART's noise did to an example (from its noise record)."""
  order, fate, src = ex["noise_order"], ex["noise_fate"], ex["noise_source"]
  moved = int(np.sum(np.diff(order) != 1)) if len(order) > 1 else 0
  return (
    f"{int(np.sum(fate == 1))} masks, {int(np.sum(fate == 2))} random tokens, "
    f"{int(np.sum(fate == 3))} tokens deleted, {int(np.sum(src < 0))} inserted, "
    f"{moved} sentence jumps (permutation), rotated by {int(ex['noise_rotation'])}"
  )


def _prefixes(denoisers, vocabulary) -> list[list[int]]:
  try:
    return objectives.mode_prefix_tokens(denoisers, vocabulary=vocabulary)
  except ValueError:  # e.g. token-mode tasks: fall back to no prefix accounting
    return [[] for _ in denoisers]


def _measure(ex, d, prefix_len: int, vocabulary, acc: _Acc) -> None:
  inputs = [int(t) for t in ex.get("inputs", [])]
  targets = [int(t) for t in ex["targets"]]
  acc.count += 1
  acc.in_len.append(len(inputs))
  acc.tgt_len.append(len(targets))
  eos = vocabulary.eos_id

  def body(seq):
    return [t for t in seq if t != eos]

  in_body, tgt_body = body(inputs)[prefix_len:], body(targets)
  if d is None or d.kind == "causal_lm":
    acc.noise += len(tgt_body)
    acc.text += len(tgt_body) + len(in_body)
    return
  if d.kind == "prefix_lm":
    acc.noise += len(tgt_body)
    acc.text += len(tgt_body) + len(in_body)
    return
  if d.kind == "bart":
    # Text hidden under masks or deleted: target tokens not visible in the inputs (random
    # replacements count as visible); "spans" are the masks.
    (mask_id,) = objectives.bart.mask_ids([d], vocabulary)
    masks = sum(t == mask_id for t in in_body)
    acc.noise += max(len(tgt_body) - (len(in_body) - masks), 0)
    acc.text += len(tgt_body)
    acc.spans += masks
    return
  in_sent = sum(sentinel_index(t, vocabulary) is not None for t in in_body)
  tgt_sent = sum(sentinel_index(t, vocabulary) is not None for t in tgt_body)
  noise = len(tgt_body) - tgt_sent
  acc.noise += noise
  acc.text += noise + len(in_body) - in_sent
  acc.spans += tgt_sent


def denoiser_statistics(
  task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  split: str = "train",
  num_examples: int = 1000,
  seed: int = 0,
) -> list[dict]:
  """Measures each denoiser of a task over `num_examples` examples.

  Args:
    task_name: a registered task (MoD tasks are split per denoiser; others are one row).
    task_feature_lengths: feature lengths.
    split: dataset split.
    num_examples: examples to measure.
    seed: the task's seed.

  Returns:
    One dict per denoiser: `name, mode, spec, examples, share, spec_share, noise_density,
    spec_noise_density, mean_span_length, spec_mean_span_length, inputs_mean, inputs_max,
    targets_mean, targets_max`.
  """
  import tasks  # noqa: F401 - registers the project's tasks
  from t5x_ext.data.providers import denoisers_of

  task = seqio.get_mixture_or_task(task_name)
  vocabulary = task.output_features["targets"].vocabulary
  denoisers = denoisers_of(task) if isinstance(task, seqio.Task) else None
  prefixes = _prefixes(denoisers, vocabulary) if denoisers else [[]]
  accs = collections.defaultdict(_Acc)
  # Repeat: a small split (the embedded corpus) has fewer documents than the sample asks for;
  # each pass draws new corruptions.
  ds = task.get_dataset(
    task_feature_lengths, split=split, shuffle=False, seed=seed, num_epochs=None
  )
  total = 0
  for ex in ds.take(num_examples).as_numpy_iterator():
    k = int(ex.get("denoiser_id", 0)) if denoisers else 0
    d = denoisers[k] if denoisers else None
    _measure(ex, d, len(prefixes[k]), vocabulary, accs[k])
    total += 1
  rates = objectives.normalized_rates(denoisers) if denoisers else [1.0]
  rows = []
  for k in sorted(accs):
    a = accs[k]
    d = denoisers[k] if denoisers else None
    spec_density = None
    if d is not None:
      spec_density = 1.0 if d.kind == "causal_lm" else d.noise_density
      if d.kind == "bart":
        spec_density = d.bart.mask_ratio  # of words; measured in tokens
      if d.kind == "prefix_lm" and d.prefix_split == "uniform":
        spec_density = 0.5
    rows.append(
      {
        "name": d.name if d else task_name,
        "mode": d.mode if d else "",
        "spec": d.describe() if d else "(no denoiser)",
        "examples": a.count,
        "share": a.count / max(total, 1),
        "spec_share": rates[k],
        "noise_density": a.noise / a.text if a.text else 0.0,
        "spec_noise_density": spec_density,
        "mean_span_length": a.noise / a.spans if a.spans else None,
        "spec_mean_span_length": d.mean_span_length if d is not None and d.kind == "span" else None,
        "inputs_mean": float(np.mean(a.in_len)),
        "inputs_max": int(np.max(a.in_len)),
        "targets_mean": float(np.mean(a.tgt_len)),
        "targets_max": int(np.max(a.tgt_len)),
      }
    )
  return rows


def packing_statistics(
  task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  feature_converter_name: str = "EncDecFeatureConverter",
  split: str = "train",
  num_examples: int = 1000,
  seed: int = 0,
) -> dict:
  """Padding and packing efficiency of a task through a feature converter.

  Args:
    task_name: a registered task or mixture.
    task_feature_lengths: feature lengths.
    feature_converter_name: as in `t5x_ext.data.get_batches`.
    split: dataset split.
    num_examples: examples to convert.
    seed: the task's seed.

  Returns:
    `{"unpacked": {...}, "packed": {...}}`, each with `rows` and, per model token feature,
    the share of non-padding tokens (`<feature>_fill`); packed also has `examples_per_row`.
  """
  provider = seqio.get_mixture_or_task(task_name)
  out = {}
  for pack in (False, True):
    ds = provider.get_dataset(
      task_feature_lengths, split=split, shuffle=False, seed=seed, num_epochs=None
    )
    ds = ds.take(num_examples)
    conv = feature_converters.get_feature_converter(feature_converter_name, pack=pack)
    rows, fill, segs = 0, collections.Counter(), 0
    for row in conv(ds, task_feature_lengths).as_numpy_iterator():
      rows += 1
      for key in ("encoder_input_tokens", "decoder_target_tokens"):
        if key in row:
          fill[key] += float(np.mean(row[key] != 0))
      if pack:
        segs += int(row["decoder_segment_ids"].max())
    stats = {"rows": rows}
    for key, v in fill.items():
      stats[f"{key}_fill"] = v / max(rows, 1)
    if pack:
      stats["examples_per_row"] = segs / max(rows, 1)
    out["packed" if pack else "unpacked"] = stats
  return out


def _fmt(x, spec=None, pct=False):
  if x is None:
    return "-"
  s = f"{x:.3f}" if not pct else f"{100 * x:.1f}%"
  if spec is not None:
    s += f" (spec {spec:g})"
  return s


def inspect(
  task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  n: int = 4,
  split: str = "train",
  feature_converter_name: str = "EncDecFeatureConverter",
  stats_examples: int = 1000,
  seed: int = 0,
  out: TextIO | None = None,
) -> dict:
  """Prints decoded examples and statistics of a task; returns the statistics.

  Args:
    task_name: a registered task (or mixture: examples and packing only).
    task_feature_lengths: feature lengths, e.g. {"inputs": 512, "targets": 512}.
    n: examples to print.
    split: dataset split.
    feature_converter_name: converter used for the packing statistics.
    stats_examples: examples measured for the statistics (0 to skip them).
    seed: the task's seed.
    out: where to print (default: `sys.stdout` at call time).

  Returns:
    `{"denoisers": [...], "packing": {...}}` (see `denoiser_statistics`,
    `packing_statistics`).
  """
  import tasks  # noqa: F401 - registers the project's tasks
  from t5x_ext.data.providers import denoisers_of

  provider = seqio.get_mixture_or_task(task_name)
  vocabulary = provider.output_features["targets"].vocabulary
  denoisers = denoisers_of(provider) if isinstance(provider, seqio.Task) else None
  out = out or sys.stdout
  p = lambda *a: print(*a, file=out)  # noqa: E731
  p(f"task {task_name}  split={split}  lengths={dict(task_feature_lengths)}")
  p(
    f"vocabulary: {vocabulary.vocab_size} ids, {vocabulary.extra_ids} extra ids; sentinel k shown as ⟦k⟧"
  )
  if denoisers:
    for k, d in enumerate(denoisers):
      p(f"  denoiser {k}: {d.describe()}")
  p("")
  shown = provider
  if denoisers and any(d.kind == "bart" for d in denoisers):
    shown = display.with_noise_record(provider)  # BART examples say what the noise did
  ds = shown.get_dataset(task_feature_lengths, split=split, shuffle=False, seed=seed)
  for i, ex in enumerate(ds.take(n).as_numpy_iterator()):
    head = f"--- example {i}"
    mask_id = None
    if denoisers and "denoiser_id" in ex:
      d = denoisers[int(ex["denoiser_id"])]
      head += f"  denoiser={d.name}  mode={d.mode or '(none)'}"
      if d.kind == "bart":
        (mask_id,) = objectives.bart.mask_ids([d], vocabulary)
    p(head)
    if "inputs" in ex:
      p(f"  inputs  ({len(ex['inputs'])}): {render(ex['inputs'], vocabulary, mask_id)}")
    p(f"  targets ({len(ex['targets'])}): {render(ex['targets'], vocabulary)}")
    if mask_id is not None and len(ex.get("noise_order", [])):
      p(f"  noise: {_bart_summary(ex)}")
  result = {"denoisers": [], "packing": {}}
  if stats_examples <= 0:
    return result
  if isinstance(provider, seqio.Task):
    rows = denoiser_statistics(
      task_name, task_feature_lengths, split=split, num_examples=stats_examples, seed=seed
    )
    result["denoisers"] = rows
    p(f"\nper-denoiser statistics over {sum(r['examples'] for r in rows)} examples")
    for r in rows:
      p(
        f"  {r['name']:<16} mode={r['mode'] or '-':<6} share={_fmt(r['share'], pct=True)} "
        f"(spec {_fmt(r['spec_share'], pct=True)})"
      )
      p(
        f"    noise density {_fmt(r['noise_density'], r['spec_noise_density'])}  "
        f"mean span {_fmt(r['mean_span_length'], r['spec_mean_span_length'])}"
      )
      p(
        f"    inputs mean {r['inputs_mean']:.1f} max {r['inputs_max']}  "
        f"targets mean {r['targets_mean']:.1f} max {r['targets_max']}"
      )
  packing = packing_statistics(
    task_name,
    task_feature_lengths,
    feature_converter_name=feature_converter_name,
    split=split,
    num_examples=stats_examples,
    seed=seed,
  )
  result["packing"] = packing
  p(f"\npadding/packing through {feature_converter_name}")
  for mode, st in packing.items():
    fills = "  ".join(
      f"{k.removesuffix('_fill')} {_fmt(v, pct=True)}" for k, v in st.items() if k.endswith("_fill")
    )
    extra = f"  examples/row {st['examples_per_row']:.2f}" if "examples_per_row" in st else ""
    p(f"  {mode:<8} rows {st['rows']}  non-padding: {fills}{extra}")
  return result
