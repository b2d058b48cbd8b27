"""How large a coarse-to-fine gap does the demo data allow, and after how many SGD steps?

Two linear references on the demo's latents (per latent frame), scored like the demo (PSNR in
dB on [0, 1] pixels of the held-out clips, decoded by the codec), at budgets 1, 2, 4, ..., N:
  - PCA: the best linear code with k * len(fsq_levels) dimensions (closed form, fit on train);
  - a nested-dropout FSQ auto-encoder (Linear -> FSQ -> keep the first k registers -> Linear;
    `train.nested_dropout_mode` budgets, AdamW) after a list of step counts: the speed at which
    plain SGD orders information over the registers, with no transformer in the way. With
    `--encoder=tokenizer` the demo's transformer encoder replaces the first Linear (same linear
    read-out, no flow decoder).
The tokenizer's own curve (`make demo`, metrics.json) can be read against both.

  python benchmarks/budget_gap.py                        # data in runs/demo/data (prep if absent)
  python benchmarks/budget_gap.py --data=DIR --steps=600,2000,10000 --lr=3e-4
  python benchmarks/budget_gap.py --encoder=tokenizer --steps=300,600 --lr=1e-3   # ~7 min
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs import demo  # noqa: E402
from vft import flow  # noqa: E402
from vft import main as vft_main  # noqa: E402
from vft.data import pipeline  # noqa: E402
from vft.eval import metrics as metrics_lib  # noqa: E402
from vft.models import fsq  # noqa: E402
from vft.models.vae import make_codec  # noqa: E402
from vft.train import loop  # noqa: E402


def psnr_db(latents: np.ndarray, videos: np.ndarray, codec) -> float:
  """Mean per-clip PSNR of decoded latents [n, T, H, W, C] against uint8 videos [n, F, h, w, 3]."""
  x = metrics_lib.to_unit(codec.decode(jnp.asarray(latents, jnp.float32)))
  return float(jnp.mean(metrics_lib.psnr(x, jnp.asarray(videos, jnp.float32) / 255.0)))


def pca_curve(train: np.ndarray, lat: np.ndarray, vid: np.ndarray, codec, dims) -> list[float]:
  """PSNR of the held-out clips projected on the top-m principal directions of the training
  latent frames, for each m in dims."""
  frame = int(np.prod(train.shape[2:]))
  x = train.reshape(-1, frame)
  mu = x.mean(0)
  _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
  y = lat.reshape(-1, frame) - mu
  return [psnr_db(((y @ vt[:m].T) @ vt[:m] + mu).reshape(lat.shape), vid, codec) for m in dims]


def linear_encoder(frame: int, n: int, d: int, seed: int = 0):
  """-> (params, encode(params, x [B, T, H, W, C]) -> pre-FSQ logits [B, T, n, d])."""
  def encode(w, x):
    b, t = x.shape[:2]
    return (x.reshape(b, t, frame) @ w).reshape(b, t, n, d)
  return jax.random.normal(jax.random.key(seed), (frame, n * d)) * 0.02, encode


def tokenizer_encoder(model_cfg, latent_shape, seed: int = 0):
  """The tokenizer's transformer encoder (`config.model`) in the same role."""
  from flax import linen as nn
  from vft.models.config import TokenizerConfig
  from vft.models.encoder import Encoder
  enc = Encoder(TokenizerConfig.from_config(model_cfg))
  params = nn.unbox(enc.init(jax.random.key(seed), jnp.zeros((1,) + tuple(latent_shape)))["params"])
  return params, lambda p, x: enc.apply({"params": p}, x)


