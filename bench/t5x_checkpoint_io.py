"""T5X checkpoint I/O at scale: memory and speed of conversion and sharded restore.

Writes a synthetic native T5X checkpoint (random bfloat16 weights, T5.1.1/UL2 naming) of a
T5.1.1-shaped encoder-decoder, then measures, each phase in a fresh child process (so its
peak RSS is its own):

  convert      `python -m t5x_ext.t5x_ckpt.convert`: read, cast to float32 and write the
               Orbax params tensor by tensor
  restore_8    `checkpointing.restore_params` of the T5X directory onto 8 simulated CPU
               devices (fsdp=8, bfloat16 target): every device's slice read by TensorStore
  host_slice   what one host of an 8-host job reads: only device 0's slice of every
               parameter (the callbacks `restore_params` runs on that host)

and prints one JSON object: per phase seconds, seconds per GB (of the stored checkpoint),
peak RSS, the RSS before the work started, and (restore) the bytes of the shards it holds
at the end; plus the largest tensor and the total size, so the peaks can be compared with
them. Everything is written under a temporary directory that is deleted at the end.

  python bench/t5x_checkpoint_io.py                 # ~1.26B parameters, ~2.5 GB bf16
  python bench/t5x_checkpoint_io.py --size=tiny     # a few MB (the smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# T5.1.1-shaped networks (gated-SiLU MLP as in UL2). `1b`: d_model 2048 (XL's width) with
# 10 + 10 layers, ~1.26B parameters.
SIZES = {
  "1b": dict(
    vocab_size=32128,
    emb_dim=2048,
    num_heads=32,
    head_dim=64,
    mlp_dim=5120,
    num_encoder_layers=10,
    num_decoder_layers=10,
  ),
  "tiny": dict(
    vocab_size=512,
    emb_dim=64,
    num_heads=4,
    head_dim=16,
    mlp_dim=128,
    num_encoder_layers=2,
    num_decoder_layers=2,
  ),
}
DEVICES = 8


def _log(msg: str) -> None:
  print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _config(size: str, **overrides):
  from t5x_ext.model import network

  fields = dict(SIZES[size], activations=("silu", "linear"), dtype="bfloat16")
  fields.update(overrides)
  return network.TransformerConfig(**fields)


def _rss() -> int:
  import psutil

  return psutil.Process().memory_info().rss


def _peak_rss() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _shapes(config) -> dict:
  from t5x_ext.t5x_ckpt import convert

  return convert.model_shapes(config)


def phase_write(work: pathlib.Path, size: str, compressor: str = "gzip") -> dict:
  """Writes the synthetic checkpoint, one random tensor at a time."""
  import ml_dtypes
  import numpy as np

  from t5x_ext.t5x_ckpt import names, t5x_format

  config = _config(size)
  shapes = _shapes(config)
  rng = np.random.default_rng(0)
  # One random block (4M values, 8 MiB: far beyond gzip's 32 KiB window, so the data stays
  # as incompressible as real weights), tiled at a random offset into each tensor: drawing
  # 1B normals would dominate the write.
  block = (rng.standard_normal(1 << 22, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)

  def factory(name, shape):
    def make():
      n = int(np.prod(shape))
      start = int(rng.integers(block.size))
      reps = -(-(n + start) // block.size)
      x = np.tile(block, reps)[start : start + n].reshape(shape)
      return names._to_stored(name, x)

    return make

  baseline, t0 = _rss(), time.perf_counter()
  # to_t5x_names needs arrays; the 't5x' naming is a rename + reshape per tensor, so map
  # names here and hand the writer factories.
  target = {}
  for name, shape in shapes.items():
    stored = "decoder/logits_dense/kernel" if name == "logits_dense/kernel" else name
    target[stored] = factory(name, shape)
  t5x_format.write_checkpoint(
    work / "t5x", 1000, target, compressor={"id": "gzip"} if compressor == "gzip" else None
  )
  seconds = time.perf_counter() - t0
  n = sum(int(np.prod(s)) for s in shapes.values())
  largest = max(shapes.items(), key=lambda kv: int(np.prod(kv[1])))
  return {
    "seconds": seconds,
    "params": n,
    "stored_bytes": n * 2,
    "compressor": compressor,
    "bytes_on_disk": sum(f.stat().st_size for f in (work / "t5x").rglob("*") if f.is_file()),
    "largest_tensor": {
      "name": largest[0],
      "shape": list(largest[1]),
      "bytes_bf16": int(np.prod(largest[1])) * 2,
      "bytes_fp32": int(np.prod(largest[1])) * 4,
    },
    "rss_before": baseline,
    "peak_rss": _peak_rss(),
  }


def phase_convert(work: pathlib.Path, size: str) -> dict:
  """`convert.convert` of the synthetic checkpoint (float32 Orbax output)."""
  from t5x_ext.t5x_ckpt import convert

  baseline, t0 = _rss(), time.perf_counter()
  convert.convert(work / "t5x", work / "converted", activations=("silu", "linear"))
  seconds = time.perf_counter() - t0
  written = sum(f.stat().st_size for f in (work / "converted").rglob("*") if f.is_file())
  return {
    "seconds": seconds,
    "written_bytes": written,
    "rss_before": baseline,
    "peak_rss": _peak_rss(),
  }


def _target(size: str):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from t5x_ext.model import network
  from t5x_ext.training import partitioning

  config = _config(size, param_dtype="bfloat16")
  mesh = partitioning.make_mesh({"fsdp": DEVICES})
  tokens = jnp.ones((1, 4), jnp.int32)
  boxed = jax.eval_shape(
    lambda: network.EncoderDecoder(config).init(jax.random.key(0), tokens, tokens, tokens)
  )["params"]
  shardings = partitioning.logical_shardings(boxed, mesh)
  return partitioning.with_shardings(nn.unbox(boxed), shardings)


def phase_restore(work: pathlib.Path, size: str) -> dict:
  """Sharded restore onto 8 simulated devices, bfloat16 target."""
  import jax

  from t5x_ext.training import checkpointing

  assert jax.device_count() == DEVICES, jax.devices()
  target = _target(size)
  baseline, t0 = _rss(), time.perf_counter()
  params = checkpointing.restore_params(work / "t5x", target)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - t0
  held = sum(s.data.nbytes for x in jax.tree.leaves(params) for s in x.addressable_shards)
  return {
    "seconds": seconds,
    "devices": jax.device_count(),
    "shard_bytes_held": held,
    "rss_before": baseline,
    "peak_rss": _peak_rss(),
  }


def phase_host_slice(work: pathlib.Path, size: str) -> dict:
  """Reads only device 0's slice of every parameter: one host's share of an 8-host job."""
  import jax
  import numpy as np

  from t5x_ext.t5x_ckpt import names
  from t5x_ext.t5x_ckpt.t5x_format import T5XCheckpoint

  target = names.flatten(_target(size))
  ckpt = T5XCheckpoint(work / "t5x")
  readers = names.plan(ckpt.params, {n: x.shape for n, x in target.items()})
  baseline, t0 = _rss(), time.perf_counter()
  read = 0
  device = jax.devices()[0]
  for name, x in target.items():
    index = x.sharding.devices_indices_map(x.shape)[device]
    read += np.asarray(readers[name].read(index)).nbytes
  seconds = time.perf_counter() - t0
  return {"seconds": seconds, "bytes_read": read, "rss_before": baseline, "peak_rss": _peak_rss()}


PHASES = {
  "write": phase_write,
  "convert": phase_convert,
  "restore_8": phase_restore,
  "host_slice": phase_host_slice,
}


def _child(phase: str, work: pathlib.Path, size: str, compressor: str) -> dict:
  env = dict(os.environ)
  if phase in ("restore_8", "host_slice"):
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
  env["JAX_PLATFORMS"] = "cpu"
  cmd = [sys.executable, __file__, f"--phase={phase}", f"--workdir={work}", f"--size={size}"]
  cmd.append(f"--compressor={compressor}")
  _log(f"{phase} ...")
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"phase {phase} failed:\n{proc.stderr[-4000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  _log(f"{phase}: {result['seconds']:.1f} s, peak RSS {result['peak_rss'] / 2**30:.2f} GiB")
  return result


def _machine() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main() -> None:
  """Runs the phases (or one of them, in a child) and prints the JSON report."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="1b")
  parser.add_argument("--workdir", default=None, help="default: a new temporary directory")
  parser.add_argument("--phase", choices=sorted(PHASES), default=None, help="(internal)")
  parser.add_argument("--keep", action="store_true", help="keep the files written")
  parser.add_argument(
    "--compressor", choices=["gzip", "raw"], default="gzip", help="zarr chunks (T5X: gzip)"
  )
  args = parser.parse_args()
  if args.phase:
    extra = {"compressor": args.compressor} if args.phase == "write" else {}
    print(json.dumps(PHASES[args.phase](pathlib.Path(args.workdir), args.size, **extra)))
    return
  work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="t5x_ckpt_bench_"))
  work.mkdir(parents=True, exist_ok=True)
  free = shutil.disk_usage(work).free
  report = {
    "machine": _machine(),
    "cpus": os.cpu_count(),
    "size": args.size,
    "workdir_free_bytes": free,
  }
  try:
    load_before = os.getloadavg()
    for phase in PHASES:
      report[phase] = _child(phase, work, args.size, args.compressor)
    report["load_average"] = {"before": load_before, "after": os.getloadavg()}
  finally:
    if not args.keep:
      shutil.rmtree(work, ignore_errors=True)
  stored_gb = report["write"]["stored_bytes"] / 1e9
  largest = report["write"]["largest_tensor"]
  for phase in ("convert", "restore_8", "host_slice"):
    r = report[phase]
    r["seconds_per_gb"] = r["seconds"] / stored_gb
    r["peak_rss_over_before"] = r["peak_rss"] - r["rss_before"]
    r["peak_rss_over_before_per_largest_tensor_fp32"] = (
      r["peak_rss_over_before"] / largest["bytes_fp32"]
    )
    r["peak_rss_over_before_per_total_bf16"] = (
      r["peak_rss_over_before"] / report["write"]["stored_bytes"]
    )
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
