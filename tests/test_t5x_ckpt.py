"""Native T5X checkpoints: format, both namings, name/shape errors, config.gin, conversion."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import serialization
from t5x_ckpt_util import (
  FLAXFORMER_GIN,
  T5X_GIN,
  UL2_TINY,
  abstract_params,
  logits,
  random_params,
  tiny_config,
  write_fixture,
)

import gin
from t5x_ext.launch import flags
from t5x_ext.model import network
from t5x_ext.t5x_ckpt import (
  GinValues,
  ParamMismatchError,
  T5XCheckpoint,
  T5XFormatError,
  convert,
  names,
  t5x_format,
)
from t5x_ext.training import checkpointing

CONFIG = tiny_config(**UL2_TINY, relative_attention_max_distance=16)


@pytest.fixture(scope="module")
def params():
  return random_params(CONFIG, seed=1)


def _equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_layout_on_disk_is_t5x_format_version_3(tmp_path, params):
  step_dir = write_fixture(tmp_path, params, dtype="bfloat16")
  assert step_dir.name == "checkpoint_100"
  contents = serialization.msgpack_restore((step_dir / "checkpoint").read_bytes())
  assert contents["version"] == 3 and set(contents["optimizer"]) == {"target", "state"}
  spec = contents["optimizer"]["target"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
  assert spec["driver"] == "zarr" and spec["dtype"] == "bfloat16"
  assert spec["kvstore"] == {
    "driver": "file",
    "path": "target.encoder.layers_0.attention.query.kernel",
  }
  assert spec["metadata"]["shape"] == [32, 32]  # [D, H*E]: T5X stores 2-D attention kernels
  zarray = json.loads((step_dir / spec["kvstore"]["path"] / ".zarray").read_text())
  assert zarray["dtype"] == "bfloat16" and zarray["shape"] == [32, 32]
  assert (step_dir / "target.decoder.logits_dense.kernel").is_dir()


@pytest.mark.parametrize("naming", names.NAMINGS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("scan_layers", [False, True], ids=["unscanned", "scanned"])
def test_restore_gives_the_written_params_and_the_same_logits(
  tmp_path, params, naming, dtype, scan_layers
):
  write_fixture(tmp_path, params, naming=naming, dtype=dtype)
  config = tiny_config(**UL2_TINY, relative_attention_max_distance=16, scan_layers=scan_layers)
  expected = (
    params
    if dtype == "float32"
    else jax.tree.map(lambda x: np.asarray(np.asarray(x, ml_dtypes.bfloat16), np.float32), params)
  )
  if scan_layers:
    expected = jax.tree.map(np.asarray, network.stack_layer_params(expected))
  restored = checkpointing.restore_params(tmp_path, abstract_params(config))
  _equal(restored, expected)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(restored))
  if (naming, scan_layers) in (("t5x", False), ("flaxformer_scanned", True)):  # compiles: 2 of 8
    np.testing.assert_array_equal(logits(config, restored), logits(config, expected))


def test_path_forms_and_newest_step(tmp_path, params):
  other = jax.tree.map(lambda x: x + 1, params)
  write_fixture(tmp_path, params, step=5)
  newest = write_fixture(tmp_path, other, step=7)
  (tmp_path / "checkpoint_9.tmp-123").mkdir()  # an unfinished save is not a step
  target = abstract_params(CONFIG)
  _equal(checkpointing.restore_params(tmp_path, target), other)
  _equal(checkpointing.restore_params(tmp_path / "checkpoint_5", target), params)
  _equal(checkpointing.restore_params(newest / "checkpoint", target), other)
  assert T5XCheckpoint(tmp_path).step == 7


def test_inline_arrays_and_gcs_specs_are_read(tmp_path, params):
  # T5X keeps unpartitioned leaves inside the msgpack file; a checkpoint copied from GCS
  # names the 'gcs' driver with a placeholder bucket.
  stored = names.to_t5x_names(params)
  step = t5x_format.write_checkpoint(tmp_path, 1, stored, inline=lambda n, x: x.ndim == 1)
  raw = serialization.msgpack_restore((step / "checkpoint").read_bytes())
  spec = raw["optimizer"]["target"]["token_embedder"]["embedding"]
  spec["kvstore"] = {"driver": "gcs", "bucket": "t5x-dummy-bucket", "path": spec["kvstore"]["path"]}
  (step / "checkpoint").write_bytes(serialization.msgpack_serialize(raw))
  ckpt = T5XCheckpoint(step)
  assert ckpt.params["encoder/encoder_norm/scale"].inline
  assert not ckpt.params["token_embedder/embedding"].inline
  _equal(checkpointing.restore_params(step, abstract_params(CONFIG)), params)


def test_shape_mismatch_names_the_parameter_and_both_shapes(tmp_path, params):
  write_fixture(tmp_path, params)
  wider = tiny_config(**UL2_TINY, mlp_dim=40)
  with pytest.raises(ParamMismatchError) as e:
    checkpointing.restore_params(tmp_path, abstract_params(wider))
  message = str(e.value)
  assert "encoder/layers_0/mlp/wo/kernel" in message
  assert "(48, 32)" in message and "(40, 32)" in message


def test_missing_and_unexpected_parameters_are_named(tmp_path, params):
  stored = names.to_t5x_names(params)
  stored.pop("decoder/layers_1/mlp/wi_1/kernel")
  stored["decoder/layers_1/mlp/extra/kernel"] = np.zeros((3, 3), np.float32)
  t5x_format.write_checkpoint(tmp_path, 1, stored)
  with pytest.raises(ParamMismatchError) as e:
    checkpointing.restore_params(tmp_path, abstract_params(CONFIG))
  assert "missing in the checkpoint: decoder/layers_1/mlp/wi_1/kernel" in str(e.value)
  assert "not in the model: decoder/layers_1/mlp/extra/kernel" in str(e.value)


def test_tied_checkpoint_needs_a_tied_model(tmp_path):
  tied = tiny_config(logits_via_embedding=True)
  write_fixture(tmp_path, random_params(tied))
  with pytest.raises(ParamMismatchError, match="missing in the checkpoint: logits_dense/kernel"):
    checkpointing.restore_params(tmp_path, abstract_params(tiny_config()))
  assert "logits_dense" not in checkpointing.restore_params(tmp_path, abstract_params(tied))


@pytest.mark.parametrize("naming", names.NAMINGS)
def test_per_layer_relative_position_tables_are_refused(tmp_path, params, naming):
  write_fixture(tmp_path, params, naming=naming, per_layer_relpos=True)
  with pytest.raises(ParamMismatchError, match="one relative-position table per layer"):
    checkpointing.restore_params(tmp_path, abstract_params(CONFIG))


def test_unsupported_files_fail_clearly(tmp_path, params):
  step = write_fixture(tmp_path, params)
  raw = serialization.msgpack_restore((step / "checkpoint").read_bytes())
  spec = raw["optimizer"]["target"]["token_embedder"]["embedding"]
  spec["dtype"] = "uint16"
  (step / "checkpoint").write_bytes(serialization.msgpack_serialize(raw))
  with pytest.raises(T5XFormatError, match="version 2"):
    T5XCheckpoint(step)
  (step / "checkpoint").write_bytes(b"model_checkpoint_path: 'model.ckpt-1'")
  with pytest.raises(T5XFormatError, match="TensorFlow"):
    T5XCheckpoint(step)
  with pytest.raises(FileNotFoundError):
    T5XCheckpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("text", [FLAXFORMER_GIN, T5X_GIN], ids=["flaxformer", "t5x"])
def test_config_gin_values(text):
  values = GinValues(text)
  assert values.get("T5Config.emb_dim", "EMBED_DIM") == 32
  assert values.get("T5Config.num_heads", "NUM_HEADS") == 4
  assert values.get("RelativePositionBiases.max_distance") == 16
  assert values.get("T5Config.mlp_activations", "MlpBlock.activations") in (
    ("swish", "linear"),
    ("silu", "linear"),
  )
  assert values.get("nothing", default=7) == 7


def test_config_gin_that_contradicts_the_shapes_is_an_error(tmp_path, params):
  write_fixture(tmp_path, params, gin=FLAXFORMER_GIN.replace("MLP_DIM = 48", "MLP_DIM = 64"))
  with pytest.raises(ValueError, match="MLP_DIM = 64.*mlp_dim = 48"):
    convert.convert(tmp_path, tmp_path / "out")


@pytest.mark.parametrize(
  "naming,text,scan_layers",
  [("t5x", T5X_GIN, False), ("flaxformer_scanned", FLAXFORMER_GIN, True)],
  ids=["t5x", "flaxformer_scanned"],
)
def test_convert_writes_params_and_model_gin(tmp_path, params, naming, text, scan_layers):
  write_fixture(tmp_path / "t5x", params, naming=naming, gin=text)
  out = tmp_path / "out"
  args = ["--t5x_checkpoint", str(tmp_path / "t5x"), "--output_dir", str(out), "--dtype=float32"]
  assert convert.main(args + (["--scan_layers"] if scan_layers else [])) == 0
  assert (out / "t5x_config.gin").read_text() == text
  gin.clear_config()
  model = flags.model_from_gin([str(out / "model.gin")])
  gin.clear_config()
  # Everything the shapes cannot tell came from config.gin.
  assert model.config.activations == ("silu", "linear")
  assert model.config.relative_attention_max_distance == 16
  assert model.config.scan_layers == scan_layers
  restored = checkpointing.restore_params(out, abstract_params(model.config))
  expected = network.stack_layer_params(params) if scan_layers else params
  _equal(restored, expected)
  # scan vs no scan: the same maths compiled differently (float reassociation only)
  np.testing.assert_allclose(logits(model.config, restored), logits(CONFIG, params), atol=1e-5)
  with pytest.raises(FileExistsError):
    convert.convert(tmp_path / "t5x", out)


def test_convert_cli_runs_as_a_module(tmp_path, params):
  write_fixture(tmp_path / "t5x", params)
  run = [sys.executable, "-m", "t5x_ext.t5x_ckpt.convert"]
  proc = subprocess.run(
    run + [f"--t5x_checkpoint={tmp_path / 't5x'}", f"--output_dir={tmp_path / 'o'}"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["model_gin"].endswith("model.gin")
  bad = subprocess.run(
    run + [f"--t5x_checkpoint={tmp_path / 'none'}", f"--output_dir={tmp_path / 'p'}"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode != 0 and "No T5X checkpoint" in bad.stderr


@pytest.mark.slow  # a subprocess on 8 simulated devices, compiling the model there
def test_restores_on_eight_simulated_devices_reading_only_slices(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "-q",
      "-x",
      "-p",
      "no:cacheprovider",
      "tests/test_t5x_ckpt_eight_devices.py",
    ],
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    cwd=pathlib.Path(__file__).parent.parent,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
  assert " passed" in proc.stdout and "skipped" not in proc.stdout


class _ShapeOnly:
  """A stored tensor's name and shape, without data (plans need nothing else)."""

  def __init__(self, name, shape):
    self.name, self.shape = name, tuple(shape)


