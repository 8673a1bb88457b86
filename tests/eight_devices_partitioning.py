"""Sharded state, batches and checkpoints on 8 simulated CPU devices.

Not collected by the normal run (the name does not start with `test_`): jax must start with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`, so `test_partitioning.py` runs this file
in a subprocess. Run it alone with:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/eight_devices_partitioning.py
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from t5x_ext.model import axes, network
from t5x_ext.training import checkpointing, optimizers, partitioning

pytestmark = pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 (simulated) devices")

MESH_3D = {"data": 2, "fsdp": 2, "model": 2}


def _config(**overrides):
  base = dict(
    vocab_size=1024,
    emb_dim=64,
    num_heads=4,
    head_dim=16,
    mlp_dim=128,
    num_encoder_layers=1,
    num_decoder_layers=1,
    dtype="float32",
  )
  base.update(overrides)
  return network.TransformerConfig(**base)


def _init_fn(cfg):
  def init(rng):
    if cfg.decoder_only:
      tokens = jnp.ones((8, 16), jnp.int32)
      return network.DecoderOnly(cfg).init(rng, tokens, tokens)["params"]
    tokens = jnp.ones((8, 16), jnp.int32)
    return network.EncoderDecoder(cfg).init(rng, tokens, tokens, tokens)["params"]

  return init


@pytest.mark.parametrize(
  "overrides",
  [
    dict(),
    dict(scan_layers=True),
    dict(decoder_only=True, num_encoder_layers=0),
  ],
  ids=["encdec", "encdec_scanned", "decoder_only"],
)
def test_default_rules_leave_no_large_parameter_replicated(overrides):
  # A T5.1.1-base-like width (d_model 768, d_ff 2048, 32k vocab): every matrix is > 1 MiB.
  cfg = _config(vocab_size=32128, emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048, **overrides)
  abstract = jax.eval_shape(_init_fn(cfg), jax.random.key(0))
  for shape in (MESH_3D, {"fsdp": 8}, {"model": 4, "data": -1}):
    mesh = partitioning.make_mesh(shape)
    shardings = partitioning.logical_shardings(abstract, mesh)
    params = nn_unbox(abstract)
    big = [p for p in jax.tree.leaves(params) if np.prod(p.shape) * p.dtype.itemsize >= 1 << 20]
    assert len(big) >= 8  # embeddings, attention and MLP matrices
    assert partitioning.fully_replicated_params(params, shardings) == [], shape
    partitioning.check_params_sharded(params, mesh, shardings)


def nn_unbox(tree):
  return nn.unbox(tree)


def test_check_params_sharded_names_replicated_parameters_when_rules_miss_them():
  cfg = _config(vocab_size=8192, emb_dim=256)
  abstract = jax.eval_shape(_init_fn(cfg), jax.random.key(0))
  mesh = partitioning.make_mesh(MESH_3D)
  rules = [(name, None) for name, _ in partitioning.DEFAULT_RULES]
  shardings = partitioning.logical_shardings(abstract, mesh, rules)
  with pytest.raises(ValueError, match="token_embedder/embedding"):
    partitioning.check_params_sharded(nn_unbox(abstract), mesh, shardings)
  # Pure data parallelism replicates on purpose: no complaint.
  dp = partitioning.make_mesh({"data": 8})
  partitioning.check_params_sharded(
    nn_unbox(abstract), dp, partitioning.logical_shardings(abstract, dp, rules)
  )


@pytest.fixture(scope="module")
def sharded():
  """The small network's params, initialised sharded on MESH_3D (compiled once per module)."""
  init = _init_fn(_config())
  mesh = partitioning.make_mesh(MESH_3D)
  params, shardings = partitioning.sharded_init(init, jax.random.key(3), mesh=mesh)
  return init, params, shardings


