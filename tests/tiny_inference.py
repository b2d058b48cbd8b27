"""Tiny random VideoFlexTok models for the inference tests (test_api, test_chunked)."""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from vft.models.config import TokenizerConfig
from vft.models.tokenizer import VideoFlexTok, init_params
from vft.models.vae import PatchCodec

CODEC = PatchCodec(spatial_factor=4)  # 16x16 frames -> 4x4 latents of 192 channels
TINY = dict(latent_channels=CODEC.latent_channels, patch_size=(1, 2, 2), num_registers=4,
            max_latent_frames=8, posemb_max=8, head_dim=16, enc_width=32, enc_depth=1,
            dec_width=32, dec_depth=1, dec_mask="full", prefix_masking=True)


def random_like(tree, seed: int = 1, scale: float = 0.2):
  """Every leaf N(0, scale^2) from numpy (adaLN and heads would start at zero; this makes the
  outputs depend on every parameter). Host-side: nothing is compiled."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), tree)


def tiny_model(seed: int = 1, **overrides):
  """-> (VideoFlexTok, random params) without compiling the init forward."""
  model = VideoFlexTok(TokenizerConfig(**{**TINY, **overrides}))
  shapes = jax.eval_shape(lambda k: nn.unbox(init_params(model, k, (1, 5, 4, 4, 192))),
                          jax.random.key(0))
  return model, random_like(shapes, seed)
