"""Transformers T5 export: parity of the exported directory with this project's model.

Nothing is downloaded: the networks are tiny and random, the SentencePiece vocabulary is
trained here on text that ships with CPython (200 pieces + 100 extra ids = 300 ids, while the
networks have 384 rows, as the embedded corpus has 8,100 ids for 8,192 rows).
"""

import dataclasses
import io
import json
import os

import numpy as np
import pytest

# Everything is local; make sure Transformers does not try the Hub either.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import ml_dtypes  # noqa: E402
from hf_util import T5_1_0, T5_1_1, UL2  # noqa: E402

from t5x_ext.hf import convert, export, hf_config, load_hf_params, torch_reference  # noqa: E402
from t5x_ext.hf.safetensors_io import INDEX_FILE, read_state_dict  # noqa: E402
from t5x_ext.launch import flags  # noqa: E402
from t5x_ext.model import (  # noqa: E402
  models,
  network,
)

PIECES, EXTRA_IDS, VOCAB = 200, 100, 384
MODES = ("[NLU]", "[NLG]", "[S2S]")
PROMPTS = ("class definitions and the import statement", "raise an exception", "for loops")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
  # The box is shared; the tiny models gain nothing from more threads.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
  from pydoc_data import topics

  import sentencepiece as spm

  lines = [x.strip() for t in topics.topics.values() for x in t.split("\n") if x.strip()]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(lines[:3000]),
    model_writer=model,
    vocab_size=PIECES,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    input_sentence_size=0,
    shuffle_input_sentence=False,
    num_threads=1,
    minloglevel=2,
  )
  path = tmp_path_factory.mktemp("spm") / "test.model"
  path.write_bytes(model.getvalue())
  return path


@pytest.fixture(scope="module")
def seqio_vocab(spm_path):
  import seqio

  return seqio.SentencePieceVocabulary(str(spm_path), extra_ids=EXTRA_IDS)


def _config(activations, tied, **kw):
  fields = dict(
    vocab_size=VOCAB,
    emb_dim=32,
    num_heads=4,
    head_dim=8,
    mlp_dim=48,
    num_encoder_layers=2,
    num_decoder_layers=2,
    activations=activations,
    logits_via_embedding=tied,
    dropout_rate=0.0,
    dtype="float32",
    # 8 buckets / max distance 20: the prompts reach the log-spaced and clamped buckets.
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
  )
  fields.update(kw)
  return network.TransformerConfig(**fields)


def _model_and_params(config, seed=0):
  model = models.EncoderDecoderModel(config)
  tokens = np.ones((1, 4), np.int32)
  batch = {k: tokens for k in ("encoder_input_tokens", "decoder_input_tokens")}
  batch["decoder_target_tokens"] = tokens
  params = nn.unbox(model.init_variables(jax.random.key(seed), batch)["params"])
  return model, params


def _torch_logits(hf_model, enc, dec):
  with torch.no_grad():
    return (
      hf_model(
        input_ids=torch.tensor(enc),
        attention_mask=torch.tensor(enc != 0).long(),
        decoder_input_ids=torch.tensor(dec),
      )
      .logits.float()
      .numpy()
    )


def _tokens(seed, batch=3, inputs=30, targets=12):
  rng = np.random.default_rng(seed)
  enc = rng.integers(3, PIECES + EXTRA_IDS, (batch, inputs))
  enc[1, 21:] = 0
  dec = rng.integers(3, PIECES + EXTRA_IDS, (batch, targets))
  dec[:, 0] = 0
  return enc, dec


