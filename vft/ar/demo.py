"""The demo's second half (`make demo` after the tokenizer): tokens -> class-to-video AR model ->
generated clips per class and budget, scored by gFVD and class alignment.

  1. `vft tokenize-dataset` of the demo data with the trained tokenizer  -> WORKDIR/tokens
  2. the AR model of `config.ar` (configs/demo.py) on those tokens, through the one Trainer
                                                                          -> WORKDIR/ar
  3. the alignment classifier: a small VideoCNN on the training clips of the labelled classes
     (their codec latents decoded to pixels), its accuracy on the held-out clips recorded
                                                                          -> WORKDIR/classifier
  4. `vft eval-gen` at budgets 1, 2, 4, ..., N against the held-out clips' I3D statistics
                                                                          -> WORKDIR/generated.mp4,
     gen_metrics.json, gen_metrics.csv, gen_curves.png, real_stats.npz
Each step is skipped when its output is complete (re-running resumes). One process.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from vft import files
from vft import metrics as metrics_lib
from vft.data import pipeline, writer


def _label_names(data_root: str) -> list[str]:
  names = writer.label_names(writer.read_manifest(data_root))
  if not names:
    raise ValueError(f"{os.path.join(data_root, writer.MANIFEST_NAME)}: no label_names; the "
                     "generation demo needs class-labelled clips (re-run the demo prep)")
  return list(names)


def train_classifier(config, data_root: str, out: str):
  """Step 3 (module doc); -> the `VideoCNNClassifier` (loaded when `out` exists)."""
  from vft.eval import classify
  from vft.inference.cli import to_uint8
  from vft.models.vae import make_codec
  if (files.absolute(out) / classify.CONFIG_NAME).exists():
    return classify.VideoCNNClassifier.load(out)
  names = _label_names(data_root)
  train = pipeline.load_split(data_root, config.data.train_split, fields=("latents", "label"))
  train = [r for r in train if int(r.get("label", -1)) >= 0]
  codec = make_codec(config.codec)
  decode = jax.jit(lambda z: codec.decode(z))
  videos = np.concatenate([
      to_uint8(decode(jnp.asarray(np.stack([r["latents"] for r in train[i:i + 32]]),
                                  jnp.float32)))
      for i in range(0, len(train), 32)])
  labels = np.array([int(r["label"]) for r in train])
  held = pipeline.load_split(data_root, config.data.eval_split, fields=("video", "label"))
  held = [r for r in held if int(r.get("label", -1)) >= 0]
  heldout = None
  if held:
    heldout = (np.stack([r["video"] for r in held]), np.array([int(r["label"]) for r in held]))
  g = config.gen
  clf = classify.train_video_cnn(videos, labels, names, steps=int(g.classifier_steps),
                                 seed=int(config.seed), heldout=heldout)
  clf.save(out)
  metrics_lib.log("alignment classifier: train accuracy %.3f (%d clips), held-out %s",
                  clf.info["train_accuracy"], clf.info["train_clips"],
                  clf.info.get("heldout_accuracy"))
  return clf


def run(config, workdir: str) -> dict:
  """Steps 1-4 of the module doc; -> the eval-gen record (with its paths)."""
  from vft.api import VideoTokenizer
  from vft.ar import cli as ar_cli
  from vft.ar.generate import SampleSettings
  from vft.data.tokenize_job import run_tokenize
  from vft.train.loop import data_dir, train_and_evaluate
  if jax.process_count() > 1:
    raise ValueError("the generation demo runs in one process (its parts are multi-host: "
                     "vft tokenize-dataset, vft train with config.task='ar', vft eval-gen)")
  root = files.absolute(workdir)
  data_root = data_dir(config, workdir)
  names = _label_names(data_root)
  tok = VideoTokenizer.load(os.fspath(root))
  tokens = os.fspath(root / "tokens")
  metrics_lib.log("generation demo 1/4: tokenizing %s -> %s", data_root, tokens)
  run_tokenize(tok, data_root, tokens)
  ar_cfg = config.ar.copy_and_resolve_references()
  ar_cfg.unlock()
  ar_cfg.data.dir = tokens
  ar_cfg.model.num_classes = len(names)
  metrics_lib.log("generation demo 2/4: training the AR model (%d steps) -> %s",
                  ar_cfg.total_steps, root / "ar")
  files.absolute(root / "ar").mkdir(parents=True, exist_ok=True)
  files.write_text(root / "ar" / "config.json", ar_cfg.to_json_best_effort(indent=2))
  train_and_evaluate(ar_cfg, os.fspath(root / "ar"))
  metrics_lib.log("generation demo 3/4: alignment classifier")
  train_classifier(config, data_root, os.fspath(root / "classifier"))
  g = config.gen
  n = tok.num_registers
  budgets = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= n]
  settings = SampleSettings(cfg_scale=float(g.cfg_scale) if g.cfg_scale else None,
                            temperature=float(g.temperature), top_k=int(g.top_k),
                            top_p=float(g.top_p), seed=int(config.seed),
                            flow_steps=int(config.eval.steps),
                            flow_guidance=float(config.eval.guidance_scale),
                            batch_size=int(g.batch_size))
  metrics_lib.log("generation demo 4/4: %d samples per budget %s", int(g.num_samples), budgets)
  return ar_cli.run_eval_gen(
      ar=os.fspath(root / "ar"), tokenizer=os.fspath(root), out=os.fspath(root),
      budgets=budgets, num_samples=int(g.num_samples),
      stats_path=os.fspath(root / "real_stats.npz"), real_videos=data_root,
      classifier=os.fspath(root / "classifier"), settings=settings,
      split=config.data.eval_split)
