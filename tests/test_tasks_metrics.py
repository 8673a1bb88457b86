"""Tests of the fine-tuning metric functions."""

import pytest

from tasks import metrics


def test_accuracy():
  assert metrics.accuracy(["a", "b", "c", "d"], ["a", "b ", "x", "y"]) == {"accuracy": 50.0}
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.accuracy(["a", "b"], ["a"])


def test_rouge_own_implementation():
  s = metrics.rouge_scores("the cat sat on the mat", "the cat sat on the mat")
  assert s == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
  s = metrics.rouge_scores("the cat sat on the mat", "a dog")
  assert s == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
  s = metrics.rouge_scores("a b c d", "a c b d")
  # unigrams all match; bigrams: none of (a c),(c b),(b d) in ref; LCS = 3 (a b d / a c d)
  assert s["rouge1"] == pytest.approx(1.0)
  assert s["rouge2"] == pytest.approx(0.0)
  assert s["rougeL"] == pytest.approx(0.75)
  agg = metrics.rouge(["a b c d", "x y"], ["a b c d", "q"])
  assert agg["rouge1"] == pytest.approx(50.0)
