"""TFDS for the prep job: a builder that turns a local video collection into a versioned TFDS
dataset, and reading TFDS video datasets (that one, or e.g. `ucf101`) through
`tfds.data_source` (random access, array_record), as the prep job's input.

Build (a user's Kinetics-600 / Panda-70M copy; nothing is downloaded):

    from vft.data import tfds_videos
    cfg = tfds_videos.LocalVideosConfig(name="k600_8fps_128", input="/data/k600/train.csv",
                                        fps=8.0, size=128)
    tfds_videos.build(cfg, data_dir="/data/tfds")

Each example: `video` (tfds Video, uint8 [T, size', W', 3]: the whole video (or its manifest
segment, at most `max_seconds`) sampled at `fps`, short side resized to `size`), `fps`,
`video_id`, `label` (ClassLabel over the manifest's vocabulary, -1 when absent; only when the
inputs have labels), `caption`. Videos that cannot be decoded are left out and logged.

Read, as prep input: `vft prep --input tfds:local_videos/k600_8fps_128:train` (or
`tfds:ucf101:train`) with `--config.tfds.data_dir=/data/tfds`; `tfds.fps` gives the frame rate
of datasets without an `fps` feature (UCF-101: 25). `grain_dataset(spec)` gives any such split
as a grain MapDataset.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from vft.data import sources
from vft.data.video_io import iter_frames

TFDS_PREFIX = "tfds:"


@dataclasses.dataclass
class LocalVideosConfig(tfds.core.BuilderConfig):
  """One local collection: where the videos are and how frames are sampled."""
  input: str = ""          # folder, glob or .csv/.jsonl manifest (vft.data.sources)
  fps: float = 8.0
  size: int = 128          # short side
  max_seconds: float | None = None
  label_from_dir: bool = False
  label_vocab: str = ""
  encoding_format: str = "png"  # of the stored frames: png (lossless) or jpeg


class LocalVideos(tfds.core.GeneratorBasedBuilder):
  """Local video files -> TFDS (split `train`); configured by a LocalVideosConfig."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  BUILDER_CONFIGS = [LocalVideosConfig(name="default", description="set input= to build")]

  def _items(self):
    cfg = self.builder_config
    if not cfg.input:
      raise ValueError("LocalVideosConfig.input: the folder, glob or manifest of the videos")
    return sources.list_inputs(cfg.input, label_from_dir=cfg.label_from_dir,
                               label_vocab=cfg.label_vocab or None)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    features = {
        "video": tfds.features.Video(shape=(None, None, None, 3),
                                     encoding_format=cfg.encoding_format),
        "fps": np.float32,
        "video_id": tfds.features.Text(),
        "caption": tfds.features.Text(),
        "label": np.int64,
    }
    meta = None
    if cfg.input:
      _, labels = self._items()
      if labels:
        meta = tfds.core.MetadataDict(labels=list(labels))
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features),
                                          metadata=meta)

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only
    items, _ = self._items()
    return {"train": self._generate_examples(items)}

  def _generate_examples(self, items):
    cfg = self.builder_config
    for item in items:
      try:
        frames = decode_item(item, fps=cfg.fps, size=cfg.size, max_seconds=cfg.max_seconds)
      except (ValueError, FileNotFoundError, OSError) as e:
        logging.warning("local_videos: leaving out %s: %s", item.path, e)
        continue
      yield item.video_id, {
          "video": frames, "fps": np.float32(cfg.fps), "video_id": item.video_id,
          "caption": item.caption or "", "label": -1 if item.label is None else int(item.label)}


def decode_item(item: sources.VideoItem, *, fps: float, size: int,
                max_seconds: float | None = None) -> np.ndarray:
  """uint8 [T, H', W', 3]: the item's segment at `fps`, short side `size` (not cropped)."""
  start = item.start or 0.0
  stop = item.end
  if max_seconds is not None:
    stop = start + max_seconds if stop is None else min(stop, start + max_seconds)
  limit = None if stop is None else max(1, int(np.floor((stop - start) * fps + 1e-6)))
  frames = list(itertools.islice(
      iter_frames(item.path, fps=fps, start_sec=start, size=size, crop=False), limit))
  if not frames:
    raise ValueError(f"{item.path}: no decodable frames")
  return np.stack(frames)


