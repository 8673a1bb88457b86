"""Greedy-decoding throughput of a gin model, optionally against Transformers' `generate`.

  python bench/decode.py --gin_file=gin/models/t5_1_1/small.gin \
      --gin.network.TransformerConfig.dtype="'float32'" \
      --batch=4 --inputs=256 --decode_len=64 [--compare_hf]

Times `model.predict_batch(..., method="greedy")` (encoder pass, prefill, then one cached
decoder step per token inside one jitted `while_loop`) on random prompts, after a
compiling call. Prints one JSON object with generated tokens/s (batch x tokens actually
decoded, per second of the whole call, encoder included; fastest round). With `--compare_hf`,
Transformers' cached greedy `generate` (EOS suppressed so that it makes exactly
`decode_len` tokens) runs at the same dimensions in alternating rounds.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _common  # noqa: E402


def _flags(parser):
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--inputs", type=int, default=256, help="prompt (encoder) length")
  parser.add_argument("--decode_len", type=int, default=64, help="tokens to generate")
  parser.add_argument("--calls", type=int, default=3, help="timed calls per round")


def decoded_steps(tokens, eos_id: int) -> int:
  """Decoder steps the JAX loop ran: it stops once every row has emitted EOS.

  Args:
    tokens: int [B, T] output of `predict_batch`.
    eos_id: the model's EOS id.

  Returns:
    Number of positions decoded (T unless every row ended early).
  """
  import numpy as np

  tokens = np.asarray(tokens)
  is_eos = tokens == eos_id
  if not is_eos.any(axis=1).all():
    return tokens.shape[1]
  return int(is_eos.argmax(axis=1).max()) + 1


def main() -> None:
  """Runs the benchmark and prints its JSON result."""
  flags, bindings = _common.parse_flags(__doc__.split("\n\n")[0], _flags)
  import os

  import flax.linen as nn
  import jax
  import numpy as np

  from t5x_ext.hf import config_to_spec

  model = _common.load_gin_model(flags.gin_file, bindings)
  cfg = model.config
  b, li, ld = flags.batch, flags.inputs, flags.decode_len
  rng = np.random.default_rng(flags.seed)
  enc = rng.integers(2, cfg.vocab_size, (b, li), dtype=np.int32)
  init_batch = {
    "encoder_input_tokens": enc,
    "decoder_input_tokens": np.zeros((b, ld), np.int32),
    "decoder_target_tokens": np.ones((b, ld), np.int32),
  }
  params = nn.unbox(jax.jit(model.init_variables)(jax.random.key(flags.seed), init_batch)["params"])
  batch = {"encoder_input_tokens": jax.device_put(enc)}
  holder = {}

  def jax_decode():
    holder["tokens"] = np.asarray(model.predict_batch(params, batch, decode_len=ld))

  _common.log("compiling the JAX decoder")
  jax_decode()
  fns, iters = {"jax": jax_decode}, {"jax": flags.calls}
  result = {
    "benchmark": "decode_greedy",
    "gin_files": flags.gin_file,
    "gin_bindings": bindings,
    "device": str(jax.devices()[0].device_kind),
    "cpu_count": os.cpu_count(),
    "batch": b,
    "inputs": li,
    "decode_len": ld,
    "dtype": cfg.dtype,
    "scan_layers": cfg.scan_layers,
  }
  if flags.compare_hf:
    import _torch_side

    _common.log("building the Transformers model")
    hf_decode = _torch_side.greedy_fn(
      config_to_spec(cfg), batch=b, inputs=li, decode_len=ld, seed=flags.seed
    )
    hf_decode()
    fns["hf"], iters["hf"] = hf_decode, flags.calls
  result["load_average_before"] = _common.load_average()
  seconds = _common.timed_rounds(fns, flags.rounds, iters)
  result["load_average_after"] = _common.load_average()
  steps = decoded_steps(holder["tokens"], model.eos_id)
  result["jax_decoded_positions"] = steps
  for name, t in seconds.items():
    result[f"{name}_call_s"] = t["s"]
    result[f"{name}_call_best_s"] = t["best_s"]
    result[f"{name}_call_cpu_s"] = t["cpu_s"]
  result["jax_tokens_per_s"] = b * steps / seconds["jax"]["best_s"]
  if flags.compare_hf:
    result["hf_tokens_per_s"] = b * ld / seconds["hf"]["best_s"]
    result["speedup_tokens_per_s_vs_hf"] = result["jax_tokens_per_s"] / result["hf_tokens_per_s"]
    per_token = {n: seconds[n]["cpu_s"] / k for n, k in (("jax", steps), ("hf", ld))}
    result["speedup_cpu_time_vs_hf"] = per_token["hf"] / per_token["jax"]
  _common.emit(result)


if __name__ == "__main__":
  main()
