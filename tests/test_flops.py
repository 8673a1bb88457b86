"""The peak table per JAX device and the FLOPs count of `t5x_ext.training.flops`."""

from __future__ import annotations

import pytest

from t5x_ext.model import models
from t5x_ext.training import flops, metric_writers
from tests.tiny_network import tiny_config

# `device_kind` as JAX reports it -> dense bf16 FLOP/s of one JAX device.
KINDS = {
  "TPU v2": 22.5e12,  # 45 T per chip, two cores = two devices
  "TPU v3": 61.5e12,  # 123 T per chip, two devices
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,  # v5e
  "TPU v5e": 197e12,
  "TPU v5": 459e12,  # v5p as JAX reports it
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,  # v6e (Trillium)
  "TPU v6e": 918e12,
  "NVIDIA A100-SXM4-80GB": 312e12,
  "NVIDIA A100-SXM4-40GB": 312e12,
  "NVIDIA A100-PCIE-40GB": 312e12,
  "NVIDIA A100 80GB PCIe": 312e12,
  "NVIDIA H100 80GB HBM3": 989e12,  # SXM5
  "NVIDIA H100 PCIe": 756e12,
  "NVIDIA H200": 989e12,
  "NVIDIA B200": 2.25e15,
  "NVIDIA L4": 121e12,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_device_kind_maps_to_its_figure(kind):
  assert flops.peak_flops_per_device(kind) == KINDS[kind]
  assert flops.unknown_peak_note(kind) is None
  # The old import path is the same function (one table).
  assert metric_writers.peak_flops_per_device(kind) == KINDS[kind]


def test_a_tpu_v3_device_is_half_a_chip():
  chip = 123e12
  assert flops.peak_flops_per_device("TPU v3") == chip / 2
  assert flops.peak_flops_per_device("TPU v2") == 45e12 / 2
  # A v3-8 (4 chips, 8 devices) peaks at 4 chips' figure.
  assert flops.total_peak_flops("TPU v3", 8) == (4 * chip, None)


@pytest.mark.parametrize(
  "kind",
  ["cpu", "TFRT_CPU_0", "NVIDIA H100 NVL", "NVIDIA L40S", "TPU v4 lite", "TPU7x", "", "Foo"],
)
def test_unknown_kinds_have_no_peak_and_a_note(kind):
  assert flops.peak_flops_per_device(kind) is None
  note = flops.unknown_peak_note(kind)
  assert note == f"no MFU: unknown device kind {kind!r}; set PEAK_FLOPS_PER_DEVICE"
  assert "\n" not in note
  assert flops.total_peak_flops(kind, 4) == (None, note)


def test_a_given_peak_overrides_the_table():
  assert flops.total_peak_flops("cpu", 2, 1e12) == (2e12, None)
  assert flops.total_peak_flops("TPU v4", 4, 100e12) == (400e12, None)
  with pytest.raises(ValueError, match="PEAK_FLOPS_PER_DEVICE"):
    flops.total_peak_flops("cpu", 2, 0.0)


def test_the_benchmarks_read_the_same_table():
  import pathlib
  import sys

  bench = pathlib.Path(__file__).resolve().parents[1] / "bench"
  sys.path.insert(0, str(bench))
  try:
    import scaling
  finally:
    sys.path.remove(str(bench))
  for kind, figure in KINDS.items():
    assert scaling.peak_flops(kind) == figure, kind
  assert scaling.peak_flops("cpu") is None


# ------------------------------------------------------------------------------ count

# tests/tiny_network.TINY: D=32, H x E = 4 x 8 = 32, F=48, gated MLP (gelu, linear), V=64,
# one encoder and two decoder layers. Multiply-adds ("MACs") per token and layer:
QKVO = 4 * 32 * 32  # q, k, v, o projections: 4096
MLP = 2 * 32 * 48 + 48 * 32  # wi_0, wi_1 and wo: 4608
OUT = 32 * 64  # the output layer: 2048


def test_encoder_decoder_count_equals_a_hand_count():
  cfg = tiny_config()
  lengths = {"inputs": 6, "targets": 4}
  # Encoder: 6 tokens x 1 layer x (projections + MLP + logits and values over 6 keys).
  enc = 6 * 1 * (QKVO + MLP + 2 * 6 * 32)  # 54,528
  # Decoder self-attention layers: 4 tokens x 2 layers, over 4 keys (the whole matrix).
  dec = 4 * 2 * (QKVO + MLP + 2 * 4 * 32)  # 71,680
  # Cross-attention, 2 layers: q and o on 4 decoder tokens, logits and values over 6 encoder
  # keys; k and v once per encoder token.
  cross = 2 * (4 * (2 * 32 * 32 + 2 * 6 * 32) + 6 * 2 * 32 * 32)  # 44,032
  logits = 4 * OUT  # 8,192
  macs = enc + dec + cross + logits
  assert macs == 178_432
  assert flops.forward_flops_per_example(cfg, lengths) == 2 * macs
  assert flops.training_flops_per_example(cfg, lengths) == 6 * macs
  assert flops.training_flops_per_step(cfg, lengths, 8) == 8 * 6 * macs
  assert flops.decoder_length(cfg, lengths) == 4
  assert flops.flops_per_token(cfg, lengths) == 6 * macs / 4
  # The model interface keeps the same meaning and figure (FLOPs per decoder position).
  assert models.EncoderDecoderModel(cfg).flops_per_token(lengths) == pytest.approx(
    6 * macs / 4, rel=1e-12
  )


@pytest.mark.parametrize(
  "lengths, length", [({"inputs": 3, "targets": 5}, 8), ({"targets": 5}, 5)], ids=["prefix", "lm"]
)
def test_decoder_only_count_equals_a_hand_count(lengths, length):
  cfg = tiny_config(decoder_only=True, num_encoder_layers=0)
  # Every one of the L = inputs + targets positions runs 2 layers (attending all L keys) and
  # the output layer.
  macs = length * (2 * (QKVO + MLP + 2 * length * 32) + OUT)
  assert macs == {8: 163_840, 5: 100_480}[length]
  assert flops.decoder_length(cfg, lengths) == length
  assert flops.forward_flops_per_example(cfg, lengths) == 2 * macs
  assert flops.training_flops_per_example(cfg, lengths) == 6 * macs
  assert flops.flops_per_token(cfg, lengths) == 6 * macs / length
  assert models.DecoderOnlyModel(cfg).flops_per_token(lengths) == pytest.approx(
    6 * macs / length, rel=1e-12
  )


def test_count_is_six_n_plus_attention_for_t5_small():
  # T5.1.1 small (gin/models/t5_1_1/small.gin): 6 x the matmul weights each token passes
  # (PaLM's 6N) plus 12 x layers x (H x E) x keys for the attention (PaLM's 12LHQT).
  cfg = tiny_config(
    vocab_size=32128, emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024,
    num_encoder_layers=8, num_decoder_layers=8,
  )  # fmt: skip
  i, t, he = 512, 128, 6 * 64
  n_layer = 4 * 512 * he + 3 * 512 * 1024
  n_enc = i * 8 * n_layer
  n_dec = t * 8 * (n_layer + 2 * 512 * he) + t * 512 * 32128  # + cross q, o; logits
  n_cross_kv = i * 8 * 2 * 512 * he
  attention = 12 * 8 * he * (i * i + t * t + t * i)
  want = 6 * (n_enc + n_dec + n_cross_kv) + attention
  assert flops.training_flops_per_example(cfg, {"inputs": i, "targets": t}) == want


@pytest.mark.parametrize(
  "overrides, lengths",
  [
    (dict(activations=("relu",)), {"inputs": 64, "targets": 16}),
    (dict(num_encoder_layers=3, num_decoder_layers=1, head_dim=16), {"inputs": 7, "targets": 9}),
    (dict(decoder_only=True, num_encoder_layers=0, mlp_dim=100), {"inputs": 10, "targets": 30}),
  ],
)
def test_the_model_interface_gives_the_same_count(overrides, lengths):
  # models.py calls the one count in t5x_ext.model.flops (re-exported by training.flops).
  cfg = tiny_config(**overrides)
  cls = models.DecoderOnlyModel if cfg.decoder_only else models.EncoderDecoderModel
  assert cls(cfg).flops_per_token(lengths) == pytest.approx(
    flops.flops_per_token(cfg, lengths), rel=1e-12
  )


def test_progress_bar_shows_mfu_when_the_run_has_it(capsys):
  from t5x_ext.training import metric_writers

  bar = metric_writers.Progress(4, enabled=True)
  bar.update(1, {"loss": 2.5, "tokens_per_s": 100.0, "mfu": 0.4125, "grad_norm": 1.0})
  postfix = bar._bar.postfix
  bar.close()
  assert "mfu=0.4125" in postfix and "loss=2.5" in postfix and "grad_norm" not in postfix
