"""SeqIO registry of t5x_ext: `import tasks` registers every task and mixture.

Importing is cheap and offline: it imports seqio/TensorFlow and `t5x_ext.objectives` and none
of this project's model code (seqio itself imports jax and flax through clu; nothing here
does), builds no vocabulary and touches no network or GCS; vocabularies and TFDS builders load
when a task is first read. Registering again replaces the tasks with identical ones, so
importing twice (or reloading) is harmless. Where something cleared SeqIO's registry after the
import (test fixtures, notebooks), `tasks.register_all()` registers everything again.

Registered here:
  pydocs_{OBJECTIVE}_v1   embedded corpus
  c4_{OBJECTIVE}_v1       TFDS c4/en (`tasks.c4`)
    where OBJECTIVE is a key of `OBJECTIVES`: ul2_mod, ul2r_mod, span_corruption, prefix_lm,
    causal_lm, ul2_mod_noprefix (UL2's denoisers without mode prefixes) and sclm (span
    corruption plus causal LM), the single objectives and ablation arms of docs/ablation.md,
    bart (BART-large's released noises) and codet5p (CodeT5+'s first-stage mixture), the
    other seq2seq denoisers of docs/objectives.md
  glue_sst2_nlu_v1, cnn_dailymail_s2s_v1, pydocs_topic_classification_v1   fine-tuning with
    mode prefixes (`tasks.finetune`; `register_sst2(mode=...)` etc. for other modes)
The evaluation suite's tasks (`tasks.evaluation`) register when the suite builds them.
Factories: `register_text_files` (your own files), `tasks.c4.register` (other version/vocab),
`register_self_pretraining` (an objective over a registered task's train inputs:
`<task>_self_<objective>_v1`, `tasks.self_pretraining`).
"""

from tasks import c4, finetune, pydocs
from tasks.corpus import cache_dir, corpus_fingerprint
from tasks.pretraining import OBJECTIVES, task_denoisers
from tasks.self_pretraining import register_self_pretraining
from tasks.text_files import register_text_files
from tasks.vocab import default_vocabulary, default_vocabulary_path


def register_all() -> None:
  """Registers (again) every task of this package; `import tasks` calls it once."""
  pydocs.register()
  c4.register()
  finetune.register()


register_all()

__all__ = [
  "OBJECTIVES",
  "cache_dir",
  "corpus_fingerprint",
  "default_vocabulary",
  "default_vocabulary_path",
  "register_all",
  "register_self_pretraining",
  "register_text_files",
  "task_denoisers",
]
