"""Prompts in, text out: `python -m t5x_ext.infer` flags with PROMPTS / PROMPTS_FILE and
MODE_PREFIX, for an encoder-decoder trained 2 steps and for the decoder-only variants (prefix
LM, causal LM, scanned), each checked against an uncached greedy reference."""

from __future__ import annotations

import copy
import json

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import gin
import tasks
from t5x_ext import infer as infer_lib
from t5x_ext import objectives
from t5x_ext import train as train_lib
from t5x_ext.data import prompts
from t5x_ext.launch import flags as cli

TASK = "pydocs_topic_classification_v1"
LENGTHS = "{'inputs': 32, 'targets': 6}"
PROMPTS = ["The garbage collector frees", "Lists are <extra_id_0> sequences", "import"]


def _infer(argv, model_dir, out):
  return infer_lib.main(
    [
      "--gin_file=runs/infer.gin",
      f"--gin.MODEL_DIR='{model_dir}'",
      f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
      f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
      f"--gin.OUTPUT_FILE='{out}'",
      "--gin.BATCH_SIZE=2",  # 3 prompts: two batches, the second padded
      *argv,
    ]
  )


def _records(path):
  return [json.loads(line) for line in open(path).read().splitlines()]


def _prompt_ids(text, mode):
  vocab = tasks.default_vocabulary()
  prefix = objectives.mode_prefix_tokens(
    [objectives.Denoiser("p", "causal_lm", mode=mode)], vocabulary=vocab
  )[0]
  return list(prefix) + list(vocab.encode(text)) + [1]


def _uncached_greedy(model, params, ids, decode_len):
  """Argmax of a full forward pass per generated token (no cache, no right-alignment)."""
  apply = jax.jit(model.module.apply)
  if model.feature_converter_name == "EncDecFeatureConverter":
    enc = np.zeros((1, 32), np.int32)
    enc[0, : len(ids)] = ids
    seq, start = [0], 1
  else:
    seq, start = [0, *ids], 1 + len(ids)
  bidirectional = getattr(model, "inputs_bidirectional_attention", False)
  while len(seq) - start < decode_len:
    tokens = np.zeros((1, 48), np.int32)
    tokens[0, : len(seq)] = seq
    if model.feature_converter_name == "EncDecFeatureConverter":
      logits = apply({"params": params}, enc, tokens)
    else:
      prefix = (np.arange(48) < start).astype(np.int32)[None] if bidirectional else None
      logits = apply({"params": params}, tokens, decoder_causal_attention=prefix)
    nxt = int(np.argmax(np.asarray(logits)[0, len(seq) - 1]))
    seq.append(nxt)
    if nxt == 1:
      break
  return seq[start:]


