"""UL2's objective ablation (Tay et al., 2022, Sec. 4) at any scale, in one command.

  python -m t5x_ext.experiments.ablation --gin_file=experiments/ablation_tiny_cpu.gin \
    --gin.MODEL_DIR="'/tmp/ablation'"

Each run (an objective on a backbone, `ablation_runs.RUNS`) is pretrained with the same model
size, schedule and token budget on `<CORPUS>_<objective>_v1`, then every checkpoint is scored
by the evaluation suite (`t5x_ext.evaluation.suite`: per-family held-out loss R/X/S, the
mode-prefix matrix, rank classification, fine-tuning probes). Written to MODEL_DIR:

  runs/<run>_seed<k>/     each run's MODEL_DIR (checkpoints, metrics/train.jsonl) plus
                          ablation_train.json (done marker) and ablation_eval/<part>.json
  ablation.json           config, machine, every run's raw results and timings, the summary
                          over seeds and the relative change against the baseline
  ablation.md             the Markdown tables (raw, and relative change against SC (ED))
  ablation.png            the figure

Equal token budget: every run processes `TRAIN_STEPS x BATCH_SIZE x (LI + LT)` token positions
(packed rows; an encoder-decoder reads LI of them in its encoder and LT in its decoder, a
decoder-only model all of them in one stack; the causal LM gets targets-only rows of LI + LT
tokens). How many of those positions carry a loss differs by objective, as in the paper.

Resumable: a run whose marker says it reached TRAIN_STEPS is not trained again, and a part of
the suite already evaluated on that step is not evaluated again; an unfinished run resumes from
its newest checkpoint (`train` does that by itself). Killed and run again, the command picks
up where it stopped; with more suite parts requested, only those are evaluated.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from etils import epath

from t5x_ext.errors import UserError
from t5x_ext.experiments import ablation_report, ablation_runs
from t5x_ext.training import run_paths

REQUIRED_MACROS = ("MODEL_DIR", "TRAIN_STEPS")
DEFAULT_RUNS = ("sc_ed", "plm_dec", "clm_dec", "ul2_ed", "ul2_dec", "ul2_noprefix_ed")
DEFAULT_LENGTHS = {"inputs": 512, "targets": 128}
TRAIN_MARKER = "ablation_train.json"
EVAL_DIR = "ablation_eval"
RESULTS_JSON = "ablation.json"
RESULTS_MD = "ablation.md"
RESULTS_PNG = "ablation.png"
# Which of the suite's result keys belong to which part (for the per-part cache).
PART_KEYS = {
  "family_loss": ("family_loss/", "family_accuracy/", "denoiser_loss/"),
  "mode_matrix": ("mode_matrix/",),
  "rank_classification": ("rank_classification/",),
  "probes": ("probe/",),
}

# The suite settings each part's numbers depend on (besides the step and the prefix column).
_SHARED_EVAL_FIELDS = ("corpus", "task_feature_lengths", "seed")
PART_EVAL_FIELDS = {
  "family_loss": ("batch_size", "max_eval_batches"),
  "mode_matrix": ("batch_size", "max_eval_batches"),
  "rank_classification": ("rank_max_examples",),
  "probes": ("probe_steps",),
}


def _is_chief() -> bool:
  import jax

  return jax.process_index() == 0


def _read_json(path: epath.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _write_json(path: epath.Path, obj: Any) -> None:
  # Every process decides from the same files; only process 0 writes them.
  if not _is_chief():
    return
  run_paths.write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def machine_info() -> dict[str, Any]:
  """The machine the numbers come from (CPU model, ISA level, devices).

  Returns:
    {"cpu", "isa", "cores", "devices", "platform"}.
  """
  import jax

  cpu, flags = "", set()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name") and not cpu:
        cpu = line.split(":", 1)[1].strip()
      if line.startswith("flags") and not flags:
        flags = set(line.split(":", 1)[1].split())
  except OSError:
    pass
  cpu = cpu or platform.processor()
  isa = (
    "avx512" if any(f.startswith("avx512") for f in flags) else "avx2" if "avx2" in flags else ""
  )
  return {
    "cpu": cpu,
    "isa": isa,
    "cores": os.cpu_count(),
    "devices": [d.device_kind for d in jax.devices()],
    "platform": jax.default_backend(),
  }


def _suite_parts(requested: Sequence[str] | None) -> tuple[str, ...]:
  from t5x_ext.evaluation import suite

  if requested is None:
    return tuple(suite.PARTS)
  unknown = [p for p in requested if p not in suite.PARTS]
  if unknown:
    raise UserError(
      f"EVAL_PARTS = {tuple(requested)!r}: unknown {unknown}; the suite has {tuple(suite.PARTS)}."
    )
  return tuple(requested)


def _split_by_part(results: Mapping[str, float], parts: Sequence[str]) -> dict[str, dict]:
  out: dict[str, dict] = {p: {} for p in parts}
  for key, value in results.items():
    owner = next((p for p in parts if key.startswith(PART_KEYS.get(p, (p + "/",)))), parts[0])
    out[owner][key] = value
  return out


def _check_corpus(corpus: str, names: Sequence[str]) -> None:
  from t5x_ext.data import providers as run_data

  for name in names:
    try:
      run_data.get_provider(name)
    except ValueError:
      raise UserError(
        f"CORPUS = {corpus!r}: task {name!r} is not registered. Corpora register every "
        "objective as <prefix>_<objective>_v1 ('pydocs', 'c4', or your own with "
        "tasks.register_text_files(prefix, files) in a module named by MIXTURE_OR_TASK_MODULE)."
      ) from None


def _train_run(
  spec: ablation_runs.RunSpec,
  seed: int,
  run_dir: epath.Path,
  *,
  model: Any,
  task: str,
  lengths: Mapping[str, int],
  train_steps: int,
  train_kwargs: Mapping[str, Any],
  say: Callable[[str], None],
) -> tuple[dict[str, Any], str]:
  """Trains one run to `train_steps` unless its marker says it got there; returns (marker,
  what happened: "skipped" | "trained" | "resumed")."""
  from t5x_ext import train as train_lib
  from t5x_ext.training import checkpointing

  marker_path = run_dir / TRAIN_MARKER
  config = {
    "task": task,
    "task_feature_lengths": dict(lengths),
    "batch_size": train_kwargs["batch_size"],
    "seed": seed,
    "model": repr(model.config),
    "architecture": spec.architecture,
    "causal": spec.causal,
  }
  marker = _read_json(marker_path)
  if marker is not None and marker.get("config") != config:
    diff = sorted(k for k in config if marker.get("config", {}).get(k) != config[k])
    raise UserError(
      f"{run_dir} was trained with other settings ({', '.join(diff)} differ); use another "
      "MODEL_DIR or remove that run's folder."
    )
  if marker is not None and marker.get("step") == train_steps:
    return marker, "skipped"
  start_step = checkpointing.checkpoint_step(str(run_dir)) or 0
  how = "resumed" if start_step else "trained"
  say(f"[{run_dir.name}] {how} from step {start_step} to {train_steps} on {task}")
  t0 = time.time()
  result = train_lib.train(
    model=model,
    mixture_or_task_name=task,
    task_feature_lengths=dict(lengths),
    train_steps=train_steps,
    model_dir=str(run_dir),
    seed=seed,
    **train_kwargs,
  )
  seconds = time.time() - t0
  step = checkpointing.checkpoint_step(str(run_dir))
  if step != train_steps:  # stopped early (preempted): no marker, the next call resumes
    raise RuntimeError(f"{run_dir}: training stopped at step {step} of {train_steps}.")
  history = list((marker or {}).get("segments", []))
  history.append({"from_step": start_step, "to_step": step, "seconds": round(seconds, 2)})
  marker = {
    "config": config,
    "step": step,
    "segments": history,
    "train_seconds": round(sum(s["seconds"] for s in history), 2),
    "last_metrics": {k: float(v) for k, v in result.last_metrics.items()},
  }
  _write_json(marker_path, marker)
  return marker, how


def _evaluate_run(
  spec: ablation_runs.RunSpec,
  run_dir: epath.Path,
  *,
  model: Any,
  step: int,
  parts: Sequence[str],
  suite_kwargs: Mapping[str, Any],
  say: Callable[[str], None],
) -> tuple[dict[str, float], dict[str, float], list[str]]:
  """Runs the suite's parts not yet cached for this step; returns (results, seconds per
  part, the parts evaluated now)."""
  from t5x_ext.evaluation import suite

  key = {"step": step, "family_prefix": spec.family_prefix, **suite_kwargs}
  key = json.loads(json.dumps(key, default=str))
  cached: dict[str, dict] = {}
  for part in parts:
    record = _read_json(run_dir / EVAL_DIR / f"{part}.json")
    # A cached part stands while the settings it depends on are unchanged.
    fields = ("step", "family_prefix", *_SHARED_EVAL_FIELDS, *PART_EVAL_FIELDS.get(part, ()))
    if record is not None and all(record["key"].get(f) == key.get(f) for f in fields):
      cached[part] = record
  missing = [p for p in parts if p not in cached]
  if missing:
    say(f"[{run_dir.name}] evaluating {', '.join(missing)} at step {step}")
    t0 = time.time()
    results = suite.run_suite(
      model=model,
      checkpoint_path=str(run_dir),
      parts=tuple(missing),
      family_prefix=spec.family_prefix,
      verbose=False,
      **suite_kwargs,
    )
    seconds = (time.time() - t0) / len(missing)
    for part, values in _split_by_part(results, missing).items():
      record = {"key": key, "results": values, "seconds": round(seconds, 2)}
      _write_json(run_dir / EVAL_DIR / f"{part}.json", record)
      cached[part] = record
  merged: dict[str, float] = {}
  seconds_by_part: dict[str, float] = {}
  for part in parts:
    merged.update(cached[part]["results"])
    seconds_by_part[part] = cached[part]["seconds"]
  return merged, seconds_by_part, missing


def run_ablation(
  *,
  model: Any,
  model_dir: str,
  train_steps: int,
  corpus: str = "pydocs",
  runs: Sequence[str] = DEFAULT_RUNS,
  seeds: Sequence[int] = (0,),
  extra_seeds: Mapping[str, Sequence[int]] | None = None,
  baseline: str = "sc_ed",
  task_feature_lengths: Mapping[str, int] = DEFAULT_LENGTHS,
  task_version: str = "v1",
  batch_size: int = 8,
  decoder_only_layers: int | None = None,
  mesh_shape: Mapping[str, int] | None = None,
  optimizer: Any = None,
  learning_rate: Any = 0.01,
  checkpoint_every: int = 100,
  keep_checkpoints: int | None = 1,
  log_every: int = 50,
  progress_bar: bool = False,
  eval_parts: Sequence[str] | None = None,
  eval_batch_size: int = 16,
  eval_batches: int | None = 8,
  eval_seed: int = 0,
  probe_steps: int = 100,
  rank_max_examples: int | None = None,
  plot: bool = True,
) -> dict[str, Any]:
  """Trains every run of the ablation, scores each with the suite, writes the report.

  Args:
    model: the encoder-decoder (gin: %MODEL); decoder-only runs use its twin
      (`ablation_runs.decoder_only_twin`).
    model_dir: where everything goes (MODEL_DIR).
    train_steps: steps of every run (TRAIN_STEPS).
    corpus: the corpus prefix of the tasks (CORPUS): "pydocs", "c4", or your own.
    runs: names from `ablation_runs.RUNS` (RUNS); the baseline must be among them.
    seeds: seeds every run is trained with (SEEDS).
    extra_seeds: more seeds for some runs, e.g. {"sc_ed": [1]} (EXTRA_SEEDS): the noise
      estimate where training every run twice does not fit.
    baseline: the run relative changes are taken against (the paper's: SC encoder-decoder).
    task_feature_lengths: {"inputs": LI, "targets": LT} of every run and of the suite.
    task_version: version suffix of the task names.
    batch_size: rows per step (BATCH_SIZE).
    decoder_only_layers: depth of decoder-only twins (None: compute matched).
    mesh_shape: MESH_SHAPE.
    optimizer: as `train` (gin: @optimizers.make_optimizer).
    learning_rate: float or schedule, as `train`.
    checkpoint_every: checkpoint period (what a killed run resumes from).
    keep_checkpoints: checkpoints kept per run.
    log_every: training log period.
    progress_bar: tqdm bars while training.
    eval_parts: the suite's parts (None: all it has).
    eval_batch_size: rows per eval batch.
    eval_batches: eval batches per family (None: the whole validation split).
    eval_seed: seed of the eval examples and probes (the same for every run).
    probe_steps: fine-tuning steps of each probe.
    rank_max_examples: cap on rank-classification examples (None: all).
    plot: write ablation.png (needs matplotlib).

  Returns:
    The record written to MODEL_DIR/ablation.json.

  Raises:
    ValueError: an unknown run, a baseline not among the runs, a corpus without the tasks,
      or a run folder trained with other settings.
  """
  t_start = time.time()
  specs = [ablation_runs.get_run(n) for n in runs]
  if len({s.name for s in specs}) != len(specs):
    raise UserError(f"RUNS = {tuple(runs)!r}: a run is listed twice.")
  if baseline not in runs:
    raise UserError(f"baseline = {baseline!r} is not among RUNS = {tuple(runs)!r}.")
  for name in extra_seeds or {}:
    if name not in runs:
      raise UserError(f"EXTRA_SEEDS names {name!r}, which is not among RUNS.")
  if not seeds:
    raise UserError("SEEDS is empty.")
  lengths = {k: int(v) for k, v in task_feature_lengths.items()}
  parts = _suite_parts(eval_parts)
  _check_corpus(
    corpus,
    [s.task_name(corpus, task_version) for s in specs] + [f"{corpus}_ul2_mod_{task_version}"],
  )
  root = run_paths.path(model_dir)
  if _is_chief():
    root.mkdir(parents=True, exist_ok=True)

  def say(msg: str) -> None:
    print(msg, flush=True)
    logging.info(msg)

  train_kwargs = {
    "batch_size": batch_size,
    "mesh_shape": mesh_shape,
    "optimizer": optimizer,
    "learning_rate": learning_rate,
    "checkpoint_every": checkpoint_every,
    "keep_checkpoints": keep_checkpoints,
    "log_every": log_every,
    "progress_bar": progress_bar,
    "tensorboard": False,
  }
  suite_kwargs = {
    "corpus": corpus,
    "task_feature_lengths": lengths,
    "batch_size": eval_batch_size,
    "max_eval_batches": eval_batches,
    "seed": eval_seed,
    "probe_steps": probe_steps,
    "rank_max_examples": rank_max_examples,
    "mesh_shape": mesh_shape,
  }
  # First seed of every run first, so an interrupted ablation has every row early.
  order = [(s, seed) for seed in seeds for s in specs]
  order += [(ablation_runs.get_run(n), k) for n, ks in (extra_seeds or {}).items() for k in ks]
  invocation: dict[str, list[str]] = {"trained": [], "resumed": [], "skipped": [], "evaluated": []}
  run_records: dict[str, Any] = {}
  for spec, seed in order:
    run_id = f"{spec.name}_seed{seed}"
    run_dir = root / "runs" / run_id
    run_model = ablation_runs.model_for(spec, model, decoder_only_layers=decoder_only_layers)
    task = spec.task_name(corpus, task_version)
    train_lengths = spec.train_lengths(lengths)
    marker, how = _train_run(
      spec,
      seed,
      run_dir,
      model=run_model,
      task=task,
      lengths=train_lengths,
      train_steps=train_steps,
      train_kwargs=train_kwargs,
      say=say,
    )
    invocation[how].append(run_id)
    results, eval_seconds, evaluated = _evaluate_run(
      spec,
      run_dir,
      model=run_model,
      step=train_steps,
      parts=parts,
      suite_kwargs=suite_kwargs,
      say=say,
    )
    if evaluated:
      invocation["evaluated"].append(f"{run_id}: {', '.join(evaluated)}")
    run_records[run_id] = {
      "run": spec.name,
      "label": spec.label,
      "seed": seed,
      "objective": spec.objective,
      "architecture": spec.architecture,
      "causal": spec.causal,
      "task": task,
      "train_lengths": train_lengths,
      "family_prefix": spec.family_prefix,
      "params": ablation_runs.param_count(run_model, lengths),
      "positions_per_step": ablation_runs.positions_per_step(spec, lengths, batch_size),
      "train_seconds": marker["train_seconds"],
      "train_last_metrics": marker.get("last_metrics", {}),
      "eval_seconds": eval_seconds,
      "results": results,
    }

  record = {
    "config": {
      "corpus": corpus,
      "runs": list(runs),
      "seeds": list(seeds),
      "extra_seeds": {k: list(v) for k, v in (extra_seeds or {}).items()},
      "baseline": baseline,
      "task_feature_lengths": lengths,
      "train_steps": train_steps,
      "batch_size": batch_size,
      "positions_per_run": train_steps * batch_size * sum(lengths.values()),
      "decoder_only_layers": decoder_only_layers or model.config.num_decoder_layers,
      "model": repr(model.config),
      "learning_rate": repr(learning_rate),
      "eval_parts": list(parts),
      "suite": {k: v for k, v in suite_kwargs.items() if k != "mesh_shape"},
    },
    "machine": machine_info(),
    "runs": run_records,
    "invocation": {**invocation, "seconds": round(time.time() - t_start, 2)},
  }
  record.update(ablation_report.summarize(record))
  record["timings"] = ablation_report.timings(record)
  if _is_chief():
    _write_json(root / RESULTS_JSON, record)
    (root / RESULTS_MD).write_text(ablation_report.markdown(record))
    if plot:
      ablation_report.plot(record, str(root / RESULTS_PNG))
    run_paths.append_text(  # an object store has no append: the object is rewritten
      root / "ablation_invocations.jsonl",
      json.dumps({"time": time.time(), **record["invocation"]}) + "\n",
    )
  say(
    f"Wrote {root / RESULTS_JSON}, {root / RESULTS_MD}"
    + (f", {root / RESULTS_PNG}" if plot else "")
  )
  return record


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs `run_ablation` configured by gin flags (see `t5x_ext.launch.flags`).

  Args:
    argv: command-line arguments (default `sys.argv[1:]`).

  Returns:
    The ablation record.
  """
  import gin
  from t5x_ext.launch import flags as cli

  def configured():
    try:
      fn = gin.get_configurable(run_ablation)
    except (KeyError, ValueError):
      raise UserError(
        "The gin files do not configure t5x_ext.experiments.ablation.run_ablation; use "
        "gin/experiments/ablation_tiny_cpu.gin or ablation_c4_pod.gin."
      ) from None
    model_dir = cli.macro_value("MODEL_DIR")
    if isinstance(model_dir, str) and _is_chief():
      run_paths.path(model_dir).mkdir(parents=True, exist_ok=True)
      run_paths.path(model_dir, "config.gin").write_text(gin.config_str())
    return fn()

  return cli.run(
    configured,
    argv,
    required_macros=REQUIRED_MACROS,
    hint="gin/experiments/ablation_tiny_cpu.gin",
  )


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  # Run through the importable module so gin binds the function that runs.
  from t5x_ext.experiments import ablation as _ablation_module
  from t5x_ext.launch import flags as _cli

  _cli.main_guard(_ablation_module.main)
