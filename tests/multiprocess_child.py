"""One of two processes (2 CPU devices each) for `test_partitioning_multiprocess.py`.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 \
    python tests/multiprocess_child.py PROCESS_ID PORT MODEL_DIR sigterm|flag

Not collected (no `test_` prefix). Exits 0 and prints "OK <id>" when every check passed.
"""

import os
import signal
import sys
import time

import jax

# CPU collectives across processes need gloo; it must be chosen before initialize.
jax.config.update("jax_cpu_collectives_implementation", "gloo")
process_id, port, model_dir, stop_mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
# 'sigterm': JAX's preemption service agrees on the stop step. 'flag': without that service,
# Checkpointer all-gathers the processes' stop flags (request_stop on process 0 only).
jax.config.update("jax_enable_preemption_service", stop_mode == "sigterm")
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from t5x_ext.training import (  # noqa: E402
  checkpointing,
  partitioning,
)

assert jax.process_count() == 2 and jax.device_count() == 4, (
  jax.process_count(),
  jax.device_count(),
)
FULL = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)


def check_batch(mesh, expected_shards):
  index, num_shards = partitioning.process_batch_shard(mesh)
  assert num_shards == expected_shards, (dict(mesh.shape), num_shards)
  rows = len(FULL) // num_shards
  local = {"x": FULL[index * rows : (index + 1) * rows]}
  batch = partitioning.make_global_batch(local, mesh)
  assert batch["x"].shape == FULL.shape, batch["x"].shape
  gathered = multihost_utils.process_allgather(batch["x"], tiled=True)
  np.testing.assert_array_equal(gathered, FULL)
  return index


# Pure data parallelism: each process loads its half of the batch.
mesh = partitioning.make_mesh({"data": -1})
assert check_batch(mesh, 2) == process_id
partitioning.validate_batch_size(8, mesh)
# Tensor parallelism over all 4 devices: the processes are replicas and load the same rows.
check_batch(partitioning.make_mesh({"model": 4}), 1)
check_batch(partitioning.make_mesh({"data": 2, "model": 2}), 2)

# Checkpoints of a state sharded across both processes. The stop reaches process 0 only;
# both processes must save at the same step and stop.
mesh = partitioning.make_mesh({"fsdp": 4})
sharding = NamedSharding(mesh, P("fsdp"))
make = jax.jit(lambda: jnp.arange(16.0).reshape(8, 2) * 3.0, out_shardings=sharding)
ckpt = checkpointing.Checkpointer(model_dir, save_interval_steps=1000)
stopped = None
for step in range(1, 2000):
  time.sleep(0.01)  # a "train step"
  if process_id == 0 and step == 5:
    if stop_mode == "sigterm":
      os.kill(os.getpid(), signal.SIGTERM)
    else:
      ckpt.request_stop()
  if ckpt.should_save(step):
    ckpt.save(step, {"params": {"w": make()}, "step": jnp.int32(step)}, {"batches": step})
  if ckpt.stop_requested:
    stopped = step
    break
ckpt.close()
assert stopped is not None and stopped >= 5, stopped
both = multihost_utils.process_allgather(np.asarray(stopped))
assert both[0] == both[1], both

ckpt = checkpointing.Checkpointer(model_dir, handle_sigterm=False)
target = {
  "params": {"w": jax.ShapeDtypeStruct((8, 2), jnp.float32, sharding=sharding)},
  "step": jax.ShapeDtypeStruct((), jnp.int32),
}
restored, data, step = ckpt.restore_latest(target)
ckpt.close()
assert (step, data) == (stopped, {"batches": stopped}), (step, data, stopped)
assert restored["params"]["w"].sharding == sharding
np.testing.assert_array_equal(
  multihost_utils.process_allgather(restored["params"]["w"], tiled=True),
  np.arange(16.0).reshape(8, 2) * 3.0,
)
print(f"OK {process_id} stopped at {stopped}", flush=True)
