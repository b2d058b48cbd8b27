"""VideoFlexTok encoder: latents -> per-frame register latents (pre-FSQ).

latents [B, T, H, W, C] -> patch embed + 3D posemb [B, T', h, w, D]; learned registers
[B, T', N, D]; per-frame interleave [patches_t, registers_t] -> [B, T'(hw + N), D]; trunk with the
`time_block_causal_last` mask; registers -> LN -> Linear(D -> len(levels)) -> [B, T', N, d].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vft import sharding
from vft.models import masks
from vft.models.config import TokenizerConfig
from vft.models.embed import LearnedPosEmb, PatchEmbed, Registers
from vft.models.transformer import Transformer, dense_init, layer_norm, mlp_hidden_dim


def interleave(patches: jax.Array, registers: jax.Array) -> jax.Array:
  """patches [B, T, h, w, D], registers [B, T, N, D] -> [B, T * (h*w + N), D] (per frame)."""
  b, t = patches.shape[:2]
  p = patches.reshape(b, t, -1, patches.shape[-1])
  return jnp.concatenate([p, registers], axis=2).reshape(b, -1, patches.shape[-1])


def split_frames(x: jax.Array, num_frames: int, num_patches: int):
  """Inverse of `interleave`: [B, T*(P+N), D] -> (patches [B, T, P, D], registers [B, T, N, D])."""
  b, _, d = x.shape
  x = x.reshape(b, num_frames, -1, d)
  return x[:, :, :num_patches], x[:, :, num_patches:]


def slot_rows(num_frames: int, num_patches: int, num_registers: int, last: bool) -> np.ndarray:
  """Positions in the interleaved sequence of every frame's registers (last=True) or patches
  (last=False), frame-major: [T * N] or [T * P] int32."""
  block = num_patches + num_registers
  lo, n = (num_patches, num_registers) if last else (0, num_patches)
  return (np.arange(num_frames)[:, None] * block + lo + np.arange(n)[None]).ravel().astype(np.int32)


class Encoder(nn.Module):
  cfg: TokenizerConfig

  @nn.compact
  def __call__(self, latents: jax.Array) -> jax.Array:
    """latents [B, T, H, W, C] -> register latents [B, T', N, len(fsq_levels)] (float32)."""
    cfg = self.cfg
    if latents.ndim != 5 or latents.shape[-1] != cfg.latent_channels:
      raise ValueError(f"encoder: latents must be [B, T, H, W, {cfg.latent_channels}], got "
                       f"{tuple(latents.shape)}")
    dim = cfg.enc_width
    x = PatchEmbed(dim, cfg.patch_size, cfg.compute_dtype, name="patch_emb")(
        latents.astype(jnp.float32))
    x = LearnedPosEmb(3, cfg.posemb_max, cfg.posemb_init_std,
                      combine="prod" if cfg.patch_posemb == "learnable_prod" else "sum",
                      name="posemb")(x.astype(jnp.float32))
    b, t, h, w, _ = x.shape
    regs = Registers(cfg.max_latent_frames, cfg.num_registers, dim, name="registers")(b, t)
    seq = sharding.constrain(interleave(x, regs), ("batch", "length", "embed"))
    mask = masks.make_mask(cfg.enc_mask, t, h * w, cfg.num_registers)
    # Only the registers leave the trunk: its last block computes only their rows.
    regs = Transformer(
        depth=cfg.enc_depth, num_heads=dim // cfg.head_dim, head_dim=cfg.head_dim,
        mlp_dim=mlp_hidden_dim(dim), dtype=cfg.compute_dtype,
        attention_impl=cfg.attention_impl, scan=cfg.scan, remat=cfg.remat,
        remat_policy=cfg.remat_policy, name="transformer")(
            seq, mask, out_rows=slot_rows(t, h * w, cfg.num_registers, last=True))[0]
    regs = regs.reshape(b, t, cfg.num_registers, dim)
    out = nn.Dense(cfg.code_dim, kernel_init=dense_init(("embed", None)), name="to_latents")(
        layer_norm(regs))
    return out.astype(jnp.float32)
