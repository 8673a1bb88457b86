"""Experiments that compose the entry points (train, eval, the evaluation suite).

Modules:
  ablation.py         UL2's objective ablation (Sec. 4 of the paper) at any scale, one command:
                      `python -m t5x_ext.experiments.ablation --gin_file=...`
  ablation_runs.py    the runs it can compare (objective x backbone) and their models
  ablation_report.py  aggregation over seeds, relative change against the baseline, the
                      Markdown table and the figure

Experiments use only the public functions of `t5x_ext.train`, `t5x_ext.eval`, `t5x_ext.model.models`
and `t5x_ext.evaluation`; nothing here is imported by the library.
"""
