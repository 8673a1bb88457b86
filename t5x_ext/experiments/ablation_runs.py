"""The runs the ablation compares: one pretraining objective on one backbone each.

Objectives are the SeqIO tasks `<corpus>_<objective>_<version>` that `tasks.pretraining`
registers for every corpus; backbones are the encoder-decoder given to the ablation (gin:
%MODEL) and a decoder-only twin built from its config:

  sc_ed            T5 span corruption (mu=3, r=0.15), encoder-decoder: the baseline
  sc_dec           the same on the decoder-only twin
  plm_ed, plm_dec  prefix LM
  clm_dec          causal LM (decoder-only, causal attention everywhere, loss on every token)
  sclm_ed/_dec     span corruption + causal LM in equal parts (the paper's SCLM)
  ul2_ed, ul2_dec  the UL2 Mixture-of-Denoisers with mode prefixes
  ul2_noprefix_ed/_dec  the same mixture without mode prefixes
  codet5p_ed       CodeT5+'s first-stage mixture (span denoising, seq2seq causal LM, causal
                   LM with `[CLM]` as the only encoder input; arXiv:2305.07922 Sec. 3.1)
  bart_ed          BART's released noises (text infilling of 30% of the words, Poisson(3.5)
                   spans, every sentence permuted; the target is the original text),
                   encoder-decoder (arXiv:1910.13461 Sec. 2.2, 5.1)

Decoder-only twins are compute-matched by default, as UL2 compares its backbones: as many
layers as the encoder-decoder's decoder (its encoder has as many again), so a position costs
about the same FLOPs in both while the encoder-decoder holds about twice the layer
parameters. Prefix-LM twins attend bidirectionally over the inputs part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from t5x_ext.errors import UserError
from t5x_ext.model import models

ENCODER_DECODER = "encoder_decoder"
DECODER_ONLY = "decoder_only"


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One objective on one backbone.

  Attributes:
    name: the run's name (`sc_ed`, ...), the row of the table.
    label: a short human label for tables and figures.
    objective: a key of `tasks.pretraining.OBJECTIVES` (the task is
      `<corpus>_<objective>_<version>`).
    architecture: `ENCODER_DECODER` or `DECODER_ONLY`.
    causal: a causal LM: decoder-only with causal attention on every position and
      targets-only batches of `inputs + targets` tokens (so it sees the same positions).
    mode_prefixes: whether the objective puts mode prefixes in front of the inputs (the
      suite then scores each family under its own prefix, else under none).
  """

  name: str
  label: str
  objective: str
  architecture: str
  causal: bool = False
  mode_prefixes: bool = False

  def task_name(self, corpus: str, version: str = "v1") -> str:
    """The SeqIO task this run trains on.

    Args:
      corpus: the corpus prefix ("pydocs", "c4", a `register_text_files` prefix).
      version: the task version suffix.

    Returns:
      `<corpus>_<objective>_<version>`.
    """
    return f"{corpus}_{self.objective}_{version}"

  def train_lengths(self, lengths: Mapping[str, int]) -> dict[str, int]:
    """Training feature lengths: `lengths`, or one targets length of the same total (CLM).

    Args:
      lengths: {"inputs": LI, "targets": LT} of the ablation.

    Returns:
      The lengths given to `train`.
    """
    lengths = {k: int(v) for k, v in lengths.items()}
    if self.causal:
      return {"targets": sum(lengths.values())}
    return lengths

  @property
  def family_prefix(self) -> str:
    """The suite's `family_prefix` for this run: "matching" with mode prefixes, else "none"."""
    return "matching" if self.mode_prefixes else "none"


def _spec(name, label, objective, arch, **kw) -> RunSpec:
  return RunSpec(name, label, objective, arch, **kw)


RUNS: dict[str, RunSpec] = {
  s.name: s
  for s in (
    _spec("sc_ed", "SC (ED)", "span_corruption", ENCODER_DECODER),
    _spec("sc_dec", "SC (Dec)", "span_corruption", DECODER_ONLY),
    _spec("plm_ed", "PLM (ED)", "prefix_lm", ENCODER_DECODER),
    _spec("plm_dec", "PLM (Dec)", "prefix_lm", DECODER_ONLY),
    _spec("clm_dec", "CLM (Dec)", "causal_lm", DECODER_ONLY, causal=True),
    _spec("sclm_ed", "SCLM (ED)", "sclm", ENCODER_DECODER),
    _spec("sclm_dec", "SCLM (Dec)", "sclm", DECODER_ONLY),
    _spec("ul2_ed", "UL2 (ED)", "ul2_mod", ENCODER_DECODER, mode_prefixes=True),
    _spec("ul2_dec", "UL2 (Dec)", "ul2_mod", DECODER_ONLY, mode_prefixes=True),
    _spec("ul2_noprefix_ed", "UL2 no prefix (ED)", "ul2_mod_noprefix", ENCODER_DECODER),
    _spec("ul2_noprefix_dec", "UL2 no prefix (Dec)", "ul2_mod_noprefix", DECODER_ONLY),
    # No UL2 mode prefixes: the suite scores its families under none (its own `[CLM]`
    # marks only the causal-LM rows, which no family of the suite has).
    _spec("codet5p_ed", "CodeT5+ (ED)", "codet5p", ENCODER_DECODER),
    # No mode prefixes either: the families are scored under none.
    _spec("bart_ed", "BART (ED)", "bart", ENCODER_DECODER),
  )
}


