"""Runs `t5x_ext.train.main(argv)` and SIGKILLs the process right after the async save of
step KILL_STEP has started (its files are still being written): a crash mid-checkpoint.

  python -m tests._kill_during_save KILL_STEP -- --gin_file=... --gin.KEY=VALUE ...
"""

from __future__ import annotations

import os
import signal
import sys

from t5x_ext import train as train_lib
from t5x_ext.training import checkpointing


def main() -> None:
  kill_step = int(sys.argv[1])
  argv = sys.argv[sys.argv.index("--") + 1 :]
  original = checkpointing.Checkpointer.save

  def save_then_die(self, step, *args, **kwargs):
    result = original(self, step, *args, **kwargs)
    if step == kill_step:
      print(f"KILLING during the async save of step {step}", flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
    return result

  checkpointing.Checkpointer.save = save_then_die
  train_lib.main(argv)


if __name__ == "__main__":
  main()
