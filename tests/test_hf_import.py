"""Transformers T5 import: parity with Transformers' PyTorch T5 on random weights.

Nothing is downloaded: each Transformers model is built from a `T5Config` with tiny
dimensions, written with `save_pretrained` (or as Transformers 4.x wrote T5.1.1, with its
own `lm_head.weight`), and read back with `t5x_ext.hf.load_hf_t5`.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hf_util import T5_1_0, T5_1_1, UL2, VOCAB, tokens  # noqa: E402

from t5x_ext import hf  # noqa: E402
from t5x_ext.hf import torch_reference  # noqa: E402

# name -> (spec, how the directory is written)
VARIANTS = {
  "t5_1_0_tied": (T5_1_0, "save_pretrained"),
  "t5_1_1_untied": (T5_1_1, "untied"),
  "t5_1_1_tf5_save": (T5_1_1, "save_pretrained"),  # Transformers 5 drops lm_head
  "ul2_untied_sharded": (UL2, "untied_sharded"),
}


def _write(spec, how, directory, seed=0):
  model = torch_reference.build_torch_t5(spec, seed=seed, untie_lm_head=how.startswith("untied"))
  if how == "save_pretrained":
    model.save_pretrained(directory)
  else:
    torch_reference.save_untied(
      model, directory, sharded_bytes=30_000 if how.endswith("sharded") else None
    )
  return model


def _torch_logits(model, enc, dec):
  with torch.no_grad():
    return model(
      input_ids=torch.tensor(enc),
      attention_mask=torch.tensor(enc != 0).long(),
      decoder_input_ids=torch.tensor(dec),
    ).logits.numpy()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers(variant, tmp_path):
  spec, how = VARIANTS[variant]
  reference = _write(spec, how, tmp_path)
  model, params = hf.load_hf_t5(tmp_path)
  enc, dec = tokens(1)
  want = _torch_logits(reference, enc, dec)
  got = np.asarray(model.logits(params, enc, dec))
  assert got.shape == (3, 24, VOCAB)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  # The layout chosen for the output layer follows the checkpoint.
  assert model.config.logits_via_embedding == (variant == "t5_1_0_tied")
  assert model.config.dtype == "float32"


def test_scanned_layers_give_the_same_logits(tmp_path):
  reference = _write(UL2, "untied", tmp_path)
  model, params = hf.load_hf_t5(tmp_path, scan_layers=True)
  assert "layers" in params["encoder"] and params["encoder"]["layers"]["mlp"]["wo"][
    "kernel"
  ].shape == (2, UL2.d_ff, UL2.d_model)
  enc, dec = tokens(2)
  np.testing.assert_allclose(
    np.asarray(model.logits(params, enc, dec)), _torch_logits(reference, enc, dec), atol=1e-4
  )


# Random *tied* models (T5 1.0) greedily repeat one token (the embedding dominates the
# residual stream and the tied logits), which would make the comparison vacuous; their
# logits parity is tested above.
@pytest.mark.parametrize("variant", ["t5_1_1_untied", "ul2_untied_sharded"])
def test_greedy_decoding_matches_generate(variant, tmp_path):
  spec, how = VARIANTS[variant]
  # Transformers' generate sizes its cache by the encoder depth (`num_layers`) and fails
  # when the decoder is deeper, so this test uses equal depths.
  spec = dataclasses.replace(spec, num_decoder_layers=spec.num_encoder_layers)
  reference = _write(spec, how, tmp_path, seed=3)
  model, params = hf.load_hf_t5(tmp_path)
  enc, _ = tokens(4)
  decode_len = 8
  with torch.no_grad():
    out = reference.generate(
      input_ids=torch.tensor(enc),
      attention_mask=torch.tensor(enc != 0).long(),
      do_sample=False,
      num_beams=1,
      max_new_tokens=decode_len,
    ).numpy()[:, 1:]
  want = np.zeros((enc.shape[0], decode_len), np.int64)
  want[:, : out.shape[1]] = out  # generate stops early when every row has hit EOS
  # A meaningful comparison needs varied tokens, not a row of EOS.
  assert len(np.unique(want)) > 3, want
  got = np.asarray(
    model.predict_batch(params, {"encoder_input_tokens": enc}, decode_len=decode_len)
  )
  np.testing.assert_array_equal(got, want)


def test_bfloat16_safetensors_are_read(tmp_path):
  from safetensors.torch import save_file

  x = torch.randn(4, 3).to(torch.bfloat16)
  save_file(
    {"x": x, "y": torch.arange(5, dtype=torch.float32)}, str(tmp_path / "model.safetensors")
  )
  tensors = hf.read_state_dict(tmp_path)
  np.testing.assert_array_equal(tensors["x"].astype(np.float32), x.float().numpy())
  np.testing.assert_array_equal(tensors["y"], np.arange(5, dtype=np.float32))


def _config_json(tmp_path, **changes):
  spec, how = VARIANTS["t5_1_1_untied"]
  _write(spec, how, tmp_path)
  cfg = json.loads((tmp_path / "config.json").read_text())
  cfg.update(changes)
  (tmp_path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"feed_forward_proj": "gated-mish"}, "feed_forward_proj='gated-mish'"),
    ({"feed_forward_proj": "fancy-gelu"}, "feed_forward_proj='fancy-gelu'"),
    ({"model_type": "bart"}, "model_type='bart'"),
    ({"d_model": 0}, "d_model=0"),
    ({"num_layers": 3}, "encoder.block.2"),  # more layers than the checkpoint holds
    ({"num_decoder_layers": 2}, "does not account for"),  # fewer than it holds
    ({"d_ff": 50}, "shape"),
  ],
)
def test_bad_configs_fail_clearly(tmp_path, changes, message):
  _config_json(tmp_path, **changes)
  with pytest.raises((ValueError, KeyError), match=message):
    hf.load_hf_t5(tmp_path)


def test_missing_files_fail_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_hf_t5(tmp_path)
  spec, how = VARIANTS["t5_1_1_untied"]
  _write(spec, how, tmp_path)
  (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf.load_hf_t5(tmp_path)


def test_config_round_trip_between_spec_and_transformer_config():
  for spec in (T5_1_0, T5_1_1, UL2):
    config = hf.spec_to_config(spec, tied=spec.scale_logits)
    assert hf.config_to_spec(config) == spec


def test_bfloat16_params_and_compute(tmp_path):
  reference = _write(UL2, "untied", tmp_path)
  model, params = hf.load_hf_t5(tmp_path, dtype="bfloat16", param_dtype="bfloat16")
  assert {str(x.dtype) for x in jax.tree.leaves(params)} == {"bfloat16"}
  enc, dec = tokens(3)
  got = np.asarray(model.logits(params, enc, dec))
  want = _torch_logits(reference, enc, dec)
  # bf16 keeps ~3 significant digits; the logits are O(1).
  np.testing.assert_allclose(got, want, atol=0.1)
  assert np.abs(got - want).max() > 1e-4  # it did compute in bf16
