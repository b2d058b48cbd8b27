"""Defaults of the prep job's config (configs/prep_video.py builds on them; `vft prep --input`
without --config uses `default_config()`). Fields are documented inline.
"""
import ml_collections


def default_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The prep config (variants: see configs/prep_video.py)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.clips = ml_collections.ConfigDict(dict(
      num_frames=17, fps=4.0, size=128, clips_per_video=1,
      sampling="even",   # even | random (seeded per video)
      crop="center",     # center | random (seeded per clip)
      short="skip",      # skip (counted in manifest.json) | loop
      max_seconds=None))  # decode at most this much of each video
  c.clips.max_seconds = ml_collections.FieldReference(None, field_type=float)
  # name: patch (spatial_factor, time_factor, pool) | vidtok (path to a safetensors file).
  c.codec = ml_collections.ConfigDict(dict(
      name="patch", spatial_factor=8, time_factor=4, pool=1, path="", prefix="",
      dtype="float32"))
  c.store = "sample"   # sample (posterior sample) | mean | moments (sampled at train time)
  c.dtype = "bfloat16"  # stored latents / moments
  c.batch_size = 8      # clips per encoder call (rounded up to a multiple of the local devices)
  c.videos_per_shard = 64
  c.split = "train"
  c.eval_videos = 0     # the last N inputs form an `eval` split that keeps its pixels
  c.label_from_dir = False  # folder inputs: parent folder name = class
  c.label_vocab = ""    # optional text file, one class name a line (pins the label ids)
  c.limit = ml_collections.FieldReference(None, field_type=int)  # first N inputs only
  # REPA targets: DINOv2 (transformers FlaxDinov2Model) from a local checkpoint folder.
  # frames: which RGB frame feeds latent frame t (t >= 1 covers frames 4t-3..4t):
  #   last (frame 4t, default) | first (4t-3) | mean (features averaged over the group).
  # patch: the tokenizer's spatial patch size on the latent grid (targets are one per patch).
  # Stored in config.dtype.
  c.repa = ml_collections.ConfigDict(dict(path="", frames="last", patch=1, dtype="float32"))
  # Caption embeddings: kind bert (e.g. MiniLM) | t5, from a local HF checkpoint folder.
  c.text = ml_collections.ConfigDict(dict(kind="", path="", max_length=32, dtype="bfloat16"))
  # --input tfds:<name>[/<config>][:<split>] (vft/data/tfds_videos.py): where the prepared
  # TFDS data lives, the frame rate of datasets without an `fps` feature (UCF-101: 25), keys.
  c.tfds = ml_collections.ConfigDict(dict(
      data_dir="", fps=0.0, video_key="video", label_key="label", caption_key="caption",
      id_key="video_id"))
  c.process_index = -1  # -1: jax.process_index() / jax.process_count()
  c.process_count = -1
  c.max_shards = ml_collections.FieldReference(None, field_type=int)  # stop after N shards
  c.progress = True
  c.overwrite = False

  if arg in (None, ""):  # PatchCodec: needs no weights
    pass
  elif arg == "k600_128":
    c.codec.name = "vidtok"
  elif arg == "k600_256":
    c.codec.name = "vidtok"
    c.clips.size = 256
  elif arg == "long_81":
    c.codec.name = "vidtok"
    c.clips.update(dict(num_frames=81, fps=8.0))
  elif arg == "demo":
    c.clips.update(dict(fps=8.0, size=64, clips_per_video=4))
    c.batch_size = 16
  elif arg == "tiny":
    c.clips.update(dict(size=32))
    c.videos_per_shard = 4
  else:
    raise ValueError(f"prep config: unknown variant {arg!r}; expected k600_128, "
                     "k600_256, long_81, demo or tiny")
  return c
