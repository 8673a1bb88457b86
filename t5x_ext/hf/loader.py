"""`load_hf_t5`: a Transformers T5 checkpoint directory -> (model, params) of this project."""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp

from t5x_ext.hf import flax_params
from t5x_ext.hf.hf_config import HFT5Spec, read_hf_config
from t5x_ext.hf.hf_weights import canonical_weights
from t5x_ext.hf.safetensors_io import read_state_dict
from t5x_ext.model import models, network


class ImportedT5Model(models.EncoderDecoderModel):
  """`EncoderDecoderModel` of an imported checkpoint, plus `logits` and the import's spec.

  Everything `EncoderDecoderModel` offers (loss, scoring, prediction) works on the
  imported params; `logits` is the teacher-forced forward pass that the parity with
  Transformers is stated in.

  Attributes:
    spec: what the Transformers config meant (ids of pad/EOS/decoder start, activation).
  """

  def __init__(self, config: network.TransformerConfig, spec: HFT5Spec, **kwargs):
    super().__init__(config, **kwargs)
    self.spec = spec

  @functools.cached_property
  def _logits_jit(self):
    return jax.jit(super().logits)

  def logits(
    self, params, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None
  ) -> jax.Array:
    """Decoder logits under teacher forcing, as Transformers' `.logits` (jitted).

    Args:
      params: the (unboxed) params.
      encoder_input_tokens: int [B, I]; 0 is padding (masked, as Transformers' attention
        mask `input_ids != 0` does).
      decoder_input_tokens: int [B, T], starting with the decoder start token (0).
      decoder_target_tokens: int [B, T] marking decoder padding with 0, or None: every
        position is real (Transformers' default without `decoder_attention_mask`).

    Returns:
      float32 [B, T, V].
    """
    as_int = lambda x: None if x is None else jnp.asarray(x, jnp.int32)  # noqa: E731
    return self._logits_jit(
      params,
      as_int(encoder_input_tokens),
      as_int(decoder_input_tokens),
      as_int(decoder_target_tokens),
    )


def load_hf_params(directory: str | pathlib.Path, **config_overrides):
  """Reads a Transformers T5 checkpoint into a `TransformerConfig` and its params.

  Args:
    directory: a directory written by `T5ForConditionalGeneration.save_pretrained` (or a
      released T5 1.0 / T5.1.1 / UL2 checkpoint in safetensors form).
    **config_overrides: `TransformerConfig` fields to set, e.g. `dtype='bfloat16'`,
      `scan_layers=True`, `dropout_rate=0.0`. The compute dtype defaults to float32.

  Returns:
    (spec, config, params): params as nested dicts of numpy arrays in `param_dtype`.

  Raises:
    FileNotFoundError: no config.json or no safetensors in `directory`.
    ValueError / KeyError: an unsupported config, or tensors that do not match it.
  """
  spec = read_hf_config(directory)
  weights = canonical_weights(read_state_dict(directory), spec)
  config = flax_params.spec_to_config(
    spec, tied=flax_params.ties_logits(spec, weights), **config_overrides
  )
  return spec, config, flax_params.to_flax_params(weights, spec, config)


def load_hf_t5(
  directory: str | pathlib.Path,
  *,
  dtype: str = "float32",
  model_kwargs: dict | None = None,
  **config_overrides,
):
  """Loads a Transformers T5 checkpoint as this project's model and params.

  Args:
    directory: see `load_hf_params`.
    dtype: compute dtype ('float32' or 'bfloat16'); parameters stay in `param_dtype`
      (float32 unless overridden).
    model_kwargs: keyword arguments of `EncoderDecoderModel` (e.g. `z_loss`); `eos_id`
      defaults to the config's `eos_token_id`.
    **config_overrides: other `TransformerConfig` fields.

  Returns:
    (model, params): an `ImportedT5Model` and its params as jax arrays (unboxed). The
    model's `logits(params, encoder_input_tokens, decoder_input_tokens)` gives
    [B, T, vocab] float32 logits.
  """
  spec, config, params = load_hf_params(directory, dtype=dtype, **config_overrides)
  model_kwargs = {"eos_id": spec.eos_token_id, **(model_kwargs or {})}
  model = ImportedT5Model(config, spec, **model_kwargs)
  return model, jax.tree.map(jnp.asarray, params)
