"""`train_and_evaluate(config, workdir)`: the training recipe of every stage, top to bottom.

What is trained (the tokenizer, its decoder fine-tune, the AR model) is a task object
(`vft.train.tasks`, picked by `config.task`): its model, init, loss, batch fields and eval hook.
Mesh, sharded state, optimizer, grain input, orbax checkpoints with the data-iterator state,
clu writers, the NaN guard and preemption are the same for all of them, here."""
from __future__ import annotations

import json
import math
import os

import jax

from vft import checkpoint as ckpt_lib
from vft import files, sharding
from vft import metrics as metrics_lib
from vft.data import pipeline
from vft.train import optimizer as optim_lib
from vft.train import preemption
from vft.train import state as state_lib
from vft.train import tasks
from vft.train.step import jit_train_step, make_train_step
# The tokenizer task's helpers, where their callers (api, eval job, tests) look for them.
from vft.train.tasks import (budgets_for, build_model, eval_data_dir,  # noqa: F401
                             latent_spec, load_eval_clips, make_evaluator, periodic_eval_clips)


def data_dir(config, workdir: str) -> str:
  return config.data.dir or os.fspath(files.absolute(workdir) / "data")


class Trainer:
  """Holds the jitted step, shardings and checkpointer of one run; `run()` trains."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.mesh = sharding.mesh_from_config(config)
    self.rules = sharding.rules_from_config(config.sharding_rules)
    self.data_root = data_dir(config, workdir)
    self.task = tasks.make_task(config, self.data_root)  # checks the data against the config
    self.model, self.spec = self.task.model, self.task.spec
    self.codec = getattr(self.task, "codec", None)
    gbs = int(config.data.global_batch_size)
    shards = sharding.num_batch_shards(self.mesh, self.rules)
    if gbs % jax.process_count() or gbs % shards:
      raise ValueError(f"config.data.global_batch_size={gbs} must be divisible by the process "
                       f"count {jax.process_count()} and the batch shards of the mesh ({shards})")
    self.tx = optim_lib.make_optimizer(config)
    make_train_step(self.model, self.tx, config, self.task.loss_fn)  # validates, before any I/O
    self.checkpointer = ckpt_lib.Checkpointer(
        files.absolute(workdir) / "checkpoints", keep=config.checkpoint.keep,
        use_async=config.checkpoint.use_async)
    if self.checkpointer.latest_step() is None:  # fail fast, before anything is compiled
      try:
        self.task.check_init(workdir)
      except Exception:
        self.checkpointer.close()
        raise
    use_ema = float(config.optim.get("ema_decay", 0.0)) > 0
    self.state, self.state_sharding = state_lib.init_state_from(
        self.task.init_params, self.tx, jax.random.key(config.seed), use_ema, self.mesh,
        self.rules)
    self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)
    self.dataset = pipeline.make_dataset(
        self.data_root, config.data.train_split, batch_size_per_process=gbs // jax.process_count(),
        seed=config.seed, worker_count=config.data.worker_count, fields=self.task.fields)
    self.data_iter = iter(self.dataset)
    self.init_report = None
    if self.checkpointer.latest_step() is None:  # a fresh run: start from config.init if set
      self._initialize_from_source()
    self.train_step = jit_train_step(self.model, self.tx, config, self.mesh, self.rules,
                                     self.state_sharding, loss_fn=self.task.loss_fn)

  def _initialize_from_source(self) -> None:
    """Loads `config.init` (a stage-1 workdir or an official file) into params (and EMA)."""
    init = self.task.initial_params(self.state.params)
    if init is None:
      return
    params, report = init
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

  def run(self, eval_hook=None, until_step: int | None = None) -> dict:
    """Trains to config.total_steps (resuming if a checkpoint exists). Returns last metrics.

    `eval_hook(params, step, writer)` (the task's `eval_hook(trainer)`) runs every
    config.eval.every_steps and at the end.

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
      if eval_hook is not None and ((step + 1) % cfg.eval.every_steps == 0 or done):
        eval_hook(self.eval_params(), step + 1, writer_)
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


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming), evaluating budgets periodically; returns the last train metrics."""
  trainer = Trainer(config, workdir)
  try:
    return trainer.run(trainer.task.eval_hook(trainer))
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
