"""The trainer as `bench/faults.py` runs it, with one injected fault chosen by an env var.

T5X_EXT_FAULT=kill_during_save:STEP   SIGKILL right after the async save of STEP started
T5X_EXT_FAULT=enospc_at_save:STEP     the save of STEP fails like a full disk (its commit)
T5X_EXT_FAULT=sigterm_at:PHASE[:STEP] SIGTERM to itself while PHASE runs: `plan` (the memory
                                      plan's XLA compilation), `compile` (the first train
                                      step's compilation; run with plan_memory=False),
                                      `restore`, `eval` (the periodic evaluation of STEP or
                                      the first one), `save` (the checkpoint save of STEP);
                                      the signal's time.time() goes to T5X_EXT_FAULT_MARK
(unset)                               the plain command line: `python -m t5x_ext.train`

python bench/_fault_child.py --gin_file=... --gin.KEY=VALUE ...
"""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
import time

# Seconds after a phase starts before the signal: inside the long C++ call of that phase.
_DELAY = {"plan": 1.0, "compile": 1.0, "restore": 0.0, "eval": 0.5, "save": 0.0}


def _signal_later(phase: str, still_running) -> None:
  def fire():
    time.sleep(_DELAY[phase])
    mark = os.environ.get("T5X_EXT_FAULT_MARK")
    if mark:
      with open(mark, "w") as f:
        json.dump({"phase": phase, "time": time.time(), "in_phase": still_running()}, f)
    os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=fire, daemon=True).start()


def _install_sigterm_at(phase: str, step: int | None) -> None:
  from t5x_ext.evaluation import periodic
  from t5x_ext.training import checkpointing, memory_plan, trainer

  running = threading.Event()

  def wrap(owner, name, when=lambda *a, **k: True):
    original = getattr(owner, name)
    fired = []

    def wrapped(*args, **kwargs):
      if fired or not when(*args, **kwargs):
        return original(*args, **kwargs)
      fired.append(True)
      running.set()
      _signal_later(phase, running.is_set)
      try:
        return original(*args, **kwargs)
      finally:
        running.clear()

    setattr(owner, name, wrapped)

  def at_step(self, s, *a, **k):
    return step is None or s == step

  if phase == "plan":
    wrap(memory_plan, "check_fits")
  elif phase == "compile":
    wrap(trainer.Trainer, "train_step")
  elif phase == "restore":
    wrap(checkpointing.Checkpointer, "restore_latest")
  elif phase == "eval":
    wrap(periodic.PeriodicEvaluator, "evaluate", at_step)
  elif phase == "save":
    wrap(checkpointing.Checkpointer, "save", at_step)
  else:
    raise SystemExit(f"T5X_EXT_FAULT: unknown phase {phase!r}.")


def _install(fault: str) -> None:
  from t5x_ext.training import checkpointing

  kind, _, step_text = fault.partition(":")
  if kind == "sigterm_at":
    phase, _, step_text = step_text.partition(":")
    _install_sigterm_at(phase, int(step_text) if step_text else None)
    return
  fault_step = int(step_text)
  original = checkpointing.Checkpointer.save

  if kind == "kill_during_save":

    def save(self, step, *args, **kwargs):
      result = original(self, step, *args, **kwargs)
      if step == fault_step:
        os.kill(os.getpid(), signal.SIGKILL)
      return result

  elif kind == "enospc_at_save":
    from orbax.checkpoint._src.path import async_path

    real_rename = async_path.rename

    async def rename(src, dst):
      # The commit of that step's directory (it runs in the background, after save returns).
      if os.path.basename(os.fspath(dst)) == str(fault_step):
        raise OSError(errno.ENOSPC, "No space left on device (injected by bench/faults.py)")
      return await real_rename(src, dst)

    async_path.rename = rename
    save = original

  else:
    raise SystemExit(f"T5X_EXT_FAULT={fault!r}: unknown fault {kind!r}.")
  checkpointing.Checkpointer.save = save


def main() -> None:
  fault = os.environ.get("T5X_EXT_FAULT")
  if fault:
    _install(fault)
  from t5x_ext import train as train_lib
  from t5x_ext.launch import flags as cli

  cli.main_guard(train_lib.main)


if __name__ == "__main__":
  main()
