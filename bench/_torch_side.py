"""The Transformers (PyTorch) side of the benchmarks: same dimensions, random weights."""

from __future__ import annotations

import os


def _setup_torch():
  import torch

  # Use every core, as XLA does; the default can be lower inside containers.
  torch.set_num_threads(os.cpu_count() or 1)
  return torch


def train_step_fn(spec, *, batch: int, inputs: int, targets: int, seed: int = 0, lr=1e-4):
  """A callable running one Transformers T5 training step (forward, backward, AdamW).

  Args:
    spec: `t5x_ext.hf.HFT5Spec` of the network.
    batch: examples per step.
    inputs: encoder length.
    targets: decoder length.
    seed: torch seed (weights and tokens).
    lr: AdamW learning rate.

  Returns:
    (step function, number of parameters).
  """
  from t5x_ext.hf.torch_reference import build_torch_t5

  torch = _setup_torch()
  model = build_torch_t5(spec, seed=seed).train()
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
  gen = torch.Generator().manual_seed(seed)
  x = torch.randint(2, spec.vocab_size, (batch, inputs), generator=gen)
  y = torch.randint(2, spec.vocab_size, (batch, targets), generator=gen)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=x, labels=y).loss
    loss.backward()
    opt.step()
    return loss.item()

  return step, sum(p.numel() for p in model.parameters())


def greedy_fn(spec, *, batch: int, inputs: int, decode_len: int, seed: int = 0):
  """A callable running Transformers' cached greedy `generate` for `decode_len` tokens.

  EOS is suppressed (`min_new_tokens`) so that every call generates exactly
  `batch * decode_len` tokens, as a fixed-length JAX decode loop does.

  Args:
    spec: `t5x_ext.hf.HFT5Spec` of the network.
    batch: prompts per call.
    inputs: prompt length.
    decode_len: new tokens per prompt.
    seed: torch seed (weights and tokens).

  Returns:
    The callable; it returns the generated tokens as a numpy array [batch, decode_len].
  """
  return _generate_fn(spec, batch=batch, inputs=inputs, decode_len=decode_len, seed=seed)


def beam_fn(
  spec,
  *,
  batch: int,
  inputs: int,
  decode_len: int,
  num_beams: int,
  length_penalty: float = 0.6,
  seed: int = 0,
):
  """A callable running Transformers' cached beam search (`generate(num_beams=...)`).

  EOS is suppressed until `decode_len` (`min_new_tokens`), so no hypothesis finishes
  early and every call runs `decode_len` decoder steps over `batch * num_beams` rows;
  `early_stopping` then never triggers (no beam is done before the last step). The
  length penalty is T5X's default (0.6); Transformers divides by length ** alpha where
  JAX's beam search uses GNMT's ((5 + length) / 6) ** alpha, which only changes how
  finished hypotheses rank, not the work.

  Args:
    spec: `t5x_ext.hf.HFT5Spec` of the network.
    batch: prompts per call.
    inputs: prompt length.
    decode_len: new tokens per prompt.
    num_beams: beams per prompt.
    length_penalty: Transformers' `length_penalty`.
    seed: torch seed (weights and tokens).

  Returns:
    The callable; it returns the best sequence per prompt as a numpy array
    [batch, decode_len].
  """
  return _generate_fn(
    spec,
    batch=batch,
    inputs=inputs,
    decode_len=decode_len,
    seed=seed,
    num_beams=num_beams,
    length_penalty=length_penalty,
    early_stopping=True,
  )


def _generate_fn(spec, *, batch: int, inputs: int, decode_len: int, seed: int, **generate_kw):
  from t5x_ext.hf.torch_reference import build_torch_t5

  torch = _setup_torch()
  model = build_torch_t5(spec, seed=seed)
  gen = torch.Generator().manual_seed(seed)
  x = torch.randint(2, spec.vocab_size, (batch, inputs), generator=gen)
  mask = torch.ones_like(x)
  generate_kw.setdefault("num_beams", 1)

  def run():
    with torch.inference_mode():
      out = model.generate(
        input_ids=x,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=decode_len,
        min_new_tokens=decode_len,
        use_cache=True,
        **generate_kw,
      )
    return out[:, 1:].numpy()  # drop the decoder start token

  return run
