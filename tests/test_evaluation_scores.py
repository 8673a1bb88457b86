"""The evaluation suite's numbers against hand computations on a tiny model: family loss ==
`model.loss_fn` on the same batches, rank classification == argmax of `score_batch`, and a
model made to prefer one label gets 100%."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evaluation_util import CONFIG, save_random_params

from t5x_ext import eval as eval_lib
from t5x_ext import objectives
from t5x_ext.evaluation import examples as ex_lib
from t5x_ext.evaluation import mode_matrix, suite
from t5x_ext.evaluation import rank_classification as rank_lib
from t5x_ext.model import models
from tasks import evaluation as eval_tasks

LENGTHS = {"inputs": 96, "targets": 48}
NAMES = [d.name for d in objectives.UL2_DENOISERS]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  model = models.EncoderDecoderModel(CONFIG)
  path = tmp_path_factory.mktemp("evalsuite") / "params"
  save_random_params(model, path)
  return model, str(path)


@pytest.fixture(scope="module")
def r_batches():
  exs = ex_lib.family_examples(
    "pydocs", "R", LENGTHS, num_examples=5, seed=0, reserve=5, denoiser_names=NAMES
  )
  ids = ex_lib.prefix_ids("pydocs", ["[NLU]"])["[NLU]"]
  return ex_lib.to_batches(
    ex_lib.with_prefix(exs, ids),
    LENGTHS,
    feature_converter_name="EncDecFeatureConverter",
    batch_size=4,
  )


def _strip(batch):
  return {k: jnp.asarray(v) for k, v in batch.items() if k != "decoder_denoiser_ids"}


def test_family_loss_equals_loss_fn_by_hand(ckpt, r_batches):
  model, path = ckpt
  trainer, params = eval_lib.load_params(model, r_batches[0], path, denoiser_names=NAMES)
  table = mode_matrix.score_table(trainer, params, {"R": {"[NLU]": r_batches}})
  got = mode_matrix.family_results(table)
  host = jax.device_get(params)
  loss_sum = tokens = correct = 0.0
  per_denoiser = np.zeros([len(NAMES), 2])
  for b in r_batches:
    _, aux = model.loss_fn(host, _strip(b), None)
    loss_sum += float(aux["loss_sum"])
    tokens += float(aux["num_tokens"])
    correct += float(aux["correct"])
    ids = b["decoder_denoiser_ids"]
    for k in range(len(NAMES)):
      m = ids == k + 1
      per_denoiser[k] += [float(np.asarray(aux["token_loss"])[m].sum()), m.sum()]
  assert len(r_batches) == 2 and tokens > 0
  assert got["family_loss/R"] == pytest.approx(loss_sum / tokens, rel=1e-5)
  assert got["family_accuracy/R"] == pytest.approx(correct / tokens)
  seen = [k for k in range(len(NAMES)) if per_denoiser[k, 1]]
  assert {NAMES[k] for k in seen} <= {"R_mu3_r0.15", "R_mu8_r0.15"} and seen
  for k in seen:
    value = got[f"denoiser_loss/{NAMES[k]}"]
    assert value == pytest.approx(per_denoiser[k, 0] / per_denoiser[k, 1], rel=1e-5)
  assert mode_matrix.matrix_results(table) == {"mode_matrix/R/[NLU]": got["family_loss/R"]}


def test_rank_accuracy_by_hand():
  idx = [0, 0, 0, 1, 1, 1, 2, 2, 2]
  correct = [0, 1, 0, 1, 0, 0, 0, 0, 1]
  scores = [-3.0, -1.0, -2.0, -5.0, -4.0, -6.0, -1.0, -1.0, -9.0]  # 2: a tie, first wins
  assert rank_lib.rank_accuracy(idx, correct, scores) == {
    "accuracy": pytest.approx(100 / 3),
    "num_examples": 3.0,
  }
  # Per-token means: example 1's first option (-5 over 5 tokens) now beats -4 over 1.
  tokens = [1, 1, 1, 5, 1, 1, 1, 1, 1]
  assert rank_lib.rank_accuracy(idx, correct, scores, num_tokens=tokens)["accuracy"] == (
    pytest.approx(200 / 3)
  )


def test_rank_classification_is_the_argmax_of_score_batch(ckpt):
  model, path = ckpt
  name = eval_tasks.register_topic_rank_classification(num_shots=0, mode="[NLU]")
  lengths = {"inputs": 64, "targets": 6}
  from t5x_ext.data import pipeline

  (_, first), *_ = pipeline.get_infer_batches(name, lengths, batch_size=8, max_examples=8)
  trainer, params = eval_lib.load_params(model, first, path)
  scorer = rank_lib.Scorer(trainer)
  exs, scores = rank_lib.score_task(scorer, params, name, lengths, batch_size=8, max_rows=24)
  assert len(exs) == 24 and [e["idx"] for e in exs] == [i // 8 for i in range(24)]
  host = jax.device_get(params)
  (_, whole), *_ = pipeline.get_infer_batches(name, lengths, batch_size=24, max_examples=24)
  by_hand = [
    np.asarray(model.score_batch(host, _strip({k: v[s : s + 8] for k, v in whole.items()})))
    for s in range(0, 24, 8)
  ]
  by_hand = np.concatenate(by_hand)
  np.testing.assert_allclose(scores, by_hand, rtol=1e-5, atol=1e-4)
  picks = by_hand.reshape(3, 8).argmax(1)
  expected = 100.0 * np.mean([exs[8 * i + p]["is_correct"] for i, p in enumerate(picks)])
  got = rank_lib.evaluate(
    scorer, params, name, lengths, num_options=8, batch_size=8, max_examples=3
  )
  assert got == {"accuracy": pytest.approx(expected), "num_examples": 3.0}


class PrefersLabel(models.EncoderDecoderModel):
  """Scores a row +1000 when its target starts with the favourite label's first token."""

  favourite_id = 0

  def score_batch(self, params, batch):
    base = super().score_batch(params, batch)
    return base + 1000.0 * (batch["decoder_target_tokens"][:, 0] == self.favourite_id)