# (activations, tied) -> the feed_forward_proj written
VARIANTS = {
  "relu_tied": (("relu",), True, "relu"),
  "relu_untied": (("relu",), False, "relu"),
  "gated_gelu_untied": (("gelu", "linear"), False, "gated-gelu"),
  "gated_silu_tied": (("silu", "linear"), True, "gated-silu"),
  "gated_silu_untied": (("silu", "linear"), False, "gated-silu"),
  # Exact (erf) GELU: `gated-gelu` would mean the tanh form to Transformers.
  "gated_gelu_exact_untied": (("gelu_exact", "linear"), False, "gated-gelu_python"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers(variant, tmp_path, spm_path):
  activations, tied, proj = VARIANTS[variant]
  model, params = _model_and_params(_config(activations, tied), seed=len(variant))
  summary = export.export_hf_t5(model, params, tmp_path, vocabulary=spm_path)
  assert summary["shards"] == 1 and summary["tokenizer_size"] == PIECES + EXTRA_IDS
  cfg = json.loads((tmp_path / "config.json").read_text())
  assert cfg["feed_forward_proj"] == proj
  assert cfg["tie_word_embeddings"] is tied
  assert (cfg["vocab_size"], cfg["d_model"], cfg["d_kv"], cfg["num_heads"]) == (VOCAB, 32, 8, 4)
  assert (cfg["relative_attention_num_buckets"], cfg["relative_attention_max_distance"]) == (8, 20)
  names = set(read_state_dict(tmp_path))
  assert ("lm_head.weight" in names) is not tied
  # The import reads the config back to the same activation.
  assert hf_config.parse_hf_config(cfg).activation == activations[0]
  hf_model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
  assert hf_model.config.scale_decoder_outputs is tied
  enc, dec = _tokens(1)
  want = np.asarray(model.logits(params, enc, dec))
  got = _torch_logits(hf_model, enc, dec)
  assert got.shape == want.shape == (3, 12, VOCAB)
  # Relative to the logits' scale (elementwise relative error is unbounded near 0): README's
  # fp32 bound, 2e-6 (measured here: 3e-7 to 6e-7).
  rel = np.abs(got - want).max() / np.abs(want).max()
  assert rel < 2e-6, rel


def test_scanned_params_export_the_same_tensors(tmp_path):
  config = _config(("silu", "linear"), False)
  model, params = _model_and_params(config)
  boxed = model.init_variables(
    jax.random.key(0),
    {
      k: np.ones((1, 4), np.int32)
      for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
    },
  )
  export.export_hf_t5(model, boxed, tmp_path / "a")  # {'params': boxed leaves} works too
  scanned = network.stack_layer_params(jax.tree.map(np.asarray, params))
  export.export_hf_t5(config.replace(scan_layers=True), scanned, tmp_path / "b")
  a, b = read_state_dict(tmp_path / "a"), read_state_dict(tmp_path / "b")
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])


def test_greedy_generate_matches_predict_batch(tmp_path, spm_path, seqio_vocab):
  model, params = _model_and_params(_config(("silu", "linear"), False), seed=3)
  export.export_hf_t5(model, params, tmp_path, vocabulary=spm_path)
  hf_model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
  texts = [f"{mode} {p}" for mode, p in zip(MODES, PROMPTS, strict=True)]
  # The prompts as this project's tasks encode them: mode text + input text, then EOS.
  ids = [list(seqio_vocab.encode(t)) + [1] for t in texts]
  batch = tok(texts, padding=True, return_tensors="np")
  width = batch["input_ids"].shape[1]
  enc = np.array([x + [0] * (width - len(x)) for x in ids])
  np.testing.assert_array_equal(batch["input_ids"], enc)
  decode_len = 10
  with torch.no_grad():
    out = hf_model.generate(
      input_ids=torch.tensor(enc),
      attention_mask=torch.tensor(enc != 0).long(),
      do_sample=False,
      num_beams=1,
      max_new_tokens=decode_len,
    ).numpy()[:, 1:]
  want = np.zeros((len(texts), decode_len), np.int64)
  want[:, : out.shape[1]] = out  # generate stops when every row has hit EOS
  assert len(np.unique(want)) > 3, want  # varied tokens, not a row of EOS
  got = np.asarray(
    model.predict_batch(
      params, {"encoder_input_tokens": enc}, decode_len=decode_len, method="greedy"
    )
  )
  np.testing.assert_array_equal(got, want)


def _untied_reference(spec, directory, *, bf16=False):
  ref = torch_reference.build_torch_t5(spec, seed=7, untie_lm_head=True)
  if bf16:
    ref = ref.to(torch.bfloat16)
  torch_reference.save_untied(ref, directory)


