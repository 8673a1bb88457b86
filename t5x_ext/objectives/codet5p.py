"""CodeT5+'s first-stage pretraining mixture, as three `Denoiser`s.

[CodeT5+] Sec. 3.1 ("unimodal pretraining on code data") trains the encoder-decoder on a
mixture of:

* span denoising: T5's span corruption, 15% of the tokens in spans of mean length 3
  (`kind="span"`; sentinels as T5's `<extra_id_k>`);
* seq2seq causal LM: a pivot drawn uniformly between 10% and 90% of the sequence; the
  tokens before it are the encoder input, the rest the target (`kind="prefix_lm"`,
  `prefix_split="pivot"`: the pivot is uniform over the integers in
  [ceil(L / 10), floor(9 L / 10)] of a chunk of L tokens, so targets are 50% on average);
* decoder-only causal LM through the encoder-decoder: the encoder input is only a `[CLM]`
  token and the decoder generates the whole chunk (`kind="causal_lm"`, `mode="[CLM]"`;
  as text, encoded with the task's vocabulary, or one reserved id with
  `mode_prefix="token"` and `mode_token_ids={"[CLM]": id}`).

Mixing rates: the paper's text available here does not give them, so the three have equal
rates (1/3 each); `codet5p_denoisers(span_rate=..., seq2seq_rate=..., clm_rate=...)`
sets others. Departures from the paper, by our reading of Sec. 3.1 (not checked against
released pretraining code, which was not available): spans are drawn over subword tokens
(the paper masks whole words, sampling spans before subword tokenization as CodeT5 did), and
span lengths follow this package's span segmentation with mean 3 (`corruption.py`; the paper
draws them from a uniform distribution with mean 3).
Only the first stage is here; the second (text-code contrastive and matching) needs paired
data and other heads.

Before/after (chunk "a b c d e f g h i j", tiny):
  span:    inputs [a b <extra_id_0> e f g h i j]        targets [<extra_id_0> c d]
  seq2seq: inputs [a b c d]                             targets [e f g h i j]   (pivot 40%)
  clm:     inputs [[CLM]]                               targets [a b c d e f g h i j]

References:
  [CodeT5+] Wang et al. 2023, "CodeT5+: Open Code Large Language Models for Code
            Understanding and Generation", arXiv:2305.07922.
"""

from __future__ import annotations

from t5x_ext.objectives.denoisers import MODE_CLM, Denoiser


def codet5p_denoisers(
  *,
  span_rate: float = 1 / 3,
  seq2seq_rate: float = 1 / 3,
  clm_rate: float = 1 / 3,
  clm_mode: str = MODE_CLM,
) -> tuple[Denoiser, ...]:
  """CodeT5+'s first-stage mixture with settable rates.

  Args:
    span_rate: weight of span denoising (15%, mean span 3, no mode prefix).
    seq2seq_rate: weight of the seq2seq causal LM (pivot uniform in 10-90%, no prefix).
    clm_rate: weight of the decoder-only causal LM (encoder input: `clm_mode` only).
    clm_mode: what the CLM denoiser's encoder sees ("[CLM]"; "" for an empty input).

  Returns:
    Three `Denoiser`s: `codet5p_span`, `codet5p_seq2seq`, `codet5p_clm` (rates are
    normalized over the mixture).
  """
  return (
    Denoiser("codet5p_span", "span", mean_span_length=3, noise_density=0.15, rate=span_rate),
    # noise_density is the mean target fraction of the pivot split (the split ignores it).
    Denoiser(
      "codet5p_seq2seq", "prefix_lm", noise_density=0.5, prefix_split="pivot", rate=seq2seq_rate
    ),
    Denoiser("codet5p_clm", "causal_lm", mode=clm_mode, rate=clm_rate),
  )


# The mixture with equal rates (the paper's rates are not in the text available here).
CODET5P_DENOISERS: tuple[Denoiser, ...] = codet5p_denoisers()
