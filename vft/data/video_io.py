"""Video files <-> uint8 frame arrays [T, H, W, 3] (RGB), with PyAV (FFmpeg) and imageio (GIF).

Sampling: with `fps`, frames are taken at times start_sec + k / fps, each time showing the
source frame on screen then (the last frame whose timestamp is <= that time); without it every
decoded frame from start_sec on is returned. Resizing: the short side is scaled to `size` with
bicubic interpolation (FFmpeg swscale, which low-pass filters when shrinking), then the centre
size x size square is cropped (crop=True) or the aspect ratio kept (crop=False). Rotation
metadata (the DISPLAYMATRIX of phone videos) is applied, so frames come out upright.
`read_video_uniform` samples like the official `read_mp4` instead: a given number of frames
spread evenly over the whole video (np.linspace indices).

Errors, never padding: a file that stops decoding before the end its header gives (a truncated
or corrupt file; FFmpeg's frame-threaded decoder drops the error, so the last decoded frame's
end time is checked against the stream duration) raises `DecodeError` naming the file and the
frame where decoding stopped, as soon as a read needs a frame past that point. A video that
decodes cleanly but has fewer frames than a read asks for raises ValueError naming both counts.
No reader repeats frames to fill a clip (time sampling at an `fps` above the source rate shows
each source frame for as long as it is on screen; that is resampling, not filling).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Iterator

import av
import numpy as np

_EPS = 1e-6


class DecodeError(ValueError):
  """A video file that cannot be decoded to its end: it does not open as a video, or it is
  truncated or corrupt (decoding stops early)."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  num_frames: int
  fps: float
  duration: float  # seconds
  width: int
  height: int


def _open(path: str | os.PathLike) -> av.container.InputContainer:
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"video file {path} not found")
  try:
    container = av.open(str(path))
  except av.error.FFmpegError as e:
    raise DecodeError(f"{path}: cannot open as a video ({e})") from None
  if not container.streams.video:
    container.close()
    raise DecodeError(f"{path}: has no video stream")
  return container


def probe_video(path: str | os.PathLike) -> VideoInfo:
  """Frame count, frame rate, duration and size from the container header (no decoding)."""
  with _open(path) as container:
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    if stream.duration is not None and stream.time_base is not None:
      duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
      duration = container.duration / av.time_base
    else:
      duration = 0.0
    num_frames = stream.frames or int(round(duration * fps))
    if not fps and duration:
      fps = num_frames / duration
    return VideoInfo(num_frames, fps, duration, stream.width, stream.height)


def _rotation_quarters(frame: av.VideoFrame) -> int:
  """Counter-clockwise quarter turns that display the frame upright (its DISPLAYMATRIX rotation;
  phone videos store 90/-90/180 there)."""
  try:
    angle = frame.rotation or 0
  except (AttributeError, ValueError):
    return 0
  return int(round(angle / 90.0)) % 4


def _resize(frame: av.VideoFrame, size: int | None, crop: bool) -> np.ndarray:
  """RGB uint8 [H, W, 3] upright (rotation metadata applied), the short side scaled to `size`
  and, with `crop`, centre-cropped to size x size."""
  quarters = _rotation_quarters(frame)
  if size is None:
    return np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), quarters))
  w, h = frame.width, frame.height
  scale = size / min(w, h)
  nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
  rgb = frame.reformat(width=nw, height=nh, format="rgb24", interpolation="BICUBIC").to_ndarray()
  if quarters:
    rgb = np.rot90(rgb, quarters)
    nh, nw = rgb.shape[:2]
  if not crop:
    return np.ascontiguousarray(rgb)
  top, left = (nh - size) // 2, (nw - size) // 2
  return np.ascontiguousarray(rgb[top:top + size, left:left + size])


def _end_time(container, stream) -> float | None:
  """The end of the video stream in seconds (start + duration from the header), or None."""
  tb = stream.time_base
  start = float((stream.start_time or 0) * tb) if tb is not None else 0.0
  if stream.duration is not None and tb is not None:
    return start + float(stream.duration * tb)
  if container.duration is not None:
    return start + container.duration / av.time_base
  return None


def _decoded(container, path: Path, start_sec: float) -> Iterator[tuple[float, av.VideoFrame]]:
  """(timestamp in seconds, frame) for every decoded frame, from a seek before start_sec.

  Raises DecodeError when decoding fails or ends more than two frame intervals before the
  stream's end (see the module doc)."""
  stream = container.streams.video[0]
  stream.thread_type = "AUTO"
  rate = float(stream.average_rate or stream.guessed_rate or 30.0)
  if start_sec > 0 and stream.time_base is not None:
    offset = int(start_sec / stream.time_base) + (stream.start_time or 0)
    container.seek(offset, stream=stream, backward=True, any_frame=False)
  n, t = 0, None

  def stopped() -> str:  # the frame number counts from the video's start, also after a seek
    if t is None:
      return f"{path}: decoding stopped at frame 0 (no frame decoded)"
    t0 = float((stream.start_time or 0) * stream.time_base) if stream.time_base else 0.0
    k = n if start_sec <= 0 else int(round((t - t0) * rate)) + 1
    return f"{path}: decoding stopped at frame {k} (the last decoded, at {t:.3f} s)"

  try:
    for frame in container.decode(stream):
      t = frame.time if frame.time is not None else n / rate
      n += 1
      yield t, frame
  except av.error.FFmpegError as e:
    raise DecodeError(f"{stopped()} ({e})") from None
  end = _end_time(container, stream)
  if end is not None and (t is None or t + 2.0 / rate < end):
    total = f", {stream.frames} frames" if stream.frames else ""
    raise DecodeError(f"{stopped()}, before the end of the video ({end:.3f} s{total} by its "
                      "header): truncated or corrupt file")


