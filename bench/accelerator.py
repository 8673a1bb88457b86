"""T5.1.1 training throughput and MFU on an accelerator, against NVIDIA's Rosetta T5X figures.

  python bench/accelerator.py [--models=small,base,large] [--inputs=512 --targets=128] \
      [--batch=0] [--attention=auto,xla] [--steps=5] [--out=FILE]
  python bench/accelerator.py --check [--out=FILE]

One row per model size (gin/models/t5_1_1/<size>.gin) and attention setting, each in a fresh
process: the project's own training step (`Trainer.train_step`: forward, backward, Adafactor
as T5 trains, jitted with donated state) on random unpacked batches at 512/128, bfloat16
compute and float32 parameters (the gin files' settings). A row reports:

  sequences_per_s_per_device, tokens_per_s (encoder + decoder tokens, all devices),
  target_tokens_per_s, mfu: model FLOPs (`t5x_ext.training.flops.training_flops_per_step`,
  6N plus attention as T5X counts) per second over the dense bf16 peak of the devices
  (`flops.peak_flops_per_device`; null where the kind is unknown, e.g. CPUs),
  breakdown: forward / backward / optimizer seconds, from separately jitted forward,
  forward+backward and full steps timed alike (backward = fwd+bwd - fwd, optimizer = step -
  fwd+bwd),
  memory: XLA's plan of the compiled step (`t5x_ext.training.memory_plan`) against the
  device's `memory_stats()` peak and limit,
  attention: the kernel each attention took (`t5x_ext.model.attention.describe`).

The batch (per device) is `--batch`, or with `--batch=0` the one that fits: the memory plan
of a step at `--search_start` rows per device, extrapolated linearly to `--memory_fraction`
of the device's memory limit (`--batch_search=extrapolate`, one extra compile), or
`memory_plan.largest_batch`'s search (`--batch_search=search`, several compiles). Where the
device reports no limit (CPUs) give `--memory_limit=8GiB` or a `--batch`.

`--attention` takes 'auto', 'xla', 'cudnn', 'pallas_tpu' (the config's
`attention_implementation`) and 'xla_chunked' (XLA with `attention_chunk_size=--chunk_size`),
so that the kernel is chosen by measurement. `--check` instead compares a tiny model's logits
on the default device with the CPU's (bfloat16 tolerance) and the cuDNN kernel's outputs and
gradients, the relative-position bias's included, with XLA's (GPUs only).

Prints one JSON object (also written to `--out`): the machine (device kind, count, jax,
jaxlib and CUDA/cuDNN versions), the rows, and Rosetta's A100 figures for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _common  # noqa: E402

SIZES = ("tiny", "small", "base", "large", "xl", "xxl")
ATTENTION = ("auto", "xla", "cudnn", "pallas_tpu", "xla_chunked")
CONFIG = "network.TransformerConfig"

# NVIDIA JAX-Toolbox "Rosetta" T5X README: T5 v1.1 on the Pile, 512/128, bf16, A100-80G.
ROSETTA_A100 = {
  "source": "NVIDIA JAX-Toolbox Rosetta T5X README (T5 v1.1, the Pile, 512/128, bf16)",
  "device": "NVIDIA A100-SXM4-80GB",
  "sequences_per_s_per_gpu": {"small": 714.0, "large": 75.8, "xl": 16.9},
  "mfu": {"large": 0.34},
  "mfu_note": "about 34% for large, by 6N-plus-attention FLOPs",
  "h100_fp8_transformer_engine": {"large": 158.7},
}


def _flags(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="small,base,large", help=f"sizes from {SIZES}")
  parser.add_argument("--attention", default="auto", help=f"comma list from {ATTENTION}")
  parser.add_argument("--inputs", type=int, default=512, help="encoder length")
  parser.add_argument("--targets", type=int, default=128, help="decoder length")
  parser.add_argument("--batch", type=int, default=0, help="rows per device; 0: what fits")
  parser.add_argument("--batch_search", choices=("extrapolate", "search"), default="extrapolate")
  parser.add_argument("--search_start", type=int, default=8, help="rows per device planned")
  parser.add_argument("--search_compiles", type=int, default=4, help="for --batch_search=search")
  parser.add_argument("--max_batch", type=int, default=1024, help="rows per device at most")
  parser.add_argument("--memory_fraction", type=float, default=0.9)
  parser.add_argument("--memory_limit", default="", help="per device, e.g. 8GiB (CPUs)")
  parser.add_argument("--dtype", default="bfloat16", help="compute dtype")
  parser.add_argument("--chunk_size", type=int, default=128, help="for xla_chunked")
  parser.add_argument("--steps", type=int, default=5, help="timed steps")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--breakdown", choices=("first", "all", "none"), default="first")
  parser.add_argument("--row_timeout", type=float, default=0, help="seconds per row; 0: none")
  parser.add_argument("--time_budget", type=float, default=0, help="seconds for all rows; 0: none")
  parser.add_argument("--retries", type=int, default=1, help="halve the batch on OOM")
  parser.add_argument("--profile_dir", default="", help="write a jax.profiler trace here")
  parser.add_argument("--check", action="store_true", help="logits and kernel check only")
  parser.add_argument("--out", default="", help="also write the JSON here")
  parser.add_argument("--no_isolate", action="store_true", help="rows in this process")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--_row", default="", help=argparse.SUPPRESS)
  parser.add_argument("--_row_out", default="", help=argparse.SUPPRESS)
  flags, rest = parser.parse_known_args(argv)
  return flags, _common.gin_bindings(parser, rest)


# ------------------------------------------------------------------------------- machine


def machine_info() -> dict:
  """Device kind and count, platform, jax/jaxlib and CUDA/cuDNN versions where present."""
  import jax
  import jaxlib

  from t5x_ext.model import attention

  dev = jax.devices()[0]
  info = {
    "device_kind": dev.device_kind,
    "platform": attention.backend_platform(),
    "num_devices": jax.device_count(),
    "num_processes": jax.process_count(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "python": sys.version.split()[0],
    "cpu_count": os.cpu_count(),
  }
  try:
    info["platform_version"] = jax.extend.backend.get_backend().platform_version
  except Exception:  # noqa: BLE001
    info["platform_version"] = None
  info["compute_capability"] = getattr(dev, "compute_capability", None)
  try:
    from jax._src.lib import cuda_versions
  except ImportError:
    cuda_versions = None
  info["cuda_versions"] = {}
  if cuda_versions is not None and info["platform"] == "cuda":
    for name in (
      "cuda_runtime_get_version",
      "cuda_runtime_build_version",
      "cudnn_get_version",
      "cudnn_build_version",
      "cublas_get_version",
      "cuda_driver_get_version",
    ):
      fn = getattr(cuda_versions, name, None)
      try:
        info["cuda_versions"][name] = fn() if fn else None
      except Exception as err:  # noqa: BLE001 - a version the runtime cannot tell
        info["cuda_versions"][name] = f"unavailable: {type(err).__name__}"
  try:
    plugins = [m for m in ("jax_cuda12_plugin", "jax_cuda13_plugin") if _has_module(m)]
    info["jax_cuda_plugins"] = plugins
  except Exception:  # noqa: BLE001
    pass
  info.update(_common.isa_info())
  return info


def _has_module(name: str) -> bool:
  import importlib.util

  return importlib.util.find_spec(name) is not None


# ----------------------------------------------------------------------------------- rows


def row_specs(flags, bindings) -> list[dict]:
  """The rows to measure: one per model size and attention setting."""
  specs = []
  for size in flags.models.split(","):
    if size not in SIZES:
      raise ValueError(f"--models: unknown size {size!r}; known: {SIZES}")
    for i, att in enumerate(flags.attention.split(",")):
      if att not in ATTENTION:
        raise ValueError(f"--attention: unknown {att!r}; known: {ATTENTION}")
      extra = [f"{CONFIG}.dtype={flags.dtype!r}"]
      impl = "xla" if att == "xla_chunked" else att
      extra.append(f"{CONFIG}.attention_implementation={impl!r}")
      if att == "xla_chunked":
        extra.append(f"{CONFIG}.attention_chunk_size={flags.chunk_size}")
      specs.append(
        {
          "model": size,
          "gin_file": f"models/t5_1_1/{size}.gin",
          "attention": att,
          "inputs": flags.inputs,
          "targets": flags.targets,
          "batch_per_device": flags.batch,
          "batch_search": flags.batch_search,
          "search_start": flags.search_start,
          "search_compiles": flags.search_compiles,
          "max_batch": flags.max_batch,
          "memory_fraction": flags.memory_fraction,
          "memory_limit": flags.memory_limit,
          "bindings": [*bindings, *extra],
          "steps": flags.steps,
          "warmup": flags.warmup,
          "breakdown": flags.breakdown == "all" or (flags.breakdown == "first" and i == 0),
          "profile_dir": flags.profile_dir,
          "seed": flags.seed,
        }
      )
  return specs


def _timed(fn, steps: int) -> list[float]:
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def _pick_batch(spec, trainer, make_batch, n_dev, row) -> int:
  """Rows per device: the flag's, or what the memory plan says fits."""
  from t5x_ext.training import memory_plan

  if spec["batch_per_device"] > 0:
    row["batch_source"] = "flag"
    return spec["batch_per_device"]
  limit = memory_plan.device_memory_limit()
  if spec["memory_limit"]:
    limit = memory_plan.parse_memory(spec["memory_limit"])
  if not limit:
    raise ValueError("--batch=0 needs a device memory limit: give --memory_limit or --batch")
  usable = int(limit * spec["memory_fraction"])
  row["batch_search_memory_bytes"] = usable
  start = max(1, spec["search_start"])
  if spec["batch_search"] == "search":
    found = memory_plan.largest_batch(
      trainer,
      lambda b: make_batch(b),
      usable,
      start=start * n_dev,
      step=n_dev,
      max_compiles=spec["search_compiles"],
    )
    row["batch_source"] = f"memory_plan.largest_batch (exact={found.exact})"
    row["batch_search_plans"] = {
      int(b): p.total_bytes for b, p in sorted(found.plans.items(), key=lambda kv: kv[0])
    }
    if found.batch_size is None:
      raise ValueError(f"no batch fits {usable} bytes per device")
    return max(1, min(found.batch_size // n_dev, spec["max_batch"]))
  plan = memory_plan.plan_train_step(trainer, make_batch(start * n_dev))
  # Total = what does not grow with the batch (state, gradients, code) + rows x per-row
  # activations; the gradients are one copy of the parameters inside the temporaries.
  fixed = plan.total_bytes - plan.temp_bytes - plan.batch_bytes + plan.params_bytes
  per_row = max(1, (plan.total_bytes - fixed) / start)
  guess = int((usable - fixed) // per_row)
  row["batch_source"] = f"memory plan at {start} rows/device, extrapolated"
  row["batch_search_plan"] = {
    "rows_per_device": start,
    "total_bytes": plan.total_bytes,
    "fixed_bytes": fixed,
    "per_row_bytes": int(per_row),
  }
  # Multiples of 8 rows where there is room for them (tensor-core friendly shapes).
  if guess >= 16:
    guess = guess // 8 * 8
  return max(1, min(guess, spec["max_batch"]))


def measure_row(spec: dict, partial=None) -> dict:
  """Compiles and runs one row's training step; returns its figures.

  Args:
    spec: one of `row_specs`.
    partial: called with the row so far after each phase (a timed-out row keeps them).

  Returns:
    The row (JSON-ready).
  """
  import jax
  import numpy as np
  from train_step import make_batch as random_batch

  import gin
  from t5x_ext.model import attention
  from t5x_ext.training import flops, memory_plan, optimizers, partitioning
  from t5x_ext.training.trainer import Trainer

  partial = partial or (lambda row: None)
  t_start = time.perf_counter()
  gin.clear_config()
  model = _common.load_gin_model([spec["gin_file"]], spec["bindings"])
  cfg = model.config
  li, lt = spec["inputs"], spec["targets"]
  mesh = partitioning.make_mesh({"data": -1})
  n_dev = jax.device_count()
  trainer = Trainer(model, optimizers.make_optimizer("adafactor", 1e-3), mesh)
  device = jax.devices()[0]
  row = {
    **{k: spec[k] for k in ("model", "attention", "inputs", "targets", "bindings")},
    "dtype": cfg.dtype,
    "param_dtype": cfg.param_dtype,
    "optimizer": "adafactor",
    "scan_layers": cfg.scan_layers,
    "remat_policy": cfg.remat_policy,
    "attention_implementation": cfg.attention_implementation,
    "attention_chunk_size": cfg.attention_chunk_size,
    "attention_taken": attention.describe(cfg, li, lt),
  }

  def make_batch(global_rows):
    return random_batch(cfg.vocab_size, global_rows, li, lt, spec["seed"])

  b_dev = _pick_batch(spec, trainer, make_batch, n_dev, row)
  b = b_dev * n_dev
  batch = make_batch(b)
  plan = memory_plan.plan_train_step(trainer, batch)  # compiles the step train_step runs
  flops_per_step = flops.training_flops_per_step(cfg, {"inputs": li, "targets": lt}, b)
  peak = flops.peak_flops_per_device(device.device_kind)
  row.update(
    batch_per_device=b_dev,
    batch=b,
    num_params=sum(
      int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state(batch).params)
    ),
    flops_per_step=flops_per_step,
    peak_flops_per_device=peak,
    compile_s=round(plan.compile_seconds, 2),
    memory={
      "plan": plan.to_dict(),
      "plan_total_bytes": plan.total_bytes,
      "device_bytes_limit": memory_plan.device_memory_limit(),
    },
  )
  partial(row)

  state = trainer.init_state(jax.random.key(spec["seed"]), batch)
  global_batch = trainer.shard_batch(batch)
  holder = {"state": state, "loss": None}

  def step():
    holder["state"], metrics = trainer.train_step(holder["state"], global_batch)
    holder["loss"] = float(metrics["loss"])  # blocks until the step is done

  def steps_pipelined(n):
    # Dispatched back to back, blocked once: what a training loop that logs rarely sees.
    metrics = None
    for _ in range(n):
      holder["state"], metrics = trainer.train_step(holder["state"], global_batch)
    holder["loss"] = float(metrics["loss"])

  for _ in range(1 + spec["warmup"]):
    step()
  times = _timed(step, spec["steps"])  # each blocked on its loss
  t0 = time.perf_counter()
  steps_pipelined(spec["steps"])
  step_s = (time.perf_counter() - t0) / spec["steps"]
  row.update(
    loss=holder["loss"],
    step_s=step_s,
    step_timing="mean of --steps steps dispatched back to back, blocked once at the end",
    step_blocked_median_s=statistics.median(times),
    step_best_s=min(times),
    step_times_s=times,
    sequences_per_s=b / step_s,
    sequences_per_s_per_device=b / step_s / n_dev,
    tokens_per_s=b * (li + lt) / step_s,
    tokens_per_s_per_device=b * (li + lt) / step_s / n_dev,
    target_tokens_per_s=b * lt / step_s,
    model_flops_per_s=flops_per_step / step_s,
    mfu=None if peak is None else flops_per_step / step_s / (peak * n_dev),
  )
  row["memory"].update(_device_memory(device, plan.total_bytes))
  reference = ROSETTA_A100["sequences_per_s_per_gpu"].get(spec["model"])
  if reference:
    row["rosetta_a100_sequences_per_s_per_gpu"] = reference
    row["vs_rosetta_a100"] = row["sequences_per_s_per_device"] / reference
  partial(row)

  if spec["profile_dir"]:
    trace_dir = os.path.join(spec["profile_dir"], f"{spec['model']}_{spec['attention']}")
    with jax.profiler.trace(trace_dir):
      for _ in range(2):
        step()
    row["profile_trace"] = trace_dir

  if spec["breakdown"]:
    shardings = trainer.state_shardings.params
    batch_sharding = partitioning.batch_sharding(mesh)

    def loss(params, batch):
      return trainer._loss_fn(None, params, batch, None)[0]

    fwd = jax.jit(loss, in_shardings=(shardings, batch_sharding))
    fwd_bwd = jax.jit(
      jax.value_and_grad(loss),
      in_shardings=(shardings, batch_sharding),
      out_shardings=(trainer.replicated, shardings),
    )
    with partitioning.axis_rules(mesh, trainer.rules):
      t0 = time.perf_counter()
      params = holder["state"].params
      fwd_c = fwd.lower(params, global_batch).compile()
      fb_c = fwd_bwd.lower(params, global_batch).compile()
      compile_s = time.perf_counter() - t0
      del params  # the step donates the state: each call reads the live parameters

      def run_fwd():
        float(fwd_c(holder["state"].params, global_batch))

      def run_fb():
        jax.block_until_ready(fb_c(holder["state"].params, global_batch))

      for _ in range(spec["warmup"]):
        run_fwd()
        run_fb()
      # Alternating, so that clocks and machine load hit all three alike.
      t_f, t_fb, t_s = [], [], []
      for _ in range(spec["steps"]):
        t_f += _timed(run_fwd, 1)
        t_fb += _timed(run_fb, 1)
        t_s += _timed(step, 1)
    f, fb, s = (statistics.median(t) for t in (t_f, t_fb, t_s))
    row["breakdown"] = {
      "method": "separately jitted forward, forward+backward and full step, median seconds",
      "forward_s": f,
      "backward_s": max(0.0, fb - f),
      "optimizer_s": max(0.0, s - fb),
      "forward_backward_s": fb,
      "step_s": s,
      "compile_s": round(compile_s, 2),
    }
  row["wall_s"] = round(time.perf_counter() - t_start, 2)
  partial(row)
  return row


def _device_memory(device, plan_total: int) -> dict:
  try:
    stats = device.memory_stats() or {}
  except Exception:  # noqa: BLE001 - CPU and some runtimes have no memory stats
    stats = {}
  peak = stats.get("peak_bytes_in_use")
  return {
    "device_peak_bytes": int(peak) if peak else None,
    "device_peak_over_plan": (int(peak) / plan_total) if peak and plan_total else None,
  }


def _is_oom(text: str) -> bool:
  text = text.lower()
  return any(s in text for s in ("resource_exhausted", "out of memory", "failed to allocate"))


def _run_isolated(spec: dict, timeout: float) -> dict:
  import tempfile

  with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
    row_out = f.name
  cmd = [
    sys.executable,
    str(pathlib.Path(__file__).resolve()),
    f"--_row={json.dumps(spec)}",
    f"--_row_out={row_out}",
  ]
  _common.log(f"row {spec['model']} / {spec['attention']} (batch {spec['batch_per_device']})")
  error = None
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout or None)
    sys.stderr.write(proc.stderr[-3000:])
    if proc.returncode:
      tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
      error = f"exit {proc.returncode}: {tail}"
      if _is_oom(proc.stderr[-20000:]):
        error = "out of memory: " + error
  except subprocess.TimeoutExpired:
    error = f"timed out after {timeout:.0f} s"
  try:
    row = json.loads(pathlib.Path(row_out).read_text())
  except (OSError, json.JSONDecodeError):
    row = _identity(spec)
  finally:
    pathlib.Path(row_out).unlink(missing_ok=True)
  if error:
    row["error"] = error
  return row


def run_rows(flags, bindings) -> list[dict]:
  """Measures every row (each in a fresh process unless `--no_isolate`).

  A row runs for at most `--row_timeout` seconds and, with `--time_budget`, for at most what
  the budget has left; a row that runs out keeps the figures it had (its phases write them
  as they finish). A row out of memory runs again at half the batch (`--retries`).
  """
  rows = []
  start = time.perf_counter()

  def timeout():
    limits = [t for t in (flags.row_timeout,) if t > 0]
    if flags.time_budget > 0:
      limits.append(max(1.0, flags.time_budget - (time.perf_counter() - start)))
    return min(limits) if limits else 0

  for spec in row_specs(flags, bindings):
    if flags.no_isolate:
      rows.append(measure_row(spec))
      continue
    if flags.time_budget > 0 and time.perf_counter() - start >= flags.time_budget:
      rows.append({**_identity(spec), "error": "skipped: --time_budget spent"})
      continue
    row = _run_isolated(spec, timeout())
    tries = 0
    while "error" in row and row["error"].startswith("out of memory") and tries < flags.retries:
      tries += 1
      smaller = max(1, (row.get("batch_per_device") or spec["batch_per_device"] or 2) // 2)
      spec = {**spec, "batch_per_device": smaller}
      row = {**_run_isolated(spec, timeout()), "retried_after_oom": tries}
    rows.append(row)
  return rows


def _identity(spec: dict) -> dict:
  return {k: spec[k] for k in ("model", "attention", "inputs", "targets")}


# ---------------------------------------------------------------------------------- check


def check(seed: int = 0) -> dict:
  """Tiny-model logits on the default device against the CPU's; cuDNN against XLA (GPUs).

  Returns:
    {"logits": {...,"ok"}, "cudnn_attention": {...,"ok"} or {"skipped": why}, "ok"}.
  """
  import flax.linen as nn
  import jax
  import numpy as np

  from t5x_ext.model import attention, network

  cfg = network.TransformerConfig(
    vocab_size=256,
    emb_dim=64,
    num_heads=4,
    head_dim=16,
    mlp_dim=128,
    num_encoder_layers=2,
    num_decoder_layers=2,
    dtype="bfloat16",
  )
  rng = np.random.default_rng(seed)
  b, li, lt = 2, 64, 32
  enc = rng.integers(2, cfg.vocab_size, (b, li), dtype=np.int32)
  tgt = rng.integers(2, cfg.vocab_size, (b, lt), dtype=np.int32)
  enc[1, 50:], tgt[1, 20:] = 0, 0
  dec_in = np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], 1)
  module = network.EncoderDecoder(cfg)
  cpu = jax.devices("cpu")[0]
  with jax.default_device(cpu):
    params = nn.unbox(jax.jit(module.init)(jax.random.key(seed), enc, dec_in, tgt))

  def logits(device):
    p, e, d, t = jax.device_put((params, enc, dec_in, tgt), device)
    return np.asarray(jax.jit(module.apply)(p, e, d, t), np.float32)

  dev = jax.devices()[0]
  ref, got = logits(cpu), logits(dev)
  real = tgt > 0
  diff = np.abs(got - ref)[real]
  scale = float(np.abs(ref[real]).max())
  agree = float(np.mean(got.argmax(-1)[real] == ref.argmax(-1)[real]))
  out = {
    "device": dev.device_kind,
    "attention_taken": attention.describe(cfg, li, lt),
    "logits": {
      "max_abs_diff": float(diff.max()),
      "max_abs_logit": scale,
      "relative_max_diff": float(diff.max()) / scale,
      "argmax_agreement": agree,
      "tolerance": "relative max diff <= 0.05 and argmax agreement >= 0.9 (bfloat16)",
    },
  }
  out["logits"]["ok"] = out["logits"]["relative_max_diff"] <= 0.05 and agree >= 0.9
  if attention.backend_platform() == "cuda":
    out["cudnn_attention"] = _check_cudnn(seed)
  else:
    out["cudnn_attention"] = {"skipped": f"backend {attention.backend_platform()!r}"}
  out["ok"] = out["logits"]["ok"] and out["cudnn_attention"].get("ok", True)
  return out


