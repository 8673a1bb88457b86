"""C4 and fine-tuning tasks under `tfds.testing.mock_data` (no download, no GCS).

They run in a clean checkout: the SentencePiece vocabulary (T5's layout: pad 0, EOS 1, unk 2,
100 extra ids added by SeqIO) is trained here, small, from CPython's `pydoc_data` text.
"""

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

import tasks
from t5x_ext import objectives
from tasks import c4, finetune, pretraining

OBJECTIVE_NAMES = ("ul2_mod", "ul2r_mod", "span_corruption", "prefix_lm", "causal_lm")
PIECES = 1000


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
  """A small SentencePiece model trained by the test (stands in for T5's public one)."""
  from pydoc_data.topics import topics

  import sentencepiece as spm

  lines = [ln.strip() for text in topics.values() for ln in text.splitlines() if ln.strip()]
  prefix = tmp_path_factory.mktemp("spm") / "test_spm"
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(lines[:20000]),
    model_prefix=str(prefix),
    vocab_size=PIECES,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    num_threads=1,
    minloglevel=2,
  )
  return f"{prefix}.model"


@pytest.fixture(autouse=True)
def _mock_split_sizes(monkeypatch):
  """TFDS's mock builders have no split metadata for these versions; SeqIO asks for the split
  size only to decide on in-memory caching, so report it as unknown."""
  monkeypatch.setattr(seqio.TfdsDataSource, "num_input_examples", lambda self, split: None)


def test_default_c4_registration_is_lazy_and_versioned():
  task = seqio.get_mixture_or_task("c4_ul2_mod_v1")
  assert task.source.tfds_dataset.name == f"c4/en:{c4.DEFAULT_VERSION}"
  voc = task.output_features["targets"].vocabulary
  assert voc.sentencepiece_model_file == c4.DEFAULT_VOCABULARY_PATH
  assert voc.extra_ids == 100
  assert voc._model is None  # nothing was loaded at registration


def test_c4_vocabulary_and_version_are_settings(vocab_path):
  c4.register(vocabulary_path=vocab_path, version="3.1.0", name_prefix="c4_custom")
  voc = (
    seqio.get_mixture_or_task("c4_custom_span_corruption_v1").output_features["inputs"].vocabulary
  )
  assert voc.sentencepiece_model_file == vocab_path
  assert voc.extra_ids == 100 and voc.vocab_size == PIECES + 100


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_c4_tasks_under_mock_data(vocab_path, objective):
  names = c4.register(vocabulary_path=vocab_path)
  name = f"c4_{objective}_v1"
  assert name in names
  task = seqio.get_mixture_or_task(name)
  voc = task.output_features["targets"].vocabulary
  denoisers = pretraining.OBJECTIVES[objective]
  with tfds.testing.mock_data(num_examples=20):
    ds = task.get_dataset({"inputs": 512, "targets": 512}, split="train", shuffle=False, seed=0)
    exs = list(ds.take(20).as_numpy_iterator())
  assert exs
  for ex in exs:
    assert len(ex["inputs"]) <= 512 and len(ex["targets"]) <= 512
    d = denoisers[int(ex["denoiser_id"])]
    prefix = voc.encode(d.mode) if d.mode else []
    assert list(ex["inputs"][: len(prefix)]) == prefix
    assert ex["targets"][-1] == voc.eos_id


def test_sst2_under_mock_data(vocab_path):
  name = finetune.register_sst2(vocabulary_path=vocab_path)
  assert name == "glue_sst2_nlu_v1"
  task = seqio.get_mixture_or_task(name)
  voc = task.output_features["inputs"].vocabulary
  with tfds.testing.mock_data(num_examples=10):
    exs = list(
      task.get_dataset({"inputs": 64, "targets": 8}, split="validation").as_numpy_iterator()
    )
  assert len(exs) == 10
  nlu = voc.encode("[NLU]")
  for ex in exs:
    assert list(ex["inputs"][: len(nlu)]) == nlu
    assert voc.decode(ex["targets"].tolist()) in finetune.SST2_LABELS
    assert ex["targets_pretokenized"].decode() in finetune.SST2_LABELS
  assert task.metric_fns == [tasks.metrics.accuracy]


def test_cnn_dailymail_under_mock_data_with_other_mode(vocab_path):
  name = finetune.register_cnn_dailymail(vocabulary_path=vocab_path)
  assert name == "cnn_dailymail_s2s_v1"
  other = finetune.register_cnn_dailymail(vocabulary_path=vocab_path, mode=objectives.MODE_NLG)
  assert other == "cnn_dailymail_nlg_v1"
  for n, mode in ((name, "[S2S]"), (other, "[NLG]")):
    task = seqio.get_mixture_or_task(n)
    voc = task.output_features["inputs"].vocabulary
    with tfds.testing.mock_data(num_examples=5):
      ex = next(
        task.get_dataset({"inputs": 128, "targets": 32}, split="validation").as_numpy_iterator()
      )
    prefix = voc.encode(mode)
    assert list(ex["inputs"][: len(prefix)]) == prefix
    assert "summarize:" in voc.decode(ex["inputs"].tolist())
  assert task.metric_fns == [tasks.metrics.rouge]


def test_c4_pipeline_batches_under_mock_data(vocab_path):
  from t5x_ext.data import get_batches

  c4.register(vocabulary_path=vocab_path)
  with tfds.testing.mock_data(num_examples=50):
    it = get_batches("c4_ul2_mod_v1", {"inputs": 512, "targets": 512}, batch_size=2, seed=0)
    b = next(it)
  assert b["encoder_input_tokens"].shape == (2, 512)
  ids = b["decoder_denoiser_ids"]
  assert ids.max() <= len(objectives.UL2_DENOISERS)
  np.testing.assert_array_equal(ids > 0, b["decoder_loss_weights"] > 0)


def test_c4_ul2_with_embedded_vocabulary_under_mock_data():
  """Runs everywhere (no shared spm32k): C4's source with the embedded vocabulary."""
  c4.register(vocabulary=tasks.default_vocabulary(), name_prefix="c4_embedded")
  task = seqio.get_mixture_or_task("c4_embedded_ul2_mod_v1")
  with tfds.testing.mock_data(num_examples=10):
    exs = list(
      task.get_dataset({"inputs": 512, "targets": 512}, split="validation").as_numpy_iterator()
    )
  assert exs  # short mock documents may be joined into fewer chunks
  assert all(ex["targets"].max() < 8100 and ex["targets"][-1] == 1 for ex in exs)
