"""How a training step's speed and memory grow with model size and input length.

  python bench/scaling.py [--models=tiny,small] [--lengths=512,1024,2048] \
      [--tokens_per_batch=2048] [--variants=plain,chunked] [--plot=docs/scaling.png]

For each T5.1.1 size (gin/models/t5_1_1/<size>.gin), each input length L and each variant, one
row: the project's own training step (`Trainer.train_step`: forward, backward, AdamW) on
random unpacked batches of L encoder and L * target_ratio decoder tokens, the batch size
shrinking as L grows so that every step sees the same number of encoder tokens
(`--tokens_per_batch`; batch = tokens_per_batch // L, at least 1). Variants:

  plain            the gin file as it is
  chunked          + network.TransformerConfig.attention_chunk_size = --chunk_size
  remat            + network.TransformerConfig.remat_policy = --remat_policy ('full')
  chunked_remat    both

Two kinds of memory figure, both bytes on one device:

  compiled_*       XLA's memory analysis of the compiled step (what `t5x_ext.training.memory_plan`
                   reports): arguments + outputs - donated + temporaries + code. The
                   compiler's plan, the same number on every run.
  measured_*       what the run used: on CPU the process's peak resident set (VmHWM) minus
                   its size before the model was built (also counts the compiler's own memory
                   and allocator slack); on a GPU/TPU the device's `peak_bytes_in_use`.

Each row runs in a fresh Python process (`--no_isolate` runs them in this one, which leaves
the measured figures out: a process's peak is not per row), and a row that fails (e.g. out
of memory) is reported with its error. Prints one JSON object: the machine (device kind,
ISA flags, load average) and `rows`; with `--plot=PATH`, a log-log plot of tokens/s and
memory against L. `--memory_only` compiles without running steps (fast, for big rows).
MFU is the step's model FLOP/s (`t5x_ext.training.flops.training_flops_per_step`) over the
device's dense bf16 peak (`flops.peak_flops_per_device`, the trainer's table) where the device
kind is known (TPU v2-v6e, NVIDIA A100/H100/H200/B200/L4), else null (CPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _common  # noqa: E402

from t5x_ext.training import flops  # noqa: E402

SIZES = ("tiny", "small", "base", "large", "xl", "xxl")
VARIANTS = ("plain", "chunked", "remat", "chunked_remat")
CONFIG = "network.TransformerConfig"


def peak_flops(device_kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of one JAX device of this kind, or None where unknown (CPUs).

  The trainer's table (`t5x_ext.training.flops`): one table for runs and benchmarks.

  Args:
    device_kind: `jax.Device.device_kind`, e.g. "NVIDIA H100 80GB HBM3", "TPU v4".

  Returns:
    FLOP/s, or None.
  """
  return flops.peak_flops_per_device(device_kind)


def cpu_isa() -> str:
  """The highest x86 vector ISA the CPU reports ('avx512', 'avx2', ...) or the machine name."""
  try:
    flags = pathlib.Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
  except (OSError, IndexError):
    return platform.machine()
  flags = set(flags.replace(":", " ").split())
  for isa in ("avx512f", "avx2", "avx", "sse4_2"):
    if isa in flags:
      return isa.removesuffix("f")
  return platform.machine()


def _rss_bytes(field: str) -> int | None:
  """VmRSS / VmHWM of this process from /proc (Linux), in bytes."""
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _flags(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="tiny,small", help=f"sizes from {SIZES}")
  parser.add_argument("--lengths", default="512,1024,2048", help="encoder lengths")
  parser.add_argument(
    "--tokens_per_batch", type=int, default=2048, help="encoder tokens per step (batch x L)"
  )
  parser.add_argument("--target_ratio", type=float, default=0.25, help="decoder length / L")
  parser.add_argument("--variants", default="plain,chunked", help=f"from {VARIANTS}")
  parser.add_argument("--chunk_size", type=int, default=128, help="queries per block")
  parser.add_argument("--remat_policy", default="full", help="for the remat variants")
  parser.add_argument(
    "--dtype", default="auto", help="compute dtype; auto: float32 on CPU, the gin file's elsewhere"
  )
  parser.add_argument("--steps", type=int, default=2, help="timed steps per row")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  parser.add_argument("--memory_only", action="store_true", help="compile, do not run")
  parser.add_argument("--no_isolate", action="store_true", help="all rows in this process")
  parser.add_argument("--plot", default="", help="write a log-log plot (PNG/SVG) here")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--_row", default="", help=argparse.SUPPRESS)
  flags, rest = parser.parse_known_args(argv)
  return flags, _common.gin_bindings(parser, rest)