def _uncached_beam(model, params, ids, decode_len, beam_size, alpha=0.6):
  """Beam search as `decoding.beam_search` documents it, by full forward passes (no cache).

  The alive beams' 2K best continuations: one ending in EOS among the K best is finished
  with score `log p / ((5 + length) / 6) ** alpha`, the K best others stay alive; at
  `decode_len` the alive ones compete too. Encoder-decoder only.
  """
  apply = jax.jit(model.module.apply)
  enc = np.zeros((beam_size, 32), np.int32)
  enc[:, : len(ids)] = ids
  alive, finished = [([], 0.0)], []
  for i in range(decode_len):
    tokens = np.zeros((beam_size, 48), np.int32)
    for row, (seq, _) in enumerate(alive):
      tokens[row, 1 : 1 + len(seq)] = seq
    logits = np.asarray(apply({"params": params}, enc, tokens), np.float64)[: len(alive), i]
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    total = np.array([lp for _, lp in alive])[:, None] + logp
    best = np.argsort(-total, axis=None, kind="stable")[: 2 * beam_size]
    vocab = total.shape[1]
    cands = [(alive[j // vocab][0] + [int(j % vocab)], float(total.flat[j])) for j in best]
    for rank, (seq, lp) in enumerate(cands):
      if seq[-1] == 1 and rank < beam_size:
        finished.append((lp / ((5 + i + 1) / 6) ** alpha, seq))
    alive = [(seq, lp) for seq, lp in cands if seq[-1] != 1][:beam_size]
  finished += [(lp / ((5 + decode_len) / 6) ** alpha, seq) for seq, lp in alive]
  return max(finished)[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The tiny encoder-decoder after 2 training steps: (model_dir, model, params)."""
  model_dir = tmp_path_factory.mktemp("encdec")
  result = train_lib.main(
    [
      "--gin_file=local/tiny_model.gin",
      "--gin_file=runs/pretrain.gin",
      f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 192, 'targets': 8}",
      "--gin.BATCH_SIZE=2",
      f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.TRAIN_STEPS=2",
      "--gin.train_script.train.progress_bar=False",
    ]
  )
  model = copy.deepcopy(gin.query_parameter("MODEL/macro.value"))
  return model_dir, model, jax.device_get(result.state.params)


def test_prompts_with_a_mode_prefix_print_and_write_greedy_predictions(trained, tmp_path, capsys):
  model_dir, model, params = trained
  out = tmp_path / "preds.jsonl"
  path = _infer(
    [
      "--gin_file=local/tiny_model.gin",
      f"--gin.PROMPTS={PROMPTS!r}",
      "--gin.MODE_PREFIX='[S2S]'",
    ],
    model_dir,
    out,
  )
  assert path == str(out)
  records = _records(out)
  assert [r["index"] for r in records] == [0, 1, 2]
  assert [r["prompt"] for r in records] == PROMPTS
  printed = capsys.readouterr().out
  for r in records:
    assert r["inputs"].startswith("[S2S]")
    assert f"-> {r['prediction']}" in printed
  assert "<extra_id_0>" in records[1]["inputs"]  # typed sentinels are the sentinel id
  for text, r in zip(PROMPTS, records):
    expected = _uncached_greedy(model, params, _prompt_ids(text, "[S2S]"), 6)
    assert r["prediction_ids"] == expected, text


def test_prompts_file_sampling_and_beam(trained, tmp_path):
  model_dir, model, params = trained
  jsonl = tmp_path / "prompts.jsonl"
  jsonl.write_text("".join(json.dumps({"text": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)))
  runs = {}
  for method in ("greedy", "sample", "beam"):
    out = tmp_path / f"{method}.jsonl"
    _infer(
      [
        "--gin_file=local/tiny_model.gin",
        f"--gin.PROMPTS_FILE='{jsonl}'",
        "--gin.PROMPT_KEY='text'",
        f"--gin.DECODE_METHOD='{method}'",
        "--gin.infer_script.infer.temperature=2.0",
        "--gin.infer_script.infer.beam_size=3",
      ],
      model_dir,
      out,
    )
    runs[method] = _records(out)
  for method, records in runs.items():
    assert [r["prompt"] for r in records] == PROMPTS, method
    assert [r["inputs"] for r in records] == PROMPTS, method  # no MODE_PREFIX: as typed
    for r in records:
      assert 1 <= len(r["prediction_ids"]) <= 6
  # Greedy and beam search (BEAM_SIZE = 3, not infer's default of 4) against full forward
  # passes; for these prompts 3 beams find other sequences than 1 or 4 beams do.
  vocab = tasks.default_vocabulary()
  ids = [[*vocab.encode(p), 1] for p in PROMPTS]
  assert [r["prediction_ids"] for r in runs["greedy"]] == [
    _uncached_greedy(model, params, x, 6) for x in ids
  ]
  beams = {k: [_uncached_beam(model, params, x, 6, k) for x in ids] for k in (1, 3, 4)}
  assert beams[3] != beams[4] and beams[3] != beams[1], beams
  assert [r["prediction_ids"] for r in runs["beam"]] == beams[3]
  # Hot sampling leaves the greedy path somewhere (6 tokens x 3 prompts).
  assert [r["prediction_ids"] for r in runs["sample"]] != [
    r["prediction_ids"] for r in runs["greedy"]
  ]


def test_bad_prompt_settings_are_named(trained, tmp_path):
  model_dir, _, _ = trained
  with pytest.raises(ValueError, match="MODE_PREFIX = 'NLU'"):
    _infer(
      ["--gin_file=local/tiny_model.gin", "--gin.PROMPTS=['x']", "--gin.MODE_PREFIX='NLU'"],
      model_dir,
      tmp_path / "o.jsonl",
    )
  with pytest.raises(ValueError, match=r"TASK_FEATURE_LENGTHS\['inputs'\] = 32"):
    _infer(
      ["--gin_file=local/tiny_model.gin", f"--gin.PROMPTS=['{'word ' * 40}']"],
      model_dir,
      tmp_path / "o.jsonl",
    )


DECODER_ONLY = [
  ("prefix_lm", False),
  ("causal_lm", False),
  ("causal_lm", True),
]


@pytest.mark.parametrize("kind,scan", DECODER_ONLY)
def test_decoder_only_prompts_equal_uncached_greedy(kind, scan, tmp_path):
  bindings = [
    "--gin.network.TransformerConfig.emb_dim=64",
    "--gin.network.TransformerConfig.head_dim=16",
    "--gin.network.TransformerConfig.mlp_dim=128",
    "--gin.network.TransformerConfig.num_decoder_layers=2",
    f"--gin.network.TransformerConfig.scan_layers={scan}",
    f"--gin.models.DecoderOnlyModel.inputs_bidirectional_attention={kind == 'prefix_lm'}",
  ]
  # A checkpoint of initial params (converted weights are read the same way).
  cli.parse_gin(["models/decoder_only/tiny.gin"], [b[len("--gin.") :] for b in bindings])
  model = copy.deepcopy(gin.query_parameter("MODEL/macro.value"))
  gin.clear_config()
  batch = prompts.prompt_batch(
    [[5, 6]], model.feature_converter_name, {"inputs": 32, "targets": 6}, rows=1
  )
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  params = nn.unbox(jax.jit(model.init_variables)(jax.random.key(3), shapes)["params"])
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "params", params)
  out = tmp_path / "preds.jsonl"
  _infer(
    [
      "--gin_file=models/decoder_only/tiny.gin",
      *bindings,
      f"--gin.CHECKPOINT_PATH='{tmp_path / 'params'}'",
      f"--gin.PROMPTS={PROMPTS!r}",
      "--gin.MODE_PREFIX='[NLG]'",
    ],
    tmp_path,
    out,
  )
  records = _records(out)
  expected = [_uncached_greedy(model, params, _prompt_ids(p, "[NLG]"), 6) for p in PROMPTS]
  assert len({tuple(e) for e in expected}) > 1, "the reference ignores the prompt"
  assert [r["prediction_ids"] for r in records] == expected
