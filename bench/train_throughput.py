"""End-to-end training throughput: the real trainer on the real MoD data pipeline.

  python bench/train_throughput.py                       # tiny and small, defaults below
  python bench/train_throughput.py --configs=tiny --steps=300 --batch=8
  python bench/train_throughput.py --configs=small --steps=200 --batch=32 --dtype=bfloat16

For each config it builds the model from its gin file, the UL2 mixture on the embedded
corpus (`pydocs_ul2_mod_v1`, 512 input / 128 target positions by default) through
`t5x_ext.data.get_batches`, and runs `Trainer.train_step` fed by the same prefetching thread
as `python -m t5x_ext.train` (`t5x_ext.training.loop.Prefetcher`). Prints one JSON object per config
on stdout (progress on stderr):

  steps_per_s, tokens_per_s (batch positions), target_tokens_per_s (real target tokens),
  compile_s (lowering + XLA compile of the train step), first_batch_s (pipeline start-up),
  peak_host_mem_mb (max RSS of the process so far), input_wait_share (share of the timed
  loop spent waiting for the next batch; goal < 5%), model_tflops_per_s and mfu (when the
  device's peak is known), device.

The first `--warmup` steps are not timed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIGS = {
  # The main job's model (gin/local/ul2_tiny.gin).
  "tiny": "local/tiny_model.gin",
  "small": "models/t5_1_1/small.gin",
}


def _model(gin_file: str, dtype: str | None):
  import gin
  from t5x_ext.launch import flags as cli

  bindings = [f"network.TransformerConfig.dtype = '{dtype}'"] if dtype else []
  cli.parse_gin([gin_file], bindings)
  model = copy.deepcopy(gin.query_parameter("MODEL/macro.value"))
  gin.clear_config(clear_constants=True)
  return model


def _peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run(config: str, args) -> dict:
  """Benchmarks one config; returns the JSON-able result."""
  import jax

  from t5x_ext.data import pipeline
  from t5x_ext.training import flops, optimizers, partitioning
  from t5x_ext.training.loop import Prefetcher
  from t5x_ext.training.trainer import Trainer

  model = _model(CONFIGS[config], args.dtype)
  lengths = {"inputs": args.inputs, "targets": args.targets}
  mesh = partitioning.make_mesh({"data": -1})
  partitioning.validate_batch_size(args.batch, mesh)
  t0 = time.perf_counter()
  data = pipeline.get_batches(
    args.task, lengths, batch_size=args.batch, feature_converter_name=model.feature_converter_name
  )
  first = next(data)
  first_batch_s = time.perf_counter() - t0
  trainer = Trainer(
    model,
    optimizers.make_optimizer(learning_rate=0.01),
    mesh,
    learning_rate_fn=0.01,
    denoiser_names=[f"d{k}" for k in range(7)],
  )
  state = trainer.init_state(jax.random.key(0), first)
  compile_s = trainer.compile_train_step(first)
  batches = Prefetcher(data, trainer.shard_batch, size=args.prefetch)
  for _ in range(args.warmup):
    state, m = trainer.train_step(state, next(batches)[0])
  jax.block_until_ready(m)
  wait0 = batches.wait_seconds
  target_tokens = 0.0
  pending = []
  start = time.perf_counter()
  for i in range(args.steps):
    state, m = trainer.train_step(state, next(batches)[0])
    pending.append(m["num_tokens"])
    if (i + 1) % 50 == 0:
      target_tokens += float(sum(jax.device_get(pending)))
      pending = []
      print(f"[{config}] step {i + 1}/{args.steps}", file=sys.stderr, flush=True)
  jax.block_until_ready(m)
  target_tokens += float(sum(jax.device_get(pending)))
  seconds = time.perf_counter() - start
  waited = batches.wait_seconds - wait0
  batches.close()
  positions = args.batch * (args.inputs + args.targets)
  flops_step = flops.training_flops_per_step(model.config, lengths, args.batch)
  device = jax.devices()[0]
  peak = flops.peak_flops_per_device(device.device_kind)
  out = {
    "config": config,
    "gin_file": CONFIGS[config],
    "dtype": model.config.dtype,
    "task": args.task,
    "batch": args.batch,
    "lengths": lengths,
    "steps": args.steps,
    "steps_per_s": args.steps / seconds,
    "tokens_per_s": positions * args.steps / seconds,
    "target_tokens_per_s": target_tokens / seconds,
    "compile_s": compile_s,
    "first_batch_s": first_batch_s,
    "peak_host_mem_mb": _peak_mb(),
    "input_wait_share": waited / seconds,
    "model_tflops_per_s": flops_step * args.steps / seconds / 1e12,
    "device": f"{jax.device_count()} x {device.device_kind}",
  }
  if peak:
    out["mfu"] = flops_step * args.steps / seconds / (peak * jax.device_count())
  return out


def main(argv=None) -> None:
  """Parses flags, runs each config and prints one JSON line per config."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="tiny,small", help="comma-separated: tiny, small")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=128)
  parser.add_argument("--task", default="pydocs_ul2_mod_v1")
  parser.add_argument("--dtype", default=None, help="override compute dtype (float32/bfloat16)")
  parser.add_argument("--prefetch", type=int, default=2)
  args = parser.parse_args(argv)
  for config in args.configs.split(","):
    if config not in CONFIGS:
      raise SystemExit(f"--configs: unknown config {config!r}; choose from {sorted(CONFIGS)}")
    print(json.dumps(run(config, args)), flush=True)


if __name__ == "__main__":
  main()