def row_specs(flags: argparse.Namespace, bindings: list[str]) -> list[dict]:
  """The rows to measure, in order (model, then length, then variant).

  Args:
    flags: parsed flags.
    bindings: extra gin bindings applied to every row.

  Returns:
    One dict per row (JSON-ready), the argument of `measure_row`.
  """
  specs = []
  for size in flags.models.split(","):
    if size not in SIZES:
      raise ValueError(f"--models: unknown size {size!r}; known: {SIZES}")
    for length in (int(x) for x in flags.lengths.split(",")):
      for variant in flags.variants.split(","):
        if variant not in VARIANTS:
          raise ValueError(f"--variants: unknown {variant!r}; known: {VARIANTS}")
        extra = []
        if "chunked" in variant:
          extra.append(f"{CONFIG}.attention_chunk_size={flags.chunk_size}")
        if "remat" in variant:
          extra.append(f"{CONFIG}.remat_policy={flags.remat_policy!r}")
        specs.append(
          {
            "model": size,
            "gin_file": f"models/t5_1_1/{size}.gin",
            "variant": variant,
            "inputs": length,
            "targets": max(1, int(round(length * flags.target_ratio))),
            "batch": max(1, flags.tokens_per_batch // length),
            "bindings": [*bindings, *extra],
            "dtype": flags.dtype,
            "steps": flags.steps,
            "warmup": flags.warmup,
            "memory_only": flags.memory_only,
            "seed": flags.seed,
          }
        )
  return specs


def measure_row(spec: dict, *, measure_process: bool = True) -> dict:
  """Compiles and runs one row's training step and returns its figures.

  Args:
    spec: one of `row_specs`.
    measure_process: report the measured memory (only meaningful in a fresh process).

  Returns:
    The row: the spec's fields plus tokens/s, step seconds, FLOP/s, MFU, the compiled
    memory (`compiled_total_bytes`, `compiled_temp_bytes`, ...) and the measured one.
  """
  import flax.linen as nn  # noqa: F401  (imported before the baseline RSS is read)
  import jax
  import numpy as np
  from train_step import make_batch

  import gin
  from t5x_ext.training import memory_plan, optimizers, partitioning
  from t5x_ext.training.trainer import Trainer

  rss_before = _rss_bytes("VmRSS") if measure_process else None
  gin.clear_config()  # rows run in one process must not inherit each other's bindings
  bindings = list(spec["bindings"])
  dtype = spec["dtype"]
  if dtype == "auto":
    dtype = "float32" if jax.default_backend() == "cpu" else ""
  if dtype:
    bindings.append(f"{CONFIG}.dtype={dtype!r}")
  model = _common.load_gin_model([spec["gin_file"]], bindings)
  cfg = model.config
  b, li, lt = spec["batch"], spec["inputs"], spec["targets"]
  mesh = partitioning.make_mesh({"data": -1})
  if b % partitioning.data_parallel_size(mesh):
    b = partitioning.data_parallel_size(mesh) * max(1, b // partitioning.data_parallel_size(mesh))
  batch = make_batch(cfg.vocab_size, b, li, lt, spec["seed"])
  trainer = Trainer(model, optimizers.make_optimizer("adamw", 1e-4), mesh)
  flops_per_step = flops.training_flops_per_step(cfg, {"inputs": li, "targets": lt}, b)
  device = jax.devices()[0]
  row = {
    **{k: spec[k] for k in ("model", "variant", "inputs", "targets")},
    "batch": b,
    "tokens_per_step": b * (li + lt),
    "bindings": bindings,
    "dtype": cfg.dtype,
    "attention_chunk_size": cfg.attention_chunk_size,
    "remat_policy": cfg.remat_policy,
    "flops_per_step": flops_per_step,
  }
  plan = memory_plan.plan_train_step(trainer, batch)
  row.update(
    num_params=sum(
      int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state(batch).params)
    ),
    compile_s=round(plan.compile_seconds, 2),
    compiled_total_bytes=plan.total_bytes,
    compiled_temp_bytes=plan.temp_bytes,
    compiled_argument_bytes=plan.argument_bytes,
    compiled_state_bytes=plan.state_bytes,
  )
  if not spec["memory_only"]:
    state = trainer.init_state(jax.random.key(spec["seed"]), batch)
    global_batch = trainer.shard_batch(batch)
    for _ in range(1 + spec["warmup"]):
      state, metrics = trainer.train_step(state, global_batch)
      loss = float(metrics["loss"])
    times = []
    for _ in range(spec["steps"]):
      t0 = time.perf_counter()
      state, metrics = trainer.train_step(state, global_batch)
      loss = float(metrics["loss"])  # blocks until the step is done
      times.append(time.perf_counter() - t0)
    best = min(times)
    peak = peak_flops(device.device_kind)
    row.update(
      loss=loss,
      step_s=sorted(times)[len(times) // 2],
      step_best_s=best,
      tokens_per_s=row["tokens_per_step"] / best,
      flops_per_s=flops_per_step / best,
      mfu=None if peak is None else flops_per_step / best / peak / jax.device_count(),
    )
  row["measured_device_peak_bytes"] = None
  row["measured_rss_peak_bytes"] = row["measured_rss_growth_bytes"] = None
  if measure_process and not spec["memory_only"]:  # compiling alone says little
    try:
      stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU and some runtimes have no memory stats
      stats = {}
    if stats.get("peak_bytes_in_use"):
      row["measured_device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    hwm = _rss_bytes("VmHWM")
    if hwm is not None and rss_before is not None:
      row["measured_rss_peak_bytes"] = hwm
      row["measured_rss_growth_bytes"] = hwm - rss_before
  return row


def _run_isolated(spec: dict) -> dict:
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--_row={json.dumps(spec)}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  sys.stderr.write(proc.stderr[-2000:] if proc.returncode else "")
  if proc.returncode:
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {**spec, "error": f"exit {proc.returncode}: {tail}"}
  return json.loads(proc.stdout)


def plot(result: dict, path: str) -> None:
  """Log-log plot: tokens/s and compiled memory (and measured memory) against length.

  Args:
    result: the benchmark's JSON object.
    path: output image path.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in result["rows"] if "error" not in r]
  fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
  styles = {"plain": "-", "chunked": "--", "remat": ":", "chunked_remat": "-."}
  keys = sorted({(r["model"], r["variant"]) for r in rows}, key=lambda k: (SIZES.index(k[0]), k[1]))
  colors = dict(zip(sorted({k[0] for k in keys}, key=SIZES.index), "C0 C1 C2 C3 C4 C5".split()))
  for model, variant in keys:
    sel = sorted(
      (r for r in rows if (r["model"], r["variant"]) == (model, variant)), key=lambda r: r["inputs"]
    )
    xs = [r["inputs"] for r in sel]
    style = dict(color=colors[model], linestyle=styles[variant], marker="o")
    label = f"{model} {variant}"
    if all("tokens_per_s" in r for r in sel):
      ax_speed.plot(xs, [r["tokens_per_s"] for r in sel], label=label, **style)
    ax_mem.plot(xs, [r["compiled_total_bytes"] / 2**20 for r in sel], label=label, **style)
    measured = [
      (r["inputs"], r["measured_rss_growth_bytes"] or r["measured_device_peak_bytes"]) for r in sel
    ]
    measured = [(x, m) for x, m in measured if m]
    if measured:
      ax_mem.plot(
        *zip(*[(x, m / 2**20) for x, m in measured]),
        color=colors[model],
        linestyle="none",
        marker="x",
      )
  m = result["machine"]
  fixed = f"{result['tokens_per_batch']} encoder tokens per step"
  ax_speed.set(title=f"training step ({m['device_kind']}, {fixed})", ylabel="tokens/s")
  ax_mem.set(title="memory: lines XLA's plan, x measured peak", ylabel="MiB")
  for ax in (ax_speed, ax_mem):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("input length L (targets L/4)")
    ax.grid(True, which="both", alpha=0.3)
  ax_mem.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(argv: list[str] | None = None) -> dict:
  """Runs the benchmark.

  Args:
    argv: command-line flags (default: sys.argv[1:]).

  Returns:
    The JSON object that `main` prints.
  """
  flags, bindings = _flags(argv)
  if flags._row:
    return measure_row(json.loads(flags._row))
  import jax

  specs = row_specs(flags, bindings)
  result = {
    "benchmark": "scaling",
    "machine": {
      "device_kind": jax.devices()[0].device_kind,
      "platform": jax.default_backend(),
      "num_devices": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "cpu_isa": cpu_isa(),
      "jax": jax.__version__,
      "peak_bf16_flops": peak_flops(jax.devices()[0].device_kind),
    },
    "tokens_per_batch": flags.tokens_per_batch,
    "target_ratio": flags.target_ratio,
    "chunk_size": flags.chunk_size,
    "isolated": not flags.no_isolate,
    "load_average_before": _common.load_average(),
    "rows": [],
  }
  for spec in specs:
    _common.log(f"{spec['model']} L={spec['inputs']} batch={spec['batch']} {spec['variant']}")
    if flags.no_isolate:
      row = measure_row(spec, measure_process=False)
    else:
      row = _run_isolated(spec)
    result["rows"].append(row)
    if "error" in row:
      _common.log(f"  failed: {row['error']}")
    else:
      speed = f"{row['tokens_per_s']:.0f} tokens/s, " if "tokens_per_s" in row else ""
      _common.log(f"  {speed}compiled {row['compiled_total_bytes'] / 2**20:.0f} MiB")
  result["load_average_after"] = _common.load_average()
  if flags.plot:
    plot(result, flags.plot)
  return result


def main() -> None:
  """Prints the benchmark's JSON result (a row's, in a `--_row` child)."""
  _common.emit(run())


if __name__ == "__main__":
  main()
