"""Batched, jit-compiled codec encoding for the prep job, sharded over this process's devices.

    enc = BatchEncoder(codec, store="sample", seed=0, batch_size=16, repa=dino)
    out = enc(pixels, video_index, clip_index)
    # pixels uint8 [n, T, H, W, 3] (n <= batch_size) -> {"latents": np [n, T', h, w, C], ...}

`store`:
  "sample"   a posterior sample `mean + std * eps`; eps is drawn per clip from
             fold_in(fold_in(key(seed), video_index), clip_index), so a clip gets the same
             latents whatever batch, shard or process it is encoded in;
  "mean"     the posterior mean (deterministic);
  "moments"  the posterior moments [T', h, w, 2C] (mean, logvar) instead of latents, so that
             the training pipeline samples a fresh posterior every epoch.
An exact codec (PatchCodec) has no posterior: "sample" and "mean" both give its latents and
"moments" is an error. A partial batch is padded to `batch_size` (one compilation); the batch
axis is sharded over the local devices (batch_size is rounded up to a multiple of them).
`repa` (optional, vft.features.dinov2.RepaFeatures) adds "repa" [n, T', h, w, F] from the same
pixels in the same jitted call.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vft import sharding
from vft.models.vae import vidtok as vidtok_lib

STORES = ("sample", "mean", "moments")


def _codec_fn(codec):
  """(params, apply) with apply(params, video [B, T, H, W, 3] f32) -> (mean or latents, logvar
  or None). Params travel as jit arguments, not as baked-in constants."""
  if isinstance(codec, vidtok_lib.VidTokCodec):
    cfg = codec.cfg

    def apply(params, video):
      mean, logvar = jnp.split(vidtok_lib.encode_moments(cfg, params, video), 2, axis=-1)
      return mean, logvar
    return codec.params, apply
  if hasattr(codec, "moments"):
    raise TypeError(f"BatchEncoder: codec {type(codec).__name__} has a posterior but no known "
                    "pure moments function; add it to vft/data/encode.py")
  return None, lambda params, video: (codec.encode(video), None)


class BatchEncoder:
  """Callable: (pixels uint8 [n, T, H, W, 3], video_index [n], clip_index [n]) -> dict of numpy
  arrays (module doc)."""

  def __init__(self, codec, *, store: str = "sample", seed: int = 0, batch_size: int = 8,
               dtype: str = "bfloat16", repa: Any | None = None, devices=None):
    if store not in STORES:
      raise ValueError(f"store: {store!r}; expected one of {list(STORES)}")
    self.codec, self.store, self.repa = codec, store, repa
    self.codec_params, codec_apply = _codec_fn(codec)
    if store == "moments" and not isinstance(codec, vidtok_lib.VidTokCodec):
      raise ValueError(f"store='moments': codec {type(codec).__name__} is exact (no posterior "
                       "moments); use store='mean' or 'sample'")
    devices = list(jax.local_devices() if devices is None else devices)
    self.mesh = sharding.make_mesh({"data": -1}, devices)
    n = len(devices)
    self.batch_size = -(-int(batch_size) // n) * n
    self.dtype = jnp.dtype(dtype)
    out_dtype = self.dtype
    base_key = jax.random.key(seed)
    repa_apply = None if repa is None else repa.apply

    def encode(codec_params, repa_params, pixels, video_index, clip_index):
      video = pixels.astype(jnp.float32) / 127.5 - 1.0
      mean, logvar = codec_apply(codec_params, video)
      out = {}
      if store == "moments":
        out["moments"] = jnp.concatenate([mean, logvar], axis=-1).astype(out_dtype)
      elif store == "sample" and logvar is not None:
        keys = jax.vmap(lambda v, c: jax.random.fold_in(jax.random.fold_in(base_key, v), c))(
            video_index, clip_index)
        eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], mean.dtype))(keys)
        out["latents"] = vidtok_lib.sample_posterior(
            jnp.concatenate([mean, logvar], axis=-1), eps=eps).astype(out_dtype)
      else:
        out["latents"] = mean.astype(out_dtype)
      if repa_apply is not None:
        out["repa"] = repa_apply(repa_params, video).astype(out_dtype)
      return out

    replicated = sharding.replicated(self.mesh)
    self.codec_params = jax.device_put(self.codec_params, replicated)
    self.repa_params = None if repa is None else jax.device_put(repa.params, replicated)
    self._data = data = sharding.batch_sharding(self.mesh, ndim=5)
    self._index = index = sharding.batch_sharding(self.mesh, ndim=1)
    self._encode = jax.jit(encode, in_shardings=(None, None, data, index, index),
                           out_shardings=data)

  def __call__(self, pixels: np.ndarray, video_index: np.ndarray,
               clip_index: np.ndarray) -> dict[str, np.ndarray]:
    n = len(pixels)
    if not 1 <= n <= self.batch_size:
      raise ValueError(f"BatchEncoder: got {n} clips; expected 1..{self.batch_size}")
    pad = self.batch_size - n
    if pad:
      pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)])
      video_index = np.concatenate([video_index, np.repeat(video_index[-1:], pad)])
      clip_index = np.concatenate([clip_index, np.repeat(clip_index[-1:], pad)])
    put = jax.device_put  # onto this process's devices (fully addressable)
    out = self._encode(self.codec_params, self.repa_params,
                       put(np.asarray(pixels, np.uint8), self._data),
                       put(np.asarray(video_index, np.int32), self._index),
                       put(np.asarray(clip_index, np.int32), self._index))
    return {k: np.asarray(jax.device_get(v))[:n] for k, v in out.items()}
