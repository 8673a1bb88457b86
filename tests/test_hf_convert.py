"""`python -m t5x_ext.hf.convert`: Transformers directory -> params checkpoint + model.gin."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
from hf_util import UL2, tokens  # noqa: E402

from t5x_ext.hf import convert, load_hf_t5, torch_reference  # noqa: E402
from t5x_ext.model import models  # noqa: E402
from t5x_ext.training import checkpointing


@pytest.fixture
def hf_dir(tmp_path):
  model = torch_reference.build_torch_t5(UL2, seed=5, untie_lm_head=True)
  torch_reference.save_untied(model, tmp_path / "hf")
  return tmp_path / "hf"


def _model_from_gin(path, **bindings):
  from t5x_ext.launch import flags

  return flags.model_from_gin(
    [str(path)], [f"network.TransformerConfig.{k} = {v!r}" for k, v in bindings.items()]
  )


@pytest.mark.parametrize("scan_layers", [False, True])
def test_convert_round_trip(hf_dir, tmp_path, scan_layers):
  out = tmp_path / "out"
  assert (
    convert.main(
      ["--hf_dir", str(hf_dir), "--output_dir", str(out)]
      + (["--scan_layers"] if scan_layers else [])
    )
    == 0
  )
  assert json.loads((out / "hf_config.json").read_text())["feed_forward_proj"] == "gated-silu"
  # The gin file builds the same network (compute dtype bf16 by default; fp32 to compare).
  model = _model_from_gin(out / "model.gin", dtype="float32")
  assert isinstance(model, models.EncoderDecoderModel)
  assert model.config.scan_layers == scan_layers
  assert model.config.activations == ("silu", "linear")
  enc, dec = tokens(7)
  batch = {
    "encoder_input_tokens": enc,
    "decoder_input_tokens": dec,
    "decoder_target_tokens": np.roll(dec, -1, axis=1) + 1,
  }
  abstract = nn.unbox(
    jax.eval_shape(lambda: model.init_variables(jax.random.key(0), batch))["params"]
  )
  params = checkpointing.restore_params(out / "params", abstract)
  direct_model, direct = load_hf_t5(hf_dir, scan_layers=scan_layers)
  jax.tree.map(np.testing.assert_array_equal, params, direct)
  np.testing.assert_allclose(
    np.asarray(model.logits(params, enc, dec)),
    np.asarray(direct_model.logits(direct, enc, dec)),
    atol=1e-5,  # jitted vs not: float reassociation only
  )


def test_convert_refuses_to_overwrite(hf_dir, tmp_path):
  convert.convert(hf_dir, tmp_path / "out")
  with pytest.raises(FileExistsError, match="params"):
    convert.convert(hf_dir, tmp_path / "out")


def test_cli_runs_as_a_module(hf_dir, tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_ext.hf.convert",
      f"--hf_dir={hf_dir}",
      f"--output_dir={tmp_path / 'o'}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / "o" / "params").is_dir() and (tmp_path / "o" / "model.gin").exists()
  bad = subprocess.run(
    [
      sys.executable,
      "-m",
      "t5x_ext.hf.convert",
      f"--hf_dir={tmp_path}",
      f"--output_dir={tmp_path / 'p'}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode != 0 and "config.json" in bad.stderr
