"""Reconstruction metrics for videos: PSNR and SSIM, per clip, jit-able.

All functions take videos shaped `[B, T, H, W, C]` with values in `[0, max_val]`
and return one value per clip, shape `[B]`. They are pure `jax.numpy`, so they
can be called inside `jax.jit` and on sharded arrays; shape checks run at trace
time on static shapes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# PSNR clamps the MSE from below so identical clips give a finite score:
# 10 * log10(max_val**2 / 1e-10), i.e. 100 dB for max_val = 1.
MSE_FLOOR = 1e-10

# SSIM constants from Wang et al. 2004 (also the tf.image.ssim defaults).
SSIM_FILTER_SIZE = 11
SSIM_FILTER_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(a: jax.Array, b: jax.Array, fn: str) -> None:
  """Raises ValueError unless `a` and `b` are equal-shaped float `[B, T, H, W, C]`."""
  if a.ndim != 5 or b.ndim != 5:
    raise ValueError(
        f"{fn}: a and b must be videos [B, T, H, W, C] (ndim 5); "
        f"got a.shape={tuple(a.shape)}, b.shape={tuple(b.shape)}")
  if a.shape != b.shape:
    raise ValueError(
        f"{fn}: a and b must have the same shape; "
        f"got a.shape={tuple(a.shape)}, b.shape={tuple(b.shape)}")
  for name, x in (("a", a), ("b", b)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(
          f"{fn}: {name} must be a floating video in [0, max_val]; got dtype "
          f"{x.dtype} (convert uint8 with x / 255.0 first)")


def to_unit(video: jax.Array) -> jax.Array:
  """Maps a video from [-1, 1] to [0, 1], clipping values outside the range.

  Args:
    video: any shape, float, nominally in [-1, 1].
  Returns:
    Same shape, `(video + 1) / 2` clipped to [0, 1].
  """
  return jnp.clip((jnp.asarray(video) + 1.0) * 0.5, 0.0, 1.0)


def psnr(a: jax.Array, b: jax.Array, max_val: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio in dB per clip.

  The MSE is averaged over all of T, H, W, C of a clip, then
  `10 * log10(max_val**2 / mse)`. The MSE is clamped at `MSE_FLOOR` (1e-10) so
  identical clips give a large finite value (100 dB for max_val = 1) instead
  of +inf.

  Args:
    a, b: float videos `[B, T, H, W, C]` in [0, max_val].
    max_val: the dynamic range of the values.
  Returns:
    `[B]` float32 PSNR in dB.
  """
  a, b = jnp.asarray(a), jnp.asarray(b)
  _check_pair(a, b, "psnr")
  diff = a.astype(jnp.float32) - b.astype(jnp.float32)
  mse = jnp.mean(jnp.square(diff), axis=(1, 2, 3, 4))
  mse = jnp.maximum(mse, MSE_FLOOR)
  return 10.0 * jnp.log10(jnp.float32(max_val) ** 2 / mse)


def _gaussian_1d(size: int, sigma: float) -> jax.Array:
  """`[size]` normalised Gaussian taps centred on the middle tap."""
  coords = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
  g = jnp.exp(-0.5 * jnp.square(coords) / sigma**2)
  return g / jnp.sum(g)


def _gaussian_filter_valid(x: jax.Array, taps: jax.Array) -> jax.Array:
  """Separable 'valid' Gaussian filter over H and W of every channel.

  Args:
    x: `[N, H, W, K]` float32.
    taps: `[S]` 1-D filter.
  Returns:
    `[N, H - S + 1, W - S + 1, K]`.
  """
  k = x.shape[-1]
  size = taps.shape[0]
  # Depthwise (feature_group_count = K) kernels in HWIO layout.
  kernel_h = jnp.broadcast_to(taps.reshape(size, 1, 1, 1), (size, 1, 1, k))
  kernel_w = jnp.broadcast_to(taps.reshape(1, size, 1, 1), (1, size, 1, k))
  dims = ("NHWC", "HWIO", "NHWC")
  # HIGHEST: on TPU the default would run the convolution in bfloat16 passes.
  for kernel in (kernel_h, kernel_w):
    x = jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding="VALID",
        dimension_numbers=dims, feature_group_count=k,
        precision=jax.lax.Precision.HIGHEST)
  return x


