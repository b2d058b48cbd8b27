"""Inference benchmark on official-format weights, checked against the official outputs.

Times the release's inference stages and the two API calls on `../shared/bench-models/<model>`
(`model.safetensors` loaded through `VideoTokenizer.from_official`; `bench_io.safetensors` holds
the official inputs and outputs of every stage, channels-first):

  vae_encode      VidTok encoder + posterior sample (the eps that maps the official moments to
                  the official latents is injected)                       video -> latents
  tokenize        encoder + FSQ on the official `vae_latents`             latents -> ids
  dec_forward     one conditional decoder call on `dec_xt`, `dec_t`       -> velocity
  detokenize      8 Euler steps, CFG 3, no APG, from `detok_noise` (16 decoder evaluations, cond
                  and uncond rows batched), no VAE decode                 ids -> latents
  vae_decode      VidTok decoder on the official `detok_latents`          latents -> RGB
  api_tokenize    `VideoTokenizer.tokenize(video, eps=...)`               video -> ids
  api_detokenize  `VideoTokenizer.detokenize(ids, steps=8, guidance_scale=3, noise=...)`
                                                                          ids -> RGB

Every stage is checked against bench_io before it is timed: token ids identical (float32) and
float outputs within `TOL[dtype]` of the official ones (max |ours - official| / max |official|;
the max abs error is printed); a stage that computes something else gets no time. In bfloat16
the fraction of token ids that differ from the official (= our float32) ids is reported and must
stay below `BF16_MAX_ID_FLIPS`.

Protocol: batch 1; the first call is untimed (compile), then the median (min, max) of `--reps`
timed calls, each ended by `jax.block_until_ready`. Each (attention impl, dtype) configuration
runs in its own subprocess, so its peak RSS (ru_maxrss) is its own. Attention impls: every
entry of `vft.models.transformer.ATTENTION_IMPLS` usable on the backend (splash only on TPU,
cudnn only on GPU). The official times are the issue-14 table (release code, fp32,
`torch.compile(flex_attention)`, 2 torch threads, same 2-core CPU machine; two runs); the ratio
is vft / mean of the two official runs.

  python benchmarks/inference.py                          # small model, all impls, fp32 + bf16
  python benchmarks/inference.py --model=tiny --impls=einsum --dtypes=float32 --reps=1
  python benchmarks/inference.py --stages=vae_encode,vae_decode --json=/tmp/bench.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vft import flow  # noqa: E402
from vft.api import VideoTokenizer  # noqa: E402
from vft.convert import safetensors_io  # noqa: E402
from vft.models import fsq  # noqa: E402
from vft.models.transformer import ATTENTION_IMPLS  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_MODELS = os.path.join(REPO, "..", "shared", "bench-models")
STAGES = ("vae_encode", "tokenize", "dec_forward", "detokenize", "vae_decode", "api_tokenize",
          "api_detokenize")
DTYPES = ("float32", "bfloat16")
STEPS, CFG_SCALE = 8, 3.0
# max |ours - official| / max |official| per dtype (float32: the parity tests' bound).
TOL = {"float32": 1e-4, "bfloat16": 0.1}
BF16_MAX_ID_FLIPS = 0.25  # a wrong computation flips ~all ids; bf16 rounding flips a few
# Issue 14's official times (s) on the small model, two runs: release code, fp32, 2 threads.
OFFICIAL_S = {"small": {
    "vae_encode": (0.616, 0.779), "tokenize": (0.214, 0.309), "dec_forward": (0.198, 0.224),
    "detokenize": (3.260, 3.883), "vae_decode": (1.342, 1.238),
    "api_tokenize": (0.830, 1.088), "api_detokenize": (4.602, 5.121)}}


class CheckError(AssertionError):
  """A stage's output differs from the official one beyond the stated tolerance."""


