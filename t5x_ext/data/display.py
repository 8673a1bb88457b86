"""HTML views of Mixture-of-Denoisers examples for notebooks (inputs, targets, predictions).

Each example is shown as coloured text: the mode prefix as a badge in its mode's colour,
sentinel `<extra_id_k>` as a chip in colour k in both the inputs and the targets, and in the
targets the corrupted span that follows sentinel k shaded with the same colour, so a span can
be matched to the gap it fills. Prefix-LM (S-denoiser) and causal-LM targets are shaded as a
continuation. EOS shows as `</s>`.

The functions return `Html`, a `str` with `_repr_html_`, so a notebook displays the value of a
cell directly and tests can inspect the markup without IPython.

    from t5x_ext.data import display
    display.task_examples_html("pydocs_ul2_mod_v1", {"inputs": 512, "targets": 192})

Library code: no gin, no JAX.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from t5x_ext.modes import MODE_NLG, MODE_NLU, MODE_S2S

# Mode badge colours (text on white): matplotlib's tab10 blue/green/red, so the loss plots
# in the notebooks can use the same colour per mode.
MODE_COLOURS = {MODE_NLU: "#1f77b4", MODE_NLG: "#2ca02c", MODE_S2S: "#d62728", "": "#7f7f7f"}
# Light backgrounds for sentinel k (cycled): readable under black text.
SPAN_COLOURS = (
  "#ffd8a8",
  "#b2f2bb",
  "#a5d8ff",
  "#fcc2d7",
  "#d0bfff",
  "#ffec99",
  "#99e9f2",
  "#e9ecef",
)
CONTINUATION_COLOUR = "#ffe3e3"
_STYLE = (
  "font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; "
  "line-height: 1.7; white-space: pre-wrap; word-break: break-word"
)


class Html(str):
  """A string of HTML that Jupyter renders (it has `_repr_html_`)."""

  def _repr_html_(self) -> str:
    """Returns the markup for Jupyter.

    Returns:
      The string itself.
    """
    return str(self)


def sentinel_index(token: int, vocabulary: Any) -> int | None:
  """The k of `<extra_id_k>` for a sentinel id (T5: the top ids, descending), else None.

  Args:
    token: a token id.
    vocabulary: a `seqio.Vocabulary` (uses `vocab_size` and `extra_ids`).

  Returns:
    k, or None for ordinary ids.
  """
  extra = int(getattr(vocabulary, "extra_ids", 0) or 0)
  top = int(vocabulary.vocab_size) - 1
  if extra and top - extra < int(token) <= top:
    return top - int(token)
  return None


def segments(ids: Sequence[int], vocabulary: Any, *, prefix_len: int = 0) -> list[tuple]:
  """Splits token ids into display segments.

  Example (sentinel 0 = id 8099, EOS = 1, prefix_len 2):
    [11, 12, 40, 8099, 41, 1] -> [("mode", "[NLU]"), ("text", "the"), ("sentinel", 0),
    ("text", "cat"), ("eos",)]

  Args:
    ids: token ids; padding (0) is dropped.
    vocabulary: decodes runs of ordinary ids.
    prefix_len: the first `prefix_len` ids are the mode prefix.

  Returns:
    A list of `("mode", text)`, `("text", text)`, `("sentinel", k)` and `("eos",)` tuples.
  """
  ids = [int(t) for t in np.asarray(ids).reshape(-1).tolist() if int(t) != 0]
  out: list[tuple] = []
  if prefix_len:
    out.append(("mode", vocabulary.decode(ids[:prefix_len])))
    ids = ids[prefix_len:]
  eos = int(getattr(vocabulary, "eos_id", 1))
  run: list[int] = []

  def flush():
    if run:
      text = vocabulary.decode(list(run))
      if text:
        out.append(("text", text))
      run.clear()

  for t in ids:
    k = sentinel_index(t, vocabulary)
    if k is not None:
      flush()
      out.append(("sentinel", k))
    elif t == eos:
      flush()
      out.append(("eos",))
    else:
      run.append(t)
  flush()
  return out


def _badge(text: str, colour: str) -> str:
  return (
    f'<span style="background:{colour}; color:white; border-radius:3px; padding:0 4px; '
    f'font-weight:bold">{html.escape(text)}</span>'
  )


def _chip(k: int) -> str:
  colour = SPAN_COLOURS[k % len(SPAN_COLOURS)]
  return (
    f'<span title="&lt;extra_id_{k}&gt;" style="background:{colour}; border:1px solid #555; '
    f'border-radius:3px; padding:0 3px; font-weight:bold">&#10214;{k}&#10215;</span>'
  )


def _shade(text: str, colour: str) -> str:
  return f'<span style="background:{colour}">{html.escape(text)}</span>'


def tokens_html(
  ids: Sequence[int],
  vocabulary: Any,
  *,
  prefix_len: int = 0,
  shade_spans: bool = False,
  continuation: bool = False,
) -> str:
  """Renders token ids as coloured HTML (no surrounding block).

  Args:
    ids: token ids.
    vocabulary: the task's vocabulary.
    prefix_len: leading ids that form the mode prefix (shown as a badge).
    shade_spans: shade the text after sentinel k with colour k (targets of span denoisers
      and predictions).
    continuation: shade all text as a continuation (targets without sentinels).

  Returns:
    HTML markup.
  """
  parts, current = [], None
  for seg in segments(ids, vocabulary, prefix_len=prefix_len):
    kind = seg[0]
    if kind == "mode":
      parts.append(_badge(seg[1], MODE_COLOURS.get(seg[1], MODE_COLOURS[""])))
    elif kind == "sentinel":
      current = seg[1]
      parts.append(_chip(seg[1]))
    elif kind == "eos":
      parts.append('<span style="color:#868e96">&lt;/s&gt;</span>')
    elif shade_spans and current is not None:
      parts.append(_shade(seg[1], SPAN_COLOURS[current % len(SPAN_COLOURS)]))
    elif continuation:
      parts.append(_shade(seg[1], CONTINUATION_COLOUR))
    else:
      parts.append(html.escape(seg[1]))
  return " ".join(parts)


def _has_sentinel(ids: Sequence[int], vocabulary: Any) -> bool:
  return any(sentinel_index(t, vocabulary) is not None for t in np.asarray(ids).reshape(-1))


def example_html(
  inputs: Sequence[int],
  targets: Sequence[int],
  vocabulary: Any,
  *,
  prediction: Sequence[int] | None = None,
  title: str = "",
  mode: str = "",
  prefix_len: int = 0,
) -> Html:
  """One example as a block: a title line, then inputs, targets and (optional) prediction.

  Args:
    inputs: input ids (mode prefix first, if any).
    targets: target ids.
    vocabulary: the task's vocabulary.
    prediction: the model's output ids, shown shaded like the targets.
    title: heading text, e.g. the denoiser's description.
    mode: the mode, for the colour of the block's left border.
    prefix_len: number of mode-prefix ids at the start of `inputs`.

  Returns:
    `Html`.
  """
  colour = MODE_COLOURS.get(mode, MODE_COLOURS[""])
  spans = _has_sentinel(targets, vocabulary)
  rows = [
    ("inputs", tokens_html(inputs, vocabulary, prefix_len=prefix_len)),
    ("targets", tokens_html(targets, vocabulary, shade_spans=spans, continuation=not spans)),
  ]
  if prediction is not None:
    pred_spans = _has_sentinel(prediction, vocabulary)
    rows.append(
      (
        "model",
        tokens_html(prediction, vocabulary, shade_spans=pred_spans, continuation=not pred_spans),
      )
    )
  body = "".join(
    f'<tr><td style="vertical-align:top; padding-right:8px; color:#495057">{name}</td>'
    f'<td style="{_STYLE}; text-align:left">{markup}</td></tr>'
    for name, markup in rows
  )
  head = f'<div style="font-weight:bold; margin-bottom:2px">{html.escape(title)}</div>'
  return Html(
    f'<div style="border-left:4px solid {colour}; padding:4px 8px; margin:6px 0">'
    f"{head if title else ''}<table>{body}</table></div>"
  )


def legend_html() -> Html:
  """A one-line legend of the colours.

  Returns:
    `Html`.
  """
  modes = " ".join(_badge(m, c) for m, c in MODE_COLOURS.items() if m)
  return Html(
    f'<div style="{_STYLE}">mode prefix: {modes} &nbsp; sentinel k: {_chip(0)} {_chip(1)} ... '
    f"with its span in the targets {_shade('shaded the same', SPAN_COLOURS[0])} &nbsp; "
    f"prefix-LM continuation: {_shade('shaded', CONTINUATION_COLOUR)} &nbsp; BART: "
    f"{_MASK_CHIP} mask, {_shade('random or inserted', RANDOM_COLOUR)}, "
    f"{_sentence_badge(0)} sentence of the original, {_DELETED_SAMPLE}</div>"
  )


def task_examples(
  task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  per_denoiser: int = 1,
  split: str = "validation",
  seed: int = 0,
  max_scan: int = 512,
) -> list[dict]:
  """Draws examples of a Mixture-of-Denoisers task, `per_denoiser` for each denoiser.

  Args:
    task_name: a registered SeqIO task whose preprocessors include
      `t5x_ext.objectives.mixture_of_denoisers` (e.g. `pydocs_ul2_mod_v1`).
    task_feature_lengths: e.g. {"inputs": 512, "targets": 192}.
    per_denoiser: examples per denoiser.
    split: dataset split.
    seed: seed of the task's random preprocessors.
    max_scan: look at most at this many examples (rare denoisers may be missing after it).

  Returns:
    Dicts `{"denoiser", "inputs", "targets", "prefix_len"}` (`denoiser` a `Denoiser`; BART
    examples also carry their noise record, `noise_*`), in the order of the task's denoisers.

  Raises:
    ValueError: naming the task when it has no Mixture-of-Denoisers preprocessor.
  """
  import seqio

  import tasks  # noqa: F401 - registers the project's tasks
  from t5x_ext import objectives

  task = seqio.get_mixture_or_task(task_name)
  denoisers = objectives.denoisers_of(task) if isinstance(task, seqio.Task) else None
  if not denoisers:
    raise ValueError(
      f"task_name = {task_name!r} has no Mixture-of-Denoisers preprocessor; use "
      "`example_html` on its examples instead."
    )
  vocabulary = task.output_features["targets"].vocabulary
  prefixes = objectives.mode_prefix_tokens(denoisers, vocabulary=vocabulary)
  if split not in task.splits:
    raise ValueError(f"split = {split!r} is not a split of {task_name!r} ({list(task.splits)}).")
  wanted = [per_denoiser] * len(denoisers)
  picked: list[list[dict]] = [[] for _ in denoisers]
  if any(d.kind == "bart" for d in denoisers):
    task = with_noise_record(task)  # BART examples are shown with what the noise did
  ds = task.get_dataset(
    dict(task_feature_lengths), split=split, shuffle=False, seed=seed, num_epochs=None
  )
  for ex in ds.take(max_scan).as_numpy_iterator():
    k = int(ex["denoiser_id"])
    if wanted[k] > 0:
      wanted[k] -= 1
      picked[k].append(
        {
          "denoiser": denoisers[k],
          "inputs": np.asarray(ex["inputs"]),
          "targets": np.asarray(ex["targets"]),
          "prefix_len": len(prefixes[k]),
          **{key: np.asarray(v) for key, v in ex.items() if key.startswith("noise_")},
        }
      )
    if not any(wanted):
      break
  return [ex for group in picked for ex in group]


def task_examples_html(
  task_name: str,
  task_feature_lengths: Mapping[str, int],
  *,
  per_denoiser: int = 1,
  split: str = "validation",
  seed: int = 0,
  max_scan: int = 512,
) -> Html:
  """Decoded examples of each denoiser of a MoD task, coloured, with a legend.

  Args:
    task_name: a registered Mixture-of-Denoisers task.
    task_feature_lengths: feature lengths.
    per_denoiser: examples per denoiser.
    split: dataset split.
    seed: seed of the task's random preprocessors.
    max_scan: look at most at this many examples.

  Returns:
    `Html`.
  """
  import seqio

  vocabulary = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
  blocks = [legend_html()]
  tables = None
  for ex in task_examples(
    task_name,
    task_feature_lengths,
    per_denoiser=per_denoiser,
    split=split,
    seed=seed,
    max_scan=max_scan,
  ):
    d = ex["denoiser"]
    if d.kind == "bart" and "noise_order" in ex:
      from t5x_ext.objectives import bart

      word_start, sentence_end = tables or bart.piece_tables(vocabulary)
      tables = (word_start, sentence_end)
      blocks.append(
        bart_example_html(
          ex,
          vocabulary,
          sentence_end=sentence_end,
          word_start=word_start,
          mask_id=bart.mask_ids([d], vocabulary)[0],
          title=d.describe(),
          mode=d.mode,
          prefix_len=ex["prefix_len"],
        )
      )
      continue
    blocks.append(
      example_html(
        ex["inputs"],
        ex["targets"],
        vocabulary,
        title=d.describe(),
        mode=d.mode,
        prefix_len=ex["prefix_len"],
      )
    )
  return Html("".join(blocks))


# BART examples: the mask chip, random tokens, inserted tokens and deletions.
MASK_COLOUR = "#343a40"
RANDOM_COLOUR = "#ffc9c9"
DELETED_COLOUR = "#adb5bd"


def with_noise_record(task: Any) -> Any:
  """An unregistered copy of a task whose Mixture-of-Denoisers step adds the noise record.

  Its BART examples then carry `noise_order`, `noise_fate`, `noise_source`,
  `noise_rotation` (see `t5x_ext.objectives.bart_noise`); the other examples are unchanged.

  Args:
    task: a `seqio.Task` registered by `tasks.pretraining`.

  Returns:
    A `seqio.Task` (the same task when it has no such step).
  """
  import functools

  import seqio

  from t5x_ext import objectives

  procs, changed = [], False
  for p in task.preprocessors:
    if isinstance(p, functools.partial) and p.func is objectives.mixture_of_denoisers:
      p = functools.partial(p.func, *p.args, **{**p.keywords, "noise_record": True})
      changed = True
    procs.append(p)
  if not changed:
    return task
  return seqio.Task(
    f"{task.name}_noise_record",
    source=task.source,
    preprocessors=procs,
    output_features=task.output_features,
  )


_MASK_CHIP = (
  f'<span title="mask" style="background:{MASK_COLOUR}; color:white; '
  'border-radius:3px; padding:0 3px; font-weight:bold">M</span>'
)
_DELETED_SAMPLE = (
  f'<span style="color:{DELETED_COLOUR}; text-decoration:line-through">deleted</span>'
)


def _runs_html(ids, styles, vocabulary) -> str:
  """Consecutive ids with the same style decoded together; style None is plain text."""
  parts, run, current = [], [], None

  def flush():
    if run:
      text = html.escape(vocabulary.decode(list(run)))
      parts.append(text if current is None else f'<span style="{current}">{text}</span>')
      run.clear()

  for t, style in zip(ids, styles):
    if style == "mask":
      flush()
      parts.append(_MASK_CHIP)
      continue
    if style != current:
      flush()
      current = style
    run.append(int(t))
  flush()
  return " ".join(p for p in parts if p)


def _sentence_badge(k: int) -> str:
  colour = SPAN_COLOURS[k % len(SPAN_COLOURS)]
  return (
    f'<span title="sentence {k + 1} of the original" style="background:{colour}; '
    f'border-radius:3px; padding:0 3px; font-size:10px">&#167;{k + 1}</span>'
  )


def bart_example_html(
  ex: Mapping[str, Any],
  vocabulary: Any,
  *,
  sentence_end: Any,
  word_start: Any,
  mask_id: int,
  title: str = "",
  mode: str = "",
  prefix_len: int = 0,
) -> Html:
  """A BART example with its noise record: sentences numbered as in the original (`§k`
  badges show the permutation), masks as `M` chips, random and inserted tokens shaded, and
  in the targets the masked text shaded and the deleted text struck through.

  Args:
    ex: an example with `inputs`, `targets` and the noise record (`with_noise_record`).
    vocabulary: the task's vocabulary.
    sentence_end: bool [V] per-id table (`objectives.bart.piece_tables`).
    word_start: bool [V] per-id table.
    mask_id: the mask token.
    title: heading text.
    mode: the mode, for the border colour.
    prefix_len: mode-prefix ids at the start of `inputs`.

  Returns:
    `Html`.
  """
  targets = np.asarray(ex["targets"])
  inputs = np.asarray(ex["inputs"])
  eos = int(getattr(vocabulary, "eos_id", 1))
  t = targets[:-1] if targets.size and targets[-1] == eos else targets
  x = inputs[prefix_len:]
  x = x[:-1] if x.size and x[-1] == eos else x
  order, fate, src = (np.asarray(ex[k]) for k in ("noise_order", "noise_fate", "noise_source"))
  ws = np.append(np.asarray(word_start)[t][1:], True)
  ends = np.asarray(sentence_end)[t] & ws
  ends[-1:] = True
  sent = np.cumsum(ends) - ends  # sentence of each original token
  fate_orig = np.zeros(len(t), int)
  fate_orig[order] = fate

  def with_badges(ids, styles, sentence):
    out, start = [], 0
    for i in range(1, len(ids) + 1):
      if i == len(ids) or sentence[i] != sentence[i - 1]:
        if sentence[start] >= 0:
          out.append(_sentence_badge(int(sentence[start])))
        out.append(_runs_html(ids[start:i], styles[start:i], vocabulary))
        start = i
    return " ".join(out)

  tgt_styles = [
    None
    if f == 0
    else f"background:{SPAN_COLOURS[0]}"
    if f in (1, 2)
    else f"color:{DELETED_COLOUR}; text-decoration:line-through"
    for f in fate_orig
  ]
  in_styles, in_sent = [], []
  for i, s in enumerate(src):
    # Inserted tokens take the sentence of the token before them.
    in_sent.append(int(sent[order[s]]) if s >= 0 else (in_sent[-1] if in_sent else -1))
    f = fate[s] if s >= 0 else (1 if int(x[i]) == mask_id else 2)
    in_styles.append(None if f == 0 else "mask" if f == 1 else f"background:{RANDOM_COLOUR}")
  prefix = ""
  if prefix_len:
    prefix = _badge(vocabulary.decode([int(i) for i in inputs[:prefix_len]]), MODE_COLOURS[mode])
  rot = int(ex.get("noise_rotation", 0))
  rows = [
    ("inputs", " ".join(p for p in (prefix, with_badges(x, in_styles, in_sent)) if p)),
    ("targets", with_badges(t, tgt_styles, sent)),
  ]
  body = "".join(
    f'<tr><td style="vertical-align:top; padding-right:8px; color:#495057">{name}</td>'
    f'<td style="{_STYLE}; text-align:left">{markup}</td></tr>'
    for name, markup in rows
  )
  note = f" · rotated by {rot}" if rot else ""
  head = f'<div style="font-weight:bold; margin-bottom:2px">{html.escape(title + note)}</div>'
  colour = MODE_COLOURS.get(mode, MODE_COLOURS[""])
  return Html(
    f'<div style="border-left:4px solid {colour}; padding:4px 8px; margin:6px 0">'
    f"{head if title or note else ''}<table>{body}</table></div>"
  )


def predictions_html(
  examples: Sequence[Mapping[str, Any]],
  predictions: Any,
  vocabulary: Any,
  *,
  prefix_lens: Mapping[str, int] | None = None,
) -> Html:
  """Examples next to the model's predictions, as returned by `run_data.sample_examples`.

  Args:
    examples: dicts with `inputs`, `targets` ids and optionally `mode`, `denoiser` names.
    predictions: int array [B, L] (rows beyond `len(examples)` are ignored).
    vocabulary: the task's vocabulary.
    prefix_lens: mode -> number of prefix ids (default: the mode's text encoded with
      `vocabulary`, as the text mode prefixes are).

  Returns:
    `Html`.
  """
  predictions = np.asarray(predictions)
  blocks = [legend_html()]
  for ex, pred in zip(examples, predictions):
    mode = str(ex.get("mode", "") or "")
    if prefix_lens is not None:
      n = int(prefix_lens.get(mode, 0))
    else:
      n = len(vocabulary.encode(mode)) if mode else 0
    title = " ".join(str(x) for x in (mode, ex.get("denoiser", "")) if x)
    blocks.append(
      example_html(
        ex["inputs"],
        ex["targets"],
        vocabulary,
        prediction=pred,
        title=title,
        mode=mode,
        prefix_len=n,
      )
    )
  return Html("".join(blocks))