def ssim(a: jax.Array, b: jax.Array, max_val: float = 1.0) -> jax.Array:
  """Structural similarity per clip (Wang et al. 2004), matching tf.image.ssim.

  An 11x11 Gaussian window (sigma 1.5, applied as two separable 1-D passes),
  K1 = 0.01, K2 = 0.03, 'valid' filtering (no padding). The SSIM map is
  computed per frame and per channel, averaged over H, W and C, then over T.

  Args:
    a, b: float videos `[B, T, H, W, C]` in [0, max_val], H and W >= 11.
    max_val: the dynamic range of the values.
  Returns:
    `[B]` float32 SSIM, 1 for identical clips.
  """
  a, b = jnp.asarray(a), jnp.asarray(b)
  _check_pair(a, b, "ssim")
  bsz, t, h, w, c = a.shape
  if h < SSIM_FILTER_SIZE or w < SSIM_FILTER_SIZE:
    raise ValueError(
        f"ssim: frames must be at least {SSIM_FILTER_SIZE}x{SSIM_FILTER_SIZE} "
        f"(the Gaussian window); got H={h}, W={w} from shape {tuple(a.shape)}")
  x = a.astype(jnp.float32)
  y = b.astype(jnp.float32)
  # [B, T, H, W, C] -> [B*T*C, H, W, 1]: each (frame, channel) is one image.
  x = jnp.moveaxis(x, -1, 2).reshape(bsz * t * c, h, w)
  y = jnp.moveaxis(y, -1, 2).reshape(bsz * t * c, h, w)
  # Filter the five local statistics in one depthwise pass: [N, H, W, 5].
  stats = jnp.stack([x, y, x * x, y * y, x * y], axis=-1)
  taps = _gaussian_1d(SSIM_FILTER_SIZE, SSIM_FILTER_SIGMA)
  mu_x, mu_y, e_xx, e_yy, e_xy = jnp.moveaxis(
      _gaussian_filter_valid(stats, taps), -1, 0)

  c1 = (SSIM_K1 * max_val) ** 2
  c2 = (SSIM_K2 * max_val) ** 2
  # Same algebra as tf.image.ssim: luminance * contrast-structure, with
  # covariances written as E[xy] - E[x]E[y] (biased estimator).
  mu_xy2 = 2.0 * mu_x * mu_y
  mu_sq = jnp.square(mu_x) + jnp.square(mu_y)
  luminance = (mu_xy2 + c1) / (mu_sq + c1)
  cs = (2.0 * e_xy - mu_xy2 + c2) / (e_xx + e_yy - mu_sq + c2)
  ssim_map = luminance * cs                      # [B*T*C, H', W']
  per_channel = jnp.mean(ssim_map, axis=(1, 2)).reshape(bsz, t, c)
  return jnp.mean(jnp.mean(per_channel, axis=-1), axis=-1)


# ----------------------------------------------------------------------------
# Per-frame scores with dm-pix (the eval job's PSNR / SSIM) and pixel errors.
#
# Pinned definitions (docs: evaluation notes §2): PSNR per frame (`pix.psnr`, max_val 1), then
# the mean over frames (VidTok / MAGVIT convention; `psnr` above is the per-clip-MSE variant);
# SSIM per frame and channel (`pix.ssim`: 11-tap Gaussian, sigma 1.5, k1 .01, k2 .03), mean over
# frames; MAE / MSE over all pixels in [0, 1].


def _frames(x: jax.Array) -> jax.Array:
  """[B, T, H, W, C] -> [B * T, H, W, C] float32."""
  return x.reshape(-1, *x.shape[2:]).astype(jnp.float32)


def frame_scores(recon: jax.Array, target: jax.Array) -> dict[str, jax.Array]:
  """PSNR (per-frame mean), SSIM, MAE and MSE per clip.

  Args:
    recon, target: float videos `[B, T, H, W, C]` in [0, 1], H and W >= 11.
  Returns:
    {"psnr", "ssim", "mae", "mse"}: each `[B]` float32.
  """
  import dm_pix as pix  # Local: only the eval job needs dm-pix.

  recon, target = jnp.asarray(recon), jnp.asarray(target)
  _check_pair(recon, target, "frame_scores")
  bsz, t = recon.shape[:2]
  a, b = _frames(recon), _frames(target)
  diff = a - b
  mse_frame = jnp.maximum(jnp.mean(jnp.square(diff), axis=(1, 2, 3)), MSE_FLOOR)
  psnr_frame = 10.0 * jnp.log10(1.0 / mse_frame)  # = pix.psnr with the MSE floor
  ssim_frame = pix.ssim(a, b, max_val=1.0)
  per_clip = lambda v: jnp.mean(v.reshape(bsz, t), axis=1)
  return {"psnr": per_clip(psnr_frame), "ssim": per_clip(ssim_frame),
          "mae": jnp.mean(jnp.abs(diff).reshape(bsz, -1), axis=1),
          "mse": jnp.mean(jnp.square(diff).reshape(bsz, -1), axis=1)}
