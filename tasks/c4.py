"""UL2 and its baselines over C4 (TFDS `c4/en`), with T5's public SentencePiece vocabulary.

Registers `c4_{ul2_mod,ul2r_mod,span_corruption,prefix_lm,causal_lm}_v1` at import. Nothing is
read at registration: the TFDS builder and the vocabulary load when a task is first used, so
`import tasks` works offline and never touches GCS.

T5 used `c4/en:3.0.1`, which current TFDS no longer builds; the default here is 3.1.0 (the
newest `c4/en` of tensorflow-datasets 4.9), a setting of `register`. The vocabulary defaults
to T5's `cc_all.32000` model with 100 extra ids (32,100 ids). Other settings:

  tasks.c4.register(vocabulary_path="/my/spm.model")        # Python
  tasks.c4.register(version="3.1.0", name_prefix="c4_custom")

and through gin in an entry point that makes it configurable
(`gin.external_configurable(tasks.c4.register)`, then `register.vocabulary_path = "..."`).
Registering again with other settings replaces the tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import seqio

from tasks import pretraining

DEFAULT_VERSION = "3.1.0"
DEFAULT_VOCABULARY_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
DEFAULT_EXTRA_IDS = 100


def register(
  *,
  version: str = DEFAULT_VERSION,
  vocabulary_path: str = DEFAULT_VOCABULARY_PATH,
  extra_ids: int = DEFAULT_EXTRA_IDS,
  vocabulary: seqio.Vocabulary | None = None,
  name_prefix: str = "c4",
  objectives: Mapping[str, Sequence] | None = None,
  mode_prefix: str = "text",
  mode_token_ids: Mapping[str, int] | None = None,
) -> list[str]:
  """Registers the pretraining objectives over TFDS `c4/en:<version>`.

  Args:
    version: TFDS version of `c4/en`.
    vocabulary_path: SentencePiece model (local path or `gs://`), used if `vocabulary` is None.
    extra_ids: sentinel ids appended to that model.
    vocabulary: a vocabulary object instead of `vocabulary_path` (tests use the embedded one).
    name_prefix: task names are `<name_prefix>_<objective>_v1`.
    objectives: objective name -> denoisers (default: all of `tasks.pretraining.OBJECTIVES`).
    mode_prefix: "text" or "token".
    mode_token_ids: {mode: id} for "token" (ids in the extra-id range reduce the sentinels).

  Returns:
    The registered task names.
  """
  if vocabulary is None:
    vocabulary = seqio.SentencePieceVocabulary(vocabulary_path, extra_ids=extra_ids)
  source = seqio.TfdsDataSource(
    tfds_name=f"c4/en:{version}", splits={"train": "train", "validation": "validation"}
  )
  return pretraining.register_objectives(
    name_prefix,
    source,
    vocabulary,
    objectives_map=objectives,
    mode_prefix=mode_prefix,
    mode_token_ids=mode_token_ids,
  )
