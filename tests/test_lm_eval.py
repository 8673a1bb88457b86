"""The lm-evaluation-harness model `t5x_ext` (t5x_ext/lm_eval) against this project's own
numbers, offline: log-likelihoods == `model.score_batch` on rows built by hand (encoder-decoder
and prefix-LM decoder-only), rolling windows, generation cut at `until`, and the harness run
on local task YAMLs over local JSON (a multiple-choice task, whose accuracy and per-option
log-likelihoods equal the suite's rank classification on the same examples, and a generation
task), in process and through `python -m t5x_ext.lm_eval` on 8 simulated devices."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

# No hub, no download: the tasks read local JSON (datasets' "json" builder).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("lm_eval")

import jax  # noqa: E402
from evaluation_util import CONFIG, save_random_params  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from t5x_ext.data import prompts as prompts_lib  # noqa: E402
from t5x_ext.data import providers  # noqa: E402
from t5x_ext.evaluation import rank_classification as rank_lib  # noqa: E402
from t5x_ext.lm_eval import T5xExtLM  # noqa: E402
from t5x_ext.lm_eval import layout as layout_lib  # noqa: E402
from t5x_ext.lm_eval import model as lm_model  # noqa: E402
from t5x_ext.model import models  # noqa: E402
from tasks import evaluation as eval_tasks  # noqa: E402

MAX_LENGTH, MAX_TARGET = 64, 8
NUM_DOCS = 6
MC_TASK, GEN_TASK = "t5x_ext_topic_mc", "t5x_ext_topic_gen"
TIMEOUT_S = 600
GIN = f"""
from __gin__ import dynamic_registration
from t5x_ext import models
from t5x_ext import network

