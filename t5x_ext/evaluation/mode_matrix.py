"""Per-family held-out loss and the mode-prefix matrix, from teacher-forced eval steps.

Both come from one table: for each family F (R, X, S) and each prefix column ("[NLU]",
"[NLG]", "[S2S]", "none"), the teacher-forced metrics of the same examples of F with that
column's prefix in front (see `t5x_ext.evaluation.examples`). The numbers are the ones
`t5x_ext.eval` reports (`Trainer.eval_step` summed over the batches, then
`metrics.summarize`): `loss` is the per-target-token cross entropy plus z-loss (the
training loss, `loss/<denoiser>` in train.jsonl), `accuracy` the share of target tokens whose
argmax is right.

  family_loss/<F>          loss of F's examples under `family_prefix` (default: F's own
                           prefix, the one it was pretrained with; "none" for models
                           pretrained without prefixes)
  family_accuracy/<F>      token accuracy, same examples
  denoiser_loss/<name>     loss of one denoiser's examples, same column
  mode_matrix/<F>/<col>    loss of F's examples with prefix <col>

Never imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from t5x_ext.errors import UserError
from t5x_ext.modes import FAMILY_MODES, UL2_MODES

FAMILIES = ("R", "X", "S")
COLUMNS = (*UL2_MODES, "none")


def column_mode(column: str) -> str:
  """The mode string of a column ("none" -> "").

  Args:
    column: one of `COLUMNS`.

  Returns:
    The mode prefix text.
  """
  return "" if column == "none" else column


def family_column(family: str, family_prefix: str = "matching") -> str:
  """The column that `family_loss/<family>` reads.

  Args:
    family: "R", "X" or "S".
    family_prefix: "matching" (the family's own prefix), "none", or a column name.

  Returns:
    A column of `COLUMNS`.

  Raises:
    ValueError: an unknown family or prefix.
  """
  if family not in FAMILY_MODES:
    raise UserError(f"family={family!r} is not one of {FAMILIES}")
  if family_prefix == "matching":
    return FAMILY_MODES[family]
  if family_prefix in ("none", ""):
    return "none"
  if family_prefix in COLUMNS:
    return family_prefix
  raise UserError(f"family_prefix={family_prefix!r}: use 'matching', 'none' or one of {COLUMNS}")


def teacher_forced(trainer: Any, params: Any, batches: Iterable[Mapping]) -> dict[str, float]:
  """Teacher-forced metrics of some batches, with `t5x_ext.eval`'s own loop.

  Args:
    trainer: a `Trainer` whose `denoiser_names` the batches' ids index.
    params: the sharded params.
    batches: numpy batches (this process's rows).

  Returns:
    `loss`, `cross_entropy`, `z_loss`, `accuracy`, `loss/<denoiser>`, ... ({} without rows).
  """
  from t5x_ext.evaluation.teacher_forced import teacher_forced_metrics

  return teacher_forced_metrics(trainer, params, batches)


def score_table(
  trainer: Any, params: Any, batches: Mapping[str, Mapping[str, Sequence[Mapping]]]
) -> dict[str, dict[str, dict[str, float]]]:
  """Runs `teacher_forced` for each family and column.

  Args:
    trainer: the trainer.
    params: the params.
    batches: {family: {column: [numpy batch, ...]}}.

  Returns:
    {family: {column: metrics}} (families or columns without rows are left out).
  """
  table: dict[str, dict[str, dict[str, float]]] = {}
  for family, columns in batches.items():
    for column, rows in columns.items():
      m = teacher_forced(trainer, params, rows)
      if m:
        table.setdefault(family, {})[column] = m
  return table


def family_results(table: Mapping, family_prefix: str = "matching") -> dict[str, float]:
  """`family_loss/<F>`, `family_accuracy/<F>` and `denoiser_loss/<name>` from the table.

  Args:
    table: `score_table`'s output (it must hold the `family_prefix` column).
    family_prefix: see `family_column`.

  Returns:
    The flat metrics.
  """
  out: dict[str, float] = {}
  for family in FAMILIES:
    m = table.get(family, {}).get(family_column(family, family_prefix))
    if not m:
      continue
    out[f"family_loss/{family}"] = m["loss"]
    if "accuracy" in m:
      out[f"family_accuracy/{family}"] = m["accuracy"]
    for key, value in m.items():
      if key.startswith("loss/"):
        out[f"denoiser_loss/{key[len('loss/') :]}"] = value
  return out


def matrix_results(table: Mapping) -> dict[str, float]:
  """`mode_matrix/<F>/<column>` losses from the table.

  Args:
    table: `score_table`'s output.

  Returns:
    The flat metrics.
  """
  return {
    f"mode_matrix/{family}/{column}": m["loss"]
    for family in FAMILIES
    for column, m in table.get(family, {}).items()
  }