# ------------------------------------------------------------------ inputs and checks
def read_bench_io(model_dir: str) -> dict[str, np.ndarray]:
  """bench_io.safetensors -> channels-last arrays: [B, C, T, H, W] tensors become
  [B, T, H, W, C]; tokens int32; the posterior `eps` that maps the official moments to the
  official latents is added (latents = mean + exp(0.5 clip(logvar, -30, 20)) eps)."""
  path = os.path.join(model_dir, "bench_io.safetensors")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file (expected the bench model's official inputs "
                            f"and outputs; see ../shared/bench-models/README.md)")
  raw = safetensors_io.read_tensors(path)
  want = {"video", "vae_moments", "vae_latents", "tokens", "fsq_quants", "dec_xt", "dec_t",
          "dec_v_cond", "detok_noise", "detok_latents", "vae_decode_rgb"}
  if missing := sorted(want - set(raw)):
    raise ValueError(f"{path}: missing tensors {missing}")
  io = {k: np.moveaxis(v, 1, -1) if v.ndim == 5 else v for k, v in raw.items()}
  io["tokens"] = raw["tokens"].astype(np.int32)
  mean, logvar = np.split(io["vae_moments"].astype(np.float64), 2, axis=-1)
  io["eps"] = ((io["vae_latents"] - mean) / np.exp(0.5 * np.clip(logvar, -30, 20))).astype(
      np.float32)
  return io


def float_error(ours, ref) -> dict:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    raise CheckError(f"shape {ours.shape}, official {ref.shape}")
  abs_err = float(np.max(np.abs(ours - ref)))
  return {"max_abs_err": abs_err, "rel_err": abs_err / max(float(np.max(np.abs(ref))), 1e-30)}


def id_error(ours, ref) -> dict:
  ours, ref = np.asarray(ours), np.asarray(ref)
  if ours.shape != ref.shape:
    raise CheckError(f"ids shape {ours.shape}, official {ref.shape}")
  return {"id_flips": float(np.mean(ours != ref))}


def check(name: str, errs: dict, dtype: str) -> dict:
  """Raises CheckError when a float error exceeds TOL[dtype] or token ids differ (float32) /
  differ in more than BF16_MAX_ID_FLIPS of the positions (bfloat16)."""
  tol = TOL[dtype]
  max_flips = 0.0 if dtype == "float32" else BF16_MAX_ID_FLIPS
  bad = [f"{k}: {v:.3g} > {tol}" for k, v in errs.items() if k.endswith("rel_err") and v > tol]
  bad += [f"{k}: {v:.1%} of the ids differ (allowed {max_flips:.0%})"
          for k, v in errs.items() if k.endswith("id_flips") and v > max_flips]
  if bad:
    raise CheckError(f"{name} ({dtype}) differs from the official output: {'; '.join(bad)}")
  return errs


# ------------------------------------------------------------------ stages
@dataclasses.dataclass
class Stage:
  """`run()` computes the stage's output (device arrays or host arrays); `errors(out)` compares
  it with the official output -> {name: error}."""
  name: str
  run: Callable[[], Any]
  errors: Callable[[Any], dict]


