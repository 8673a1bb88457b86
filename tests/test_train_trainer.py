"""Trainer, loop and metrics on a toy model (no dependence on the real networks or data)."""

from __future__ import annotations

import json

import jax
import numpy as np
import optax
import pytest

from t5x_ext.training import metric_writers as metrics_lib
from t5x_ext.training import partitioning
from t5x_ext.training.loop import Prefetcher, train_loop
from t5x_ext.training.trainer import NonFiniteLossError, Trainer
from tests._toy_model import ToyModel, toy_batch

NAMES = ("R", "X", "S")


def _trainer(model=None, lr=0.1, **kw):
  mesh = partitioning.make_mesh({"data": -1})
  return Trainer(
    model or ToyModel(),
    optax.sgd(lr),
    mesh,
    learning_rate_fn=lambda s: lr,
    denoiser_names=NAMES,
    **kw,
  )


def test_per_denoiser_sums_match_numpy():
  trainer = _trainer()
  batch = toy_batch()
  state = trainer.init_state(jax.random.key(0), batch)
  params = jax.device_get(state.params)
  m = jax.device_get(trainer.eval_step(state.params, trainer.shard_batch(batch)))
  _, aux = ToyModel().loss_fn(params, batch, None)
  token_loss = np.asarray(aux["token_loss"])
  ids = batch["decoder_denoiser_ids"]
  for k in range(3):
    mask = ids == k + 1
    np.testing.assert_allclose(m["denoiser_loss_sum"][k], token_loss[mask].sum(), rtol=1e-5)
    assert m["denoiser_tokens"][k] == mask.sum()
  # Padding (id 0) is in no denoiser: the per-denoiser tokens add up to the loss tokens.
  assert m["denoiser_tokens"].sum() == m["num_tokens"] == batch["decoder_loss_weights"].sum()
  np.testing.assert_allclose(m["cross_entropy_sum"], m["loss_sum"] - m["z_loss_sum"], rtol=1e-6)


def test_train_steps_lower_the_loss_and_count_steps():
  trainer = _trainer()
  batch = toy_batch()
  state = trainer.init_state(jax.random.key(0), batch)
  losses = []
  for _ in range(20):
    state, m = trainer.train_step(state, trainer.shard_batch(batch))
    losses.append(float(m["loss"]))
  assert int(state.step) == 20
  assert losses[-1] < 0.8 * losses[0]
  assert float(m["learning_rate"]) == pytest.approx(0.1)


def test_microbatches_give_the_full_batch_update():
  batch = toy_batch(batch_size=8)
  results = []
  for micro in (1, 4):
    trainer = _trainer(num_microbatches=micro)
    state = trainer.init_state(jax.random.key(0), batch)
    state, m = trainer.train_step(state, trainer.shard_batch(batch))
    results.append((jax.device_get(state.params), jax.device_get(m)))
  (p1, m1), (p4, m4) = results
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, p4)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
  np.testing.assert_allclose(m1["denoiser_loss_sum"], m4["denoiser_loss_sum"], rtol=1e-5)


class _RecordingCheckpointer:
  stop_requested = False

  def __init__(self, every):
    self.every, self.saved = every, []

  def should_save(self, step):
    return step % self.every == 0

  def save(self, step, state, position):
    self.saved.append((step, position))


class _CountingIterator:
  def __init__(self):
    self.n = 0

  def __next__(self):
    self.n += 1
    return toy_batch(seed=self.n)

  def __iter__(self):
    return self

  def state(self):
    return {"batches": self.n}


