"""Writes examples (see vft.data.records) into ArrayRecord shards plus a `manifest.json`.

Layout of a data dir:
  manifest.json
  {split}-00000.array_record, {split}-00001.array_record, ...

Manifest format (version 1):
  {"version": 1,
   "splits": {split: {"shards": [{"file": "train-00000.array_record", "num_records": 256}, ...],
                      "num_records": total,
                      "example_spec": {"latents": {"shape": [5, 8, 8, 192], "dtype": "bfloat16"},
                                       "video_id": {"dtype": "str"}, "label": {"dtype": "int64"}},
                      "meta": {...},          # free-form, given by the producer
                      "complete": true}}}     # false while the split is being written

Crash safety: each shard is written to a hidden local temp file and published (renamed, or
uploaded as one object on gs://) when it is full, then the manifest is rewritten atomically
(vft.files). `out_dir` is any etils.epath path. The manifest therefore only ever lists
finished shards; an interrupted job leaves `complete: false` and the shards it had finished.
One writer per data dir at a time (the manifest update is read-modify-write).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

from array_record.python import array_record_module
from etils import epath

from vft import files
from vft.data.records import ARRAY_FIELDS, INT_FIELDS, encode_record, validate_example

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
WRITER_OPTIONS = "group_size:1,uncompressed"
PREP_HINT = "run the prep step first (`vft prep`, or vft.data.prep.prep_demo_dataset)"
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def shard_name(split: str, index: int) -> str:
  return f"{split}-{index:05d}.array_record"


def example_spec(example: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """{field: {"shape": [...], "dtype": name}} for arrays, {"dtype": "int64"|"str"} for scalars."""
  spec = {}
  for name in sorted(example):
    value = example[name]
    if name in ARRAY_FIELDS:
      spec[name] = {"shape": list(value.shape), "dtype": value.dtype.name}
    elif name in INT_FIELDS:
      spec[name] = {"dtype": "int64"}
    else:
      spec[name] = {"dtype": "str"}
  return spec


def _load_manifest_or_empty(out_dir: epath.Path) -> dict[str, Any]:
  if (out_dir / MANIFEST_NAME).exists():
    return read_manifest(out_dir, check_files=False)
  return {"version": MANIFEST_VERSION, "splits": {}}


class ShardWriter:
  """Writes one split. Use as a context manager:

    with ShardWriter(out_dir, "train", meta={...}) as w:
      for example in examples:
        w.write(example)

  Starting a writer replaces the split: its manifest entry is reset and its old shard files are
  deleted. On a clean exit the last shard is finished and the split is marked complete; if the
  block raises, the unfinished shard is discarded and the split stays `complete: false`.
  All examples of a split must have the same fields and array shapes/dtypes.
  """

  def __init__(self, out_dir: str | os.PathLike, split: str, records_per_shard: int = 256,
               meta: dict[str, Any] | None = None):
    if not _SPLIT_RE.match(split):
      raise ValueError(f"ShardWriter: split name {split!r} must match {_SPLIT_RE.pattern}")
    if records_per_shard < 1:
      raise ValueError(f"ShardWriter: records_per_shard must be >= 1, got {records_per_shard}")
    self.out_dir = files.absolute(out_dir)
    self.split = split
    self.records_per_shard = records_per_shard
    self.meta = dict(meta or {})
    self._shards: list[dict[str, Any]] = []
    self._spec: dict[str, Any] | None = None
    self._writer = None
    self._tmp_path: str | None = None
    self._in_shard = 0
    self._closed = False
    self.out_dir.mkdir(parents=True, exist_ok=True)
    self._update_manifest(complete=False)
    for p in self.out_dir.glob(f"{split}-*.array_record"):
      if re.fullmatch(rf"{re.escape(split)}-\d{{5}}\.array_record", p.name):
        p.unlink()
    if files.is_local(self.out_dir):
      for p in self.out_dir.glob(f".{split}-*.array_record.*tmp"):
        p.unlink()

  def __enter__(self) -> "ShardWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()

  @property
  def num_records(self) -> int:
    return sum(s["num_records"] for s in self._shards) + self._in_shard

  def write(self, example: dict[str, Any]) -> None:
    """Validates, encodes and appends one example (schema: vft.data.records)."""
    if self._closed:
      raise RuntimeError(f"ShardWriter({self.split!r}): write() after close()")
    validate_example(example)
    self._check_spec(example)
    if self._writer is None:
      self._open_shard()
    self._writer.write(encode_record(example))
    self._in_shard += 1
    if self._in_shard == self.records_per_shard:
      self._finish_shard()

  def close(self) -> None:
    """Finishes the open shard (if any) and marks the split complete in the manifest."""
    if self._closed:
      return
    if self._writer is not None:
      self._finish_shard()
    self._closed = True
    self._update_manifest(complete=True)

  def abort(self) -> None:
    """Discards the unfinished shard; finished shards stay listed, the split stays incomplete."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None
      if os.path.exists(self._tmp_path):
        os.unlink(self._tmp_path)
      self._in_shard = 0
    self._closed = True

  def _check_spec(self, example: dict[str, Any]) -> None:
    spec = example_spec(example)
    if self._spec is None:
      self._spec = spec
      return
    if set(spec) != set(self._spec):
      raise ValueError(
          f"ShardWriter({self.split!r}): example has fields {sorted(spec)} but earlier examples "
          f"of this split have {sorted(self._spec)}")
    for name, s in spec.items():
      if s != self._spec[name]:
        got = f"shape {tuple(s.get('shape', ()))} {s['dtype']}"
        want = f"shape {tuple(self._spec[name].get('shape', ()))} {self._spec[name]['dtype']}"
        raise ValueError(
            f"ShardWriter({self.split!r}): field {name!r} has {got}, but earlier examples of this "
            f"split have {want}; all records of a split must match")

  def _open_shard(self) -> None:
    name = shard_name(self.split, len(self._shards))
    # ArrayRecordWriter writes local files only: next to the shard (a rename publishes it), or
    # in the local temp dir for gs:// (one upload publishes it).
    self._tmp_path = files.local_temp(self.out_dir / name)
    self._writer = array_record_module.ArrayRecordWriter(self._tmp_path, WRITER_OPTIONS)
    self._in_shard = 0

  def _finish_shard(self) -> None:
    name = shard_name(self.split, len(self._shards))
    self._writer.close()
    self._writer = None
    files.publish(self._tmp_path, self.out_dir / name)
    self._shards.append({"file": name, "num_records": self._in_shard})
    self._in_shard = 0
    self._update_manifest(complete=False)

  def _update_manifest(self, complete: bool) -> None:
    manifest = _load_manifest_or_empty(self.out_dir)
    manifest["splits"][self.split] = {
        "shards": list(self._shards),
        "num_records": sum(s["num_records"] for s in self._shards),
        "example_spec": self._spec or {},
        "meta": self.meta,
        "complete": complete,
    }
    files.write_text(self.out_dir / MANIFEST_NAME, json.dumps(manifest, indent=1))


