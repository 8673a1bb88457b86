"""Mesh construction, logical rules and batch helpers on the one CPU device of this process.

The sharded (8-device) checks live in `eight_devices_partitioning.py`, run here in a
subprocess because `--xla_force_host_platform_device_count` must be set before jax starts.
"""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from t5x_ext.model import axes
from t5x_ext.training import partitioning

HERE = os.path.dirname(__file__)


class _FakeDevice:
  """Stands in for a device: make_mesh validates counts before touching devices."""

  def __init__(self, i):
    self.id = i
    self.process_index = 0


@pytest.mark.parametrize(
  "shape, match",
  [
    ({"data": 3}, r"MESH_SHAPE = \{'data': 3\} needs 3 devices, but there are 8"),
    ({"tensor": 2}, r"unknown axis 'tensor' \(value 2\)"),
    ({"data": -1, "model": -1}, "at most one axis may be -1"),
    ({"model": 3, "data": -1}, r"multiply to 3, which does not divide the 8 devices, so 'data'"),
    ({"fsdp": 0}, r"MESH_SHAPE\['fsdp'\] = 0"),
    ({"data": "2"}, r"MESH_SHAPE\['data'\] = '2'"),
  ],
)
def test_make_mesh_rejects_bad_shapes_naming_key_and_value(shape, match):
  with pytest.raises(ValueError, match=match):
    partitioning.make_mesh(shape, devices=[_FakeDevice(i) for i in range(8)])


def test_make_mesh_defaults_to_data_parallel_over_all_devices():
  mesh = partitioning.make_mesh()
  assert mesh.axis_names == ("data", "fsdp", "model")
  assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "model": 1}
  # Auto axes: flax linen's with_logical_constraint relies on GSPMD propagation.
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_default_rules_cover_every_logical_axis_of_the_networks():
  names = [name for name, _ in partitioning.DEFAULT_RULES]
  assert sorted(names) == sorted(axes.ALL_AXES)
  assert len(set(names)) == len(names)


@pytest.mark.parametrize(
  "logical, expected",
  [
    ((axes.EMBED, axes.MLP), ("fsdp", "model")),
    ((axes.MLP, axes.EMBED), ("model", "fsdp")),
    ((axes.VOCAB, axes.EMBED), ("model", "fsdp")),
    ((axes.EMBED, axes.HEADS, axes.KV), ("fsdp", "model", None)),
    ((axes.HEADS, axes.RELPOS), ("model", None)),
    ((axes.LAYERS, axes.EMBED, axes.MLP), (None, "fsdp", "model")),
    ((axes.EMBED,), ("fsdp",)),
    # Activations: the batch takes data+fsdp, d_model stays whole, heads/mlp/vocab on model.
    (axes.BLD, (("data", "fsdp"), None, None)),
    (axes.BLF, (("data", "fsdp"), None, "model")),
    (axes.BLHK, (("data", "fsdp"), None, "model", None)),
    (axes.BLV, (("data", "fsdp"), None, "model")),
  ],
)
def test_default_rules_map_logical_axes_to_the_mesh(logical, expected):
  spec = nn.logical_to_mesh_axes(logical, partitioning.DEFAULT_RULES)
  assert tuple(spec) == expected


def test_validate_batch_size_accepts_multiples_of_the_data_parallel_size():
  mesh = partitioning.make_mesh({"data": -1})
  partitioning.validate_batch_size(4 * jax.device_count(), mesh)
  with pytest.raises(ValueError, match=r"BATCH_SIZE = 0"):
    partitioning.validate_batch_size(0, mesh)
  with pytest.raises(ValueError, match=r"NUM_MICROBATCHES = 0"):
    partitioning.validate_batch_size(8, mesh, num_microbatches=0)


def test_single_process_loads_the_whole_batch():
  mesh = partitioning.make_mesh()
  assert partitioning.process_batch_shard(mesh) == (0, 1)
  local = {"x": np.arange(12, dtype=np.int32).reshape(4, 3)}
  batch = partitioning.make_global_batch(local, mesh)
  assert batch["x"].shape == (4, 3)
  np.testing.assert_array_equal(np.asarray(batch["x"]), local["x"])


def test_sharded_state_checks_on_eight_simulated_devices():
  """Runs eight_devices_partitioning.py under 8 simulated CPU devices."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "-q",
      "-p",
      "no:cacheprovider",
      os.path.join(HERE, "eight_devices_partitioning.py"),
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize(
  "rules, match",
  [
    ([("embed", "tensor")], r"mesh axis 'tensor' is not one of"),
    ([("batch", ("data", "fsdpp"))], r"mesh axis 'fsdpp'"),
    ([("embed", "fsdp"), ("embed", None)], r"names 'embed' twice"),
    (["embed"], r"entry 'embed': expected"),
  ],
)
def test_malformed_rules_fail_naming_the_rule(rules, match):
  with pytest.raises(ValueError, match=match):
    partitioning.validate_rules(rules, partitioning.make_mesh())


def test_logical_shardings_validates_rules_and_maps_boxed_leaves():
  mesh = partitioning.make_mesh()
  abstract = {
    "w": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((4, 8), np.float32), (axes.EMBED, axes.MLP)),
    "plain": jax.ShapeDtypeStruct((3,), np.float32),
  }
  shardings = partitioning.logical_shardings(abstract, mesh)
  assert shardings["w"].spec == jax.sharding.PartitionSpec("fsdp", "model")
  assert shardings["plain"].spec == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match="mesh axis 'x'"):
    partitioning.logical_shardings(abstract, mesh, [(axes.EMBED, "x")])
