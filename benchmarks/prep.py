"""Prep-job benchmark: clips/s of `vft prep` on this machine for 17x128x128 clips (4 fps).

Runs the prep job (vft/data/prep_job.py: decode + resize + crop, batched jitted encoding,
ArrayRecord writing) over the shared sample videos with each codec, after one warm-up batch (so
compilation is excluded), and reports clips/s for the whole job and for decoding alone.
Codecs: PatchCodec (spatial 8) and a small randomly initialised VidTok (`--vidtok_ch`, default
32 wide with ch_mult (1, 2, 4, 4), one res block; the release is 128 wide, two blocks).

  python benchmarks/prep.py
  python benchmarks/prep.py --videos=/work/shared/data/videos --clips_per_video=4 --vidtok_ch=64
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def run(codec, name: str, cfg, items, labels, out: str, batch: int) -> tuple[int, float]:
  from vft.data import clips as clips_lib
  from vft.data import prep_job
  from vft.data.encode import BatchEncoder
  spec = clips_lib.ClipSpec.from_config(cfg.clips)
  enc = BatchEncoder(codec, store="sample", seed=0, batch_size=batch)
  px = np.zeros((enc.batch_size, spec.num_frames, spec.size, spec.size, 3), np.uint8)
  idx = np.zeros((enc.batch_size,), np.int32)
  enc(px, idx, idx)  # compile
  job_cfg = prep_job.job_config_dict(cfg)
  job = prep_job.PrepJob(items=items, labels=labels, output=out, spec=spec, encoder=enc,
                         job_cfg=job_cfg, vae={"name": name}, progress=False,
                         videos_per_shard=int(cfg.videos_per_shard))
  t0 = time.perf_counter()
  manifest = job.run()
  return manifest["num_records"], time.perf_counter() - t0


def decode_only(items, spec) -> tuple[int, float]:
  from vft.data import clips as clips_lib
  n, t0 = 0, time.perf_counter()
  for i, item in enumerate(items):
    try:
      n += len(clips_lib.sample_clips(item, spec, np.random.default_rng(i)))
    except ValueError:
      pass
  return n, time.perf_counter() - t0


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--videos", default="/work/shared/data/videos")
  ap.add_argument("--clips_per_video", type=int, default=4)
  ap.add_argument("--size", type=int, default=128)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--vidtok_ch", type=int, default=32)
  ap.add_argument("--codecs", default="patch,vidtok")
  args = ap.parse_args()
  from vft.data import clips as clips_lib
  from vft.data import prep_config, sources
  from vft.models.vae import PatchCodec, VidTokCodec, VidTokConfig
  from vft.models.vae import vidtok as vt
  cfg = prep_config.default_config()
  cfg.clips.update(dict(size=args.size, clips_per_video=args.clips_per_video))
  items, labels = sources.list_inputs(args.videos)
  spec = clips_lib.ClipSpec.from_config(cfg.clips)
  print(f"{len(items)} videos from {args.videos}, {spec.num_frames}x{spec.size}x{spec.size} "
        f"clips at {spec.fps:g} fps, up to {spec.clips_per_video} per video; "
        f"{len(jax.devices())} {jax.devices()[0].platform} device(s), batch {args.batch}")
  n, t = decode_only(items, spec)
  print(f"{'decode + resize only':<40} {n:>5} clips {t:>7.2f} s {n / t:>8.2f} clips/s")
  for name in args.codecs.split(","):
    if name == "patch":
      codec, label = PatchCodec(spatial_factor=8), "PatchCodec (spatial 8)"
    else:
      vcfg = VidTokConfig(ch=args.vidtok_ch, ch_mult=(1, 2, 4, 4), num_res_blocks=1)
      codec = VidTokCodec(vcfg, vt.init_params(vcfg, jax.random.key(0), num_frames=5, size=16))
      label = f"VidTok ch={args.vidtok_ch} (random init)"
    with tempfile.TemporaryDirectory(prefix="vft_bench_prep_") as d:
      n, t = run(codec, name, cfg, items, labels, d, args.batch)
    print(f"{'prep job, ' + label:<40} {n:>5} clips {t:>7.2f} s {n / t:>8.2f} clips/s")


if __name__ == "__main__":
  main()
