"""A child process for the checkpointing tests (not collected: no `test_` prefix).

python tests/checkpoint_child.py sigterm MODEL_DIR   # steps until SIGTERM, saves, exits 0
python tests/checkpoint_child.py kill MODEL_DIR      # saves step 1, dies mid async save of 2
"""

import os
import signal
import sys
import time

import jax.numpy as jnp

from t5x_ext.training import checkpointing


def _state(step):
  return {"params": {"w": jnp.full((64, 64), float(step))}, "step": jnp.int32(step)}


def sigterm(model_dir):
  ckpt = checkpointing.Checkpointer(model_dir, save_interval_steps=1000, max_to_keep=2)
  step = 0
  while step < 10_000:  # the interval never saves: only the SIGTERM does
    time.sleep(0.02)  # a "train step"
    step += 1
    print(f"step {step}", flush=True)
    if ckpt.should_save(step):
      ckpt.save(step, _state(step), {"batches": step})
    if ckpt.stop_requested:
      print(f"stopped at {step}", flush=True)
      break
  ckpt.close()


def kill(model_dir):
  ckpt = checkpointing.Checkpointer(model_dir, save_interval_steps=1, handle_sigterm=False)
  ckpt.save(1, _state(1), {"batches": 1})
  ckpt.wait()
  # Big enough that the async write of step 2 is still running when the process dies.
  big = {"params": {"w": jnp.ones((4096, 4096))}, "step": jnp.int32(2)}
  ckpt.save(2, big, {"batches": 2})
  print("saving step 2", flush=True)
  os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
  {"sigterm": sigterm, "kill": kill}[sys.argv[1]](sys.argv[2])
