"""REPA targets: DINOv2 patch features per latent frame, from a local Hugging Face checkpoint.

    repa = RepaFeatures.from_pretrained("/ckpt/dinov2-large", frames="last", time_factor=4,
                                        spatial_factor=8)
    feats = repa.apply(repa.params, video)   # video [B, T, H, W, 3] in [-1, 1]
                                             # -> [B, T', H/(8p), W/(8p), F] float32

The model is `transformers` (< 5) `FlaxDinov2Model` (a folder with config.json and
flax_model.msgpack, or a PyTorch model.safetensors converted on load without torch).

Which RGB frames feed latent frame t (a causal codec with time factor f: latent frame 0 is
frame 0, latent frame t >= 1 covers frames f(t-1)+1 .. ft):
  frames="last"   frame ft (0 for t = 0): the newest frame the latent has seen (default);
  frames="first"  frame f(t-1)+1;
  frames="mean"   DINOv2 features averaged over the frames of the group (f times the compute).
Each picked frame is resized (bicubic, antialiased) to (gh * P, gw * P) where P is DINOv2's
patch size and (gh, gw) = (H, W) / (spatial_factor * patch) is the tokenizer's patch grid, so
one DINOv2 patch token lands on each latent patch; pixels are normalised with the ImageNet
mean/std; the final-layernorm patch tokens (CLS dropped) are the targets.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FRAME_CHOICES = ("last", "first", "mean")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def frame_groups(num_frames: int, time_factor: int) -> list[list[int]]:
  """RGB frame indices of each latent frame: [[0], [1..f], [f+1..2f], ...]."""
  if num_frames < 1 or (num_frames - 1) % time_factor:
    raise ValueError(f"REPA: {num_frames} frames; a causal codec with time factor {time_factor} "
                     f"needs 1 + {time_factor}k")
  return [[0]] + [list(range(time_factor * (t - 1) + 1, time_factor * t + 1))
                  for t in range(1, 1 + (num_frames - 1) // time_factor)]


@dataclasses.dataclass(frozen=True, eq=False)
class RepaFeatures:
  module: Any  # FlaxDinov2Module
  params: Any
  dino_patch: int
  feature_dim: int
  frames: str = "last"
  time_factor: int = 4
  spatial_factor: int = 8
  patch: int = 1
  dtype: str = "float32"

  def __post_init__(self):
    if self.frames not in FRAME_CHOICES:
      raise ValueError(f"config.repa.frames: {self.frames!r}; expected one of "
                       f"{list(FRAME_CHOICES)}")

  @classmethod
  def from_pretrained(cls, path: str, *, frames: str = "last", time_factor: int = 4,
                      spatial_factor: int = 8, patch: int = 1,
                      dtype: str = "float32") -> "RepaFeatures":
    from transformers import FlaxDinov2Model
    path = Path(path)
    if not (path / "config.json").is_file():
      raise FileNotFoundError(f"config.repa.path={path}: no config.json (expected a Hugging Face "
                              "DINOv2 checkpoint folder)")
    from_pt = not (path / "flax_model.msgpack").is_file()
    model = FlaxDinov2Model.from_pretrained(str(path), from_pt=from_pt,
                                            dtype=jnp.dtype(dtype))
    return cls(module=model.module, params=model.params, dino_patch=int(model.config.patch_size),
               feature_dim=int(model.config.hidden_size), frames=frames,
               time_factor=time_factor, spatial_factor=spatial_factor, patch=patch, dtype=dtype)

  def grid(self, height: int, width: int) -> tuple[int, int]:
    s = self.spatial_factor * self.patch
    if height % s or width % s:
      raise ValueError(f"REPA: frame size {height}x{width} is not divisible by spatial_factor * "
                       f"patch = {s}")
    return height // s, width // s

  def image_features(self, params, images: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """images [N, H, W, 3] in [-1, 1] -> [N, gh, gw, F] float32."""
    gh, gw = grid
    size = (images.shape[0], gh * self.dino_patch, gw * self.dino_patch, 3)
    x = jax.image.resize((images.astype(jnp.float32) + 1.0) / 2.0, size, "bicubic",
                         antialias=True)
    x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    out = self.module.apply({"params": params}, x.astype(jnp.dtype(self.dtype)),
                            deterministic=True)
    tokens = out.last_hidden_state[:, 1:]  # drop CLS
    return tokens.astype(jnp.float32).reshape(images.shape[0], gh, gw, self.feature_dim)

  def apply(self, params, video: jax.Array) -> jax.Array:
    """video [B, T, H, W, 3] in [-1, 1] -> REPA targets [B, T', gh, gw, F] float32."""
    b, t, h, w, _ = video.shape
    grid = self.grid(h, w)
    groups = frame_groups(t, self.time_factor)
    if self.frames == "mean":
      feats = self.image_features(params, video.reshape(b * t, h, w, 3), grid)
      feats = feats.reshape(b, t, *grid, self.feature_dim)
      return jnp.stack([feats[:, g].mean(axis=1) for g in groups], axis=1)
    pick = np.array([g[-1] if self.frames == "last" else g[0] for g in groups])
    frames = video[:, pick].reshape(b * len(pick), h, w, 3)
    feats = self.image_features(params, frames, grid)
    return feats.reshape(b, len(pick), *grid, self.feature_dim)
