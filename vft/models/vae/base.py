"""The codec interface shared by every VAE-like model (PatchCodec, VidTok).

Layout convention (channels-last, JAX style):
  video   [B, T, H, W, 3]  float in [-1, 1]
  latents [B, T', H/s, W/s, C] with T' = 1 + (T - 1) // time_factor (causal: the first frame is
          a latent frame of its own, then one latent frame per group of `time_factor` frames).
"""
from __future__ import annotations

from typing import Protocol

import jax


def num_latent_frames(num_frames: int, time_factor: int = 4) -> int:
  """17 frames -> 5 latent frames for a causal codec with time factor 4."""
  check_num_frames(num_frames, time_factor)
  return 1 + (num_frames - 1) // time_factor


def check_num_frames(num_frames: int, time_factor: int = 4, what: str = "video") -> None:
  if num_frames < 1 or (num_frames - 1) % time_factor != 0:
    raise ValueError(
        f"{what}: {num_frames} frames; a causal codec with time factor {time_factor} needs "
        f"1 + {time_factor}k frames (e.g. 1, {1 + time_factor}, {1 + 4 * time_factor})")


class VideoCodec(Protocol):
  """What the tokenizer, the data prep job and evaluation need from a codec."""

  time_factor: int
  spatial_factor: int
  latent_channels: int

  def encode(self, video: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """[B, T, H, W, 3] in [-1, 1] -> latents [B, T', H/s, W/s, C].

    A codec with a sampled posterior (VidTok) draws its noise from `key`; it also takes
    keyword-only `eps=` (injected noise, for parity with a reference) and `mode=True` (the
    deterministic posterior mean). Exact codecs ignore `key`.
    """

  def decode(self, latents: jax.Array) -> jax.Array:
    """latents [B, T', h, w, C] -> video [B, 1 + (T'-1)*time_factor, h*s, w*s, 3]."""

  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(T', h, w, C) for a clip of the given size."""