def _check_cudnn(seed: int) -> dict:
  """cuDNN attention vs XLA's on this GPU: outputs and the q/k/v/bias gradients (bf16)."""
  import jax.numpy as jnp
  import numpy as np

  b, q, h, e = 4, 128, 4, 64
  rng = np.random.default_rng(seed)
  qkv = [jnp.asarray(rng.normal(size=(b, q, h, e)), jnp.bfloat16) for _ in range(3)]
  bias = jnp.asarray(rng.normal(size=(1, h, q, q)), jnp.bfloat16)
  tokens = jnp.asarray([[3] * n + [0] * (q - n) for n in (128, 100, 64, 128)], jnp.int32)
  w = jnp.asarray(rng.normal(size=(b, q, h, e)), jnp.float32)
  result = {"shape": [b, q, h, e], "bias_shape": [1, h, q, q]}
  for causal in (False, True):
    name = "causal" if causal else "bidirectional"
    try:
      result[name] = _cudnn_case(qkv, bias, tokens, w, causal)
    except Exception as err:  # noqa: BLE001 - the finding is the error itself
      result[name] = {"ok": False, "error": f"{type(err).__name__}: {str(err)[:500]}"}
  result["ok"] = all(result[k]["ok"] for k in ("bidirectional", "causal"))
  return result