@pytest.mark.parametrize(
  "name, spec, dtype",
  [
    ("t5_1_1_fp32", T5_1_1, "float32"),
    ("ul2_bf16", UL2, "bfloat16"),
    ("t5_1_0_tied_fp32", T5_1_0, "float32"),
  ],
)
def test_round_trip_gives_identical_tensors(name, spec, dtype, tmp_path):
  source = tmp_path / "hf"
  if spec.scale_logits:  # T5 1.0: tied, as save_pretrained writes it
    torch_reference.build_torch_t5(spec, seed=7).save_pretrained(source)
  else:
    _untied_reference(spec, source, bf16=dtype == "bfloat16")
  # Converted params are float32 (as `python -m t5x_ext.hf.convert` stores them): bf16
  # survives the trip through float32 exactly.
  _, config, params = load_hf_params(source, param_dtype="float32")
  export.export_hf_t5(config, params, tmp_path / "out", dtype=dtype)
  want, got = read_state_dict(source), read_state_dict(tmp_path / "out")
  aliases = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
  assert sorted(got) == sorted(set(want) - aliases)
  for key in got:
    assert got[key].dtype == want[key].dtype, key
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  cfg, src = (json.loads((d / "config.json").read_text()) for d in (tmp_path / "out", source))
  assert cfg["dtype"] == dtype  # the source config records none
  same = lambda c: dataclasses.replace(hf_config.parse_hf_config(c), dtype=None)  # noqa: E731
  assert same(cfg) == same(src)


def test_convert_then_export_cli_round_trip(tmp_path):
  """Transformers -> `hf.convert` (Orbax params + model.gin) -> `hf.export` CLI -> Transformers."""
  _untied_reference(UL2, tmp_path / "hf")
  convert.convert(tmp_path / "hf", tmp_path / "conv")
  args = ["--checkpoint", str(tmp_path / "conv" / "params"), "--output_dir", str(tmp_path / "out")]
  assert export.main(args + ["--vocabulary=none", "--max_shard_size=20KB"]) == 0
  assert (tmp_path / "out" / INDEX_FILE).exists()
  want, got = read_state_dict(tmp_path / "hf"), read_state_dict(tmp_path / "out")
  assert sorted(got) == sorted(want)
  for key in got:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_export_cli_from_a_model_dir(tmp_path, spm_path):
  """A MODEL_DIR as `t5x_ext.train` leaves it: config.gin + checkpoints/<step>/state."""
  import gin
  from t5x_ext.launch import flags as cli
  from t5x_ext.training import checkpointing

  cli.parse_gin(["local/tiny_model.gin"], ["network.TransformerConfig.num_decoder_layers = 1"])
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  (model_dir / "config.gin").write_text(gin.config_str())
  model = flags.model_from_gin([str(model_dir / "config.gin")])
  gin.clear_config()
  _, params = _model_and_params(model.config, seed=4)
  ckpt = checkpointing.Checkpointer(model_dir, handle_sigterm=False)
  ckpt.save(3, {"step": np.int32(3), "params": params, "opt_state": {"n": np.int32(0)}})
  ckpt.close()
  step_dir = model_dir / "checkpoints" / "3"
  args = [f"--vocabulary={spm_path}", "--dtype=bfloat16"]
  assert export.main([f"--checkpoint={step_dir}", f"--output_dir={tmp_path / 'out'}", *args]) == 0
  cfg = json.loads((tmp_path / "out" / "config.json").read_text())
  assert (cfg["d_model"], cfg["num_decoder_layers"], cfg["vocab_size"]) == (128, 1, 8192)
  stored = read_state_dict(tmp_path / "out")
  kernel = np.asarray(params["logits_dense"]["kernel"]).T.astype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(stored["lm_head.weight"], kernel)
  assert (tmp_path / "out" / "spiece.model").exists()
  # A T5X run's config.gin is not taken for ours.
  (model_dir / "config.gin").write_text("import t5x.models\nMODEL = @t5x.models.Foo()\n")
  assert export.main([f"--checkpoint={step_dir}", f"--output_dir={tmp_path / 'o2'}"]) == 2