def _bad(path: epath.Path, what: str) -> ValueError:
  return ValueError(f"{path}: malformed manifest: {what}")


def read_manifest(data_dir: str | os.PathLike, *, check_files: bool = True) -> dict[str, Any]:
  """Reads and checks `data_dir/manifest.json`.

  Raises FileNotFoundError for a missing dir, manifest or (with check_files) listed shard file,
  and ValueError for a malformed manifest.
  """
  data_dir = files.absolute(data_dir)
  if not data_dir.is_dir():
    raise FileNotFoundError(f"data dir {data_dir} does not exist; {PREP_HINT}")
  path = data_dir / MANIFEST_NAME
  if not path.is_file():
    raise FileNotFoundError(f"{MANIFEST_NAME} not found in {data_dir}; {PREP_HINT}")
  try:
    manifest = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise _bad(path, f"not valid JSON ({e})") from None
  if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
    raise _bad(path, f"expected a JSON object with \"version\": {MANIFEST_VERSION}")
  splits = manifest.get("splits")
  if not isinstance(splits, dict):
    raise _bad(path, "\"splits\" must be an object")
  for split, entry in splits.items():
    if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
      raise _bad(path, f"split {split!r} must be an object with a \"shards\" list")
    total = 0
    for shard in entry["shards"]:
      if (not isinstance(shard, dict) or not isinstance(shard.get("file"), str)
          or not isinstance(shard.get("num_records"), int) or shard["num_records"] < 0
          or "/" in shard["file"]):
        raise _bad(path, f"split {split!r}: bad shard entry {shard!r}; expected "
                   "{\"file\": <name in the data dir>, \"num_records\": <int >= 0>}")
      total += shard["num_records"]
      if check_files and not (data_dir / shard["file"]).is_file():
        raise FileNotFoundError(
            f"shard {data_dir / shard['file']} (split {split!r}) is listed in {path} but missing; "
            f"{PREP_HINT}")
    if entry.get("num_records") != total:
      raise _bad(path, f"split {split!r}: num_records is {entry.get('num_records')!r} but its "
                 f"shards hold {total}")
    if not isinstance(entry.get("example_spec", {}), dict):
      raise _bad(path, f"split {split!r}: example_spec must be an object")
  return manifest


def split_entry(manifest: dict[str, Any], split: str, data_dir: str | os.PathLike) -> dict:
  """The manifest entry of `split`; ValueError listing the available splits if absent."""
  splits = manifest["splits"]
  if split not in splits:
    raise ValueError(f"split {split!r} not in {epath.Path(data_dir) / MANIFEST_NAME}; "
                     f"available splits: {sorted(splits)}")
  return splits[split]


def label_names(manifest: dict[str, Any]) -> list[str] | None:
  """The class names of a dataset: manifest["label_names"] (token datasets, `vft prep`), else
  the first split meta that has them (the demo prep stores them per split); None if absent."""
  if manifest.get("label_names"):
    return list(manifest["label_names"])
  for entry in manifest.get("splits", {}).values():
    names = (entry.get("meta") or {}).get("label_names")
    if names:
      return list(names)
  return None
