"""`vft tokenize` / `vft detokenize`: video file <-> .npz of token ids (+ metadata) <-> mp4.

The .npz holds `ids` (int32 [T', N]) and the metadata needed to render them back: `fps` (the
sampled frames' playback rate), `target_fps`, `num_frames`, `frame_size` [H, W], `model` (the
path it was made with), `chunk_frames`, `overlap_frames`, `source` (the input video) and `seed`.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from absl import logging
from etils import epath
import numpy as np

from vft import files
from vft.api import VideoTokenizer
from vft.data import video_io
from vft.eval import report


def to_uint8(video: np.ndarray) -> np.ndarray:
  """[-1, 1] float -> uint8 (clipped)."""
  return np.round((np.clip(np.asarray(video, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(
      np.uint8)


def tokenize_file(model: str, input_path: str, output: str, *, fps: float | None = None,
                  size: int | None = None, num_frames: int | None = None, seed: int = 0,
                  tokenizer: VideoTokenizer | None = None) -> dict:
  """Reads `input_path` like the release, tokenizes it and writes `output` (.npz)."""
  tok = tokenizer or VideoTokenizer.load(model)
  video = tok.read_video(input_path, fps=fps, num_frames=num_frames, size=size)
  ids = tok.tokenize(video, rng=seed, progress=True)
  info = video_io.probe_video(input_path)
  duration = info.duration or (info.num_frames / info.fps if info.fps else 0.0)
  play_fps = len(video) / duration if duration > 0 else tok.fps
  meta = dict(fps=float(play_fps), target_fps=float(fps or tok.fps), num_frames=len(video),
              frame_size=list(video.shape[1:3]), model=os.fspath(files.absolute(model)),
              chunk_frames=tok.chunking.chunk_frames,
              overlap_frames=tok.chunking.overlap_frames, source=os.path.abspath(input_path),
              seed=int(seed))
  with files.atomic_path(output) as tmp, open(tmp, "wb") as f:
    np.savez(f, ids=ids.astype(np.int32), **{k: np.asarray(v) for k, v in meta.items()})
  return dict(meta, ids_shape=list(ids.shape), output=os.fspath(files.absolute(output)))


def read_tokens(path: str) -> tuple[np.ndarray, dict]:
  """-> (ids [T', N], metadata) of a `vft tokenize` file."""
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f"--input {path}: not found (expected a .npz from `vft tokenize`)")
  with epath.Path(path).open("rb") as f, np.load(f) as data:
    if "ids" not in data:
      raise ValueError(f"{path}: no 'ids' array; expected a .npz written by `vft tokenize`")
    ids = np.asarray(data["ids"])
    meta = {k: data[k].tolist() for k in data.files if k != "ids"}
  return ids, meta


def detokenize_file(model: str | None, input_path: str, output: str, *,
                    keep_k: Sequence[int | None] = (None,), steps: int = 30,
                    guidance_scale: float = 1.0, apg: bool = False, eta: float = 0.0,
                    momentum: float = 0.0, norm_threshold: float = 0.6, seed: int = 0,
                    grid: str | None = None, tokenizer: VideoTokenizer | None = None) -> dict:
  """Renders the ids of `input_path` at every budget in `keep_k` (same noise for all).

  One budget: the video goes to `output`. Several: `output` gets the largest budget, every
  budget also goes to `<output stem>_k<k>.mp4`, and `grid` (default `<stem>_grid.mp4`) shows
  the original (when its source video is readable) and the budgets side by side.
  """
  ids, meta = read_tokens(input_path)
  model = model or meta.get("model")
  if not model:
    raise ValueError("--model is required (the token file does not record one)")
  tok = tokenizer or VideoTokenizer.load(model)
  frame_size = tuple(meta["frame_size"]) if "frame_size" in meta else None
  fps = float(meta.get("fps", tok.fps))
  keep_k = list(keep_k) or [None]
  videos = []
  for k in keep_k:
    v = tok.detokenize(ids, keep_k=k, steps=steps, guidance_scale=guidance_scale, apg=apg,
                       eta=eta, momentum=momentum, norm_threshold=norm_threshold, rng=seed,
                       frame_size=frame_size, progress=True)
    videos.append(to_uint8(v))
  stem, _ = os.path.splitext(output)
  paths = {}
  names = [str(k if k is not None else tok.num_registers) for k in keep_k]
  best = int(np.argmax([k if k is not None else tok.num_registers for k in keep_k]))
  report.write_video(output, videos[best], fps=fps)
  paths["video"] = os.fspath(files.absolute(output))
  if len(videos) > 1:
    for name, v in zip(names, videos):
      p = f"{stem}_k{name}.mp4"
      report.write_video(p, v, fps=fps)
      paths[f"k{name}"] = os.fspath(files.absolute(p))
    labels = [f"{n} tok" for n in names]
    original = _original(meta, tok, videos[0].shape)
    if original is not None:
      g = report.budget_grid(original[None], [v[None] for v in videos], labels=labels)
    else:
      g = report.budget_grid(videos[0][None], [v[None] for v in videos[1:]], labels=labels)
    grid = grid or f"{stem}_grid.mp4"
    report.write_video(grid, g, fps=fps)
    paths["grid"] = os.fspath(files.absolute(grid))
  return {"ids_shape": list(ids.shape), "keep_k": names, "steps": steps,
          "guidance_scale": guidance_scale, "apg": apg, "paths": paths}


def _original(meta: dict, tok: VideoTokenizer, shape) -> np.ndarray | None:
  """The tokenized clip re-read from its source video, or None when unavailable."""
  src = meta.get("source")
  if not src or not os.path.isfile(src):
    return None
  try:
    v = tok.read_video(src, num_frames=int(meta["num_frames"]), size=int(shape[1]))
  except (ValueError, KeyError, OSError) as e:  # e.g. video_io.DecodeError: the grid goes without
    logging.warning("detokenize: the grid leaves out the original %s: %s", src, e)
    return None
  v = to_uint8(v)
  return v if v.shape == tuple(shape) else None


def dumps(result: dict) -> str:
  return json.dumps(result, indent=1)
