"""The trainer as `bench/faults.py` runs it, with one injected fault chosen by an env var.

T5X_EXT_FAULT=kill_during_save:STEP   SIGKILL right after the async save of STEP started
T5X_EXT_FAULT=enospc_at_save:STEP     the save of STEP fails like a full disk (its commit)
(unset)                               the plain command line: `python -m t5x_ext.train`

python bench/_fault_child.py --gin_file=... --gin.KEY=VALUE ...
"""

from __future__ import annotations

import errno
import os
import signal


def _install(fault: str) -> None:
  from t5x_ext.training import checkpointing

  kind, _, step_text = fault.partition(":")
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
