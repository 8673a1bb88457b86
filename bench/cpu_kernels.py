"""The matmul rates that bound a training step and a decoding step, on this host.

  python bench/cpu_kernels.py [--emb=512 --mlp=1024 --heads_x_dim=384 --vocab=32128]
      [--tokens=1024 --rows=4 --repeats=10]

XLA:CPU's speed depends on the host's instruction-set level and on which library runs each
dot (YNNPACK or Eigen), so this prints, for T5.1.1 small's weight shapes by default, with
XLA's default dot library and with YNNPACK's fusions off (`models.CPU_DECODE_COMPILER_OPTIONS`,
what `predict_batch` compiles with on CPU), one JSON object with:
- `gemv`: decoding's products (`rows` x D times every weight matrix), as the bytes/s at
  which the weights are read. Each shape runs as a chain of distinct matrices, 160 MB in all,
  so that the weights come from memory as in a decoding step, not from a cache.
- `matmul`: training's products at `tokens` rows, as FLOP/s: the forward `x @ W` and the
  weight gradient `x^T @ dy` (both operands contracted over their leading axis).
- `read_bandwidth_bytes_per_s` (a streaming sum), `matmul_peak_flops` (2048^2) and the ISA.
Shares of the last two are what a weight-read-bound step or a FLOP-bound step can approach.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _common  # noqa: E402

VARIANTS = ("default", "no_ynn_fusions")


def _flags(parser):
  parser.add_argument("--emb", type=int, default=512, help="D")
  parser.add_argument("--mlp", type=int, default=1024, help="F")
  parser.add_argument("--heads_x_dim", type=int, default=384, help="H x E")
  parser.add_argument("--vocab", type=int, default=32128, help="V")
  parser.add_argument("--tokens", type=int, default=1024, help="rows of a training matmul")
  parser.add_argument("--rows", type=int, default=4, help="rows of a decoding product")
  parser.add_argument("--chain_bytes", type=int, default=160 << 20, help="weights per chain")
  parser.add_argument("--repeats", type=int, default=10, help="timed calls (best is kept)")


def _best_seconds(fn, args, repeats: int) -> float:
  import time

  import jax

  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def weight_shapes(emb: int, mlp: int, heads_x_dim: int, vocab: int) -> dict[str, tuple]:
  """The [in, out] weight shapes of a T5 layer and its output layer, by name.

  Args:
    emb: D.
    mlp: F.
    heads_x_dim: H x E.
    vocab: V.

  Returns:
    name -> (in, out).
  """
  return {
    "attention_qkv": (emb, heads_x_dim),
    "attention_out": (heads_x_dim, emb),
    "mlp_in": (emb, mlp),
    "mlp_out": (mlp, emb),
    "output_layer": (emb, vocab),
  }


def run(argv: list[str] | None = None) -> dict:
  """Measures and returns the result (see the module docstring).

  Args:
    argv: command-line flags (default: `sys.argv[1:]`).

  Returns:
    The result dict that `main` prints.
  """
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  _flags(parser)
  flags = parser.parse_args(argv)
  import jax
  import jax.numpy as jnp

  from t5x_ext.model import models

  options = {"default": None, "no_ynn_fusions": dict(models.CPU_DECODE_COMPILER_OPTIONS)}
  key = jax.random.key(0)
  result = {
    "benchmark": "cpu_kernels",
    "device": str(jax.devices()[0].device_kind),
    "rows": flags.rows,
    "tokens": flags.tokens,
    "gemv": {},
    "matmul": {},
  }
  for name, (d_in, d_out) in weight_shapes(
    flags.emb, flags.mlp, flags.heads_x_dim, flags.vocab
  ).items():
    count = max(1, flags.chain_bytes // (d_in * d_out * 4))
    weights = [jax.random.normal(jax.random.fold_in(key, i), (d_in, d_out)) for i in range(count)]
    x = jax.random.normal(key, (flags.rows, d_in))

    def chain(x, *ws):
      return sum(jnp.sum(x @ w) for w in ws)

    big_x = jax.random.normal(key, (flags.tokens, d_in))
    dy = jax.random.normal(key, (flags.tokens, d_out))
    flops = 2 * flags.tokens * d_in * d_out
    forward = lambda a, w: a @ w  # noqa: E731
    grad_w = lambda a, g: jax.lax.dot_general(a, g, (((0,), (0,)), ((), ())))  # noqa: E731
    for variant in VARIANTS:
      opts = options[variant] if jax.default_backend() == "cpu" else None
      gemv_s = _best_seconds(jax.jit(chain, compiler_options=opts), (x, *weights), flags.repeats)
      fwd_s = _best_seconds(
        jax.jit(forward, compiler_options=opts), (big_x, weights[0]), flags.repeats
      )
      gw_s = _best_seconds(jax.jit(grad_w, compiler_options=opts), (big_x, dy), flags.repeats)
      result["gemv"].setdefault(name, {"shape": [d_in, d_out], "matrices": count})
      result["gemv"][name][f"{variant}_bytes_per_s"] = count * d_in * d_out * 4 / gemv_s
      result["matmul"].setdefault(name, {"shape": [flags.tokens, d_in, d_out]})
      result["matmul"][name][f"{variant}_forward_flops"] = flops / fwd_s
      result["matmul"][name][f"{variant}_weight_grad_flops"] = flops / gw_s
    _common.log(f"{name} done")
  result["read_bandwidth_bytes_per_s"] = _common.read_bandwidth()
  result["matmul_peak_flops"] = _common.matmul_peak_flops()
  result["load_average"] = _common.load_average()
  result.update(_common.isa_info())
  return result


def main() -> None:
  """Runs the benchmark and prints its JSON result."""
  _common.emit(run())


if __name__ == "__main__":
  main()
