"""Runs a few real training steps of the main job's model and prints the per-step losses.

Used by the multi-device tests in a subprocess (the simulated device count must be set
before JAX starts): `python -m tests._train_runner OUT_DIR` prints one JSON object.
"""

from __future__ import annotations

import copy
import json
import os
import sys

TASK = "pydocs_span_corruption_v1"
LENGTHS = {"inputs": 64, "targets": 16}
MESHES = {
  "data8": {"data": 8},
  "data2_fsdp2_model2": {"data": 2, "fsdp": 2, "model": 2},
}


def tiny_model():
  """The model of gin/local/tiny_model.gin, built through gin and then cleared."""
  import gin
  from t5x_ext.launch import flags as cli

  cli.parse_gin(["local/tiny_model.gin"])
  model = copy.deepcopy(gin.query_parameter("MODEL/macro.value"))
  gin.clear_config(clear_constants=True)
  return model


def train_losses(model_dir, mesh_shape, steps=5, batch_size=8, learning_rate=0.01, **kwargs):
  """Trains `steps` steps and returns (losses per step, TrainResult)."""
  from t5x_ext import train
  from t5x_ext.training import metric_writers as metrics

  result = train.train(
    model=tiny_model(),
    mixture_or_task_name=TASK,
    task_feature_lengths=LENGTHS,
    train_steps=steps,
    model_dir=str(model_dir),
    batch_size=batch_size,
    mesh_shape=mesh_shape,
    log_every=1,
    learning_rate=learning_rate,
    tensorboard=False,
    progress_bar=False,
    **kwargs,
  )
  rows = metrics.read_jsonl(os.path.join(model_dir, "metrics", "train.jsonl"))
  return [r["loss"] for r in rows], result


def main(out_dir: str) -> None:
  import jax

  from t5x_ext.training import partitioning

  report = {"devices": jax.device_count(), "losses": {}, "replicated": {}, "big_params": {}}
  for name, mesh in MESHES.items():
    losses, result = train_losses(os.path.join(out_dir, name), mesh)
    params = result.state.params
    report["losses"][name] = losses
    report["replicated"][name] = partitioning.fully_replicated_params(params)
    report["big_params"][name] = sum(
      1 for x in jax.tree.leaves(params) if x.size * x.dtype.itemsize >= 1 << 20
    )
  errors = {}
  for name, kwargs in {
    "batch": dict(mesh_shape={"data": 8}, batch_size=4),
    "mesh": dict(mesh_shape={"data": 3}),
  }.items():
    try:
      train_losses(os.path.join(out_dir, "bad_" + name), **kwargs)
    except ValueError as e:
      errors[name] = str(e)
  report["errors"] = errors
  print("REPORT " + json.dumps(report), flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
