"""`vft prep --input DIR_OR_MANIFEST --output OUT [--config=configs/prep_video.py[:variant]]`.

--input is a folder (searched recursively), a glob, or a .csv/.jsonl manifest (vft.data.sources).
--seed, --size, --fps and --num_frames override the config's seed / clips.size / clips.fps /
clips.num_frames. Several processes: either `--distributed` (jax.distributed; every process
takes the shards k with k % process_count == its index, then process 0 writes manifest.json
after a barrier), or independent processes given `--process_index=i --process_count=n` (no
coordination needed: whichever process finishes last writes manifest.json; re-running any of
them after all have finished writes it too).

`vft tokenize-dataset --tokenizer=CKPT --input=PREP_OUT --output=OUT [--posterior=sample|mode
--token_dtype=int32|uint16 --batch_size=16 --seed=0]`: the prep output's latents -> token ids
(vft.data.tokenize_job); the same slicing (--distributed or --process_index/--process_count),
resume and --overwrite as prep.

Flags are defined here (imported by vft/main.py before parsing); heavy imports stay inside
the functions.
"""
from __future__ import annotations

import json

from absl import flags, logging

FLAGS = flags.FLAGS

_PROCESS_INDEX = flags.DEFINE_integer(
    "process_index", None, "prep: this process's slice index (without --distributed).")
_PROCESS_COUNT = flags.DEFINE_integer(
    "process_count", None, "prep: number of independent prep processes (without --distributed).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "prep: replace an output made with another config or input list.")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "tokenize-dataset: the tokenizer, a vft workdir or an official "
    ".safetensors file (or a folder holding model.safetensors).")
_POSTERIOR = flags.DEFINE_enum(
    "posterior", "sample", ["sample", "mode"], "tokenize-dataset: for inputs that store VAE "
    "moments, tokenize a posterior sample keyed by (--seed, record) or the mean.")
_TOKEN_DTYPE = flags.DEFINE_enum("token_dtype", "int32", ["int32", "uint16"],
                                 "tokenize-dataset: dtype of the stored ids.")


def standalone_requested() -> bool:
  """True when `vft prep` was called with --input (a folder, glob or manifest of videos)
  rather than as the demo-dataset step of a --config/--workdir run."""
  return bool(FLAGS["input"].present and FLAGS.input)


def resolve_config(config, overrides: dict):
  """The prep config: `config` (from --config) or the defaults, with flag overrides applied.
  `overrides` maps config paths ("clips.size") to values; None values are ignored."""
  from vft.data import prep_config
  cfg = prep_config.default_config() if config is None else config
  cfg = cfg.copy_and_resolve_references() if hasattr(cfg, "copy_and_resolve_references") else cfg
  cfg.unlock()
  for path, value in overrides.items():
    if value is None:
      continue
    target = cfg
    for p in path.split(".")[:-1]:
      target = target[p]
    target[path.split(".")[-1]] = value
  return cfg


def prep_main(config, input_path: str, output: str | None):
  if not output:
    from absl import app
    raise app.UsageError("vft prep --input needs --output (a folder, local or any etils.epath "
                         "path)")
  from vft.data import prep_job
  logging.set_verbosity(logging.INFO)
  overrides = {
      "seed": FLAGS.seed if FLAGS["seed"].present else None,
      "clips.size": FLAGS.size, "clips.fps": FLAGS.fps, "clips.num_frames": FLAGS.num_frames,
      "process_index": _PROCESS_INDEX.value, "process_count": _PROCESS_COUNT.value,
      "overwrite": True if _OVERWRITE.value else None,
  }
  cfg = resolve_config(config, overrides)
  manifest = prep_job.run_prep(cfg, input_path, output)
  if manifest is None:
    print(json.dumps({"output": output, "complete": False,
                      "note": "other processes' shards are not finished yet"}))
  else:
    print(json.dumps({k: manifest[k] for k in ("num_records", "num_videos", "num_skipped",
                                               "latent_shape", "dtype", "config_hash")}))
    for s in manifest["skipped"]:
      print(f"skipped {s['path']}: {s['reason']}")


def tokenize_dataset_main(input_path: str | None, output: str | None):
  from absl import app
  if not _TOKENIZER.value or not input_path or not output:
    raise app.UsageError("vft tokenize-dataset needs --tokenizer (a workdir or official "
                         ".safetensors), --input (a `vft prep` output) and --output")
  from vft.api import VideoTokenizer
  from vft.data import tokenize_job
  logging.set_verbosity(logging.INFO)
  tok = VideoTokenizer.load(_TOKENIZER.value)
  manifest = tokenize_job.run_tokenize(
      tok, input_path, output, posterior=_POSTERIOR.value, token_dtype=_TOKEN_DTYPE.value,
      seed=FLAGS.seed, batch_size=FLAGS.batch_size or 16, process_index=_PROCESS_INDEX.value,
      process_count=_PROCESS_COUNT.value, overwrite=_OVERWRITE.value)
  if manifest is None:
    print(json.dumps({"output": output, "complete": False,
                      "note": "other processes' shards are not finished yet"}))
  else:
    print(json.dumps({k: manifest[k] for k in ("num_records", "num_skipped", "tokens_shape",
                                               "token_dtype", "vocab_size", "config_hash")}))
    for s in manifest["skipped"]:
      print(f"skipped {s['record']}: {s['reason']}")
