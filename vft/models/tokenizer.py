"""VideoFlexTok: encoder + FSQ + flow decoder over codec latents.

The codec (PatchCodec, VidTok) lives outside the Flax module: training consumes preprocessed
latents, and `vft.models.vae` maps pixels <-> latents.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vft import flow
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
    codes, _ = self.encode_logits(latents)
    return codes, fsq.codes_to_ids(jax.lax.stop_gradient(codes), self.cfg.fsq_levels)

  def encode_logits(self, latents: jax.Array):
    """latents -> (codes [B,T',N,d] with straight-through grads, pre-FSQ logits z [B,T',N,d])."""
    z = self.encoder(latents)
    return fsq.quantize(z, self.cfg.fsq_levels), z

  def decode(self, codes, x_t, t, keep_k=None, null_cond=None, prefix_len=None, with_repa=False):
    """Predicted velocity v ~ eps - x0 [B,T,H,W,C] (and REPA features). See `Decoder.__call__`.

    With `prediction="x"` the network's output is read as x0 and converted to a velocity.
    """
    out = self.decoder(codes, x_t, t, keep_k=keep_k, null_cond=null_cond,
                       prefix_len=prefix_len, with_repa=with_repa)
    if self.cfg.prediction == "v":
      return out
    x0_hat, repa = out if with_repa else (out, None)
    tb = jnp.maximum(t.astype(jnp.float32), self.cfg.x_pred_t_min).reshape((-1,) + (1,) * 4)
    v = (x_t.astype(jnp.float32) - x0_hat) / tb
    return (v, repa) if with_repa else v

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


def sample_latents(model: VideoFlexTok, params, codes: jax.Array, noise: jax.Array, steps: int,
                   keep_k: jax.Array | None = None, guidance=None, cond_latents=None,
                   prefix_len: jax.Array | None = None) -> jax.Array:
  """Renders latents from FSQ codes with the flow decoder (Euler, optional CFG/APG).

  codes [B, T', N, d]; noise [B, T, H, W, C] (the state at t = 1); keep_k [B] budgets.
  Pure function of its inputs: jit it with `steps`/`guidance` static; keep_k is traced, so
  changing the budget does not recompile.
  """
  guidance = guidance or flow.Guidance()
  b = codes.shape[0]

  def velocity(x, t, uncond):
    reps = x.shape[0] // b
    tile = lambda a: None if a is None else jnp.concatenate([a] * reps)  # noqa: E731
    return model.apply({"params": params}, tile(codes), x, t, keep_k=tile(keep_k),
                       null_cond=uncond, prefix_len=tile(prefix_len), method="decode")

  return flow.euler_sample(velocity, noise, steps, guidance, cond_latents=cond_latents)
