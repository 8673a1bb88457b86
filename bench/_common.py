"""Shared pieces of the benchmarks: flags, gin model loading, peak FLOP/s, ISA, JSON output.

The benchmarks print one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# Keep TensorFlow (pulled in by nothing here, but by gin-bound modules elsewhere) quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_flags(description: str, add_flags) -> tuple[argparse.Namespace, list[str]]:
  """Parses `--gin_file=F` (repeatable), `--gin.KEY=VALUE` and the benchmark's own flags.

  Args:
    description: the benchmark's help text.
    add_flags: a function that adds the benchmark's flags to the parser.

  Returns:
    (flags, gin bindings as `KEY=VALUE` strings).
  """
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--gin_file", action="append", required=True, help="model gin file")
  parser.add_argument("--compare_hf", action="store_true", help="also run Transformers T5")
  parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
  parser.add_argument("--seed", type=int, default=0)
  add_flags(parser)
  flags, rest = parser.parse_known_args()
  return flags, gin_bindings(parser, rest)


def gin_bindings(parser: argparse.ArgumentParser, rest: list[str]) -> list[str]:
  """The `--gin.KEY=VALUE` flags argparse left over, as gin bindings; any other is an error.

  Args:
    parser: the parser (reports an unknown flag and exits).
    rest: what `parse_known_args` did not parse.

  Returns:
    `KEY=VALUE` strings.
  """
  for arg in rest:
    if not arg.startswith("--gin."):
      parser.error(f"unknown flag {arg!r}")
  return [arg[len("--gin.") :] for arg in rest]


def load_gin_model(gin_files: list[str], bindings: list[str]):
  """Parses gin model files and returns the model bound to their `MODEL` macro.

  Args:
    gin_files: gin files; the first one must define `MODEL`.
    bindings: extra `KEY=VALUE` bindings, applied after the files.

  Returns:
    The model object (e.g. `t5x_ext.model.models.EncoderDecoderModel`).
  """
  from t5x_ext.launch import flags

  # Parsed as the entry points parse (working directory, then the gin search path).
  return flags.model_from_gin(gin_files, bindings)


def log(msg: str) -> None:
  """Progress line on stderr (stdout is for the JSON result)."""
  print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
  """fp32 FLOP/s of a large square `jnp.matmul` on the default device, best of `repeats`.

  Args:
    n: matrix size.
    repeats: timed calls.

  Returns:
    FLOP/s of the fastest call.
  """
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  mm(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    mm(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def read_bandwidth(nbytes: int = 256 << 20, repeats: int = 10) -> float:
  """Bytes/s at which a jitted sum streams a float32 array from memory, best of `repeats`.

  The ceiling of a weight-read-bound computation (a decoding step reads every decoder
  weight once); the array is larger than any CPU cache.

  Args:
    nbytes: array size in bytes.
    repeats: timed calls.

  Returns:
    Bytes/s of the fastest call.
  """
  import jax
  import jax.numpy as jnp

  x = jax.random.normal(jax.random.key(0), (nbytes // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    total(x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return nbytes / best


def timed_rounds(fns: dict, rounds: int, iters: dict) -> dict:
  """Times several callables in alternating rounds, so machine load hits all alike.

  Args:
    fns: name -> callable (each call does one unit of work and blocks until done).
    rounds: alternating rounds.
    iters: name -> calls per round.

  Returns:
    name -> {"s": median wall seconds per call, "best_s": the fastest round's, "cpu_s":
    median process CPU-seconds per call}. The fastest round is the least disturbed by other
    jobs on a shared machine (as `timeit` reports the minimum); CPU time (all threads) shows
    how much work a call took whatever share of the cores it got.
  """
  wall = {name: [] for name in fns}
  cpu = {name: [] for name in fns}
  for r in range(rounds):
    for name, fn in fns.items():
      t0, c0 = time.perf_counter(), time.process_time()
      for _ in range(iters[name]):
        fn()
      wall[name].append((time.perf_counter() - t0) / iters[name])
      cpu[name].append((time.process_time() - c0) / iters[name])
      log(f"round {r}: {name} {wall[name][-1]:.4f} s/call ({cpu[name][-1]:.4f} CPU-s)")
  return {
    n: {"s": statistics.median(wall[n]), "best_s": min(wall[n]), "cpu_s": statistics.median(cpu[n])}
    for n in fns
  }


# Instruction-set levels by /proc/cpuinfo flag, best first (x86 flags, then Arm features).
_ISA_LEVELS = (
  ("avx512", ("avx512f",)),
  ("avx2", ("avx2", "fma")),
  ("avx", ("avx",)),
  ("sse4_2", ("sse4_2",)),
  ("sve", ("sve",)),
  ("neon", ("asimd",)),
)
# Flags that change which matmul kernels XLA, oneDNN or MKL pick; reported when present.
_ISA_DETAIL_FLAGS = (
  "avx2",
  "fma",
  "f16c",
  "avx512f",
  "avx512bw",
  "avx512vl",
  "avx512_vnni",
  "avx512_bf16",
  "avx512_fp16",
  "amx_tile",
  "amx_bf16",
  "asimd",
  "sve",
  "bf16",
)


def isa_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
  """The CPU's instruction-set level and the caps that XLA and PyTorch run under.

  Matmul throughput on CPU depends mostly on the vector ISA the kernels use (AVX-512 hosts
  run XLA:CPU's matmuls much faster than AVX2-only ones), so every CPU figure should carry
  it. The caps say whether a run emulated a lower level on a better host.

  Args:
    cpuinfo_path: where to read the CPU flags (Linux).

  Returns:
    {"cpu_isa": best level the flags allow ("avx512", "avx2", "avx", "sse4_2", "sve",
    "neon" or "unknown"), "cpu_model": the model name, "cpu_isa_flags": the matmul-relevant
    flags present, "xla_cpu_max_isa": the `--xla_cpu_max_isa` of XLA_FLAGS or None,
    "torch_cpu_capability": `torch.backends.cpu.get_cpu_capability()` when torch is already
    imported (else None), "aten_cpu_capability": the ATEN_CPU_CAPABILITY cap or None}.
  """
  flags, model = set(), None
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
          flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and model is None:
          model = value.strip()
  except OSError:
    pass
  isa = next((name for name, need in _ISA_LEVELS if flags.issuperset(need)), "unknown")
  max_isa = None
  for arg in os.environ.get("XLA_FLAGS", "").split():
    if arg.startswith("--xla_cpu_max_isa="):
      max_isa = arg.split("=", 1)[1]
  torch_cap = None
  if "torch" in sys.modules:
    try:
      torch_cap = sys.modules["torch"].backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
      pass
  return {
    "cpu_isa": isa,
    "cpu_model": model,
    "cpu_isa_flags": [f for f in _ISA_DETAIL_FLAGS if f in flags],
    "xla_cpu_max_isa": max_isa,
    "torch_cpu_capability": torch_cap,
    "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
  }


def load_average() -> float:
  """The 1-minute load average (machine contention during the run), or -1 if unknown."""
  try:
    return os.getloadavg()[0]
  except OSError:
    return -1.0


def emit(result: dict) -> None:
  """Prints the result as one JSON object on stdout."""
  print(json.dumps(result, indent=2, sort_keys=True))