DIRECTIONS = ("north", "south", "east")


def _direction_examples(split):
  n = 4 if split == "validation" else 6
  return [{"inputs": f"direction number {i}", "targets": "south"} for i in range(n)]


def test_a_model_that_prefers_the_right_label_gets_100_percent(ckpt, tmp_path):
  _, path = ckpt
  model = PrefersLabel(CONFIG)
  vocab = eval_tasks.rank_vocabulary({})
  firsts = [vocab.encode(f)[0] for f in DIRECTIONS]
  assert len(set(firsts)) == 3
  model.favourite_id = firsts[1]
  spec = {"name": "test_direction", "examples_fn": _direction_examples, "labels": DIRECTIONS}
  results = suite.run_suite(
    model=model,
    checkpoint_path=path,
    task_feature_lengths=LENGTHS,
    batch_size=4,
    parts=("rank_classification",),
    num_shots=1,
    rank_task=spec,
    model_dir=str(tmp_path),
    verbose=False,
  )
  keys = {
    f"rank_classification/{s}/{c}/accuracy"
    for s in ("zero_shot", "few_shot")
    for c in suite.PREFIXES
  }
  assert set(results) == keys
  assert all(v == 100.0 for v in results.values())
  # Preferring a wrong label: 0% (one column is enough).
  model.favourite_id = firsts[0]
  name = eval_tasks.rank_task_name("test_direction", 0, "")
  from t5x_ext.data import pipeline

  lengths = {"inputs": 64, "targets": 4}
  (_, first), *_ = pipeline.get_infer_batches(name, lengths, batch_size=4, max_examples=4)
  trainer, params = eval_lib.load_params(model, first, path)
  got = rank_lib.evaluate(
    rank_lib.Scorer(trainer), params, name, lengths, num_options=3, batch_size=4
  )
  assert got == {"accuracy": 0.0, "num_examples": 4.0}
