"""Teacher-forced metrics of params over batches: the loss and accuracy of training's eval step.

`teacher_forced_metrics(trainer, params, batches)` runs `trainer.eval_step` on every batch
and sums the step's token counts, so the loss is the per-token mean over the whole split
(with `loss/<denoiser>` per denoiser family when `denoiser_groups` is given). The command
`t5x_ext.eval`, evaluation during training and the suite's mode matrix all use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax

from t5x_ext.training import metric_writers as metrics_lib


def teacher_forced_metrics(
  trainer: Any,
  params: Any,
  batches: Iterable[Mapping[str, Any]],
  *,
  max_batches: int | None = None,
  denoiser_groups: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, float]:
  """Loss, accuracy and per-denoiser losses of `params` over `batches`.

  Args:
    trainer: a `Trainer` (its `eval_step` and `shard_batch`).
    params: the sharded params.
    batches: this process's numpy batches (every process the same number of them).
    max_batches: stop after this many batches (None: all).
    denoiser_groups: denoiser family -> denoiser indices, for `loss/<family>`.

  Returns:
    `{"loss", "cross_entropy", "z_loss", "accuracy", "loss/<denoiser>", ...}`; {} without
    batches.
  """
  acc = metrics_lib.MetricAccumulator()
  for i, batch in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      break
    acc.add(jax.device_get(trainer.eval_step(params, trainer.shard_batch(batch))))
  if not acc.steps:
    return {}
  out = metrics_lib.summarize(
    acc, denoiser_names=trainer.denoiser_names, denoiser_groups=denoiser_groups
  )
  # Over a whole split the per-token mean is the meaningful loss, not the mean of batches.
  keep = {k: v for k, v in out.items() if not k.endswith("_per_s") and k != "steps_per_s"}
  if "cross_entropy" in keep and "z_loss" in keep:
    keep["loss"] = keep["cross_entropy"] + keep["z_loss"]
  return keep