def test_sharded_init_places_params_by_rules_with_the_same_values_as_one_device(sharded):
  init, params, shardings = sharded
  emb = params["token_embedder"]["embedding"]  # [vocab, embed]
  assert emb.sharding.spec == P("model", "fsdp")
  assert emb.addressable_shards[0].data.shape == (1024 // 2, 64 // 2)
  wi = params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]  # [embed, mlp]
  assert wi.sharding.spec == P("fsdp", "model")
  assert jax.tree.map(lambda x: x.sharding, params) == shardings
  reference = jax.jit(lambda r: nn_unbox(init(r)), out_shardings=None)(jax.random.key(3))
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, reference
  )


def test_parameter_dims_that_do_not_divide_the_mesh_fail_naming_the_parameter():
  cfg = _config(num_heads=6, head_dim=16)
  abstract = jax.eval_shape(_init_fn(cfg), jax.random.key(0))
  mesh = partitioning.make_mesh({"model": 4, "data": -1})
  with pytest.raises(ValueError, match=r"Parameter .*(rel_embedding|kernel).* size 6.*model"):
    partitioning.logical_shardings(abstract, mesh)


def test_optimizer_state_is_sharded_like_the_params(sharded):
  _, params, shardings = sharded
  key = ("encoder", "layers_0", "mlp", "wi_0", "kernel")  # [64 embed->fsdp, 128 mlp->model]

  def get(tree):
    for k in key:
      tree = tree[k]
    return tree

  tx = optimizers.adafactor(1e-2, min_dim_size_to_factor=32)
  state, _ = partitioning.init_optimizer_state(tx, params, shardings)
  factored = state[0]
  # Factored statistics drop one axis each and keep the other's sharding.
  assert get(factored.v_row).sharding.spec == P("fsdp")
  assert get(factored.v_col).sharding.spec == P("model")

  # An attention kernel is factored as one matrix [embed, heads * head_dim] (as in T5X):
  # each statistic keeps the sharding of the axis it was not averaged over (optax's v_row
  # averages over the larger axis, the last one of two the same size).
  def query(tree):  # [64 embed, 4 heads, 16 head_dim]
    return tree["encoder"]["layers_0"]["attention"]["query"]["kernel"]

  assert query(params).sharding.spec == P("fsdp", "model", None)
  assert query(factored.v_row).shape == (64,) and query(factored.v_col).shape == (64,)
  assert query(factored.v_row).sharding.spec == P("fsdp")
  assert query(factored.v_col).sharding.spec == P("model")

  tx = optimizers.make_optimizer("adamw", learning_rate=1e-3, grad_clip=1.0, weight_decay=0.1)
  state, _ = partitioning.init_optimizer_state(tx, params, shardings)
  adam = state[1][0]
  assert get(adam.mu).sharding.spec == P("fsdp", "model")
  assert get(adam.nu).sharding.spec == P("fsdp", "model")
  assert adam.count.sharding.is_fully_replicated


def test_global_batch_is_split_over_data_and_fsdp():
  mesh = partitioning.make_mesh(MESH_3D)
  partitioning.validate_batch_size(8, mesh)
  with pytest.raises(
    ValueError, match=r"BATCH_SIZE = 6 does not divide over the data-parallel size 4"
  ):
    partitioning.validate_batch_size(6, mesh)
  partitioning.validate_batch_size(16, mesh, num_microbatches=4)
  with pytest.raises(
    ValueError, match=r"NUM_MICROBATCHES = 4 with BATCH_SIZE = 8: .* multiple of 16"
  ):
    partitioning.validate_batch_size(8, mesh, num_microbatches=4)
  local = {"tokens": np.arange(8 * 5, dtype=np.int32).reshape(8, 5)}
  batch = partitioning.make_global_batch(local, mesh)
  assert batch["tokens"].sharding == NamedSharding(mesh, P(("data", "fsdp")))
  assert {s.data.shape for s in batch["tokens"].addressable_shards} == {(2, 5)}
  np.testing.assert_array_equal(np.asarray(batch["tokens"]), local["tokens"])
  assert partitioning.process_batch_shard(mesh) == (0, 1)


