"""Tasks over the embedded corpus (CPython's docstrings and pydoc topics; no download).

Registers `pydocs_ul2_mod_v1` (UL2's Mixture of Denoisers), `pydocs_ul2r_mod_v1`,
`pydocs_span_corruption_v1`, `pydocs_prefix_lm_v1` and `pydocs_causal_lm_v1`, all with the
corpus's own vocabulary (`tasks.default_vocabulary()`, 8,100 ids, trained on first use).
"""

from __future__ import annotations

import seqio

from tasks import corpus, pretraining, vocab

NAME_PREFIX = "pydocs"


def source() -> seqio.DataSource:
  """The embedded corpus as a SeqIO source with `train` and `validation` splits.

  Returns:
    A `seqio.FunctionDataSource` yielding `{"text", "source"}` strings.
  """
  return corpus.InMemorySource(corpus.text_dataset, corpus.SPLITS)


def register() -> list[str]:
  """Registers the pretraining tasks over the embedded corpus (idempotent).

  Returns:
    The registered task names.
  """
  return pretraining.register_objectives(NAME_PREFIX, source(), vocab.default_vocabulary())
