"""SeqIO metric functions for the fine-tuning tasks: accuracy and ROUGE.

ROUGE uses the `rouge_score` package when it is installed (with the Porter stemmer, as T5
reports ROUGE); otherwise a small implementation here (lower-cased alphanumeric tokens,
F-measure of ROUGE-1/2/L) that equals the package without stemming: `rouge(...,
use_stemmer=False)` gives the same numbers either way (tests/test_tasks_metrics.py), and with
stemming they differ only where a word's stem differs from the word ("cats" vs "cat").
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """Exact-match accuracy in percent, comparing stripped strings.

  Args:
    targets: reference labels (strings after postprocessing).
    predictions: predicted labels.

  Returns:
    `{"accuracy": float}` in [0, 100].

  Raises:
    ValueError: the two lists differ in length.
  """
  if len(targets) != len(predictions):
    raise ValueError(f"accuracy: {len(targets)} targets but {len(predictions)} predictions")
  if not targets:
    return {"accuracy": 0.0}
  hits = sum(str(t).strip() == str(p).strip() for t, p in zip(targets, predictions))
  return {"accuracy": 100.0 * hits / len(targets)}


_TOKEN = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> list[str]:
  return _TOKEN.findall(str(text).lower())


def _ngrams(tokens: list[str], n: int) -> collections.Counter:
  return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _f1(overlap: int, n_ref: int, n_pred: int) -> float:
  if overlap == 0 or n_ref == 0 or n_pred == 0:
    return 0.0
  p, r = overlap / n_pred, overlap / n_ref
  return 2 * p * r / (p + r)


def _lcs(a: list[str], b: list[str]) -> int:
  prev = [0] * (len(b) + 1)
  for x in a:
    cur = [0]
    for j, y in enumerate(b):
      cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
    prev = cur
  return prev[-1]


def rouge_scores(reference: str, prediction: str) -> dict[str, float]:
  """ROUGE-1, ROUGE-2 and ROUGE-L F-measures of one pair, in [0, 1] (own implementation).

  Args:
    reference: the reference text.
    prediction: the predicted text.

  Returns:
    `{"rouge1", "rouge2", "rougeL"}`.
  """
  ref, pred = _tokens(reference), _tokens(prediction)
  out = {}
  for n in (1, 2):
    r, p = _ngrams(ref, n), _ngrams(pred, n)
    out[f"rouge{n}"] = _f1(sum((r & p).values()), sum(r.values()), sum(p.values()))
  out["rougeL"] = _f1(_lcs(ref, pred), len(ref), len(pred))
  return out


def rouge(
  targets: Sequence[str], predictions: Sequence[str], *, use_stemmer: bool = True
) -> dict[str, float]:
  """Mean ROUGE-1/2/L F-measure in percent (via `rouge_score` if installed).

  Args:
    targets: reference summaries.
    predictions: predicted summaries.
    use_stemmer: Porter-stem words of more than 3 letters (`rouge_score` only; the own
      implementation never stems).

  Returns:
    `{"rouge1", "rouge2", "rougeL"}` in [0, 100].

  Raises:
    ValueError: the two lists differ in length.
  """
  if len(targets) != len(predictions):
    raise ValueError(f"rouge: {len(targets)} targets but {len(predictions)} predictions")
  keys = ("rouge1", "rouge2", "rougeL")
  if not targets:
    return dict.fromkeys(keys, 0.0)
  try:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=use_stemmer)

    def score(t, p):
      return {k: v.fmeasure for k, v in scorer.score(t, p).items()}
  except ImportError:
    score = rouge_scores
  totals = dict.fromkeys(keys, 0.0)
  for t, p in zip(targets, predictions):
    for k, v in score(t, p).items():
      totals[k] += v
  return {k: 100.0 * v / len(targets) for k, v in totals.items()}
