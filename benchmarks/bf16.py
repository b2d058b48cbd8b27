"""fp32 vs bf16 compute on the bench small model's transformer stages, side by side in one run.

Loads `../shared/bench-models/small` through `VideoTokenizer.from_official` once per compute dtype
and attention impl; times the encoder + FSQ on the bench latents (`tokenize`) and one conditional
decoder call at the bench (x_t, t) (`dec_forward`); median of `--reps` after a compile + warm-up.
Checks the fp32 run against the official outputs in `bench_io.safetensors`, and for bf16 counts
the token ids that differ from fp32 and how close the fp32 FSQ value of each differing digit was
to its rounding boundary (|frac(bounded)| near 0.5 = ambiguous).

  python benchmarks/bf16.py
  python benchmarks/bf16.py --impls=einsum,blocked --reps=5
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from benchmarks.attention import timed  # noqa: E402
from vft.api import VideoTokenizer  # noqa: E402
from vft.models import fsq  # noqa: E402

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench-models", "small")


def stages(tok: VideoTokenizer):
  """(tokenize(latents) -> (ids, z), dec_forward(codes, x_t, t) -> v), jitted."""
  model, params = tok.model, {"params": tok.params}
  n = tok.num_registers

  def tokenize(lat):
    codes, z = model.apply(params, lat, method="encode_logits")
    return fsq.codes_to_ids(codes, model.cfg.fsq_levels), z

  def dec_forward(codes, x_t, t):
    b = codes.shape[0]
    return model.apply(params, codes, x_t, t, keep_k=jnp.full((b,), n),
                       null_cond=jnp.zeros((b,), bool), method="decode")
  return jax.jit(tokenize), jax.jit(dec_forward)


def boundary_distance(z: np.ndarray, levels) -> np.ndarray:
  """Pre-rounding FSQ values -> distance of each digit to its rounding boundary (0 = on it)."""
  lv = np.asarray(levels, np.float64)
  half_l = (lv - 1) * (1 + 1e-3) / 2
  offset = np.where(lv % 2 == 0, 0.5, 0.0)
  bounded = np.tanh(z + np.arctanh(offset / half_l)) * half_l - offset
  return np.abs(np.abs(bounded - np.round(bounded)) - 0.5)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--bench", default=BENCH)
  ap.add_argument("--impls", default="xla,einsum,blocked")
  ap.add_argument("--reps", type=int, default=5)
  args = ap.parse_args()
  io = load_file(os.path.join(args.bench, "bench_io.safetensors"))
  cl = lambda a: jnp.asarray(np.moveaxis(a, 1, -1))  # noqa: E731  [B, C, T, H, W] -> [B, T, H, W, C]
  lat, x_t, t = cl(io["vae_latents"]), cl(io["dec_xt"]), jnp.asarray(io["dec_t"])
  codes, v_ref = jnp.asarray(io["fsq_quants"]), np.moveaxis(io["dec_v_cond"], 1, -1)
  print(f"# {jax.devices()[0].platform}, jax {jax.__version__}, bench {args.bench}, "
        f"median of {args.reps}")
  print("| impl | dtype | tokenize (s) | vs fp32 | dec_forward (s) | vs fp32 | "
        "ids != fp32 (of N) | ids != official | max |v - official| |")
  print("|---|---|---|---|---|---|---|---|---|")
  for impl in args.impls.split(","):
    ref = None
    for dtype in ("float32", "bfloat16"):
      tok = VideoTokenizer.from_official(os.path.join(args.bench, "model.safetensors"),
                                         dtype=dtype, attention_impl=impl)
      tokenize, dec_forward = stages(tok)
      t_tok, (ids, z) = timed(tokenize, lat, reps=args.reps)
      t_dec, v = timed(dec_forward, codes, x_t, t, reps=args.reps)
      ids, z = np.asarray(ids), np.asarray(z)
      if ref is None:
        ref = (t_tok, t_dec, ids, z)
      diff = ids != ref[2]
      print(f"| {impl} | {dtype} | {t_tok:.3f} | {t_tok / ref[0]:.2f} | {t_dec:.3f} | "
            f"{t_dec / ref[1]:.2f} | {int(diff.sum())} of {ids.size} | "
            f"{int((ids != io['tokens']).sum())} | {float(np.abs(v - v_ref).max()):.1e} |",
            flush=True)
      if diff.any():  # which FSQ digits flipped, and how ambiguous the fp32 rounding was
        dist = boundary_distance(ref[3], tok.model.cfg.fsq_levels)
        q32 = np.asarray(fsq.quantize(jnp.asarray(ref[3]), tok.model.cfg.fsq_levels))
        q16 = np.asarray(fsq.quantize(jnp.asarray(z), tok.model.cfg.fsq_levels))
        flipped = q32 != q16
        print(f"  {impl} bf16: {int(flipped.sum())} of {flipped.size} FSQ digits flipped; "
              f"fp32 distance to the rounding boundary: flipped max "
              f"{float(dist[flipped].max()):.3g}, median {float(np.median(dist[flipped])):.3g}; "
              f"all digits median {float(np.median(dist)):.3g}; max |z16 - z32| "
              f"{float(np.abs(z - ref[3]).max()):.3g}")


if __name__ == "__main__":
  main()
