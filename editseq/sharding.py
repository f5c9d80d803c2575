"""Logical-axis sharding: a rules table from logical names to the mesh axes ("data", "fsdp", "tensor").

Parameters name their axes (`vocab`, `embed`, `heads`, ...) in `out_sharding` metadata and
activations through `constrain`; the rules below decide which mesh axes each name is split over, so
one table switches between data parallelism, FSDP (ZeRO-3 style: parameters split over `fsdp`,
gathered per layer by XLA) and tensor parallelism (Megatron-style heads/MLP split over `tensor`).

Meshes use `AxisType.Auto` axes: XLA's sharding propagation places every intermediate the
constraints do not pin, which keeps model code free of per-op sharding annotations.
"""
from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Logical name -> mesh axes. A name may list several mesh axes (its dimension is split over their
# product); a mesh axis already used by an earlier dimension of the same array is skipped.
DEFAULT_RULES: Rules = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    # Activations.
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # KV cache.
    ("cache_batch", BATCH_AXES),
    ("cache_length", None),
    ("cache_kv_heads", "tensor"),
)


class _RulesContext(threading.local):
  rules: Rules = DEFAULT_RULES


_context = _RulesContext()


@contextlib.contextmanager
def use_rules(rules: Rules) -> Iterator[None]:
  """Sets the rules `constrain` uses while tracing (default: DEFAULT_RULES)."""
  previous, _context.rules = _context.rules, tuple(rules)
  try:
    yield
  finally:
    _context.rules = previous


def current_rules() -> Rules:
  return _context.rules


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules | None = None,
                    mesh: Mesh | jax.sharding.AbstractMesh | None = None) -> PartitionSpec:
  """PartitionSpec for an array whose dimensions carry `logical_axes`.

  Unknown names raise; with a mesh, mesh axes absent from it are dropped (e.g. a rules table
  that mentions "tensor" used on a data-only mesh).
  """
  table = dict(current_rules() if rules is None else rules)
  mesh_names = set(mesh.axis_names) if mesh is not None else None
  used: set[str] = set()
  spec = []
  for name in logical_axes:
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no sharding rule")
    target = table[name]
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes
                 if a not in used and (mesh_names is None or a in mesh_names))
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return PartitionSpec(*spec)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` by logical names; a no-op outside `jax.set_mesh`."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, mesh=mesh))


def _mesh_shape(mesh_config: Mapping[str, Any], num_devices: int) -> tuple[int, int, int]:
  """Resolves the one allowed -1 ("fill") in (data, fsdp, tensor) and checks the product."""
  dcn = int(mesh_config.get("dcn_data", 1))
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  if dcn < 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh sizes must be positive or -1 (fill), got {dict(zip(MESH_AXES, sizes))},"
                     f" dcn_data={dcn}")
  if num_devices % dcn:
    raise ValueError(f"{num_devices} devices cannot form dcn_data={dcn} slices")
  per_slice = num_devices // dcn
  fills = [i for i, s in enumerate(sizes) if s == -1]
  if len(fills) > 1:
    raise ValueError("at most one mesh axis may be -1 (fill)")
  known = math.prod(s for s in sizes if s != -1)
  if fills:
    if per_slice % known:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide {per_slice} devices"
                       " per slice")
    sizes[fills[0]] = per_slice // known
  if math.prod(sizes) != per_slice:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} x dcn_data={dcn} needs "
                     f"{math.prod(sizes) * dcn} devices, have {num_devices}")
  return tuple(sizes)


def device_array(mesh_config: Mapping[str, Any], devices: Sequence[Any]) -> np.ndarray:
  """Devices arranged as the (data, fsdp, tensor) mesh; see `make_mesh`."""
  ici = _mesh_shape(mesh_config, len(devices))
  dcn = int(mesh_config.get("dcn_data", 1))
  if dcn == 1:
    return mesh_utils.create_device_mesh(ici, devices=devices, allow_split_physical_axes=True)
  # TPU slices carry slice_index; elsewhere (multi-host GPU) each process is one DCN granule.
  return mesh_utils.create_hybrid_device_mesh(
      ici, (dcn, 1, 1), devices=devices, allow_split_physical_axes=True,
      process_is_granule=not hasattr(devices[0], "slice_index"))


def make_mesh(mesh_config: Mapping[str, Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh with axes ("data", "fsdp", "tensor"), all `Auto`.

  `mesh_config` holds data/fsdp/tensor (one may be -1 = the rest) and dcn_data. With
  dcn_data > 1 the data axis spans slices (multi-slice / multi-host over DCN), so that the
  fsdp/tensor collectives stay inside a slice's fast interconnect.
  """
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(device_array(mesh_config, devices), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _logical_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
  axes = variable.get_metadata().get("out_sharding")
  return tuple(axes) if axes else (None,) * len(variable.shape)


def _check_divisible(path: str, shape, logical, spec: PartitionSpec, mesh: Mesh) -> None:
  for dim, name, axes in zip(shape, logical, spec):
    if axes is None:
      continue
    axes = (axes,) if isinstance(axes, str) else axes
    parts = math.prod(mesh.shape[a] for a in axes)
    if dim % parts:
      raise ValueError(
          f"{path}: dimension {name!r} of size {dim} is not divisible by mesh axes {axes} "
          f"(size {parts}); change the mesh or the sharding rule for {name!r}")


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules | None = None) -> nnx.State:
  """NamedSharding per variable of a (possibly abstract) NNX state, checking divisibility."""

  def to_sharding(path, variable):
    logical = _logical_axes(variable)
    spec = logical_to_spec(logical, rules, mesh)
    _check_divisible(jax.tree_util.keystr(path), variable.shape, logical, spec, mesh)
    return variable.replace(NamedSharding(mesh, spec))

  return jax.tree.map_with_path(to_sharding, state,
                                is_leaf=lambda x: isinstance(x, nnx.Variable))


def tree_shardings(tree: Any, logical_axes: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
  """NamedShardings for a plain pytree (e.g. the KV cache) given a matching tree of logical axes."""

  def to_sharding(path, x, logical):
    spec = logical_to_spec(logical, rules, mesh)
    _check_divisible(jax.tree_util.keystr(path), x.shape, logical, spec, mesh)
    return NamedSharding(mesh, spec)

  return jax.tree.map_with_path(to_sharding, tree, logical_axes)


def batch_sharding(mesh: Mesh, global_batch_size: int, rules: Rules | None = None,
                   ) -> NamedSharding:
  """Sharding of `[batch, length]` input arrays; raises if the batch does not divide."""
  spec = logical_to_spec(("act_batch", "act_length"), rules, mesh)
  _check_divisible("batch", (global_batch_size, 1), ("act_batch", "act_length"), spec, mesh)
  return NamedSharding(mesh, spec)
