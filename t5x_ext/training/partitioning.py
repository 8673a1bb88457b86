"""Device mesh, logical-axis rules and the shardings of state and batches.

The networks name every parameter and activation axis logically (`t5x_ext.model.axes`); this module
maps those names onto a `jax.sharding.Mesh` with three axes:

  data   pure data parallelism: batch split, parameters replicated.
  fsdp   batch split AND parameters/optimizer state split along `embed` (ZeRO-3 style).
  model  tensor parallelism over `mlp`, `heads` and `vocab`.

State is created sharded, never materialised on one device first (the house recipe):
`jax.eval_shape(init)` -> logical partition specs -> `NamedSharding` -> `jax.jit(init,
out_shardings=...)`. Batches are built as global arrays from each process's local numpy rows.

Nothing here imports gin; gin files bind `make_mesh` and `DEFAULT_RULES` by name.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from t5x_ext.errors import UserError
from t5x_ext.model import axes

MESH_AXES = ("data", "fsdp", "model")
# Mesh axes that split the batch. Their product is the data-parallel size.
BATCH_MESH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or axes, or None for replicated). Flax resolves a logical
# name to the first rule whose mesh axes are still unused in that array. Parameters shard
# `embed` over fsdp (ZeRO-3) and mlp/heads/vocab over model (Megatron); activations keep
# their own names (`axes.ACT_*`) so their d_model stays whole while the batch is split.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  (axes.BATCH, BATCH_MESH_AXES),
  (axes.LENGTH, None),
  (axes.EMBED, "fsdp"),
  (axes.MLP, "model"),
  (axes.HEADS, "model"),
  (axes.KV, None),
  (axes.VOCAB, "model"),
  (axes.RELPOS, None),
  (axes.LAYERS, None),
  (axes.ACT_EMBED, None),
  (axes.ACT_MLP, "model"),
  (axes.ACT_HEADS, "model"),
  (axes.ACT_KV, None),
  (axes.ACT_VOCAB, "model"),
  (axes.CACHE_LENGTH, None),
)

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


# ---------------------------------------------------------------------------------------
# Mesh
# ---------------------------------------------------------------------------------------


def make_mesh(
  mesh_shape: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None
) -> Mesh:
  """Builds a ('data', 'fsdp', 'model') mesh from a dict of axis sizes.

  Axes missing from `mesh_shape` get size 1; at most one axis may be -1, meaning "all the
  devices the others leave". The mesh always has all three axes, so one rules table fits
  every mesh.

  Args:
    mesh_shape: e.g. `{'data': -1}` (default), `{'data': 2, 'fsdp': 2, 'model': 2}`.
    devices: the devices to use (default: `jax.devices()`, all processes).

  Returns:
    A `jax.sharding.Mesh` with Auto axis types (GSPMD propagation, as flax linen expects).

  Raises:
    ValueError: on an unknown axis name, a size that is not a positive int or -1, more than one
      -1, or sizes whose product is not the number of devices; the message names the key
      and value.
  """
  mesh_shape = dict({"data": -1} if mesh_shape is None else mesh_shape)
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  for key, value in mesh_shape.items():
    if key not in MESH_AXES:
      raise UserError(
        f"MESH_SHAPE has unknown axis {key!r} (value {value!r}); the axes are {MESH_AXES}."
      )
    if (
      not isinstance(value, int | np.integer)
      or isinstance(value, bool)
      or (value < 1 and value != -1)
    ):
      raise UserError(f"MESH_SHAPE[{key!r}] = {value!r}: sizes must be positive ints or -1.")
  free = [k for k, v in mesh_shape.items() if v == -1]
  if len(free) > 1:
    raise UserError(f"MESH_SHAPE = {mesh_shape!r}: at most one axis may be -1, got {free}.")
  fixed = math.prod(v for v in mesh_shape.values() if v != -1)
  if free:
    if n % fixed:
      raise UserError(
        f"MESH_SHAPE = {mesh_shape!r}: the fixed axes multiply to {fixed}, which does not "
        f"divide the {n} devices, so {free[0]!r} = -1 has no size."
      )
    mesh_shape[free[0]] = n // fixed
  sizes = tuple(int(mesh_shape.get(a, 1)) for a in MESH_AXES)
  if math.prod(sizes) != n:
    bad = {k: v for k, v in mesh_shape.items() if v != 1}
    raise UserError(
      f"MESH_SHAPE = {bad!r} needs {math.prod(sizes)} devices, but there are {n}; "
      "set one axis to -1 to use the rest."
    )
  return jax.make_mesh(
    sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
  )


def data_parallel_size(mesh: Mesh) -> int:
  """Number of batch slices: the product of the mesh's `data` and `fsdp` sizes.

  Args:
    mesh: a mesh from `make_mesh`.

  Returns:
    The data-parallel size.
  """
  return math.prod(mesh.shape.get(a, 1) for a in BATCH_MESH_AXES)


def validate_batch_size(batch_size: int, mesh: Mesh, num_microbatches: int = 1) -> None:
  """Fails early when the global batch cannot be split evenly over the mesh and processes.

  Args:
    batch_size: global batch size (all processes together).
    mesh: the mesh.
    num_microbatches: gradient accumulation steps; each microbatch must itself split over
      the data-parallel size, or every microbatch would be resharded.

  Raises:
    ValueError: naming BATCH_SIZE (or NUM_MICROBATCHES) and the mesh when the batch does not
      divide the data-parallel size (data x fsdp), the number of batch shards across
      processes, or num_microbatches x the data-parallel size.
  """
  dp = data_parallel_size(mesh)
  if not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool) or batch_size < 1:
    raise UserError(f"BATCH_SIZE = {batch_size!r}: must be a positive int.")
  if batch_size % dp:
    raise UserError(
      f"BATCH_SIZE = {batch_size} does not divide over the data-parallel size {dp} "
      f"(mesh {dict(mesh.shape)}: data x fsdp); use a multiple of {dp}."
    )
  _, num_shards = process_batch_shard(mesh)
  if batch_size % num_shards:
    raise UserError(
      f"BATCH_SIZE = {batch_size} does not divide over {num_shards} host batch shards."
    )
  if not isinstance(num_microbatches, int | np.integer) or num_microbatches < 1:
    raise UserError(f"NUM_MICROBATCHES = {num_microbatches!r}: must be a positive int.")
  if batch_size % (num_microbatches * dp):
    raise UserError(
      f"NUM_MICROBATCHES = {num_microbatches} with BATCH_SIZE = {batch_size}: each microbatch "
      f"must split over the data-parallel size {dp} (mesh {dict(mesh.shape)}), so BATCH_SIZE "
      f"must be a multiple of {num_microbatches * dp}."
    )


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
  """Context in which `nn.with_logical_constraint` on activations takes effect.

  Flax only applies activation constraints when a mesh and logical rules are both set;
  wrap the traced model call (train/eval step bodies) in this.

  Args:
    mesh: the mesh.
    rules: logical axis rules.

  Yields:
    None.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


