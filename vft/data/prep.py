"""The demo dataset prep job: synthetic + real demo clips -> codec latents in ArrayRecord shards.

    manifest = prep_demo_dataset("/tmp/vft_demo", PatchCodec(spatial_factor=8))

Splits written to `out_dir` (see vft.data.writer for the layout):
  train  `num_train_synthetic` synthetic clips + up to `real_clips_per_video` clips of each
         `train_real` video, in a seeded random order. Fields: latents (bfloat16), video_id,
         label (int32; -1 for real clips), caption (str; "" for real clips).
  eval   up to `eval_clips_per_video` clips of each `eval_real` video + `num_eval_synthetic`
         synthetic clips (seeds disjoint from train). Fields: as train + video (uint8).
Synthetic clips are vft.data.synthetic.make_class_video clips; each split's manifest meta has
`label_names` (synthetic.LABEL_NAMES: label i is label_names[i]).

Real clips: frames sampled at `fps` (raised for a video too short to give one clip), resized on
the short side and centre-cropped to size x size; clip starts spread evenly over the video
(overlapping when the video is short). Pixels enter the codec as float32 in [-1, 1].
The job is idempotent: a complete manifest with both splits made with the same settings is
returned as is (`overwrite=True` recomputes).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vft import files
from vft.data.synthetic import LABEL_NAMES, make_class_video
from vft.data.video_io import probe_video, read_video
from vft.data.writer import MANIFEST_NAME, ShardWriter, read_manifest

DEMO_CLIPS_DIR = Path(__file__).parent / "demo_clips"
_EVAL_SEED_OFFSET = 5_000_000  # synthetic eval seeds start here; train seeds are 0..N-1
_SEEDS_PER_RUN = 10_000_000


def demo_clip_paths() -> dict[str, Path]:
  """{name: path} of the bundled demo clips (vft/data/demo_clips/*.mp4), e.g. "asl_book"."""
  paths = {p.stem: p for p in sorted(DEMO_CLIPS_DIR.glob("*.mp4"))}
  if not paths:
    raise FileNotFoundError(f"no demo clips (*.mp4) in {DEMO_CLIPS_DIR}")
  return paths


def real_video_clips(path: str | os.PathLike, *, clip_len: int, size: int, fps: float,
                     num_clips: int) -> list[np.ndarray]:
  """Up to `num_clips` clips uint8 [clip_len, size, size, 3] spread evenly over a video."""
  info = probe_video(path)
  if info.duration <= 0:
    raise ValueError(f"{path}: unknown duration; cannot sample clips")
  fps_eff = min(info.fps, max(fps, clip_len / info.duration))
  frames = read_video(path, fps=fps_eff, size=size, crop=True)
  if len(frames) < clip_len:
    raise ValueError(f"{path}: {len(frames)} frames at {fps_eff:.2f} fps, fewer than a "
                     f"{clip_len}-frame clip")
  starts = np.unique(np.round(np.linspace(0, len(frames) - clip_len, num_clips)).astype(int))
  return [frames[s:s + clip_len] for s in starts]


def codec_meta(codec) -> dict[str, Any]:
  """Name and shape factors of a codec, as recorded in the manifest."""
  name = getattr(codec, "name", None) or {"PatchCodec": "patch"}.get(
      type(codec).__name__, type(codec).__name__)
  return {"name": name, "spatial_factor": int(codec.spatial_factor),
          "time_factor": int(codec.time_factor), "latent_channels": int(codec.latent_channels)}


def _encode_batches(encode: Callable[[jax.Array, int], jax.Array], items: Sequence[Any],
                    pixels_of: Callable[[Any], np.ndarray], batch_size: int,
                    pbar: tqdm) -> Iterable[tuple[Any, np.ndarray, np.ndarray]]:
  """Yields (item, pixels uint8 [T, H, W, 3], latents bfloat16 [T', h, w, C]) per item.

  `encode(video, batch_index)`: video [B, T, H, W, 3] float32 in [-1, 1] -> latents
  [B, T', h, w, C] bfloat16.
  """
  for start in range(0, len(items), batch_size):
    chunk = items[start:start + batch_size]
    pixels = np.stack([pixels_of(item) for item in chunk])
    video = pixels.astype(np.float32) / 127.5 - 1.0
    if len(chunk) < batch_size:  # pad so every batch has one shape: one compilation
      video = np.concatenate([video, np.repeat(video[-1:], batch_size - len(chunk), axis=0)])
    latents = np.asarray(encode(jnp.asarray(video), start // batch_size))[:len(chunk)]
    for item, px, lat in zip(chunk, pixels, latents):
      yield item, px, lat
    pbar.update(len(chunk))


def _is_done(out_dir: epath.Path, prep_args: dict[str, Any]) -> dict[str, Any] | None:
  """The existing manifest if both splits are complete and were made with `prep_args`."""
  if not (out_dir / MANIFEST_NAME).is_file():
    return None
  try:
    manifest = read_manifest(out_dir)
  except (FileNotFoundError, ValueError) as e:
    logging.warning("rebuilding the demo dataset in %s: %s", out_dir, e)
    return None
  splits = manifest["splits"]
  if not all(s in splits and splits[s].get("complete") for s in ("train", "eval")):
    return None
  old = [splits[s]["meta"].get("prep_args") for s in ("train", "eval")]
  if any(o != prep_args for o in old):
    raise ValueError(
        f"{out_dir} already holds a demo dataset made with other settings ({old[0]}); "
        "pass overwrite=True to rebuild it, or use another out_dir")
  return manifest


def prep_demo_dataset(
    out_dir: str | os.PathLike,
    codec,
    *,
    num_train_synthetic: int = 512,
    num_eval_synthetic: int = 8,
    clip_len: int = 17,
    size: int = 64,
    seed: int = 0,
    train_real: Sequence[str] = ("vidtok_desk", "asl_again", "pedestrians_a", "tree_wind"),
    eval_real: Sequence[str] = ("asl_book", "sintel_snow_cg"),
    real_clips_per_video: int = 8,
    eval_clips_per_video: int = 2,
    fps: float = 8.0,
    batch_size: int = 16,
    records_per_shard: int = 256,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
  """Builds the demo dataset (module doc) in `out_dir`; returns the manifest."""
  out_dir = files.absolute(out_dir)
  overlap = sorted(set(train_real) & set(eval_real))
  if overlap:
    raise ValueError(f"prep_demo_dataset: videos {overlap} are in both train_real and eval_real")
  if not 0 <= num_train_synthetic <= _EVAL_SEED_OFFSET or num_eval_synthetic > _EVAL_SEED_OFFSET:
    raise ValueError(f"prep_demo_dataset: synthetic counts must be in [0, {_EVAL_SEED_OFFSET}]")
  codec.latent_shape(clip_len, size, size)  # validates clip_len and size for this codec
  prep_args = {
      "num_train_synthetic": num_train_synthetic, "num_eval_synthetic": num_eval_synthetic,
      "clip_len": clip_len, "size": size, "seed": seed, "train_real": list(train_real),
      "eval_real": list(eval_real), "real_clips_per_video": real_clips_per_video,
      "eval_clips_per_video": eval_clips_per_video, "fps": fps, "codec": codec_meta(codec),
  }
  if not overwrite:
    manifest = _is_done(out_dir, prep_args)
    if manifest is not None:
      return manifest

  available = demo_clip_paths()
  unknown = sorted((set(train_real) | set(eval_real)) - set(available))
  if unknown:
    raise ValueError(f"prep_demo_dataset: unknown demo videos {unknown}; available: "
                     f"{sorted(available)}")
  real = {}  # video_id -> uint8 clip
  clip_ids = {"train": {}, "eval": {}}
  for split, names, per_video in (("train", train_real, real_clips_per_video),
                                  ("eval", eval_real, eval_clips_per_video)):
    for name in names:
      clips = real_video_clips(available[name], clip_len=clip_len, size=size, fps=fps,
                               num_clips=per_video)
      ids = [f"{name}/clip{i}" for i in range(len(clips))]
      real.update(zip(ids, clips))
      clip_ids[split][name] = ids

  base = seed * _SEEDS_PER_RUN
  train_items = ([("synthetic", f"synthetic/{i:06d}", base + i) for i in range(num_train_synthetic)]
                 + [("real", vid, None) for ids in clip_ids["train"].values() for vid in ids])
  order = np.random.default_rng(seed).permutation(len(train_items))
  train_items = [train_items[i] for i in order]
  eval_items = ([("real", vid, None) for ids in clip_ids["eval"].values() for vid in ids]
                + [("synthetic", f"synthetic_eval/{j:06d}", base + _EVAL_SEED_OFFSET + j)
                   for j in range(num_eval_synthetic)])

  synthetic = {}  # video_id -> (label, caption), filled as the clips are drawn

  def pixels_of(item) -> np.ndarray:
    kind, vid, video_seed = item
    if kind != "synthetic":
      return real[vid]
    px, label, caption = make_class_video(video_seed, clip_len, size)
    synthetic[vid] = (label, caption)
    return px

  # Not wrapped in an outer jit: a learned codec (VidTok) jits itself with its params as
  # arguments; sampled posteriors draw from fold_in(key(seed), batch index).
  prep_key = jax.random.key(seed)
  encode = lambda v, i: codec.encode(v, jax.random.fold_in(prep_key, i)).astype(  # noqa: E731
      jnp.bfloat16)
  common = {"codec": codec_meta(codec), "clip_len": clip_len, "size": size, "fps": fps,
            "seed": seed, "prep_args": prep_args}
  with tqdm(total=len(train_items) + len(eval_items), desc="prep demo dataset",
            disable=not progress, unit="clip") as pbar:
    for split, items, keep_pixels in (("train", train_items, False), ("eval", eval_items, True)):
      meta = dict(common, real_clips=clip_ids[split], label_names=list(LABEL_NAMES),
                  num_synthetic=sum(kind == "synthetic" for kind, _, _ in items))
      with ShardWriter(out_dir, split, records_per_shard, meta=meta) as writer:
        for (_, vid, _), px, lat in _encode_batches(encode, items, pixels_of, batch_size, pbar):
          label, caption = synthetic.pop(vid, (-1, ""))
          example = {"latents": lat, "video_id": vid, "label": np.int32(label), "caption": caption}
          if keep_pixels:
            example["video"] = px
          writer.write(example)
  return read_manifest(out_dir)
