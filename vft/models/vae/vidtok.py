"""The VidTok causal KL-VAE (`vidtok_kl_causal_488_16chn`) in Flax, and `VidTokCodec`.

Layouts (channels-last):
  video   [B, T, H, W, 3] float in [-1, 1]
  moments [B, t, h, w, 2z]  (mean = channels [:z], logvar = channels [z:])
  latents [B, t, h, w, z]   h = H/8, w = W/8; t = 1 + (T-1)/4 for T = 1 + 4k, t = T/4 for T = 4k

Encoder: when T % 4 != 0, 3 copies of frame 0 are prepended (17 -> 20 frames); conv_in; per level
`num_res_blocks` (spatial + temporal) blocks, then a spatial x1/2 (levels 0..n-2) and a causal
time x1/2 (levels n-3, n-2); mid (3D block, per-frame attention, 3D block); LN, SiLU, conv_out.
Decoder: the mirror image with `num_res_blocks + 1` blocks per level, spatial x2 at levels 1..n-1,
time x2 at levels 1 and 2; the first 3 decoded frames are dropped (5 latent frames -> 20 - 3 = 17
frames; 4 latent frames -> 13).

The posterior is sampled as in the release, `mean + exp(0.5 * clip(logvar, -30, 20)) * eps`
with `eps` from an explicit PRNG key or injected; `mode=True` returns the mean instead (not the
release's behaviour, documented for deterministic use).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vft.models.vae.vidtok_blocks import (CausalConv3d, FrameAttention, ResBlock, SpaceTimeBlock,
                                          TimeDownsample, TimeUpsample, downsample2d, layer_norm,
                                          upsample2d)

Params = Mapping[str, Any]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class VidTokConfig:
  """Architecture of the VidTok VAE; defaults are the released 128-wide model."""
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2  # encoder blocks per level; the decoder has one more
  z_channels: int = 16
  in_channels: int = 3
  out_channels: int = 3
  norm_eps: float = 1e-6
  time_downsample_factor: int = 4
  dtype: str = "float32"  # convolution compute dtype; norms, attention softmax, mixing in fp32

  def __post_init__(self):
    object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
    n = len(self.ch_mult)
    if n < 3:
      raise ValueError(f"VidTokConfig.ch_mult: {self.ch_mult} needs at least 3 levels")
    if self.ch < 1 or self.num_res_blocks < 1 or self.z_channels < 1:
      raise ValueError(f"VidTokConfig: ch, num_res_blocks, z_channels must be >= 1, got {self}")
    if 2 ** len(self.time_down_levels) != self.time_downsample_factor:
      raise ValueError(
          f"VidTokConfig.time_downsample_factor: {self.time_downsample_factor}, but the "
          f"architecture halves time {len(self.time_down_levels)} times")
    if self.dtype not in DTYPES:
      raise ValueError(f"VidTokConfig.dtype: {self.dtype!r}; expected one of {sorted(DTYPES)}")

  # Where the resolution changes (the reference's defaults for EncoderCausal3D/DecoderCausal3D).
  @property
  def space_down_levels(self) -> tuple[int, ...]:
    return tuple(range(len(self.ch_mult) - 1))

  @property
  def time_down_levels(self) -> tuple[int, ...]:
    n = len(self.ch_mult)
    return tuple(sorted({n - 3, n - 2}))

  @property
  def space_up_levels(self) -> tuple[int, ...]:
    return tuple(range(1, len(self.ch_mult)))

  @property
  def time_up_levels(self) -> tuple[int, ...]:
    return (1, 2)

  @property
  def spatial_factor(self) -> int:
    return 2 ** len(self.space_down_levels)

  @property
  def time_factor(self) -> int:
    return self.time_downsample_factor

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  def widths(self) -> tuple[int, ...]:
    """Channels per level: ch * ch_mult."""
    return tuple(self.ch * m for m in self.ch_mult)


def check_video_size(cfg: VidTokConfig, num_frames: int, height: int, width: int,
                     what: str = "video") -> None:
  """Frame counts T = 1 + 4k (first frame replicated in front) or T = 4k (no padding; decodes to
  T - 3 frames, the reference's behaviour); H and W multiples of 8."""
  f, s = cfg.time_factor, cfg.spatial_factor
  if num_frames < 1 or num_frames % f not in (0, 1):
    raise ValueError(
        f"{what}: {num_frames} frames; VidTok needs 1 + {f}k frames (e.g. 1, {1 + f}, "
        f"{1 + 4 * f}) or {f}k frames (then it decodes to {f}k - {f - 1}); other counts lose "
        f"their trailing frames")
  if height < s or width < s or height % s or width % s:
    raise ValueError(f"{what}: {height}x{width} pixels; VidTok needs height and width that are "
                     f"positive multiples of {s}")


def latent_frames(cfg: VidTokConfig, num_frames: int) -> int:
  """17 -> 5, 1 -> 1, 16 -> 4 (frames are front-padded to a multiple of time_factor)."""
  f = cfg.time_factor
  padded = num_frames if num_frames % f == 0 else num_frames + f - 1
  return padded // f


class VidTokEncoder(nn.Module):
  cfg: VidTokConfig

  @nn.compact
  def __call__(self, video: jax.Array) -> jax.Array:
    """video [B, T, H, W, C_in] -> moments [B, t, H/8, W/8, 2z] (float32)."""
    cfg, dt, eps = self.cfg, self.cfg.compute_dtype, self.cfg.norm_eps
    x = video.astype(jnp.float32)
    f = cfg.time_factor
    if x.shape[1] % f:
      x = jnp.concatenate([jnp.repeat(x[:, :1], f - 1, axis=1), x], axis=1)
    x = CausalConv3d(cfg.ch, (3, 3, 3), 1, dt, name="conv_in")(x)
    for i, width in enumerate(cfg.widths()):
      for j in range(cfg.num_res_blocks):
        x = SpaceTimeBlock(width, eps, dt, name=f"down{i}_block{j}")(x)
      if i in cfg.space_down_levels:
        x = downsample2d(x, dt, f"down{i}_downsample")
        if i in cfg.time_down_levels:
          x = TimeDownsample(dt, name=f"down{i}_time_downsample")(x)
    width = cfg.widths()[-1]
    x = ResBlock(width, "3d", eps, dt, name="mid_block1")(x)
    x = FrameAttention(eps, dt, name="mid_attn")(x)
    x = ResBlock(width, "3d", eps, dt, name="mid_block2")(x)
    x = nn.silu(layer_norm(eps, "norm_out")(x))
    x = CausalConv3d(2 * cfg.z_channels, (3, 3, 3), 1, dt, name="conv_out")(x)
    return x.astype(jnp.float32)


class VidTokDecoder(nn.Module):
  cfg: VidTokConfig

  @nn.compact
  def __call__(self, latents: jax.Array) -> jax.Array:
    """latents [B, t, h, w, z] -> video [B, 4t - 3, 8h, 8w, C_out] (float32, not clamped)."""
    cfg, dt, eps = self.cfg, self.cfg.compute_dtype, self.cfg.norm_eps
    widths = cfg.widths()
    x = CausalConv3d(widths[-1], (3, 3, 3), 1, dt, name="conv_in")(latents.astype(jnp.float32))
    x = ResBlock(widths[-1], "3d", eps, dt, name="mid_block1")(x)
    x = FrameAttention(eps, dt, name="mid_attn")(x)
    x = ResBlock(widths[-1], "3d", eps, dt, name="mid_block2")(x)
    for i in reversed(range(len(widths))):
      for j in range(cfg.num_res_blocks + 1):
        x = SpaceTimeBlock(widths[i], eps, dt, name=f"up{i}_block{j}")(x)
      if i in cfg.space_up_levels:
        x = upsample2d(x, dt, f"up{i}_upsample")
        if i in cfg.time_up_levels:
          x = TimeUpsample(dt, name=f"up{i}_time_upsample")(x)
    x = nn.silu(layer_norm(eps, "norm_out")(x))
    x = CausalConv3d(cfg.out_channels, (3, 3, 3), 1, dt, name="conv_out")(x)
    return x[:, cfg.time_factor - 1:].astype(jnp.float32)


def init_params(cfg: VidTokConfig, key: jax.Array, num_frames: int = 1,
                size: int | None = None) -> dict:
  """Random parameters {"encoder": ..., "decoder": ...} (shapes do not depend on the video size)."""
  size = size or cfg.spatial_factor
  video = jnp.zeros((1, num_frames, size, size, cfg.in_channels), jnp.float32)
  t = latent_frames(cfg, num_frames)
  lat = jnp.zeros((1, t, size // cfg.spatial_factor, size // cfg.spatial_factor, cfg.z_channels))

  @jax.jit
  def init(key):
    k_enc, k_dec = jax.random.split(key)
    return {"encoder": VidTokEncoder(cfg).init(k_enc, video)["params"],
            "decoder": VidTokDecoder(cfg).init(k_dec, lat)["params"]}
  return init(key)


def encode_moments(cfg: VidTokConfig, params: Params, video: jax.Array) -> jax.Array:
  """video [B, T, H, W, 3] in [-1, 1] -> moments [B, t, H/8, W/8, 2z] (mean, logvar)."""
  if video.ndim != 5 or video.shape[-1] != cfg.in_channels:
    raise ValueError(f"video: expected [B, T, H, W, {cfg.in_channels}], got shape "
                     f"{tuple(video.shape)}")
  check_video_size(cfg, *video.shape[1:4])
  return VidTokEncoder(cfg).apply({"params": params["encoder"]}, video)


def sample_posterior(moments: jax.Array, key: jax.Array | None = None,
                     eps: jax.Array | None = None, mode: bool = False) -> jax.Array:
  """moments [..., 2z] -> latents [..., z].

  mode=True: the mean (deterministic; not the release's behaviour). Otherwise
  mean + exp(0.5 * clip(logvar, -30, 20)) * eps, with eps given or drawn N(0, 1) from `key`.
  """
  if moments.shape[-1] % 2:
    raise ValueError(f"moments: last axis must hold mean and logvar (even), got "
                     f"{tuple(moments.shape)}")
  mean, logvar = jnp.split(moments, 2, axis=-1)
  if mode:
    if eps is not None:
      raise ValueError("sample_posterior: eps was given with mode=True; pass one or the other")
    return mean
  if eps is not None and key is not None:
    raise ValueError("sample_posterior: pass either a PRNG key or eps, not both")
  if eps is None:
    if key is None:
      raise ValueError("sample_posterior: the VidTok posterior is sampled; pass a PRNG `key`, "
                       "an injected `eps` of the latents' shape, or mode=True for the mean")
    eps = jax.random.normal(key, mean.shape, mean.dtype)
  if tuple(eps.shape) != tuple(mean.shape):
    raise ValueError(f"eps: expected shape {tuple(mean.shape)} (the latents'), got "
                     f"{tuple(eps.shape)}")
  return mean + jnp.exp(0.5 * jnp.clip(logvar, -30.0, 20.0)) * eps


def decode_latents(cfg: VidTokConfig, params: Params, latents: jax.Array) -> jax.Array:
  """latents [B, t, h, w, z] -> video [B, 4t - 3, 8h, 8w, 3] (not clamped)."""
  if latents.ndim != 5 or latents.shape[-1] != cfg.z_channels:
    raise ValueError(f"latents: expected [B, t, h, w, {cfg.z_channels}], got shape "
                     f"{tuple(latents.shape)}")
  return VidTokDecoder(cfg).apply({"params": params["decoder"]}, latents)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _moments_jit(cfg, params, video):
  return encode_moments(cfg, params, video)


_sample_jit = jax.jit(sample_posterior, static_argnames=("mode",))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _decode_jit(cfg, params, latents):
  return decode_latents(cfg, params, latents)


@dataclasses.dataclass(frozen=True, eq=False)
class VidTokCodec:
  """`VideoCodec` over the VidTok VAE. Params are jit arguments (not baked-in constants)."""
  cfg: VidTokConfig
  params: Params

  @property
  def time_factor(self) -> int:
    return self.cfg.time_factor

  @property
  def spatial_factor(self) -> int:
    return self.cfg.spatial_factor

  @property
  def latent_channels(self) -> int:
    return self.cfg.z_channels

  def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    check_video_size(self.cfg, num_frames, height, width)
    s = self.spatial_factor
    return (latent_frames(self.cfg, num_frames), height // s, width // s, self.latent_channels)

  def _check_video(self, video) -> None:
    if video.ndim != 5 or video.shape[-1] != self.cfg.in_channels:
      raise ValueError(f"video: expected [B, T, H, W, {self.cfg.in_channels}], got shape "
                       f"{tuple(video.shape)}")
    check_video_size(self.cfg, *video.shape[1:4])

  def moments(self, video: jax.Array) -> jax.Array:
    """video [B, T, H, W, 3] -> moments [B, t, h, w, 2z]."""
    self._check_video(video)
    return _moments_jit(self.cfg, self.params, video)

  def encode(self, video: jax.Array, key: jax.Array | None = None, *,
             eps: jax.Array | None = None, mode: bool = False) -> jax.Array:
    """video [B, T, H, W, 3] in [-1, 1] -> latents [B, t, H/8, W/8, z]: a posterior sample with
    noise from `key` or the injected `eps` [B, t, h, w, z], or the mean when mode=True."""
    self._check_video(video)
    if mode and key is not None:
      key = None  # the mean needs no randomness
    if not mode and key is None and eps is None:
      raise ValueError("VidTokCodec.encode: the posterior is sampled; pass a PRNG `key`, an "
                       "injected `eps`, or mode=True for the deterministic mean")
    return _sample_jit(_moments_jit(self.cfg, self.params, video), key, eps, bool(mode))

  def decode(self, latents: jax.Array) -> jax.Array:
    """latents [B, t, h, w, z] -> video [B, 4t - 3, 8h, 8w, 3] (not clamped)."""
    if latents.ndim != 5 or latents.shape[-1] != self.latent_channels:
      raise ValueError(f"latents: expected [B, t, h, w, {self.latent_channels}], got shape "
                       f"{tuple(latents.shape)}")
    return _decode_jit(self.cfg, self.params, latents)

  @classmethod
  def from_safetensors(cls, path: str, prefix: str | None = None,
                       dtype: str = "float32") -> "VidTokCodec":
    """Loads the VAE from an official file: a VideoFlexTok checkpoint (`vae.vidtok.*`, or
    `video_tokenizer.vae.vidtok.*` in the hub form) or a VAE-only one (`vidtok.*`). `prefix`
    (e.g. "vae.vidtok.") is found from the keys when not given."""
    from vft.convert import vidtok_weights  # the importer knows the official names
    tensors = vidtok_weights.load_tensors(path)
    if prefix is None:
      prefix = vidtok_weights.find_prefix(tensors, where=path)
    cfg, params, _ = vidtok_weights.vidtok_from_state_dict(tensors, prefix)
    if dtype != cfg.dtype:
      cfg = dataclasses.replace(cfg, dtype=dtype)
    return cls(cfg, jax.tree.map(jnp.asarray, params))