MODEL = @models.EncoderDecoderModel()
models.EncoderDecoderModel.config = @network.TransformerConfig()
network.TransformerConfig:
{chr(10).join(f"  {f.name} = {getattr(CONFIG, f.name)!r}" for f in dataclasses.fields(CONFIG))}
"""


@pytest.fixture(scope="module", autouse=True)
def deadline():
  """Fails the module with a TimeoutError, instead of hanging the suite, past TIMEOUT_S."""

  def expire(signum, frame):
    raise TimeoutError(f"tests/test_lm_eval.py ran past {TIMEOUT_S} s")

  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(TIMEOUT_S)
  yield
  signal.alarm(0)
  signal.signal(signal.SIGALRM, previous)


def test_layout_cuts_contexts_from_the_left_and_keeps_the_prefix():
  lay = layout_lib.Layout(
    feature_converter_name=layout_lib.ENCODER_DECODER,
    prefix=(7, 8),
    eos_id=1,
    context_eos=True,
    continuation_eos=True,
    max_length=6,
    max_target_length=4,
  )
  batch = lay.score_rows([layout_lib.Pair((10, 11, 12, 13, 14), (20, 21))], rows=2)
  # [prefix] + the context's end + EOS; targets + EOS; a zero padding row.
  assert batch["encoder_input_tokens"].tolist() == [[7, 8, 12, 13, 14, 1], [0] * 6]
  assert batch["decoder_target_tokens"].tolist() == [[20, 21, 1, 0], [0] * 4]
  assert batch["decoder_input_tokens"].tolist() == [[0, 20, 21, 0], [0] * 4]
  assert batch["decoder_loss_weights"].tolist() == [[1, 1, 1, 0], [0] * 4]
  prefix_lm = dataclasses.replace(
    lay, feature_converter_name="PrefixLMFeatureConverter", continuation_eos=False, max_length=8
  )
  batch = prefix_lm.score_rows([layout_lib.Pair((10, 11, 12, 13, 14), (20, 21))], rows=1)
  assert batch["decoder_target_tokens"].tolist() == [[7, 8, 12, 13, 14, 1, 20, 21]]
  assert batch["decoder_input_tokens"].tolist() == [[0, 7, 8, 12, 13, 14, 1, 20]]
  assert batch["decoder_causal_attention"].tolist() == [[1, 1, 1, 1, 1, 1, 1, 0]]
  assert batch["decoder_loss_weights"].tolist() == [[0, 0, 0, 0, 0, 0, 1, 1]]
  assert [layout_lib.bucket(n, 100) for n in (1, 16, 17, 33, 99)] == [16, 16, 32, 64, 100]


def test_gin_file_is_found_beside_the_checkpoint(tmp_path):
  step = tmp_path / "checkpoints" / "100"
  step.mkdir(parents=True)
  (tmp_path / "config.gin").write_text("MODEL = @models.EncoderDecoderModel()  # t5x_ext")
  assert lm_model.find_gin_file(str(step)) == str(tmp_path / "config.gin")
  # A T5X run's config.gin binds t5x's classes: not taken for the model.
  (tmp_path / "config.gin").write_text("MODEL = @t5x.models.EncoderDecoderModel()")
  with pytest.raises(FileNotFoundError, match="gin_file"):
    lm_model.find_gin_file(str(step))


@pytest.fixture(scope="module")
def encdec(tmp_path_factory):
  """A random tiny encoder-decoder saved as converted weights, and the harness model on it."""
  model = models.EncoderDecoderModel(CONFIG)
  path = tmp_path_factory.mktemp("lm_eval") / "params"
  save_random_params(model, path)
  lm = T5xExtLM(
    checkpoint=str(path),
    model=model,
    mode_prefix="[NLU]",
    batch_size=8,
    max_length=MAX_LENGTH,
    max_target_length=MAX_TARGET,
    continuation_eos=True,
  )
  return model, str(path), lm


def _ll(lm, pairs):
  return lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])


def _encdec_rows(lm, pairs, eos=True):
  """Rows as `infer` encodes prompts and as the tasks lay out targets, built by hand."""
  vocab = lm.vocabulary
  enc_ids = prompts_lib.encode_prompts(
    [c for c, _ in pairs], vocab, mode="[NLU]", max_length=MAX_LENGTH
  )
  tgt_ids = [list(vocab.encode(t)) + [1] * eos for _, t in pairs]
  enc = np.zeros((len(pairs), MAX_LENGTH), np.int32)
  tgt = np.zeros((len(pairs), MAX_TARGET), np.int32)
  for r, (e, t) in enumerate(zip(enc_ids, tgt_ids)):
    enc[r, : len(e)], tgt[r, : len(t)] = e, t
  dec_in = np.pad(tgt[:, :-1], ((0, 0), (1, 0)))
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt}


PAIRS = [
  ("topic: lists are mutable sequences label:", " logging"),
  ("topic: the event loop runs coroutines", " asyncio"),
  ("Decimal numbers", " are exact."),
  ("", "An empty context."),
]


def test_loglikelihood_is_score_batch_encoder_decoder(encdec):
  model, _, lm = encdec
  got = _ll(lm, PAIRS)
  batch = _encdec_rows(lm, PAIRS)
  host = jax.device_get(lm.params)
  want = np.asarray(model.score_batch(host, batch))
  np.testing.assert_allclose([s for s, _ in got], want, rtol=1e-5, atol=1e-4)
  # is_greedy: the argmax of the teacher-forced logits at every target token.
  logits = model.logits(host, *(batch[k] for k in ("encoder_input_tokens", "decoder_input_tokens")))
  tgt = batch["decoder_target_tokens"]
  greedy = np.all((np.asarray(logits).argmax(-1) == tgt) | (tgt == 0), axis=-1)
  assert [g for _, g in got] == greedy.tolist()


def test_loglikelihood_is_score_batch_prefix_lm(tmp_path):
  config = dataclasses.replace(CONFIG, decoder_only=True, num_encoder_layers=0)
  model = models.DecoderOnlyModel(config)
  save_random_params(model, tmp_path / "params")
  lm = T5xExtLM(
    checkpoint=str(tmp_path / "params"),
    model=model,
    mode_prefix="[NLU]",
    batch_size=4,
    max_length=MAX_LENGTH,
  )
  got = _ll(lm, PAIRS)
  # The prefix LM's row: BOS, then [NLU] + context + EOS (attended bidirectionally) and the
  # continuation; the model's own loss weights (from decoder_causal_attention) pick the
  # continuation, as they do for the tasks' PrefixLMFeatureConverter batches.
  heads = prompts_lib.encode_prompts(
    [c for c, _ in PAIRS], lm.vocabulary, mode="[NLU]", max_length=MAX_LENGTH
  )
  rows = [h + list(lm.vocabulary.encode(t)) for h, (_, t) in zip(heads, PAIRS)]
  tgt = np.zeros((len(rows), MAX_LENGTH), np.int32)
  causal = np.zeros_like(tgt)
  for r, (h, s) in enumerate(zip(heads, rows)):
    tgt[r, : len(s)] = s
    causal[r, : 1 + len(h)] = 1
  batch = {
    "decoder_input_tokens": np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
    "decoder_target_tokens": tgt,
    "decoder_causal_attention": causal,
  }
  host = jax.device_get(lm.params)
  want = np.asarray(model.score_batch(host, batch))
  np.testing.assert_allclose([s for s, _ in got], want, rtol=1e-5, atol=1e-4)
  # Generation continues after the prompt as `infer`'s prompts path does (there at another
  # padded length: the prompts are right-aligned, so padding changes nothing).
  contexts = [c for c, _ in PAIRS[:2]]
  texts = _gen(lm, contexts, until=[])
  rows = prompts_lib.prompt_batch(
    heads[:2], model.feature_converter_name, {"inputs": 40, "targets": 8}, rows=2
  )
  tokens = np.asarray(model.predict_batch(host, rows, decode_len=MAX_TARGET))
  assert texts == [providers.decode_ids(lm.vocabulary, t) for t in tokens]
  # Params that are not the model's, in a LoRA run's directory: the error says to merge.
  (tmp_path / "adapters.json").write_text("{}")
  with pytest.raises(ValueError, match="t5x_ext.peft.merge"):
    T5xExtLM(checkpoint=str(tmp_path / "params"), model=models.EncoderDecoderModel(CONFIG))


def test_rolling_windows_predict_every_token_once(encdec):
  model, _, lm = encdec
  text = (
    "The garbage collector frees memory that no reference reaches any more, in cycles. "
    "Weak references do not keep an object alive."
  )
  ids = [int(t) for t in lm.vocabulary.encode(text)]
  assert len(ids) > 2 * MAX_TARGET and len(ids) % MAX_TARGET  # several windows, one short
  pairs = layout_lib.rolling_pairs(ids, MAX_TARGET, MAX_LENGTH)
  assert [t for p in pairs for t in p.continuation] == ids
  (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
  # By hand: window k's encoder reads [NLU] + every token before it + EOS (they fit), its
  # decoder the window (no EOS: a rolling score is the text's alone).
  host = jax.device_get(lm.params)
  prefix = list(lm.layout.prefix)
  total = 0.0
  for s in range(0, len(ids), MAX_TARGET):
    enc = np.zeros((1, MAX_LENGTH), np.int32)
    head = prefix + ids[:s] + [1]
    enc[0, : len(head)] = head
    win = ids[s : s + MAX_TARGET]
    tgt = np.zeros((1, MAX_TARGET), np.int32)
    tgt[0, : len(win)] = win
    batch = {
      "encoder_input_tokens": enc,
      "decoder_input_tokens": np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
      "decoder_target_tokens": tgt,
    }
    total += float(model.score_batch(host, batch)[0])
  assert got == pytest.approx(total, rel=1e-5, abs=1e-3)


def _gen(lm, contexts, **kwargs):
  kwargs.setdefault("max_gen_toks", MAX_TARGET)
  return lm.generate_until(
    [Instance("generate_until", {}, (c, dict(kwargs)), i) for i, c in enumerate(contexts)]
  )


def test_generate_until_cuts_at_the_stop_strings(encdec):
  _, _, lm = encdec
  contexts = [c for c, _ in PAIRS[:3]]
  full = _gen(lm, contexts, until=[])
  # The same tokens `infer` decodes for these prompts (greedy).
  ids = prompts_lib.encode_prompts(contexts, lm.vocabulary, mode="[NLU]", max_length=MAX_LENGTH)
  assert [lm.layout.prompt(lm.vocabulary.encode(c), MAX_TARGET) for c in contexts] == ids
  words = full[0].split()
  assert len(words) >= 3, full
  stop = words[2]
  cut = _gen(lm, contexts, until=[stop, "\n\n"])
  for text, whole in zip(cut, full):
    assert stop not in text and whole.startswith(text)
    assert text == whole.split(stop)[0]
  assert cut[0] == full[0][: full[0].index(stop)]


def _write_tasks(tmp_path, with_gen_until: str):
  """Local JSON data and task YAMLs (JSON is YAML) for the harness's --include_path."""
  docs = eval_tasks.topic_examples("validation")[:NUM_DOCS]
  labels = list(eval_tasks.TOPIC_LABELS)
  data = tmp_path / "topic.jsonl"
  data.write_text(
    "".join(
      json.dumps(
        {"inputs": d["inputs"], "label": labels.index(d["targets"]), "answer": d["targets"]}
      )
      + "\n"
      for d in docs
    )
  )
  common = {
    "dataset_path": "json",
    "dataset_kwargs": {
      "data_files": {"validation": str(data)},
      "cache_dir": str(tmp_path / "hf_cache"),
    },
    "validation_split": "validation",
  }
  mc = {
    **common,
    "task": MC_TASK,
    "output_type": "multiple_choice",
    "doc_to_text": "{{inputs}} label:",
    "doc_to_choice": labels,
    "doc_to_target": "{{label}}",
    "metric_list": [{"metric": "acc"}],
  }
  gen = {
    **common,
    "task": GEN_TASK,
    "output_type": "generate_until",
    "doc_to_text": "{{inputs}} label:",
    "doc_to_target": " {{answer}}",
    "generation_kwargs": {
      "until": [with_gen_until],
      "max_gen_toks": MAX_TARGET,
      "do_sample": False,
    },
    "metric_list": [{"metric": "exact_match"}],
  }
  tasks_dir = tmp_path / "tasks"
  tasks_dir.mkdir()
  (tasks_dir / f"{MC_TASK}.yaml").write_text(json.dumps(mc, indent=1))
  (tasks_dir / f"{GEN_TASK}.yaml").write_text(json.dumps(gen, indent=1))
  return tasks_dir, docs


