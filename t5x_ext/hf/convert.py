"""Converts a Transformers T5 checkpoint directory into this project's checkpoint layout.

  python -m t5x_ext.hf.convert --hf_dir=DIR --output_dir=OUT [--dtype=bfloat16]
      [--scan_layers] [--dropout_rate=R]

writes

  OUT/params/     Orbax `StandardCheckpointer` tree `{'params': params}` (float32), which
                  `t5x_ext.training.checkpointing.restore_params` reads for fine-tuning
  OUT/model.gin   the model as a gin model file (defines `MODEL` and `VOCAB_SIZE`), so a
                  run can `include` it instead of a `gin/models/...` file
  OUT/hf_config.json  the source config.json, for reference

The parameter layout follows `--scan_layers`, which the written model.gin records; a run
must keep it (or convert with `t5x_ext.model.network.stack_layer_params`/`unstack_layer_params`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil

from t5x_ext.hf.hf_config import CONFIG_FILE, HFT5Spec

PARAMS_DIR = "params"
MODEL_GIN = "model.gin"


def model_gin(
  config, spec: HFT5Spec | None, source: str, *, header: list[str] | None = None
) -> str:
  """A gin model file for `config`, in the style of `gin/models/`.

  Args:
    config: the `TransformerConfig` the params were converted for.
    spec: the source's parsed config (for the comment); unused with `header`.
    source: where the weights came from (for the comment).
    header: comment lines (each starting with '#') to open the file with instead of the
      Transformers ones (`python -m t5x_ext.t5x_ckpt.convert` passes its own).

  Returns:
    The file's text.
  """
  fields = [
    ("vocab_size", "%VOCAB_SIZE"),
    ("emb_dim", config.emb_dim),
    ("num_heads", config.num_heads),
    ("head_dim", config.head_dim),
    ("mlp_dim", config.mlp_dim),
    ("num_encoder_layers", config.num_encoder_layers),
    ("num_decoder_layers", config.num_decoder_layers),
    ("activations", tuple(config.activations)),
    ("logits_via_embedding", config.logits_via_embedding),
    ("dropout_rate", config.dropout_rate),
    ("dtype", config.dtype),
    ("param_dtype", config.param_dtype),
    ("relative_attention_num_buckets", config.relative_attention_num_buckets),
    ("relative_attention_max_distance", config.relative_attention_max_distance),
    ("layer_norm_epsilon", config.layer_norm_epsilon),
    ("scan_layers", config.scan_layers),
  ]
  if header is None:
    header = [
      f"# Converted from the Transformers T5 checkpoint {source}",
      f"# ({'gated-' if spec.gated else ''}{spec.activation}, "
      f"{'tied, scaled' if config.logits_via_embedding else 'untied'} output layer).",
      "# Written by `python -m t5x_ext.hf.convert`; params in ../params (restore_params).",
    ]
  lines = [
    *header,
    "from __gin__ import dynamic_registration",
    "from t5x_ext import models",
    "from t5x_ext import network",
    "",
    f"VOCAB_SIZE = {config.vocab_size}",
    "",
    "network.TransformerConfig:",
  ]
  for name, value in fields:
    text = value if isinstance(value, str) and value.startswith("%") else repr(value)
    lines.append(f"  {name} = {text}")
  lines += [
    "",
    "MODEL = @models.EncoderDecoderModel()",
    "models.EncoderDecoderModel.config = @network.TransformerConfig()",
    "",
  ]
  return "\n".join(lines)


def convert(
  hf_dir: str | pathlib.Path,
  output_dir: str | pathlib.Path,
  *,
  dtype: str = "bfloat16",
  scan_layers: bool = False,
  dropout_rate: float | None = None,
) -> pathlib.Path:
  """Converts `hf_dir` into `output_dir` (see the module docstring).

  Args:
    hf_dir: a directory written by `save_pretrained`.
    output_dir: where to write; must not already hold converted params.
    dtype: compute dtype recorded in model.gin (params are stored in float32).
    scan_layers: stacked-layer parameter layout (and `scan_layers` in model.gin).
    dropout_rate: dropout recorded in model.gin; None keeps the source's `dropout_rate`.

  Returns:
    The params directory.

  Raises:
    FileExistsError: when `output_dir/params` exists.
  """
  import jax
  import jax.numpy as jnp
  import orbax.checkpoint as ocp

  from t5x_ext.hf.loader import load_hf_params

  output_dir = pathlib.Path(output_dir).resolve()
  params_dir = output_dir / PARAMS_DIR
  if params_dir.exists():
    raise FileExistsError(f"output_dir={str(output_dir)!r} already holds {PARAMS_DIR}/")
  overrides = {"dtype": dtype, "scan_layers": scan_layers, "param_dtype": "float32"}
  if dropout_rate is not None:
    overrides["dropout_rate"] = dropout_rate
  spec, config, params = load_hf_params(hf_dir, **overrides)
  output_dir.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(params_dir, {"params": jax.tree.map(jnp.asarray, params)})
  checkpointer.wait_until_finished()
  checkpointer.close()
  (output_dir / MODEL_GIN).write_text(model_gin(config, spec, str(pathlib.Path(hf_dir).resolve())))
  shutil.copyfile(pathlib.Path(hf_dir) / CONFIG_FILE, output_dir / "hf_config.json")
  return params_dir


def main(argv: list[str] | None = None) -> int:
  """Command-line entry point; returns the exit status.

  Args:
    argv: arguments without the program name (default: sys.argv[1:]).

  Returns:
    0 on success.
  """
  parser = argparse.ArgumentParser(
    prog="python -m t5x_ext.hf.convert", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--hf_dir", required=True, help="directory from save_pretrained")
  parser.add_argument("--output_dir", required=True, help="where to write params/ and model.gin")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--scan_layers", action="store_true")
  parser.add_argument("--dropout_rate", type=float, default=None)
  args = parser.parse_args(argv)
  params_dir = convert(
    args.hf_dir,
    args.output_dir,
    dtype=args.dtype,
    scan_layers=args.scan_layers,
    dropout_rate=args.dropout_rate,
  )
  out = pathlib.Path(args.output_dir)
  print(json.dumps({"params": str(params_dir), "model_gin": str(out / MODEL_GIN)}))
  return 0


if __name__ == "__main__":
  from t5x_ext.launch import flags as _cli

  _cli.main_guard(main)  # its status; a user error exits 2, a bug 1 (docs/operations.md)
