"""`vft generate` and `vft eval-gen`: an AR workdir + its tokenizer -> videos / gFVD and alignment.

  vft generate --ar=runs/demo/ar --tokenizer=runs/demo --classes=3,7 --budget=1,4,16 \\
      --num_samples=2 --out=runs/demo/gen
  vft generate --ar=T2V_WORKDIR --tokenizer=TOK --prompts=prompts.txt --text_encoder=/ckpt/t5 ...
  vft eval-gen --ar=runs/demo/ar --tokenizer=runs/demo --budgets=1,2,4,8,16 --num_samples=48 \\
      --real_stats=runs/demo/real_stats.npz --real_videos=runs/demo/data --out=runs/demo/gen_eval

The flags --tokenizer (vft/data/cli.py), --out, --budgets, --real_stats, --i3d_weights,
--batch_size (vft/eval/cli.py), --seed, --steps, --guidance_scale (vft/main.py: the flow
decoder's Euler steps and CFG) are shared with the other commands.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS

_AR = flags.DEFINE_string("ar", None, "generate / eval-gen: the AR model's training workdir.")
_CLASSES = flags.DEFINE_list("classes", [], "generate: class indices (or names) to generate.")
_PROMPTS = flags.DEFINE_string("prompts", None, "generate / eval-gen: a text file, one prompt "
                               "per line (T2V).")
_BUDGET = flags.DEFINE_list("budget", [], "generate: tokens per latent frame (several: a grid "
                            "column each; default: the largest).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "generate: samples per class / prompt; "
                                    "eval-gen: samples per budget.")
_CFG = flags.DEFINE_float("cfg_scale", 3.0, "AR classifier-free guidance scale (<= 0: off).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "AR sampling temperature (0: greedy).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "AR top-k filtering (0: off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "AR nucleus filtering (1: off).")
_CLASSIFIER = flags.DEFINE_string("classifier", "i3d", "eval-gen: class-alignment classifier: "
                                  "i3d (Kinetics-400), a classifier folder, or module:factory.")
_TEXT_SCORER = flags.DEFINE_string("text_scorer", None, "eval-gen: clip:PATH (a local Hugging "
                                   "Face CLIP folder: frame-averaged CLIPScore) or module:factory "
                                   "of a video-text scorer fn(videos, prompts) -> scores.")
_TEXT_ENCODER = flags.DEFINE_string("text_encoder", None, "T2V: local Hugging Face text encoder "
                                    "folder (the one the prep used).")
_TEXT_KIND = flags.DEFINE_enum("text_kind", "t5", ["t5", "bert"], "T2V: text encoder kind.")
_REAL_VIDEOS = flags.DEFINE_string("real_videos", None, "eval-gen: real clips (a folder of "
                                   "videos or prep shards with a video field, split --split) "
                                   "for --real_stats when that file does not exist yet.")


def _settings():
  from vft.ar.generate import SampleSettings
  return SampleSettings(cfg_scale=_CFG.value if _CFG.value > 0 else None,
                        temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
                        seed=FLAGS.seed, flow_steps=FLAGS.steps,
                        flow_guidance=FLAGS.guidance_scale,
                        batch_size=FLAGS.batch_size or 8)


def load_generator(ar_workdir: str, tokenizer_path: str):
  """-> (Generator, info) from an AR workdir and a tokenizer (workdir or official file)."""
  from vft.api import VideoTokenizer
  from vft.ar.generate import Generator
  from vft.train.ar_task import load_ar
  model, params, config, info = load_ar(ar_workdir)
  tok = VideoTokenizer.load(tokenizer_path)
  if not info.get("tokens_shape"):
    raise ValueError(f"{ar_workdir}: the token dataset manifest (tokens_shape) is unreadable "
                     f"at {info.get('data_dir')}; generation needs its T' x N")
  t, n = info["tokens_shape"]
  gen = Generator(model, params, tok, num_frames=t, num_registers=n,
                  order=str(config.train.get("order", "time_first")))
  return gen, info


def _text(prompts: list[str], info: dict) -> tuple[np.ndarray, np.ndarray]:
  from vft.features.text import TextEncoder
  if not _TEXT_ENCODER.value:
    raise app.UsageError("--prompts needs --text_encoder (the text encoder the prep used)")
  length = int(info["text"][0]) if info.get("text") else 32
  enc = TextEncoder.from_pretrained(_TEXT_ENCODER.value, kind=_TEXT_KIND.value,
                                    max_length=length, dtype="float32")
  emb, lengths = enc(prompts)
  return emb, np.arange(emb.shape[1])[None] < lengths[:, None]


def _read_prompts(path: str) -> list[str]:
  from etils import epath
  lines = [s.strip() for s in epath.Path(path).read_text().splitlines()]
  prompts = [s for s in lines if s]
  if not prompts:
    raise app.UsageError(f"--prompts={path}: no prompts (one per line)")
  return prompts


def _classes(names: list[str], label_names) -> list[int]:
  out = []
  for c in names:
    if c.isdigit():
      out.append(int(c))
    elif label_names and c in label_names:
      out.append(list(label_names).index(c))
    else:
      raise app.UsageError(f"--classes: {c!r} is neither an index nor one of {label_names}")
  return out


def generate_main() -> None:
  """`vft generate` (see the module doc): one mp4 per sample and budget, and a grid."""
  import jax
  from vft import files
  from vft.eval import report
  if not (_AR.value and FLAGS.tokenizer and FLAGS.out):
    raise app.UsageError("vft generate needs --ar, --tokenizer and --out")
  gen, info = load_generator(_AR.value, FLAGS.tokenizer)
  budgets = [int(b) for b in _BUDGET.value] or [gen.max_budget]
  reps = int(_NUM_SAMPLES.value)
  cond: dict[str, Any] = {}
  if _PROMPTS.value:
    prompts = _read_prompts(_PROMPTS.value)
    emb, mask = _text(prompts, info)
    cond = dict(text=np.repeat(emb, reps, 0), text_mask=np.repeat(mask, reps, 0))
    names = [f"p{i}" for i in range(len(prompts)) for _ in range(reps)]
  elif _CLASSES.value:
    labels = _classes(_CLASSES.value, info.get("label_names"))
    cond = dict(labels=np.repeat(np.asarray(labels, np.int32), reps))
    names = [f"c{c}" for c in labels for _ in range(reps)]
  else:
    cond = dict(num=reps)
    names = ["uncond"] * reps
  settings = _settings()
  out = files.absolute(FLAGS.out)
  columns, written = [], []
  for b in budgets:
    ids, videos = gen.generate(b, settings=settings, **cond)
    columns.append(videos)
    if jax.process_index() == 0:
      for i, (name, v) in enumerate(zip(names, videos)):
        path = os.fspath(out / f"{name}_s{i % reps}_k{b}.mp4")
        report.write_video(path, v)
        written.append(path)
      np.savez(os.fspath(out / f"ids_k{b}.npz"), ids=ids, **{
          k: v for k, v in cond.items() if k == "labels"})
  res = {"samples": written, "budgets": budgets, "settings": settings.to_dict()}
  if jax.process_index() == 0:
    grid = report.budget_grid(columns[0], columns[1:], labels=[f"{b} tok" for b in budgets])
    res["grid"] = os.fspath(out / "grid.mp4")
    report.write_video(res["grid"], grid)
    files.write_text(out / "generate.json", json.dumps(dict(res, names=names), indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=1))


def real_stats(fvd, stats_path: str | None, videos: str | None, split: str = "eval"):
  """Cached real I3D statistics: `stats_path` if it exists (preprocessing checked), else
  computed from `videos` (prep shards or a folder) and written to `stats_path` (process 0)."""
  import jax
  from etils import epath
  from vft.eval import clips as clips_lib
  from vft.eval import fvd as fvd_lib
  from vft.eval.frechet import FeatureStats
  if stats_path and epath.Path(stats_path).is_file():
    stats = FeatureStats.load(stats_path)
    fvd_lib.check_meta(stats, fvd.meta, stats_path)
    return stats
  if not videos:
    raise app.UsageError(f"--real_stats={stats_path}: not found; pass --real_videos to compute it")
  if clips_lib.is_shards(videos):
    from vft.data import pipeline
    clips = (np.asarray(r["video"]) for r in pipeline.load_split(videos, split,
                                                                  fields=("video",)))
    stats = fvd.stats(clips)
  else:
    stats, _ = fvd_lib.folder_stats(fvd, videos)
  stats.meta.update(source=os.fspath(videos), split=split, num_clips=stats.n)
  if stats_path and jax.process_index() == 0:
    stats.save(stats_path)
  return stats


def eval_gen_main() -> None:
  """`vft eval-gen` (see vft/eval/gen.py)."""
  result = run_eval_gen(
      ar=_AR.value, tokenizer=FLAGS.tokenizer, out=FLAGS.out,
      budgets=[int(b) for b in FLAGS.budgets], num_samples=_NUM_SAMPLES.value,
      stats_path=FLAGS.real_stats, real_videos=_REAL_VIDEOS.value,
      classifier=_CLASSIFIER.value, text_scorer=_TEXT_SCORER.value, prompts=_PROMPTS.value,
      settings=_settings(), split=FLAGS.split or "eval", i3d_weights=FLAGS.i3d_weights)
  print(json.dumps({k: v for k, v in result.items() if k not in ("grid",)}, indent=1))


def run_eval_gen(*, ar: str, tokenizer: str, out: str, budgets: list[int], num_samples: int,
                 stats_path: str | None, real_videos: str | None, classifier: str | None,
                 text_scorer: str | None = None, prompts: str | None = None, settings=None,
                 split: str = "eval", i3d_weights: str | None = None) -> dict:
  """The eval-gen job as a function (the demo calls it): -> gen_metrics.json's record + paths."""
  from vft.eval import classify
  from vft.eval import gen as gen_lib
  from vft.eval import text_align
  from vft.eval.fvd import FVD
  if not (ar and tokenizer and out):
    raise app.UsageError("vft eval-gen needs --ar, --tokenizer and --out")
  gen, info = load_generator(ar, tokenizer)
  budgets = budgets or [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= gen.max_budget]
  fvd = FVD(weights=i3d_weights)
  stats = real_stats(fvd, stats_path, real_videos, split) if (stats_path or real_videos) \
      else None
  settings = settings or _settings()
  job = gen_lib.GenEval(gen, budgets, settings, real_stats=stats, fvd=fvd,
                        label_names=info.get("label_names"))
  if prompts:
    texts = _read_prompts(prompts)
    texts = [texts[i % len(texts)] for i in range(num_samples)]
    job.prompts = texts
    job.text, job.text_mask = _text(texts, info)
    if text_scorer:
      job.text_scorer = text_align.load_text_scorer(text_scorer)
  elif gen.num_classes > 0:
    job.targets = np.arange(num_samples) % gen.num_classes
    names = info.get("label_names") or [str(i) for i in range(gen.num_classes)]
    job.label_names = names
    if classifier:
      job.classifier = classify.load_classifier(classifier, fvd=fvd)
  else:
    raise app.UsageError(f"{ar}: the AR model has neither classes nor text to evaluate")
  res = job.run(progress=lambda m: print(m, file=sys.stderr, flush=True))
  meta = {"num_samples": num_samples, "settings": settings.to_dict(), "fvd": fvd.meta,
          "real_stats": None if stats is None else dict(stats.meta, n=stats.n),
          "classifier": classifier, "classifier_info": getattr(job.classifier, "info", None),
          "ar": os.fspath(ar), "tokenizer": os.fspath(tokenizer)}
  paths = gen_lib.write_outputs(out, res, meta=meta)
  record = {k: res[k] for k in ("budgets", "gfvd", "top1", "top5", "prob", "text_score",
                                "grid_rows", "unmatched_classes")}
  return dict(record, **meta, paths=paths)
