"""Train-step benchmark: step time, tokens/s and model-FLOPs utilisation (MFU).

MFU is measured against a matmul peak measured in the same run on the same devices (f32, and
bf16 with f32 accumulation), so the ratio is meaningful on a noisy shared machine. Model FLOPs
are counted analytically (`vft.plan.model_flops`: 6 x matmul params x tokens + attention, no remat);
XLA's cost analysis is printed beside them (it counts a scanned layer once, so it under-counts
`model.scan=True` configs).

  python benchmarks/train_step.py                 # demo + d12 (small batch)
  python benchmarks/train_step.py --configs=demo --steps=10
  python benchmarks/train_step.py --configs=demo --impls=einsum,blocked   # side by side

With `--impls`, each config runs once per attention impl in the same run. "masked MFU" counts
attention FLOPs only for the mask's allowed entries (what a block-sparse kernel must do), the
plain MFU counts them dense (`model_flops`), so blocked attention is not credited for work it
skips.
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

from vft import sharding  # noqa: E402
from vft.models import masks  # noqa: E402
from vft.models.config import TokenizerConfig  # noqa: E402
from vft.models.encoder import slot_rows  # noqa: E402
from vft.models.tokenizer import VideoFlexTok  # noqa: E402
from vft.plan import block_matmul_params, latent_shape, model_flops  # noqa: E402
from vft.train import optimizer as optim_lib  # noqa: E402
from vft.train import state as state_lib  # noqa: E402
from vft.train.step import jit_train_step  # noqa: E402


def matmul_peak(dtype, n: int = 2048, reps: int = 5) -> float:
  """FLOP/s of an n^3 matmul (f32 accumulation), median of `reps` timed runs."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  f(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n**3 / statistics.median(times)


def load_config(name: str):
  import importlib
  spec = {"demo": ("configs.demo", None), "d12": ("configs.tokenizer_d12_d12", "small_batch")}
  mod, arg = spec[name]
  cfg = importlib.import_module(mod).get_config(arg)
  if name == "d12":
    cfg.data.global_batch_size = 1
  return cfg


def masked_flops(cfg, bs: int, spec) -> float:
  """The work a step must do: `model_flops` with the attention term scaled by each trunk's
  allowed-entry fraction, and without the last block's rows its trunk does not output (the
  encoder keeps only the registers, the decoder only the patches: `Transformer(out_rows=)`)."""
  m = cfg.model
  t = spec[0] // m.patch_size[0]
  hw = (spec[1] // m.patch_size[1]) * (spec[2] // m.patch_size[2])
  n = m.num_registers
  s = t * (hw + n)
  dense = model_flops(cfg, bs, spec)
  for width, depth, mode, last in ((m.enc_width, m.enc_depth, m.enc_mask, True),
                                   (m.dec_width, m.dec_depth, m.dec_mask, False)):
    mask = masks.make_mask(mode, t, hw, n)
    dense -= (1 - mask.mean()) * bs * 3 * depth * 4 * s * s * width
    dropped = np.ones(s, bool)
    dropped[slot_rows(t, hw, n, last=last)] = False
    dense -= bs * 3 * (2 * dropped.sum() * block_matmul_params(width) + 4 * width * mask[dropped].sum())
  return dense


def bench(name: str, steps: int, dtype: str | None, impl: str | None = None) -> dict:
  cfg = load_config(name)
  if dtype:
    cfg.model.dtype = dtype
  if impl:
    cfg.model.attention_impl = impl
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  model = VideoFlexTok(TokenizerConfig.from_config(cfg.model))
  tx = optim_lib.make_optimizer(cfg)
  spec = latent_shape(cfg)
  state, shard = state_lib.init_state(model, tx, jax.random.key(0), (1, *spec), False, mesh,
                                      sharding.DEFAULT_RULES)
  bs = int(cfg.data.global_batch_size)
  bsh = sharding.batch_sharding(mesh)
  batch = {"latents": jax.device_put(
      jax.random.normal(jax.random.key(1), (bs, *spec), jnp.float32).astype(jnp.bfloat16), bsh)}
  if cfg.model.repa_layer is not None and cfg.train.repa_weight > 0:  # stand-in DINOv2 targets
    ph, pw = cfg.model.patch_size[1:]
    batch["repa"] = jax.device_put(jax.random.normal(
        jax.random.key(2), (bs, spec[0], spec[1] // ph, spec[2] // pw, cfg.model.repa_dim),
        jnp.float32).astype(jnp.bfloat16), bsh)
  step = jit_train_step(model, tx, cfg, mesh, sharding.rules_from_config(cfg.sharding_rules), shard)
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    state, m = compiled(state, batch)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      state, m = compiled(state, batch)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t0)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  t_med = statistics.median(times)
  h = w = spec[1] // cfg.model.patch_size[1]
  tokens = bs * spec[0] * (h * w + cfg.model.num_registers) * 2  # encoder + decoder sequences
  mflops = model_flops(cfg, bs, spec)
  return dict(config=name, dtype=cfg.model.dtype, impl=cfg.model.attention_impl, batch=bs,
              params_m=n_params / 1e6, masked_gflops=masked_flops(cfg, bs, spec) / t_med / 1e9,
              step_s=t_med, step_s_min=min(times), tokens_per_s=tokens / t_med,
              xla_gflop=flops / 1e9, model_gflop=mflops / 1e9,
              achieved_gflops=mflops / t_med / 1e9)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--configs", default="demo,d12")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--dtype", default=None, help="override config.model.dtype")
  ap.add_argument("--impls", default="", help="attention impls to run side by side (default: "
                  "the config's)")
  args = ap.parse_args()
  dev = jax.devices()[0]
  print(f"# devices: {jax.device_count()} x {dev.platform} ({dev.device_kind}); jax {jax.__version__}")
  peak32 = matmul_peak(jnp.float32)
  peak16 = matmul_peak(jnp.bfloat16)
  print(f"matmul peak (measured, 2048^3): f32 {peak32 / 1e9:.1f} GFLOP/s, "
        f"bf16->f32 {peak16 / 1e9:.1f} GFLOP/s")
  print("| config | dtype | attention | batch | params (M) | step (s, median) | tokens/s | "
        "model GFLOP/step | XLA cost-analysis GFLOP | model GFLOP/s | MFU vs same-dtype peak | "
        "masked MFU |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for name in args.configs.split(","):
    for impl in args.impls.split(",") if args.impls else [None]:
      r = bench(name, args.steps, args.dtype, impl)
      peak = peak16 if r["dtype"] == "bfloat16" else peak32
      print(f"| {r['config']} | {r['dtype']} | {r['impl']} | {r['batch']} | "
            f"{r['params_m']:.1f} | {r['step_s']:.3f} | {r['tokens_per_s']:.0f} | "
            f"{r['model_gflop']:.1f} | {r['xla_gflop']:.1f} | {r['achieved_gflops']:.1f} | "
            f"{100 * r['achieved_gflops'] * 1e9 / peak:.1f}% | "
            f"{100 * r['masked_gflops'] * 1e9 / peak:.1f}% |", flush=True)


if __name__ == "__main__":
  main()
