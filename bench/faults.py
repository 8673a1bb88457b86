"""Fault benchmark: the main job through a scripted series of faults, against a clean run.

  python bench/faults.py                       # the main job (pydocs UL2, 512/128, batch 8)
  python bench/faults.py --steps=12 --checkpoint_every=3 --cheap --faults=kill9

It trains one uninterrupted reference run, then the same run again while hurting it, in
order (each restart is the plain command line, which must resume by itself):

  kill9             SIGKILL at a random step between checkpoints
  kill_during_save  SIGKILL right after an async checkpoint save started
  sigterm           SIGTERM at a random step: must checkpoint and exit with 143, promptly
  corrupt_latest    the newest checkpoint loses its array data on disk before a restart
  enospc            the disk is full when a checkpoint is committed: must stop at once with
                    exit 2 and one message, leave no partial checkpoint
  sigterm_plan      SIGTERM while XLA compiles the train step for the memory plan
  sigterm_compile   SIGTERM while XLA compiles the first train step (no memory plan)
  sigterm_restore   SIGTERM while the newest checkpoint is being restored
  sigterm_eval      SIGTERM during a periodic evaluation, with steps since the last save
  sigterm_save      SIGTERM as a checkpoint save starts
Each must exit with 143 within 5 s of the signal (`seconds_to_exit`; the worst of all
SIGTERM cases is `sigterm_worst_seconds`), with a checkpoint of the new steps when there are
some and none otherwise (`checkpoint_right`: the newest complete checkpoint is the one
expected; `resumed_right`: the next process resumed from it).
and finally trains to the end. Prints JSON: faults survived, steps recomputed, seconds from
SIGTERM to exit, and the largest difference between any per-step loss seen (before and after
each fault) and the reference run's loss at that step (goal 0.0).

  python bench/faults.py --object_store --cheap  # MODEL_DIR in a bucket (a local GCS emulator)

With --object_store every MODEL_DIR is `gs://...` on `gcp-storage-emulator` (the test extra),
reached through STORAGE_EMULATOR_HOST; the faults are kill9, kill_during_save (SIGKILL while
the checkpoint's objects are being uploaded: the step has no commit_success.txt and the
restart must skip it; `partial_upload` says the cut-short step was there) and sigterm. A
bucket has no rename, so corrupt_latest and enospc (which fail the local commit rename) do
not apply there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from t5x_ext.training import run_paths  # epath, with gcsfs configured for gs://

HERE = pathlib.Path(__file__).resolve().parent
CHILD = HERE / "_fault_child.py"
SIGTERM_AT = {  # fault -> phase of _fault_child's sigterm_at
  "sigterm_plan": "plan",
  "sigterm_compile": "compile",
  "sigterm_restore": "restore",
  "sigterm_eval": "eval",
  "sigterm_save": "save",
}
FAULTS = ("kill9", "kill_during_save", "sigterm", "corrupt_latest", "enospc", *SIGTERM_AT)
SIGTERM_BUDGET_S = 5.0
OBJECT_STORE_FAULTS = ("kill9", "kill_during_save", "sigterm")
STOPPED_EXIT, USER_ERROR_EXIT = 143, 2  # t5x_ext.launch.flags.STOPPED_EXIT / USER_ERROR_EXIT


def _flags(args, model_dir: pathlib.Path, steps: int, extra=()) -> list[str]:
  flags = [
    "--gin_file=local/ul2_tiny.gin",
    f"--gin.MODEL_DIR='{model_dir}'",
    f"--gin.TRAIN_STEPS={steps}",
    f"--gin.CHECKPOINT_EVERY={args.checkpoint_every}",
    "--gin.KEEP_CHECKPOINTS=3",
    "--gin.LOG_EVERY=1",
    "--gin.EVAL_PERIOD=0",
    "--gin.train_script.train.samples_per_mode=0",
    "--gin.train_script.train.progress_bar=False",
  ]
  if args.cheap:  # seconds per restart instead of tens: a smaller task and batch
    flags += [
      "--gin.MIXTURE_OR_TASK_NAME='pydocs_span_corruption_v1'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
      "--gin.BATCH_SIZE=2",
    ]
  return flags + list(extra)


class Run:
  """One trainer process on a MODEL_DIR, its output in files."""

  # Where the logs go when MODEL_DIR is in a bucket (set by main); else next to MODEL_DIR.
  log_dir: pathlib.Path | None = None

  def __init__(self, args, model_dir, steps: int, fault_env: str | None = None, extra=()):
    env = {k: v for k, v in os.environ.items() if k != "T5X_EXT_TRACEBACK"}
    if fault_env:
      env["T5X_EXT_FAULT"] = fault_env
    log_dir = Run.log_dir or model_dir.parent
    self.mark = log_dir / f"{model_dir.name}.{time.monotonic_ns()}.mark"
    env["T5X_EXT_FAULT_MARK"] = str(self.mark)
    self.model_dir = model_dir
    log_dir = Run.log_dir or model_dir.parent
    self.log = log_dir / f"{model_dir.name}.{time.monotonic_ns()}.log"
    self._out = open(self.log, "w")  # noqa: SIM115 - closed in wait()
    self.proc = subprocess.Popen(
      [sys.executable, str(CHILD), *_flags(args, model_dir, steps, extra)],
      stdout=self._out,
      stderr=subprocess.STDOUT,
      env=env,
      cwd=HERE.parent,
    )

  def wait(self, timeout: float) -> int:
    try:
      code = self.proc.wait(timeout=timeout)
      self.exit_time = time.time()
      return code
    finally:
      if self.proc.poll() is None:
        self.proc.kill()
        self.proc.wait()
      self._out.close()

  def text(self) -> str:
    return self.log.read_text(errors="replace")

  def wait_for_step(self, step: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
      logged = max(logged_losses(self.model_dir), default=0)
      if logged >= step:
        return logged
      if self.proc.poll() is not None:
        raise RuntimeError(
          f"trainer exited ({self.proc.returncode}) before step {step}:\n" + self.text()[-3000:]
        )
      if time.monotonic() > deadline:
        raise TimeoutError(f"no step {step} within {timeout} s")
      time.sleep(0.05)


def logged_losses(model_dir) -> dict[int, float]:
  path = run_paths.path(model_dir) / "metrics" / "train.jsonl"
  if not path.exists():
    return {}
  out = {}
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      continue  # a line cut by SIGKILL
    out[int(row["step"])] = float(row["loss"])
  return out


def checkpoint_steps(model_dir) -> list[int]:
  """Complete checkpoints: a local step is complete once renamed from its temporary name, an
  object store's once its commit_success.txt is written (there is no rename there)."""
  root = run_paths.path(model_dir) / "checkpoints"
  if not root.is_dir():
    return []
  remote = "://" in os.fspath(root)
  return sorted(
    int(p.name)
    for p in root.iterdir()
    if p.name.isdigit() and (not remote or (p / "commit_success.txt").exists())
  )


