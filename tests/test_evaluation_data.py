"""The evaluation suite's data side: families, the prefix swap of the mode matrix, rank rows and
the generation probe's task (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from t5x_ext import objectives
from t5x_ext.evaluation import examples as ex_lib
from t5x_ext.evaluation import mode_matrix
from tasks import evaluation as eval_tasks

LENGTHS = {"inputs": 128, "targets": 64}


def test_families_are_ul2s_denoisers_by_mode():
  assert mode_matrix.FAMILY_MODES == eval_tasks.FAMILY_MODES
  assert mode_matrix.FAMILY_MODES == {
    "R": objectives.MODE_NLU,
    "X": objectives.MODE_NLG,
    "S": objectives.MODE_S2S,
  }
  names = {f: [d.name for d in eval_tasks.family_denoisers(f)] for f in "RXS"}
  assert names == {
    "R": ["R_mu3_r0.15", "R_mu8_r0.15"],
    "X": ["X_mu3_r0.5", "X_mu8_r0.5", "X_mu64_r0.15", "X_mu64_r0.5"],
    "S": ["S"],
  }
  assert all(d.mode == "" for f in "RXS" for d in eval_tasks.family_denoisers(f))
  assert mode_matrix.family_column("X") == "[NLG]"
  assert mode_matrix.family_column("X", "none") == "none"
  with pytest.raises(ValueError, match="family_prefix"):
    mode_matrix.family_column("X", "[FOO]")


@pytest.fixture(scope="module")
def r_examples():
  return ex_lib.family_examples(
    "pydocs",
    "R",
    LENGTHS,
    num_examples=6,
    seed=0,
    reserve=5,
    denoiser_names=[d.name for d in objectives.UL2_DENOISERS],
  )


def test_family_examples_are_fixed_and_prefix_free(r_examples):
  again = ex_lib.family_examples(
    "pydocs",
    "R",
    LENGTHS,
    num_examples=6,
    seed=0,
    reserve=5,
    denoiser_names=[d.name for d in objectives.UL2_DENOISERS],
  )
  assert len(r_examples) == 6
  for a, b in zip(r_examples, again, strict=True):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], b["targets"])
    assert a["denoiser_id"] in (0, 1)  # the R denoisers' indices in UL2_DENOISERS
    assert len(a["inputs"]) <= LENGTHS["inputs"] - 5
  ids = ex_lib.prefix_ids("pydocs", ["[NLU]"])["[NLU]"]
  assert not any(list(ex["inputs"][: len(ids)]) == ids for ex in r_examples)


def test_mode_matrix_swaps_only_the_prefix(r_examples):
  modes = [mode_matrix.column_mode(c) for c in mode_matrix.COLUMNS]
  ids = ex_lib.prefix_ids("pydocs", modes)
  vocab = eval_tasks.corpus_task("pydocs").output_features["targets"].vocabulary
  assert ids["[NLU]"] == [int(t) for t in vocab.encode("[NLU]")] and ids[""] == []
  assert len({tuple(v) for v in ids.values()}) == 4
  rows = {}
  for m in modes:
    (batch,) = ex_lib.to_batches(
      ex_lib.with_prefix(r_examples, ids[m]),
      LENGTHS,
      feature_converter_name="EncDecFeatureConverter",
      batch_size=8,
    )
    rows[m] = batch
  base = rows[""]
  for m in modes:
    n = len(ids[m])
    enc = rows[m]["encoder_input_tokens"]
    np.testing.assert_array_equal(enc[:6, :n], np.tile(ids[m], (6, 1)))
    # After the prefix: exactly the prefix-free inputs, shifted.
    np.testing.assert_array_equal(enc[:6, n:], base["encoder_input_tokens"][:6, : enc.shape[1] - n])
    for k in ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights"):
      np.testing.assert_array_equal(rows[m][k], base[k])
    assert not rows[m]["encoder_input_tokens"][6:].any()  # padding rows


def test_decoder_only_batches_keep_targets(r_examples):
  ids = ex_lib.prefix_ids("pydocs", ["[S2S]"])["[S2S]"]
  plain, with_p = (
    ex_lib.to_batches(
      ex_lib.with_prefix(r_examples[:2], p),
      LENGTHS,
      feature_converter_name="PrefixLMFeatureConverter",
      batch_size=2,
    )[0]
    for p in ([], ids)
  )
  w = plain["decoder_loss_weights"] > 0
  w2 = with_p["decoder_loss_weights"] > 0
  for row in range(2):
    np.testing.assert_array_equal(
      plain["decoder_target_tokens"][row][w[row]], with_p["decoder_target_tokens"][row][w2[row]]
    )
  assert (
    with_p["decoder_causal_attention"].sum(1) - plain["decoder_causal_attention"].sum(1) == len(ids)
  ).all()


def test_to_batches_refuses_to_truncate():
  ex = [{"inputs": np.arange(2, 20, dtype=np.int32), "targets": np.array([3, 1], np.int32)}]
  with pytest.raises(ValueError, match="inputs has 18 tokens"):
    ex_lib.to_batches(
      ex, {"inputs": 8, "targets": 4}, feature_converter_name="EncDecFeatureConverter", batch_size=1
    )


def test_unfitting_denoisers_are_skipped_not_truncated():
  vocab = eval_tasks.corpus_task("pydocs").output_features["targets"].vocabulary
  fit = ex_lib.fitting_denoisers(eval_tasks.family_denoisers("X"), vocab, LENGTHS)
  assert [d.name for d in fit] == ["X_mu3_r0.5", "X_mu8_r0.5"]


def test_rank_rows_one_row_per_option_with_demonstrations():
  exs = [{"inputs": "topic: a", "targets": "y"}, {"inputs": "topic: b", "targets": "x"}]
  demos = [{"inputs": "topic: " + "d" * 300, "targets": "x"}]
  rows = eval_tasks.rank_rows(exs, ("x", "y"), demonstrations=demos, num_shots=1, shot_max_chars=20)
  assert [(r["idx"], r["targets"], r["is_correct"]) for r in rows] == [
    (0, "x", 0),
    (0, "y", 1),
    (1, "x", 1),
    (1, "y", 0),
  ]
  assert rows[0]["inputs"] == "topic: ddddddddddddd label: x topic: a label:"
  with pytest.raises(ValueError, match="not one of"):
    eval_tasks.rank_rows([{"inputs": "a", "targets": "z"}], ("x", "y"))


def test_rank_task_keeps_the_end_of_long_inputs_and_the_prefix():
  from t5x_ext.data import pipeline

  name = eval_tasks.register_topic_rank_classification(num_shots=2, mode="[NLU]")
  assert name == "pydocs_topic_rank_2shot_nlu_v1"
  lengths = {"inputs": 64, "targets": 8}
  vocab = eval_tasks.rank_vocabulary(eval_tasks.TOPIC_RANK_TASK)
  prefix = eval_tasks.mode_ids("[NLU]", vocab)
  end = [int(t) for t in vocab.encode("label:")]
  (exs, batch), *_ = pipeline.get_infer_batches(name, lengths, batch_size=8, max_examples=8)
  assert [e["idx"] for e in exs] == [0] * 8
  assert sorted(e["targets_pretokenized"] for e in exs) == list(eval_tasks.TOPIC_LABELS)
  assert sum(e["is_correct"] for e in exs) == 1
  for e in exs:
    assert e["inputs"][: len(prefix)] == prefix
    assert e["inputs"][-1] == 1 and e["inputs"][-1 - len(end) : -1] == end
    assert len(e["inputs"]) == lengths["inputs"]  # 2 demonstrations do not fit: cut at the left


def test_first_sentence_task():
  train = eval_tasks.first_sentence_examples("train")
  val = eval_tasks.first_sentence_examples("validation")
  assert len(train) > 1000 and len(val) > 100
  train_text = {e["first"] + e["rest"] for e in train}
  assert not any(e["first"] + e["rest"] in train_text for e in val)
  assert all(e["first"][-1] in ".!?" and len(e["rest"]) >= 60 for e in val)
  import seqio

  name = eval_tasks.register_first_sentence()
  assert name == "pydocs_first_sentence_v1"
  ex = next(
    seqio.get_mixture_or_task(name)
    .get_dataset({"inputs": 160, "targets": 48}, split="validation", shuffle=False)
    .as_numpy_iterator()
  )
  assert ex["inputs_pretokenized"].decode().startswith("first sentence: ")
  assert ex["targets_pretokenized"].decode() == val[0]["first"]