def build_stages(tok: VideoTokenizer, io: dict) -> dict[str, Stage]:
  """The benchmarked stages of `tok` on the bench inputs `io` (from `read_bench_io`)."""
  runner, params, model = tok.runner, tok.params, tok.model
  put = jnp.asarray
  video, eps, lat, ids = put(io["video"]), put(io["eps"]), put(io["vae_latents"]), put(io["tokens"])
  keep = jnp.full((1,), model.cfg.num_registers, jnp.int32)
  guidance = flow.Guidance(scale=CFG_SCALE)
  dec_jit = jax.jit(lambda p, c, x, t: model.apply({"params": p}, c, x, t, method="decode"))
  codes, xt, t = put(io["fsq_quants"]), put(io["dec_xt"]), put(io["dec_t"])
  noise, detok_lat = put(io["detok_noise"]), put(io["detok_latents"])

  def vae_encode_errors(out):
    errs = {f"moments_{k}": v for k, v in float_error(
        tok.codec.moments(video), io["vae_moments"]).items()}
    return {**errs, **float_error(out, io["vae_latents"])}

  def ids_errors(out):
    return id_error(out, io["tokens"])

  stages = [
      Stage("vae_encode", lambda: runner.codec_encode(video, eps), vae_encode_errors),
      Stage("tokenize", lambda: runner.model_encode(params, lat), ids_errors),
      Stage("dec_forward", lambda: dec_jit(params, codes, xt, t),
            lambda out: float_error(out, io["dec_v_cond"])),
      Stage("detokenize", lambda: runner._sample_jit(
          params, ids, noise, keep, None, None, steps=STEPS, guidance=guidance),
            lambda out: float_error(out, io["detok_latents"])),
      Stage("vae_decode", lambda: runner.codec_decode(detok_lat),
            lambda out: float_error(out, io["vae_decode_rgb"])),
      Stage("api_tokenize", lambda: tok.tokenize(io["video"][0], eps=eps), lambda out: id_error(
          out, io["tokens"][0])),
      Stage("api_detokenize", lambda: tok.detokenize(
          io["tokens"][0], steps=STEPS, guidance_scale=CFG_SCALE, noise=noise),
            lambda out: float_error(out, io["vae_decode_rgb"][0])),
  ]
  fsq.check_ids(io["tokens"], model.cfg.fsq_levels, "bench_io tokens")
  return {s.name: s for s in stages}


def time_calls(fn: Callable[[], Any], reps: int) -> dict:
  """Median / min / max seconds of `reps` calls of fn (after the caller's untimed first call)."""
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def run_stages(stages: dict[str, Stage], names, dtype: str, reps: int = 3, log=print,
               tag: str = "") -> dict:
  """Checks, then times each stage of `names` -> {name: {errors..., compile_s, median_s, min_s,
  max_s}}. A stage whose check fails gets its `error` and no time."""
  out = {}
  for name in names:
    st = stages[name]
    t0 = time.perf_counter()
    res = jax.block_until_ready(st.run())  # compile + the checked output
    row = {"compile_s": time.perf_counter() - t0}
    out[name] = row
    try:
      row.update(st.errors(res))
      check(name, row, dtype)
    except CheckError as e:
      row["error"] = str(e)
      log(f"  {tag}{name}: CHECK FAILED, not timed: {e}")
      continue
    row.update(time_calls(st.run, reps))
    errs = ", ".join(f"{k} {v:.2e}" for k, v in row.items() if k.endswith(("err", "flips")))
    log(f"  {tag}{name}: {row['median_s']:.3f} s (min {row['min_s']:.3f}, max "
        f"{row['max_s']:.3f}; compile call {row['compile_s']:.2f} s); {errs}")
  return out


def load(model_dir: str, impl: str, dtype: str) -> tuple[VideoTokenizer, dict]:
  """The bench model through `VideoTokenizer.from_official` and its bench_io inputs/outputs."""
  io = read_bench_io(model_dir)
  tok = VideoTokenizer.from_official(os.path.join(model_dir, "model.safetensors"), dtype=dtype,
                                     attention_impl=impl, frame_size=io["video"].shape[2:4])
  return tok, io


def run_config(model_dir: str, impl: str, dtype: str, stages=STAGES, reps: int = 3) -> dict:
  """One (impl, dtype) configuration -> {impl, dtype, stages: run_stages(...), peak_rss_mb}."""
  tok, io = load(model_dir, impl, dtype)
  res = run_stages(build_stages(tok, io), stages, dtype, reps, tag=f"{impl}/{dtype} ")
  return {"impl": impl, "dtype": dtype, "stages": res,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ------------------------------------------------------------------ driver
def usable_impls(platform: str | None = None) -> list[str]:
  """ATTENTION_IMPLS minus those the backend cannot run (splash: TPU only, cudnn: GPU only)."""
  platform = platform or jax.default_backend()
  skip = {"splash": platform != "tpu", "cudnn": platform != "gpu"}
  return [i for i in ATTENTION_IMPLS if not skip.get(i, False)]


def _run_subprocess(args, impl: str, dtype: str) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "result.json")
    cmd = [sys.executable, os.path.abspath(__file__), f"--model={args.model}", f"--impls={impl}",
           f"--dtypes={dtype}", f"--stages={args.stages}", f"--reps={args.reps}",
           f"--worker_json={path}"]
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode or not os.path.isfile(path):
      return {"impl": impl, "dtype": dtype, "stages": {},
              "failed": f"worker exited with status {proc.returncode}"}
    with open(path) as f:
      return json.load(f)


