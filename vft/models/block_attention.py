"""Block-sparse attention for static masks: `model.attention_impl="blocked"`.

Same semantics as the einsum path of `transformer.Attention` (q, k already QK-normed, logits
`scale * q k^T` in fp32, a static boolean mask [S, S] shared by all heads and samples), but only
the parts of the [S, S] logits the mask can reach are computed:

- Plan (numpy, at trace time, cached per mask): the query rows are cut into consecutive groups;
  a group of rows [q0, q1) attends the key span [k0, k1) that covers every key its rows may see.
  Group boundaries are chosen by dynamic programming over the rows where a row's key span
  changes, minimising `sum(rows x span) + OVERHEAD x groups` (OVERHEAD: the fixed cost of one
  more, smaller matmul, in logit elements). For the time-causal masks of `vft.models.masks` the
  groups come out as latent frames (frame t attends the prefix of frames 0..t, about
  (T + 1) / 2T of the dense work), for `full` as one dense group, for `causal` as ~sqrt(2 x
  OVERHEAD)-row strips under the diagonal.
- Compute: heads-major ([B, H, S, Dh], one transpose in and out: measured 1.5-2x faster on
  XLA:CPU than slicing [B, S, H, Dh]); per group, dense attention over its key span with the
  exact element mask of that [q1 - q0, k1 - k0] tile (skipped when the tile is all True), fp32
  logits (`preferred_element_type`), e = exp(logits - row max) cast to v's dtype, an
  fp32-accumulated `e @ v` divided by the row sums of e (the normalisation runs on [q, Dh], not
  [q, k]); the group outputs are concatenated along the sequence. Gradients are those of this
  program (the row max is a stop-gradient shift: softmax does not depend on it).
- With a `logit_bound` (QK-normed attention: |scale q . k| <= scale * head_dim) the row max is
  not needed: e = exp(logits - bound), and every group runs over key tiles (`KEY_TILE`),
  accumulating e @ v and the row sums tile by tile; tiles the mask hides for every row of the
  group are skipped.
- The mask may be rectangular [Sq, Sk] (queries of a subset of the rows: the last block of the
  encoder / decoder computes only the rows its output keeps).
- Every row must see at least one key (true of all `masks.MASK_MODES`); the dense paths would
  give such a row the mean of all values, here it is an error.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

OVERHEAD = 64 * 64  # logit elements one extra group costs (CPU-measured: the demo train step
# ran 1.27x faster than einsum with it, ~1.1x with 128 * 128 (2 groups per mask at S = 400))


KEY_TILE = 512  # keys per tile with a logit bound (320-640 measured equal at S = 1600)
MAX_LOGIT_BOUND = 40.0  # exp(-2 x 40) is still a normal fp32 number


@dataclasses.dataclass(frozen=True)
class Group:
  """Query rows [q0, q1) attend key columns [k0, k1); `dense`: the tile's mask is all True."""
  q0: int
  q1: int
  k0: int
  k1: int
  dense: bool