def build(config: LocalVideosConfig, data_dir: str) -> tfds.core.DatasetBuilder:
  """Prepares the dataset in `data_dir` as array_record (what `tfds.data_source` reads)."""
  builder = LocalVideos(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return builder


# ---- reading (prep input) -------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, str]:
  """"tfds:ucf101:train" -> ("ucf101", "train"); "tfds:local_videos/k600:train[:1000]" too
  (the split is everything after the first colon; no colon: "train")."""
  body = spec[len(TFDS_PREFIX):]
  name, sep, split = body.partition(":")
  if not sep:
    name, split = body, "train"
  if not name:
    raise ValueError(f"--input {spec!r}: expected tfds:<name>[/<config>][:<split>]")
  return name, split


@functools.lru_cache(maxsize=8)
def data_source(name: str, split: str, data_dir: str | None, raw: bool = False):
  """tfds.data_source (random access; array_record). `raw`: records as tf.train.Example protos,
  nothing decoded (cheap access to labels without decoding the frames)."""
  method = (tfds.decode.DeserializeMethod.DESERIALIZE_NO_DECODE if raw
            else tfds.decode.DeserializeMethod.DESERIALIZE_AND_DECODE)
  return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False,
                          deserialize_method=method)


def grain_dataset(spec: str, *, data_dir: str | None = None):
  """A TFDS split as a grain MapDataset of decoded examples (`tfds.data_source` is a random-
  access source): `grain_dataset("tfds:ucf101:train").shuffle(seed=0).map(...)`."""
  import grain
  name, split = parse_spec(spec)
  return grain.MapDataset.source(data_source(name, split, data_dir))


def list_tfds(spec: str, *, data_dir: str | None = None, video_key: str = "video",
              label_key: str = "label", caption_key: str = "caption", id_key: str = "video_id",
              limit: int | None = None) -> tuple[list[sources.VideoItem], list[str] | None]:
  """Items for every example of a TFDS split (their path is `<spec>[<index>]`), and the label
  names (from a ClassLabel feature or the builder's metadata)."""
  name, split = parse_spec(spec)
  source = data_source(name, split, data_dir, raw=True)
  n = len(source) if limit is None else min(limit, len(source))
  labels = None
  info = getattr(source, "dataset_info", None)
  if info is not None:
    feature = info.features.get(label_key) if hasattr(info.features, "get") else None
    if isinstance(feature, tfds.features.ClassLabel):
      labels = list(feature.names)
    elif info.metadata and "labels" in info.metadata:
      labels = list(info.metadata["labels"])
  items = []
  for i in range(n):
    ex = _scalar_fields(source[i], (label_key, caption_key, id_key))
    label = ex.get(label_key)
    label = None if label is None or int(label) < 0 else int(label)
    caption = ex.get(caption_key)
    caption = caption.decode() if isinstance(caption, bytes) else caption
    vid = ex.get(id_key)
    vid = vid.decode() if isinstance(vid, bytes) else f"{name}/{split}/{i:08d}"
    items.append(sources.VideoItem(path=f"{TFDS_PREFIX}{name}:{split}[{i}]", video_id=str(vid),
                                   label=label, caption=caption or None))
  return items, labels


def _scalar_fields(example, keys) -> dict[str, Any]:
  """First value of each of `keys` present in a tf.train.Example (int, float or bytes)."""
  out = {}
  for k in keys:
    if k not in example.features.feature:
      continue
    f = example.features.feature[k]
    values = getattr(f, f.WhichOneof("kind")).value if f.WhichOneof("kind") else []
    if len(values):
      out[k] = values[0]
  return out


def load_frames(path: str, *, data_dir: str | None, video_key: str = "video",
                default_fps: float | None = None) -> tuple[np.ndarray, float]:
  """`tfds:<name>:<split>[<i>]` -> (uint8 frames [T, H, W, 3], their fps)."""
  spec, _, index = path.rpartition("[")
  name, split = parse_spec(spec)
  ex = data_source(name, split, data_dir)[int(index.rstrip("]"))]
  frames = np.asarray(ex[video_key])
  fps = float(ex["fps"]) if "fps" in ex else default_fps
  if not fps:
    raise ValueError(f"{path}: the dataset has no 'fps' feature; set config.tfds.fps")
  return frames, fps


def resample(frames: np.ndarray, src_fps: float, fps: float, size: int, crop: bool,
             start: float = 0.0, stop: float | None = None) -> np.ndarray:
  """Frames at `src_fps` -> frames shown at start + k / fps (k = 0, 1, ... before `stop`), the
  short side resized to `size` (FFmpeg bicubic, as for files), centre-cropped with `crop`."""
  import av
  from vft.data.video_io import _resize
  t_end = len(frames) / src_fps if stop is None else min(stop, len(frames) / src_fps)
  out = []
  k = 0
  while start + k / fps < t_end - 1e-6:
    i = min(len(frames) - 1, int(np.floor((start + k / fps) * src_fps + 1e-6)))
    out.append(_resize(av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]),
                                                  format="rgb24"), size, crop))
    k += 1
  if not out:
    raise ValueError(f"no frames in [{start}, {t_end}) s at {fps} fps")
  return np.stack(out)