def table(results: list[dict], model: str, stages) -> str:
  official = OFFICIAL_S.get(model, {})
  lines = ["| stage | official (s), run 1 / run 2 | "
           + " | ".join(f"vft {r['impl']} {r['dtype']} (s, median [min-max])" for r in results)
           + " | best vft / official |",
           "|---" * (len(results) + 3) + "|"]
  for name in stages:
    off = official.get(name)
    cells, best = [], None
    for r in results:
      row = r["stages"].get(name)
      if row is None or "median_s" not in row:
        cells.append("check failed" if row else "-")
        continue
      cells.append(f"{row['median_s']:.3f} [{row['min_s']:.3f}-{row['max_s']:.3f}]")
      best = row["median_s"] if best is None else min(best, row["median_s"])
    ratio = f"{best / statistics.mean(off):.2f}" if off and best is not None else "-"
    ref = f"{off[0]:.3f} / {off[1]:.3f}" if off else "-"
    lines.append(f"| {name} | {ref} | " + " | ".join(cells) + f" | {ratio} |")
  lines.append("| peak RSS (MB) | - | " + " | ".join(
      f"{r.get('peak_rss_mb', float('nan')):.0f}" for r in results) + " | - |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="small", help="small | tiny (a folder of ../shared/bench-models)")
  p.add_argument("--impls", default="", help="comma-separated attention impls (default: all usable)")
  p.add_argument("--dtypes", default=",".join(DTYPES))
  p.add_argument("--stages", default=",".join(STAGES))
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--json", default="", help="write the results here")
  p.add_argument("--worker_json", default="", help=argparse.SUPPRESS)  # one configuration
  args = p.parse_args()
  model_dir = os.path.join(BENCH_MODELS, args.model)
  if not os.path.isdir(model_dir):
    p.error(f"--model={args.model}: no folder {model_dir}")
  stages = [s for s in args.stages.split(",") if s]
  if bad := [s for s in stages if s not in STAGES]:
    p.error(f"--stages: unknown {bad}; expected some of {list(STAGES)}")
  impls = [i for i in args.impls.split(",") if i] or usable_impls()
  if bad := [i for i in impls if i not in ATTENTION_IMPLS]:
    p.error(f"--impls: unknown {bad}; expected some of {list(ATTENTION_IMPLS)}")
  dtypes = [d for d in args.dtypes.split(",") if d]
  if bad := [d for d in dtypes if d not in DTYPES]:
    p.error(f"--dtypes: unknown {bad}; expected some of {list(DTYPES)}")
  if args.worker_json:
    res = run_config(model_dir, impls[0], dtypes[0], stages, args.reps)
    with open(args.worker_json, "w") as f:
      json.dump(res, f)
    return
  dev = jax.devices()[0]
  print(f"# {args.model} bench model; {dev.platform} ({dev.device_kind}), {os.cpu_count()} CPUs; "
        f"jax {jax.__version__}; batch 1, median of {args.reps} after a compile call; "
        f"one subprocess per configuration", flush=True)
  results = []
  for impl in impls:
    for dtype in dtypes:
      print(f"## {impl} {dtype}", flush=True)
      results.append(_run_subprocess(args, impl, dtype))
  print(table(results, args.model, stages))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"model": args.model, "reps": args.reps, "official_s": OFFICIAL_S.get(args.model),
                 "results": results}, f, indent=1)
  if any("failed" in r or any("error" in s for s in r["stages"].values()) for r in results):
    sys.exit(1)


if __name__ == "__main__":
  main()
