"""VideoFlexTok: encoder + FSQ + flow decoder over codec latents.

The codec (PatchCodec, VidTok) lives outside the Flax module: training consumes preprocessed
latents, and `vft.models.vae` maps pixels <-> latents.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vft.models import fsq
from vft.models.config import TokenizerConfig
from vft.models.decoder import Decoder
from vft.models.encoder import Encoder


class VideoFlexTok(nn.Module):
  cfg: TokenizerConfig

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.decoder = Decoder(self.cfg)

  def encode(self, latents: jax.Array):
    """latents [B,T,H,W,C] -> (codes [B,T',N,d] float32 with straight-through grads, ids [B,T',N])."""
    codes = fsq.quantize(self.encoder(latents), self.cfg.fsq_levels)
    return codes, fsq.codes_to_ids(jax.lax.stop_gradient(codes), self.cfg.fsq_levels)

  def decode(self, codes, x_t, t, keep_k=None, null_cond=None, prefix_len=None, with_repa=False):
    """See `Decoder.__call__`."""
    return self.decoder(codes, x_t, t, keep_k=keep_k, null_cond=null_cond,
                        prefix_len=prefix_len, with_repa=with_repa)

  def __call__(self, latents: jax.Array, x_t: jax.Array, t: jax.Array):
    """Full forward used for initialisation: -> (v, repa)."""
    codes, _ = self.encode(latents)
    b = latents.shape[0]
    prefix = jnp.zeros((b,), jnp.int32) if self.cfg.prefix_masking else None
    return self.decode(codes, x_t, t, keep_k=jnp.full((b,), self.cfg.num_registers),
                       null_cond=jnp.zeros((b,), bool), prefix_len=prefix,
                       with_repa=self.cfg.repa_layer is not None)


def init_params(model: VideoFlexTok, key: jax.Array, latent_shape) -> dict:
  """Boxed params (nn.LogicallyPartitioned leaves) for latents of shape [B, T, H, W, C]."""
  latents = jnp.zeros(latent_shape, jnp.float32)
  t = jnp.full((latent_shape[0],), 0.5, jnp.float32)
  return model.init(key, latents, latents, t)["params"]
