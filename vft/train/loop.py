"""`train_and_evaluate(config, workdir)`: the tokenizer training recipe, top to bottom."""
from __future__ import annotations

import json
import math
import os
from typing import Sequence

import jax
import numpy as np

from vft import checkpoint as ckpt_lib
from vft import files, flow, sharding
from vft import metrics as metrics_lib
from vft.data import pipeline, writer
from vft.eval import report
from vft.eval.recon import BudgetEvaluator
from vft.models.config import TokenizerConfig
from vft.models.tokenizer import VideoFlexTok
from vft.models.vae import make_codec
from vft.train import init_from
from vft.train import optimizer as optim_lib
from vft.train import preemption
from vft.train import state as state_lib
from vft.train.step import jit_train_step, make_train_step


def data_dir(config, workdir: str) -> str:
  return config.data.dir or os.fspath(files.absolute(workdir) / "data")


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


class Trainer:
  """Holds the jitted step, shardings and checkpointer of one run; `run()` trains."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.mesh = sharding.mesh_from_config(config)
    self.rules = sharding.rules_from_config(config.sharding_rules)
    self.data_root = data_dir(config, workdir)
    # Manifest vs config: channels, latent grid, patch size, VAE identity, REPA targets.
    self.spec = pipeline.check_dataset(config, self.data_root)
    self.model = build_model(config, self.spec)
    self.codec = make_codec(config.codec)
    gbs = int(config.data.global_batch_size)
    shards = sharding.num_batch_shards(self.mesh, self.rules)
    if gbs % jax.process_count() or gbs % shards:
      raise ValueError(f"config.data.global_batch_size={gbs} must be divisible by the process "
                       f"count {jax.process_count()} and the batch shards of the mesh ({shards})")
    self.tx = optim_lib.make_optimizer(config)
    make_train_step(self.model, self.tx, config)  # validates config.train, before any I/O
    self.checkpointer = ckpt_lib.Checkpointer(
        files.absolute(workdir) / "checkpoints", keep=config.checkpoint.keep,
        use_async=config.checkpoint.use_async)
    if self.checkpointer.latest_step() is None:  # fail fast, before anything is compiled
      try:
        init_from.check(config, workdir, self.model.cfg)
      except Exception:
        self.checkpointer.close()
        raise
    use_ema = float(config.optim.get("ema_decay", 0.0)) > 0
    self.state, self.state_sharding = state_lib.init_state(
        self.model, self.tx, jax.random.key(config.seed), (1, *self.spec), use_ema, self.mesh,
        self.rules)
    self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)
    self.dataset = pipeline.make_dataset(
        self.data_root, config.data.train_split, batch_size_per_process=gbs // jax.process_count(),
        seed=config.seed, worker_count=config.data.worker_count,
        fields=("latents", "repa") if float(config.train.get("repa_weight", 0.0)) > 0
        else ("latents",))
    self.data_iter = iter(self.dataset)
    self.init_report = None
    if self.checkpointer.latest_step() is None:  # a fresh run: start from config.init if set
      self._initialize_from_source()
    self.train_step = jit_train_step(self.model, self.tx, config, self.mesh, self.rules,
                                     self.state_sharding)

  def _initialize_from_source(self) -> None:
    """Loads `config.init` (a stage-1 workdir or an official file) into params (and EMA)."""
    if init_from.source(self.config) is None:
      return
    params, report = init_from.initial_params(self.config, self.state.params, self.model.cfg)
    copy = lambda tree: jax.tree_util.tree_map(lambda x: x.copy(), tree)  # noqa: E731
    self.state = self.state.replace(
        params=params, ema_params=None if self.state.ema_params is None else copy(params))
    self.init_report = report
    metrics_lib.log("Initialised from %s (%s, step %s): %d arrays loaded; freshly initialised: "
                    "%s; skipped: %s", report.source, report.subtree, report.step, report.loaded,
                    report.initialised, report.skipped)
    if jax.process_index() == 0:
      files.write_text(files.absolute(self.workdir) / "init_report.json",
                       json.dumps(report.to_json(), indent=1))

  def restore_if_any(self) -> int:
    """Restores the newest readable checkpoint (falling back past corrupt ones). -> its step."""
    restored = self.checkpointer.restore_latest(self.state, self.data_iter)
    if restored is None:
      return 0
    step, self.state = restored
    metrics_lib.log("Resumed from step %d (%s)", step, self.checkpointer.directory)
    return step

  def next_batch(self) -> dict:
    local = next(self.data_iter)
    return pipeline.to_global_batch(local, self.batch_sharding)

  def step(self, batch):
    self.state, metrics = self.train_step(self.state, batch)
    return metrics

  def eval_params(self):
    return self.state.ema_params if self.state.ema_params is not None else self.state.params

  def run(self, evaluator=None, eval_clips=None, until_step: int | None = None) -> dict:
    """Trains to config.total_steps (resuming if a checkpoint exists). Returns last metrics.

    `until_step` stops early (as an interruption would: the schedule still spans total_steps)
    after saving a checkpoint there. A SIGTERM saves a checkpoint at the next step boundary all
    processes agree on and raises `preemption.Preempted` (SystemExit 143) once it is on disk.
    """
    cfg = self.config
    total = int(cfg.total_steps)
    stop = total if until_step is None else min(int(until_step), total)
    start = self.restore_if_any()
    writer_ = metrics_lib.create_writer(self.workdir)
    hooks = metrics_lib.create_progress(total, writer_)
    if start == 0 and jax.process_index() == 0:
      writer_.write_hparams({k: v for k, v in _flat(cfg.to_dict()).items()})
    pending, last, preempted = None, {}, False
    self.watch = watch = preemption.PreemptionWatch(
        self.checkpointer.manager, start, cfg.checkpoint.preemption_sync_every)
    for step in range(start, stop):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        metrics = self.step(self.next_batch())
      if pending is not None:  # fetched one step late: the host never stalls the device
        last = self._check(*pending)
        if pending[0] % cfg.log_every_steps == 0:
          writer_.write_scalars(pending[0], last)
      pending = (step + 1, metrics)
      for h in hooks:
        h(step + 1)
      done = step + 1 == stop
      preempted = watch.reached(step + 1)
      if (step + 1) % cfg.checkpoint.every_steps == 0 or done or preempted:
        last = self._check(*pending)  # never save a state whose loss is not finite
        self.checkpointer.save(step + 1, self.state, self.data_iter)
      if preempted:
        break
      if evaluator is not None and ((step + 1) % cfg.eval.every_steps == 0 or done):
        res = evaluator(self.eval_params(), *eval_clips, budgets_for(cfg, self.model))
        writer_.write_scalars(step + 1, {
            f"eval/{m}_k{k:04d}": v for m in res.get("metrics", ("psnr", "ssim"))
            for k, v in zip(res["budgets"], res[m])})
        grid = report.budget_grid(eval_clips[1], res["recons"],
                                  labels=["orig"] + [str(k) for k in res["budgets"]])
        writer_.write_images(step + 1, {"eval/recon_grid_middle_frame": grid[None, len(grid) // 2]})
    if pending is not None:
      last = self._check(*pending)
      writer_.write_scalars(pending[0], last)
    writer_.flush()
    self.checkpointer.wait()
    watch.close()
    if preempted:
      error = preemption.Preempted(step + 1, self.checkpointer.directory)
      metrics_lib.log("%s", error)
      raise error
    return last

  def _check(self, step: int, metrics) -> dict:
    host = metrics_lib.to_scalars(jax.device_get(metrics))
    if not math.isfinite(host["loss"]):
      self.checkpointer.wait()
      raise FloatingPointError(
          f"non-finite loss {host['loss']} at step {step}; stopped before saving it. The last "
          f"good checkpoint (step {self.checkpointer.latest_step()}) in "
          f"{self.checkpointer.directory} is kept; lower the learning rate or check the data.")
    return host

  def close(self):
    if getattr(self, "watch", None) is not None:
      self.watch.close()  # the SIGTERM handler, if run() was left by an error
    self.checkpointer.close()


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


def periodic_eval_clips(config, data_root: str, latent_shape: Sequence[int]):
  """The clips of the periodic eval (`load_eval_clips`), or None (eval off, logged) when the
  data has no eval split and config.eval asks for none (neither `required` nor `data_dir`).
  `latent_shape`: [T, h, w, C] of the training data; the eval latents must match it."""
  root, split = eval_data_dir(config, data_root), config.data.eval_split
  manifest = os.path.join(root, writer.MANIFEST_NAME)
  required = bool(config.eval.get("required", False)) or bool(config.eval.get("data_dir"))
  if not required and split not in writer.read_manifest(root)["splits"]:
    metrics_lib.log("Periodic eval is off: %s has no split %r (config.data.eval_split) and "
                    "config.eval.data_dir is not set; to evaluate during training, prep "
                    "held-out videos with --config.split=eval (or --config.eval_videos=N) and "
                    "set config.eval.data_dir", manifest, split)
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


def make_evaluator(config, trainer: Trainer) -> BudgetEvaluator:
  return BudgetEvaluator(trainer.model, trainer.codec, steps=int(config.eval.steps),
                         mesh=trainer.mesh, rules=trainer.rules,
                         guidance_scale=float(config.eval.guidance_scale),
                         seed=int(config.eval.seed),
                         metrics=tuple(config.eval.get("metrics", ("psnr", "ssim"))))


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming), evaluating budgets periodically; returns the last train metrics."""
  trainer = Trainer(config, workdir)
  try:
    clips = periodic_eval_clips(config, trainer.data_root, trainer.spec)
    evaluator = None if clips is None else make_evaluator(config, trainer)
    return trainer.run(evaluator, clips)
  finally:
    trainer.close()


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, key + "."))
    else:
      out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out