def _cudnn_case(qkv, bias, tokens, w, causal: bool) -> dict:
  import jax
  import jax.numpy as jnp

  from t5x_ext.model import attention, masks

  q = tokens.shape[1]
  seg = attention.segments(tokens > 0, None)
  dense = masks.decoder_mask(q, tokens) if causal else masks.encoder_mask(tokens)
  m = attention.AttentionMask(dense, seg, seg, None, causal, False)
  real = (tokens > 0)[:, :, None, None]
  w = w * real

  def xla(q_, k_, v_, bias_):
    return jax.nn.dot_product_attention(q_, k_, v_, bias_, m.dense, scale=1.0)

  def cudnn(q_, k_, v_, bias_):
    return attention.cudnn_attention(q_, k_, v_, bias_, m)

  def grads(fn):
    def loss(*args):
      return jnp.sum(fn(*args).astype(jnp.float32) * w)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))

  rel = {"out": _rel(jax.jit(cudnn)(*qkv, bias) * real, jax.jit(xla)(*qkv, bias) * real)}
  names = ("dq", "dk", "dv", "dbias")
  rel.update(
    {k: _rel(g, r) for k, g, r in zip(names, grads(cudnn)(*qkv, bias), grads(xla)(*qkv, bias))}
  )
  hlo = grads(cudnn).lower(*qkv, bias).as_text().lower()
  return {
    "relative_max_diff": rel,
    "ok": all(v <= 0.05 for v in rel.values()),
    "cudnn_custom_call_in_hlo": "cudnn" in hlo or "fmha" in hlo,
  }


