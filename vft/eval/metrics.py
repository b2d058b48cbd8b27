"""Reconstruction metrics for videos: the one PSNR / SSIM definition of vft, per clip, jit-able.

Every PSNR / SSIM in vft (the demo, the training-time eval, `vft eval`, benchmarks) is this
module's `psnr` / `ssim`: dm-pix per frame (`dm_pix.psnr`, `dm_pix.ssim`: 11x11 Gaussian window,
sigma 1.5, k1 0.01, k2 0.03, valid filtering, as tf.image.ssim), then the mean over the frames of
a clip (the VidTok / MAGVIT convention). Frame PSNR is capped at 100 dB (`PSNR_CAP`, the value
of an MSE of 1e-10 at max_val 1) so identical frames give a finite score.

All functions take videos shaped `[B, T, H, W, C]` with values in `[0, max_val]` and return
one value per clip, shape `[B]`. Shape checks run at trace time on static shapes.
"""
from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp

# Frame PSNR is capped so identical frames give a finite score: 100 dB = 10 * log10(1 / 1e-10),
# i.e. the frame MSE floored at 1e-10 on the [0, 1] range dm-pix assumes.
PSNR_CAP = 100.0

# SSIM window (Wang et al. 2004; the dm-pix and tf.image.ssim defaults).
SSIM_FILTER_SIZE = 11


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


def _frames(x: jax.Array) -> jax.Array:
  """[B, T, H, W, C] -> [B * T, H, W, C] float32."""
  return x.reshape(-1, *x.shape[2:]).astype(jnp.float32)


def _per_clip(values: jax.Array, bsz: int) -> jax.Array:
  """[B * T] per-frame values -> [B] means over frames."""
  return jnp.mean(values.reshape(bsz, -1), axis=1)


def psnr(a: jax.Array, b: jax.Array, max_val: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio in dB per clip: `dm_pix.psnr` of every frame (on values
  divided by `max_val`), capped at `PSNR_CAP`, averaged over the frames.

  Args:
    a, b: float videos `[B, T, H, W, C]` in [0, max_val].
    max_val: the dynamic range of the values.
  Returns:
    `[B]` float32 PSNR in dB.
  """
  a, b = jnp.asarray(a), jnp.asarray(b)
  _check_pair(a, b, "psnr")
  scale = 1.0 / float(max_val)
  frame = pix.psnr(_frames(a) * scale, _frames(b) * scale)
  return _per_clip(jnp.minimum(frame, PSNR_CAP), a.shape[0])


def ssim(a: jax.Array, b: jax.Array, max_val: float = 1.0) -> jax.Array:
  """Structural similarity per clip: `dm_pix.ssim` of every frame (defaults: 11x11 Gaussian,
  sigma 1.5, k1 0.01, k2 0.03, valid filtering, averaged over H, W and C; equals
  tf.image.ssim), averaged over the frames.

  Args:
    a, b: float videos `[B, T, H, W, C]` in [0, max_val], H and W >= 11.
    max_val: the dynamic range of the values.
  Returns:
    `[B]` float32 SSIM, 1 for identical clips.
  """
  a, b = jnp.asarray(a), jnp.asarray(b)
  _check_pair(a, b, "ssim")
  h, w = a.shape[2:4]
  if h < SSIM_FILTER_SIZE or w < SSIM_FILTER_SIZE:
    raise ValueError(
        f"ssim: frames must be at least {SSIM_FILTER_SIZE}x{SSIM_FILTER_SIZE} "
        f"(the Gaussian window); got H={h}, W={w} from shape {tuple(a.shape)}")
  frame = pix.ssim(_frames(a), _frames(b), max_val=float(max_val),
                   filter_size=SSIM_FILTER_SIZE)
  return _per_clip(frame, a.shape[0])


def frame_scores(recon: jax.Array, target: jax.Array) -> dict[str, jax.Array]:
  """PSNR and SSIM (`psnr`, `ssim`), MAE and MSE (over all pixels) per clip.

  Args:
    recon, target: float videos `[B, T, H, W, C]` in [0, 1], H and W >= 11.
  Returns:
    {"psnr", "ssim", "mae", "mse"}: each `[B]` float32.
  """
  recon, target = jnp.asarray(recon), jnp.asarray(target)
  _check_pair(recon, target, "frame_scores")
  bsz = recon.shape[0]
  diff = (recon.astype(jnp.float32) - target.astype(jnp.float32)).reshape(bsz, -1)
  return {"psnr": psnr(recon, target), "ssim": ssim(recon, target),
          "mae": jnp.mean(jnp.abs(diff), axis=1), "mse": jnp.mean(jnp.square(diff), axis=1)}