def _rank_reference(lm):
  """The suite's rank classification of the same examples, on the same params."""
  name = eval_tasks.register_topic_rank_classification(num_shots=0, mode="[NLU]")
  lengths = {"inputs": MAX_LENGTH, "targets": MAX_TARGET}
  scorer = rank_lib.Scorer(lm.trainer)
  n = len(eval_tasks.TOPIC_LABELS)
  exs, scores = rank_lib.score_task(
    scorer, lm.params, name, lengths, batch_size=8, max_rows=NUM_DOCS * n
  )
  acc = rank_lib.rank_accuracy([e["idx"] for e in exs], [e["is_correct"] for e in exs], scores)
  return acc["accuracy"], np.asarray(scores).reshape(NUM_DOCS, n)


@pytest.fixture(scope="module")
def harness_run(encdec, tmp_path_factory):
  import lm_eval
  from lm_eval.tasks import TaskManager

  _, _, lm = encdec
  tmp = tmp_path_factory.mktemp("lm_eval_tasks")
  docs = eval_tasks.topic_examples("validation")[:NUM_DOCS]
  contexts = [f"{d['inputs']} label:" for d in docs]
  full = _gen(lm, contexts, until=[])
  stop = " "  # every generation of a few words holds one
  assert all(" " in t for t in full), full
  tasks_dir, _ = _write_tasks(tmp, stop)
  out = lm_eval.simple_evaluate(
    model=lm,
    tasks=[MC_TASK, GEN_TASK],
    task_manager=TaskManager(include_path=str(tasks_dir)),
    log_samples=True,
    bootstrap_iters=0,
  )
  return out, full, stop, tasks_dir