def _key_spans(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """mask [Sq, Sk] -> (first allowed key, last allowed key + 1) per query row."""
  if mask.ndim != 2:
    raise ValueError(f"attention_impl='blocked': mask must be [Sq, Sk], got shape {mask.shape}")
  seen = mask.any(axis=1)
  if not seen.all():
    raise ValueError(f"attention_impl='blocked': query row {int(np.argmin(seen))} of the mask "
                     "attends no key")
  s = mask.shape[1]
  return mask.argmax(axis=1), s - mask[:, ::-1].argmax(axis=1)


def plan(mask: np.ndarray, overhead: int = OVERHEAD) -> tuple[Group, ...]:
  """The row groups of `mask` [Sq, Sk] bool (see the module docstring)."""
  mask = np.asarray(mask, dtype=bool)
  start, end = _key_spans(mask)
  s = mask.shape[0]
  # Candidate boundaries: rows whose span differs from the previous row's (runs of equal spans).
  change = np.flatnonzero((start[1:] != start[:-1]) | (end[1:] != end[:-1])) + 1
  bounds = np.concatenate([[0], change, [s]])
  run_start, run_end = start[bounds[:-1]], end[bounds[:-1]]
  n = bounds.size - 1
  best = np.zeros(n + 1)
  prev = np.zeros(n + 1, dtype=np.int64)
  for j in range(1, n + 1):  # best[j]: cheapest cover of runs [0, j); the last group is [i, j)
    k1 = np.maximum.accumulate(run_end[:j][::-1])[::-1]
    k0 = np.minimum.accumulate(run_start[:j][::-1])[::-1]
    cost = best[:j] + (bounds[j] - bounds[:j]) * (k1 - k0) + overhead
    prev[j] = int(np.argmin(cost))
    best[j] = cost[prev[j]]
  cuts, j = [], n
  while j > 0:
    cuts.append((prev[j], j))
    j = prev[j]
  groups = []
  for i, j in reversed(cuts):
    q0, q1 = int(bounds[i]), int(bounds[j])
    k0, k1 = int(start[q0:q1].min()), int(end[q0:q1].max())
    groups.append(Group(q0, q1, k0, k1, bool(mask[q0:q1, k0:k1].all())))
  return tuple(groups)


@functools.lru_cache(maxsize=64)
def _cached_plan(mask, overhead: int) -> tuple[Group, ...]:
  return plan(mask.array, overhead)


def work_fraction(groups: tuple[Group, ...], seq_len: int, key_len: int | None = None) -> float:
  """Logit elements computed / (Sq x Sk)."""
  return sum((g.q1 - g.q0) * (g.k1 - g.k0) for g in groups) / (seq_len * (key_len or seq_len))


def _tiles(g: Group, tile: int) -> list[tuple[int, int]]:
  """The key span of `g` cut into consecutive tiles of at most `tile` keys."""
  return [(k0, min(k0 + tile, g.k1)) for k0 in range(g.k0, g.k1, tile)]


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask, scale: float,
              logit_bound: float | None = None) -> jax.Array:
  """q [B, Sq, H, Dh], k, v [B, Sk, H, Dh], mask [Sq, Sk] (a `masks.StaticMask`) -> [B, Sq, H,
  Dh] in v.dtype.

  logit_bound: a static bound the caller guarantees on |scale * q . k| (QK-normed attention:
  scale * head_dim), or None. With it the softmax needs no row max (exp(logit - bound) lies in
  [exp(-2 bound), 1]), so each group runs over key tiles of KEY_TILE keys, accumulating
  e @ v and the row sums of e tile by tile (the [q, k] intermediates stay cache-sized: 1.5x
  faster on XLA:CPU at S = 1600).
  """
  arr = mask.array
  if arr.shape != (q.shape[1], k.shape[1]):
    raise ValueError(f"attention_impl='blocked': mask {arr.shape} does not match the query / "
                     f"key lengths {(q.shape[1], k.shape[1])}")
  if logit_bound is not None and not 0 < logit_bound <= MAX_LOGIT_BOUND:
    logit_bound = None  # exp(-2 bound) would underflow: fall back to the row max
  # Heads-major [B, H, S, Dh]; the scale goes on q (S x Dh, not S x S multiplies; exact for
  # the power-of-two scales 8 / head_dim of the release).
  qt, kt, vt = (a.transpose(0, 2, 1, 3) for a in (q * jnp.asarray(scale, q.dtype), k, v))
  neg = jnp.finfo(jnp.float32).min

  def scores(g, k0, k1):  # fp32 logits [B, H, g.q1 - g.q0, k1 - k0], masked
    logits = jnp.einsum("bhqd,bhkd->bhqk", qt[:, :, g.q0:g.q1], kt[:, :, k0:k1],
                        preferred_element_type=jnp.float32)
    tile = arr[g.q0:g.q1, k0:k1]
    return logits if g.dense or tile.all() else jnp.where(tile[None, None], logits, neg)

  def values(e, k0, k1):  # e [B, H, q, k] -> fp32 e @ v [B, H, q, Dh]
    return jnp.einsum("bhqk,bhkd->bhqd", e.astype(v.dtype), vt[:, :, k0:k1],
                      preferred_element_type=jnp.float32)

  outs = []
  for g in _cached_plan(mask, OVERHEAD):
    if logit_bound is None:
      logits = scores(g, g.k0, g.k1)
      # exp(l - max) @ v / sum: the normalisation runs on [q, Dh], not [q, k].
      e = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
      num, den = values(e, g.k0, g.k1), e.sum(axis=-1, keepdims=True)
    else:
      num = den = 0.0
      for k0, k1 in _tiles(g, KEY_TILE):
        if not arr[g.q0:g.q1, k0:k1].any():
          continue
        e = jnp.exp(scores(g, k0, k1) - logit_bound)
        num, den = num + values(e, k0, k1), den + e.sum(axis=-1, keepdims=True)
    outs.append((num / den).astype(v.dtype))
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
  return out.transpose(0, 2, 1, 3)
