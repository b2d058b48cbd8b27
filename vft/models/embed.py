"""Embedding pieces: patchify, patch embedding, learnable positional tables, registers and the
flow timestep embedder."""
from __future__ import annotations

from typing import Any, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vft.models.transformer import dense_init

Dtype = Any
trunc02 = nn.initializers.truncated_normal(0.02)


def patchify(x: jax.Array, patch: Sequence[int]) -> jax.Array:
  """[B, T, H, W, C] -> [B, T/pt, H/ph, W/pw, pt*ph*pw*C], flattened in (pt, ph, pw, c) order."""
  pt, ph, pw = patch
  b, t, h, w, _ = x.shape
  if t % pt or h % ph or w % pw:
    raise ValueError(f"patchify: latents of shape {tuple(x.shape)} are not divisible by the patch "
                     f"size {tuple(patch)}")
  return einops.rearrange(x, "b (t pt) (h ph) (w pw) c -> b t h w (pt ph pw c)",
                          pt=pt, ph=ph, pw=pw)


def unpatchify(x: jax.Array, patch: Sequence[int]) -> jax.Array:
  """Inverse of `patchify`: [B, T, h, w, pt*ph*pw*C] -> [B, T*pt, h*ph, w*pw, C]."""
  pt, ph, pw = patch
  return einops.rearrange(x, "b t h w (pt ph pw c) -> b (t pt) (h ph) (w pw) c",
                          pt=pt, ph=ph, pw=pw)


class PatchEmbed(nn.Module):
  """Linear(pt*ph*pw*C -> D, bias) on patchified latents: [B,T,H,W,C] -> [B,T',h,w,D]."""
  dim: int
  patch: tuple[int, int, int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(self.dim, dtype=self.dtype, kernel_init=dense_init((None, "embed")),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                    name="patch_proj")(patchify(x, self.patch))


class LearnedPosEmb(nn.Module):
  """Additive learned positional embedding, factorised over n axes (`learnable_sum` / `_prod`).

  Parameter `posembs` [n_axes, max_size, D]; for a grid (s_0, ..., s_{n-1}) the embedding of
  position (i_0, ...) is posembs[0, i_0] (+) ... (+) posembs[n-1, i_{n-1}], (+) = sum or product
  (3D: (E1[h] (+) E2[w]) (+) E0[t], the release's order).
  """
  num_axes: int
  max_size: int
  init_std: float = 0.02
  combine: str = "sum"  # "sum" (learnable_sum) or "prod" (learnable_prod)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, s_0, ..., s_{n-1}, D] -> x + posemb."""
    grid, dim = x.shape[1:-1], x.shape[-1]
    if len(grid) != self.num_axes:
      raise ValueError(f"posemb: expected {self.num_axes} grid axes, got shape {tuple(x.shape)}")
    if max(grid) > self.max_size:
      raise ValueError(f"posemb: grid {tuple(grid)} exceeds the table size {self.max_size} "
                       f"(config.model.posemb_max)")
    if self.combine not in ("sum", "prod"):
      raise ValueError(f"posemb: combine must be 'sum' or 'prod', got {self.combine!r}")
    op = jnp.add if self.combine == "sum" else jnp.multiply
    init = nn.initializers.truncated_normal(self.init_std)
    table = self.param("posembs", nn.with_logical_partitioning(init, (None, None, "embed")),
                       (self.num_axes, self.max_size, dim))
    tabs = [table[k, :s] for k, s in enumerate(grid)]
    if self.num_axes == 3:
      emb = op(op(tabs[1][:, None], tabs[2][None, :])[None], tabs[0][:, None, None])
    else:
      emb = tabs[0]
      for k in range(1, self.num_axes):
        emb = op(emb[..., None, :], tabs[k].reshape((1,) * k + (grid[k], dim)))
    return x + emb.astype(x.dtype)[None]


def sincos_2d_table(rows: int, cols: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
  """The release's fixed 2D sin-cos table [rows, cols, D] (MoCo-v3 style), quirk included.

  Position (a, b) has flat index n = a * cols + b and is embedded as grid point (i, j) =
  (n // rows, n % rows): channels [sin(i w), cos(i w), sin(j w), cos(j w)],
  w_k = temperature^(-k / (D/4)). For rows == cols this is (i, j) = (a, b); otherwise the grid is
  scrambled exactly as in the reference.
  """
  if dim % 4:
    raise ValueError(f"sincos posemb: dim {dim} is not a multiple of 4")
  n = np.arange(rows * cols)
  i, j = (n // rows).astype(np.float64), (n % rows).astype(np.float64)
  omega = 1.0 / temperature ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
  oi, oj = i[:, None] * omega[None], j[:, None] * omega[None]
  table = np.concatenate([np.sin(oi), np.cos(oi), np.sin(oj), np.cos(oj)], axis=1)
  return table.reshape(rows, cols, dim).astype(np.float32)


class TablePosEmb(nn.Module):
  """A 2D positional table `posembs` [rows, cols, D] cropped to the grid and added.

  Initialised with the release's fixed sin-cos table; like the release (requires_grad=False) it
  receives no gradient.
  """
  rows: int
  cols: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, s_0, s_1, D] -> x + posembs[:s_0, :s_1]."""
    s0, s1 = x.shape[1:3]
    if x.ndim != 4 or s0 > self.rows or s1 > self.cols:
      raise ValueError(f"sincos posemb: input {tuple(x.shape)} does not fit the table "
                       f"[{self.rows}, {self.cols}] (config.model.register_posemb_shape)")
    init = lambda key, shape: jnp.asarray(sincos_2d_table(*shape))  # noqa: E731
    table = self.param("posembs", nn.with_logical_partitioning(init, (None, None, "embed")),
                       (self.rows, self.cols, x.shape[-1]))
    return x + jax.lax.stop_gradient(table[:s0, :s1]).astype(x.dtype)[None]


class Registers(nn.Module):
  """Learned register queries per (latent frame, index): `registers` [t_max, N, D]."""
  max_frames: int
  num: int
  dim: int

  @nn.compact
  def __call__(self, batch: int, num_frames: int) -> jax.Array:
    """-> [B, T, N, D]."""
    if num_frames > self.max_frames:
      raise ValueError(f"registers: {num_frames} latent frames exceed max_latent_frames="
                       f"{self.max_frames}")
    regs = self.param("registers", nn.with_logical_partitioning(trunc02, (None, None, "embed")),
                      (self.max_frames, self.num, self.dim))
    return jnp.broadcast_to(regs[:num_frames][None], (batch, num_frames, self.num, self.dim))


def timestep_features(t: jax.Array, max_timestep: float = 1.0, dim: int = 256,
                      max_period: float = 256.0) -> jax.Array:
  """t [B] -> [B, dim]: [cos(t f), sin(t f)], f_k = (1000/max_t) exp(-ln(max_period) k/(dim/2))."""
  half = dim // 2
  freqs = (1000.0 / max_timestep) * jnp.exp(-np.log(max_period) * jnp.arange(half) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedder(nn.Module):
  """temb = Linear(SiLU(Linear(timestep_features(t)))) -> [B, D]."""
  dim: int
  max_timestep: float = 1.0

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    h = timestep_features(t, self.max_timestep)
    h = nn.Dense(self.dim, kernel_init=dense_init((None, "embed")), name="mlp_0")(h)
    return nn.Dense(self.dim, kernel_init=dense_init((None, "embed")), name="mlp_2")(nn.silu(h))
