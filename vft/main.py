"""Entry point: `vft <command> --config=configs/x.py [--config.a=b ...] --workdir=DIR`.

Commands:
  prep   build the embedded demo dataset (VAE latents in ArrayRecord shards) if absent
  train  train the tokenizer (resumes from the latest checkpoint in the workdir)
  eval   reconstruct held-out clips at every token budget; write videos, plot, metrics.json
  demo   prep -> train -> eval (the default of configs/demo.py), then with config.gen.enabled
         demo-gen
  demo-gen  tokens -> class-to-video AR model -> generated clips, gFVD, alignment (vft/ar/demo.py)
Without a command, `config.job` is run.

Standalone jobs (no --workdir; flags defined in vft/data/cli.py and vft/eval/cli.py):
  vft prep --input=DIR|GLOB|x.csv|x.jsonl|tfds:NAME --output=OUT [--config=configs/prep_video.py:k600_128]
  vft eval --checkpoint=WORKDIR|model.safetensors --videos=DIR|SHARDS --budgets=1,2,4 --out=OUT
  vft fvd DIR_A DIR_B [--frames=16] [--json]
  vft plan --config=configs/x.py --topology=v5p-256   (memory/compile plan; vft/plan_cli.py)
  vft tokenize-dataset --tokenizer=WORKDIR|model.safetensors --input=PREP_OUT --output=OUT
                 (token ids of a prep dataset for AR training; vft/data/tokenize_job.py)
  vft generate --ar=AR_WORKDIR --tokenizer=TOK --classes=3,7 | --prompts=FILE --budget=K
                 --num_samples=S --out=DIR   (mp4 per sample + grid; vft/ar/cli.py)
  vft eval-gen --ar=AR_WORKDIR --tokenizer=TOK --budgets=1,2,4 --num_samples=S
                 --real_stats=STATS.npz [--real_videos=SHARDS] --out=OUT   (gFVD, alignment)

Inference (no --config; --model is an official .safetensors file or one of our workdirs):
  vft tokenize   --model=M --input=clip.mp4 --output=clip.npz [--fps=8 --size=256 --seed=0]
  vft detokenize --model=M --input=clip.npz --output=recon.mp4 [--keep_k=1,16,256 --steps=30
                 --guidance_scale=20 --apg --seed=0]   (several keep_k also write a grid mp4)
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# Command modules that define their own flags (absl flags must exist before parsing; these
# modules import nothing heavy at the top).
from vft import files
from vft.data import cli as data_cli
from vft.eval import cli as eval_cli
from vft.ar import cli as ar_cli
from vft import plan_cli

COMMANDS = ("prep", "train", "eval", "demo", "demo-gen")
INFERENCE_COMMANDS = ("tokenize", "detokenize")

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
# tokenize / detokenize
_MODEL = flags.DEFINE_string(
    "model", None, "Official .safetensors checkpoint (or a folder with model.safetensors and "
    "config.json), or a vft workdir. detokenize defaults to the one recorded in the .npz.")
_INPUT = flags.DEFINE_string("input", None, "tokenize: a video file; detokenize: a .npz.")
_OUTPUT = flags.DEFINE_string("output", None, "tokenize: .npz to write; detokenize: .mp4.")
_KEEP_K = flags.DEFINE_list("keep_k", [], "Tokens kept per latent frame; several values render "
                            "every budget and write a grid (default: all tokens).")
_STEPS = flags.DEFINE_integer("steps", 30, "Euler steps of the flow decoder.")
_GUIDANCE = flags.DEFINE_float("guidance_scale", 1.0, "Classifier-free guidance (1 = off).")
_APG = flags.DEFINE_bool("apg", False, "Adaptive projected guidance instead of plain CFG.")
_APG_ETA = flags.DEFINE_float("apg_eta", 0.0, "APG: weight of the parallel component.")
_APG_MOMENTUM = flags.DEFINE_float("apg_momentum", 0.0, "APG: momentum.")
_APG_THRESHOLD = flags.DEFINE_float("apg_norm_threshold", 0.6, "APG: norm threshold.")
_FPS = flags.DEFINE_float("fps", None, "tokenize: sampling rate (default: the model's, or 8).")
_SIZE = flags.DEFINE_integer("size", None, "tokenize: frame size (default: the model's).")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", None, "tokenize: frames to sample (17 + 16k; "
                                   "default from --fps and the duration).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the posterior samples and the flow noise.")
_GRID = flags.DEFINE_string("grid", None, "detokenize: grid mp4 path (several --keep_k).")


def prep(config, workdir: str) -> dict:
  """Builds the demo dataset; with several processes only process 0 writes it, the others wait
  at a barrier and then read its manifest."""
  import jax
  from jax.experimental import multihost_utils
  from vft.data import prep as prep_lib
  from vft.data.writer import read_manifest
  from vft.models.vae import make_codec
  from vft.train.loop import data_dir
  out = data_dir(config, workdir)
  manifest = None
  if jax.process_index() == 0:
    manifest = prep_lib.prep_demo_dataset(
        out, make_codec(config.codec), clip_len=int(config.data.clip_len),
        size=int(config.data.size), seed=int(config.seed), **dict(config.data.get("prep", {})))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("vft prep: demo dataset written")
  return manifest if manifest is not None else read_manifest(out)


def inference(command: str) -> None:
  """vft tokenize / detokenize (flags only, no config)."""
  from vft.inference import cli
  if not _INPUT.value or not _OUTPUT.value:
    raise app.UsageError(f"vft {command} needs --input and --output")
  if command == "tokenize":
    if not _MODEL.value:
      raise app.UsageError("vft tokenize needs --model (official .safetensors or a workdir)")
    res = cli.tokenize_file(_MODEL.value, _INPUT.value, _OUTPUT.value, fps=_FPS.value,
                            size=_SIZE.value, num_frames=_NUM_FRAMES.value, seed=_SEED.value)
  else:
    try:
      keep_k = [int(k) for k in _KEEP_K.value]
    except ValueError:
      raise app.UsageError(f"--keep_k: expected integers, got {_KEEP_K.value}") from None
    res = cli.detokenize_file(
        _MODEL.value, _INPUT.value, _OUTPUT.value, keep_k=keep_k or [None], steps=_STEPS.value,
        guidance_scale=_GUIDANCE.value, apg=_APG.value, eta=_APG_ETA.value,
        momentum=_APG_MOMENTUM.value, norm_threshold=_APG_THRESHOLD.value, seed=_SEED.value,
        grid=_GRID.value)
  print(cli.dumps(res))


def main(argv):
  if _DISTRIBUTED.value:  # first, so every command (standalone eval and prep too) is multi-host
    import jax
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  if len(argv) > 1 and argv[1] == "fvd":  # positional folders
    return eval_cli.fvd_main(argv[2:])
  if len(argv) > 2:
    raise app.UsageError(f"too many positional arguments: {argv[1:]}; one command of "
                         f"{COMMANDS + INFERENCE_COMMANDS}")
  if len(argv) > 1 and argv[1] in INFERENCE_COMMANDS:
    return inference(argv[1])
  if len(argv) > 1 and argv[1] == "prep" and data_cli.standalone_requested():
    return data_cli.prep_main(_CONFIG.value, _INPUT.value, _OUTPUT.value)
  if len(argv) > 1 and argv[1] == "tokenize-dataset":
    return data_cli.tokenize_dataset_main(_INPUT.value, _OUTPUT.value)
  if len(argv) > 1 and argv[1] == "generate":
    return ar_cli.generate_main()
  if len(argv) > 1 and argv[1] == "eval-gen":
    return ar_cli.eval_gen_main()
  if len(argv) > 1 and argv[1] == "plan":
    return plan_cli.plan_main(_CONFIG.value)
  if len(argv) > 1 and argv[1] == "eval" and eval_cli.standalone_requested():
    return eval_cli.eval_main(_CONFIG.value)
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
  workdir = _WORKDIR.value
  if not workdir:
    raise app.UsageError("--workdir is required")
  command = argv[1] if len(argv) > 1 else config.job
  if command not in COMMANDS:
    raise app.UsageError(f"unknown command {command!r}; expected one of "
                         f"{COMMANDS + INFERENCE_COMMANDS}")

  import jax
  logging.set_verbosity(logging.INFO)
  files.absolute(workdir).mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    files.write_text(files.absolute(workdir) / "config.json", config.to_json_best_effort(indent=2))
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
  if command == "demo-gen" or (command == "demo" and config.get("gen", {}).get("enabled")):
    from vft.ar import demo as gen_demo
    res = gen_demo.run(config, workdir)
    if jax.process_index() == 0:
      print(json.dumps({k: res[k] for k in ("budgets", "gfvd", "top1", "prob")}, indent=1))
      for name, path in res["paths"].items():
        print(f"{name}: {path}")


def run():
  """Console script `vft`."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(main)


if __name__ == "__main__":
  sys.exit(run())
