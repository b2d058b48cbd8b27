"""AR sampling speed: the KV-cache sampler (vft.ar.sample) against recomputing the prefix.

Both sample greedily from the same randomly initialised model (vocab 64 000, learned positions,
max sequence 1280) into a 1280-token sequence (5 latent frames x 256 tokens):
  - cache: `vft.ar.sample.make_sampler`, one cached decode step per token (all 1280 timed);
  - recompute: each token runs the full causal forward over the fixed 1280-token buffer and
    reads the logits at its position (static shapes, the way a cache-free JAX sampler runs; the
    cost of a step does not depend on the position, so `--recompute_steps` tokens are timed and
    the rate holds for the whole sequence). Its tokens are checked against the cache's.
Compile time is excluded (one warm-up call each). Prints tokens/s and the ratio.

`--train`: the AR train step instead (`configs/ar_c2v.py:demo` resized by --depth/--width/
--batch, the one Trainer's `jit_train_step` with the AR task's loss on a random token dataset
of 5 x 256 tokens), its model-FLOPs utilisation against f32 and bf16 matmul peaks measured in
the same run. Model FLOPs per step: 3 x forward, forward = 2 x (blocks' 12 d^2 L + head d V)
x tokens + 4 x L x S x d x tokens (attention scores and values, the causal half included).

  python benchmarks/ar_sample.py                          # depth 4, width 256, batch 1
  python benchmarks/ar_sample.py --depth=8 --width=512 --batch=4 --recompute_steps=8
  python benchmarks/ar_sample.py --train --batch=4 [--dtype=bfloat16]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vft.ar import sample as sample_lib  # noqa: E402
from vft.models import ar  # noqa: E402

FRAMES, PER_FRAME = 5, 256


def recompute_sampler(model: ar.ARTransformer, steps: int):
  """Greedy sampling of `steps` tokens, each by a full forward over the [B, 1280] buffer."""
  length = FRAMES * PER_FRAME

  @jax.jit
  def run(params, batch_seq):
    def step(i, seq):
      logits = model.apply(params, seq)  # [B, L, V]; position i predicts token i
      tok = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), -1)
      return jax.lax.dynamic_update_slice_in_dim(seq, tok[:, None].astype(jnp.int32), i, axis=1)
    return jax.lax.fori_loop(0, steps, step, batch_seq)

  return lambda params, b: run(params, jnp.zeros((b, length), jnp.int32))


def timed(fn, *args, repeats: int = 1):
  jax.block_until_ready(fn(*args))  # compile + warm-up
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return out, best


def ar_model_flops(depth: int, width: int, vocab: int, seq: int, batch: int) -> float:
  """Analytic FLOPs of one AR train step (module doc)."""
  tokens = batch * seq
  fwd = 2 * (12 * width**2 * depth + width * vocab) * tokens + 4 * depth * seq * width * tokens
  return 3.0 * fwd


def train_mfu(args) -> None:
  """The `--train` mode (module doc)."""
  import statistics
  import tempfile
  from benchmarks.train_step import matmul_peak
  from configs import ar_c2v
  from vft import sharding
  from vft.data.writer import ShardWriter
  from vft.train import ar_task
  from vft.train import optimizer as optim_lib
  from vft.train import state as state_lib
  from vft.train.step import jit_train_step

  cfg = ar_c2v.get_config("demo")
  cfg.model.update(dict(depth=args.depth, width=args.width, num_heads=args.depth,
                        dtype=args.dtype, dropout=0.0, attn_dropout=0.0, max_len=1280))
  cfg.data.global_batch_size = args.batch
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as root:
    with ShardWriter(root, "train") as w:
      for i in range(args.batch):
        w.write({"tokens": rng.integers(0, cfg.model.vocab_size, (FRAMES, PER_FRAME),
                                        dtype=np.int32), "label": np.int32(i % 12)})
    cfg.data.dir = root
    task = ar_task.ARTask(cfg, root)
    tx = optim_lib.make_optimizer(cfg)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    st, shard = state_lib.init_state_from(task.init_params, tx, jax.random.key(0), False, mesh,
                                          sharding.DEFAULT_RULES)
    batch = {"tokens": jnp.asarray(rng.integers(0, cfg.model.vocab_size,
                                                (args.batch, FRAMES, PER_FRAME)), jnp.int32),
             "label": jnp.arange(args.batch, dtype=jnp.int32) % 12}
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    step = jit_train_step(task.model, tx, cfg, mesh, sharding.DEFAULT_RULES, shard,
                          loss_fn=task.loss_fn)
    st, m = step(st, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      st, m = step(st, batch)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t0)
  peak32, peak16 = matmul_peak(jnp.float32), matmul_peak(jnp.bfloat16)
  t = statistics.median(times)
  flops = ar_model_flops(args.depth, args.width, int(cfg.model.vocab_size), FRAMES * PER_FRAME,
                         args.batch)
  peak = peak16 if args.dtype == "bfloat16" else peak32
  print(f"matmul peak: f32 {peak32 / 1e9:.0f} GFLOP/s, bf16->f32 {peak16 / 1e9:.0f} GFLOP/s")
  print("| model | dtype | batch | step s (median) | model GFLOP/step | GFLOP/s | MFU |")
  print("|---|---|---|---|---|---|---|")
  print(f"| AR depth {args.depth} width {args.width} (vocab {cfg.model.vocab_size}, "
        f"{FRAMES * PER_FRAME} tokens) | {args.dtype} | {args.batch} | {t:.3f} | "
        f"{flops / 1e9:.1f} | {flops / t / 1e9:.0f} | {flops / t / peak:.0%} |")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--depth", type=int, default=4)
  p.add_argument("--width", type=int, default=256)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--recompute_steps", type=int, default=16)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--train", action="store_true", help="time the AR train step (MFU) instead")
  p.add_argument("--steps", type=int, default=3, help="--train: timed steps after a warm-up")
  args = p.parse_args()
  if args.train:
    train_mfu(args)
    return

  cfg = ar.ARConfig(depth=args.depth, width=args.width, num_heads=args.depth, max_len=1280,
                    dtype=args.dtype, scan=True)
  model = ar.ARTransformer(cfg)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  n_params = sum(int(a.size) for a in jax.tree_util.tree_leaves(params))
  trunk = 12 * cfg.width ** 2 * cfg.depth
  print(f"device: {jax.devices()[0].device_kind}; model: depth {cfg.depth}, width {cfg.width}, "
        f"{n_params / 1e6:.1f}M params ({trunk / 1e6:.1f}M in blocks, head "
        f"{cfg.width * cfg.vocab_size / 1e6:.1f}M); batch {args.batch}; {args.dtype}")

  cache_fn = sample_lib.make_sampler(model, FRAMES, PER_FRAME)
  cached = lambda prm: cache_fn(prm, None, None, None, jnp.int32(PER_FRAME), jnp.float32(1.0),
                                jnp.float32(0.0), jax.random.key(0), batch=args.batch)
  seq_cache, t_cache = timed(cached, params, repeats=args.repeats)
  n = args.recompute_steps
  seq_full, t_full = timed(recompute_sampler(model, n), params, args.batch,
                           repeats=args.repeats)
  same = np.array_equal(np.asarray(seq_cache[:, :n]), np.asarray(seq_full[:, :n]))
  rate_cache = args.batch * FRAMES * PER_FRAME / t_cache
  rate_full = args.batch * n / t_full
  print(f"| KV cache | {FRAMES * PER_FRAME} | {t_cache:.2f} | {rate_cache:,.0f} |")
  print(f"| recompute prefix (full forward per token) | {n} | {t_full:.2f} | {rate_full:,.1f} |")
  print(f"cache / recompute tokens/s: {rate_cache / rate_full:.1f}x; first {n} greedy tokens "
        f"identical: {same}")


if __name__ == "__main__":
  main()
