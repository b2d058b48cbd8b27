"""Reconstruction quality per token budget: tokenise held-out clips, render them back from the
first k tokens of every latent frame, decode to pixels and score PSNR / SSIM against the
originals. Also writes the demo's artifacts (grid video, budget curve, metrics.json)."""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vft import flow
from vft.eval import metrics as metrics_lib
from vft.eval import report
from vft.models.tokenizer import sample_latents


class BudgetEvaluator:
  """Tokenises the clips once, then renders every budget with one compiled program (the budget
  is a traced argument)."""

  def __init__(self, model, codec, *, steps: int, guidance_scale: float = 1.0, seed: int = 0):
    guidance = flow.Guidance(scale=guidance_scale)

    def encode(params, latents):
      return model.apply({"params": params}, latents, method="encode")[0]

    def render(params, codes, keep_k, noise):
      lat = sample_latents(model, params, codes, noise, steps, keep_k=keep_k, guidance=guidance)
      return jnp.clip(codec.decode(lat), -1.0, 1.0)

    self._encode = jax.jit(encode)
    self._render = jax.jit(render)
    self._score = jax.jit(lambda a, b: (metrics_lib.psnr(a, b), metrics_lib.ssim(a, b)))
    self.codec = codec
    self.seed = seed

  def __call__(self, params, latents: np.ndarray, videos: np.ndarray, budgets: Sequence[int]):
    """latents [n, T, h, w, C]; videos [n, T_px, H, W, 3] uint8 originals.

    Returns {"budgets", "psnr" [len(budgets)], "ssim", "psnr_per_clip" [len, n], "recons"
    (list of uint8 videos per budget)}. The same noise is used for every budget.
    """
    latents = jnp.asarray(latents, jnp.float32)
    n = latents.shape[0]
    noise = jax.random.normal(jax.random.key(self.seed), latents.shape, jnp.float32)
    target = jnp.asarray(videos, jnp.float32) / 255.0
    out = {"budgets": list(map(int, budgets)), "psnr": [], "ssim": [], "psnr_per_clip": [],
           "recons": []}
    codes = self._encode(params, latents)
    for k in budgets:
      video = self._render(params, codes, jnp.full((n,), k, jnp.int32), noise)
      unit = metrics_lib.to_unit(video)
      p, s = self._score(unit, target)
      out["psnr"].append(float(jnp.mean(p)))
      out["ssim"].append(float(jnp.mean(s)))
      out["psnr_per_clip"].append(np.asarray(p).tolist())
      out["recons"].append(np.asarray(jnp.round(unit * 255.0)).astype(np.uint8))
    return out


def write_artifacts(outdir: str, result: dict, originals: np.ndarray, *, steps: int,
                    fps: float = 8.0, extra: dict | None = None) -> dict:
  """recon_budgets.mp4 / .gif (rows = clips, columns = original + budgets), budget_curve.png,
  metrics.json. Returns the paths."""
  os.makedirs(outdir, exist_ok=True)
  budgets = result["budgets"]
  grid = report.budget_grid(originals, result["recons"],
                            labels=["orig"] + [f"{k} tok" for k in budgets])
  paths = {k: os.path.join(outdir, v) for k, v in dict(
      video="recon_budgets.mp4", gif="recon_budgets.gif", curve="budget_curve.png",
      metrics="metrics.json").items()}
  report.write_video(paths["video"], grid, fps=fps)
  report.write_gif(paths["gif"], grid, fps=fps)
  report.plot_budget_curve(paths["curve"], budgets, result["psnr"], result["ssim"],
                           title=f"held-out reconstructions after {steps} steps")
  report.write_metrics_json(paths["metrics"], budgets=budgets, psnr=result["psnr"],
                            ssim=result["ssim"], num_clips=int(originals.shape[0]), steps=steps,
                            extra=dict(extra or {}, psnr_per_clip=result["psnr_per_clip"]))
  return paths
