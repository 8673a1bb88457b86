"""Every gin model file parses, defines MODEL and VOCAB_SIZE, and builds (jax.eval_shape)
with the published parameter count."""

import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest

import gin
from t5x_ext.launch import flags as cli
from t5x_ext.model import models

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"
MODEL_FILES = sorted(
  str(p.relative_to(GIN_DIR))
  for p in (GIN_DIR / "models").rglob("*.gin")
  if p.name != "architecture.gin"
)

# Published sizes: T5.1.1 (Raffel et al., 2020; the T5.1.1 release) and UL2 20B (Tay et al.,
# 2022). T5.1.1 XXL is often quoted as 11.3B, but its released configuration (d_model 4096,
# d_ff 10240, 64 heads x 64, 24+24 layers, vocab 32128, untied) has 11.135B parameters,
# the size of the released checkpoint; we check against that.
PUBLISHED = {
  "models/t5_1_1/small.gin": 77e6,
  "models/t5_1_1/base.gin": 248e6,
  "models/t5_1_1/large.gin": 783e6,
  "models/t5_1_1/xl.gin": 2.85e9,
  "models/t5_1_1/xxl.gin": 11.135e9,
  "models/ul2/ul2_20b.gin": 19.6e9,
  "models/t5/small.gin": 60.5e6,
}


def build(gin_file, bindings=()):
  gin.clear_config()
  cli.parse_gin([gin_file], bindings)
  model = cli.macro_value("MODEL").scoped_configurable_fn()
  vocab = cli.macro_value("VOCAB_SIZE")
  return model, vocab


def abstract_params(model):
  names = (
    ("decoder_input_tokens", "decoder_target_tokens", "decoder_causal_attention")
    if model.config.decoder_only
    else ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
  )
  batch = {k: jax.ShapeDtypeStruct((2, 16), np.int32) for k in names}
  return nn.unbox(jax.eval_shape(model.init_variables, jax.random.PRNGKey(0), batch)["params"])


def analytic_count(cfg):
  """Parameter count from the dimensions alone (independent of the module code)."""
  d, f, v, hd = cfg.emb_dim, cfg.mlp_dim, cfg.vocab_size, cfg.num_heads * cfg.head_dim
  mlp = len(cfg.activations) * d * f + f * d
  attn = 4 * d * hd
  relpos = cfg.num_heads * cfg.relative_attention_num_buckets
  enc = cfg.num_encoder_layers * (attn + mlp + 2 * d) + (
    relpos + d if cfg.num_encoder_layers else 0
  )
  cross = 0 if cfg.decoder_only else attn + d
  dec = cfg.num_decoder_layers * (attn + cross + mlp + 2 * d) + relpos + d
  out = 0 if cfg.logits_via_embedding else d * v
  return v * d + enc + dec + out


def test_model_files_exist():
  expected = {
    "models/t5_1_1/tiny.gin",
    "models/decoder_only/tiny.gin",
    "models/decoder_only/small.gin",
    "models/decoder_only/base.gin",
    *PUBLISHED,
  }
  assert expected <= set(MODEL_FILES)


@pytest.mark.parametrize("gin_file", MODEL_FILES)
def test_model_file_builds(gin_file):
  model, vocab = build(gin_file)
  assert isinstance(model, models.BaseModel)
  assert model.config.vocab_size == vocab
  assert isinstance(model, models.DecoderOnlyModel) == model.config.decoder_only
  params = abstract_params(model)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert count == analytic_count(model.config)
  if gin_file in PUBLISHED:
    assert abs(count - PUBLISHED[gin_file]) / PUBLISHED[gin_file] < 0.01, count
  if "tiny" in gin_file:
    assert vocab == 8192  # the embedded corpus's 8,100 ids, padded to a multiple of 128
    assert model.config.dtype == "float32"
  else:
    assert model.config.dtype == "bfloat16" and model.config.param_dtype == "float32"


def test_ul2_20b_dimensions():
  model, vocab = build("models/ul2/ul2_20b.gin")
  cfg = model.config
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers) == (32, 32)
  assert (cfg.emb_dim, cfg.mlp_dim, cfg.num_heads, cfg.head_dim) == (4096, 16384, 16, 256)
  assert cfg.activations == ("silu", "linear") and not cfg.logits_via_embedding
  assert vocab == 32128 and model.z_loss == 1e-4


def test_bindings_override_model_files():
  model, _ = build(
    "models/t5_1_1/tiny.gin",
    [
      "VOCAB_SIZE = 4096",
      "network.TransformerConfig.dtype = 'bfloat16'",
      "Z_LOSS = 0.0",
      "LOSS_NORMALIZING_FACTOR = 'NUM_TOTAL_TARGET_TOKENS'",
    ],
  )
  assert model.config.vocab_size == 4096 and model.config.dtype == "bfloat16"
  assert model.z_loss == 0.0 and model.loss_normalizing_factor == "NUM_TOTAL_TARGET_TOKENS"
  with pytest.raises(ValueError, match="activations"):
    build("models/t5_1_1/tiny.gin", ["network.TransformerConfig.activations = ('gelu', 'gelo')"])