def get_run(name: str) -> RunSpec:
  """Looks a run up by name.

  Args:
    name: a key of `RUNS`.

  Returns:
    The `RunSpec`.

  Raises:
    ValueError: naming the known runs.
  """
  if name not in RUNS:
    raise UserError(f"unknown ablation run {name!r}; known runs: {sorted(RUNS)}")
  return RUNS[name]


def decoder_only_twin(
  model: models.EncoderDecoderModel, *, num_layers: int | None = None, causal: bool = False
) -> models.DecoderOnlyModel:
  """A decoder-only model with `model`'s dimensions and loss settings.

  Args:
    model: the encoder-decoder of the ablation.
    num_layers: decoder-only depth; default the encoder-decoder's decoder depth (compute
      matched; see the module docstring).
    causal: causal attention everywhere and targets-only batches (a causal LM); otherwise a
      prefix LM with bidirectional attention over the inputs part.

  Returns:
    A `DecoderOnlyModel`.
  """
  cfg = model.config
  if cfg.decoder_only:
    raise UserError("the ablation's model must be an encoder-decoder (its MODEL)")
  twin = dataclasses.replace(
    cfg,
    decoder_only=True,
    num_encoder_layers=0,
    num_decoder_layers=int(num_layers or cfg.num_decoder_layers),
  )
  return models.DecoderOnlyModel(
    twin,
    inputs_bidirectional_attention=not causal,
    # The decoder converter lays out targets-only batches as a plain LM and batches with
    # inputs (the suite's examples) as a prefix LM, which causal attention then ignores.
    feature_converter_name="DecoderFeatureConverter" if causal else "PrefixLMFeatureConverter",
    z_loss=model.z_loss,
    label_smoothing=model.label_smoothing,
    loss_normalizing_factor=model.loss_normalizing_factor,
    eos_id=model.eos_id,
  )


def model_for(
  spec: RunSpec, model: models.EncoderDecoderModel, *, decoder_only_layers: int | None = None
) -> Any:
  """The model a run trains: `model` itself, or its decoder-only twin.

  Args:
    spec: the run.
    model: the ablation's encoder-decoder.
    decoder_only_layers: depth of decoder-only twins (None: compute matched).

  Returns:
    The model.
  """
  if spec.architecture == ENCODER_DECODER:
    return model
  return decoder_only_twin(model, num_layers=decoder_only_layers, causal=spec.causal)


def param_count(model: Any, lengths: Mapping[str, int]) -> int:
  """Number of parameters (from shapes only; nothing is allocated).

  Args:
    model: a model.
    lengths: the run's feature lengths.

  Returns:
    The parameter count.
  """
  b = 1
  li, lt = int(lengths.get("inputs", 0)), int(lengths["targets"])
  if model.feature_converter_name == "EncDecFeatureConverter":
    shapes = {
      "encoder_input_tokens": (b, li),
      "decoder_input_tokens": (b, lt),
      "decoder_target_tokens": (b, lt),
      "decoder_loss_weights": (b, lt),
    }
  else:
    names = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
    shapes = {k: (b, li + lt) for k in (*names, "decoder_causal_attention")}
  batch = {k: jax.ShapeDtypeStruct(s, jnp.int32) for k, s in shapes.items()}
  params = jax.eval_shape(lambda: model.init_variables(jax.random.key(0), batch))["params"]
  return int(sum(x.size for x in jax.tree.leaves(params)))


def positions_per_step(spec: RunSpec, lengths: Mapping[str, int], batch_size: int) -> int:
  """Token positions one training step processes: batch x (inputs + targets), any backbone.

  Args:
    spec: the run.
    lengths: the ablation's lengths.
    batch_size: rows per step.

  Returns:
    Positions per step (the unit of the equal token budget).
  """
  return int(batch_size) * sum(spec.train_lengths(lengths).values())
