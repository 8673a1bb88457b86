"""`TransformerConfig.attention_implementation`: the choice per backend, and the kernels' maths.

The TPU flash-attention kernel runs here in Pallas's TPU interpret mode
(`jax.experimental.pallas.tpu.force_tpu_interpret_mode`, jax 0.10.2), which executes the
kernel's own code (its blocks, segment-id masks, causal masks, custom VJP) on CPU. Its
lengths must be multiples of 128, hence Q = K = 128 below. cuDNN cannot run on a CPU: its
tests check the choice and the clear error; the bench's device check compares it on a GPU.

Each case compares the outputs at real (non-padding) queries and the gradients of a loss over
them, for the queries, keys, values and the [1, H, Q, K] bias, with today's attention
(`jax.nn.dot_product_attention` with the dense mask, the pre-switch code).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from t5x_ext.model import attention, masks, models, network
from tests import tiny_network

TOL = dict(rtol=2e-5, atol=2e-5)
B, L, H, E = 2, 128, 2, 8


def _today(q, k, v, bias, m):
  return jax.nn.dot_product_attention(q, k, v, bias, m.dense, scale=1.0)


def _xla_path(q, k, v, bias, m):
  return jax.nn.dot_product_attention(q, k, v, bias, m.dense, scale=1.0, implementation="xla")


def _pallas(q, k, v, bias, m):
  return attention.pallas_tpu_attention(q, k, v, bias, m)


def _qkvb(q_len=L, k_len=L, bias=True, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, q_len, H, E)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(B, k_len, H, E)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(B, k_len, H, E)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(1, H, q_len, k_len)), jnp.float32) if bias else None
  return q, k, v, b


def _tokens(lengths, total=L):
  return jnp.asarray([[3] * n + [0] * (total - n) for n in lengths], jnp.int32)


def _packed_ids(cuts, pad_from, total=L):
  """Segment ids 1, 2, ... split at `cuts`, 0 from `pad_from` on (one list per row)."""
  rows = []
  for row_cuts, pad in zip(cuts, pad_from, strict=True):
    ids = np.searchsorted(np.asarray(row_cuts), np.arange(total), side="right") + 1
    ids[pad:] = 0
    rows.append(ids)
  return jnp.asarray(np.stack(rows), jnp.int32)


def _encoder_mask(tokens, seg=None):
  s = attention.segments(tokens > 0, seg)
  return attention.AttentionMask(
    masks.encoder_mask(tokens, seg), s, s, None, False, seg is not None
  )


def _decoder_mask(targets, seg=None, prefix=None):
  m, _, _ = network._decoder_self_mask("full", L, 0, None, targets, seg, prefix, None)
  return m


def _cross_mask(enc_tokens, dec_targets, enc_seg=None, dec_seg=None):
  dense = masks.cross_mask(enc_tokens, dec_targets.shape[1], enc_seg, dec_seg)
  return attention.AttentionMask(
    dense,
    attention.segments(dec_targets > 0, dec_seg),
    attention.segments(enc_tokens > 0, enc_seg),
    None,
    False,
    enc_seg is not None,
  )


def _cases():
  enc = _tokens([128, 90])
  dec = _tokens([100, 128])
  enc_seg = _packed_ids([[40, 70], [64]], [120, 128])
  dec_seg = _packed_ids([[50, 80], [30]], [128, 110])
  prefix = jnp.asarray(np.arange(L)[None] < np.array([[37], [64]]), jnp.int32)
  return {
    "encoder": lambda: (_qkvb(), _encoder_mask(enc)),
    "causal_decoder": lambda: (_qkvb(), _decoder_mask(dec)),
    "cross": lambda: (_qkvb(bias=False), _cross_mask(enc, dec)),
    "packed_encoder": lambda: (_qkvb(), _encoder_mask(jnp.where(enc_seg > 0, 3, 0), enc_seg)),
    "packed_causal_decoder": lambda: (
      _qkvb(),
      _decoder_mask(jnp.where(dec_seg > 0, 3, 0), dec_seg),
    ),
    "packed_cross": lambda: (
      _qkvb(bias=False),
      _cross_mask(jnp.where(enc_seg > 0, 3, 0), jnp.where(dec_seg > 0, 3, 0), enc_seg, dec_seg),
    ),
    "prefix_lm": lambda: (_qkvb(), _decoder_mask(dec, None, prefix)),
  }


def _loss_and_grads(fn, q, k, v, bias, m):
  real = (jnp.broadcast_to(m.q_segments, (B, q.shape[1])) > 0)[:, :, None, None]
  w = jnp.asarray(np.random.default_rng(7).normal(size=q.shape), jnp.float32) * real

  def loss(q, k, v, bias):
    return jnp.sum(fn(q, k, v, bias, m) * w)

  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  out = fn(q, k, v, bias, m) * real
  return out, jax.grad(loss, argnums=argnums)(q, k, v, bias)


@pytest.mark.parametrize("case", list(_cases()))
def test_kernels_match_todays_attention_outputs_and_gradients(case):
  (q, k, v, bias), m = _cases()[case]()
  ref_out, ref_grads = jax.jit(functools.partial(_loss_and_grads, _today))(q, k, v, bias, m)
  for fn in (_xla_path, _pallas):
    with pltpu.force_tpu_interpret_mode():
      out, grads = jax.jit(functools.partial(_loss_and_grads, fn))(q, k, v, bias, m)
    np.testing.assert_allclose(out, ref_out, **TOL, err_msg=f"{case} {fn.__name__} output")
    for name, got, want in zip("qkvb"[: len(grads)], grads, ref_grads, strict=True):
      np.testing.assert_allclose(got, want, **TOL, err_msg=f"{case} {fn.__name__} d{name}")
  if bias is not None:
    assert float(jnp.abs(ref_grads[3]).max()) > 0  # the bias gradient is really compared


def _batch(decoder_only=False):
  rng = np.random.default_rng(0)
  tgt = rng.integers(2, 60, (B, L), dtype=np.int32)
  tgt[0, 100:] = 0
  dec_in = np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], 1)
  if decoder_only:
    prefix = (np.arange(L)[None] < np.array([[37], [64]])).astype(np.int32)
    return {
      "decoder_input_tokens": dec_in,
      "decoder_target_tokens": tgt,
      "decoder_loss_weights": ((tgt > 0) & (prefix == 0)).astype(np.float32),
      "decoder_causal_attention": prefix,
    }
  enc = rng.integers(2, 60, (B, L), dtype=np.int32)
  enc[1, 90:] = 0
  enc_seg = np.asarray(_packed_ids([[40, 70], [64]], [128, 90]))
  dec_seg = np.asarray(_packed_ids([[50, 80], [30]], [100, 128]))
  dec_in[np.arange(B)[:, None], np.asarray([[50, 80], [30, 30]])] = 0  # segment starts
  return {
    "encoder_input_tokens": enc,
    "encoder_segment_ids": enc_seg,
    "decoder_input_tokens": dec_in,
    "decoder_target_tokens": tgt,
    "decoder_segment_ids": dec_seg,
    "decoder_loss_weights": (tgt > 0).astype(np.float32),
  }


def _model_loss_and_grads(model_cls, cfg, batch):
  model = model_cls(cfg)
  shapes = nn.unbox(jax.eval_shape(model.init_variables, jax.random.key(0), batch)["params"])
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype), shapes)

  @jax.jit
  def run(params):
    (loss, aux), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, None)
    return loss, aux["token_loss"], grads

  return run(params)


@pytest.mark.parametrize("decoder_only", [False, True], ids=["packed_encdec", "prefix_lm"])
def test_network_with_the_tpu_kernel_matches_xla(decoder_only):
  # Through the whole network: the masks it builds reach the kernel (encoder, causal decoder
  # and cross attention of packed, padded rows; a decoder-only prefix LM), relative bias
  # gradient included (it is a parameter).
  # The encoder-decoder's layers scanned, as large.gin runs them. (Not rematerialised as
  # large.gin's are: interpret mode runs the kernel through io_callbacks, which
  # `jax.checkpoint` does not take; a compiled TPU kernel is an ordinary custom call.)
  extra = {"scan_layers": True, "num_encoder_layers": 2}
  if decoder_only:
    extra = {"decoder_only": True, "num_encoder_layers": 0}
  cfg = tiny_network.tiny_config(num_decoder_layers=1, **extra)
  model_cls = models.DecoderOnlyModel if decoder_only else models.EncoderDecoderModel
  batch = _batch(decoder_only)
  ref = _model_loss_and_grads(model_cls, cfg.replace(attention_implementation="xla"), batch)
  with pltpu.force_tpu_interpret_mode():
    got = _model_loss_and_grads(
      model_cls, cfg.replace(attention_implementation="pallas_tpu"), batch
    )
  np.testing.assert_allclose(got[0], ref[0], **TOL)
  np.testing.assert_allclose(got[1], ref[1], **TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), got[2], ref[2])
  relpos = got[2]["decoder"]["relpos_bias"]["rel_embedding"]
  assert float(jnp.abs(relpos).max()) > 0


def test_auto_on_cpu_is_xla_and_equals_explicit_xla():
  batch = _batch()
  cfg = tiny_network.tiny_config(num_decoder_layers=1)
  auto = _model_loss_and_grads(models.EncoderDecoderModel, cfg, batch)
  xla = _model_loss_and_grads(
    models.EncoderDecoderModel, cfg.replace(attention_implementation="xla"), batch
  )
  np.testing.assert_array_equal(auto[0], xla[0])
  assert cfg.attention_implementation == "auto"
  for kind in attention.describe(cfg, L, L).values():
    assert kind["implementation"] == "xla" and "cpu" in kind["reason"]


def test_cudnn_on_cpu_fails_naming_the_setting_and_the_backend():
  cfg = tiny_network.tiny_config(dtype="bfloat16", attention_implementation="cudnn")
  batch = {k: v[:, :16] for k, v in _batch().items()}
  with pytest.raises(ValueError, match=r"attention_implementation='cudnn'.*backend 'cpu'"):
    _model_loss_and_grads(models.EncoderDecoderModel, cfg, batch)


def test_pallas_tpu_on_cpu_without_interpret_mode_fails_clearly():
  with pytest.raises(ValueError, match=r"attention_implementation='pallas_tpu'.*backend 'cpu'"):
    attention.describe(tiny_network.tiny_config(attention_implementation="pallas_tpu"), L, L)


CHOOSE = dict(q_len=512, kv_len=512, head_dim=64, dtype="bfloat16", has_bias=True)


def _mask(causal=False, packed=False, prefix=False):
  z = jnp.zeros((1, 1), jnp.int32)
  return attention.AttentionMask(z > 0, z, z, (z > 0) if prefix else None, causal, packed)


@pytest.mark.parametrize(
  "platform, kwargs, want, reason",
  [
    ("cpu", {}, "xla", "no fused kernel on backend 'cpu'"),
    ("cuda", {}, "cudnn", "auto: cudnn"),
    ("cuda", {"mask": _mask(causal=True)}, "cudnn", "auto: cudnn"),
    ("cuda", {"mask": _mask(packed=True)}, "xla", "packed rows"),
    ("cuda", {"mask": _mask(prefix=True)}, "xla", "prefix-LM"),
    ("cuda", {"dtype": "float32"}, "xla", "bfloat16/float16"),
    ("cuda", {"head_dim": 12}, "xla", "head_dim=12"),
    ("cuda", {"dense_only": True}, "xla", "dense mask"),
    ("rocm", {}, "xla", "no fused kernel"),
    ("tpu", {"mask": _mask(packed=True, prefix=True)}, "pallas_tpu", "auto: pallas_tpu"),
    ("tpu", {"q_len": 100}, "xla", "multiples of 128"),
    ("tpu", {"chunk_size": 128}, "pallas_tpu", "attention_chunk_size=128 unused"),
    ("cpu", {"chunk_size": 128}, "xla", "blocks of 128"),
  ],
)
def test_auto_picks_per_backend_and_says_why(platform, kwargs, want, reason):
  args = {**CHOOSE, "mask": _mask(), **kwargs}
  impl, why = attention.choose("auto", platform=platform, **args)
  assert impl == want
  assert reason in why


def test_explicit_kernels_fail_where_they_cannot_run():
  with pytest.raises(ValueError, match=r"'cudnn'.*'cuda'.*packed rows"):
    attention.choose("cudnn", platform="cuda", mask=_mask(packed=True), **CHOOSE)
  with pytest.raises(ValueError, match=r"'pallas_tpu'.*'tpu'.*multiples of 128"):
    attention.choose("pallas_tpu", platform="tpu", mask=None, **{**CHOOSE, "kv_len": 77})
  assert attention.choose("pallas_tpu", platform="cpu", mask=None, interpret=True, **CHOOSE)[0] == (
    "pallas_tpu"
  )
  assert attention.choose("xla", platform="cuda", mask=None, **CHOOSE)[0] == "xla"


def test_config_values():
  assert tiny_network.tiny_config().attention_implementation == "auto"
  assert tiny_network.tiny_config(attention_implementation=None).attention_implementation == "xla"
  for name in attention.IMPLEMENTATIONS:
    if name != "cudnn":
      tiny_network.tiny_config(attention_implementation=name)
  with pytest.raises(ValueError, match="attention_implementation='flash'"):
    tiny_network.tiny_config(attention_implementation="flash")


def test_the_choice_is_logged_once(caplog):
  attention._LOGGED.clear()
  with caplog.at_level("INFO", logger="t5x_ext.model.attention"):
    for _ in range(3):
      attention.log_choice("attention", "xla", "auto: no fused kernel on backend 'cpu'")
  assert len([r for r in caplog.records if "attention attention: xla" in r.getMessage()]) == 1
  attention.log_choice("cross", "xla", "auto: cudnn does not qualify (packed rows ...)")
  assert caplog.records[-1].levelname == "WARNING"


def test_the_tpu_kernel_runs_per_device_on_a_mesh():
  # A 2 x 2 (data x model) mesh of simulated CPU devices, in a process of its own: the kernel
  # sees each device's rows and heads, and the loss and gradients equal XLA's.
  import subprocess
  import sys

  from tests.bench_scripts import REPO

  proc = subprocess.run(
    [sys.executable, "-m", "tests._attention_mesh_child"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
