"""Shared test utilities: a tiny on-disk dataset and a tiny training config."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from vft.data import synthetic
from vft.data.writer import ShardWriter
from vft.models.vae import PatchCodec

SIZE, FRAMES, SPATIAL = 16, 17, 4
CODEC = PatchCodec(spatial_factor=SPATIAL)


def write_tiny_dataset(out_dir, num_train: int = 24, num_eval: int = 2, nan_from: int | None = None,
                       repa_dim: int | None = None):
  """train: `num_train` synthetic clips (latents [5, 4, 4, 192] bf16); eval: with pixels.
  A split with 0 clips is not written. `nan_from`: index from which train latents are NaN
  (for the non-finite-loss guard). `repa_dim`: also random REPA targets [5, 4, 4, repa_dim]
  bf16 in the train records."""
  meta = {"codec": {"name": "patch", "spatial_factor": SPATIAL, "time_factor": 4}}
  videos = synthetic.make_videos(range(num_train + num_eval), FRAMES, SIZE)
  lat = np.asarray(CODEC.encode(jnp.asarray(videos, jnp.float32) / 127.5 - 1.0))
  if num_train:
    with ShardWriter(out_dir, "train", records_per_shard=8, meta=meta) as w:
      for i in range(num_train):
        x = lat[i].astype(np.float32)
        if nan_from is not None and i >= nan_from:
          x = np.full_like(x, np.nan)
        rec = {"latents": x.astype(jnp.bfloat16), "video_id": f"synthetic/{i}"}
        if repa_dim:
          rng = np.random.default_rng(i)
          rec["repa"] = rng.normal(size=(*x.shape[:3], repa_dim)).astype(jnp.bfloat16)
        w.write(rec)
  if num_eval:
    with ShardWriter(out_dir, "eval", records_per_shard=8, meta=meta) as w:
      for i in range(num_train, num_train + num_eval):
        w.write({"latents": lat[i].astype(jnp.bfloat16), "video": videos[i],
                 "video_id": f"synthetic/{i}"})
  return out_dir


def tiny_config(data_dir, **overrides):
  import sys, os  # noqa: E401
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
  from configs import demo
  c = demo.get_config("smoke")
  c.data.dir = str(data_dir)
  c.data.size = SIZE
  c.codec.update(dict(spatial_factor=SPATIAL, pool=1))
  c.data.global_batch_size = 8
  c.model.update(dict(latent_channels=192, num_registers=4, enc_width=32, dec_width=32,
                      head_dim=16, enc_depth=1, dec_depth=2, posemb_max=8,
                      attention_impl="xla"))
  c.optim.update(dict(lr=3e-3, warmup_steps=2))
  c.checkpoint.use_async = False
  c.total_steps = 4
  c.eval.every_steps = 1000
  return apply_overrides(c, overrides)


def apply_overrides(c, overrides: dict):
  """Sets dotted config fields: {"optim.lr": 1e-3} -> c.optim.lr = 1e-3. Returns c."""
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c
