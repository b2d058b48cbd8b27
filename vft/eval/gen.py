"""`vft eval-gen`: generation quality per token budget (the paper's Figure 6 curves).

For every budget K: sample `num_samples` clips from the AR model (classes spread evenly over
the dataset's classes, or the prompts in turn), render them with the tokenizer's decoder at
keep_k = K, and score
  gfvd              I3D FVD against cached real-data statistics (same preprocessing, checked)
  top1/top5/prob    class alignment under a video classifier (vft.eval.classify), over the
                    classes the classifier and the dataset share by name
  text_score        a video-text scorer (vft.eval.text_align: `clip:PATH` frame-averaged
                    CLIPScore from a local HF CLIP folder, or `module:factory` returning
                    fn(videos uint8 [S, T, H, W, 3], prompts) -> scores [S])
Writes gen_metrics.json / .csv, gen_curves.png, generated.mp4 / .gif (rows = classes or
prompts, columns = budgets) and TensorBoard scalars `gen/<metric>` (the budget as the step).
Multi-host: process p
generates samples [p S/P, (p+1) S/P) and the features are all-gathered; process 0 writes.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np

from vft import files
from vft import metrics as metrics_lib
from vft.ar.generate import Generator, SampleSettings
from vft.eval import classify, report
from vft.eval.frechet import FeatureStats, stats_distance


def _gather(x: np.ndarray) -> np.ndarray:
  """[n, ...] per process -> [P * n, ...] in process order (identity on one process)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  out = np.asarray(multihost_utils.process_allgather(np.asarray(x)))
  return out.reshape(-1, *out.shape[2:])


def video_stats(fvd, videos: np.ndarray) -> FeatureStats:
  """I3D statistics of uint8 videos [n, T, H, W, 3] of one size, all-gathered over processes."""
  feats = _gather(fvd.features(videos))
  return FeatureStats(feats.shape[1], fvd.meta).update(feats)


