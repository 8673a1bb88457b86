"""Builds Transformers' PyTorch T5 with random weights, for parity tests and benchmarks.

Nothing is downloaded: the model is made from a `T5Config` built from an `HFT5Spec`. torch
and Transformers are imported only when these functions are called, so `t5x_ext.hf`
itself does not need them.
"""

from __future__ import annotations

import json
import pathlib

from t5x_ext.hf.hf_config import HFT5Spec, to_hf_config

# Kept under its old name for callers of this module.
hf_config_dict = to_hf_config


def build_torch_t5(spec: HFT5Spec, *, seed: int = 0, untie_lm_head: bool | None = None):
  """A randomly initialised `T5ForConditionalGeneration` with the dimensions of `spec`.

  Args:
    spec: the network.
    seed: torch seed for the weights.
    untie_lm_head: give the output layer its own weights (as T5.1.1 and UL2 checkpoints
      have). Transformers 5 ties it to the input embedding in memory whatever the config
      says, so the separate layer is installed here. Defaults to `not spec.scale_logits`.

  Returns:
    The model, in eval mode, float32.
  """
  import torch
  import transformers

  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**hf_config_dict(spec)))
  if untie_lm_head is None:
    untie_lm_head = not spec.scale_logits
  if untie_lm_head:
    head = torch.nn.Linear(spec.d_model, spec.vocab_size, bias=False)
    with torch.no_grad():
      # T5.1.1-like scale for a separate output layer (the model's own init would reuse the
      # embedding's std of 1, which makes logits large).
      head.weight.normal_(0.0, spec.d_model**-0.5)
    model.lm_head = head
  return model.eval()


def save_untied(model, directory: str | pathlib.Path, *, sharded_bytes: int | None = None) -> None:
  """Writes `model` as Transformers 4.x wrote T5.1.1: a separate `lm_head.weight`.

  `save_pretrained` in Transformers 5 drops `lm_head.weight` as a tied duplicate; released
  T5.1.1/UL2 checkpoints have it, and `tie_word_embeddings: false` in their config.

  Args:
    model: a model from `build_torch_t5(..., untie_lm_head=True)`.
    directory: output directory (created).
    sharded_bytes: when set, split tensors into shards of about this many bytes with a
      `model.safetensors.index.json`, as `save_pretrained(max_shard_size=...)` does.
  """
  from safetensors.torch import save_file

  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
  # The per-stack embedding copies are aliases of `shared`; 4.x files hold them too, but a
  # reader must not depend on them.
  state.pop("encoder.embed_tokens.weight", None)
  state.pop("decoder.embed_tokens.weight", None)
  cfg = model.config.to_dict()
  cfg.pop("scale_decoder_outputs", None)
  cfg["tie_word_embeddings"] = False
  (directory / "config.json").write_text(json.dumps(cfg, indent=2))
  if sharded_bytes is None:
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return
  shards: list[dict] = [{}]
  size = 0
  for name in sorted(state):
    nbytes = state[name].numel() * state[name].element_size()
    if shards[-1] and size + nbytes > sharded_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = state[name]
    size += nbytes
  weight_map = {}
  for i, shard in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, str(directory / fname), metadata={"format": "pt"})
    weight_map.update({name: fname for name in shard})
  index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())}}
  index["weight_map"] = weight_map
  (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
