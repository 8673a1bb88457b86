"""Training a model on a `jax.sharding.Mesh`: never imports TensorFlow, seqio or `tasks`.

Modules:
  partitioning.py      the mesh, logical-axis rules, shardings of state and batches
  optimizers.py        AdamW / Adafactor as T5X configures them (factored kernels)
  schedules.py         learning-rate schedules
  trainer.py           `Trainer`: state init, the jitted train and eval steps
  loop.py              the step loop: prefetch thread, metrics, checkpoints, signals
  checkpointing.py     Orbax checkpoints: save, keep, restore, params-only restore
  run_lock.py          one run per MODEL_DIR (an flock; a renewed lease on object stores)
  run_paths.py         MODEL_DIR paths through etils.epath, local or gs:// (client settings)
  metric_writers.py    metric sums, JSONL/TensorBoard writers, the progress bar, MFU
  tensorboard_events.py  event files cut back after a resume; scalars written to a bucket
  memory_plan.py       XLA's per-device memory plan of a compiled step
  hosts.py             several processes: rows per host, lockstep, gather, sharded predict

Gin files bind `t5x_ext.optimizers`, `t5x_ext.schedules` and `t5x_ext.partitioning`: those
top-level names re-export these modules.
"""