# ---------------------------------------------------------------------------------------
# State shardings
# ---------------------------------------------------------------------------------------


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def validate_rules(rules: Rules, mesh: Mesh | None = None) -> None:
  """Fails early on a malformed rules table (e.g. a gin override with a typo).

  Args:
    rules: sequence of `(logical_name, mesh_axis | tuple of mesh axes | None)`.
    mesh: if given, every mesh axis named must be one of its axes.

  Raises:
    ValueError: naming the offending rule.
  """
  names = MESH_AXES if mesh is None else tuple(mesh.axis_names)
  seen = set()
  for rule in rules:
    if not (isinstance(rule, tuple | list) and len(rule) == 2 and isinstance(rule[0], str)):
      raise UserError(f"logical_axis_rules entry {rule!r}: expected (logical_name, mesh_axes).")
    logical, target = rule
    if logical in seen:
      # Flax would silently use the first; a duplicate is almost always an editing mistake.
      raise UserError(f"logical_axis_rules names {logical!r} twice.")
    seen.add(logical)
    targets = target if isinstance(target, tuple | list) else (target,)
    for axis in targets:
      if axis is not None and axis not in names:
        raise UserError(
          f"logical_axis_rules entry {tuple(rule)!r}: mesh axis {axis!r} is not one of {names}."
        )


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """NamedShardings for a (possibly boxed) tree, e.g. `jax.eval_shape(model.init_variables, ...)`.

  Leaves boxed in `nn.LogicallyPartitioned` are mapped through `rules`; plain leaves are
  replicated. The result has the tree structure of the UNBOXED tree.

  Args:
    abstract_tree: tree of `jax.ShapeDtypeStruct` (or arrays), possibly boxed.
    mesh: the mesh.
    rules: logical axis rules.

  Returns:
    A tree of `NamedSharding` matching `nn.unbox(abstract_tree)`.

  Raises:
    ValueError: on a malformed rules table, or if a parameter dimension does not divide the
      mesh axes it is mapped to (naming the parameter, its shape and its logical axes).
  """
  validate_rules(rules, mesh)
  specs = nn.get_partition_spec(abstract_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  unboxed = nn.unbox(abstract_tree)
  logical = jax.tree.map(
    lambda x: str(x.names) if isinstance(x, nn.Partitioned) else "unboxed",
    abstract_tree,
    is_leaf=lambda x: isinstance(x, nn.Partitioned),
  )

  def check(path, leaf, sharding, names):
    for dim, (size, mesh_axes) in enumerate(
      zip(leaf.shape, tuple(sharding.spec) + (None,) * leaf.ndim)
    ):
      if mesh_axes is None:
        continue
      split = math.prod(
        mesh.shape[a] for a in (mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,))
      )
      if size % split:
        raise UserError(
          f"Parameter {_path_str(path)} with shape {tuple(leaf.shape)} and logical axes "
          f"{names} has dimension {dim} of size {size}, which does not divide over mesh axes "
          f"{mesh_axes} ({split} devices, mesh {dict(mesh.shape)}). Change MESH_SHAPE or the rules."
        )

  jax.tree_util.tree_map_with_path(check, unboxed, shardings, logical)
  return shardings