def partial_steps(model_dir) -> list[int]:
  """Steps of an object store with objects but no commit_success.txt (an upload cut short)."""
  root = run_paths.path(model_dir) / "checkpoints"
  if "://" not in os.fspath(root) or not root.is_dir():
    return []
  done = set(checkpoint_steps(model_dir))
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and int(p.name) not in done)


def resumed_step(text: str) -> int:
  m = re.search(r"Resumed from step (\d+)", text)
  return int(m.group(1)) if m else 0


def _next_checkpoint(done: int, every: int) -> int:
  return (done // every + 1) * every


def _between_checkpoints(rng, low: int, every: int, steps: int) -> int:
  candidates = [s for s in range(low + 1, steps) if s % every]
  return rng.choice(candidates[: 2 * every] or [low + 1])


def _sigterm_at(args, run_dir, fault: str, done: int, every: int) -> dict:
  """One SIGTERM case: the child signals itself while the phase runs (`_fault_child`)."""
  phase = SIGTERM_AT[fault]
  extra, step = [], None
  if phase == "restore" and not checkpoint_steps(run_dir):  # needs one to restore
    Run(args, run_dir, min(every, args.steps - 1)).wait(args.timeout)
    done = max(checkpoint_steps(run_dir), default=0)
  if phase == "compile":
    extra.append("--gin.train_script.train.plan_memory=False")
  if phase == "eval":  # the evaluation of the next checkpoint step: steps since the last save
    step = _next_checkpoint(done, every)
    extra += [f"--gin.EVAL_PERIOD={every}", "--gin.EVAL_BATCHES=2"]
  if phase == "save":
    step = _next_checkpoint(done, every)
  before = max(checkpoint_steps(run_dir), default=None)
  env = f"sigterm_at:{phase}" + (f":{step}" if step is not None else "")
  run = Run(args, run_dir, args.steps, fault_env=env, extra=extra)
  code = run.wait(args.timeout)
  after = max(checkpoint_steps(run_dir), default=None)
  mark = json.loads(run.mark.read_text()) if run.mark.exists() else {}
  # What the newest complete checkpoint must be: the evaluated or saved step when steps were
  # trained since the last save, else the one before (nothing written).
  expected = step if phase in ("eval", "save") else before
  record = {
    "exit_code": code,
    "signalled_in_phase": mark.get("in_phase"),
    "seconds_to_exit": round(run.exit_time - mark["time"], 2) if mark else None,
    "checkpoint_before": before,
    "checkpoint_after": after,
    "checkpoint_expected": expected,
    "checkpoint_right": after == expected,
    "restored_step": resumed_step(run.text()),
    "at_step": max(logged_losses(run_dir), default=0),
  }
  if phase == "save":  # the save of that step either finished or was left incomplete
    record["checkpoint_right"] = after in (step, before) or (after or 0) > step
  record["within_budget"] = (record["seconds_to_exit"] or 1e9) <= SIGTERM_BUDGET_S
  return record


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--checkpoint_every", type=int, default=5)
  parser.add_argument("--faults", default=",".join(FAULTS))
  parser.add_argument("--cheap", action="store_true", help="a smaller task (smoke tests)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--timeout", type=float, default=900, help="seconds per trainer process")
  parser.add_argument("--work_dir", default=None, help="default: a temporary directory")
  parser.add_argument(
    "--object_store",
    action="store_true",
    help="MODEL_DIR in a bucket on a local GCS emulator (needs the test extra)",
  )
  args = parser.parse_args()
  if args.object_store and args.faults == ",".join(FAULTS):
    args.faults = ",".join(OBJECT_STORE_FAULTS)
  faults = [f for f in args.faults.split(",") if f]
  allowed = OBJECT_STORE_FAULTS if args.object_store else FAULTS
  unknown = sorted(set(faults) - set(allowed))
  if unknown:
    parser.error(f"--faults: {unknown} not among {list(allowed)}")
  with contextlib.ExitStack() as stack:
    _run(args, faults, stack)


def _run(args, faults, stack) -> None:
  rng = random.Random(args.seed)
  work = pathlib.Path(args.work_dir or tempfile.mkdtemp(prefix="t5x_ext_faults_"))
  work.mkdir(parents=True, exist_ok=True)
  every = args.checkpoint_every

  start = time.monotonic()
  ref_dir, run_dir = work / "reference", work / "faulted"
  for d in (ref_dir, run_dir):
    shutil.rmtree(d, ignore_errors=True)
  if args.object_store:
    sys.path.insert(0, str(HERE.parent))
    from tests.gcs_emulator import running_emulator

    emulator = stack.enter_context(running_emulator())
    Run.log_dir = work
    ref_dir = run_paths.path(emulator.root) / "faults" / "reference"
    run_dir = run_paths.path(emulator.root) / "faults" / "faulted"
  ref = Run(args, ref_dir, args.steps)
  if ref.wait(args.timeout) != 0:
    raise SystemExit("reference run failed:\n" + ref.text()[-3000:])
  reference = logged_losses(ref_dir)

  seen: list[tuple[int, float]] = []  # every (step, loss) any faulted segment logged
  records = []
  for fault in faults:
    done = max(checkpoint_steps(run_dir), default=0)
    if done >= args.steps - 1:
      records.append({"fault": fault, "skipped": "the run is already near its end"})
      continue
    record: dict = {"fault": fault}
    if fault == "corrupt_latest":
      if not checkpoint_steps(run_dir):  # needs a checkpoint to corrupt: make two
        Run(args, run_dir, min(2 * every, args.steps - 1)).wait(args.timeout)
        seen.extend(logged_losses(run_dir).items())
      latest = checkpoint_steps(run_dir)[-1]
      state = run_dir / "checkpoints" / str(latest) / "state"
      for child in state.iterdir():  # lose the array data, as a broken disk would
        if child.is_dir():
          shutil.rmtree(child)
      manifest = state / "manifest.ocdbt"
      if manifest.exists():
        manifest.unlink()
      target = _between_checkpoints(rng, latest, every, args.steps)
      run = Run(args, run_dir, args.steps)
      run.wait_for_step(target, args.timeout)
      run.proc.send_signal(signal.SIGKILL)
      run.wait(60)
      record.update(
        at_step=max(logged_losses(run_dir)),
        corrupted_step=latest,
        restored_step=resumed_step(run.text()),
        quarantined=(run_dir / "checkpoints.corrupt" / str(latest)).is_dir(),
      )
    elif fault in SIGTERM_AT:
      record.update(_sigterm_at(args, run_dir, fault, done, every))
    elif fault in ("kill9", "sigterm"):
      target = _between_checkpoints(rng, done, every, args.steps)
      run = Run(args, run_dir, args.steps)
      run.wait_for_step(target, args.timeout)
      sent = time.monotonic()
      run.proc.send_signal(signal.SIGKILL if fault == "kill9" else signal.SIGTERM)
      code = run.wait(120)
      record.update(at_step=max(logged_losses(run_dir)), exit_code=code)
      if fault == "sigterm":
        record.update(
          seconds_to_exit=round(time.monotonic() - sent, 2),
          checkpointed=checkpoint_steps(run_dir)[-1] >= record["at_step"],
        )
      record["restored_step"] = resumed_step(run.text())
    else:  # kill_during_save, enospc: at the next checkpoint
      target = _next_checkpoint(done, every)
      kind = "kill_during_save" if fault == "kill_during_save" else "enospc_at_save"
      run = Run(args, run_dir, args.steps, fault_env=f"{kind}:{target}")
      code = run.wait(args.timeout)
      text = run.text()
      record.update(at_step=target, exit_code=code, restored_step=resumed_step(text))
      if args.object_store:  # the killed upload: objects of the step, but no commit marker
        record["partial_upload"] = target in partial_steps(run_dir)
      if fault == "enospc":
        record.update(
          one_message="could not be written" in text and "Traceback" not in text,
          partial_left=any(
            ".orbax-checkpoint-tmp" in p.name for p in (run_dir / "checkpoints").iterdir()
          ),
        )
    seen.extend(logged_losses(run_dir).items())
    records.append(record)

  final = Run(args, run_dir, args.steps)
  final_code = final.wait(args.timeout)
  final_losses = logged_losses(run_dir)
  seen.extend(final_losses.items())
  diffs = [abs(loss - reference[step]) for step, loss in seen if step in reference]
  expected_codes = {
    "kill9": -9,
    "kill_during_save": -9,
    "sigterm": STOPPED_EXIT,
    "enospc": USER_ERROR_EXIT,
    "corrupt_latest": -9,
    **dict.fromkeys(SIGTERM_AT, STOPPED_EXIT),
  }
  survived = sum(
    1
    for r in records
    if "skipped" not in r
    and r.get("exit_code", -9) == expected_codes[r["fault"]]
    and r.get("checkpointed", True)
    and r.get("checkpoint_right", True)
    and r.get("within_budget", True)
    and r.get("one_message", True)
    and not r.get("partial_left", False)
    and (r["fault"] != "corrupt_latest" or r["quarantined"])
  )
  # Steps recomputed: what each fault threw away, i.e. steps logged before it that the next
  # process had to train again (it resumed from an earlier checkpoint).
  recomputed = 0
  for i, r in enumerate(records):
    if "at_step" not in r:
      continue
    later = [x for x in records[i + 1 :] if "restored_step" in x]
    resumed = later[0]["restored_step"] if later else resumed_step(final.text())
    recomputed += max(0, r["at_step"] - resumed)
  sigterm = [r["seconds_to_exit"] for r in records if r.get("seconds_to_exit") is not None]
  # Did each process resume from the newest complete checkpoint the fault before it left?
  for i, r in enumerate(records):
    if "checkpoint_after" in r and r["checkpoint_after"] is not None:
      later = [x for x in records[i + 1 :] if "restored_step" in x]
      resumed = later[0]["restored_step"] if later else resumed_step(final.text())
      r["resumed_right"] = resumed == r["checkpoint_after"]
  worst = max(
    (r for r in records if r.get("seconds_to_exit") is not None),
    key=lambda r: r["seconds_to_exit"],
    default=None,
  )
  print(
    json.dumps(
      {
        "benchmark": "faults",
        "steps": args.steps,
        "checkpoint_every": every,
        "cheap": args.cheap,
        "object_store": args.object_store,
        "faults": records,
        "faults_survived": survived,
        "faults_injected": sum(1 for r in records if "skipped" not in r),
        "final_exit_code": final_code,
        "final_steps_logged": len(final_losses),
        "steps_recomputed": recomputed,
        "sigterm_seconds_to_exit": max(sigterm) if sigterm else None,
        "sigterm_worst_case": worst["fault"] if worst else None,
        "sigterm_budget_s": SIGTERM_BUDGET_S,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "max_loss_diff": max(diffs) if diffs else None,
        "losses_compared": len(diffs),
        "wall_s": round(time.monotonic() - start, 1),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
      },
      indent=1,
    )
  )
  if not args.work_dir:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