def _rel(got, ref) -> float:
  import numpy as np

  got, ref = np.asarray(got, np.float32), np.asarray(ref, np.float32)
  return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-6))


# ----------------------------------------------------------------------------------- main


def run(argv=None) -> dict:
  """Runs the benchmark (or the check) and returns its JSON object."""
  flags, bindings = _flags(argv)
  if flags._row:
    out = flags._row_out

    def partial(row):
      if out:
        pathlib.Path(out).write_text(json.dumps(row))

    row = measure_row(json.loads(flags._row), partial)
    partial(row)
    return row
  result = {"benchmark": "accelerator", "machine": machine_info(), "load_average_before": None}
  result["load_average_before"] = _common.load_average()
  if flags.check:
    result["check"] = check(flags.seed)
  else:
    result.update(
      models=flags.models.split(","),
      attention=flags.attention.split(","),
      inputs=flags.inputs,
      targets=flags.targets,
      gin_bindings=bindings,
      rosetta_a100=ROSETTA_A100,
    )
    result["rows"] = run_rows(flags, bindings)
  result["load_average_after"] = _common.load_average()
  return result


def main() -> None:
  """Prints the JSON result (and writes it to `--out`)."""
  result = run()
  flags, _ = _flags(None)
  if flags.out:
    path = pathlib.Path(flags.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True))
  if not flags._row:
    _common.emit(result)


if __name__ == "__main__":
  main()
