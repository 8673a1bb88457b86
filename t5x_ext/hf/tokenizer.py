"""Writes the SentencePiece vocabulary as a Transformers `T5Tokenizer` directory.

Files (what `AutoTokenizer.from_pretrained(out_dir)` reads offline):

  spiece.model            the SentencePiece model itself (T5Tokenizer's `vocab_file`)
  tokenizer_config.json   `tokenizer_class: T5Tokenizer`, `extra_ids` (sentinels appended after
                          the pieces, `<extra_id_0>` the highest id, as SeqIO numbers them),
                          the pad/EOS/unknown pieces
  tokenizer.json          only with mode tokens (below): the converted tokenizer with the
                          mode tokens at their ids

Mode prefixes are text by default (`[NLU]` is encoded into ordinary pieces), which
`spiece.model` reproduces without help. A task registered with `mode_prefix="token"` put one
reserved id per mode instead, usually in the extra-id range (e.g. `{"[NLU]": 8000}` takes the
slot of `<extra_id_99>`). Those ids become added special tokens with the mode's text, so
`tokenizer("[NLU] ...")` gives the id the model was trained on. Writing them needs
Transformers (its SentencePiece converter builds `tokenizer.json`); the rest needs only
`sentencepiece`.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Mapping

from t5x_ext.errors import UserError

SPIECE_FILE = "spiece.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_JSON = "tokenizer.json"


def _pieces(spm_path: pathlib.Path):
  """The SentencePiece processor, checked for T5's special ids (pad 0, EOS 1, unknown 2)."""
  import sentencepiece as spm

  sp = spm.SentencePieceProcessor(model_file=str(spm_path))
  ids = {"pad": sp.pad_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
  if ids != {"pad": 0, "eos": 1, "unk": 2}:
    raise UserError(
      f"vocabulary {str(spm_path)!r} has special ids {ids}; T5Tokenizer needs pad 0, EOS 1, "
      "unknown 2 (T5's SentencePiece settings)"
    )
  return sp


def _extra_slots(
  sp, mode_token_ids: Mapping[str, int], extra_ids: int, spm_path: pathlib.Path
) -> dict[int, str]:
  """Sentinel index -> mode text, for mode tokens in the extra-id range; checks the others."""
  pieces = sp.get_piece_size()
  slots: dict[int, str] = {}
  for mode, tok in sorted(mode_token_ids.items(), key=lambda kv: kv[1]):
    tok = int(tok)
    if 0 <= tok < pieces:
      # An id among the pieces is usable only when the piece is the mode (a user-defined
      # symbol of the SentencePiece model); any other piece would change meaning.
      if sp.id_to_piece(tok) != mode:
        raise UserError(
          f"mode token {mode!r} has id {tok}, which is the piece {sp.id_to_piece(tok)!r} of "
          f"{str(spm_path)!r}, not {mode!r}"
        )
    elif pieces <= tok < pieces + extra_ids:
      slots[pieces + extra_ids - 1 - tok] = mode
    else:
      raise UserError(
        f"mode token {mode!r} has id {tok}, outside the vocabulary's {pieces} pieces + "
        f"{extra_ids} extra ids"
      )
  return slots


def write_tokenizer(
  out_dir: str | pathlib.Path,
  spm_path: str | pathlib.Path,
  *,
  extra_ids: int = 100,
  mode_token_ids: Mapping[str, int] | None = None,
  max_size: int | None = None,
) -> int:
  """Writes the tokenizer files of a Transformers T5 directory (see the module docstring).

  Args:
    out_dir: the export directory (exists).
    spm_path: the SentencePiece model (e.g. `seqio.SentencePieceVocabulary`'s
      `sentencepiece_model_file`).
    extra_ids: sentinels appended after the pieces (SeqIO's `extra_ids`).
    mode_token_ids: {mode text: id} of a task with `mode_prefix="token"`; None or empty
      for text prefixes.
    max_size: the model's vocabulary size: the tokenizer may be smaller (the model's extra
      rows are padding no text encodes to) but not larger.

  Returns:
    The tokenizer's size: pieces + extra ids.

  Raises:
    ValueError: for special ids other than T5's, a tokenizer larger than `max_size`, or a
      mode id that is neither an extra id
      nor the mode's own piece.
    ImportError: mode tokens in the extra-id range without Transformers installed.
  """
  out_dir, spm_path = pathlib.Path(out_dir), pathlib.Path(spm_path)
  sp = _pieces(spm_path)
  size = sp.get_piece_size() + extra_ids
  if max_size is not None and size > max_size:
    raise UserError(
      f"vocabulary {str(spm_path)!r} has {sp.get_piece_size()} pieces + {extra_ids} extra ids "
      f"= {size} ids, more than the model's vocab_size={max_size}"
    )
  slots = _extra_slots(sp, mode_token_ids or {}, extra_ids, spm_path)
  shutil.copyfile(spm_path, out_dir / SPIECE_FILE)
  config = {
    "tokenizer_class": "T5Tokenizer",
    "extra_ids": extra_ids,
    "pad_token": sp.id_to_piece(0),
    "eos_token": sp.id_to_piece(1),
    "unk_token": sp.id_to_piece(2),
  }
  (out_dir / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
  if slots:
    _write_tokenizer_json(out_dir, sp.get_piece_size(), extra_ids, slots)
    # Listing the special tokens is what lets T5Tokenizer accept fewer sentinels than slots.
    sentinels = [f"<extra_id_{i}>" for i in range(extra_ids) if i not in slots]
    config["extra_ids"] = len(sentinels)
    config["additional_special_tokens"] = sentinels + [slots[i] for i in sorted(slots)]
    (out_dir / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
  return size


def _write_tokenizer_json(
  out_dir: pathlib.Path, pieces: int, extra_ids: int, slots: dict[int, str]
) -> None:
  """Converts spiece.model with Transformers, then renames the sentinel slots to the modes."""
  try:
    from transformers import T5Tokenizer
  except ImportError as e:  # pragma: no cover - Transformers is in the test extra
    raise ImportError(
      "mode tokens in the extra-id range need Transformers to write tokenizer.json "
      "(pip install transformers)"
    ) from e
  # Reads the spiece.model + tokenizer_config.json written so far (no mode tokens yet).
  converted = T5Tokenizer.from_pretrained(str(out_dir), local_files_only=True)
  data = json.loads(converted.backend_tokenizer.to_str())
  vocab = data["model"]["vocab"]
  if len(vocab) != pieces + extra_ids:
    raise ValueError(
      f"Transformers converted {len(vocab)} ids, expected {pieces} pieces + {extra_ids} extra"
    )
  renamed = {}
  for index, mode in slots.items():
    tok = pieces + extra_ids - 1 - index
    renamed[vocab[tok][0]] = mode
    vocab[tok] = [mode, 0.0]
  for added in data["added_tokens"]:
    added["content"] = renamed.get(added["content"], added["content"])
  (out_dir / TOKENIZER_JSON).write_text(json.dumps(data, ensure_ascii=False) + "\n")
