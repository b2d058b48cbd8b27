"""Device mesh, logical axis rules and shardings. The only module that names mesh axes.

Models annotate parameters (`nn.with_logical_partitioning`) and activations (`constrain`) with
*logical* axis names; `config.sharding.rules` maps them to the mesh axes `data`, `fsdp`,
`tensor`. Logical names used in vft:
  activations: batch, time, length, embed, heads, kv, mlp, vocab
  weights:     embed, mlp, heads, kv, vocab, layers (scan axis), norm (small vectors)
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
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


def make_mesh(mesh_shape: dict | Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh with axes (data, fsdp, tensor) from `config.mesh` ({axis: size}, one size may be -1)."""
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
  dev = np.asarray(devices).reshape(sizes)
  return Mesh(dev, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


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


_ACTIVATION_RULES: list = []


@contextlib.contextmanager
def activation_rules(rules):
  """Rules for `constrain` while tracing, without flax's `nn.logical_axis_rules` (which also
  re-constrains every boxed parameter and breaks under `nn.scan`). Trace the train step inside
  `jax.set_mesh(mesh), activation_rules(rules)` so activations stay batch-sharded."""
  _ACTIVATION_RULES.append(tuple(rules))
  try:
    yield
  finally:
    _ACTIVATION_RULES.pop()


def constrain(x: jax.Array, logical_names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op unless a mesh (`jax.set_mesh`) and rules
  (`activation_rules` or `nn.logical_axis_rules`) are active while tracing."""
  rules = _ACTIVATION_RULES[-1] if _ACTIVATION_RULES else nn.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  spec = nn.logical_to_mesh_axes(tuple(logical_names), rules)
  return jax.lax.with_sharding_constraint(x, spec)


def num_batch_shards(mesh: Mesh, rules=DEFAULT_RULES) -> int:
  spec = nn.logical_to_mesh_axes(("batch",), rules)[0]
  axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
  return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
