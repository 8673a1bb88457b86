"""Prompts typed or read from a file, as the unpacked batches a model predicts from.

`python -m t5x_ext.infer ... --gin.PROMPTS="['[S2S] The garbage collector']"` (or
`PROMPTS_FILE`) goes through here: each prompt is encoded with the task's vocabulary, the
mode prefix (`[NLU]`, `[NLG]`, `[S2S]`, or none) put in front as the tasks do, EOS appended
(training inputs end in EOS), and laid out like the feature converters' batches:

  EncDecFeatureConverter     encoder_input_tokens = prefix + prompt + EOS, zero decoder rows
  PrefixLM / Decoder         decoder_input_tokens = BOS(0) + prefix + prompt + EOS, marked by
                             decoder_causal_attention (what `DecoderOnlyModel` continues)

Sentinels can be typed as `<extra_id_0>` (the vocabulary maps them to their ids), so an
`[NLU]`/`[NLG]` prompt can ask for a span to be filled in.

Data side (reads the vocabulary); no gin.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from t5x_ext.errors import UserError
from t5x_ext.modes import UL2_MODES

MODES = UL2_MODES
ENCODER_DECODER = "EncDecFeatureConverter"


def read_prompts(path: str, *, key: str = "inputs") -> list[str]:
  """Reads prompts: one per line of a text file, or field `key` of each JSONL object.

  A file ending in .jsonl/.json/.ndjson is JSONL; blank lines are skipped.

  Args:
    path: the file.
    key: the JSONL field holding the prompt.

  Returns:
    The prompts, in file order.

  Raises:
    FileNotFoundError: naming PROMPTS_FILE.
    ValueError: a JSONL line that is not an object with `key`, naming the line.
  """
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"PROMPTS_FILE = {path!r}: no such file.")
  jsonl = p.suffix in (".jsonl", ".json", ".ndjson")
  prompts = []
  for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip():
      continue
    if not jsonl:
      prompts.append(line)
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"PROMPTS_FILE {path}:{n}: not JSON ({e.msg}).") from None
    if not isinstance(obj, dict) or key not in obj:
      raise UserError(f"PROMPTS_FILE {path}:{n}: no field PROMPT_KEY = {key!r}.")
    prompts.append(str(obj[key]))
  return prompts


def encode_prompts(
  prompts: Sequence[str],
  vocabulary: Any,
  *,
  mode: str | None = None,
  max_length: int,
  append_eos: bool = True,
) -> list[list[int]]:
  """Token ids of each prompt: mode prefix, prompt, EOS.

  Example ("[S2S]" encodes to [142, 864, 194, 864, 97]): "a b" -> [142, 864, 194, 864, 97,
  ids of "a b", 1].

  Args:
    prompts: the texts.
    vocabulary: a `seqio.Vocabulary` (the task's).
    mode: "[NLU]", "[NLG]", "[S2S]", or None / "" for no prefix.
    max_length: the inputs length (TASK_FEATURE_LENGTHS['inputs']).
    append_eos: end with EOS, as the tasks' inputs do.

  Returns:
    One id list per prompt.

  Raises:
    ValueError: an unknown mode (naming MODE_PREFIX) or a prompt longer than `max_length`
      (naming its index and TASK_FEATURE_LENGTHS).
  """
  from t5x_ext import objectives

  if mode and mode not in MODES:
    raise UserError(f"MODE_PREFIX = {mode!r}: must be one of {MODES} or None.")
  prefix: list[int] = []
  if mode:
    (prefix,) = objectives.mode_prefix_tokens(
      [objectives.Denoiser("prompt", "causal_lm", mode=mode)], vocabulary=vocabulary
    )
  out = []
  for i, text in enumerate(prompts):
    if not isinstance(text, str):
      raise UserError(f"PROMPTS[{i}] = {text!r}: prompts must be strings.")
    ids = list(prefix) + [int(t) for t in vocabulary.encode(text)]
    if append_eos:
      ids.append(int(vocabulary.eos_id))
    if len(ids) > max_length:
      raise UserError(
        f"Prompt {i} is {len(ids)} tokens (mode prefix and EOS included), longer than "
        f"TASK_FEATURE_LENGTHS['inputs'] = {max_length}: {text[:60]!r}..."
      )
    out.append(ids)
  return out


def prompt_batch(
  ids: Sequence[Sequence[int]],
  feature_converter_name: str,
  lengths: Mapping[str, int],
  *,
  rows: int,
) -> dict[str, np.ndarray]:
  """An unpacked batch of `rows` rows holding the prompts (then all-zero padding rows).

  Args:
    ids: token ids per prompt (at most `rows` of them), each <= lengths["inputs"].
    feature_converter_name: the model's converter.
    lengths: {"inputs": LI, "targets": LT}.
    rows: batch rows.

  Returns:
    A numpy batch with the converter's feature names (see the module docstring).
  """
  if len(ids) > rows:
    raise ValueError(f"{len(ids)} prompts for a batch of {rows} rows")
  li, lt = int(lengths["inputs"]), int(lengths["targets"])
  if feature_converter_name == ENCODER_DECODER:
    enc = np.zeros((rows, li), np.int32)
    for r, row in enumerate(ids):
      enc[r, : len(row)] = row
    zeros = np.zeros((rows, lt), np.int32)
    return {
      "encoder_input_tokens": enc,
      "decoder_input_tokens": zeros,
      "decoder_target_tokens": zeros.copy(),
      "decoder_loss_weights": zeros.copy(),
    }
  length = li + lt
  dec_in = np.zeros((rows, length), np.int32)
  causal = np.zeros((rows, length), np.int32)
  for r, row in enumerate(ids):
    dec_in[r, 1 : 1 + len(row)] = row  # position 0: BOS (0)
    causal[r, : 1 + len(row)] = 1
  targets = np.zeros((rows, length), np.int32)
  targets[:, :-1] = dec_in[:, 1:]
  return {
    "decoder_input_tokens": dec_in,
    "decoder_target_tokens": targets,
    "decoder_loss_weights": np.zeros((rows, length), np.int32),
    "decoder_causal_attention": causal,
  }
