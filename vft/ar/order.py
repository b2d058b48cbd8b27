"""Token grids <-> AR sequences (paper C.3).

ids [B, T', N]: N register tokens (coarse to fine) per latent frame. With a budget K only the
first K tokens of every frame are kept, so a sequence holds T' * K tokens:
  time_first (default): the first token of every frame, then the second, ...: seq[k * T' + t];
    any prefix of K * T' tokens is the budget-K sequence (one model serves every budget).
  depth_first: all K tokens of frame 0, then frame 1, ...: seq[t * K + k].
Works on numpy arrays (host data pipelines) and jax arrays alike.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

ORDERS = ("time_first", "depth_first")


def _xp(a):
  return np if isinstance(a, np.ndarray) else jnp


def check_order(order: str):
  if order not in ORDERS:
    raise ValueError(f"AR order {order!r} unknown; expected one of {ORDERS}")


def to_sequence(ids, order: str = "time_first", budget: int | None = None):
  """ids [B, T', N] -> seq [B, T' * K] (K = budget, None: N)."""
  check_order(order)
  if ids.ndim != 3:
    raise ValueError(f"to_sequence: ids shape {ids.shape}, expected [B, T', N]")
  b, t, n = ids.shape
  k = n if budget is None else int(budget)
  if not 1 <= k <= n:
    raise ValueError(f"to_sequence: budget {budget} outside [1, {n}] (tokens per frame)")
  ids = ids[:, :, :k]
  if order == "time_first":
    ids = _xp(ids).swapaxes(ids, 1, 2)
  return ids.reshape(b, t * k)


def from_sequence(seq, num_frames: int, budget: int, order: str = "time_first"):
  """seq [B, T' * K] -> ids [B, T', K]: the inverse of `to_sequence`."""
  check_order(order)
  b, length = seq.shape
  t, k = int(num_frames), int(budget)
  if length != t * k:
    raise ValueError(f"from_sequence: sequence length {length} != {t} frames x budget {k}")
  if order == "time_first":
    return _xp(seq).swapaxes(seq.reshape(b, k, t), 1, 2)
  return seq.reshape(b, t, k)