@dataclasses.dataclass
class GenEval:
  """What one eval-gen run compares; see the module doc.

  targets: dataset class index of every sample ([S]; None for T2V / unconditional).
  text, text_mask, prompts: per-sample text conditions (T2V).
  label_names: the dataset's class names (alignment matches them to the classifier's).
  real_stats: I3D statistics of real clips; fvd: the `vft.eval.fvd.FVD` they were made with.
  """
  generator: Generator
  budgets: Sequence[int]
  settings: SampleSettings
  targets: np.ndarray | None = None
  label_names: Sequence[str] | None = None
  text: np.ndarray | None = None
  text_mask: np.ndarray | None = None
  prompts: Sequence[str] | None = None
  real_stats: FeatureStats | None = None
  fvd: Any = None
  classifier: Any = None
  text_scorer: Callable | None = None

  def num_samples(self) -> int:
    for x in (self.targets, self.text):
      if x is not None:
        return len(x)
    raise ValueError("GenEval: give targets (C2V) or text (T2V)")

  def local_rows(self) -> slice:
    n, p = self.num_samples(), jax.process_count()
    if n % p:
      raise ValueError(f"--num_samples={n} must be divisible by the process count {p}")
    per = n // p
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)

  def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """-> {"budgets", "gfvd", "top1", "top5", "prob", "text_score" (lists per budget, None where
    not measured), "grid_rows": [S_grid] row labels, "grid": per budget uint8 [R, T, H, W, 3]}."""
    if self.real_stats is not None:
      from vft.eval.fvd import check_meta
      check_meta(self.real_stats, self.fvd.meta, "real_stats")
    rows = self.local_rows()
    cond: dict[str, Any] = {}
    if self.targets is not None:
      cond["labels"] = np.asarray(self.targets, np.int32)[rows]
    if self.text is not None:
      cond["text"] = np.asarray(self.text)[rows]
      cond["text_mask"] = None if self.text_mask is None else np.asarray(self.text_mask)[rows]
    # The grid: the first local sample of every class (or prompt).
    if "labels" in cond:
      keys = cond["labels"].tolist()
    else:
      keys = (list(self.prompts)[rows] if self.prompts is not None
              else [f"text {i}" for i in range(rows.start, rows.stop)])
    first = sorted({k: i for i, k in reversed(list(enumerate(keys)))}.items(),
                   key=lambda kv: kv[1])
    res: dict[str, Any] = {m: [] for m in ("gfvd", "top1", "top5", "prob", "text_score")}
    res.update(budgets=[int(b) for b in self.budgets], grid=[], unmatched_classes=[])
    res["grid_rows"] = [str(self.label_names[k]) if self.label_names is not None
                        and isinstance(k, int) else str(k) for k, _ in first]
    # Every process samples with its own seed; budgets with their own.
    base = self.settings
    for b in res["budgets"]:
      settings = dataclasses.replace(
          base, seed=int(base.seed) + 1000 * b + 100_000 * jax.process_index())
      _, videos = self.generator.generate(b, settings=settings, **cond)
      res["grid"].append(videos[[i for _, i in first]])
      gfvd = None
      if self.real_stats is not None:
        gfvd = stats_distance(video_stats(self.fvd, videos), self.real_stats)
      res["gfvd"].append(gfvd)
      al = {"top1": None, "top5": None, "prob": None}
      if self.classifier is not None and self.targets is not None:
        logits = _gather(self.classifier(videos))
        al = classify.alignment(logits, self.targets, self.label_names,
                                self.classifier.label_names)
        res["unmatched_classes"] = al["unmatched_classes"]
      for m in ("top1", "top5", "prob"):
        res[m].append(al[m])
      ts = None
      if self.text_scorer is not None and self.prompts is not None:
        local = np.asarray(self.text_scorer(videos, list(self.prompts)[rows]), np.float64)
        ts = float(np.mean(_gather(local)))
      res["text_score"].append(ts)
      if progress:
        progress(f"budget {b}: gFVD {gfvd}, top1 {al['top1']}, text {ts}")
    return res


def write_outputs(out_dir: str, res: dict[str, Any], *, meta: dict[str, Any],
                  fps: float = 8.0) -> dict[str, str]:
  """gen_metrics.json / .csv, gen_curves.png, generated.mp4 / .gif, TB scalars (process 0)."""
  if jax.process_index() != 0:
    return {}
  root = files.absolute(out_dir)
  root.mkdir(parents=True, exist_ok=True)
  paths = {k: os.fspath(root / v) for k, v in dict(
      metrics="gen_metrics.json", csv="gen_metrics.csv", curves="gen_curves.png",
      video="generated.mp4", gif="generated.gif").items()}
  budgets = res["budgets"]
  series = {m: res[m] for m in ("gfvd", "top1", "top5", "prob", "text_score")}
  report.write_json(paths["metrics"], {
      "budgets": budgets, **series, "grid_rows": res["grid_rows"],
      "unmatched_classes": res["unmatched_classes"], **meta}, decimals=6)
  report.write_metrics_csv(paths["csv"], budgets, series)
  if any(v is not None for s in series.values() for v in s):
    report.plot_metric_curves(paths["curves"], budgets, series,
                              title=f"generation, {meta.get('num_samples')} samples per budget")
  else:
    del paths["curves"]
  grid = report.budget_grid(res["grid"][0], res["grid"][1:],
                            labels=[f"{k} tok" for k in budgets])
  report.write_video(paths["video"], grid, fps=fps)
  report.write_gif(paths["gif"], grid, fps=fps)
  writer = metrics_lib.create_writer(os.fspath(root))
  for i, b in enumerate(budgets):
    writer.write_scalars(b, {f"gen/{m}": v[i] for m, v in series.items() if v[i] is not None})
  writer.flush()
  writer.close()
  return paths
