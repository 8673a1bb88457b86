"""Transformers T5 weights in and out: `load_hf_t5(directory) -> (model, params)` and
`export_hf_t5(model, params, out_dir, vocabulary=...)`.

Reads directories written by Transformers' `T5ForConditionalGeneration.save_pretrained`
(config.json + safetensors, single or sharded; T5 1.0, T5.1.1 and UL2 layouts) with numpy
only: torch and Transformers are not needed. `python -m t5x_ext.hf.convert` turns such a
directory into this project's checkpoint layout (see docs/internals.md, "Converted
checkpoints"); `python -m t5x_ext.hf.export` writes this project's checkpoints as a
Transformers directory with its tokenizer (docs/transformers_export.md). Both use the one
name map of `t5x_ext.hf.names`. Nothing is downloaded: users bring their own weights.
"""

from t5x_ext.hf.flax_params import config_to_spec, spec_to_config, to_flax_params
from t5x_ext.hf.hf_config import HFT5Spec, parse_hf_config, read_hf_config
from t5x_ext.hf.loader import ImportedT5Model, load_hf_params, load_hf_t5
from t5x_ext.hf.safetensors_io import read_state_dict

# The export is imported on first use, so that `python -m t5x_ext.hf.export` does not find
# its own module already imported by this package (runpy warns about that).
_EXPORT_NAMES = ("UnsupportedModelError", "export_hf_t5")


def __getattr__(name: str):
  if name in _EXPORT_NAMES:
    from t5x_ext.hf import export

    return getattr(export, name)
  raise AttributeError(f"module 't5x_ext.hf' has no attribute {name!r}")


__all__ = [
  "HFT5Spec",
  "ImportedT5Model",
  "UnsupportedModelError",
  "config_to_spec",
  "export_hf_t5",
  "load_hf_params",
  "load_hf_t5",
  "parse_hf_config",
  "read_hf_config",
  "read_state_dict",
  "spec_to_config",
  "to_flax_params",
]
