"""Training metrics on the host: summaries, the JSONL log, writers and the progress bar.

The jitted steps return sums (loss, tokens, correct predictions, per-denoiser loss and token
counts); `MetricAccumulator` adds them up between two logging steps on the host and
`summarize` turns them into the logged values, so every logged number is a token-weighted
mean over the whole interval rather than the value of one step.

Logged keys (all floats):
  loss                 mean of the optimised loss over the interval's steps
  cross_entropy        per-target-token cross entropy (z-loss excluded)
  z_loss               per-target-token z-loss
  accuracy             share of target tokens whose argmax is right
  loss/<denoiser>      per-target-token loss (cross entropy + z-loss) of one denoiser,
                       e.g. `loss/R(3,0.15)`; `loss/<mode>` (e.g. `loss/[NLU]`) pools the
                       denoisers that share a mode prefix
  tokens/<denoiser>    share of the interval's target tokens made by that denoiser
  learning_rate, grad_norm
  steps_per_s, tokens_per_s (all batch positions, padding included: what the chips compute),
  target_tokens_per_s (non-padding target tokens), model_flops_per_s, mfu (when the peak
  FLOP/s of the device is known or given)

This module never imports TensorFlow; TensorBoard writers (clu's, which import TF) are
created by the entry points and handed in as plain objects with `write_scalars`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from t5x_ext.training import flops, run_paths

# The peak table lives in `flops` (per JAX device); re-exported for existing callers.
peak_flops_per_device = flops.peak_flops_per_device


class MetricAccumulator:
  """Adds up the per-step metric sums the train step returns, between two log steps."""

  def __init__(self):
    """Starts empty."""
    self.reset()

  def reset(self) -> None:
    """Forgets everything added so far and restarts the clock."""
    self.sums: dict[str, np.ndarray] = {}
    self.steps = 0
    self.start_time = time.perf_counter()
    self.last: dict[str, float] = {}

  def add(self, step_metrics: Mapping[str, Any]) -> None:
    """Adds one step's metrics (numpy or device arrays, already fetched to the host).

    Args:
      step_metrics: the dict the train step returned. Keys ending in `_sum`, `correct`,
        `num_tokens` and `denoiser_*` are summed; `learning_rate` and `grad_norm` keep their
        last value; `loss` is averaged over steps.
    """
    for key, value in step_metrics.items():
      value = np.asarray(value, dtype=np.float64)
      if key in ("learning_rate", "grad_norm"):
        self.last[key] = float(value)
        continue
      if key in self.sums:
        self.sums[key] = self.sums[key] + value
      else:
        self.sums[key] = value
    self.steps += 1

  def elapsed(self) -> float:
    """Seconds since the last reset."""
    return time.perf_counter() - self.start_time


def summarize(
  acc: MetricAccumulator,
  *,
  denoiser_names: Sequence[str] = (),
  denoiser_groups: Mapping[str, Sequence[int]] | None = None,
  tokens_per_step: int | None = None,
  flops_per_step: float | None = None,
  peak_flops: float | None = None,
  seconds: float | None = None,
) -> dict[str, float]:
  """Turns accumulated sums into the logged values (see the module docstring for keys).

  Args:
    acc: the accumulator holding at least one step.
    denoiser_names: name of denoiser k (the data side's `decoder_denoiser_ids` hold k + 1).
    denoiser_groups: extra pooled losses, e.g. {"[NLU]": [0, 1]} for the mode prefixes.
    tokens_per_step: batch positions per step (B x (LI + LT)), for `tokens_per_s`.
    flops_per_step: training FLOPs of one step (the model's estimate).
    peak_flops: peak FLOP/s of all devices together, for `mfu`.
    seconds: wall time of the interval; defaults to the accumulator's clock.

  Returns:
    A flat dict of floats.
  """
  s = acc.sums
  out: dict[str, float] = {}
  steps = max(acc.steps, 1)
  n = float(s.get("num_tokens", 0.0))
  if "loss" in s:
    out["loss"] = float(s["loss"]) / steps
  if n > 0:
    if "cross_entropy_sum" in s:
      out["cross_entropy"] = float(s["cross_entropy_sum"]) / n
    if "z_loss_sum" in s:
      out["z_loss"] = float(s["z_loss_sum"]) / n
    if "correct" in s:
      out["accuracy"] = float(s["correct"]) / n
  if "denoiser_loss_sum" in s and denoiser_names:
    d_loss = np.asarray(s["denoiser_loss_sum"], np.float64)
    d_tok = np.asarray(s["denoiser_tokens"], np.float64)
    total = max(float(d_tok.sum()), 1.0)
    for k, name in enumerate(denoiser_names):
      if k < len(d_tok) and d_tok[k] > 0:
        out[f"loss/{name}"] = float(d_loss[k] / d_tok[k])
        out[f"tokens/{name}"] = float(d_tok[k] / total)
    for group, members in (denoiser_groups or {}).items():
      members = [k for k in members if k < len(d_tok)]
      tok = float(d_tok[members].sum()) if members else 0.0
      if tok > 0:
        out[f"loss/{group}"] = float(d_loss[members].sum() / tok)
  out.update(acc.last)
  seconds = acc.elapsed() if seconds is None else seconds
  if seconds > 0:
    out["steps_per_s"] = acc.steps / seconds
    if n > 0:
      out["target_tokens_per_s"] = n / seconds
    if tokens_per_step:
      out["tokens_per_s"] = tokens_per_step * acc.steps / seconds
    if flops_per_step:
      out["model_flops_per_s"] = flops_per_step * acc.steps / seconds
      if peak_flops:
        out["mfu"] = out["model_flops_per_s"] / peak_flops
  return out


class ScalarWriter(Protocol):
  """What the training loop needs of a metric writer (clu's MetricWriter satisfies it)."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Writes one step's scalars."""

  def flush(self) -> None:
    """Makes everything written so far durable."""

  def close(self) -> None:
    """Flushes and releases the writer."""


class JsonlWriter:
  """Appends one JSON object per logged step to a file (`MODEL_DIR/metrics/train.jsonl`).

  Resuming a run can leave lines for steps after the restored checkpoint; pass
  `truncate_after=restored_step` to drop them, so the file reads as one consistent run.
  """

  def __init__(self, path: str | os.PathLike, *, truncate_after: int | None = None):
    """Opens (and creates) the file.

    On an object store (`gs://...`), which has no append, the writer keeps the file's text
    and uploads it whole at each `flush` (a few KB per thousand steps).

    Args:
      path: the JSONL file (local or `scheme://`; see `run_paths`).
      truncate_after: drop existing lines whose `step` is larger than this.
    """
    self.path = run_paths.path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    existing = self.path.read_text() if self.path.exists() else None
    if truncate_after is not None and existing is not None:
      kept = []
      for line in existing.splitlines():
        try:
          if json.loads(line).get("step", 0) <= truncate_after:
            kept.append(line)
        except json.JSONDecodeError:  # a line cut short by a crash
          continue
      existing = "".join(k + "\n" for k in kept)
      self.path.write_text(existing)
    self._remote = run_paths.is_object_store(self.path)
    if self._remote:
      self._text, self._dirty, self._f = [existing or ""], existing is None, None
    else:
      self._f = self.path.open("a")  # noqa: SIM115 - lives as long as the writer

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Writes `{"step": step, **scalars}` as one line; non-finite values become null.

    Args:
      step: the training step.
      scalars: name -> number.
    """
    record: dict[str, Any] = {"step": int(step)}
    for key, value in scalars.items():
      value = float(value)
      record[key] = value if math.isfinite(value) else None
    line = json.dumps(record) + "\n"
    if self._remote:
      self._text.append(line)
      self._dirty = True
    else:
      self._f.write(line)

  def flush(self) -> None:
    """Flushes the file (on an object store: uploads it, when something new was written)."""
    if not self._remote:
      self._f.flush()
    elif self._dirty:
      self._text = ["".join(self._text)]
      self.path.write_text(self._text[0])
      self._dirty = False

  def close(self) -> None:
    """Closes the file."""
    if self._remote:
      self.flush()
    elif not self._f.closed:
      self._f.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a metrics JSONL file back into a list of dicts (for notebooks and tests).

  Args:
    path: the file.

  Returns:
    One dict per line.
  """
  return [json.loads(line) for line in run_paths.path(path).read_text().splitlines() if line]


class MultiWriter:
  """Fans `write_scalars`/`flush`/`close` out to several writers."""

  def __init__(self, writers: Sequence[ScalarWriter]):
    """Keeps the writers.

    Args:
      writers: the writers to fan out to.
    """
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Writes to every writer.

    Args:
      step: the training step.
      scalars: name -> number.
    """
    for w in self.writers:
      w.write_scalars(step, scalars)

  def flush(self) -> None:
    """Flushes every writer."""
    for w in self.writers:
      w.flush()

  def close(self) -> None:
    """Closes every writer."""
    for w in self.writers:
      w.close()


class Progress:
  """A console progress bar with ETA (tqdm), showing the latest loss."""

  def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, desc: str = "train"):
    """Starts the bar.

    Args:
      total: the last step.
      initial: the step training starts from (after a restore).
      enabled: False gives a bar that prints nothing (non-chief hosts, tests).
      desc: label in front of the bar.
    """
    self._bar = None
    if enabled:
      import tqdm  # local: only the console needs it

      self._bar = tqdm.tqdm(
        total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, smoothing=0.1
      )
    self._step = initial

  def update(self, step: int, scalars: Mapping[str, float] | None = None) -> None:
    """Moves the bar to `step` and shows a few of `scalars`.

    Args:
      step: the current step.
      scalars: logged values; `loss`, `accuracy`, `tokens_per_s` and `mfu` are shown.
    """
    if self._bar is None:
      return
    self._bar.update(step - self._step)
    self._step = step
    if scalars:
      shown = {k: scalars[k] for k in ("loss", "accuracy", "tokens_per_s", "mfu") if k in scalars}
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

  def write(self, message: str) -> None:
    """Prints a line above the bar without breaking it.

    Args:
      message: the text.
    """
    if self._bar is None:
      print(message, flush=True)
    else:
      self._bar.write(message)

  def close(self) -> None:
    """Closes the bar."""
    if self._bar is not None:
      self._bar.close()
