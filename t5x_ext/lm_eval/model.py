"""`T5xExtLM`: this project's models as the lm-evaluation-harness model `t5x_ext`.

  python -m t5x_ext.lm_eval --model t5x_ext \
    --model_args checkpoint=/tmp/ul2_tiny,mode_prefix=[S2S],batch_size=8 --tasks boolq

The harness's three request types, on the model's own functions:

  loglikelihood          the continuation's log-likelihood given the context: the sum
                         `score_batch` computes (context -> encoder, continuation -> decoder
                         targets; decoder-only: one prefix-LM row), and whether greedy
                         decoding would give it (argmax at every continuation token)
  loglikelihood_rolling  a document's log-likelihood, in disjoint windows of
                         `max_target_length` tokens, each given up to `max_length` tokens
                         before it (the first after the mode prefix and EOS alone)
  generate_until         `predict_batch` (greedy, or sampling with `do_sample`), cut at the
                         first `until` string

Contexts are laid out as the commands' prompts are (`t5x_ext.lm_eval.layout`): the mode prefix
(`[NLU]`, `[NLG]`, `[S2S]` as text in the vocabulary, or none), the context, EOS. Requests are
sorted by length, batched `batch_size` rows at a time (the last batch padded), and run on the
mesh (`mesh_shape`, default all devices along `data`) with the params sharded as `infer` shards
them (`checkpointing.load_params`, `hosts.predict`). With several processes, every process
runs the same command and takes its shard of every batch; the results are gathered on all.

Model arguments (`--model_args k=v,...`; in Python the same keywords):
  checkpoint         MODEL_DIR, a checkpoints/ or step directory, converted weights
                     (`t5x_ext.hf.convert` / `t5x_ext.t5x_ckpt.convert` OUT or OUT/params),
                     a T5X checkpoint directory, or LoRA adapters merged into their base
                     (`t5x_ext.peft.merge` OUT) (required unless `params` is given)
  gin_file           the model's gin file(s), joined with `+` (default: the config.gin or
                     model.gin at or above `checkpoint`); gin_bindings: more bindings
  vocabulary         a SentencePiece model file (`extra_ids` sentinels, default 100), or
  task               a registered SeqIO task whose vocabulary to use (`task_module` to
                     import first); default: the embedded corpus's vocabulary
  mode_prefix        '[NLU]', '[NLG]', '[S2S]' or none (default)
  batch_size         global rows per batch (default 8; `--batch_size` when not given here),
                     rounded up to a multiple of the data-parallel devices
  max_length         encoder length (decoder-only: row length), default 512
  max_target_length  decoder length for scores and rolling windows, default 128
  max_gen_toks       default tokens to generate, 64
  context_eos        end contexts with EOS (default: yes, but not for a causal LM)
  continuation_eos   also score EOS after each continuation (default no, as the harness's
                     seq2seq models; yes makes scores those of T5-style rank classification)
  mesh_shape         e.g. data:4+model:2 (default data:-1, all devices), or a dict
  seed               sampling seed
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import math
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from t5x_ext.errors import UserError
from t5x_ext.lm_eval import layout as layout_lib
from t5x_ext.model import losses
from t5x_ext.modes import UL2_MODES
from t5x_ext.training import checkpointing, hosts, partitioning

MODEL_NAME = "t5x_ext"
NO_MODE = (None, "", "none", "None")


def score_and_greedy(model: Any, params: Any, batch: Any) -> tuple[jax.Array, jax.Array]:
  """The targets' log-likelihood per row (`model.score_batch`) and whether argmax gives them.

  The sum is `score_batch`'s (the same logits, log-probabilities and loss weights), from the
  one forward pass that also gives the argmax.

  Args:
    model: an `EncoderDecoderModel` or `DecoderOnlyModel`.
    params: unboxed params.
    batch: an unpacked batch with `decoder_loss_weights`.

  Returns:
    `(scores float32 [B], greedy bool [B])`.
  """
  logits_BTV = model._apply(params, batch, None)
  targets_BT = jnp.asarray(batch["decoder_target_tokens"])
  _, _, logp_BT = losses.cross_entropy_with_z_loss(logits_BTV, targets_BT)
  weights_BT = model._loss_weights(batch)
  scores_B = jnp.sum(logp_BT * weights_BT, axis=-1)
  hits_BT = (jnp.argmax(logits_BTV, axis=-1) == targets_BT) | (weights_BT == 0)
  return scores_B, jnp.all(hits_BT, axis=-1)


# The gin file a run writes into MODEL_DIR, and the one the converters write beside params/.
GIN_NAMES = ("config.gin", "model.gin")
# A LoRA run's record (t5x_ext.peft): its checkpoints hold adapters, not the model's params.
ADAPTERS_FILE = "adapters.json"


def _at_or_above(path: str, name: str) -> pathlib.Path | None:
  # MODEL_DIR/checkpoints/<step>/ and OUT/params/ sit up to three levels below their files.
  start = pathlib.Path(os.path.abspath(path))
  for directory in [start, *list(start.parents)[:3]]:
    if (directory / name).is_file():
      return directory / name
  return None


def find_gin_file(checkpoint: str) -> str:
  """The model's gin file beside a checkpoint: the nearest config.gin or model.gin.

  Args:
    checkpoint: the `checkpoint` argument.

  Returns:
    The file's path.

  Raises:
    FileNotFoundError: when there is none, or the nearest does not configure t5x_ext (a T5X
      run's config.gin); `gin_file` must then name the model.
  """
  for name in GIN_NAMES:
    found = _at_or_above(checkpoint, name)
    if found is not None:
      if "t5x_ext" not in found.read_text():
        raise FileNotFoundError(
          f"{found} does not configure t5x_ext (a T5X run's?); name this project's model gin "
          "file with gin_file=... (e.g. the model.gin of python -m t5x_ext.t5x_ckpt.convert)"
        )
      return str(found)
  raise FileNotFoundError(
    f"no config.gin or model.gin at or above checkpoint={checkpoint!r}; pass gin_file=..."
  )


def _gin_files(gin_file: Any, checkpoint: str | None) -> list[str]:
  if gin_file is None:
    if checkpoint is None:
      raise UserError("gin_file: no model gin file and no checkpoint to find one beside")
    return [find_gin_file(checkpoint)]
  if isinstance(gin_file, str):
    return [f for f in gin_file.split("+") if f]
  return [str(f) for f in gin_file]


def parse_mesh_shape(value: Any) -> dict[str, int] | None:
  """MESH_SHAPE from a model argument: a dict, None, or text such as `data:4+model:2`.

  (`--model_args k=v,...` cannot hold braces: the harness then reads the whole argument as
  JSON, which is the other way to give a dict.)

  Args:
    value: the argument.

  Returns:
    `{axis: size}` or None.
  """
  if value is None or isinstance(value, dict):
    return value
  out = {}
  for part in str(value).split("+"):
    axis, sep, size = part.partition(":")
    if not sep:
      raise UserError(f"mesh_shape={value!r}: expected AXIS:SIZE+AXIS:SIZE, e.g. data:4+model:2")
    out[axis.strip()] = int(size)
  return out


def _adapters_hint(checkpoint: str, error: Exception) -> str:
  # Merged into their base, a LoRA run's adapters are a checkpoint like converted weights.
  found = _at_or_above(checkpoint, ADAPTERS_FILE)
  if found is None:
    return str(error)
  return (
    f"{error}\ncheckpoint={checkpoint!r} is a LoRA run ({found}): fold its adapters into the "
    f"base first, `python -m t5x_ext.peft.merge --adapters={checkpoint} --output_dir=OUT`, "
    "and pass checkpoint=OUT."
  )


def _as_list(value: Any) -> list[str]:
  if value is None:
    return []
  return [value] if isinstance(value, str) else [str(v) for v in value]


def load_vocabulary(
  vocabulary: Any = None, task: str | None = None, *, extra_ids: int = 100, task_module: Any = None
) -> Any:
  """The vocabulary to encode requests with.

  Args:
    vocabulary: a `seqio.Vocabulary`, a SentencePiece model path, or None.
    task: a registered SeqIO task or mixture (its `targets` vocabulary), or None.
    extra_ids: sentinels of a SentencePiece file.
    task_module: module(s) to import for `task`'s registration.

  Returns:
    `vocabulary` itself, the file's vocabulary, the task's, or the embedded corpus's.
  """
  if vocabulary is not None and not isinstance(vocabulary, str):
    return vocabulary
  import seqio

  if vocabulary:
    return seqio.SentencePieceVocabulary(vocabulary, extra_ids=int(extra_ids))
  if task:
    for name in _as_list(task_module):
      importlib.import_module(name)
    from t5x_ext.data import providers

    return providers.vocabulary_of(providers.get_provider(task))
  from tasks import vocab

  return vocab.default_vocabulary()


def mode_prefix_ids(mode_prefix: str | None, vocabulary: Any) -> tuple[int, ...]:
  """The ids of a mode prefix as the commands encode it (`prompts.encode_prompts`).

  Args:
    mode_prefix: '[NLU]', '[NLG]', '[S2S]', or None / '' / 'none'.
    vocabulary: the vocabulary.

  Returns:
    The ids (empty for none).
  """
  if mode_prefix in NO_MODE:
    return ()
  from t5x_ext.data import prompts

  (ids,) = prompts.encode_prompts(
    [""], vocabulary, mode=mode_prefix, max_length=1 << 30, append_eos=False
  )
  return tuple(ids)


def _split_space(context: str, continuation: str) -> tuple[str, str]:
  # The harness's convention (TemplateLM._encode_pair): the word boundary goes with the
  # continuation.
  n = len(context) - len(context.rstrip())
  if n:
    return context[:-n], context[-n:] + continuation
  return context, continuation


@register_model(MODEL_NAME)
class T5xExtLM(LM):
  """The harness model `t5x_ext` (arguments: see the module docstring).

  Args:
    checkpoint: where to read params (see the module docstring).
    gin_file: model gin file(s): a `+`-joined string or a list.
    gin_bindings: extra gin bindings (a string or a list).
    model: a model object instead of gin (Python).
    params: params instead of a checkpoint (Python; placed on the mesh as they are).
    vocabulary: a vocabulary object or SentencePiece file.
    task: a SeqIO task lending its vocabulary.
    task_module: module(s) to import before `task` is looked up.
    extra_ids: sentinels of a SentencePiece `vocabulary` file.
    mode_prefix: '[NLU]', '[NLG]', '[S2S]' or none.
    batch_size: global rows per batch.
    max_length: encoder (decoder-only: row) length.
    max_target_length: decoder length for scoring.
    max_gen_toks: default tokens to generate.
    context_eos: end contexts with EOS (None: yes unless the model is a causal LM).
    continuation_eos: score EOS after each continuation.
    mesh_shape: MESH_SHAPE.
    logical_axis_rules: partitioning rules (default `partitioning.DEFAULT_RULES`).
    seed: sampling seed.
    **kwargs: the harness's `device` and `max_batch_size` (ignored: JAX places the work).
  """

  def __init__(
    self,
    checkpoint: str | None = None,
    gin_file: Any = None,
    gin_bindings: Any = None,
    *,
    model: Any = None,
    params: Any = None,
    vocabulary: Any = None,
    task: str | None = None,
    task_module: Any = None,
    extra_ids: int = 100,
    mode_prefix: str | None = None,
    batch_size: int | str = 8,
    max_length: int = 512,
    max_target_length: int = 128,
    max_gen_toks: int = 64,
    context_eos: bool | None = None,
    continuation_eos: bool = False,
    mesh_shape: Any = None,
    logical_axis_rules: Any = None,
    seed: int = 0,
    **kwargs: Any,
  ):
    super().__init__()
    unknown = set(kwargs) - {"device", "max_batch_size"}
    if unknown:
      raise TypeError(f"t5x_ext: unknown model arguments {sorted(unknown)}")
    if mode_prefix not in NO_MODE and mode_prefix not in UL2_MODES:
      raise UserError(f"mode_prefix={mode_prefix!r}: expected [NLU], [NLG], [S2S] or none")
    if model is None:
      from t5x_ext.launch import flags

      model = flags.model_from_gin(_gin_files(gin_file, checkpoint), _as_list(gin_bindings))
    if params is None and checkpoint is None:
      raise UserError("t5x_ext needs checkpoint=... (or params in Python)")
    self.model = model
    self.vocabulary = load_vocabulary(
      vocabulary, task, extra_ids=extra_ids, task_module=task_module
    )
    if self.vocabulary.vocab_size > model.config.vocab_size:
      raise UserError(
        f"the vocabulary has {self.vocabulary.vocab_size} ids but the model "
        f"{model.config.vocab_size}"
      )
    try:
      self.batch_size = int(batch_size)
    except ValueError:
      raise UserError(f"batch_size={batch_size!r}: an int (no 'auto')") from None
    converter = model.feature_converter_name
    if context_eos is None:
      context_eos = converter != layout_lib.CAUSAL_LM
    self.layout = layout_lib.Layout(
      feature_converter_name=converter,
      prefix=mode_prefix_ids(mode_prefix, self.vocabulary),
      eos_id=int(self.vocabulary.eos_id),
      context_eos=bool(context_eos),
      continuation_eos=bool(continuation_eos),
      max_length=int(max_length),
      max_target_length=int(max_target_length),
    )
    self.mode_prefix = None if mode_prefix in NO_MODE else mode_prefix
    self.max_gen_toks = int(max_gen_toks)
    self.seed = int(seed)
    self.checkpoint = checkpoint

    mesh_shape = parse_mesh_shape(mesh_shape)
    mesh = partitioning.make_mesh(mesh_shape)
    step = math.lcm(
      partitioning.data_parallel_size(mesh), partitioning.process_batch_shard(mesh)[1]
    )
    if self.batch_size % step:
      # The harness passes its own --batch_size (default 1) when model_args name none; a
      # batch that cannot split over the devices gets padding rows instead of an error.
      rounded = -(-self.batch_size // step) * step
      logging.warning(
        "t5x_ext: batch_size=%d does not split over the mesh %s; using %d",
        self.batch_size,
        dict(mesh.shape),
        rounded,
      )
      self.batch_size = rounded
    partitioning.validate_batch_size(self.batch_size, mesh)
    self.shard_id, self.num_shards = partitioning.process_batch_shard(mesh)
    self.local_rows = self.batch_size // self.num_shards
    probe = self.layout.score_rows([layout_lib.Pair((), (1,))], self.local_rows)
    if params is None:
      try:
        self.trainer, self.params = checkpointing.load_params(
          model, probe, checkpoint, mesh_shape=mesh_shape, logical_axis_rules=logical_axis_rules
        )
      except ValueError as e:
        raise UserError(_adapters_hint(checkpoint, e)) from e
    else:
      import optax

      from t5x_ext.training.trainer import Trainer

      rules = partitioning.DEFAULT_RULES if logical_axis_rules is None else logical_axis_rules
      self.trainer, self.params = Trainer(model, optax.identity(), mesh, rules), params
    self._score_fn = jax.jit(functools.partial(score_and_greedy, model))

  # ---- the harness's API -----------------------------------------------------------

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
    """As `LM.create_from_arg_string`, but `--model_args` win over `--batch_size` etc."""
    from lm_eval import utils

    return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string), additional_config)

  @classmethod
  def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
    """As `LM.create_from_arg_obj`, but `--model_args` win over `--batch_size` etc."""
    extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
    return cls(**{**extra, **arg_dict})

  @property
  def tokenizer_name(self) -> str:
    """The vocabulary's file (fingerprints the harness's request cache)."""
    return str(getattr(self.vocabulary, "sentencepiece_model_file", type(self.vocabulary)))

  def get_model_info(self) -> dict[str, Any]:
    """What the harness records about the model in its results."""
    return {
      "model_num_parameters": int(sum(x.size for x in jax.tree.leaves(self.params))),
      "checkpoint": str(self.checkpoint),
      "mode_prefix": self.mode_prefix,
    }

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    """`(log p(continuation | context), is_greedy)` per request (see the module docstring).

    Args:
      requests: `Instance`s whose `args` are `(context, continuation)`.
      disable_tqdm: no progress bar.

    Returns:
      One `(float, bool)` per request, in order.
    """
    pairs = [self.encode_pair(*req.args) for req in requests]
    out = self.score_pairs(pairs, disable_tqdm=disable_tqdm, desc="loglikelihood")
    for req, res in zip(requests, out):
      self.cache_hook.add_partial("loglikelihood", req.args, res)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """A whole document's log-likelihood per request, in disjoint windows.

    Args:
      requests: `Instance`s whose `args` are `(text,)`.
      disable_tqdm: no progress bar.

    Returns:
      One float per request.
    """
    window = self.layout.max_target_length
    if not self.layout.encoder_decoder:
      window = min(window, self.layout.max_length - len(self.layout.prefix) - 1)
    owner, pairs = [], []
    for n, req in enumerate(requests):
      ids = [int(t) for t in self.vocabulary.encode(req.args[0])]
      for pair in layout_lib.rolling_pairs(ids, window, self.layout.max_length):
        owner.append(n)
        pairs.append(pair)
    # A document's own tokens: no EOS is scored after the last window.
    scores = self.score_pairs(
      pairs,
      disable_tqdm=disable_tqdm,
      desc="loglikelihood_rolling",
      layout=dataclasses.replace(self.layout, continuation_eos=False),
    )
    totals = [0.0] * len(requests)
    for n, (s, _) in zip(owner, scores):
      totals[n] += s
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Decodes each context and cuts the text at the first of its `until` strings.

    Args:
      requests: `Instance`s whose `args` are `(context, gen_kwargs)`; gen_kwargs may hold
        until, max_gen_toks, do_sample, temperature, top_k, top_p.
      disable_tqdm: no progress bar.

    Returns:
      One string per request, in order.
    """
    from lm_eval.models.utils import normalize_gen_kwargs, postprocess_generated_text

    groups: dict[str, list[int]] = {}
    for n, req in enumerate(requests):
      groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(n)
    out: list[str | None] = [None] * len(requests)
    for members in groups.values():
      kwargs = normalize_gen_kwargs(dict(requests[members[0]].args[1]), self.max_gen_toks)
      until = kwargs.pop("until", None) or []
      decode_len = int(kwargs.pop("max_gen_toks"))
      prompts = [self.layout.prompt(self._encode(requests[n].args[0]), decode_len) for n in members]
      decode_kw = self._decode_kw(kwargs)
      texts = self.generate_ids(prompts, decode_len, disable_tqdm=disable_tqdm, **decode_kw)
      for n, text in zip(members, texts):
        out[n] = postprocess_generated_text(text, until, None)
        self.cache_hook.add_partial("generate_until", requests[n].args, out[n])
    return out

  # ---- tokens in, numbers out -----------------------------------------------------------

  def _encode(self, text: str) -> list[int]:
    return [int(t) for t in self.vocabulary.encode(text)] if text else []

  def encode_pair(self, context: str, continuation: str) -> layout_lib.Pair:
    """A `(context, continuation)` request in tokens (trailing spaces go with the continuation).

    Args:
      context: the context text.
      continuation: the text to score.

    Returns:
      The `Pair`.
    """
    context, continuation = _split_space(context, continuation)
    if self.layout.feature_converter_name == layout_lib.CAUSAL_LM and not self.layout.context_eos:
      # One token stream: encode it whole and split where the context ends, as the harness
      # does for causal LMs.
      ctx = self._encode(context)
      whole = self._encode(context + continuation)
      return layout_lib.Pair(tuple(ctx), tuple(whole[len(ctx) :]))
    return layout_lib.Pair(tuple(self._encode(context)), tuple(self._encode(continuation)))

  def _decode_kw(self, kwargs: dict[str, Any]) -> dict[str, Any]:
    temperature = float(kwargs.get("temperature", 0.0) or 0.0)
    if not kwargs.get("do_sample") or temperature == 0.0:
      return {"method": "greedy"}
    return {
      "method": "sample",
      "temperature": temperature,
      "top_k": int(kwargs.get("top_k", 0) or 0),
      "top_p": float(kwargs.get("top_p", 1.0) or 1.0),
    }

  def _batches(self, items: Sequence[Any], key: Callable[[Any], int]):
    """(global order chunk, this process's items) per batch, longest first."""
    order = sorted(range(len(items)), key=lambda i: -key(items[i]))
    for start in range(0, len(order), self.batch_size):
      chunk = order[start : start + self.batch_size]
      lo = self.shard_id * self.local_rows
      yield chunk, [items[i] for i in chunk[lo : lo + self.local_rows]]

  def _gather(self, chunk: Sequence[int], local: Any) -> list[Any]:
    """The results of a whole batch, in chunk order, from every shard's rows."""
    per_shard = hosts.gather_shards(local, self.shard_id)
    rows = []
    for k, part in enumerate(per_shard):
      n = len(chunk[k * self.local_rows : (k + 1) * self.local_rows])
      rows += list(part[:n])
    return rows

  def score_pairs(
    self,
    pairs: Sequence[layout_lib.Pair],
    *,
    disable_tqdm: bool = True,
    desc: str = "",
    layout: layout_lib.Layout | None = None,
  ) -> list[tuple[float, bool]]:
    """`(log-likelihood, greedy)` of each pair's continuation, in batches on the mesh.

    Args:
      pairs: the requests in tokens.
      disable_tqdm: no progress bar.
      desc: the progress bar's label.
      layout: the rows' layout (default `self.layout`).

    Returns:
      One `(float, bool)` per pair, in order.
    """
    layout = self.layout if layout is None else layout
    out: list[tuple[float, bool] | None] = [None] * len(pairs)
    steps = -(-len(pairs) // self.batch_size)
    batches = self._batches(pairs, lambda p: sum(layout.lengths(p)))
    for chunk, mine in tqdm(batches, total=steps, desc=desc, disable=disable_tqdm):
      shape = layout.shape([pairs[i] for i in chunk])
      batch = layout.score_rows(mine, self.local_rows, shape)
      with partitioning.axis_rules(self.trainer.mesh, self.trainer.rules):
        scores, greedy = self._score_fn(self.params, self.trainer.shard_batch(batch))
      local = list(zip(hosts.local_rows(scores).tolist(), hosts.local_rows(greedy).tolist()))
      for i, (s, g) in zip(chunk, self._gather(chunk, local)):
        out[i] = (float(s), bool(g))
    return out

  def generate_ids(
    self,
    prompts: Sequence[Sequence[int]],
    decode_len: int,
    *,
    disable_tqdm: bool = True,
    **decode_kw: Any,
  ) -> list[str]:
    """The decoded continuation of each prompt (up to EOS), in batches on the mesh.

    Args:
      prompts: token ids (mode prefix and EOS included, `Layout.prompt`).
      decode_len: tokens to generate at most.
      disable_tqdm: no progress bar.
      **decode_kw: `predict_batch` keywords (method, temperature, top_k, top_p).

    Returns:
      One text per prompt, in order.
    """
    from t5x_ext.data import prompts as prompts_lib
    from t5x_ext.data import providers

    out: list[str | None] = [None] * len(prompts)
    steps = -(-len(prompts) // self.batch_size)
    rng = jax.random.key(self.seed)
    batches = self._batches(prompts, len)
    for step, (chunk, mine) in enumerate(
      tqdm(batches, total=steps, desc="generate_until", disable=disable_tqdm)
    ):
      longest = max(len(prompts[i]) for i in chunk)
      cap = self.layout.max_length - (0 if self.layout.encoder_decoder else decode_len)
      lengths = {"inputs": layout_lib.bucket(longest, cap), "targets": 1}
      batch = prompts_lib.prompt_batch(
        mine, self.layout.feature_converter_name, lengths, rows=self.local_rows
      )
      tokens, _ = hosts.predict(
        self.trainer,
        self.params,
        batch,
        jax.random.fold_in(rng, step),
        decode_len=decode_len,
        **decode_kw,
      )
      local = [providers.decode_ids(self.vocabulary, row) for row in np.asarray(tokens)]
      for i, text in zip(chunk, self._gather(chunk, local)):
        out[i] = text
    return out
