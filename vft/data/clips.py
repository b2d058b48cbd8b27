"""Clip sampling and preprocessing for the prep job (the paper's recipe as config).

    spec = ClipSpec(num_frames=17, fps=4.0, size=128, clips_per_video=2, sampling="even")
    clips = sample_clips(item, spec, rng)   # [(start_sec, uint8 [17, 128, 128, 3]), ...]

A video (or its [start, end) segment) is decoded once at `fps` (frames shown at start + k/fps,
so variable frame rates are handled; rotation metadata applied), its short side resized to
`size`, and `clips_per_video` windows of `num_frames` sampled frames are cut from it:
  sampling="even"    windows spread evenly from the first to the last possible start (the same
                     clips every run; one window from the start when clips_per_video = 1);
  sampling="random"  distinct starts drawn from `rng` (seeded per video by the prep job).
crop="center" takes the centre square; crop="random" a square at an offset drawn from `rng`
(one offset per clip, the same for all its frames).
A segment shorter than one clip raises `ShortVideoError` (short="skip"), or is looped from its
first frame up to `num_frames` (short="loop"). Pixels stay uint8; `to_model_range` maps them to
float32 in [-1, 1].
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from vft.data.sources import VideoItem
from vft.data.video_io import iter_frames

SAMPLINGS = ("even", "random")
CROPS = ("center", "random")
SHORT_POLICIES = ("skip", "loop")


class ShortVideoError(ValueError):
  """The video (segment) is shorter than one clip and the config says skip."""


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  num_frames: int = 17
  fps: float = 4.0
  size: int = 128
  clips_per_video: int = 1
  sampling: str = "even"
  crop: str = "center"
  short: str = "skip"
  max_seconds: float | None = None  # decode at most this much of each video (None: all)

  def __post_init__(self):
    if self.num_frames < 1 or self.size < 1 or self.clips_per_video < 1 or self.fps <= 0:
      raise ValueError(f"ClipSpec: num_frames, size, clips_per_video must be >= 1 and fps > 0, "
                       f"got {self}")
    for name, allowed in (("sampling", SAMPLINGS), ("crop", CROPS), ("short", SHORT_POLICIES)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"ClipSpec.{name}: {getattr(self, name)!r}; expected one of "
                         f"{list(allowed)}")

  @classmethod
  def from_config(cls, cfg) -> "ClipSpec":
    return cls(num_frames=int(cfg.num_frames), fps=float(cfg.fps), size=int(cfg.size),
               clips_per_video=int(cfg.clips_per_video), sampling=str(cfg.sampling),
               crop=str(cfg.crop), short=str(cfg.short),
               max_seconds=None if cfg.get("max_seconds") is None else float(cfg.max_seconds))


def decode_segment(item: VideoItem, spec: ClipSpec) -> np.ndarray:
  """uint8 [N, H', W', 3]: the item's segment sampled at spec.fps, short side = spec.size (the
  long side uncropped when crop="random", else the centre square)."""
  start = item.start or 0.0
  stop = item.end
  if spec.max_seconds is not None:
    stop = start + spec.max_seconds if stop is None else min(stop, start + spec.max_seconds)
  limit = None if stop is None else max(1, int(np.floor((stop - start) * spec.fps + 1e-6)))
  frames = list(itertools.islice(
      iter_frames(item.path, fps=spec.fps, start_sec=start, size=spec.size,
                  crop=spec.crop == "center"), limit))
  if not frames:
    raise ValueError(f"{item.path}: no decodable frames from {start} s")
  return np.stack(frames)


def clip_starts(num_available: int, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
  """Start indices (sorted, distinct) of the clips cut from `num_available` sampled frames."""
  last = num_available - spec.num_frames
  if last < 0:
    return np.zeros((1,), np.int64)
  n = min(spec.clips_per_video, last + 1)
  if spec.sampling == "even":
    return np.unique(np.round(np.linspace(0, last, n)).astype(np.int64))
  return np.sort(rng.choice(last + 1, size=n, replace=False)).astype(np.int64)


def _crop(frames: np.ndarray, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
  h, w = frames.shape[1:3]
  if (h, w) == (spec.size, spec.size):
    return frames
  top = int(rng.integers(0, h - spec.size + 1)) if spec.crop == "random" else (h - spec.size) // 2
  left = int(rng.integers(0, w - spec.size + 1)) if spec.crop == "random" else (w - spec.size) // 2
  return np.ascontiguousarray(frames[:, top:top + spec.size, left:left + spec.size])


def sample_clips(item: VideoItem, spec: ClipSpec, rng: np.random.Generator,
                 frames: np.ndarray | None = None) -> list[tuple[float, np.ndarray]]:
  """[(start second, uint8 [num_frames, size, size, 3])] for one video (module doc).
  `frames`: the segment already decoded as `decode_segment` would (e.g. from TFDS).

  Raises ShortVideoError (short="skip"), FileNotFoundError or ValueError (undecodable file).
  """
  frames = decode_segment(item, spec) if frames is None else frames
  if len(frames) < spec.num_frames:
    if spec.short == "skip":
      raise ShortVideoError(
          f"too short: {len(frames)} frames at {spec.fps:g} fps, a clip needs {spec.num_frames}")
    reps = -(-spec.num_frames // len(frames))
    frames = np.concatenate([frames] * reps)[:spec.num_frames]
  out = []
  for s in clip_starts(len(frames), spec, rng):
    clip = _crop(frames[s:s + spec.num_frames], spec, rng)
    out.append(((item.start or 0.0) + float(s) / spec.fps, clip))
  return out


def to_model_range(pixels: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> float32 in [-1, 1]."""
  return pixels.astype(np.float32) / 127.5 - 1.0
