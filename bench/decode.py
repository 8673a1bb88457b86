"""Decoding throughput of a gin model (greedy or beam search), optionally against Transformers.

  python bench/decode.py --gin_file=gin/models/t5_1_1/small.gin \
      --gin.network.TransformerConfig.dtype="'float32'" \
      --batch=4 --inputs=256 --decode_len=64 [--method=beam --num_beams=4] [--compare_hf]

Times `model.predict_batch(..., method=...)` (encoder pass, prefill, then one cached
decoder step per token inside one jitted `while_loop`) on random prompts, after a
compiling call. Prints one JSON object with generated tokens/s (batch x tokens actually
decoded, per second of the whole call, encoder included; fastest round) and the CPU's
instruction-set level (`isa_info`). With `--compare_hf`, Transformers' cached `generate`
runs at the same dimensions in alternating rounds, with EOS suppressed
(`min_new_tokens = max_new_tokens = decode_len`) so that it makes exactly `decode_len`
tokens per prompt:
- greedy: `generate(num_beams=1, do_sample=False)`; the JAX loop stops early only if every
  row emits EOS, and its decoded positions are counted from the output.
- beam: `generate(num_beams=K, do_sample=False, length_penalty=0.6, early_stopping=True)`
  against `predict_batch(method="beam", beam_size=K, length_penalty=0.6)`. With EOS
  suppressed no Transformers hypothesis finishes before the last step, so
  `early_stopping` never cuts the search short and it runs `decode_len` steps over
  batch x K rows. The JAX search has no way to suppress EOS; it stops early only once K
  hypotheses of every example have finished and no live beam can beat them, which random
  weights make vanishingly rare (the JSON reports whether EOS appeared in its output,
  `jax_eos_in_output`). Tokens/s count batch x decode_len output tokens for both.
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
  parser.add_argument("--method", choices=("greedy", "beam"), default="greedy")
  parser.add_argument("--num_beams", type=int, default=4, help="beams (--method=beam)")
  parser.add_argument("--length_penalty", type=float, default=0.6, help="beam length penalty")


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


def read_roofline(cfg, params, batch: int, inputs: int, seconds: dict, steps: int) -> dict:
  """How close a decoding step comes to the time it takes to read what it must read.

  A step multiplies `batch` (x beams) rows by every decoder weight and attends over the
  encoder's cached keys/values, so at small batch it is bound by memory reads, not FLOPs.
  The step time is (call - encoder pass) / steps, both fastest rounds; the bytes are the
  decoder's parameters and the output layer (`logits_dense`, or the embedding table when
  the logits are tied to it; otherwise only a few looked-up rows of the table are read)
  plus the cross-attention cache (one row per example: beams share it).

  Args:
    cfg: the model's TransformerConfig.
    params: the model's parameters.
    batch: examples per call.
    inputs: encoder length.
    seconds: `timed_rounds` result with "jax" and "jax_encoder".
    steps: decoder steps per call.

  Returns:
    `jax_encoder_best_s`, `jax_step_s`, `bytes_read_per_step`, `read_bandwidth_bytes_per_s`
    (`_common.read_bandwidth`) and `jax_share_of_read_bandwidth` (the step time and share
    None when noise makes the encoder's fastest round slower than the call's).
  """
  import jax
  import numpy as np

  def nbytes(tree):
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))

  item = np.dtype(cfg.dtype).itemsize
  cross_cache = cfg.num_decoder_layers * 2 * batch * inputs * cfg.num_heads * cfg.head_dim * item
  # The output layer: its own kernel, or (tied) the whole embedding table.
  output = params["logits_dense"] if "logits_dense" in params else params["token_embedder"]
  per_step = nbytes(params["decoder"]) + nbytes(output) + cross_cache
  enc_s = seconds["jax_encoder"]["best_s"]
  step_s = (seconds["jax"]["best_s"] - enc_s) / steps
  # At toy sizes the encoder's fastest round can outrun the whole call's: no step time then.
  measured = step_s > 0
  bandwidth = _common.read_bandwidth()
  return {
    "jax_encoder_best_s": enc_s,
    "jax_step_s": step_s if measured else None,
    "bytes_read_per_step": per_step,
    "read_bandwidth_bytes_per_s": bandwidth,
    "jax_share_of_read_bandwidth": per_step / step_s / bandwidth if measured else None,
  }


def main() -> None:
  """Runs the benchmark and prints its JSON result."""
  flags, bindings = _common.parse_flags(__doc__.split("\n\n")[0], _flags)
  import os

  import flax.linen as nn
  import jax
  import numpy as np

  from t5x_ext.hf import config_to_spec
  from t5x_ext.model import models

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

  beam = flags.method == "beam"
  search_kw = {"method": flags.method}
  if beam:
    search_kw.update(beam_size=flags.num_beams, length_penalty=flags.length_penalty)

  def jax_decode():
    holder["tokens"] = np.asarray(model.predict_batch(params, batch, decode_len=ld, **search_kw))

  encode = jax.jit(
    lambda p, t: model.module.apply({"params": p}, t, method="encode"),
    compiler_options=models.decode_compiler_options(),
  )

  def jax_encode():
    encode(params, batch["encoder_input_tokens"]).block_until_ready()

  _common.log(f"compiling the JAX decoder ({flags.method})")
  jax_decode()
  jax_encode()
  fns, iters = {"jax": jax_decode, "jax_encoder": jax_encode}, {"jax": flags.calls}
  iters["jax_encoder"] = flags.calls
  result = {
    "benchmark": f"decode_{flags.method}",
    "method": flags.method,
    "num_beams": flags.num_beams if beam else 1,
    "gin_files": flags.gin_file,
    "gin_bindings": bindings,
    "device": str(jax.devices()[0].device_kind),
    "cpu_count": os.cpu_count(),
    "batch": b,
    "inputs": li,
    "decode_len": ld,
    "dtype": cfg.dtype,
    "scan_layers": cfg.scan_layers,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  if beam:
    result["length_penalty"] = flags.length_penalty
  if flags.compare_hf:
    import _torch_side

    _common.log("building the Transformers model")
    dims = dict(batch=b, inputs=li, decode_len=ld, seed=flags.seed)
    if beam:
      hf_decode = _torch_side.beam_fn(
        config_to_spec(cfg),
        num_beams=flags.num_beams,
        length_penalty=flags.length_penalty,
        **dims,
      )
    else:
      hf_decode = _torch_side.greedy_fn(config_to_spec(cfg), **dims)
    hf_decode()
    fns["hf"], iters["hf"] = hf_decode, flags.calls
  result["load_average_before"] = _common.load_average()
  seconds = _common.timed_rounds(fns, flags.rounds, iters)
  result["load_average_after"] = _common.load_average()
  result.update(_common.isa_info())  # after torch is imported, so its capability shows
  if beam:
    # Beam search returns the best finished or live sequence; it ran every step unless
    # EOS ended hypotheses (see the module docstring).
    steps = ld
    result["jax_eos_in_output"] = bool((holder["tokens"] == model.eos_id).any())
  else:
    steps = decoded_steps(holder["tokens"], model.eos_id)
  result["jax_decoded_positions"] = steps
  for name, t in seconds.items():
    if name == "jax_encoder":
      continue
    result[f"{name}_call_s"] = t["s"]
    result[f"{name}_call_best_s"] = t["best_s"]
    result[f"{name}_call_cpu_s"] = t["cpu_s"]
  result["jax_tokens_per_s"] = b * steps / seconds["jax"]["best_s"]
  result.update(read_roofline(cfg, params, b, li, seconds, steps))
  if flags.compare_hf:
    result["hf_tokens_per_s"] = b * ld / seconds["hf"]["best_s"]
    result["speedup_tokens_per_s_vs_hf"] = result["jax_tokens_per_s"] / result["hf_tokens_per_s"]
    per_token = {n: seconds[n]["cpu_s"] / k for n, k in (("jax", steps), ("hf", ld))}
    result["speedup_cpu_time_vs_hf"] = per_token["hf"] / per_token["jax"]
  _common.emit(result)


if __name__ == "__main__":
  main()
