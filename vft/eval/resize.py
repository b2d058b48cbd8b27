"""Frame resizing for metric networks (I3D wants 224x224).

Conventions (they move FVD by a few percent, see docs/evaluation notes):
  "tf1"       TF1 `tf.image.resize_bilinear` (align_corners=False, half_pixel_centers=False),
              the FVD TF reference: output pixel i samples input coordinate i * in / out, no
              anti-aliasing. Default for FVD.
  "bilinear"  `jax.image.resize(..., "bilinear")`: half-pixel centres, anti-aliased when
              downsampling (like PyTorch `F.interpolate(align_corners=False)` when upsampling).
Both resize every frame straight to the target size (non-square frames are squashed); centre
cropping, if wanted, is done before (`center_crop`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("tf1", "bilinear")


def tf1_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """`[out_size, in_size]` float32 interpolation weights of TF1 legacy bilinear resizing."""
  if in_size < 1 or out_size < 1:
    raise ValueError(f"tf1_bilinear_matrix: sizes must be >= 1, got {in_size} -> {out_size}")
  src = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
  lo = np.floor(src).astype(np.int64)
  frac = src - lo
  hi = np.minimum(lo + 1, in_size - 1)
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(m, (np.arange(out_size), hi), frac)
  return m.astype(np.float32)


def resize_frames(x: jax.Array, size: tuple[int, int], method: str = "tf1") -> jax.Array:
  """Resizes the two axes before the last one.

  Args:
    x: float `[..., H, W, C]`.
    size: (H', W').
    method: one of METHODS.
  Returns:
    float32 `[..., H', W', C]`.
  """
  x = jnp.asarray(x, jnp.float32)
  if x.ndim < 3:
    raise ValueError(f"resize_frames: expected [..., H, W, C], got shape {x.shape}")
  if method not in METHODS:
    raise ValueError(f"resize method {method!r}: expected one of {METHODS}")
  h, w = x.shape[-3], x.shape[-2]
  if (h, w) == tuple(size):
    return x
  if method == "tf1":
    mh = jnp.asarray(tf1_bilinear_matrix(h, size[0]))
    mw = jnp.asarray(tf1_bilinear_matrix(w, size[1]))
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("ph,...hwc->...pwc", mh, x, precision=hp)
    return jnp.einsum("qw,...pwc->...pqc", mw, x, precision=hp)
  return jax.image.resize(x, (*x.shape[:-3], size[0], size[1], x.shape[-1]), "bilinear")


def center_crop(x: np.ndarray) -> np.ndarray:
  """Largest centred square of `[..., H, W, C]` frames."""
  h, w = x.shape[-3], x.shape[-2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  return x[..., top:top + s, left:left + s, :]
