"""rFID: the Fréchet distance between per-frame Inception features of originals and
reconstructions (all frames of all clips pooled, as in video-tokenizer papers).

No FID-Inception weights ship offline (jax-fid, pytorch-fid, clean-fid all download them), so
the network is supplied by the user: `load_extractor(path)` expects the jax-fid Flax
InceptionV3 parameters converted to a plain `.npz` (`vft.eval.weights.save_npz`; the
`jax_fid` package provides the module). Without a path rFID is skipped with a message. The
plumbing (`FrameFeatures`, statistics, distance) is network-agnostic and tested on a small
random network.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vft.eval import weights as weights_lib
from vft.eval.frechet import FeatureStats

SKIP_MESSAGE = ("rFID skipped: no Inception weights given (--fid_weights=PATH.npz, the jax-fid "
                "InceptionV3 params converted to .npz); none ship offline")


class FrameFeatures:
  """Pooled features of single frames.

  Args:
    apply_fn: (params, images [N, S, S, 3] in [-1, 1]) -> features [N, ..., D] (flattened).
    params: its parameters.
    size: frames are resized to size x size (bilinear, half-pixel, no anti-aliasing as in
      jax-fid's `compute_statistics`; None: keep).
    frame_batch: frames per call.
  """

  def __init__(self, apply_fn: Callable, params: Any, *, size: int | None = 299,
               frame_batch: int = 64, name: str = "custom"):
    self.params, self.size, self.frame_batch, self.name = params, size, int(frame_batch), name

    def feats(params, frames):
      x = frames
      if size is not None and x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear", antialias=False)
      f = apply_fn(params, x * 2.0 - 1.0)
      return f.reshape(f.shape[0], -1).astype(jnp.float32)

    self._feats = jax.jit(feats)

  def __call__(self, videos) -> np.ndarray:
    """videos [B, T, H, W, 3] float in [0, 1] -> features [B * T, D]."""
    x = jnp.asarray(videos, jnp.float32)
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"FrameFeatures: expected videos [B, T, H, W, 3], got {x.shape}")
    x = x.reshape(-1, *x.shape[2:])
    return np.concatenate([np.asarray(self._feats(self.params, x[i:i + self.frame_batch]))
                           for i in range(0, x.shape[0], self.frame_batch)])

  def new_stats(self) -> FeatureStats:
    return FeatureStats(meta={"network": self.name, "size": self.size, "per": "frame"})


def load_extractor(path: str | os.PathLike | None) -> FrameFeatures | None:
  """The FID InceptionV3 from a converted .npz, or None (rFID skipped) when path is empty."""
  if not path:
    return None
  try:
    from jax_fid import inception  # not a dependency: only needed for real rFID numbers
  except ImportError:
    raise ImportError(f"--fid_weights {path}: the FID InceptionV3 module comes from the PyPI "
                      "package jax-fid (pip install jax-fid); it is not installed") from None
  params = weights_lib.load_npz(path)
  model = inception.InceptionV3(pretrained=False)
  return FrameFeatures(lambda p, x: model.apply(p, x, train=False), params,
                       name=f"inception_v3_fid ({os.path.basename(os.fspath(path))})")

