"""Training tasks: what one stage reads, initialises, minimises and evaluates.

`vft.train.loop.Trainer` drives every stage through one of these; `config.task` picks it:
  "tokenizer"  VideoFlexTok on codec latents: stage 1 and the decoder fine-tune (the fine-tune is
               the same task with config.train.trainable_params / frame_cond / config.init)
  "ar"         the AR transformer on token-id datasets (`vft tokenize-dataset`), vft.train.ar_task

A task has
  name, model, spec            the model and the per-record shape of its main field
  fields                       the batch fields it reads from the grain pipeline
  init_params(key)             boxed params (nn.LogicallyPartitioned leaves)
  loss_fn(params, batch, key)  -> (loss, aux metrics), pure, jitted by vft.train.step
  check_init(workdir)          validates `config.init` (fresh runs, before anything compiles)
  initial_params(params)       -> (params, report) from `config.init`, or None
  eval_hook(trainer)           -> hook(params, step, writer) of the periodic eval, or None
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from vft import flow
from vft import metrics as metrics_lib
from vft.data import pipeline, writer
from vft.eval import report
from vft.eval.recon import BudgetEvaluator
from vft.models import tokenizer as tokenizer_lib
from vft.models.config import TokenizerConfig
from vft.models.tokenizer import VideoFlexTok
from vft.models.vae import make_codec
from vft.train import init_from
from vft.train.step import make_loss_fn

TASKS = ("tokenizer", "ar")


def make_task(config, data_root: str):
  """The task of `config.task` (default "tokenizer") on the dataset in `data_root`."""
  name = str(config.get("task", "tokenizer"))
  if name == "tokenizer":
    return TokenizerTask(config, data_root)
  if name == "ar":
    from vft.train.ar_task import ARTask
    return ARTask(config, data_root)
  raise ValueError(f"config.task={name!r}: expected one of {TASKS}")


def build_model(config, latent_shape) -> VideoFlexTok:
  """latent_shape: [T, H, W, C] of one record; checked against config.model."""
  mcfg = TokenizerConfig.from_config(config.model)
  if latent_shape[-1] != mcfg.latent_channels:
    raise ValueError(f"config.model.latent_channels={mcfg.latent_channels}, but the data has "
                     f"latents with {latent_shape[-1]} channels (shape {list(latent_shape)})")
  return VideoFlexTok(mcfg)


def latent_spec(data_root: str, split: str) -> list[int]:
  """[T, h, w, C] of the latents of `split` (stored, or sampled from stored moments)."""
  return pipeline.latent_shape(data_root, split)


class TokenizerTask:
  """VideoFlexTok on codec latents (stage 1, decoder fine-tune); loss: vft.train.step."""
  name = "tokenizer"

  def __init__(self, config, data_root: str):
    self.config, self.data_root = config, data_root
    # Manifest vs config: channels, latent grid, patch size, VAE identity, REPA targets.
    self.spec = pipeline.check_dataset(config, data_root)
    self.model = build_model(config, self.spec)
    self.codec = make_codec(config.codec)
    self.fields = (("latents", "repa") if float(config.train.get("repa_weight", 0.0)) > 0
                   else ("latents",))
    self.loss_fn = make_loss_fn(self.model, config)  # validates config.train

  def init_params(self, key) -> Any:
    return tokenizer_lib.init_params(self.model, key, (1, *self.spec))

  def check_init(self, workdir: str) -> None:
    init_from.check(self.config, workdir, self.model.cfg)

  def initial_params(self, params):
    if init_from.source(self.config) is None:
      return None
    return init_from.initial_params(self.config, params, self.model.cfg)

  def eval_hook(self, trainer) -> Callable | None:
    """Reconstructs the eval clips at every budget: eval/{psnr,ssim,...}_kNNNN scalars and a
    middle-frame budget grid."""
    clips = periodic_eval_clips(self.config, self.data_root, self.spec)
    if clips is None:
      return None
    evaluator = make_evaluator(self.config, trainer)
    budgets = budgets_for(self.config, self.model)

    def hook(params, step: int, writer_) -> None:
      res = evaluator(params, *clips, budgets)
      writer_.write_scalars(step, {
          f"eval/{m}_k{k:04d}": v for m in res.get("metrics", ("psnr", "ssim"))
          for k, v in zip(res["budgets"], res[m])})
      grid = report.budget_grid(clips[1], res["recons"],
                                labels=["orig"] + [str(k) for k in res["budgets"]])
      writer_.write_images(step, {"eval/recon_grid_middle_frame": grid[None, len(grid) // 2]})
    return hook


def budgets_for(config, model: VideoFlexTok) -> list[int]:
  return flow.eval_budgets(model.cfg.num_registers, config.eval.budgets, "config.eval.budgets")


def eval_data_dir(config, data_root: str) -> str:
  """Where the eval clips live: config.eval.data_dir, else the training data dir."""
  return config.eval.get("data_dir") or data_root


def load_eval_clips(config, data_root: str):
  """-> (latents [n, ...] float32, videos [n, T, H, W, 3] uint8) from the eval split of
  `eval_data_dir(config, data_root)`; an error naming the manifest and split if it is absent."""
  root = eval_data_dir(config, data_root)
  records = pipeline.load_split(root, config.data.eval_split, fields=("latents", "video"))
  records = records[: int(config.eval.num_clips)]
  if not records:
    raise ValueError(f"eval split {config.data.eval_split!r} in {root} is empty")
  if any("video" not in r for r in records):
    raise ValueError(f"eval split {config.data.eval_split!r} records need the 'video' field")
  lat = np.stack([np.asarray(r["latents"], np.float32) for r in records])
  vid = np.stack([r["video"] for r in records])
  return lat, vid


def has_eval_split(config, data_root: str) -> bool:
  """Whether the periodic eval must run: config.eval.required / data_dir set, or the data has
  the eval split. Logs why it is off otherwise."""
  root, split = eval_data_dir(config, data_root), config.data.eval_split
  required = bool(config.eval.get("required", False)) or bool(config.eval.get("data_dir"))
  if not required and split not in writer.read_manifest(root)["splits"]:
    metrics_lib.log("Periodic eval is off: %s has no split %r (config.data.eval_split) and "
                    "config.eval.data_dir is not set; to evaluate during training, prep "
                    "held-out videos with --config.split=eval (or --config.eval_videos=N) and "
                    "set config.eval.data_dir", os.path.join(root, writer.MANIFEST_NAME), split)
    return False
  return True


def periodic_eval_clips(config, data_root: str, latent_shape: Sequence[int]):
  """The clips of the periodic eval (`load_eval_clips`), or None (eval off, logged) when the
  data has no eval split and config.eval asks for none (neither `required` nor `data_dir`).
  `latent_shape`: [T, h, w, C] of the training data; the eval latents must match it."""
  root, split = eval_data_dir(config, data_root), config.data.eval_split
  manifest = os.path.join(root, writer.MANIFEST_NAME)
  if not has_eval_split(config, data_root):
    return None
  try:
    clips = load_eval_clips(config, data_root)
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(f"periodic eval (config.eval.required={config.eval.get('required')}, "
                     f"config.eval.data_dir={config.eval.get('data_dir')!r}) needs split "
                     f"{split!r} of {manifest}: {e}") from None
  if list(clips[0].shape[1:]) != list(latent_shape):
    raise ValueError(f"{manifest} (split {split!r}): eval latents {list(clips[0].shape[1:])} "
                     f"differ from the training latents {list(latent_shape)}")
  return clips


def make_evaluator(config, trainer) -> BudgetEvaluator:
  return BudgetEvaluator(trainer.model, trainer.codec, steps=int(config.eval.steps),
                         mesh=trainer.mesh, rules=trainer.rules,
                         guidance_scale=float(config.eval.guidance_scale),
                         seed=int(config.eval.seed),
                         metrics=tuple(config.eval.get("metrics", ("psnr", "ssim"))))
