"""`vft prep --input DIR_OR_MANIFEST --output OUT --config=configs/prep_video.py[:variant]`.

Turns videos into codec-latent shards for training (vft/data/prep_job.py). Variants:
  (none)              17-frame clips at 4 fps, 128x128, PatchCodec (needs no weights)
  k600_128 (default)  17-frame clips at 4 fps (about 4 s), 128x128, VidTok (--config.codec.path)
  k600_256            the same at 256x256
  long_81             81-frame clips at 8 fps (10 s), 128x128, for long-video training
  demo                17 frames at 8 fps, 64x64, PatchCodec, 4 clips per video (CPU)
  tiny                17 frames at 4 fps, 32x32, PatchCodec, 4 videos per shard (tests)
Fields (vft/data/prep_config.py) can be overridden: --config.clips.clips_per_video=4,
--config.codec.path=vae.safetensors, --config.store=moments, --config.repa.path=dinov2_dir, ...
"""
from vft.data import prep_config


def get_config(arg: str | None = None):
  return prep_config.default_config(arg)
