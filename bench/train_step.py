"""Training-step throughput of a gin model, optionally against Transformers' PyTorch T5.

  python bench/train_step.py --gin_file=gin/models/t5_1_1/small.gin \
      --gin.network.TransformerConfig.dtype="'float32'" \
      --batch=4 --inputs=256 --targets=64 --steps=5 [--compare_hf] [--optimizer=adamw]

A step is forward, backward and the optimizer update (AdamW or Adafactor from optax),
jitted with the parameters and optimizer state donated, on random tokens (unpacked
batch). Prints one JSON object: steps/s, tokens/s (encoder + decoder tokens), the step's
FLOP/s (rates from the fastest round) from the model's own FLOP count (`model.flops_per_token`), and that as a share of
the fp32 matmul FLOP/s that JAX reaches on the same machine in the same run. With
`--compare_hf` the same dimensions run in Transformers (random weights, AdamW, every
core), timed in alternating rounds with the JAX step so machine load hits both alike.
The JSON names the CPU's instruction-set level and any XLA / PyTorch ISA caps
(`_common.isa_info`): XLA:CPU's matmuls are much faster with AVX-512 than with AVX2 only.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _common  # noqa: E402


def _flags(parser):
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--inputs", type=int, default=256, help="encoder length")
  parser.add_argument("--targets", type=int, default=64, help="decoder length")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--optimizer", choices=["adamw", "adafactor"], default="adamw")


def make_batch(vocab_size: int, batch: int, inputs: int, targets: int, seed: int) -> dict:
  """An unpacked encoder-decoder batch of random tokens (ids >= 2: no padding, no EOS).

  Args:
    vocab_size: ids are drawn below this.
    batch: B.
    inputs: encoder length.
    targets: decoder length.
    seed: numpy seed.

  Returns:
    The feature-converter dict (int32 numpy arrays; float32 loss weights).
  """
  import numpy as np

  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab_size, (batch, inputs), dtype=np.int32)
  tgt = rng.integers(2, vocab_size, (batch, targets), dtype=np.int32)
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return {
    "encoder_input_tokens": enc,
    "decoder_input_tokens": dec_in,
    "decoder_target_tokens": tgt,
    "decoder_loss_weights": np.ones((batch, targets), np.float32),
  }


def jax_train_step(model, batch: dict, optimizer: str, seed: int):
  """A callable running one jitted training step of `model` (state kept inside).

  Args:
    model: an `EncoderDecoderModel`.
    batch: from `make_batch`.
    optimizer: 'adamw' or 'adafactor'.
    seed: init / dropout seed.

  Returns:
    (step callable returning the loss as float, number of parameters).
  """
  import flax.linen as nn
  import jax
  import numpy as np
  import optax

  tx = optax.adamw(1e-4, weight_decay=1e-4) if optimizer == "adamw" else optax.adafactor(1e-3)
  params = nn.unbox(jax.jit(model.init_variables)(jax.random.key(seed), batch)["params"])
  state = {"params": params, "opt": tx.init(params), "rng": jax.random.key(seed + 1)}
  batch = jax.device_put(batch)

  def step(state, batch):
    rng, dropout_rng = jax.random.split(state["rng"])
    grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
    (loss, _), grads = grad_fn(state["params"], batch, dropout_rng)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt": opt, "rng": rng}, loss

  step = jax.jit(step, donate_argnums=(0,))
  holder = {"state": state}

  def run():
    holder["state"], loss = step(holder["state"], batch)
    return float(loss)  # blocks until the step is done

  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return run, n_params


def main() -> None:
  """Runs the benchmark and prints its JSON result."""
  flags, bindings = _common.parse_flags(__doc__.split("\n\n")[0], _flags)
  import os

  import jax

  from t5x_ext.hf import config_to_spec

  model = _common.load_gin_model(flags.gin_file, bindings)
  cfg = model.config
  b, li, lt = flags.batch, flags.inputs, flags.targets
  batch = make_batch(cfg.vocab_size, b, li, lt, flags.seed)
  flops_per_step = model.flops_per_token({"inputs": li, "targets": lt}) * b * lt
  tokens_per_step = b * (li + lt)

  _common.log("measuring the JAX fp32 matmul peak")
  peak = _common.matmul_peak_flops()
  _common.log(f"peak {peak / 1e9:.1f} GFLOP/s; compiling the JAX step")
  jax_step, n_params = jax_train_step(model, batch, flags.optimizer, flags.seed)
  for _ in range(1 + flags.warmup):
    first_loss = jax_step()
  fns, iters = {"jax": jax_step}, {"jax": flags.steps}
  result = {
    "benchmark": "train_step",
    "gin_files": flags.gin_file,
    "gin_bindings": bindings,
    "device": str(jax.devices()[0].device_kind),
    "num_devices": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "batch": b,
    "inputs": li,
    "targets": lt,
    "optimizer": flags.optimizer,
    "dtype": cfg.dtype,
    "scan_layers": cfg.scan_layers,
    "remat_policy": cfg.remat_policy,
    "num_params": n_params,
    "flops_per_step": flops_per_step,
    "jax_matmul_peak_flops": peak,
    "jax_first_loss": first_loss,
  }
  if flags.compare_hf:
    import _torch_side

    spec = config_to_spec(cfg)
    _common.log("building the Transformers model")
    hf_step, hf_params = _torch_side.train_step_fn(
      spec, batch=b, inputs=li, targets=lt, seed=flags.seed
    )
    for _ in range(flags.warmup):
      hf_step()
    fns["hf"], iters["hf"] = hf_step, flags.steps
    result["hf_num_params"] = hf_params
    result["hf_optimizer"] = "adamw"
  result.update(_common.isa_info())  # after torch is imported, so its capability shows
  result["load_average_before"] = _common.load_average()
  seconds = _common.timed_rounds(fns, flags.rounds, iters)
  result["load_average_after"] = _common.load_average()
  # Measured again after the rounds: the best of both is the least disturbed by other jobs.
  peak = max(peak, _common.matmul_peak_flops())
  result["jax_matmul_peak_flops"] = peak
  for name, t in seconds.items():
    result[f"{name}_step_s"] = t["s"]
    result[f"{name}_step_best_s"] = t["best_s"]
    result[f"{name}_step_cpu_s"] = t["cpu_s"]
    result[f"{name}_steps_per_s"] = 1.0 / t["best_s"]
    result[f"{name}_tokens_per_s"] = tokens_per_step / t["best_s"]
    result[f"{name}_flops_per_s"] = flops_per_step / t["best_s"]
    result[f"{name}_share_of_jax_matmul_peak"] = flops_per_step / t["best_s"] / peak
  if flags.compare_hf:
    result["speedup_tokens_per_s_vs_hf"] = seconds["hf"]["best_s"] / seconds["jax"]["best_s"]
    result["speedup_median_vs_hf"] = seconds["hf"]["s"] / seconds["jax"]["s"]
    result["speedup_cpu_time_vs_hf"] = seconds["hf"]["cpu_s"] / seconds["jax"]["cpu_s"]
  _common.emit(result)


if __name__ == "__main__":
  main()