def test_harness_multiple_choice_is_rank_classification(encdec, harness_run):
  _, _, lm = encdec
  out, *_ = harness_run
  acc, rank_scores = _rank_reference(lm)
  samples = sorted(out["samples"][MC_TASK], key=lambda s: s["doc_id"])
  assert len(samples) == NUM_DOCS
  harness_scores = np.array([[r[0][0] for r in s["resps"]] for s in samples])
  # The harness's loglikelihoods are the rank task's scores (its rows: [NLU] + the input,
  # cut to the inputs length + EOS; the label + EOS), and so is its accuracy.
  np.testing.assert_allclose(harness_scores, rank_scores, rtol=1e-5, atol=1e-4)
  assert 100.0 * out["results"][MC_TASK]["acc,none"] == pytest.approx(acc)


def test_harness_generation_task_stops_at_until(harness_run):
  out, full, stop, _ = harness_run
  samples = sorted(out["samples"][GEN_TASK], key=lambda s: s["doc_id"])
  got = [s["resps"][0][0] for s in samples]
  assert got == [t.split(stop)[0] for t in full]
  assert "exact_match,none" in out["results"][GEN_TASK]


def test_cli_on_eight_devices_gives_the_same_numbers(encdec, harness_run, tmp_path):
  """`python -m t5x_ext.lm_eval --model t5x_ext`, the model from the gin file beside the
  checkpoint, sharded over
  4 x 2 simulated devices (data x model), another batch size: the same accuracy and
  log-likelihoods."""
  _, path, _ = encdec
  out, _, _, tasks_dir = harness_run
  # Beside params/, as the converters write it: found without gin_file=...
  (pathlib.Path(path).parent / "model.gin").write_text(GIN)
  args = (
    f"checkpoint={path},mode_prefix=[NLU],"
    f"max_length={MAX_LENGTH},max_target_length={MAX_TARGET},continuation_eos=True,"
    "mesh_shape=data:4+model:2"
  )
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    "JAX_PLATFORMS": "cpu",
  }
  cmd = [
    sys.executable,
    "-m",
    "t5x_ext.lm_eval",
    "--model",
    "t5x_ext",
    "--model_args",
    args,
    "--tasks",
    MC_TASK,
    "--include_path",
    str(tasks_dir),
    "--output_path",
    str(tmp_path / "out"),
    "--log_samples",
    # The harness's own flag (model_args name no batch_size): 3 rows do not split over
    # data = 4, so the model takes 4.
    "--batch_size",
    "3",
  ]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "batch_size=3 does not split over the mesh" in proc.stderr
  (results_file,) = (tmp_path / "out").rglob("results_*.json")
  results = json.loads(results_file.read_text())
  assert results["results"][MC_TASK]["acc,none"] == out["results"][MC_TASK]["acc,none"]
  (samples_file,) = (tmp_path / "out").rglob(f"samples_{MC_TASK}_*.jsonl")
  cli = sorted(
    (json.loads(x) for x in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"]
  )
  here = sorted(out["samples"][MC_TASK], key=lambda s: s["doc_id"])
  np.testing.assert_allclose(
    [[float(r[0][0]) for r in s["resps"]] for s in cli],
    [[r[0][0] for r in s["resps"]] for s in here],
    rtol=1e-5,
    atol=1e-4,
  )
