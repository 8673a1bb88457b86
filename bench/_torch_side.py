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
  from t5x_ext.hf.torch_reference import build_torch_t5

  torch = _setup_torch()
  model = build_torch_t5(spec, seed=seed)
  gen = torch.Generator().manual_seed(seed)
  x = torch.randint(2, spec.vocab_size, (batch, inputs), generator=gen)
  mask = torch.ones_like(x)

  def run():
    with torch.inference_mode():
      out = model.generate(
        input_ids=x,
        attention_mask=mask,
        do_sample=False,
        num_beams=1,
        max_new_tokens=decode_len,
        min_new_tokens=decode_len,
        use_cache=True,
      )
    return out[:, 1:].numpy()  # drop the decoder start token

  return run
