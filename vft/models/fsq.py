"""Finite scalar quantisation (FSQ, Mentzer et al. 2023) exactly as the official release.

For levels L_k (default [8, 8, 8, 5, 5, 5] -> 64 000 codes):
  half_l = (L-1) * (1 + 1e-3) / 2;  offset = 0.5 if L even else 0;  shift = atanh(offset / half_l)
  bounded = tanh(z + shift) * half_l - offset;  q = round(bounded) / (L // 2)    (round half even)
  ids: code_k = q_k * (L//2) + L//2 in [0, L-1];  id = sum_k code_k * basis_k,
       basis = cumprod([1, L_0, ..., L_{d-2}])   (channel 0 is the least significant digit)
All maths in float32; gradients pass straight through the rounding.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_LEVELS = (8, 8, 8, 5, 5, 5)


def _check_levels(levels: Sequence[int]) -> np.ndarray:
  lv = np.asarray(levels, dtype=np.int64)
  if lv.ndim != 1 or lv.size == 0 or np.any(lv < 2):
    raise ValueError(f"fsq levels must be a non-empty list of ints >= 2, got {list(levels)}")
  return lv


def codebook_size(levels: Sequence[int]) -> int:
  return int(np.prod(_check_levels(levels)))


def _basis(levels: Sequence[int]) -> np.ndarray:
  lv = _check_levels(levels)
  return np.concatenate([[1], np.cumprod(lv[:-1])]).astype(np.int64)


def _tanh_params(lv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(half_l, offset, shift) per channel, float64 (module doc)."""
  lvf = lv.astype(np.float64)
  half_l = (lvf - 1) * (1 + 1e-3) / 2
  offset = np.where(lv % 2 == 0, 0.5, 0.0)
  return half_l, offset, np.arctanh(offset / half_l)


def logit_shift(levels: Sequence[int] = DEFAULT_LEVELS) -> np.ndarray:
  """float32 [d]: the per-channel shift FSQ adds to z before tanh (non-zero for even levels)."""
  return _tanh_params(_check_levels(levels))[2].astype(np.float32)


def quantize(z: jax.Array, levels: Sequence[int] = DEFAULT_LEVELS) -> jax.Array:
  """z [..., d] (any real) -> codes [..., d] on the FSQ grid in [-1, 1] (float32, STE)."""
  lv = _check_levels(levels)
  if z.shape[-1] != lv.size:
    raise ValueError(f"fsq: input has {z.shape[-1]} channels, levels {list(lv)} need {lv.size}")
  z = z.astype(jnp.float32)
  half_l, offset, shift = (a.astype(np.float32) for a in _tanh_params(lv))
  bounded = jnp.tanh(z + shift) * half_l - offset
  rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
  return rounded / (lv // 2).astype(np.float32)


def codes_to_ids(codes: jax.Array, levels: Sequence[int] = DEFAULT_LEVELS) -> jax.Array:
  """codes [..., d] on the grid -> int32 ids [...] (channel 0 least significant)."""
  lv = _check_levels(levels)
  half = (lv // 2).astype(np.float32)
  digits = jnp.round(codes.astype(jnp.float32) * half + half).astype(jnp.int32)
  return jnp.sum(digits * _basis(lv).astype(np.int32), axis=-1)


def ids_to_codes(ids: jax.Array, levels: Sequence[int] = DEFAULT_LEVELS) -> jax.Array:
  """int ids [...] -> codes [..., d] (bit-identical to `quantize`'s output)."""
  lv = _check_levels(levels)
  ids = jnp.asarray(ids).astype(jnp.int32)[..., None]
  digits = (ids // _basis(lv).astype(np.int32)) % lv.astype(np.int32)
  half = (lv // 2).astype(np.float32)
  return (digits.astype(jnp.float32) - half) / half


def check_ids(ids: np.ndarray, levels: Sequence[int] = DEFAULT_LEVELS, what: str = "tokens"):
  """Raises ValueError unless every id lies in [0, codebook_size)."""
  n = codebook_size(levels)
  ids = np.asarray(ids)
  if ids.size and (ids.min() < 0 or ids.max() >= n):
    raise ValueError(f"{what}: ids must lie in [0, {n}), got range [{ids.min()}, {ids.max()}]")
