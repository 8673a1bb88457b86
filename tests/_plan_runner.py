"""Checks the memory plan against a real CPU run; prints one `REPORT {json}` line.

Run by tests/test_plan.py in a subprocess with 4 simulated CPU devices:
`python -m tests._plan_runner`. Five compiles of tiny models in all.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess

# The CLI's micro model: gin/local/ul2_tiny.gin shrunk, on a data x fsdp mesh.
MICRO_FLAGS = [
  "--gin_file=local/ul2_tiny.gin",
  "--gin.t5x_ext.network.TransformerConfig.emb_dim=32",
  "--gin.t5x_ext.network.TransformerConfig.num_heads=2",
  "--gin.t5x_ext.network.TransformerConfig.head_dim=16",
  "--gin.t5x_ext.network.TransformerConfig.mlp_dim=64",
  "--gin.t5x_ext.network.TransformerConfig.num_encoder_layers=1",
  "--gin.t5x_ext.network.TransformerConfig.num_decoder_layers=1",
  "--gin.VOCAB_SIZE=128",
  "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}",
  "--gin.BATCH_SIZE=8",
  "--gin.MESH_SHAPE={'data': 2, 'fsdp': 2}",
  "--gin.MODEL_DIR='/tmp/unused'",
]


def _rss() -> dict[str, int]:
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key in ("VmRSS", "VmHWM"):
        out[key] = int(value.split()[0]) * 1024
  return out


def _reset_peak_rss() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # resets VmHWM to the current RSS (Linux)
    return True
  except OSError:
    return False


def _real_batch(model, lengths, batch_size):
  import numpy as np

  from t5x_ext.training import memory_plan

  rng = np.random.default_rng(0)
  batch = {}
  for k, v in memory_plan.abstract_batch(model, lengths, batch_size).items():
    if k.endswith("_positions"):
      batch[k] = np.broadcast_to(np.arange(v.shape[1], dtype=np.int32), v.shape).copy()
    elif k.endswith(("_segment_ids", "_loss_weights", "_denoiser_ids")):
      batch[k] = np.ones(v.shape, np.int32)
    else:
      batch[k] = rng.integers(2, 100, v.shape).astype(np.int32)
  return batch


def _live_bytes_on(device) -> int:
  import jax

  return sum(
    s.data.nbytes for a in jax.live_arrays() for s in a.addressable_shards if s.device == device
  )


def _trainer(model, mesh_shape, devices):
  from t5x_ext.training import optimizers, partitioning
  from t5x_ext.training.trainer import Trainer

  mesh = partitioning.make_mesh(mesh_shape, devices=devices)
  return Trainer(model, optimizers.make_optimizer("adafactor", learning_rate=0.01), mesh)


def real_run_on_one_device(report):
  """Temporaries big enough (~170 MB) to see in the process's peak RSS during one step."""
  import jax

  from t5x_ext.model import models, network
  from t5x_ext.training import memory_plan

  config = network.TransformerConfig(
    vocab_size=2048,
    emb_dim=256,
    num_heads=4,
    head_dim=64,
    mlp_dim=1024,
    num_encoder_layers=1,
    num_decoder_layers=1,
    activations=("gelu", "linear"),
    dtype="float32",
  )
  model = models.EncoderDecoderModel(config)
  trainer = _trainer(model, {"data": 1}, jax.devices()[:1])
  batch = _real_batch(model, {"inputs": 128, "targets": 64}, 16)
  lines = []
  plan = memory_plan.check_fits(trainer, batch, say=lines.append)
  state = trainer.init_state(jax.random.key(0), batch)
  global_batch = trainer.shard_batch(batch)
  reset = _reset_peak_rss()
  before = _rss()
  state, metrics = trainer.train_step(state, global_batch)
  jax.block_until_ready((state, metrics))
  after = _rss()
  report["one_device"] = {
    "plan": plan.to_dict(),
    "said": lines,
    "rss_reset": reset,
    "step_peak_rss_extra": after["VmHWM"] - before["VmRSS"],
    "live_bytes": _live_bytes_on(jax.devices()[0]),
    "loss": float(metrics["loss"]),
  }
  del state, metrics, global_batch


def real_run_sharded(report):
  """The micro model of the CLI on data=2 x fsdp=2: per-device live bytes vs the plan."""
  import jax

  import gin
  from t5x_ext import plan
  from t5x_ext.launch import flags as cli
  from t5x_ext.training import memory_plan

  _, gin_args = plan.parse_flags(MICRO_FLAGS)
  cli.parse_gin(gin_args.gin_files, gin_args.gin_bindings)
  settings = plan.train_settings()
  gin.clear_config()
  trainer, _ = plan.build_trainer(settings, jax.devices()[:4])
  batch = _real_batch(trainer.model, settings["task_feature_lengths"], settings["batch_size"])
  p = memory_plan.plan_train_step(trainer, batch)
  state = trainer.init_state(jax.random.key(0), batch)
  dev = jax.devices()[0]
  state_bytes = sum(
    s.data.nbytes for a in jax.tree.leaves(state) for s in a.addressable_shards if s.device == dev
  )
  global_batch = trainer.shard_batch(batch)
  state, metrics = trainer.train_step(state, global_batch)
  jax.block_until_ready((state, metrics))
  report["sharded"] = {
    "plan": p.to_dict(),
    "real_state_bytes_device0": state_bytes,
    "live_bytes_device0": _live_bytes_on(dev),
    "loss": float(metrics["loss"]),
  }
  del state, metrics, global_batch


def _cli(argv):
  from t5x_ext import plan

  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = plan.main(argv)
  return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def cli_runs(report):
  """The command in this process (JAX already has 4 devices), and its re-run for 8."""
  from t5x_ext import plan

  fits_exactly = report["sharded"]["plan"]["total_bytes"]
  report["cli_fits"] = _cli([*MICRO_FLAGS, f"--device_memory={fits_exactly}", "--max_compiles=1"])
  report["cli_too_big"] = _cli(
    [*MICRO_FLAGS, f"--device_memory={fits_exactly - 1}", "--max_compiles=0", "--json"]
  )
  # More devices than JAX started with: the command re-runs itself; a bad --device_memory
  # makes the child stop before compiling.
  calls = []
  real_run = subprocess.run

  def recording_run(args, **kwargs):
    calls.append({"args": list(args), "xla_flags": kwargs["env"].get("XLA_FLAGS", "")})
    return real_run(args, **kwargs)

  plan.subprocess.run = recording_run
  try:
    report["cli_rerun"] = _cli([*MICRO_FLAGS, "--num_devices=8", "--device_memory=lots"])
  finally:
    plan.subprocess.run = real_run
  report["cli_rerun"]["calls"] = calls


def main() -> None:
  import jax

  report = {"devices": jax.device_count()}
  real_run_on_one_device(report)
  real_run_sharded(report)
  cli_runs(report)
  print("REPORT " + json.dumps(report))


if __name__ == "__main__":
  main()
