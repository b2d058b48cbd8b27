"""Where evaluation clips come from: folders of videos, our ArrayRecord shards, `.npy` arrays.

FVD tool (`fvd_clips`): every video file of a folder (sorted by path, recursive) gives one clip,
its first `frames` decoded frames at the native frame rate and native resolution (the TF
reference / StyleGAN-V "first frames" convention); videos shorter than that are skipped and
counted. `.npy` files holding uint8 [T, H, W, 3] are read the same way.

Eval job (`eval_clips`): a folder holding `manifest.json` is read as vft shards (the `video`
field of a split); any other folder as videos, `clips_per_video` consecutive clips of
`num_frames` frames sampled at `fps`, short side resized to `size` and centre-cropped
(`vft.data.video_io.iter_clips`); videos with no such clip are skipped and counted.

In both, a file that stops decoding before the frames a clip needs (`video_io.DecodeError`:
truncated or corrupt) is skipped whole, counted with its reason in `ClipCount.undecodable` and
logged; its frames are never repeated to fill a clip.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Iterator

from absl import logging
from etils import epath
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpg", ".mpeg")
ARRAY_EXTENSIONS = (".npy",)


def list_videos(folder: str | os.PathLike) -> list[Path]:
  """Video (and .npy) files under `folder`, recursively, sorted."""
  folder = Path(folder)
  if not folder.is_dir():
    raise NotADirectoryError(f"{folder}: not a folder of videos")
  exts = VIDEO_EXTENSIONS + ARRAY_EXTENSIONS
  files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)
  if not files:
    raise FileNotFoundError(f"{folder}: no video files ({', '.join(exts)})")
  return files


def _read_npy(path: Path) -> np.ndarray:
  x = np.load(path, allow_pickle=False)
  if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"{path}: expected uint8 [T, H, W, 3], got {x.dtype} {x.shape}")
  return x


def first_frames(path: str | os.PathLike, frames: int) -> np.ndarray | None:
  """uint8 [frames, H, W, 3]: the first `frames` frames at native rate and size, or None when
  the video is shorter."""
  path = Path(path)
  if path.suffix.lower() in ARRAY_EXTENSIONS:
    x = _read_npy(path)
    return x[:frames] if len(x) >= frames else None
  from vft.data import video_io
  got = list(itertools.islice(video_io.iter_frames(path, size=None), frames))
  if len(got) < frames:
    return None
  return np.stack(got)


@dataclasses.dataclass
class ClipCount:
  """Clips used; videos skipped as too short (paths) or undecodable ({"path", "reason"})."""
  used: int = 0
  skipped: list[str] = dataclasses.field(default_factory=list)
  undecodable: list[dict[str, str]] = dataclasses.field(default_factory=list)

  def add_undecodable(self, path: str | os.PathLike, error: Exception) -> None:
    reason = str(error).removeprefix(f"{path}: ")
    self.undecodable.append({"path": str(path), "reason": reason})
    logging.warning("skipping %s: %s", path, reason)


def fvd_clips(folder: str | os.PathLike, frames: int, count: ClipCount | None = None,
              max_clips: int | None = None) -> Iterator[np.ndarray]:
  """Streams one uint8 [frames, H, W, 3] clip per video file (see module doc)."""
  count = count if count is not None else ClipCount()
  for path in list_videos(folder):
    if max_clips is not None and count.used >= max_clips:
      return
    from vft.data import video_io
    try:
      clip = first_frames(path, frames)
    except video_io.DecodeError as e:
      count.add_undecodable(path, e)
      continue
    if clip is None:
      count.skipped.append(str(path))
      continue
    count.used += 1
    yield clip


def is_shards(path: str | os.PathLike) -> bool:
  return (epath.Path(path) / "manifest.json").is_file()


def eval_clips(source: str | os.PathLike, *, num_frames: int, size: int, fps: float | None,
               split: str = "eval", clips_per_video: int = 1, max_clips: int | None = None,
               count: ClipCount | None = None) -> Iterator[np.ndarray]:
  """Streams uint8 [num_frames, size, size, 3] clips for reconstruction (see module doc);
  `count` collects the videos skipped."""
  source = os.fspath(source)
  count = count if count is not None else ClipCount()
  n = 0
  if is_shards(source):
    from vft.data import pipeline
    for rec in pipeline.load_split(source, split, fields=("video",)):
      if max_clips is not None and n >= max_clips:
        return
      v = np.asarray(rec["video"])
      if v.dtype != np.uint8 or v.ndim != 4 or v.shape[0] < num_frames:
        raise ValueError(f"{source} split {split!r}: video field must be uint8 [T>={num_frames}, "
                         f"H, W, 3], got {v.dtype} {v.shape}")
      if v.shape[1:3] != (size, size):
        raise ValueError(f"{source} split {split!r}: clips are {v.shape[1]}x{v.shape[2]}, the "
                         f"model expects {size}x{size} (pass --size or re-prep)")
      n += 1
      yield v[:num_frames]
    return
  from vft.data import video_io
  for path in list_videos(source):
    if path.suffix.lower() in ARRAY_EXTENSIONS:
      raise ValueError(f"{path}: .npy clips are for `vft fvd`; the eval job reads videos/shards")
    if max_clips is not None and n >= max_clips:
      return
    try:  # all of a video's clips first: an undecodable file contributes none
      clips = list(video_io.iter_clips(path, clip_len=num_frames, size=size, fps=fps,
                                       max_clips=clips_per_video))
    except video_io.DecodeError as e:
      count.add_undecodable(path, e)
      continue
    if not clips:
      count.skipped.append(str(path))
    for clip in clips:
      if max_clips is not None and n >= max_clips:
        return
      n += 1
      count.used += 1
      yield clip


def batched(it: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
  """Groups equal-shaped clips into uint8 [<=batch_size, T, H, W, 3] batches."""
  while True:
    chunk = list(itertools.islice(it, batch_size))
    if not chunk:
      return
    yield np.stack(chunk)
