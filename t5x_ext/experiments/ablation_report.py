"""The ablation's report: summary over seeds, relative change against the baseline, the
Markdown tables and the figure.

Relative change is reported as the paper does, as an improvement in percent of the
baseline's value, positive = better than the baseline:

  losses (lower is better)        100 * (baseline - value) / baseline
  accuracies, ROUGE (higher)      100 * (value - baseline) / baseline

using the mean over seeds of each run. The spread over seeds is the sample standard deviation
(n - 1), given where a run has two or more seeds.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Mapping
from typing import Any

from t5x_ext.evaluation.report import markdown_table
from t5x_ext.modes import FAMILY_MODES, UL2_MODES
from t5x_ext.training import run_paths

# (result key, column label, lower is better). `own` is the run's own prefix column: "[NLU]"
# for runs pretrained with mode prefixes (classification is NLU-style), "none" otherwise.
COLUMNS: tuple[tuple[str, str, bool], ...] = (
  ("family_loss/R", "R loss", True),
  ("family_loss/X", "X loss", True),
  ("family_loss/S", "S loss", True),
  ("rank_classification/zero_shot/own/accuracy", "0-shot acc", False),
  ("rank_classification/few_shot/own/accuracy", "few-shot acc", False),
  ("probe/classification/accuracy", "probe cls acc", False),
  ("probe/generation/rougeL", "probe gen ROUGE-L", False),
)
FAMILIES = ("R", "X", "S")
PREFIX_COLUMNS = (*UL2_MODES, "none")
FAMILY_PREFIX = FAMILY_MODES


def _with_own_prefix(run: Mapping[str, Any]) -> dict[str, float]:
  results = dict(run.get("results", {}))
  own = "[NLU]" if run.get("family_prefix") == "matching" else "none"
  for shots in ("zero_shot", "few_shot"):
    key = f"rank_classification/{shots}/{own}/accuracy"
    if key in results:
      results[f"rank_classification/{shots}/own/accuracy"] = results[key]
  return results


def relative_improvement(value: float, base: float, lower_is_better: bool) -> float | None:
  """Percent improvement of `value` over `base` (positive = better).

  Args:
    value: the run's mean.
    base: the baseline's mean.
    lower_is_better: True for losses.

  Returns:
    The percentage, or None when `base` is 0 or a value is missing.
  """
  if value is None or base is None or base == 0 or not math.isfinite(base):
    return None
  diff = (base - value) if lower_is_better else (value - base)
  return 100.0 * diff / abs(base)


def summarize(record: Mapping[str, Any]) -> dict[str, Any]:
  """Aggregates the runs over seeds and takes relative changes against the baseline.

  Args:
    record: the ablation record with "config" (runs, baseline) and "runs".

  Returns:
    {"columns": [...], "summary": {run: {"label", "architecture", "params", "seeds",
    "mean", "std", "values", "relative"}}}.
  """
  by_run: dict[str, list[Mapping[str, Any]]] = {}
  for rec in record["runs"].values():
    by_run.setdefault(rec["run"], []).append(rec)
  summary: dict[str, Any] = {}
  for name in record["config"]["runs"]:
    recs = sorted(by_run.get(name, []), key=lambda r: r["seed"])
    if not recs:
      continue
    values: dict[str, list[float]] = {}
    for rec in recs:
      for key, v in _with_own_prefix(rec).items():
        if isinstance(v, int | float) and math.isfinite(v):
          values.setdefault(key, []).append(float(v))
    summary[name] = {
      "label": recs[0]["label"],
      "objective": recs[0]["objective"],
      "architecture": recs[0]["architecture"],
      "params": recs[0]["params"],
      "seeds": [r["seed"] for r in recs],
      "mean": {k: statistics.fmean(v) for k, v in values.items()},
      "std": {k: statistics.stdev(v) for k, v in values.items() if len(v) > 1},
      "values": values,
    }
  base = summary.get(record["config"]["baseline"], {}).get("mean", {})
  for s in summary.values():
    s["relative"] = {
      key: relative_improvement(s["mean"].get(key), base.get(key), lower)
      for key, _, lower in COLUMNS
      if key in s["mean"] and key in base
    }
  columns = [
    {"key": k, "label": label, "lower_is_better": lower}
    for k, label, lower in COLUMNS
    if any(k in s["mean"] for s in summary.values())
  ]
  return {"columns": columns, "summary": summary}


def timings(record: Mapping[str, Any]) -> dict[str, float]:
  """Total training and evaluation seconds over all runs (all invocations together).

  Args:
    record: the ablation record.

  Returns:
    {"train_seconds", "eval_seconds", "total_seconds"}.
  """
  train = sum(r["train_seconds"] for r in record["runs"].values())
  ev = sum(sum(r["eval_seconds"].values()) for r in record["runs"].values())
  return {
    "train_seconds": round(train, 1),
    "eval_seconds": round(ev, 1),
    "total_seconds": round(train + ev, 1),
  }


def _fmt(mean: float | None, std: float | None = None, digits: int = 3) -> str:
  if mean is None:
    return "–"
  text = f"{mean:.{digits}f}"
  return text + (f" ± {std:.{digits}f}" if std is not None else "")


def _signed(value: float | None) -> str:
  return "–" if value is None else f"{value:+.1f}%"


def _arrow(lower: bool) -> str:
  return "↓" if lower else "↑"


def markdown(record: Mapping[str, Any]) -> str:
  """The report as Markdown: settings, raw scores, relative change, mode matrix, timings.

  Args:
    record: the ablation record (with `summarize`'s fields).

  Returns:
    Markdown text.
  """
  cfg, summary, columns = record["config"], record["summary"], record["columns"]
  base_label = summary.get(cfg["baseline"], {}).get("label", cfg["baseline"])
  lengths = cfg["task_feature_lengths"]
  machine = record.get("machine", {})
  out = [
    f"# UL2 objective ablation on `{cfg['corpus']}`",
    "",
    f"{cfg['train_steps']} steps x batch {cfg['batch_size']} x "
    f"({lengths.get('inputs', 0)} + {lengths['targets']}) positions = "
    f"{cfg['positions_per_run']:,} token positions per run; "
    f"machine: {machine.get('cpu', '?')} ({machine.get('isa', '?')}, "
    f"{machine.get('cores', '?')} cores, {machine.get('platform', '?')}).",
    "",
    "## Raw scores",
    "",
    "Mean ± sample std over seeds (std only where a run has two or more seeds). Losses are "
    "held-out nats per target token (lower is better, ↓); accuracies and ROUGE in percent "
    "(↑).",
    "",
  ]
  header = ["run", "backbone", "params", "seeds"]
  header += [f"{c['label']} {_arrow(c['lower_is_better'])}" for c in columns]
  rows = []
  for s in summary.values():
    row = [s["label"], s["architecture"].replace("_", "-"), f"{s['params'] / 1e6:.2f}M"]
    row.append(",".join(str(k) for k in s["seeds"]))
    for c in columns:
      digits = 3 if c["lower_is_better"] else 1
      row.append(_fmt(s["mean"].get(c["key"]), s["std"].get(c["key"]), digits))
    rows.append(row)
  out += markdown_table(header, rows)
  out += [
    "",
    f"## Relative change against {base_label}",
    "",
    f"Percent improvement over {base_label}'s mean, positive = better: "
    "100 x (base - x) / base for losses, 100 x (x - base) / base for accuracies.",
    "",
  ]
  header = ["run"] + [f"{c['label']} {_arrow(c['lower_is_better'])}" for c in columns]
  rows = [
    [s["label"]] + [_signed(s["relative"].get(c["key"])) for c in columns] for s in summary.values()
  ]
  out += markdown_table(header, rows)
  # The matrix of the runs pretrained on the UL2 mixture (with and without prefixes): the
  # others never saw a prefix, and the mixture's families are what the matrix scores.
  matrix_runs = [
    (n, s)
    for n, s in summary.items()
    if s.get("objective", "").startswith("ul2")
    and any(k.startswith("mode_matrix/") for k in s["mean"])
  ]
  if matrix_runs:
    out += [
      "",
      "## Mode-prefix matrix",
      "",
      "Held-out loss of each family's examples under each prefix (the same examples in every "
      "column), for the runs pretrained on the UL2 mixture; **bold**: the family's own "
      "prefix. `gap` = mean loss under the other three columns minus the loss under the own "
      "prefix (positive: the own prefix helps).",
      "",
    ]
    rows = []
    for _, s in matrix_runs:
      for fam in FAMILIES:
        vals = {c: s["mean"].get(f"mode_matrix/{fam}/{c}") for c in PREFIX_COLUMNS}
        cells = []
        for c in PREFIX_COLUMNS:
          cell = _fmt(vals[c])
          cells.append(f"**{cell}**" if c == FAMILY_PREFIX[fam] else cell)
        others = [v for c, v in vals.items() if c != FAMILY_PREFIX[fam] and v is not None]
        own = vals[FAMILY_PREFIX[fam]]
        gap = statistics.fmean(others) - own if others and own is not None else None
        rows.append([s["label"], fam, *cells, _fmt(gap)])
    out += markdown_table(["run", "family", *PREFIX_COLUMNS, "gap"], rows)
  t = record.get("timings", {})
  out += [
    "",
    "## Timings",
    "",
    f"Training {t.get('train_seconds', 0) / 60:.1f} min, evaluation "
    f"{t.get('eval_seconds', 0) / 60:.1f} min, total {t.get('total_seconds', 0) / 60:.1f} min "
    f"over {len(record['runs'])} runs (summed over invocations; this invocation "
    f"{record['invocation']['seconds'] / 60:.1f} min).",
    "",
  ]
  return "\n".join(out)


def plot(record: Mapping[str, Any], path: str) -> str:
  """The figure: per-family held-out loss (mean ± std over seeds) and the relative change
  against the baseline of every column, one colour per run.

  Args:
    record: the ablation record (with `summarize`'s fields).
    path: the PNG to write.

  Returns:
    `path`.

  Raises:
    ImportError: matplotlib is missing (`pip install -e '.[experiments]'`).
  """
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError as e:  # pragma: no cover - matplotlib is in the experiments extra
    raise ImportError(
      "The ablation figure needs matplotlib: pip install -e '.[experiments]' (or set "
      "run_ablation.plot = False)."
    ) from e
  summary, columns = record["summary"], record["columns"]
  names = list(summary)
  colors = plt.get_cmap("tab10")
  width = 0.8 / max(len(names), 1)
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 1.5]})

  ax = axes[0]
  for i, name in enumerate(names):
    s = summary[name]
    xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(FAMILIES))]
    means = [s["mean"].get(f"family_loss/{f}", math.nan) for f in FAMILIES]
    errs = [s["std"].get(f"family_loss/{f}", 0.0) for f in FAMILIES]
    ax.bar(xs, means, width, yerr=errs, capsize=2, color=colors(i % 10), label=s["label"])
  lows = [
    s["mean"][f"family_loss/{f}"] - s["std"].get(f"family_loss/{f}", 0.0)
    for s in summary.values()
    for f in FAMILIES
    if f"family_loss/{f}" in s["mean"]
  ]
  if lows:  # losses sit far from 0: start the axis near the lowest bar so gaps show
    ax.set_ylim(bottom=max(0.0, min(lows) - 0.25 * (max(lows) - min(lows) + 0.2)))
  ax.set_xticks(range(len(FAMILIES)))
  ax.set_xticklabels(["R (infilling)", "X (extreme)", "S (continuation)"])
  ax.set_ylabel("held-out loss, nats/token (lower is better)")
  ax.set_title("Per-family loss (mean ± std over seeds)")
  ax.legend(fontsize=8, ncol=2)

  ax = axes[1]
  for i, name in enumerate(names):
    s = summary[name]
    xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(columns))]
    vals = [s["relative"].get(c["key"]) for c in columns]
    ax.bar(xs, [math.nan if v is None else v for v in vals], width, color=colors(i % 10))
  ax.axhline(0, color="black", linewidth=0.8)
  ax.set_xticks(range(len(columns)))
  ax.set_xticklabels([c["label"] for c in columns], rotation=20, ha="right", fontsize=8)
  base = summary.get(record["config"]["baseline"], {}).get("label", "baseline")
  ax.set_ylabel(f"% improvement over {base} (positive = better)")
  ax.set_title(f"Relative change against {base}")
  cfg = record["config"]
  fig.suptitle(
    f"UL2 objective ablation, {cfg['corpus']}: {cfg['train_steps']} steps x "
    f"{cfg['batch_size']} x {sum(cfg['task_feature_lengths'].values())} positions per run",
    fontsize=10,
  )
  fig.tight_layout()
  buf = io.BytesIO()  # matplotlib writes local files only; epath reaches a bucket too
  fig.savefig(buf, format="png", dpi=110)
  run_paths.path(path).write_bytes(buf.getvalue())
  plt.close(fig)
  return path
