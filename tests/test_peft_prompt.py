"""Prompt tuning (t5x_ext.peft.prompt_tuning): the network's soft-prompt path, the frozen base,
prompt-only checkpoints, exact resume, decoding and scoring with the prompt."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from t5x_ext.model import models, network
from t5x_ext.peft import adapters_io, prompt_tuning
from t5x_ext.peft.prompt_tuning import PromptConfig, PromptTrainer
from t5x_ext.training import partitioning
from tests.test_peft_lora import Batches, _write_base, decoder_only_batch, encdec_batch
from tests.tiny_network import tiny_config

CONFIG = PromptConfig(length=3, sample_vocab_size=40)
STEPS = 4
D = 32


def _encdec(**kw):
  model = models.EncoderDecoderModel(tiny_config(**kw), z_loss=0.0)
  params = nn.unbox(model.init_variables(jax.random.key(0), encdec_batch(0))["params"])
  return model, jax.device_get(params)


def _decoder_only():
  model = models.DecoderOnlyModel(tiny_config(decoder_only=True, num_encoder_layers=0), z_loss=0.0)
  params = nn.unbox(model.init_variables(jax.random.key(0), decoder_only_batch(0))["params"])
  return model, jax.device_get(params)


def _prompt(n=3, seed=1):
  return jax.random.normal(jax.random.key(seed), (n, D))


def _token_loss(model, params, batch, prompt, prompt_offset=0):
  def fn(p, b, pr):
    return model.loss_fn(p, b, None, prompt=pr, prompt_offset=prompt_offset)[1]["token_loss"]

  return np.asarray(jax.jit(fn)(params, batch, prompt))


@pytest.mark.parametrize("decoder_only", [False, True])
def test_a_zero_length_prompt_gives_the_base_models_logits(decoder_only):
  model, params = _decoder_only() if decoder_only else _encdec()
  batch = decoder_only_batch(0) if decoder_only else encdec_batch(0)
  features = model._features(batch)
  apply = jax.jit(lambda p, f, pr: model.module.apply({"params": p}, **f, prompt=pr))
  want = np.asarray(jax.jit(lambda p, f: model.module.apply({"params": p}, **f))(params, features))
  got = np.asarray(apply(params, features, jnp.zeros((0, D))))
  np.testing.assert_array_equal(got, want)
  # A real prompt changes them, and the logits keep the batch's shape.
  moved = np.asarray(apply(params, features, _prompt()))
  assert moved.shape == want.shape and not np.allclose(moved, want)


def test_the_prompt_changes_the_encoder_output():
  model, params = _encdec()
  tokens = jnp.asarray(encdec_batch(0)["encoder_input_tokens"])

  def encode(pr, offset=0):
    return np.asarray(
      model.module.apply(
        {"params": params},
        tokens,
        prompt=pr,
        prompt_offset=offset,
        method=network.EncoderDecoder.encode,
      )
    )

  plain = encode(None)
  prompted = encode(_prompt())
  assert prompted.shape == (plain.shape[0], plain.shape[1] + 3, D)
  assert not np.allclose(prompted[:, 3:], plain)
  # After a 2-token prefix ('after [NLU]'): another output than in front.
  assert not np.allclose(encode(_prompt(), 2), prompted)


def test_insert_and_remove_prompt_with_static_and_per_row_offsets():
  x = jnp.arange(2 * 4).reshape(2, 4) + 10
  prompt = jnp.array([-1, -2])
  np.testing.assert_array_equal(
    network.insert_prompt(x, prompt, 1), [[10, -1, -2, 11, 12, 13], [14, -1, -2, 15, 16, 17]]
  )
  per_row = network.insert_prompt(x, prompt, jnp.array([0, 3]))
  np.testing.assert_array_equal(per_row, [[-1, -2, 10, 11, 12, 13], [14, 15, 16, -1, -2, 17]])
  np.testing.assert_array_equal(network.remove_prompt(per_row, 2, jnp.array([0, 3])), x)
  np.testing.assert_array_equal(network.remove_prompt(network.insert_prompt(x, prompt, 1), 2, 1), x)
  np.testing.assert_array_equal(
    network.prompt_tokens(jnp.zeros((1, 2), jnp.int32), 2), [[1, 1, 0, 0]]
  )


def test_packed_batches_are_refused_with_a_message(tmp_path):
  model, params = _encdec()
  batch = dict(encdec_batch(0))
  batch["encoder_segment_ids"] = np.ones_like(batch["encoder_input_tokens"])
  batch["decoder_segment_ids"] = np.ones_like(batch["decoder_target_tokens"])
  with pytest.raises(ValueError, match="unpacked"):
    model.loss_fn(params, batch, None, prompt=_prompt())
  with pytest.raises(ValueError, match="unpacked"):
    prompt_tuning.finetune_prompt(
      model=model, base_checkpoint="/nonexistent", model_dir=tmp_path, train_steps=1, pack=True
    )


def test_config_positions_and_validation():
  assert PromptConfig().length == 100
  after = PromptConfig(position="after", prefix_length=2)
  assert after.offset(decoder_only=False) == 2 and after.offset(decoder_only=True) == 3
  assert PromptConfig().offset(decoder_only=True) == 0
  assert PromptConfig.from_json(after.to_json()) == after
  with pytest.raises(ValueError, match="position"):
    PromptConfig(position="middle")
  with pytest.raises(ValueError, match="length"):
    PromptConfig(length=0)


def test_init_samples_rows_of_the_embedding_table():
  table = jax.random.normal(jax.random.key(0), (64, D))
  prompt = np.asarray(prompt_tuning.init_prompt(jax.random.key(1), table, CONFIG))
  matches = [np.flatnonzero((np.asarray(table) == row).all(axis=1)) for row in prompt]
  ids = [int(m[0]) for m in matches]
  assert all(len(m) == 1 for m in matches) and all(i < 40 for i in ids)
  assert len(set(ids)) == len(ids)  # without replacement
  # More vectors than candidate rows: drawn with replacement, still rows of the table.
  many = prompt_tuning.init_prompt(
    jax.random.key(1), table, PromptConfig(length=50, sample_vocab_size=8)
  )
  assert np.isin(np.asarray(many), np.asarray(table[:8])).all()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  model, params = _encdec()
  path = _write_base(tmp_path_factory.mktemp("base"), params)
  return model, params, path


def _finetune(model, base_path, model_dir, steps, losses=None):
  def on_log(step, scalars):
    if losses is not None:
      losses[step] = scalars["loss"]

  return prompt_tuning.finetune_prompt(
    model=model,
    base_checkpoint=base_path,
    model_dir=model_dir,
    train_steps=steps,
    batches=Batches(),
    prompt_config=CONFIG,
    batch_size=4,
    optimizer=optax.adam(1e-1),
    checkpoint_every=2,
    keep_checkpoints=None,
    log_every=1,
    on_log=on_log,
  )


@pytest.fixture(scope="module")
def straight(base, tmp_path_factory):
  model, _, base_path = base
  model_dir = tmp_path_factory.mktemp("straight")
  losses: dict[int, float] = {}
  result = _finetune(model, base_path, model_dir, STEPS, losses)
  return result, losses, model_dir


def test_training_changes_only_the_prompt(base, straight):
  model, base_params, _ = base
  result, losses, _ = straight
  trainer = result.trainer
  frozen = jax.device_get(trainer.frozen)
  for x, y in zip(jax.tree.leaves(frozen), jax.tree.leaves(base_params)):
    np.testing.assert_array_equal(x, y)
  assert set(result.state.params) == {"prompt"}
  tuned = np.asarray(result.state.params["prompt"])
  initial = prompt_tuning.init_prompt(
    jax.random.key(0), base_params["token_embedder"]["embedding"], CONFIG
  )
  assert tuned.shape == (3, D) and not np.allclose(tuned, np.asarray(initial))
  # The first loss is the model's with the initial prompt; training lowers it.
  want = _token_loss(model, base_params, encdec_batch(1), prompt=initial)
  assert losses[1] == pytest.approx(
    float(want.sum() / (encdec_batch(1)["decoder_target_tokens"] > 0).sum()), rel=1e-5
  )
  after = trainer.eval_step(result.state.params, trainer.shard_batch(encdec_batch(1)))
  assert float(after["loss"]) < losses[1]


def test_checkpoint_holds_only_the_prompt_and_names_its_base(base, straight):
  _, base_params, base_path = base
  _, _, model_dir = straight
  step_dir = model_dir / "checkpoints" / str(STEPS)
  record = adapters_io.find_record(step_dir)[1]
  assert record["method"] == "prompt_tuning"
  assert PromptConfig.from_json(record["prompt"]) == CONFIG
  assert record["base"]["fingerprint"] == adapters_io.fingerprint(base_params)
  metadata = ocp.PyTreeCheckpointer().metadata(step_dir / "state").item_metadata.tree
  names = {
    jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(metadata["params"])[0]
  }
  assert names == {"['prompt']"}
  stored = sum(
    int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(metadata, is_leaf=lambda x: hasattr(x, "shape"))
  )
  assert stored <= 4 * (3 * 3 * D + 2)  # prompt + Adam's mu, nu (+ counts and the step)


def test_resume_is_exact(base, straight, tmp_path):
  model, _, base_path = base
  result, straight_losses, _ = straight
  losses: dict[int, float] = {}
  first = _finetune(model, base_path, tmp_path, 2, losses)
  assert first.start_step == 0
  second = _finetune(model, base_path, tmp_path, STEPS, losses)
  assert second.start_step == 2
  assert losses == straight_losses
  np.testing.assert_array_equal(
    np.asarray(second.state.params["prompt"]), np.asarray(result.state.params["prompt"])
  )


def test_encoder_decoder_predicts_and_scores_with_the_prompt(base, straight):
  model, base_params, _ = base
  result, _, _ = straight
  trainer, prompt = result.trainer, result.state.params["prompt"]
  batch = encdec_batch(3)
  tokens = np.asarray(trainer.predict(result.state.params, batch, decode_len=3))
  # The first greedy token is the argmax of the teacher-forced logits with the prompt.
  logits = model.module.apply(
    {"params": base_params},
    jnp.asarray(batch["encoder_input_tokens"]),
    jnp.zeros((4, 1), jnp.int32),
    prompt=prompt,
  )
  np.testing.assert_array_equal(tokens[:, 0], np.argmax(np.asarray(logits)[:, 0], -1))
  plain = np.asarray(model.predict_batch(base_params, batch, decode_len=3))
  assert tokens.shape == plain.shape
  # Scores: minus the summed token losses with the prompt (z_loss = 0), not the base's.
  scores = np.asarray(trainer.score(result.state.params, batch))
  want = -_token_loss(model, base_params, batch, prompt=prompt).sum(-1)
  np.testing.assert_allclose(scores, want, rtol=1e-5)
  assert not np.allclose(scores, np.asarray(model.score_batch(base_params, batch)))


def test_decoder_only_trains_predicts_and_scores_with_the_prompt():
  model, params = _decoder_only()
  config = PromptConfig(length=3, position="after", prefix_length=1)
  trainer = PromptTrainer(
    model, optax.adam(1e-1), partitioning.make_mesh({"data": -1}), prompt=config
  )
  trainer.set_base(params, decoder_only_batch(0))
  state = trainer.init_state(jax.random.key(0), decoder_only_batch(0))
  losses = []
  for _ in range(3):
    state, metrics = trainer.train_step(state, trainer.shard_batch(decoder_only_batch(1)))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0]
  for x, y in zip(jax.tree.leaves(jax.device_get(trainer.frozen)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(x, y)
  prompt = state.params["prompt"]
  # Prompts of different lengths (2, 4 and 3 tokens: BOS + inputs), zeros after them.
  lengths = np.array([2, 4, 3])
  inputs = np.zeros((3, 6), np.int32)
  for row, n in enumerate(lengths):
    inputs[row, 1:n] = np.arange(5, 4 + n)
  causal = (np.arange(6)[None] < lengths[:, None]).astype(np.int32)
  batch = {"decoder_input_tokens": inputs, "decoder_causal_attention": causal}
  tokens = np.asarray(trainer.predict(state.params, batch, decode_len=2))
  # Teacher forcing with the prompt in place: the next token after each row's prompt.
  logits = np.asarray(
    model.module.apply(
      {"params": params},
      jnp.asarray(inputs),
      decoder_causal_attention=jnp.asarray(causal),
      prompt=prompt,
      prompt_offset=trainer.prompt_offset,
    )
  )
  np.testing.assert_array_equal(tokens[:, 0], np.argmax(logits[np.arange(3), lengths - 1], -1))
  batch = decoder_only_batch(2)
  scores = np.asarray(trainer.score(state.params, batch))
  want = -_token_loss(model, params, batch, prompt=prompt, prompt_offset=trainer.prompt_offset)
  np.testing.assert_allclose(scores, want.sum(-1), rtol=1e-5)


def test_eight_simulated_devices():
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "-q",
      "-x",
      "-p",
      "no:cacheprovider",
      "tests/test_peft_prompt_eight_devices.py",
    ],
    capture_output=True,
    text=True,
    timeout=900,
    env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    cwd=pathlib.Path(__file__).parent.parent,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
  assert " passed" in proc.stdout and "skipped" not in proc.stdout
