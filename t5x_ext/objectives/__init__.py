"""UL2 Mixture-of-Denoisers as SeqIO preprocessors (TensorFlow data side; no JAX).

Public API:
  Denoiser, UL2_DENOISERS, UL2R_DENOISERS, T5_SPAN_CORRUPTION, PREFIX_LM, CAUSAL_LM:
    configurations (`denoisers.py`).
  mixture_of_denoisers: the SeqIO preprocessor (`mixture.py`).
  validate_denoisers: early checks + length planning (tasks call it at registration).
  plan_mixture / DenoiserPlan: the planned chunk and feature lengths per denoiser.
  BartNoise, BART_LARGE, BART_PAPER, BART_TABLE1: BART's noises as `Denoiser(kind="bart")`
    (`bart.py`; the TensorFlow side in `bart_noise.py`); bart_denoise: one BART denoiser as
    a SeqIO preprocessor.
"""

from t5x_ext.objectives.bart import BART_LARGE, BART_PAPER, BART_TABLE1, BartNoise
from t5x_ext.objectives.denoisers import (
  CAUSAL_LM,
  KINDS,
  MODE_NLG,
  MODE_NLU,
  MODE_S2S,
  MODES,
  PREFIX_LM,
  PREFIX_SPLITS,
  T5_SPAN_CORRUPTION,
  UL2_DENOISERS,
  UL2R_DENOISERS,
  Denoiser,
  normalized_rates,
)
from t5x_ext.objectives.mixture import (
  MODE_PREFIX_OPTIONS,
  bart_denoise,
  denoisers_of,
  mixture_of_denoisers,
  mod_preprocessor,
  mode_prefix_tokens,
  validate_denoisers,
)
from t5x_ext.objectives.planning import (
  MIN_CHUNK_LENGTH,
  DenoiserPlan,
  check_denoisers,
  plan_mixture,
  usable_sentinels,
)

__all__ = [
  "BART_LARGE",
  "BART_PAPER",
  "BART_TABLE1",
  "CAUSAL_LM",
  "KINDS",
  "MIN_CHUNK_LENGTH",
  "MODES",
  "MODE_NLG",
  "MODE_NLU",
  "MODE_PREFIX_OPTIONS",
  "MODE_S2S",
  "PREFIX_LM",
  "PREFIX_SPLITS",
  "T5_SPAN_CORRUPTION",
  "BartNoise",
  "bart_denoise",
  "UL2R_DENOISERS",
  "UL2_DENOISERS",
  "Denoiser",
  "DenoiserPlan",
  "check_denoisers",
  "denoisers_of",
  "mixture_of_denoisers",
  "mod_preprocessor",
  "mode_prefix_tokens",
  "normalized_rates",
  "plan_mixture",
  "usable_sentinels",
  "validate_denoisers",
]