def test_gradient_accumulation_on_a_sharded_batch_matches_the_full_batch():
  mesh = partitioning.make_mesh(MESH_3D)
  rng = np.random.default_rng(0)
  batch = {
    "x": rng.normal(size=(16, 6, 8)).astype(np.float32),
    "w": (rng.random((16, 6)) < 0.5).astype(np.float32),
  }
  params = {"k": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}

  def loss_fn(p, b, _):
    tok = jnp.sum(jnp.tanh(b["x"] @ p["k"]) ** 2, -1) * b["w"]
    n = jnp.sum(b["w"])
    return jnp.sum(tok) / n, {"num_tokens": n, "token_loss": tok}

  global_batch = partitioning.make_global_batch(batch, mesh)

  @jax.jit
  def run(p, b):
    full = optimizers.accumulate_gradients(loss_fn, p, b, 1, jax.random.key(0))
    micro = optimizers.accumulate_gradients(loss_fn, p, b, 4, jax.random.key(0))
    return full, micro

  (l1, a1, g1), (l4, a4, g4) = run(params, global_batch)
  np.testing.assert_allclose(l4, l1, rtol=1e-6)
  np.testing.assert_allclose(g4["k"], g1["k"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a4["token_loss"], a1["token_loss"], rtol=1e-6)


def test_activation_constraints_apply_inside_axis_rules():
  mesh = partitioning.make_mesh(MESH_3D)
  x = partitioning.make_global_batch({"x": np.ones((8, 16), np.float32)}, mesh)["x"]

  def f(x):
    return nn.with_logical_constraint(x * 2, (axes.BATCH, axes.ACT_MLP))

  with partitioning.axis_rules(mesh):
    constrained = jax.jit(f)(x)
  assert constrained.sharding.spec == P(("data", "fsdp"), "model")
  # Outside the context flax drops the constraint: the batch sharding just propagates.
  assert jax.jit(f)(x).sharding.spec != P(("data", "fsdp"), "model")


def test_microbatch_split_needs_no_communication():
  # Microbatch m takes rows m, m+M, ...: every device keeps its own rows. A contiguous split
  # would all-gather the batch (the compiled step then has all-gathers).
  mesh = partitioning.make_mesh({"data": 4, "fsdp": 2})
  batch = partitioning.make_global_batch(
    {"x": np.ones((32, 16, 8), np.float32), "w": np.ones((32, 16), np.float32)}, mesh
  )
  params = {"k": jnp.ones((8, 4))}

  def loss_fn(p, b, _):
    tok = jnp.sum(jnp.tanh(b["x"] @ p["k"]) ** 2, -1) * b["w"]
    return jnp.sum(tok) / jnp.sum(b["w"]), {"num_tokens": jnp.sum(b["w"]), "token_loss": tok}

  step = jax.jit(lambda p, b: optimizers.accumulate_gradients(loss_fn, p, b, 4, jax.random.key(0)))
  hlo = step.lower(params, batch).compile().as_text()
  assert "all-reduce" in hlo  # gradients and sums are reduced ...
  assert "all-gather" not in hlo and "all-to-all" not in hlo  # ... but the batch never moves


def test_checkpoint_restores_into_a_different_mesh(tmp_path, sharded):
  init, params, _ = sharded  # sharded over data x fsdp x model
  ckpt = checkpointing.Checkpointer(tmp_path, save_interval_steps=1, handle_sigterm=False)
  ckpt.save(1, {"params": params}, {"batches": 1})
  ckpt.close()

  mesh = partitioning.make_mesh({"fsdp": 4, "model": 2})
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = partitioning.logical_shardings(abstract, mesh)
  target = {"params": partitioning.with_shardings(nn_unbox(abstract), shardings)}
  ckpt = checkpointing.Checkpointer(tmp_path, handle_sigterm=False)
  restored, data, step = ckpt.restore_latest(target)
  ckpt.close()
  assert (step, data) == (1, {"batches": 1})
  emb = restored["params"]["token_embedder"]["embedding"]
  assert emb.sharding.spec == P("model", "fsdp")
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
    restored["params"],
    params,
  )
  # Params-only restore (fine-tuning) lands in the target shardings too.
  only = checkpointing.restore_params(tmp_path, target["params"])
  assert only["token_embedder"]["embedding"].sharding.spec == P("model", "fsdp")
