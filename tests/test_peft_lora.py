"""LoRA (t5x_ext.peft): adapter axes, zero-B parity, frozen base, adapter checkpoints, resume,
merge and export, and (in a subprocess) 8 simulated devices."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from t5x_ext.model import axes, models
from t5x_ext.peft import adapters_io, finetune, lora, merge
from t5x_ext.peft.trainer import LoraTrainer
from t5x_ext.training import checkpointing, partitioning
from tests.tiny_network import TINY, tiny_config

ALL_TARGETS = lora.ATTENTION_TARGETS + lora.MLP_TARGETS
CONFIG = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.1, targets=ALL_TARGETS)
STEPS = 4


def encdec_batch(seed: int, b: int = 4, li: int = 7, lt: int = 6, vocab: int = 64):
  rng = np.random.RandomState(seed)
  tgt = rng.randint(2, vocab, (b, lt)).astype(np.int32)
  tgt[0, -2:] = 0
  dec_in = np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], axis=1)
  return dict(
    encoder_input_tokens=rng.randint(2, vocab, (b, li)).astype(np.int32),
    decoder_input_tokens=dec_in,
    decoder_target_tokens=tgt,
    decoder_loss_weights=(tgt > 0).astype(np.float32),
  )


def decoder_only_batch(seed: int, b: int = 4, length: int = 9, vocab: int = 64):
  rng = np.random.RandomState(seed)
  tgt = rng.randint(2, vocab, (b, length)).astype(np.int32)
  causal = np.zeros_like(tgt)
  causal[:, :4] = 1
  return dict(
    decoder_target_tokens=tgt,
    decoder_input_tokens=np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], axis=1),
    decoder_causal_attention=causal,
    decoder_loss_weights=1 - causal,
  )


class Batches:
  """Deterministic numpy batches with a restorable position (like `get_batches`)."""

  def __init__(self, make=encdec_batch):
    self.i, self.make = 0, make

  def __iter__(self):
    return self

  def __next__(self):
    self.i += 1
    return self.make(self.i)

  def state(self):
    return {"i": self.i}

  def restore(self, state):
    self.i = int(state["i"])


def _logits(model, params, batch):
  logits = jax.jit(model.logits)
  return np.asarray(logits(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"]))


def _write_base(path: pathlib.Path, params) -> str:
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path / "params", {"params": params})
  checkpointer.wait_until_finished()
  checkpointer.close()
  return str(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  model = models.EncoderDecoderModel(tiny_config())
  params = nn.unbox(model.init_variables(jax.random.key(0), encdec_batch(0))["params"])
  path = _write_base(tmp_path_factory.mktemp("base"), params)
  return model, jax.device_get(params), path


def _finetune(model, base_path, model_dir, steps, losses=None, **kw):
  def on_log(step, scalars):
    if losses is not None:
      losses[step] = scalars["loss"]

  return finetune.finetune_lora(
    model=model,
    base_checkpoint=base_path,
    model_dir=model_dir,
    train_steps=steps,
    batches=Batches(),
    lora_config=CONFIG,
    batch_size=4,
    optimizer=optax.adam(1e-2),
    checkpoint_every=2,
    keep_checkpoints=None,
    log_every=1,
    on_log=on_log,
    **kw,
  )


@pytest.fixture(scope="module")
def straight(base, tmp_path_factory):
  model, _, base_path = base
  model_dir = tmp_path_factory.mktemp("straight")
  losses: dict[int, float] = {}
  result = _finetune(model, base_path, model_dir, STEPS, losses)
  return result, losses, model_dir


@pytest.mark.parametrize("scan_layers", [False, True])
def test_adapters_carry_their_kernels_logical_axes(scan_layers):
  model = models.EncoderDecoderModel(tiny_config(scan_layers=scan_layers))
  boxed = jax.eval_shape(model.init_variables, jax.random.key(0), encdec_batch(0))["params"]
  adapters = lora.init_adapters(jax.random.key(1), boxed, CONFIG)
  paths = lora.adapter_paths(adapters)
  # Every attention projection and MLP kernel of both stacks, nothing else.
  assert len(paths) == ((1 + 2 * 2) * 4 + (1 + 2) * 3 if not scan_layers else 3 * 4 + 2 * 3)
  assert not any(p[0] in ("token_embedder", "logits_dense") for p in paths)
  lead = (axes.LAYERS,) if scan_layers else ()
  for path in paths:
    kernel = lora._get(boxed, path)["kernel"]
    pair = lora._get(adapters, path)
    a, b = pair["lora_a"], pair["lora_b"]
    if path[-1] in ("query", "key", "value"):
      assert a.names == lead + (axes.EMBED, None)
      assert b.names == lead + (None, axes.HEADS, axes.KV)
    elif path[-1] == "out":
      assert a.names == lead + (axes.HEADS, axes.KV, None)
      assert b.names == lead + (None, axes.EMBED)
    elif path[-1] == "wo":
      assert a.names == lead + (axes.MLP, None) and b.names == lead + (None, axes.EMBED)
    else:
      assert a.names == lead + (axes.EMBED, None) and b.names == lead + (None, axes.MLP)
    # The factors multiply back to the kernel's shape, and B starts at zero.
    assert lora.delta(a.value, b.value, kernel.value.shape, 1.0).shape == kernel.value.shape
  # Without logical names (a plain params tree) the factors have the same shapes.
  plain = lora.init_adapters(jax.random.key(1), nn.unbox(boxed), CONFIG)
  assert jax.tree.map(lambda x: x.shape, plain) == jax.tree.map(
    lambda x: x.shape, nn.unbox(adapters)
  )
  values = nn.unbox(lora.init_adapters(jax.random.key(1), boxed, CONFIG))
  assert all(not np.any(lora._get(values, p)["lora_b"]) for p in paths)
  assert all(np.std(lora._get(values, p)["lora_a"]) > 0 for p in paths)


def test_targets_select_by_name_or_path_and_reject_nothing():
  model = models.EncoderDecoderModel(tiny_config())
  boxed = jax.eval_shape(model.init_variables, jax.random.key(0), encdec_batch(0))["params"]
  only = lora.LoraConfig(targets=("decoder/*/self_attention/query",))
  assert list(lora.target_kernels(boxed, only)) == [
    ("decoder", f"layers_{i}", "self_attention", "query") for i in range(2)
  ]
  with pytest.raises(ValueError, match="matches no kernel"):
    lora.target_kernels(boxed, lora.LoraConfig(targets=("qkv",)))
  with pytest.raises(ValueError, match="rank"):
    lora.LoraConfig(rank=0)
  with pytest.raises(ValueError, match="dropout"):
    lora.LoraConfig(dropout=1.0)


@pytest.mark.parametrize("decoder_only", [False, True])
def test_zero_b_gives_the_base_models_logits_exactly(decoder_only):
  if decoder_only:
    model = models.DecoderOnlyModel(tiny_config(decoder_only=True, num_encoder_layers=0))
    batch = decoder_only_batch(0)
  else:
    model = models.EncoderDecoderModel(tiny_config(scan_layers=True))
    batch = encdec_batch(0)
  boxed = model.init_variables(jax.random.key(0), batch)["params"]
  params = nn.unbox(boxed)
  adapters = nn.unbox(lora.init_adapters(jax.random.key(1), boxed, CONFIG))
  token_loss = jax.jit(lambda p: model.loss_fn(p, batch, None)[1]["token_loss"])
  adapted = jax.jit(lambda p, a: lora.apply(p, a, CONFIG))
  want = np.asarray(token_loss(params))
  np.testing.assert_array_equal(np.asarray(token_loss(adapted(params, adapters))), want)
  # A non-zero B changes them.
  moved = jax.tree.map(lambda x: x + 0.1, adapters)
  assert not np.allclose(np.asarray(token_loss(adapted(params, moved))), want)


def test_training_changes_only_the_adapters(base, straight):
  model, base_params, _ = base
  result, losses, _ = straight
  trainer = result.trainer
  # The frozen base is bit-identical to the checkpoint it came from.
  frozen = jax.device_get(trainer.frozen)
  for x, y in zip(jax.tree.leaves(frozen), jax.tree.leaves(base_params)):
    np.testing.assert_array_equal(x, y)
  # The adapters moved (B is no longer zero) and fit the first batch better than the base.
  adapters = jax.device_get(result.state.params)
  assert all(np.any(lora._get(adapters, p)["lora_b"]) for p in lora.adapter_paths(adapters))
  tuned = trainer.eval_step(result.state.params, trainer.shard_batch(encdec_batch(1)))
  assert float(tuned["loss"]) < losses[1]
  # The first step's loss is the base model's (B = 0, dropout only scales zeros).
  _, aux = jax.jit(model.loss_fn)(base_params, encdec_batch(1), None)
  assert losses[1] == pytest.approx(float(aux["loss_sum"] / aux["num_tokens"]), rel=1e-5)


def test_no_optimizer_state_for_the_base(base, straight):
  result, _, _ = straight
  adapters = result.state.params
  structure = jax.tree.structure(adapters)
  n_adapter = lora.num_params(adapters)
  adam = result.state.opt_state[0]
  assert jax.tree.structure(adam.mu) == structure == jax.tree.structure(adam.nu)
  n_opt = sum(x.size for x in jax.tree.leaves(result.state.opt_state))
  assert n_opt <= 2 * n_adapter + 1  # mu, nu and the count
  assert n_adapter < lora.num_params(base[1]) / 4


def test_adapter_checkpoint_is_small_and_names_its_base(base, straight):
  _, base_params, base_path = base
  _, _, model_dir = straight
  record = adapters_io.find_record(model_dir / "checkpoints" / str(STEPS))[1]
  assert record["base"]["path"] == os.path.abspath(base_path)
  assert record["base"]["fingerprint"] == adapters_io.fingerprint(base_params)
  assert lora.LoraConfig.from_json(record["lora"]) == CONFIG
  # What the checkpoint stores (array bytes) against a full run's params + Adam state.
  step_dir = model_dir / "checkpoints" / str(STEPS)
  metadata = ocp.PyTreeCheckpointer().metadata(step_dir / "state").item_metadata.tree
  stored = sum(
    int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(metadata, is_leaf=lambda x: hasattr(x, "shape"))
  )
  full = 3 * sum(x.nbytes for x in jax.tree.leaves(base_params))
  assert stored < 0.35 * full, (stored, full)
  names = {k for k, _ in jax.tree_util.tree_flatten_with_path(metadata["params"])[0]}
  assert names and all(str(k[-1].key) in ("lora_a", "lora_b") for k in names)


def test_resume_is_exact(base, straight, tmp_path):
  model, _, base_path = base
  result, straight_losses, _ = straight
  losses: dict[int, float] = {}
  first = _finetune(model, base_path, tmp_path, 2, losses)
  assert first.start_step == 0
  second = _finetune(model, base_path, tmp_path, STEPS, losses)
  assert second.start_step == 2
  assert losses == straight_losses
  for x, y in zip(jax.tree.leaves(second.state.params), jax.tree.leaves(result.state.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_with_another_base_fails(base, tmp_path):
  model, base_params, base_path = base
  _finetune(model, base_path, tmp_path / "run", 2)
  other = _write_base(tmp_path / "other", jax.tree.map(lambda x: x * 1.5, base_params))
  with pytest.raises(adapters_io.BaseMismatchError, match="differ"):
    _finetune(model, other, tmp_path / "run", STEPS)


def _model_gin(path: pathlib.Path) -> str:
  lines = [
    "from __gin__ import dynamic_registration",
    "from t5x_ext.model import models",
    "from t5x_ext.model import network",
    "MODEL = @models.EncoderDecoderModel()",
    "models.EncoderDecoderModel.config = @network.TransformerConfig()",
  ]
  lines += [f"network.TransformerConfig.{k} = {v!r}" for k, v in TINY.items()]
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_merge_gives_the_adapter_models_logits_and_exports(base, straight, tmp_path):
  model, _, base_path = base
  result, _, model_dir = straight
  gin_file = _model_gin(tmp_path / "tiny_model.gin")
  out = tmp_path / "merged"
  assert (
    merge.main([f"--adapters={model_dir}", f"--output_dir={out}", f"--gin_file={gin_file}"]) == 0
  )
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, np.float32), jax.device_get(result.trainer.frozen)
  )
  merged = checkpointing.restore_params(out, abstract)
  trainer = result.trainer
  adapted = jax.device_get(trainer.model_params(result.state.params, trainer.frozen))
  batch = encdec_batch(7)
  np.testing.assert_allclose(
    _logits(model, merged, batch), _logits(model, adapted, batch), rtol=1e-6, atol=1e-6
  )
  # Not the base's logits: the adapters are in.
  base_params = checkpointing.restore_params(base_path, abstract)
  assert not np.allclose(_logits(model, merged, batch), _logits(model, base_params, batch))
  # A different base is refused.
  with pytest.raises(adapters_io.BaseMismatchError):
    merge.merge_checkpoint(
      model,
      model_dir,
      tmp_path / "wrong",
      base=_write_base(tmp_path / "b2", jax.tree.map(lambda x: x + 1, base_params)),
    )
  # The merged checkpoint exports to Transformers like converted weights.
  from t5x_ext.hf import export

  hf_dir = tmp_path / "hf"
  export.main(
    [f"--checkpoint={out}", f"--output_dir={hf_dir}", f"--gin_file={gin_file}", "--vocabulary=none"]
  )
  assert (hf_dir / "config.json").exists()
  assert any(hf_dir.glob("model*.safetensors"))


def test_evaluators_decode_with_merged_params(straight):
  result, _, _ = straight
  seen = []

  class Evaluator:
    seqio_fn = staticmethod(seen.append)

  evaluator = finetune.decode_merged(Evaluator(), result.trainer)
  evaluator.seqio_fn(result.state.params)
  merged = jax.device_get(result.trainer.merged_params(result.state.params))
  assert jax.tree.structure(seen[0]) == jax.tree.structure(merged)
  for x, y in zip(jax.tree.leaves(seen[0]), jax.tree.leaves(merged)):
    np.testing.assert_array_equal(np.asarray(x), y)


def test_decoder_only_trains_its_adapters_only():
  model = models.DecoderOnlyModel(tiny_config(decoder_only=True, num_encoder_layers=0))
  batch = decoder_only_batch(0)
  params = jax.device_get(nn.unbox(model.init_variables(jax.random.key(0), batch)["params"]))
  trainer = LoraTrainer(model, optax.adam(1e-2), partitioning.make_mesh({"data": -1}), lora=CONFIG)
  trainer.set_base(params, batch)
  state = trainer.init_state(jax.random.key(0), batch)
  assert {p[-2] for p in lora.adapter_paths(state.params)} == {"self_attention", "mlp"}
  losses = []
  for _ in range(3):
    state, metrics = trainer.train_step(state, trainer.shard_batch(decoder_only_batch(1)))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0]
  for x, y in zip(jax.tree.leaves(jax.device_get(trainer.frozen)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(x, y)


def test_bf16_base_keeps_fp32_adapters(base, tmp_path):
  model, base_params, base_path = base
  config = lora.LoraConfig(rank=4, base_dtype="bfloat16")
  mesh = partitioning.make_mesh({"data": -1})
  trainer = LoraTrainer(model, optax.adam(1e-2), mesh, lora=config)
  batch = encdec_batch(1)
  trainer.load_base(base_path, batch)
  assert {x.dtype for x in jax.tree.leaves(trainer.frozen)} == {np.dtype("bfloat16")}
  state = trainer.init_state(jax.random.key(0), batch)
  before = jax.device_get(trainer.frozen)
  # Ahead-of-time compilation (the memory plan's path) takes the frozen base as an argument.
  trainer.compile_train_step(batch)
  assert trainer.compiled_train_step is not None
  for _ in range(2):
    state, metrics = trainer.train_step(state, trainer.shard_batch(batch))
  assert np.isfinite(float(metrics["loss"]))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(trainer.frozen))):
    np.testing.assert_array_equal(x, y)
  # The adapted kernels are float32: a small update is not rounded away in bf16.
  adapted = trainer.model_params(state.params, trainer.frozen)
  kernel = adapted["encoder"]["layers_0"]["attention"]["query"]["kernel"]
  assert kernel.dtype == np.float32


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
      "tests/test_peft_lora_eight_devices.py",
    ],
    capture_output=True,
    text=True,
    timeout=1500,
    env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    cwd=pathlib.Path(__file__).parent.parent,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
  assert " passed" in proc.stdout and "skipped" not in proc.stdout
