"""The evaluation suite for any checkpoint (`suite.run_suite`): per-family held-out loss, the
mode-prefix matrix, scoring and rank classification without fine-tuning, and fine-tuning
probes.

Modules:
  suite.py                the entry (`run_suite`, `write_results`); gin binds `run_suite`
  mode_matrix.py          family losses and the prefix matrix from teacher-forced eval steps
  rank_classification.py  `score_batch` (T5X's score mode) and rank-classification accuracy
  probes.py               short fine-tunes from the checkpoint (classification, generation)
  examples.py             data side (TensorFlow): fixed family examples, prefix swapping
  report.py               Markdown tables

Eval-only SeqIO tasks live in `tasks/evaluation.py`. Importing this package imports neither
TensorFlow nor SeqIO; they load when the suite reads data.
"""
