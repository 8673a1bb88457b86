"""Markdown tables of the suite's results (one per part), for the console and docs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from t5x_ext.evaluation.mode_matrix import COLUMNS, FAMILIES


def _fmt(value: float | None, digits: int) -> str:
  return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """The lines of a Markdown table (the suite's report and the ablation's both use it).

  Args:
    header: column titles.
    rows: cells as strings, one list per row.

  Returns:
    `["| a | b |", "|---|---|", "| 1 | 2 |", ...]`.
  """
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return lines


def markdown(results: Mapping[str, float]) -> str:
  """Renders `run_suite`'s dict as Markdown: one table per part present.

  Args:
    results: the flat results.

  Returns:
    Markdown text.
  """
  r = dict(results)
  out: list[str] = []
  if any(k.startswith("family_loss/") for k in r):
    out += ["Held-out loss per denoiser family (nats per target token):", ""]
    out += markdown_table(
      ["family", "loss", "token accuracy"],
      [
        [f, _fmt(r.get(f"family_loss/{f}"), 3), _fmt(r.get(f"family_accuracy/{f}"), 3)]
        for f in FAMILIES
      ],
    )
    out.append("")
  if any(k.startswith("mode_matrix/") for k in r):
    out += ["Mode-prefix matrix (loss of each family's examples under each prefix):", ""]
    out += markdown_table(
      ["family", *COLUMNS],
      [[f] + [_fmt(r.get(f"mode_matrix/{f}/{c}"), 3) for c in COLUMNS] for f in FAMILIES],
    )
    out.append("")
  if any(k.startswith("rank_classification/") for k in r):
    out += ["Rank classification accuracy (%), topic task, no fine-tuning:", ""]
    out += markdown_table(
      ["shots", *COLUMNS],
      [
        [s] + [_fmt(r.get(f"rank_classification/{s}/{c}/accuracy"), 1) for c in COLUMNS]
        for s in ("zero_shot", "few_shot")
      ],
    )
    out.append("")
  probe_keys = sorted(k for k in r if k.startswith("probe/"))
  if probe_keys:
    out += ["Fine-tuning probes:", ""]
    out += markdown_table(["metric", "value"], [[k, _fmt(r[k], 2)] for k in probe_keys])
    out.append("")
  return "\n".join(out)
