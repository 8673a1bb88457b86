"""One of two processes (2 CPU devices each) for `test_partitioning_multiprocess.py`.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 \
    python tests/multiprocess_child.py PROCESS_ID PORT MODEL_DIR

Not collected (no `test_` prefix). Exits 0 and prints "OK <id>" when every check passed.
"""

import sys

import jax

# CPU collectives across processes need gloo; it must be chosen before initialize.
jax.config.update("jax_cpu_collectives_implementation", "gloo")
process_id, port, model_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from t5x_ext import checkpointing, partitioning  # noqa: E402

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

# Checkpoints of a state sharded across both processes; a SIGTERM seen by one process
# (request_stop) stops both, after a save at the same step.
mesh = partitioning.make_mesh({"fsdp": 4})
sharding = NamedSharding(mesh, P("fsdp"))
make = jax.jit(lambda: jnp.arange(16.0).reshape(8, 2) * 3.0, out_shardings=sharding)
state = {"params": {"w": make()}, "step": jnp.int32(4)}
ckpt = checkpointing.Checkpointer(model_dir, save_interval_steps=3, handle_sigterm=False)
assert ckpt.should_save(3)
ckpt.save(3, state, {"batches": 3})
if process_id == 0:
  ckpt.request_stop()
assert ckpt.should_save(4)  # agreed across processes: off the interval, but stopping
ckpt.save(4, state, {"batches": 4})
assert ckpt.stop_requested
ckpt.close()

ckpt = checkpointing.Checkpointer(model_dir, handle_sigterm=False)
target = {
  "params": {"w": jax.ShapeDtypeStruct((8, 2), jnp.float32, sharding=sharding)},
  "step": jax.ShapeDtypeStruct((), jnp.int32),
}
restored, data, step = ckpt.restore_latest(target)
ckpt.close()
assert (step, data) == (4, {"batches": 4}), (step, data)
assert restored["params"]["w"].sharding == sharding
np.testing.assert_array_equal(
  multihost_utils.process_allgather(restored["params"]["w"], tiled=True),
  np.arange(16.0).reshape(8, 2) * 3.0,
)
print(f"OK {process_id}", flush=True)
