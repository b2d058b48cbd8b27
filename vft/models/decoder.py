"""VideoFlexTok rectified-flow decoder (DiT with adaLN-zero) and its REPA head.

Register branch: codes [B,T,N,d] -> Linear(d -> D) -> 2D posemb over (t, n) -> nested-dropout
mask token for registers >= keep_k (one k per sample, all frames) -> optional prefix-mask token
for the first `prefix_len` frames -> learned null condition for the whole register tensor
(CFG's unconditional branch). That is the default `register_order`; an imported release
config may order these four ops differently. Patch branch: noisy latents x_t [B,T,H,W,C] ->
patch embed + 3D posemb. Interleave per frame, adaLN trunk (E=2: patches / registers modulated
separately) with the configured mask, then the patch tokens -> LN -> adaLN(shift, scale) ->
Linear -> unpatchify: the predicted velocity v ~ eps - x0, [B,T,H,W,C].

REPA head: decoder patch tokens after block `repa_layer` -> depth-2 trunk (time-causal over
frames of patch tokens) -> Linear(D -> F, no bias) -> [B, T', h, w, F].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vft import sharding
from vft.models import masks
from vft.models.config import TokenizerConfig
from vft.models.embed import (LearnedPosEmb, PatchEmbed, TablePosEmb, TimestepEmbedder, trunc02,
                              unpatchify)
from vft.models.encoder import interleave, slot_rows, split_frames
from vft.models.transformer import Transformer, dense_init, layer_norm, mlp_hidden_dim


_COMBINE = {"learnable_sum": "sum", "learnable_prod": "prod"}


def _token(module: nn.Module, name: str, dim: int) -> jax.Array:
  return module.param(name, nn.with_logical_partitioning(trunc02, ("embed",)), (dim,))


class RepaHead(nn.Module):
  cfg: TokenizerConfig

  @nn.compact
  def __call__(self, patch_feats: jax.Array) -> jax.Array:
    """patch_feats [B, T, h, w, D] -> [B, T, h, w, repa_dim]."""
    cfg = self.cfg
    b, t, h, w, d = patch_feats.shape
    x = patch_feats.reshape(b, t * h * w, d)
    mask = masks.make_mask("time_block_causal", t, h * w, 0)
    x, _ = Transformer(
        depth=cfg.repa_depth, num_heads=d // cfg.head_dim, head_dim=cfg.head_dim,
        mlp_dim=mlp_hidden_dim(d), dtype=cfg.compute_dtype,
        attention_impl=cfg.attention_impl, name="transformer")(x, mask)
    x = nn.Dense(cfg.repa_dim, use_bias=False, dtype=cfg.compute_dtype,
                 kernel_init=dense_init(("embed", None)), name="out_proj")(x)
    return x.astype(jnp.float32).reshape(b, t, h, w, cfg.repa_dim)


class Decoder(nn.Module):
  cfg: TokenizerConfig

  def _register_posemb(self, regs: jax.Array) -> jax.Array:
    """regs [B, T, N, D] + the (t, n) posemb of `cfg.register_posemb` (identity for "none")."""
    cfg = self.cfg
    if cfg.register_posemb == "none":
      return regs
    if cfg.register_posemb == "sincos":
      rows, cols = cfg.register_posemb_shape or (cfg.max_latent_frames, cfg.num_registers)
      return TablePosEmb(rows, cols, name="registers_posemb")(regs)
    size = cfg.register_posemb_max or max(cfg.posemb_max, cfg.num_registers)
    return LearnedPosEmb(2, size, cfg.posemb_init_std, combine=_COMBINE[cfg.register_posemb],
                         name="registers_posemb")(regs)

  @nn.compact
  def __call__(self, codes: jax.Array, x_t: jax.Array, t: jax.Array,
               keep_k: jax.Array | None = None, null_cond: jax.Array | None = None,
               prefix_len: jax.Array | None = None, with_repa: bool = False):
    """Predicted velocity.

    Args:
      codes: [B, T', N, d] FSQ codes (T' latent frames after temporal patching).
      x_t: [B, T, H, W, C] noisy latents; t: [B] flow time in (0, 1].
      keep_k: [B] int, registers >= keep_k get the nested-dropout mask token (None: keep all).
      null_cond: [B] bool, True replaces all registers by the null condition (CFG uncond).
      prefix_len: [B] int, registers of the first prefix_len frames get the prefix-mask token
        (only with `cfg.prefix_masking`).
      with_repa: also return the REPA head output.
    Returns:
      v [B, T, H, W, C] float32 (and REPA features [B, T', h, w, F] or None if with_repa).
    """
    cfg = self.cfg
    dim = cfg.dec_width
    b, tf, n, _ = codes.shape
    if n != cfg.num_registers:
      raise ValueError(f"decoder: codes have {n} registers per frame, the model has "
                       f"{cfg.num_registers}")
    # Register branch: Linear, then the ops of `cfg.register_order` (absent ones skipped).
    regs = nn.Dense(dim, kernel_init=dense_init((None, "embed")), name="from_latents")(
        codes.astype(jnp.float32))
    if prefix_len is not None and not cfg.prefix_masking:
      raise ValueError("decoder: prefix_len given but config.model.prefix_masking is False")
    for op in cfg.register_order:
      if op == "posemb":
        regs = self._register_posemb(regs)
      elif op == "nested_dropout":
        mask_token = _token(self, "nested_dropout_token", dim)
        if keep_k is not None:
          keep = jnp.arange(n)[None, None, :, None] < jnp.asarray(keep_k)[:, None, None, None]
          regs = jnp.where(keep, regs, mask_token)
      elif op == "prefix_mask" and cfg.prefix_masking:
        prefix_token = _token(self, "prefix_mask_token", dim)
        if prefix_len is not None:
          pre = jnp.arange(tf)[None, :, None, None] < jnp.asarray(prefix_len)[:, None, None, None]
          regs = jnp.where(pre, prefix_token, regs)
      elif op == "null_cond":
        null_token = _token(self, "null_cond", dim)
        if null_cond is not None:
          regs = jnp.where(jnp.asarray(null_cond)[:, None, None, None], null_token, regs)
    # Patch branch.
    x = PatchEmbed(dim, cfg.patch_size, cfg.compute_dtype, name="patch_emb")(
        x_t.astype(jnp.float32))
    x = LearnedPosEmb(3, cfg.dec_posemb_max or cfg.posemb_max, cfg.posemb_init_std,
                      combine=_COMBINE[cfg.patch_posemb], name="posemb")(x.astype(jnp.float32))
    _, tp, h, w, _ = x.shape
    if tp != tf:
      raise ValueError(f"decoder: codes have {tf} latent frames, x_t has {tp} (after patching)")
    temb = TimestepEmbedder(dim, cfg.max_timestep, name="time_embedder")(t)
    seq = sharding.constrain(interleave(x, regs), ("batch", "length", "embed"))
    # adaLN segment of every slot: patches 0, registers 1 (E = 2) or all 0 (E = 1).
    segments = (0,) * (h * w) + (cfg.adaln_expansion - 1,) * n
    mask = masks.make_mask(cfg.dec_mask, tf, h * w, n)
    capture = cfg.repa_layer if with_repa else None
    # Only the patches leave the trunk: its last block computes only their rows (unless the
    # REPA head captures that block).
    rows = None if capture == cfg.dec_depth - 1 else slot_rows(tf, h * w, n, last=False)
    seq, captured = Transformer(
        depth=cfg.dec_depth, num_heads=dim // cfg.head_dim, head_dim=cfg.head_dim,
        mlp_dim=mlp_hidden_dim(dim), adaln_segments=segments, dtype=cfg.compute_dtype,
        attention_impl=cfg.attention_impl, scan=cfg.scan, remat=cfg.remat,
        remat_policy=cfg.remat_policy, capture_layer=capture, name="transformer")(
            seq, mask, temb, out_rows=rows)
    if rows is None:
      patches, _ = split_frames(seq, tf, h * w)  # [B, T', hw, D]
    else:
      patches = seq.reshape(b, tf, h * w, dim)
    # Output head with its own adaLN (shift, scale).
    mod = nn.DenseGeneral((2, dim), kernel_init=dense_init(("embed", None, "mlp"),
                                                           nn.initializers.zeros),
                          name="head_adaLN")(nn.silu(temb))
    shift, scale = mod[:, None, None, 0], mod[:, None, None, 1]
    y = layer_norm(patches) * (1 + scale) + shift
    out_dim = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2] * cfg.latent_channels
    y = nn.Dense(out_dim, dtype=cfg.compute_dtype, kernel_init=dense_init(("embed", None),
                                                                          nn.initializers.zeros),
                 name="to_patches")(y)
    v = unpatchify(y.astype(jnp.float32).reshape(b, tf, h, w, out_dim), cfg.patch_size)
    if not with_repa:
      return v
    repa = None
    if cfg.repa_layer is not None:
      feats, _ = split_frames(captured, tf, h * w)
      repa = RepaHead(cfg, name="repa_head")(feats.reshape(b, tf, h, w, dim))
    return v, repa