def linear_fsq_ae(train, lat, vid, codec, levels, n, mode, steps, lr, batch, budgets, seed=0,
                  encoder=None):
  """Trains the nested-dropout FSQ auto-encoder with a linear decoder; -> {step: [PSNR per
  budget]}. encoder: (params, encode) as from `linear_encoder` (the default)."""
  t, frame, d = train.shape[1], int(np.prod(train.shape[2:])), len(levels)
  enc_params, encode = encoder or linear_encoder(frame, n, d, seed)
  params = {"enc": enc_params, "dec": jnp.zeros((n * d, frame)), "bias": jnp.zeros((frame,))}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, lr, min(50, max(steps) // 2), max(steps)),
      weight_decay=0.01))
  opt = tx.init(params)

  def reconstruct(p, x, keep_k):  # x [B, T, H, W, C], keep_k [B]
    b = x.shape[0]
    codes = fsq.quantize(encode(p["enc"], x), levels)
    keep = (jnp.arange(n)[None] < keep_k[:, None])[:, None, :, None]
    return (jnp.where(keep, codes, 0.0).reshape(b, t, n * d) @ p["dec"] + p["bias"]).reshape(
        x.shape)

  @jax.jit
  def step(p, o, x, key):
    def loss(p):
      return jnp.mean(jnp.square(reconstruct(p, x, flow.sample_keep_k(key, x.shape[0], n, mode))
                                 - x))
    g = jax.grad(loss)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  rng, out = np.random.default_rng(seed), {}
  for s in range(1, max(steps) + 1):
    idx = rng.choice(len(train), batch, replace=False)
    params, opt = step(params, opt, jnp.asarray(train[idx]), jax.random.fold_in(
        jax.random.key(seed + 1), s))
    if s in steps:
      out[s] = [psnr_db(np.asarray(reconstruct(params, jnp.asarray(lat), jnp.full(
          (len(lat),), k))), vid, codec) for k in budgets]
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data", default="runs/demo/data", help="demo dataset dir (prep if absent)")
  ap.add_argument("--steps", default="600,2000,10000", help="comma-separated step counts")
  ap.add_argument("--lr", type=float, default=3e-4)
  ap.add_argument("--encoder", choices=("linear", "tokenizer"), default="linear",
                  help="linear: Linear(frame -> N x d); tokenizer: the demo's transformer encoder")
  args = ap.parse_args(argv)
  c = demo.get_config()
  c.data.dir = args.data
  codec = make_codec(c.codec)
  vft_main.prep(c, args.data)  # the demo's prep job: a no-op when the dataset is complete
  train = np.stack([np.asarray(r["latents"], np.float32)
                    for r in pipeline.load_split(args.data, c.data.train_split, ("latents",))])
  lat, vid = loop.load_eval_clips(c, args.data)  # the clips the demo's metrics.json scores
  levels, n = tuple(c.model.fsq_levels), int(c.model.num_registers)
  budgets = flow.eval_budgets(n)
  steps = sorted({int(s) for s in args.steps.split(",")})
  print(f"demo data: {len(train)} train clips, {len(lat)} held-out clips, latents "
        f"{list(train.shape[1:])}; FSQ {list(levels)} x {n} registers; budgets {budgets}")
  print(f"codec alone: {psnr_db(lat, vid, codec):.2f} dB")
  rows = [("PCA, k x %d dims" % len(levels),
           pca_curve(train, lat, vid, codec, [k * len(levels) for k in budgets]))]
  t0 = time.time()
  encoder = tokenizer_encoder(c.model, train.shape[1:]) if args.encoder == "tokenizer" else None
  for s, curve in linear_fsq_ae(train, lat, vid, codec, levels, n, c.train.nested_dropout_mode,
                                steps, args.lr, int(c.data.global_batch_size), budgets,
                                encoder=encoder).items():
    rows.append((f"{args.encoder} encoder + FSQ + linear decoder, {s} steps", curve))
  print(f"(auto-encoder: {time.time() - t0:.0f} s)")
  print("| reference | " + " | ".join(f"k={k}" for k in budgets) + " | gap k=N vs k=1 |")
  print("| --- " * (len(budgets) + 2) + "|")
  for name, curve in rows:
    print(f"| {name} | " + " | ".join(f"{p:.2f}" for p in curve) + f" | {curve[-1] - curve[0]:.2f} |")


if __name__ == "__main__":
  main()
