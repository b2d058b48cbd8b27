"""Entry point: `vft <command> --config=configs/x.py [--config.a=b ...] --workdir=DIR`.

Commands:
  prep   build the embedded demo dataset (VAE latents in ArrayRecord shards) if absent
  train  train the tokenizer (resumes from the latest checkpoint in the workdir)
  eval   reconstruct held-out clips at every token budget; write videos, plot, metrics.json
  demo   prep -> train -> eval (the default of configs/demo.py)
Without a command, `config.job` is run.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("prep", "train", "eval", "demo")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, outputs).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host; see launch/). On TPU "
    "pods and SLURM/Kubernetes-managed GPUs the cluster is auto-detected; elsewhere pass the "
    "three flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def prep(config, workdir: str) -> dict:
  from vft.data import prep as prep_lib
  from vft.models.vae import make_codec
  from vft.train.loop import data_dir
  out = data_dir(config, workdir)
  return prep_lib.prep_demo_dataset(
      out, make_codec(config.codec), clip_len=int(config.data.clip_len),
      size=int(config.data.size), seed=int(config.seed), **dict(config.data.get("prep", {})))


def main(argv):
  if len(argv) > 2:
    raise app.UsageError(f"too many positional arguments: {argv[1:]}; one command of {COMMANDS}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
  workdir = _WORKDIR.value
  if not workdir:
    raise app.UsageError("--workdir is required")
  command = argv[1] if len(argv) > 1 else config.job
  if command not in COMMANDS:
    raise app.UsageError(f"unknown command {command!r}; expected one of {COMMANDS}")

  import jax
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  logging.set_verbosity(logging.INFO)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info("vft %s: %d processes, %d devices (%s)", command, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)

  if command in ("prep", "demo"):
    prep(config, workdir)
  if command in ("train", "demo"):
    from vft.train.loop import train_and_evaluate
    train_and_evaluate(config, workdir)
  if command in ("eval", "demo"):
    from vft.eval.job import evaluate
    res = evaluate(config, workdir)
    if jax.process_index() == 0:
      print(json.dumps({k: v for k, v in res.items() if k != "paths"}, indent=1))
      for name, path in res["paths"].items():
        print(f"{name}: {path}")


def run():
  """Console script `vft`."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(main)


if __name__ == "__main__":
  sys.exit(run())
