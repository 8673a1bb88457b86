"""Evaluation during training (EVAL_PERIOD): it runs when due, writes the right numbers, and
leaves training and resuming exactly as they are without it.

The runs use the toy model (tests/_toy_model.py, compiled in a second) on real validation
data: a three-denoiser UL2R task at short lengths, and the topic task for SeqIO metrics (with a
one-pass toy `predict_batch`). The main job's network is evaluated during training by the
tests that run gin/local/ul2_tiny.gin (test_train_main_job, test_resume, the multi-host test).
"""

from __future__ import annotations

import logging
import shutil
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks
from t5x_ext import eval as eval_lib
from t5x_ext import train as train_lib
from t5x_ext.evaluation import periodic as periodic_eval
from t5x_ext.training import fit as fit_lib
from t5x_ext.training import metric_writers as metrics
from tasks import finetune
from tests._toy_model import ToyModel

TASK = "pydocs_ul2r_mod_v1"  # R [NLU], X [NLG], S [S2S]
LENGTHS = {"inputs": 96, "targets": 64}
BATCH = 4
EVAL = dict(eval_period=2, eval_batches=3)


def _train(model_dir, steps=6, **kwargs):
  settings = dict(
    batch_size=BATCH,
    learning_rate=0.01,
    log_every=1,
    checkpoint_every=3,
    keep_checkpoints=None,
    progress_bar=False,
    tensorboard=False,
  )
  return train_lib.train(
    model=ToyModel(vocab=8192),
    mixture_or_task_name=TASK,
    task_feature_lengths=LENGTHS,
    train_steps=steps,
    model_dir=str(model_dir),
    **{**settings, **kwargs},
  )


def _train_losses(model_dir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in metrics.read_jsonl(model_dir / "metrics" / "train.jsonl")}


