"""Attention implementations side by side on a transformer trunk (forward, and forward+backward).

Default shapes: the bench small model's (`../shared/bench-models/small`): D 256, 4 layers,
head_dim 64, 5 latent frames of 16x16 patches + 64 registers (S = 1600); the decoder trunk
(adaLN, `time_block_causal`) and the encoder trunk (`time_block_causal_last`). Random weights;
every impl runs the same parameters and is checked against `einsum`. Median of `--reps` timed
calls after a warm-up, all impls in one run (compare ratios on a shared machine).

  python benchmarks/attention.py
  python benchmarks/attention.py --impls=einsum,blocked --dtype=bfloat16 --grad
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vft.models import block_attention, masks  # noqa: E402
from vft.models.config import DTYPES  # noqa: E402
from vft.models.transformer import Transformer, mlp_hidden_dim  # noqa: E402


def timed(f, *args, reps: int) -> tuple[float, object]:
  out = jax.block_until_ready(f(*args))  # compile + warm-up
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def trunk(name: str, args) -> tuple[np.ndarray, dict]:
  """The mask and Transformer kwargs of the decoder / encoder trunk."""
  mode = {"decoder": "time_block_causal", "encoder": "time_block_causal_last"}[name]
  mask = masks.make_mask(mode, args.frames, args.patches, args.registers)
  kw = dict(depth=args.depth, num_heads=args.width // args.head_dim, head_dim=args.head_dim,
            mlp_dim=mlp_hidden_dim(args.width), dtype=DTYPES[args.dtype])
  if name == "decoder":
    kw["adaln_segments"] = (0,) * args.patches + (1,) * args.registers
  return mask, kw


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--impls", default="einsum,xla,blocked")
  ap.add_argument("--trunks", default="decoder,encoder")
  ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
  ap.add_argument("--width", type=int, default=256)
  ap.add_argument("--depth", type=int, default=4)
  ap.add_argument("--head_dim", type=int, default=64)
  ap.add_argument("--frames", type=int, default=5)
  ap.add_argument("--patches", type=int, default=256)
  ap.add_argument("--registers", type=int, default=64)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--grad", action="store_true", help="also time forward+backward")
  args = ap.parse_args()
  print(f"# {jax.devices()[0].platform}, jax {jax.__version__}, dtype {args.dtype}, "
        f"batch {args.batch}, median of {args.reps}")
  print("| trunk | S | blocked work / dense | impl | forward (s) | vs einsum | fwd+bwd (s) | "
        "vs einsum | max |out - einsum| |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name in args.trunks.split(","):
    mask, kw = trunk(name, args)
    s = mask.shape[0]
    frac = block_attention.work_fraction(block_attention.plan(mask), s)
    x = jax.random.normal(jax.random.key(0), (args.batch, s, args.width))
    cond = jax.random.normal(jax.random.key(1), (args.batch, args.width))
    params = Transformer(**kw).init(jax.random.key(2), x, mask, cond)
    leaves, tree = jax.tree_util.tree_flatten(params)  # adaLN is zero-initialised: perturb all
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = tree.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    ref = t_ref = g_ref = None
    for impl in args.impls.split(","):
      model = Transformer(**kw, attention_impl=impl)
      fwd = jax.jit(lambda p, x, c, m=model: m.apply(p, x, mask, c)[0])
      t_f, y = timed(fwd, params, x, cond, reps=args.reps)
      t_g = float("nan")
      if args.grad:
        loss = lambda p, x, c, m=model: jnp.sum(jnp.sin(m.apply(p, x, mask, c)[0]))
        t_g, _ = timed(jax.jit(jax.grad(loss)), params, x, cond, reps=args.reps)
      y = np.asarray(y, np.float32)
      if ref is None and impl == "einsum":
        ref, t_ref, g_ref = y, t_f, t_g
      err = float(np.abs(y - ref).max()) if ref is not None else float("nan")
      print(f"| {name} | {s} | {frac:.2f} | {impl} | {t_f:.3f} | "
            f"{t_f / t_ref if t_ref else float('nan'):.2f} | {t_g:.3f} | "
            f"{t_g / g_ref if g_ref else float('nan'):.2f} | {err:.1e} |", flush=True)


if __name__ == "__main__":
  main()
