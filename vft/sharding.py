"""Device mesh, logical axis rules and shardings. The only module that names mesh axes.

Models annotate parameters (`nn.with_logical_partitioning`) and activations (`constrain`) with
*logical* axis names; `config.sharding.rules` maps them to the mesh axes `data`, `fsdp`,
`tensor`. Logical names used in vft:
  activations: batch, time, length, embed, heads, kv, mlp, vocab
  weights:     embed, mlp, heads, kv, vocab, layers (scan axis), norm (small vectors)

`constrain` only acts while the rules and the mesh are active at trace time: every jitted step
or model call that should be sharded is built with `jit(fn, mesh, rules, ...)`, which traces
`fn` under `nn.logical_axis_rules(rules)` and calls it under `jax.set_mesh(mesh)`.

Meshes come from `jax.make_mesh` (topology-aware), or with `config.mesh_dcn` (multi-slice /
multi-host data parallelism) from `mesh_utils.create_hybrid_device_mesh`. Along the batch axes
(data, fsdp) the devices are ordered by process: process p's devices hold one contiguous block
of the global batch, process 0 the first rows (`batch_sharding`; the multi-process input
pipeline relies on it).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Default logical -> mesh rules: batch over (data, fsdp); weights FSDP-sharded over their
# `embed` dim, tensor-parallel over heads / mlp / vocab.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("time", None),
    ("layers", None),
    ("norm", None),
)


def make_mesh(mesh_shape: dict | Any, devices: Sequence[jax.Device] | None = None,
              dcn_shape: dict | Any | None = None) -> Mesh:
  """Mesh with axes (data, fsdp, tensor) from `config.mesh` ({axis: size}, one size may be -1).

  dcn_shape (`config.mesh_dcn`, {axis: size}, all 1 by default): how many slices (TPU) or
  processes (other platforms) each axis spans; `config.mesh` is the total size, so each axis
  size must be divisible by its DCN size. With a DCN size above 1, devices are laid out by
  `create_hybrid_device_mesh` (each slice's part by its ICI topology), else by `jax.make_mesh`.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(mesh_shape.get(a, 1)) for a in MESH_AXES]
  unknown = set(dict(mesh_shape).keys()) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"config.mesh: unknown axes {sorted(unknown)}; expected {MESH_AXES}")
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if -1 in sizes:
    rest = int(np.prod([s for s in sizes if s != -1]))
    if len(devices) % rest:
      raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} does not divide "
                       f"{len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // rest
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} "
                     f"devices, {len(devices)} available")
  dcn = dict(dcn_shape or {})
  unknown = set(dcn) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"config.mesh_dcn: unknown axes {sorted(unknown)}; expected {MESH_AXES}")
  dcn_sizes = [int(dcn.get(a, 1)) for a in MESH_AXES]
  if any(d < 1 or s % d for s, d in zip(sizes, dcn_sizes)):
    raise ValueError(f"config.mesh_dcn {dict(zip(MESH_AXES, dcn_sizes))}: every size must be "
                     f">= 1 and divide the config.mesh size {dict(zip(MESH_AXES, sizes))}")
  if any(d > 1 for d in dcn_sizes):
    ici = [s // d for s, d in zip(sizes, dcn_sizes)]
    attr = "slice_index" if hasattr(devices[0], "slice_index") else "process_index"
    unit = "slices" if attr == "slice_index" else "processes"
    granules = len({getattr(d, attr) for d in devices})
    if int(np.prod(dcn_sizes)) != granules:
      raise ValueError(f"config.mesh_dcn {dict(zip(MESH_AXES, dcn_sizes))} spans "
                       f"{int(np.prod(dcn_sizes))} {unit}, but the devices belong to {granules}")
    dev = mesh_utils.create_hybrid_device_mesh(ici, dcn_sizes, devices,
                                               process_is_granule=attr == "process_index")
  else:
    dev = jax.make_mesh(sizes, MESH_AXES, devices=devices).devices
  return Mesh(process_ordered(dev), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_from_config(config) -> Mesh:
  """The mesh of `config.mesh` and `config.mesh_dcn` (absent in older configs: one slice)."""
  return make_mesh(config.mesh, dcn_shape=config.get("mesh_dcn"))


def process_ordered(devices: np.ndarray) -> np.ndarray:
  """devices [data, fsdp, tensor] -> the same with the batch positions (data x fsdp, row-major)
  stably sorted by process index, so every process holds a contiguous block of the batch and
  process 0 the first rows. A layout that already has the property is returned unchanged."""
  d, f, t = devices.shape
  groups = devices.reshape(d * f, t)
  order = np.argsort([min(x.process_index for x in g) for g in groups], kind="stable")
  return groups[order].reshape(d, f, t)


def rules_from_config(rules: Any | None) -> tuple[tuple[str, Any], ...]:
  if not rules:
    return DEFAULT_RULES
  return tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in rules)


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules, shapes: Any = None) -> Any:
  """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`.

  With `shapes` (a matching tree of arrays / ShapeDtypeStructs), a mesh axis that does not
  divide its array dimension is dropped for that dimension (e.g. the SwiGLU width 4778 of
  d18_d28 on a tensor axis of 4), so odd sizes replicate instead of failing.
  """
  shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, rules)
  if shapes is None:
    return shardings
  return jax.tree_util.tree_map(
      lambda s, x: NamedSharding(mesh, fit_spec(s.spec, x.shape, mesh)), shardings, shapes,
      is_leaf=lambda s: isinstance(s, NamedSharding))


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops mesh axes from `spec` entries whose product does not divide the dimension."""
  out = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
    kept = []
    for a in axes:
      if dim % (int(np.prod([mesh.shape[k] for k in kept])) * mesh.shape[a]) == 0:
        kept.append(a)
    out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return P(*out)


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES, ndim: int = 1) -> NamedSharding:
  """Sharding of a batch-major array: leading axis over the `batch` rule's mesh axes."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def constrain(x: jax.Array, logical_names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op unless a mesh (`jax.set_mesh`) and rules
  (`nn.logical_axis_rules`, as `jit` enters them) are active while tracing."""
  rules = nn.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  spec = nn.logical_to_mesh_axes(tuple(logical_names), rules)
  return jax.lax.with_sharding_constraint(x, fit_spec(spec, x.shape, mesh))


class Jitted:
  """A `jax.jit` of `fn` traced under `nn.logical_axis_rules(rules)` and called (and lowered)
  under `jax.set_mesh(mesh)`, so `constrain` takes effect; see `jit`."""

  def __init__(self, fn: Callable, mesh: Mesh, rules, **jit_kwargs):
    @functools.wraps(fn)
    def traced(*args, **kwargs):
      with nn.logical_axis_rules(rules):
        return fn(*args, **kwargs)
    self.mesh, self.rules = mesh, rules
    self._jitted = jax.jit(traced, **jit_kwargs)

  def __call__(self, *args, **kwargs):
    with jax.set_mesh(self.mesh):
      return self._jitted(*args, **kwargs)

  def lower(self, *args, **kwargs) -> jax.stages.Lowered:
    """For inspection: `.as_text()` holds the `sdy.sharding_constraint` ops of `constrain`."""
    with jax.set_mesh(self.mesh):
      return self._jitted.lower(*args, **kwargs)

  def _cache_size(self) -> int:
    return self._jitted._cache_size()


def jit(fn: Callable, mesh: Mesh, rules, **jit_kwargs) -> Jitted:
  """`jax.jit(fn, **jit_kwargs)` whose trace sees the logical axis `rules` and `mesh`.

  The rules are entered inside the traced function (jit traces lazily at the first call, and a
  rules context around `jax.jit(...)` alone would be gone by then); the mesh is set around
  every call, so it is part of the compilation cache key."""
  return Jitted(fn, mesh, rules, **jit_kwargs)


def num_batch_shards(mesh: Mesh, rules=DEFAULT_RULES) -> int:
  spec = nn.logical_to_mesh_axes(("batch",), rules)[0]
  axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
  return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def per_shard(fn: Callable, logical_names: Sequence[str | None], *arrays: jax.Array) -> jax.Array:
  """fn(*local_arrays) in a `jax.shard_map` over the active mesh: every array and the result
  (shaped like arrays[0]) are split by `logical_names` under the active rules (mesh axes that
  do not divide a dimension dropped, as in `constrain`); the other mesh axes replicate. Without
  an active mesh and rules, just fn(*arrays). For kernels that must see whole shards (Pallas)."""
  rules = nn.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return fn(*arrays)
  spec = nn.logical_to_mesh_axes(tuple(logical_names), rules)
  specs = tuple(fit_spec(spec, a.shape, mesh) for a in arrays)
  return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=specs[0], check_vma=False)(*arrays)