def test_sharded_export_loads(tmp_path):
  model, params = _model_and_params(_config(("gelu", "linear"), False))
  export.export_hf_t5(model, params, tmp_path / "one")
  limit = 20_000
  summary = export.export_hf_t5(model, params, tmp_path / "many", max_shard_size=f"{limit}B")
  index = json.loads((tmp_path / "many" / INDEX_FILE).read_text())
  files = sorted(set(index["weight_map"].values()))
  assert summary["shards"] == len(files) > 3
  assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
  assert not (tmp_path / "many" / "model.safetensors").exists()
  single = read_state_dict(tmp_path / "one")
  assert index["metadata"]["total_size"] == sum(x.nbytes for x in single.values())
  for f in files:  # each shard within the limit unless it holds one larger tensor
    tensors = read_state_dict_file(tmp_path / "many" / f)
    assert len(tensors) == 1 or sum(x.nbytes for x in tensors.values()) <= limit
  loaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "many").state_dict()
  for name, value in single.items():
    np.testing.assert_array_equal(loaded[name].numpy(), value, err_msg=name)


def read_state_dict_file(path):
  from safetensors.numpy import load_file

  return load_file(str(path))


def test_bfloat16_export_loads_in_bfloat16(tmp_path):
  model, params = _model_and_params(_config(("silu", "linear"), False))
  export.export_hf_t5(model, params, tmp_path, dtype="bfloat16")
  stored = read_state_dict(tmp_path)
  assert {x.dtype for x in stored.values()} == {np.dtype(ml_dtypes.bfloat16)}
  emb = np.asarray(params["token_embedder"]["embedding"])
  np.testing.assert_array_equal(stored["shared.weight"], emb.astype(ml_dtypes.bfloat16))
  assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
  hf_model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path)
  assert hf_model.dtype == torch.bfloat16
  enc, dec = _tokens(2)
  got, want = _torch_logits(hf_model, enc, dec), np.asarray(model.logits(params, enc, dec))
  assert np.abs(got - want).max() / np.abs(want).max() < 0.05  # bf16 weights and compute


def test_tokenizer_round_trip(tmp_path, spm_path, seqio_vocab):
  model, params = _model_and_params(_config(("relu",), True))
  export.export_hf_t5(model, params, tmp_path, vocabulary=spm_path)
  assert not (tmp_path / "tokenizer.json").exists()  # converted from spiece.model on load
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
  assert len(tok) == seqio_vocab.vocab_size == PIECES + EXTRA_IDS
  for i in (0, 1, 57, 99):
    assert tok.convert_tokens_to_ids(f"<extra_id_{i}>") == PIECES + EXTRA_IDS - 1 - i
  assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
  sentences = ["Hello, world!", "The for statement iterates over a sequence.", *PROMPTS]
  for s in sentences:
    ids = list(seqio_vocab.encode(s))
    assert tok(s, add_special_tokens=False).input_ids == ids, s
    assert tok(s).input_ids == ids + [1]
    assert tok.decode(ids) == seqio_vocab.decode(ids) == s
  # A span-corruption input: text, sentinel, text.
  a, b = sentences[1], PROMPTS[0]
  want = list(seqio_vocab.encode(a)) + [PIECES + EXTRA_IDS - 1] + list(seqio_vocab.encode(b))
  assert tok(f"{a} <extra_id_0> {b}", add_special_tokens=False).input_ids == want