def test_released_ul2_20b_layout_fits_the_ul2_20b_gin_model():
  # The names and shapes of gs://scenic-bucket/ul2/ul220b/checkpoint_* (t5x naming, 2-D
  # attention kernels, shared relative-position tables, decoder/logits_dense), as UL2's
  # flaxformer gin builds them, planned onto gin/models/ul2/ul2_20b.gin without any data.
  d, heads, head_dim, f, v, layers = 4096, 16, 256, 16384, 32128, 32
  stored = {"token_embedder/embedding": (v, d), "decoder/logits_dense/kernel": (d, v)}
  for stack, attentions, norms in (
    ("encoder", ["attention"], ["pre_attention_layer_norm"]),
    (
      "decoder",
      ["self_attention", "encoder_decoder_attention"],
      ["pre_self_attention_layer_norm", "pre_cross_attention_layer_norm"],
    ),
  ):
    stored[f"{stack}/relpos_bias/rel_embedding"] = (heads, 32)
    stored[f"{stack}/{stack}_norm/scale"] = (d,)
    for i in range(layers):
      prefix = f"{stack}/layers_{i}"
      for a in attentions:
        for p in ("query", "key", "value"):
          stored[f"{prefix}/{a}/{p}/kernel"] = (d, heads * head_dim)
        stored[f"{prefix}/{a}/out/kernel"] = (heads * head_dim, d)
      for n in [*norms, "pre_mlp_layer_norm"]:
        stored[f"{prefix}/{n}/scale"] = (d,)
      stored[f"{prefix}/mlp/wi_0/kernel"] = stored[f"{prefix}/mlp/wi_1/kernel"] = (d, f)
      stored[f"{prefix}/mlp/wo/kernel"] = (f, d)
  refs = {n: _ShapeOnly(n, s) for n, s in stored.items()}
  gin.clear_config()
  model = flags.model_from_gin(["models/ul2/ul2_20b.gin"])
  gin.clear_config()
  views = names.source_views(refs)
  config, _ = convert.gin_values.infer_config(
    {n: view.shape for n, view in views.items()},
    GinValues(
      FLAXFORMER_GIN.split("# Architecture")[0] + "dense.MlpBlock.activations = ('swish', 'linear')"
    ),
    scan_layers=True,
    remat_policy="dots_no_batch",
  )
  assert config == model.config
  plan = names.plan(refs, convert.model_shapes(model.config))  # scanned: 32 views per tensor
  assert plan["encoder/layers/attention/query/kernel"].shape == (32, d, heads, head_dim)
  assert sum(int(np.prod(r.shape)) for r in plan.values()) == 19_591_209_984