def with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """Attaches shardings to an abstract tree (the target for a sharded restore).

  Args:
    abstract_tree: tree of arrays or `jax.ShapeDtypeStruct` (unboxed).
    shardings: matching tree of `jax.sharding.Sharding`.

  Returns:
    Tree of `jax.ShapeDtypeStruct` with `.sharding` set.
  """
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings
  )


def sharded_init(
  init_fn: Callable[..., Any], *args, mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> tuple[Any, Any]:
  """Runs `init_fn(*args)` directly into its shardings (eval_shape -> specs -> jitted init).

  Args:
    init_fn: returns a tree whose leaves may be `nn.LogicallyPartitioned` boxes, e.g.
      `lambda rng, batch: model.init_variables(rng, batch)['params']`. Must be traceable.
    *args: its arguments (arrays or pytrees of arrays; numpy batches are fine).
    mesh: the mesh.
    rules: logical axis rules.

  Returns:
    `(tree, shardings)`: the unboxed tree, created sharded, and its tree of NamedSharding.
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_shardings(abstract, mesh, rules)
  with axis_rules(mesh, rules):
    tree = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return tree, shardings


def _merged_views(shape: tuple, spec: tuple):
  """(shape, spec) of the array and of every view merging two adjacent axes.

  A merged axis keeps the mesh axes of both (major first); when only the minor one is
  sharded the merged axis cannot be laid out that way and is left unsharded.
  """
  yield shape, spec
  for i in range(len(shape) - 1):
    a, b = spec[i], spec[i + 1]
    a_t = () if a is None else (a if isinstance(a, tuple) else (a,))
    b_t = () if b is None else (b if isinstance(b, tuple) else (b,))
    if not a_t:
      merged = None
    else:
      merged = (a_t + b_t) if len(a_t + b_t) > 1 else a_t[0]
    yield (
      shape[:i] + (shape[i] * shape[i + 1],) + shape[i + 2 :],
      spec[:i] + (merged,) + spec[i + 2 :],
    )


# Adafactor's factored statistics (optax `FactoredState`): `v_row` averages over the
# largest axis, `v_col` over the second largest (ranked by `np.argsort`, as optax does).
_REDUCED_RANK = {"v_row": -1, "v_col": -2}


def _derived_spec(leaf_shape, param_shape, param_spec: P, field: str | None = None) -> P | None:
  """Spec for an optimizer-state leaf of a parameter: same shape -> same spec; one axis
  reduced (Adafactor row/column statistics) -> the spec with that axis dropped. The leaf may
  also be of a view of the parameter with two adjacent axes merged (Adafactor factors an
  attention kernel as one matrix, see `optimizers.factoring_shape`). `field` ('v_row' or
  'v_col') says which axis Adafactor reduced, for views whose two axes are the same size."""
  spec = tuple(param_spec) + (None,) * (len(param_shape) - len(param_spec))
  leaf_shape = tuple(leaf_shape)
  for shape, view_spec in _merged_views(tuple(param_shape), spec):
    if leaf_shape == shape:
      return P(*view_spec)
    if len(leaf_shape) != len(shape) - 1:
      continue
    axes = range(len(shape))
    if field in _REDUCED_RANK and len(shape) >= 2:
      axes = [int(np.argsort(shape)[_REDUCED_RANK[field]])]
    for axis in axes:
      if shape[:axis] + shape[axis + 1 :] == leaf_shape:
        return P(*(view_spec[:axis] + view_spec[axis + 1 :]))
  return None


def optimizer_state_shardings(abstract_opt_state: Any, params: Any, param_shardings: Any) -> Any:
  """Shardings for an optax state, derived from the parameters' shardings.

  Optax states hold trees shaped like the params (Adam's mu/nu, Adafactor's v) or with one
  axis reduced (Adafactor's factored v_row/v_col). Every sub-tree whose structure equals the
  params' is sharded leaf-by-leaf like the corresponding parameter; everything else (step
  counts, placeholders) is replicated.

  Args:
    abstract_opt_state: `jax.eval_shape(tx.init, params)`.
    params: the (unboxed, possibly abstract) params.
    param_shardings: their NamedShardings.

  Returns:
    A tree of NamedSharding matching `abstract_opt_state`.
  """
  params_def = jax.tree.structure(params)
  param_leaves = jax.tree.leaves(params)
  sharding_leaves = jax.tree.leaves(param_shardings)
  mesh = sharding_leaves[0].mesh if sharding_leaves else None
  replicated = NamedSharding(mesh, P()) if mesh is not None else None

  def is_params_like(x):
    return jax.tree.structure(x) == params_def and not isinstance(
      x, jax.ShapeDtypeStruct | jax.Array
    )

  def assign(path, sub):
    if is_params_like(sub):
      field = getattr(path[-1], "name", None) if path else None
      leaves = []
      for leaf, p, s in zip(jax.tree.leaves(sub), param_leaves, sharding_leaves):
        spec = _derived_spec(leaf.shape, p.shape, s.spec, field)
        leaves.append(
          NamedSharding(s.mesh, spec) if spec is not None else NamedSharding(s.mesh, P())
        )
      return jax.tree.unflatten(params_def, leaves)
    return jax.tree.map(lambda _: replicated, sub)

  return jax.tree_util.tree_map_with_path(assign, abstract_opt_state, is_leaf=is_params_like)


def init_optimizer_state(tx, params: Any, param_shardings: Any) -> tuple[Any, Any]:
  """Creates `tx.init(params)` sharded like the params (see `optimizer_state_shardings`).

  Args:
    tx: an `optax.GradientTransformation`.
    params: sharded, unboxed params.
    param_shardings: their NamedShardings.

  Returns:
    `(opt_state, opt_state_shardings)`.
  """
  abstract = jax.eval_shape(tx.init, params)
  shardings = optimizer_state_shardings(abstract, params, param_shardings)
  opt_state = jax.jit(tx.init, in_shardings=(param_shardings,), out_shardings=shardings)(params)
  return opt_state, shardings


def fully_replicated_params(
  params: Any, shardings: Any | None = None, min_bytes: int = 1 << 20
) -> list[str]:
  """Lists the parameters of at least `min_bytes` that are replicated on every device.

  With `fsdp` or `model` > 1, such a parameter usually means a rule is missing.

  Args:
    params: tree of arrays or ShapeDtypeStructs.
    shardings: their shardings (default: each array's `.sharding`).
    min_bytes: size threshold (default 1 MiB).

  Returns:
    Paths (`a/b/kernel`) of large parameters that are fully replicated.
  """
  if shardings is None:
    shardings = jax.tree.map(lambda x: x.sharding, params)
  found = []

  def visit(path, leaf, sharding):
    nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
    if nbytes >= min_bytes and sharding.is_fully_replicated and len(sharding.device_set) > 1:
      found.append(_path_str(path))

  jax.tree_util.tree_map_with_path(visit, params, shardings)
  return found


def check_params_sharded(
  params: Any, mesh: Mesh, shardings: Any | None = None, min_bytes: int = 1 << 20
) -> None:
  """Raises when `fsdp` or `model` > 1 and some parameter over `min_bytes` is fully replicated.

  Args:
    params: tree of arrays or ShapeDtypeStructs.
    mesh: the mesh.
    shardings: their shardings (default: each array's `.sharding`).
    min_bytes: size threshold (default 1 MiB).

  Raises:
    ValueError: listing the replicated parameters.
  """
  if mesh.shape.get("fsdp", 1) == 1 and mesh.shape.get("model", 1) == 1:
    return
  bad = fully_replicated_params(params, shardings, min_bytes)
  if bad:
    raise UserError(
      f"Mesh {dict(mesh.shape)} shards parameters, but these over {min_bytes} bytes are fully "
      f"replicated (no logical rule maps any of their axes to fsdp/model): {bad}"
    )


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch array: leading (batch) dim split over ('data', 'fsdp').

  Args:
    mesh: the mesh.

  Returns:
    `NamedSharding(mesh, P(('data', 'fsdp')))`; trailing dims replicated.
  """
  return NamedSharding(mesh, P(BATCH_MESH_AXES))


def process_batch_shard(mesh: Mesh, process_index: int | None = None) -> tuple[int, int]:
  """Which slice of the global batch this process loads: `(shard_index, num_shards)`.

  Usually `(jax.process_index(), jax.process_count())`; when processes are replicas along the
  batch (e.g. `model` spans hosts) they share a shard and must load the same rows. Use it as
  SeqIO's `ShardInfo(index, num_shards)` and load `global_batch // num_shards` rows per step.

  Args:
    mesh: the mesh.
    process_index: default `jax.process_index()`.

  Returns:
    `(shard_index, num_shards)`.
  """
  process_index = jax.process_index() if process_index is None else process_index
  dp = data_parallel_size(mesh)
  index_map = batch_sharding(mesh).devices_indices_map((dp,))
  rows_by_process: dict[int, set[int]] = {}
  for device, (rows,) in index_map.items():
    rows_by_process.setdefault(device.process_index, set()).update(range(*rows.indices(dp)))
  shards = sorted({tuple(sorted(r)) for r in rows_by_process.values()})
  mine = tuple(sorted(rows_by_process[process_index]))
  return shards.index(mine), len(shards)


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns this process's numpy rows into global `jax.Array`s sharded over ('data', 'fsdp').

  Each process passes its own `global_batch // num_shards` rows (see `process_batch_shard`);
  on one process that is the whole batch.

  Args:
    local_batch: dict of numpy arrays with a leading batch dimension.
    mesh: the mesh.

  Returns:
    Dict of global arrays with the global batch size on axis 0.
  """
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }
