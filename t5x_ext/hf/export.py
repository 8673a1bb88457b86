"""Writes an encoder-decoder of this project as a Transformers T5 directory.

  python -m t5x_ext.hf.export --checkpoint=PATH --output_dir=OUT [--dtype=float32|bfloat16]
      [--max_shard_size=5GB] [--gin_file=model.gin ...] [--gin_bindings=B ...]
      [--vocabulary=spm.model|none] [--extra_ids=100] [--mode_token_ids=JSON]

`PATH` is anything `t5x_ext.training.checkpointing.restore_params` reads: a MODEL_DIR, one step
directory, or the output of `python -m t5x_ext.hf.convert`. The model comes from the gin
files given, else from the nearest `config.gin` (written by `t5x_ext.train` into MODEL_DIR)
or `model.gin` (written by the converter) at or above PATH. OUT receives

  config.json                         T5Config: feed_forward_proj, tie_word_embeddings,
                                      dimensions, relative attention, special ids, dtype
  generation_config.json              decoder start / EOS / pad ids
  model.safetensors                   or model-0000k-of-0000n.safetensors shards and
                                      model.safetensors.index.json above --max_shard_size
  spiece.model, tokenizer_config.json the SentencePiece tokenizer with its extra ids
                                      (see `t5x_ext.hf.tokenizer`)

so that `T5ForConditionalGeneration.from_pretrained(OUT)` and
`AutoTokenizer.from_pretrained(OUT)` load it offline. Tensor names and orientations come from
`t5x_ext.hf.names`, the map the import uses. Tensors are converted and written one at a
time: the export needs the parameters (restored once, in the export dtype) plus one tensor.

Decoder-only models (`models.DecoderOnlyModel`) have no counterpart among Transformers' T5
classes and are refused with a message (exit status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import sys
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import ml_dtypes
import numpy as np

from t5x_ext.errors import UserError
from t5x_ext.hf import names
from t5x_ext.hf.flax_params import config_to_spec
from t5x_ext.hf.hf_config import CONFIG_FILE, to_hf_config
from t5x_ext.hf.safetensors_io import INDEX_FILE, SINGLE_FILE, write_safetensors
from t5x_ext.hf.tokenizer import write_tokenizer
from t5x_ext.model import network

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
GENERATION_CONFIG = "generation_config.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


class UnsupportedModelError(ValueError):
  """The model has no Transformers T5 counterpart (e.g. a decoder-only model)."""


def parse_size(size: int | str) -> int:
  """Bytes of a size such as `5GB` (10**9, as Transformers counts), `500MiB` or `1000000`.

  Args:
    size: an int (bytes) or a number with an optional unit (B, KB, MB, GB, TB, KiB ... TiB).

  Returns:
    The size in bytes (positive).

  Raises:
    ValueError: for anything else.
  """
  if isinstance(size, int) and not isinstance(size, bool):
    value = size
  else:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(size))
    if not m or m.group(2).upper() not in _UNITS:
      raise UserError(f"max_shard_size={size!r}: expected e.g. '5GB', '500MB', '2GiB' or bytes")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
  if value <= 0:
    raise UserError(f"max_shard_size={size!r} must be positive")
  return value


def _config_and_eos(model_or_config: Any) -> tuple[network.TransformerConfig, int]:
  """The network config and EOS id of a model or config, refusing decoder-only ones."""
  from t5x_ext.model import models

  if isinstance(model_or_config, models.DecoderOnlyModel) or (
    isinstance(model_or_config, network.TransformerConfig) and model_or_config.decoder_only
  ):
    kind = (
      f"models.{type(model_or_config).__name__}"
      if isinstance(model_or_config, models.BaseModel)
      else "a TransformerConfig with decoder_only=True"
    )
    raise UnsupportedModelError(
      f"{kind} cannot be exported: Transformers has no T5 class for a decoder-only T5 "
      "(T5ForConditionalGeneration is encoder-decoder). Only models.EncoderDecoderModel "
      "exports to Transformers."
    )
  if isinstance(model_or_config, network.TransformerConfig):
    return model_or_config, 1
  if isinstance(model_or_config, models.EncoderDecoderModel):
    return model_or_config.config, model_or_config.eos_id
  raise TypeError(
    f"expected an EncoderDecoderModel or TransformerConfig, got {type(model_or_config).__name__}"
  )


def _tensors(spec, config: network.TransformerConfig) -> list[names.MappedTensor]:
  out = names.tensor_map(spec)
  if not config.logits_via_embedding:
    out.append(names.lm_head_tensor(spec))
  return out


def _check_params(params: Mapping[str, Any], tensors: list[names.MappedTensor]) -> None:
  """Every parameter is there with its shape, before anything is written."""
  for t in tensors:
    shape = tuple(names.get_param(params, t.path).shape)
    if shape != t.shape:
      raise UserError(
        f"parameter {'/'.join(t.path)} has shape {shape}, the config implies {t.shape} "
        f"(Transformers {t.hf_name} {t.hf_shape})"
      )


def plan_shards(sizes: list[int], max_bytes: int) -> list[list[int]]:
  """Groups tensors, in order, into shards of at most `max_bytes` (a larger tensor alone).

  Args:
    sizes: bytes of each tensor.
    max_bytes: the shard size limit.

  Returns:
    Lists of tensor indices, one per shard.
  """
  shards: list[list[int]] = [[]]
  total = 0
  for i, size in enumerate(sizes):
    if shards[-1] and total + size > max_bytes:
      shards.append([])
      total = 0
    shards[-1].append(i)
    total += size
  return shards


def _vocabulary_file(vocabulary: Any, extra_ids: int | None) -> tuple[pathlib.Path, int]:
  """(SentencePiece model path, extra ids) of a path or a seqio.SentencePieceVocabulary."""
  if isinstance(vocabulary, str | pathlib.Path):
    return pathlib.Path(vocabulary), 100 if extra_ids is None else extra_ids
  path = getattr(vocabulary, "sentencepiece_model_file", None)
  if path is None:
    raise TypeError(
      f"vocabulary={vocabulary!r}: expected a SentencePiece model path or a "
      "seqio.SentencePieceVocabulary"
    )
  own = getattr(vocabulary, "extra_ids", 100)
  return pathlib.Path(path), own if extra_ids is None else extra_ids


def export_hf_t5(
  model_or_config: Any,
  params: Mapping[str, Any],
  out_dir: str | pathlib.Path,
  *,
  vocabulary: Any = None,
  extra_ids: int | None = None,
  mode_token_ids: Mapping[str, int] | None = None,
  dtype: str = "float32",
  max_shard_size: int | str = "5GB",
) -> dict[str, Any]:
  """Writes `params` as a Transformers T5 directory (see the module docstring).

  Args:
    model_or_config: an `EncoderDecoderModel` (its `eos_id` is used) or an encoder-decoder
      `TransformerConfig` (EOS 1).
    params: the 'params' collection (numpy or jax arrays, boxed or not; scanned or not),
      or `{'params': ...}`.
    out_dir: the directory to write; must not hold a config.json yet.
    vocabulary: a SentencePiece model path or a `seqio.SentencePieceVocabulary`; None
      writes no tokenizer.
    extra_ids: sentinels after the pieces; None: the vocabulary's own (100 for a path).
    mode_token_ids: {mode: id} of a task with `mode_prefix="token"` (added special tokens).
    dtype: 'float32' or 'bfloat16' (tensors are rounded to nearest even).
    max_shard_size: bytes or e.g. '5GB'; more tensor data than this is split into shards.

  Returns:
    A summary: `output_dir`, `files`, `shards`, `total_bytes`, `vocab_size`,
    `tokenizer_size` (None without a vocabulary).

  Raises:
    UnsupportedModelError: for decoder-only models.
    ValueError: an activation Transformers' T5 lacks, a parameter missing or of the wrong
      shape (named), a tokenizer larger than the model's vocabulary, a bad dtype or size.
    FileExistsError: when `out_dir` already holds a config.json.
  """
  config, eos_id = _config_and_eos(model_or_config)
  if dtype not in DTYPES:
    raise UserError(f"dtype={dtype!r}: expected one of {sorted(DTYPES)}")
  max_bytes = parse_size(max_shard_size)
  if set(params) == {"params"}:
    params = params["params"]
  params = nn.unbox(params)  # boxed (LogicallyPartitioned) leaves as init_variables gives them
  spec = dataclasses.replace(config_to_spec(config), eos_token_id=eos_id)
  tensors = _tensors(spec, config)
  _check_params(params, tensors)
  out_dir = pathlib.Path(out_dir)
  if (out_dir / CONFIG_FILE).exists():
    raise FileExistsError(f"output_dir={str(out_dir)!r} already holds {CONFIG_FILE}")
  out_dir.mkdir(parents=True, exist_ok=True)
  files: list[str] = []
  tokenizer_size = None
  if vocabulary is not None:
    spm_path, n_extra = _vocabulary_file(vocabulary, extra_ids)
    tokenizer_size = write_tokenizer(
      out_dir,
      spm_path,
      extra_ids=n_extra,
      mode_token_ids=mode_token_ids,
      max_size=config.vocab_size,
    )
    files += sorted(p.name for p in out_dir.iterdir())
  np_dtype = DTYPES[dtype]

  def convert(t: names.MappedTensor) -> np.ndarray:
    x = np.asarray(names.get_param(params, t.path))
    return t.to_hf(x).astype(np_dtype, copy=False)

  sizes = [int(np.prod(t.hf_shape)) * np_dtype.itemsize for t in tensors]
  shards = plan_shards(sizes, max_bytes)
  weight_map = {}
  for k, shard in enumerate(shards):
    fname = (
      SINGLE_FILE if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    )
    layout = [(tensors[i].hf_name, tensors[i].hf_shape, np_dtype) for i in shard]
    write_safetensors(
      out_dir / fname, layout, (convert(tensors[i]) for i in shard), metadata={"format": "pt"}
    )
    weight_map.update({tensors[i].hf_name: fname for i in shard})
    files.append(fname)
  if len(shards) > 1:
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    files.append(INDEX_FILE)
  ids = {
    "decoder_start_token_id": spec.decoder_start_token_id,
    "eos_token_id": spec.eos_token_id,
    "pad_token_id": spec.pad_token_id,
  }
  hf_config = {
    "architectures": ["T5ForConditionalGeneration"],
    "model_type": "t5",
    "is_encoder_decoder": True,
    **to_hf_config(spec),
    "dtype": dtype,
    "use_cache": True,
  }
  (out_dir / GENERATION_CONFIG).write_text(json.dumps(ids, indent=2) + "\n")
  (out_dir / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
  files += [GENERATION_CONFIG, CONFIG_FILE]
  return {
    "output_dir": str(out_dir),
    "files": files,
    "shards": len(shards),
    "total_bytes": sum(sizes),
    "vocab_size": config.vocab_size,
    "tokenizer_size": tokenizer_size,
  }


# ---- command line ----------------------------------------------------------------------

_GIN_NAMES = ("config.gin", "model.gin")


def find_gin_file(checkpoint: str | pathlib.Path) -> pathlib.Path:
  """The gin file that describes a checkpoint: the nearest config.gin or model.gin.

  Looks in `checkpoint` and up to three directories above it (a step directory sits in
  MODEL_DIR/checkpoints/<step>/; converted params in OUT/params/). A gin file that does not
  mention t5x_ext (a T5X run's config.gin) is not taken for one of ours.

  Args:
    checkpoint: the path given to `--checkpoint`.

  Returns:
    The file.

  Raises:
    FileNotFoundError: when there is none, or the nearest is not this project's;
      `--gin_file` must then name the model.
  """
  start = pathlib.Path(checkpoint).resolve()
  for directory in [start, *list(start.parents)[:3]]:
    for name in _GIN_NAMES:
      path = directory / name
      if path.is_file():
        if "t5x_ext" not in path.read_text():
          # e.g. the config.gin of a T5X run, which binds t5x's own classes
          raise FileNotFoundError(
            f"{path} does not configure t5x_ext (a T5X run's?); pass this project's model "
            "gin file with --gin_file (e.g. the model.gin of python -m t5x_ext.t5x_ckpt.convert)"
          )
        return path
  raise FileNotFoundError(
    f"no config.gin or model.gin at or above --checkpoint={str(checkpoint)!r}; pass the "
    "model's gin file with --gin_file"
  )


def abstract_params(model: Any, dtype: str) -> Any:
  """The model's params as ShapeDtypeStructs in `dtype` (the restore target), unboxed."""
  import jax

  tokens = np.zeros((1, 4), np.int32)
  batch = {f: tokens for f in ("encoder_input_tokens", "decoder_input_tokens")}
  batch["decoder_target_tokens"] = tokens
  shapes = nn.unbox(jax.eval_shape(lambda: model.init_variables(jax.random.key(0), batch)))
  target = DTYPES[dtype]
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, target), shapes["params"])


def _default_vocabulary() -> Any:
  # The data side is imported only here, when no --vocabulary is given.
  import tasks

  return tasks.default_vocabulary()


def main(argv: list[str] | None = None) -> int:
  """Command-line entry point (see the module docstring).

  Args:
    argv: arguments without the program name (default: sys.argv[1:]).

  Returns:
    0 on success; 2 (with a message, no traceback) for a model that cannot be exported or
    an input that is missing or wrong.
  """
  parser = argparse.ArgumentParser(
    prog="python -m t5x_ext.hf.export", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--checkpoint", required=True, help="MODEL_DIR, step dir or params dir")
  parser.add_argument("--output_dir", required=True, help="the Transformers directory to write")
  parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
  parser.add_argument("--max_shard_size", default="5GB")
  parser.add_argument("--gin_file", action="append", default=[], dest="gin_files")
  parser.add_argument("--gin_bindings", action="append", default=[])
  parser.add_argument(
    "--vocabulary",
    default=None,
    help="SentencePiece model; default: the embedded corpus vocabulary; 'none': no tokenizer",
  )
  parser.add_argument("--extra_ids", type=int, default=100)
  parser.add_argument(
    "--mode_token_ids", default=None, help='JSON, e.g. {"[NLU]": 8000, "[NLG]": 8001}'
  )
  args = parser.parse_args(argv)
  try:
    from t5x_ext.training import checkpointing

    mode_ids = json.loads(args.mode_token_ids) if args.mode_token_ids else None
    gin_files = args.gin_files or [str(find_gin_file(args.checkpoint))]
    from t5x_ext.launch import flags

    model = flags.model_from_gin(gin_files, args.gin_bindings)
    _config_and_eos(model)  # refuse decoder-only models before reading any weights
    checkpoint = args.checkpoint
    if os.path.exists(checkpoint):  # a local path; Orbax misreads relative ones
      checkpoint = os.path.abspath(checkpoint)
    params = checkpointing.restore_params(checkpoint, abstract_params(model, args.dtype))
    if args.vocabulary is None:
      vocabulary = _default_vocabulary()
    elif args.vocabulary.lower() == "none":
      vocabulary = None
    else:
      vocabulary = args.vocabulary
    summary = export_hf_t5(
      model,
      params,
      args.output_dir,
      vocabulary=vocabulary,
      extra_ids=args.extra_ids,
      mode_token_ids=mode_ids,
      dtype=args.dtype,
      max_shard_size=args.max_shard_size,
    )
  except (UnsupportedModelError, ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"python -m t5x_ext.hf.export: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  from t5x_ext.launch import flags as _cli

  _cli.main_guard(main)  # its status; a user error exits 2, a bug 1 (docs/operations.md)