def iter_frames(path: str | os.PathLike, *, fps: float | None = None, start_sec: float = 0.0,
                size: int | None = None, crop: bool = True) -> Iterator[np.ndarray]:
  """Frames uint8 [H, W, 3] one by one, sampled and resized as described in the module doc."""
  if fps is not None and fps <= 0:
    raise ValueError(f"fps must be > 0, got {fps}")
  path = Path(path)
  with _open(path) as container:
    stream = container.streams.video[0]
    frame_dur = 1.0 / float(stream.average_rate or stream.guessed_rate or 30.0)
    if fps is None:
      for t, frame in _decoded(container, path, start_sec):
        if t >= start_sec - _EPS:
          yield _resize(frame, size, crop)
      return
    k, prev, prev_rgb = 0, None, None
    last_t = None
    for t, frame in _decoded(container, path, start_sec):
      while prev is not None and start_sec + k / fps < t - _EPS:
        if prev_rgb is None:
          prev_rgb = _resize(prev, size, crop)
        yield prev_rgb
        k += 1
      prev, prev_rgb, last_t = frame, None, t
    while prev is not None and start_sec + k / fps < last_t + frame_dur - _EPS:
      if prev_rgb is None:
        prev_rgb = _resize(prev, size, crop)
      yield prev_rgb
      k += 1


def read_video(path: str | os.PathLike, *, num_frames: int | None = None,
               fps: float | None = None, start_sec: float = 0.0, size: int | None = None,
               crop: bool = True) -> np.ndarray:
  """Decodes a video file -> uint8 [T, H, W, 3] (T = num_frames, or all frames when None).

  Raises FileNotFoundError for a missing file and ValueError for an undecodable one or one too
  short for `num_frames`.
  """
  frames = list(itertools.islice(
      iter_frames(path, fps=fps, start_sec=start_sec, size=size, crop=crop), num_frames))
  if not frames or (num_frames is not None and len(frames) < num_frames):
    raise ValueError(f"{path}: only {len(frames)} frames from {start_sec} s at fps={fps}; "
                     f"asked for {num_frames if num_frames is not None else 'at least 1'}")
  return np.stack(frames)


def iter_clips(path: str | os.PathLike, *, clip_len: int = 17, size: int = 64,
               fps: float | None = None, stride: int | None = None,
               max_clips: int | None = None) -> Iterator[np.ndarray]:
  """Clips uint8 [clip_len, size, size, 3] of a video, starting every `stride` sampled frames
  (default clip_len: consecutive, non-overlapping). Yields nothing for a too-short video."""
  stride = clip_len if stride is None else stride
  if clip_len < 1 or stride < 1:
    raise ValueError(f"iter_clips: clip_len and stride must be >= 1, got {clip_len}, {stride}")
  buf: list[np.ndarray] = []
  next_start, count = 0, 0
  if max_clips is not None and max_clips <= 0:
    return
  for i, frame in enumerate(iter_frames(path, fps=fps, size=size, crop=True)):
    buf.append(frame)
    del buf[:-clip_len]
    if i - clip_len + 1 == next_start:
      yield np.stack(buf)
      count += 1
      next_start += stride
      if max_clips is not None and count >= max_clips:
        return


def uniform_indices(total: int, num: int) -> np.ndarray:
  """`num` frame indices spread evenly over [0, total - 1]: np.linspace truncated to ints (the
  official `read_mp4` sampling)."""
  if total < 1 or num < 1:
    raise ValueError(f"uniform_indices: need total >= 1 and num >= 1, got {total}, {num}")
  return np.linspace(0, total - 1, num, dtype=np.int32)


def count_frames(path: str | os.PathLike) -> int:
  """Number of video frames, counted from the demuxed packets (no decoding)."""
  with _open(path) as container:
    stream = container.streams.video[0]
    return sum(1 for p in container.demux(stream) if p.size)


def read_video_uniform(path: str | os.PathLike, num_frames: int, *, size: int | None = None,
                       crop: bool = True) -> np.ndarray:
  """`num_frames` frames sampled uniformly over the whole video (`uniform_indices`), resized
  as `iter_frames` does -> uint8 [num_frames, H, W, 3]. Only the picked frames are resized and
  kept, so long videos cost no more memory than the result."""
  path = Path(path)
  total = probe_video(path).num_frames or count_frames(path)
  for _ in range(2):  # a second pass when the header's frame count was wrong
    if total < num_frames:
      raise ValueError(f"{path}: {total} frames, fewer than the {num_frames} needed (frames "
                       "are never repeated to fill a clip; ask for fewer)")
    idx = uniform_indices(total, num_frames)
    pick = set(idx.tolist())
    wanted: dict[int, np.ndarray] = {}
    n = 0
    with _open(path) as container:
      for n, (_, frame) in enumerate(_decoded(container, path, 0.0), start=1):
        if n - 1 in pick:
          wanted[n - 1] = _resize(frame, size, crop)
    if n == total:
      break
    total = n  # decoded cleanly to the end: the header's count was off
  return np.stack([wanted[i] for i in idx])