def _evals(model_dir) -> list[dict]:
  return metrics.read_jsonl(model_dir / "metrics" / "eval.jsonl")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Six steps without evaluation, six with it (every 2 steps), and that run resumed from
  its step-3 checkpoint after losing the step-6 one (killed after its last evaluation)."""
  root = tmp_path_factory.mktemp("periodic_eval")
  off = _train(root / "off")
  on = _train(root / "on", tensorboard=True, **EVAL)
  shutil.copytree(root / "on", root / "resumed")
  shutil.rmtree(root / "resumed" / "checkpoints" / "6")
  resumed = _train(root / "resumed", **EVAL)
  return root, {"off": off, "on": on, "resumed": resumed}


def test_evaluates_every_period_and_at_the_end(runs):
  root, results = runs
  rows = _evals(root / "on")
  assert [r["step"] for r in rows] == [2, 4, 6]
  for key in ("eval/loss", "eval/accuracy", "eval/cross_entropy", "eval/z_loss"):
    assert all(np.isfinite(r[key]) for r in rows), key
  for name in ("R_mu3_r0.15", "X_mu32_r0.5", "S", "[NLU]", "[NLG]", "[S2S]"):
    assert all(np.isfinite(r[f"eval/loss/{name}"]) for r in rows), name
  # The toy model learns: the held-out loss moves, so each line is a fresh evaluation.
  assert rows[-1]["eval/loss"] != rows[0]["eval/loss"]
  assert results["on"].eval_metrics == {k: v for k, v in rows[-1].items() if k != "step"}
  assert list((root / "on" / "tensorboard" / "eval").glob("events.out.tfevents.*"))
  assert not (root / "off" / "metrics" / "eval.jsonl").exists()
  assert results["off"].eval_metrics == {}


def test_training_is_exactly_the_same_with_evaluation_on(runs):
  root, results = runs
  off, on = _train_losses(root / "off"), _train_losses(root / "on")
  assert sorted(on) == list(range(1, 7))
  assert on == off  # exactly, step by step
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.device_get(results["on"].state.params),
    jax.device_get(results["off"].state.params),
  )


def test_resume_is_exact_and_eval_jsonl_has_no_duplicates(runs):
  root, results = runs
  assert int(results["resumed"].state.step) == 6
  assert _train_losses(root / "resumed") == _train_losses(root / "on")
  on, resumed = _evals(root / "on"), _evals(root / "resumed")
  # The step-6 line of the lost future was dropped on resume, then written again.
  assert [r["step"] for r in resumed] == [2, 4, 6]
  assert resumed == on  # the same params on the same batches: the same numbers


def _reference_metrics(params, num_batches):
  """Per-token losses of the first validation batches straight from model.loss_fn."""
  from t5x_ext.data import pipeline

  model = ToyModel(vocab=8192)
  data = pipeline.get_batches(
    TASK,
    LENGTHS,
    split="validation",
    batch_size=BATCH,
    feature_converter_name=model.feature_converter_name,
    pack=True,
    shuffle=False,
    seed=periodic_eval.EVAL_SEED,
    repeat=False,
  )
  loss_sum = tokens = correct = 0.0
  per_id: dict[int, list[float]] = {}
  for _, batch in zip(range(num_batches), data):
    ids = batch["decoder_denoiser_ids"]
    _, aux = model.loss_fn(
      params, {k: v for k, v in batch.items() if k != "decoder_denoiser_ids"}, None
    )
    token_loss = np.asarray(aux["token_loss"], np.float64)
    loss_sum += float(aux["loss_sum"])
    tokens += float(aux["num_tokens"])
    correct += float(aux["correct"])
    for k in (1, 2, 3):
      s, n = per_id.get(k, [0.0, 0.0])
      per_id[k] = [s + token_loss[ids == k].sum(), n + float((ids == k).sum())]
  per_denoiser = {k: s / n for k, (s, n) in per_id.items()}
  return loss_sum / tokens, correct / tokens, per_denoiser


def test_values_equal_loss_fn_on_the_same_params_and_batches(runs):
  root, results = runs
  last = _evals(root / "on")[-1]
  params = jax.device_get(results["on"].state.params)  # the step-6 params it evaluated
  loss, accuracy, per_denoiser = _reference_metrics(params, EVAL["eval_batches"])
  assert last["eval/loss"] == pytest.approx(loss, rel=1e-5)
  assert last["eval/accuracy"] == pytest.approx(accuracy, rel=1e-6)
  for k, mode in ((1, "[NLU]"), (2, "[NLG]"), (3, "[S2S]")):
    assert last[f"eval/loss/{mode}"] == pytest.approx(per_denoiser[k], rel=1e-5), mode


def test_uneven_shards_stay_in_step_across_processes(monkeypatch):
  """Two simulated processes: the shorter shard pads with zero batches, both stop together."""
  from t5x_ext.training import hosts

  barrier, slots = threading.Barrier(2, timeout=30), {}

  def allgather(x):
    slots[threading.current_thread().name] = np.asarray(x)
    barrier.wait()
    out = np.stack([slots["p0"], slots["p1"]])
    barrier.wait()
    return out

  monkeypatch.setattr(periodic_eval.jax, "process_count", lambda: 2)
  monkeypatch.setattr(hosts, "allgather", allgather)  # EvalData steps through hosts.lockstep
  template = {"x": np.ones((2, 3), np.int32)}
  shards = {"p0": [np.full((2, 3), i + 1, np.int32) for i in range(3)], "p1": []}
  made = {"p0": 0, "p1": 0}
  seen: dict[str, list] = {}

  def run(name, max_batches):
    def make():
      made[name] += 1
      return iter([{"x": b} for b in shards[name]])

    data = periodic_eval.EvalData(make, template, max_batches=max_batches)
    seen[name] = [[int(b["x"][0, 0]) for b in data] for _ in range(2)]  # two evaluations

  for max_batches, expected in ((None, [1, 2, 3]), (2, [1, 2])):
    made.update(p0=0, p1=0)
    threads = [threading.Thread(target=run, args=(n, max_batches), name=n) for n in ("p0", "p1")]
    for t in threads:
      t.start()
    for t in threads:
      t.join(timeout=60)
    assert seen["p0"] == [expected, expected]
    assert seen["p1"] == [[0] * len(expected)] * 2  # zero batches: no loss weight
    assert made == {"p0": 1, "p1": 1}  # read once, then from memory


@pytest.mark.parametrize(
  "setting,value,message",
  [
    ("eval_period", -1, r"EVAL_PERIOD = -1: must be a positive int"),
    ("eval_period", 2.5, r"EVAL_PERIOD = 2.5"),
    ("eval_batches", 0, r"EVAL_BATCHES = 0: must be a positive int"),
    ("evaluator_num_examples", -3, r"EVALUATOR_NUM_EXAMPLES = -3"),
  ],
)
def test_bad_settings_fail_before_compiling(tmp_path, monkeypatch, setting, value, message):
  def forbidden(*args, **kwargs):
    raise AssertionError("validation should have failed before the Trainer was built")

  monkeypatch.setattr(fit_lib, "Trainer", forbidden)
  with pytest.raises(ValueError, match=message):
    _train(tmp_path, **{**EVAL, setting: value})


def test_task_without_validation_split_warns_and_trains_without_eval(tmp_path, caplog, capsys):
  import tasks
  from t5x_ext import objectives

  text = tmp_path / "docs.txt"
  words = " ".join(f"word{i % 50}" for i in range(400))
  text.write_text("\n".join([words] * 8) + "\n")
  (name,) = tasks.register_text_files(
    "periodic_eval_noval",
    {"train": str(text)},
    objectives={"span_corruption": objectives.T5_SPAN_CORRUPTION},
  )
  model_dir = tmp_path / "run"
  with caplog.at_level(logging.WARNING):
    result = train_lib.train(
      model=ToyModel(vocab=8192),
      mixture_or_task_name=name,
      task_feature_lengths={"inputs": 64, "targets": 16},
      train_steps=2,
      model_dir=str(model_dir),
      batch_size=BATCH,
      progress_bar=False,
      tensorboard=False,
      eval_period=1,
    )
  assert int(result.state.step) == 2
  message = f"EVAL_PERIOD = 1, but '{name}' has no 'validation' split"
  assert message in caplog.text and message in capsys.readouterr().out
  assert not (model_dir / "metrics" / "eval.jsonl").exists()
  assert result.eval_metrics == {}


def test_run_files_turn_evaluation_on(monkeypatch, tmp_path):
  """EVAL_PERIOD follows CHECKPOINT_EVERY in the run files; the main job sets its own."""
  seen = []

  class Stop(Exception):
    pass

  def capture(*args):
    seen.append(args)
    raise Stop

  monkeypatch.setattr(periodic_eval, "check_settings", capture)
  common = [
    f"--gin.MODEL_DIR='{tmp_path}'",
    "--gin.MIXTURE_OR_TASK_NAME='pydocs_span_corruption_v1'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
    "--gin.TRAIN_STEPS=3",
  ]
  pretrain = ["--gin_file=local/tiny_model.gin", "--gin_file=runs/pretrain.gin"]
  tiny = ["--gin_file=local/ul2_tiny.gin"]
  cases = [
    (pretrain, (1000, 20, 128)),
    ([*pretrain, "--gin.CHECKPOINT_EVERY=7"], (7, 20, 128)),
    (tiny, (50, 8, 128)),
    ([*tiny, "--gin.EVAL_PERIOD=0", "--gin.EVAL_BATCHES=None"], (0, None, 128)),
  ]
  for flags, expected in cases:
    seen.clear()
    with pytest.raises(Stop):
      train_lib.main([*flags, *common])
    assert seen == [expected], flags


TOPIC = "pydocs_topic_classification_v1"


class _ToyPredictor(ToyModel):
  """The toy model with a one-pass `predict_batch` (argmax at each decoder position).

  So that the accuracy is neither 0 nor 100, rows whose first target token is odd (the labels
  `email` and `http` among the first validation examples) get their targets back: a model
  that knows some classes.
  """

  def __init__(self):
    super().__init__(vocab=8192)
    self.predict_calls = 0

  def predict_batch(self, params, batch, rng=None, *, decode_len, **kwargs):
    del rng, kwargs
    self.predict_calls += 1
    logits = self.net.apply({"params": params}, jnp.asarray(batch["decoder_input_tokens"]))
    targets = jnp.asarray(batch["decoder_target_tokens"])
    pred = jnp.where(targets[:, :1] % 2 == 1, targets, jnp.argmax(logits, axis=-1))
    return pred[:, :decode_len].astype(jnp.int32)


def _topic_accuracy(model, params, num_examples, targets_length):
  """Exact-match accuracy (%) of `model` on the first validation examples, by hand: the labels
  from `tasks.finetune`, one row per example, ids cut at EOS/padding."""
  vocab = tasks.default_vocabulary()
  examples = finetune.topic_examples("validation")[:num_examples]
  correct = 0
  for ex in examples:
    target = ([*vocab.encode(ex["label"]), 1] + [0] * targets_length)[:targets_length]
    batch = {
      "decoder_target_tokens": np.array([target], np.int32),
      "decoder_input_tokens": np.array([[0, *target[:-1]]], np.int32),
    }
    ids = np.asarray(model.predict_batch(params, batch, decode_len=targets_length))[0].tolist()
    ids = ids[: next((i for i, t in enumerate(ids) if t in (0, 1)), len(ids))]
    correct += vocab.decode(ids).strip() == ex["label"]
  return 100.0 * correct / len(examples)


def test_seqio_metrics_during_training_match_eval(tmp_path):
  """A task with SeqIO metrics: its accuracy on decoded examples is logged at the last step."""
  model = _ToyPredictor()
  lengths = {"inputs": 192, "targets": 8}
  result = train_lib.train(
    model=model,
    mixture_or_task_name=TOPIC,
    task_feature_lengths=lengths,
    train_steps=3,
    model_dir=str(tmp_path / "run"),
    batch_size=BATCH,
    progress_bar=False,
    tensorboard=False,
    eval_period=5,  # beyond the run: only the last step's evaluation
    eval_batches=1,
    evaluator_num_examples=8,
  )
  assert model.predict_calls == 2  # 8 examples in batches of 4, decoded once
  rows = _evals(tmp_path / "run")
  assert [r["step"] for r in rows] == [3]
  key = f"eval/{TOPIC}/accuracy"
  expected = _topic_accuracy(model, jax.device_get(result.state.params), 8, lengths["targets"])
  assert 0.0 < expected < 100.0  # some right, some wrong: the check can tell them apart
  assert rows[0][key] == pytest.approx(expected)
  standalone = eval_lib.evaluate(
    model=model,
    mixture_or_task_name=TOPIC,
    task_feature_lengths=lengths,
    model_dir=str(tmp_path / "standalone"),
    checkpoint_path=str(tmp_path / "run"),
    batch_size=BATCH,
    max_batches=1,
    max_predict_examples=8,
    pack=True,
    seed=periodic_eval.EVAL_SEED,
  )
  assert rows[0][key] == pytest.approx(standalone[key])
  assert rows[0]["eval/loss"] == pytest.approx(standalone["eval/loss"], rel=1e-6)
  assert result.eval_metrics[key] == rows[0][key]
