"""Reconstruction quality per token budget: tokenise held-out clips, render them back from the
first k tokens of every latent frame, decode to pixels and score PSNR / SSIM against the
originals (and, when asked, LPIPS / MAE / MSE / rFVD: `metrics=`, from `config.eval.metrics`
in training runs). Also writes the demo's artifacts (grid video, budget curve, metrics.json)."""
from __future__ import annotations

import os
from typing import Sequence

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding
import numpy as np

from vft import files, flow, sharding
from vft.eval import metrics as metrics_lib
from vft.eval import report
from vft.eval.frechet import FeatureStats, stats_distance
from vft.models.tokenizer import sample_latents


EXTRA_METRICS = ("lpips", "mae", "mse", "rfvd")


class BudgetEvaluator:
  """Tokenises the clips once, then renders every budget with one compiled program (the budget
  is a traced argument).

  metrics: "psnr" and "ssim" always; add any of EXTRA_METRICS. "lpips" (AlexNet) and "rfvd" (I3D
  on the first 16 frames, TF1 resize; needs >= 2 clips of >= 16 frames, and with few clips it is
  only a trend, see vft.eval.fvd) load their networks here, once.
  mesh / rules: where the model calls run (the training mesh and `config.sharding_rules`; default
  one device and the default rules).
  """

  def __init__(self, model, codec, *, steps: int, guidance_scale: float = 1.0, seed: int = 0,
               metrics: Sequence[str] = ("psnr", "ssim"), mesh=None, rules=sharding.DEFAULT_RULES):
    unknown = sorted(set(metrics) - {"psnr", "ssim", *EXTRA_METRICS})
    if unknown:
      raise ValueError(f"eval metrics {unknown}: expected psnr, ssim or {EXTRA_METRICS}")
    self.extra = [m for m in EXTRA_METRICS if m in metrics]
    self._lpips = self._fvd = None
    if "lpips" in self.extra:
      from vft.eval.lpips import LPIPS
      self._lpips = LPIPS("alexnet")
    if "rfvd" in self.extra:
      from vft.eval.fvd import FVD
      self._fvd = FVD()
    guidance = flow.Guidance(scale=guidance_scale)

    def encode(params, latents):
      return model.apply({"params": params}, latents, method="encode")[0]

    def render(params, codes, keep_k, noise):
      lat = sample_latents(model, params, codes, noise, steps, keep_k=keep_k, guidance=guidance)
      return jnp.clip(codec.decode(lat), -1.0, 1.0)

    mesh = sharding.make_mesh({}, jax.local_devices()[:1]) if mesh is None else mesh
    self._encode = sharding.jit(encode, mesh, rules)
    self._render = sharding.jit(render, mesh, rules)
    self._score = jax.jit(lambda a, b: (metrics_lib.psnr(a, b), metrics_lib.ssim(a, b)))
    self._pixels = jax.jit(metrics_lib.frame_scores)
    self.codec = codec
    self.seed = seed

  def __call__(self, params, latents: np.ndarray, videos: np.ndarray, budgets: Sequence[int]):
    """latents [n, T, h, w, C]; videos [n, T_px, H, W, 3] uint8 originals (host arrays, the
    same in every process).

    Returns {"budgets", "psnr" [len(budgets)], "ssim", "psnr_per_clip" [len, n], "recons"
    (list of uint8 videos per budget), "metrics" (names of the per-budget lists), and one list
    per extra metric}, host values equal in every process. The same noise is used for every
    budget. With several processes, `params` are global arrays (the training mesh): the clips
    enter as global arrays replicated on that mesh, and results are gathered to every host.
    """
    lat = np.asarray(latents, np.float32)
    n = lat.shape[0]
    noise = np.asarray(jax.random.normal(jax.random.key(self.seed), lat.shape, jnp.float32))
    target_host = np.asarray(videos, np.float32) / 255.0
    latents, noise, target = (_replicated_like(params, x) for x in (lat, noise, target_host))
    out = {"budgets": list(map(int, budgets)), "psnr": [], "ssim": [], "psnr_per_clip": [],
           "recons": [], "metrics": ["psnr", "ssim", *self.extra]}
    out.update({m: [] for m in self.extra})
    real = None
    if self._fvd is not None:
      real = FeatureStats().update(self._fvd.features(target_host))
    codes = self._encode(params, latents)
    for k in budgets:
      keep = _replicated_like(params, np.full((n,), k, np.int32))
      video = self._render(params, codes, keep, noise)
      unit = metrics_lib.to_unit(video)
      p, s = _host(self._score(unit, target))
      unit_host = _host(unit)
      out["psnr"].append(float(np.mean(p)))
      out["ssim"].append(float(np.mean(s)))
      out["psnr_per_clip"].append(p.tolist())
      out["recons"].append(np.round(unit_host * 255.0).astype(np.uint8))
      if "mae" in self.extra or "mse" in self.extra:
        pix = _host(self._pixels(unit, target))
        for m in ("mae", "mse"):
          if m in self.extra:
            out[m].append(float(np.mean(pix[m])))
      if self._lpips is not None:
        out["lpips"].append(float(np.mean(self._lpips(unit_host, target_host))))
      if real is not None:
        fake = FeatureStats().update(self._fvd.features(unit_host))
        out["rfvd"].append(stats_distance(real, fake))
    return out


def _replicated_like(params, x: np.ndarray) -> jax.Array:
  """Host array `x` (equal in every process) -> a jax.Array replicated over the devices of
  `params` (their mesh when they are global arrays, else their device; host params: this
  process's first device)."""
  sharding = getattr(jax.tree_util.tree_leaves(params)[0], "sharding",
                     SingleDeviceSharding(jax.local_devices()[0]))
  if isinstance(sharding, NamedSharding):
    sharding = NamedSharding(sharding.mesh, P())
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _host(tree):
  """Tree of jax.Arrays -> numpy on this host (gathered from every process for global arrays)."""
  return multihost_utils.process_allgather(tree, tiled=True)


def write_artifacts(outdir: str, result: dict, originals: np.ndarray, *, steps: int,
                    fps: float = 8.0, extra: dict | None = None) -> dict:
  """recon_budgets.mp4 / .gif (rows = clips, columns = original + budgets), budget_curve.png,
  metrics.json. Returns the paths."""
  files.absolute(outdir).mkdir(parents=True, exist_ok=True)
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
  more = {m: result[m] for m in result.get("metrics", ()) if m not in ("psnr", "ssim")}
  if more:
    paths["metrics_plot"] = os.path.join(outdir, "metrics.png")
    report.plot_metric_curves(paths["metrics_plot"], budgets,
                              {"psnr": result["psnr"], "ssim": result["ssim"], **more},
                              title=f"held-out reconstructions after {steps} steps")
  report.write_metrics_json(paths["metrics"], budgets=budgets, psnr=result["psnr"],
                            ssim=result["ssim"], num_clips=int(originals.shape[0]), steps=steps,
                            extra=dict(extra or {}, psnr_per_clip=result["psnr_per_clip"],
                                       **more), decimals=6 if more else 4)
  return paths