def test_loop_logs_jsonl_and_saves_with_data_position(tmp_path):
  trainer = _trainer()
  state = trainer.init_state(jax.random.key(0), toy_batch())
  writer = metrics_lib.JsonlWriter(tmp_path / "metrics" / "train.jsonl")
  ckpt = _RecordingCheckpointer(every=4)
  batches = Prefetcher(_CountingIterator(), trainer.shard_batch, size=3)
  state = train_loop(
    trainer,
    state,
    batches,
    train_steps=10,
    log_every=5,
    writer=writer,
    checkpointer=ckpt,
    tokens_per_step=8 * 6,
    denoiser_groups={"[NLU]": [0], "[NLG]": [1, 2]},
  )
  batches.close()
  writer.close()
  assert int(state.step) == 10
  # The position saved with step s is "s batches consumed", although the thread ran ahead.
  assert ckpt.saved == [(4, {"batches": 4}), (8, {"batches": 8}), (10, {"batches": 10})]
  rows = metrics_lib.read_jsonl(tmp_path / "metrics" / "train.jsonl")
  assert [r["step"] for r in rows] == [5, 10]
  for key in (
    "loss",
    "learning_rate",
    "tokens_per_s",
    "accuracy",
    "z_loss",
    "loss/R",
    "loss/X",
    "loss/S",
    "loss/[NLU]",
    "loss/[NLG]",
    "input_wait_share",
  ):
    assert key in rows[-1], key
  assert rows[-1]["loss"] < rows[0]["loss"]
  # [NLU] pools only denoiser R; [NLG] pools X and S by their token counts.
  assert rows[-1]["loss/[NLU]"] == pytest.approx(rows[-1]["loss/R"])


def test_nan_loss_stops_before_any_save():
  # SGD with a huge rate on a loss that turns NaN once weights grow: diverges in a few steps.
  trainer = _trainer(model=ToyModel(nan_after=5.0), lr=50.0)
  state = trainer.init_state(jax.random.key(0), toy_batch())
  ckpt = _RecordingCheckpointer(every=1)
  batches = Prefetcher(_CountingIterator(), trainer.shard_batch)
  with pytest.raises(NonFiniteLossError, match=r"loss became nan at step \d+"):
    train_loop(trainer, state, batches, train_steps=50, log_every=100, checkpointer=ckpt)
  batches.close()
  # Every save happened at a step before the first non-finite loss.
  assert len(ckpt.saved) < 50


def test_jsonl_truncates_steps_after_a_restore(tmp_path):
  path = tmp_path / "train.jsonl"
  w = metrics_lib.JsonlWriter(path)
  for s in (10, 20, 30):
    w.write_scalars(s, {"loss": 1.0 / s, "bad": float("nan")})
  w.close()
  assert json.loads(path.read_text().splitlines()[0])["bad"] is None
  w = metrics_lib.JsonlWriter(path, truncate_after=20)
  w.write_scalars(25, {"loss": 0.0})
  w.close()
  assert [r["step"] for r in metrics_lib.read_jsonl(path)] == [10, 20, 25]


def test_prefetcher_reraises_errors_from_the_pipeline():
  def broken():
    yield toy_batch()
    raise ValueError("bad record 7")

  p = Prefetcher(broken())
  next(p)
  with pytest.raises(ValueError, match="bad record 7"):
    next(p)
  p.close()


def test_summarize_mfu_and_peak_table():
  acc = metrics_lib.MetricAccumulator()
  acc.add({"loss": 2.0, "num_tokens": 10.0, "loss_sum": 20.0, "correct": 5.0})
  out = metrics_lib.summarize(
    acc, tokens_per_step=100, flops_per_step=1e8, peak_flops=1e9, seconds=2.0
  )
  assert out["tokens_per_s"] == 50.0
  assert out["mfu"] == pytest.approx(0.5 * 1e8 / 1e9)
  assert out["accuracy"] == 0.5
  assert metrics_lib.peak_flops_per_device("TPU v4") == 275e12
  assert metrics_lib.peak_flops_per_device("cpu") is None


def test_accumulation_weighting_follows_the_loss_normalisation():
  # One definition (optimizers.accumulation_weighting); the Trainer picks it at construction.
  from t5x_ext.training import trainer as trainer_lib

  assert not hasattr(trainer_lib, "accumulation_weighting")
  mesh = partitioning.make_mesh({"data": 1})

  class M(ToyModel):
    loss_normalizing_factor = None

  for factor, expected in ((None, "num_tokens"), (512.0, "sum"), ("AVERAGE_PER_SEQUENCE", "mean")):
    M.loss_normalizing_factor = factor
    t = trainer_lib.Trainer(M(), optax.sgd(0.1), mesh, partitioning.DEFAULT_RULES)
    assert t.accumulation_weighting == expected
  M.loss_normalizing_factor = "NUM_TOKENS"
  with pytest.raises(ValueError, match="'NUM_TOKENS'"):
    trainer_lib.Trainer(M(), optax.sgd(0.1), mesh, partitioning.DEFAULT_RULES)
