"""Attention masks built from the (latent frame, slot) structure of an interleaved sequence.

A sample's sequence is T blocks of L = P + N tokens: P "prefix" slots (the h*w patch tokens of
a latent frame) followed by N "last" slots (the frame's registers):
  [p(0, 0..P-1), r(0, 0..N-1), p(1, ...), r(1, ...), ...].
For token i write f(i) = i // L (latent frame) and w(i) = i % L (slot). Query q may attend
key k iff:

  full                     always
  causal                   k <= q
  time_block_causal        f(k) <= f(q)
  time_block_causal_last   f(k) < f(q), or f(k) == f(q) and (w(k) <= w(q) or w(k) < P)

`time_block_causal_last` is the encoder's mask: time-causal across frames, full over a frame's
patches, causal over its registers; patches do not see their own frame's registers.
"""
from __future__ import annotations

import jax
import numpy as np

MASK_MODES = ("full", "causal", "time_block_causal", "time_block_causal_last")


def make_mask(mode: str, num_frames: int, prefix_len: int, last_len: int) -> np.ndarray:
  """Boolean mask [S, S] (True = may attend), S = num_frames * (prefix_len + last_len).

  Built with numpy at trace time: the structure is static, so the mask is a constant.
  """
  if mode not in MASK_MODES:
    raise ValueError(f"mask mode {mode!r} is unknown; expected one of {MASK_MODES}")
  if num_frames < 1 or prefix_len < 0 or last_len < 0 or prefix_len + last_len < 1:
    raise ValueError(
        f"mask: need num_frames >= 1 and a non-empty block, got num_frames={num_frames}, "
        f"prefix_len={prefix_len}, last_len={last_len}")
  block = prefix_len + last_len
  idx = np.arange(num_frames * block)
  q, k = idx[:, None], idx[None, :]
  fq, fk = q // block, k // block
  wq, wk = q % block, k % block
  if mode == "full":
    return np.ones((idx.size, idx.size), dtype=bool)
  if mode == "causal":
    return k <= q
  if mode == "time_block_causal":
    return fk <= fq
  same = fk == fq
  return (fk < fq) | (same & ((wk <= wq) | (wk < prefix_len)))


@jax.tree_util.register_static
class StaticMask:
  """A boolean mask [Sq, Sk] carried as static pytree metadata (hashable, no array leaves), for
  the attention impls that need the mask's structure at trace time (splash, blocked)."""

  def __init__(self, mask: np.ndarray):
    self.array = np.asarray(mask, dtype=bool)
    self._key = (self.array.shape, np.packbits(self.array).tobytes())

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, StaticMask) and self._key == other._key

  def rows(self, rows: np.ndarray) -> "StaticMask":
    """The mask of the query rows `rows` (static indices): [len(rows), Sk]."""
    return StaticMask(self.array[np.asarray(rows)])


def static_mask(mask) -> StaticMask:
  """mask [S, S] bool (numpy or a concrete array) -> StaticMask; a traced mask is an error
  (the rows of a subset of queries: `StaticMask.rows`)."""
  if isinstance(mask, StaticMask):
    return mask
  if isinstance(mask, jax.core.Tracer):
    raise ValueError("attention_impl='splash'/'blocked' needs a static mask (numpy, e.g. "
                     "vft.models.masks.make_mask); got a traced array")
  mask = np.asarray(mask)
  if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
    raise ValueError(f"attention_impl='splash'/'blocked': mask must be [S, S], got shape "
                     f"{mask.shape}")
  return StaticMask(mask)
