"""Inputs of the prep job: a folder, a glob or a manifest (CSV / JSONL) of video files.

    items, labels = list_inputs("/data/k600/train.csv")

A manifest row has `path` (absolute, or relative to the manifest's folder) and optionally
`label` (a class name or an integer id), `caption`, `start` and `end` (seconds within the file;
`start_sec`/`end_sec` and `time_start`/`time_end` are accepted too). A folder is searched
recursively for video files (`VIDEO_EXTENSIONS`); with `label_from_dir=True` each file's parent
folder name is its class (the Kinetics / UCF-101 layout). Items come in manifest order, or sorted
by path for folders and globs, so every process sees the same list.

Labels: when every label is an integer they are used as given (`labels` is None); otherwise the
vocabulary is the sorted set of names (or `label_vocab`, a text file with one name a line, to
pin the ids across subsets) and each item's label is its index in it. Nothing is hard-coded.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
from pathlib import Path
from typing import Any, Sequence

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv",
                    ".gif")
_START_KEYS = ("start", "start_sec", "time_start")
_END_KEYS = ("end", "end_sec", "time_end")


@dataclasses.dataclass(frozen=True)
class VideoItem:
  """One input video (or a [start, end) segment of one)."""
  path: str
  video_id: str  # unique within the input list; stored as the records' video_id prefix
  label: int | None = None
  caption: str | None = None
  start: float | None = None  # seconds
  end: float | None = None


def _float_or_none(row: dict[str, Any], keys: Sequence[str], where: str) -> float | None:
  for k in keys:
    v = row.get(k)
    if v is None or (isinstance(v, str) and not v.strip()):
      continue
    try:
      return float(v)
    except (TypeError, ValueError):
      raise ValueError(f"{where}: field {k!r} should be a number of seconds, got {v!r}") from None
  return None


def _read_rows(path: Path) -> list[dict[str, Any]]:
  if path.suffix.lower() == ".csv":
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
    return [{k.strip(): v for k, v in row.items() if k is not None} for row in rows]
  rows = []
  with open(path) as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}")
      rows.append(row)
  return rows


def _raw_from_manifest(path: Path) -> list[dict[str, Any]]:
  rows = _read_rows(path)
  if not rows:
    raise ValueError(f"{path}: the manifest lists no videos")
  out = []
  for n, row in enumerate(rows):
    where = f"{path} row {n + 1}"
    video = row.get("path")
    if not isinstance(video, str) or not video.strip():
      raise ValueError(f"{where}: missing the 'path' of the video (columns: {sorted(row)})")
    video_path = Path(video.strip())
    if not video_path.is_absolute():
      video_path = path.parent / video_path
    label = row.get("label")
    if isinstance(label, str) and not label.strip():
      label = None
    caption = row.get("caption")
    if caption is not None and not isinstance(caption, str):
      raise ValueError(f"{where}: 'caption' should be a string, got {caption!r}")
    start, end = _float_or_none(row, _START_KEYS, where), _float_or_none(row, _END_KEYS, where)
    if start is not None and end is not None and end <= start:
      raise ValueError(f"{where}: end {end} <= start {start}")
    rel = video.strip()
    out.append(dict(path=str(video_path), rel=rel, label=label, caption=caption or None,
                    start=start, end=end))
  absolute = [r for r in out if os.path.isabs(r["rel"])]
  if absolute:  # ids of absolute paths: relative to their common folder
    root = os.path.commonpath([os.path.dirname(r["rel"]) for r in absolute])
    for r in absolute:
      r["rel"] = os.path.relpath(r["rel"], root)
  return out


def _raw_from_files(files: Sequence[Path], root: Path | None, label_from_dir: bool):
  out = []
  for p in files:
    rel = str(p.relative_to(root)) if root is not None else str(p)
    out.append(dict(path=str(p), rel=rel, label=p.parent.name if label_from_dir else None,
                    caption=None, start=None, end=None))
  return out


def _is_video(p: Path, extensions: Sequence[str]) -> bool:
  return p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")


def _video_id(rel: str, start: float | None, end: float | None) -> str:
  stem = os.path.splitext(rel)[0].lstrip("/")
  if start is None and end is None:
    return stem
  return f"{stem}@{start or 0:g}-{'' if end is None else f'{end:g}'}"


def _labels(raw: list[dict[str, Any]], label_vocab: str | None, where: str):
  values = [r["label"] for r in raw if r["label"] is not None]
  if not values and not label_vocab:
    return [None] * len(raw), None

  def as_int(v):
    if isinstance(v, bool):
      return None
    if isinstance(v, int):
      return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
      return int(v)
    return None

  if not label_vocab and all(as_int(v) is not None for v in values):
    return [None if r["label"] is None else as_int(r["label"]) for r in raw], None
  if label_vocab:
    vocab = [line.strip() for line in Path(label_vocab).read_text().splitlines() if line.strip()]
    if len(set(vocab)) != len(vocab):
      raise ValueError(f"{label_vocab}: the label vocabulary has duplicate names")
  else:
    vocab = sorted({str(v).strip() for v in values})
  index = {name: i for i, name in enumerate(vocab)}
  ids = []
  for r in raw:
    if r["label"] is None:
      ids.append(None)
      continue
    name = str(r["label"]).strip()
    if name not in index:
      raise ValueError(f"{where}: label {name!r} of {r['rel']} is not in the vocabulary "
                       f"{label_vocab} ({len(vocab)} names)")
    ids.append(index[name])
  return ids, vocab


def list_inputs(spec: str, *, label_from_dir: bool = False, label_vocab: str | None = None,
                extensions: Sequence[str] = VIDEO_EXTENSIONS,
                limit: int | None = None) -> tuple[list[VideoItem], list[str] | None]:
  """A folder, glob, .csv or .jsonl -> (items, label names or None). See the module doc.

  Raises FileNotFoundError when nothing matches and ValueError for a malformed manifest.
  """
  extensions = tuple(e.lower() for e in extensions)
  path = Path(spec)
  if path.suffix.lower() in (".csv", ".jsonl", ".json") and path.is_file():
    raw = _raw_from_manifest(path)
  elif path.is_dir():
    files = sorted(p for p in path.rglob("*") if _is_video(p, extensions))
    if not files:
      raise FileNotFoundError(f"no video files ({', '.join(extensions)}) under {path}")
    raw = _raw_from_files(files, path, label_from_dir)
  else:
    files = sorted(Path(p) for p in glob.glob(spec, recursive=True)
                   if _is_video(Path(p), extensions))
    if not files:
      raise FileNotFoundError(f"--input {spec!r}: not a folder or a .csv/.jsonl manifest, and no "
                              f"video files match it as a glob")
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    raw = _raw_from_files(files, root, label_from_dir)
  if limit is not None:
    raw = raw[:limit]
  labels, vocab = _labels(raw, label_vocab, spec)
  items, seen = [], {}
  for r, label in zip(raw, labels):
    vid = _video_id(r["rel"], r["start"], r["end"])
    if vid in seen:  # the same file/segment listed twice: keep both, with distinct ids
      seen[vid] += 1
      vid = f"{vid}#{seen[vid]}"
    else:
      seen[vid] = 0
    items.append(VideoItem(path=r["path"], video_id=vid, label=label, caption=r["caption"],
                           start=r["start"], end=r["end"]))
  return items, vocab