def test_mode_tokens_at_the_ids_the_task_used(tmp_path, spm_path, seqio_vocab):
  model, params = _model_and_params(_config(("relu",), True))
  # As `mode_prefix="token"` tasks reserve them: the lowest extra ids.
  mode_ids = {m: PIECES + k for k, m in enumerate(MODES)}
  export.export_hf_t5(model, params, tmp_path, vocabulary=spm_path, mode_token_ids=mode_ids)
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
  assert len(tok) == PIECES + EXTRA_IDS
  assert tok.convert_tokens_to_ids(list(MODES)) == list(mode_ids.values())
  assert tok.convert_tokens_to_ids("<extra_id_0>") == PIECES + EXTRA_IDS - 1
  assert tok.convert_tokens_to_ids("<extra_id_96>") == PIECES + 3
  for mode, prompt in zip(MODES, PROMPTS, strict=True):
    want = [mode_ids[mode]] + list(seqio_vocab.encode(prompt)) + [1]
    assert tok(f"{mode} {prompt}").input_ids == want
  with pytest.raises(ValueError, match="outside the vocabulary"):
    export.export_hf_t5(
      model, params, tmp_path / "bad", vocabulary=spm_path, mode_token_ids={"[NLU]": 300}
    )
  with pytest.raises(ValueError, match="which is the piece"):
    export.export_hf_t5(
      model, params, tmp_path / "bad2", vocabulary=spm_path, mode_token_ids={"[NLU]": 50}
    )


def test_vocabulary_larger_than_the_model_fails(tmp_path, spm_path):
  model, params = _model_and_params(_config(("relu",), True, vocab_size=256))
  with pytest.raises(ValueError, match="vocab_size=256"):
    export.export_hf_t5(model, params, tmp_path, vocabulary=spm_path)


def test_wrong_params_fail_naming_the_parameter(tmp_path):
  model, params = _model_and_params(_config(("relu",), False))
  bad = jax.tree.map(np.asarray, params)
  bad["decoder"]["layers_1"]["mlp"]["wo"]["kernel"] = np.zeros((47, 32), np.float32)
  with pytest.raises(ValueError, match=r"decoder/layers_1/mlp/wo/kernel has shape \(47, 32\)"):
    export.export_hf_t5(model, bad, tmp_path)
  del bad["decoder"]["layers_1"]
  with pytest.raises(KeyError, match="decoder/layers_1"):
    export.export_hf_t5(model, bad, tmp_path)
  assert not (tmp_path / "config.json").exists()
  export.export_hf_t5(model, params, tmp_path)
  with pytest.raises(FileExistsError, match="config.json"):
    export.export_hf_t5(model, params, tmp_path)


def test_parse_size():
  assert export.parse_size("5GB") == 5 * 10**9
  assert export.parse_size("2GiB") == 2 * 2**30
  assert export.parse_size("20KB") == 20_000
  assert export.parse_size(1234) == 1234
  for bad in ("5 parsecs", "0", -1, "GB"):
    with pytest.raises(ValueError, match="max_shard_size"):
      export.parse_size(bad)


DECODER_ONLY_GIN = """
from __gin__ import dynamic_registration
from t5x_ext.model import models
from t5x_ext.model import network

MODEL = @models.DecoderOnlyModel()
models.DecoderOnlyModel.config = @network.TransformerConfig()
network.TransformerConfig:
  vocab_size = 384
  emb_dim = 32
  num_heads = 4
  head_dim = 8
  mlp_dim = 48
  num_encoder_layers = 0
  num_decoder_layers = 2
  decoder_only = True
"""


def test_decoder_only_is_refused_clearly(tmp_path, capsys):
  config = _config(("gelu", "linear"), False, num_encoder_layers=0, decoder_only=True)
  with pytest.raises(export.UnsupportedModelError, match="models.DecoderOnlyModel"):
    export.export_hf_t5(models.DecoderOnlyModel(config), {}, tmp_path / "a")
  with pytest.raises(export.UnsupportedModelError, match="decoder_only=True"):
    export.export_hf_t5(config, {}, tmp_path / "a")
  (tmp_path / "model.gin").write_text(DECODER_ONLY_GIN)
  # The model.gin beside --checkpoint is found; no weights are read. (In-process: a
  # subprocess costs a second JAX start-up, and `python -m` only adds `sys.exit(main())`.)
  argv = [f"--checkpoint={tmp_path}", f"--output_dir={tmp_path / 'out'}"]
  assert export.main(argv) == 2
  err = capsys.readouterr().err
  assert "models.DecoderOnlyModel cannot be exported" in err
  assert "Traceback" not in err
  assert not (tmp_path / "out").exists()
