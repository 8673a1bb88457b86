"""Every gin file parses, and every run/experiment file builds its model (jax.eval_shape)."""

from __future__ import annotations

import copy
import pathlib

import jax
import jax.numpy as jnp
import pytest

import gin
from t5x_ext.launch import flags as cli

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"
ALL_FILES = sorted(p.relative_to(GIN_DIR).as_posix() for p in GIN_DIR.rglob("*.gin"))
# Macros the run files leave %gin.REQUIRED, as an experiment would set them.
MACROS = [
  "MODEL_DIR = '/tmp/unused'",
  "MIXTURE_OR_TASK_NAME = 'pydocs_ul2_mod_v1'",
  "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 32}",
  "TRAIN_STEPS = 10",
  "INITIAL_CHECKPOINT_PATH = '/tmp/unused_ckpt'",
]
# Files that need a MODEL from a model file (run files and shared experiment parts).
NEEDS_MODEL = ("runs/", "experiments/ul2_c4.gin")
TINY = "models/t5_1_1/tiny.gin"
# Model parts that only make sense included by a size file.
PARTS = ("models/t5_1_1/architecture.gin", "models/decoder_only/architecture.gin")


def _files_for(name: str) -> list[str]:
  return [TINY, name] if name.startswith(NEEDS_MODEL) else [name]


def _parse_keeping_own_macros(name: str) -> None:
  """Parses a file with MACROS only for what it leaves unset, so an experiment's own task
  and lengths are what the test sees (not the stand-ins of MACROS)."""
  from t5x_ext.launch import gin_checks

  cli.parse_gin(_files_for(name))
  read = gin_checks.read_macros()

  def unset(binding):
    macro = binding.split("=")[0].strip()
    value = cli.macro_value(macro)
    # Declared %gin.REQUIRED, or read by a setting and bound nowhere.
    return str(value) == "%gin.REQUIRED" or (value is None and macro in read)

  unset = [m for m in MACROS if unset(m)]
  gin.clear_config()
  cli.parse_gin(_files_for(name), unset)


def _model():
  ref = gin.query_parameter("MODEL/macro.value")
  # A ConfigurableReference evaluates (builds the object) when deep-copied.
  return copy.deepcopy(ref)


def _abstract_batch(model, lengths):
  b = 2
  li, lt = lengths.get("inputs", 0), lengths["targets"]
  if model.feature_converter_name == "EncDecFeatureConverter":
    shapes = {
      "encoder_input_tokens": (b, li),
      "decoder_input_tokens": (b, lt),
      "decoder_target_tokens": (b, lt),
      "decoder_loss_weights": (b, lt),
    }
  else:
    shapes = {
      k: (b, li + lt)
      for k in (
        "decoder_input_tokens",
        "decoder_target_tokens",
        "decoder_loss_weights",
        "decoder_causal_attention",
      )
    }
  return {k: jax.ShapeDtypeStruct(s, jnp.int32) for k, s in shapes.items()}


def test_there_are_run_and_experiment_files():
  for name in (
    "runs/pretrain.gin",
    "runs/finetune.gin",
    "runs/eval.gin",
    "runs/infer.gin",
    "local/ul2_tiny.gin",
    "experiments/ul2_20b_pod.gin",
    "experiments/ul2_decoder_only_c4.gin",
    "experiments/ul2r_continue.gin",
    "experiments/finetune_sst2_nlu.gin",
  ):
    assert name in ALL_FILES


@pytest.mark.parametrize("name", ALL_FILES)
def test_gin_file_parses(name):
  # Only the stand-ins a file leaves unset: a macro that nothing reads is an error now.
  _parse_keeping_own_macros(name)
  if name.startswith(("models/", "local/tiny_model")) and name not in PARTS:
    assert isinstance(gin.query_parameter("VOCAB_SIZE/macro.value"), int)


RUNNABLE = [n for n in ALL_FILES if n.startswith(("runs/", "experiments/", "local/"))]


@pytest.mark.parametrize("name", RUNNABLE)
def test_run_file_builds_its_model(name):
  _parse_keeping_own_macros(name)
  model = _model()
  # A model file alone (or a run part such as runs/text_files.gin) sets no lengths.
  lengths = dict(cli.macro_value("TASK_FEATURE_LENGTHS") or {"inputs": 64, "targets": 32})
  params = jax.eval_shape(
    lambda: model.init_variables(jax.random.key(0), _abstract_batch(model, lengths))
  )["params"]
  n = sum(x.size for x in jax.tree.leaves(params))
  assert n > 1e5
  assert model.config.vocab_size == cli.macro_value("VOCAB_SIZE")


def test_experiment_files_open_with_their_command():
  for name in RUNNABLE:
    if not name.startswith(("experiments/", "local/")) or name in (
      "experiments/ul2_c4.gin",
      "local/tiny_model.gin",
    ):
      continue
    head = (GIN_DIR / name).read_text().split("\n\n")[0]
    assert "python -m t5x_ext." in head, name


def test_main_job_has_every_required_macro():
  cli.parse_gin(["local/ul2_tiny.gin"])
  for macro in ("MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS", "BATCH_SIZE"):
    cli.check_required_macros((macro,))
  with pytest.raises(ValueError, match="MODEL_DIR"):
    cli.check_required_macros(("MODEL_DIR",))


def _own_task(name: str) -> str | None:
  text = (GIN_DIR / name).read_text()
  return next(
    (
      line.split("=", 1)[1].strip().strip("'")
      for line in text.splitlines()
      if line.startswith("MIXTURE_OR_TASK_NAME =")
    ),
    None,
  )


EXPERIMENTS_WITH_TASKS = [
  n for n in RUNNABLE if n.startswith(("experiments/", "local/")) and _own_task(n) is not None
]


@pytest.mark.parametrize("name", EXPERIMENTS_WITH_TASKS)
def test_experiment_task_fits_its_own_lengths(name, monkeypatch, request):
  """Each experiment's MIXTURE_OR_TASK_NAME with its own TASK_FEATURE_LENGTHS and VOCAB_SIZE,
  through the entry points' check (`run_data.check_task`: lengths planned for every denoiser
  with the task's vocabulary, vocabulary <= VOCAB_SIZE)."""
  import seqio

  from t5x_ext.data import providers as run_data

  _parse_keeping_own_macros(name)
  task_name = cli.macro_value("MIXTURE_OR_TASK_NAME")
  lengths = dict(cli.macro_value("TASK_FEATURE_LENGTHS"))
  assert task_name == _own_task(name)
  provider = run_data.get_provider(task_name)
  vocab = run_data.vocabulary_of(provider)
  path = getattr(vocab, "sentencepiece_model_file", "") or ""
  if "://" in path:
    # T5's public vocabulary (gs://) is not read offline: the shared 32K SentencePiece model
    # with the same 100 extra ids stands in (sentinel counts are what the plan depends on;
    # mode prefixes may encode to a token more or less).
    spm = request.getfixturevalue("spm32k_path")
    stand_in = seqio.SentencePieceVocabulary(spm, extra_ids=vocab.extra_ids)
    monkeypatch.setattr(run_data, "vocabulary_of", lambda _: stand_in)
  # Shared parts (experiments/ul2_c4.gin) get the tiny stand-in model: no VOCAB_SIZE check.
  vocab_size = None if name.startswith(NEEDS_MODEL) else cli.macro_value("VOCAB_SIZE")
  run_data.check_task(provider, lengths, model_vocab_size=vocab_size)
  # And the check can fail: half the inputs length does not fit a span denoiser's plan.
  if run_data.denoisers_of(provider):
    with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS"):
      run_data.check_task(provider, {"inputs": 16, "targets": 4})
