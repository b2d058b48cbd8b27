"""grain input pipeline: ArrayRecord shards -> per-process batches -> global jax.Arrays.

    ds = make_dataset(data_dir, "train", batch_size_per_process=32, seed=0)
    it = iter(ds)                       # checkpointable: get_state() / set_state(), or orbax
    batch = next(it)                    # {"latents": np [32, T, h, w, C] bfloat16}
    batch = to_global_batch(batch, NamedSharding(mesh, P("data")))

Order of operations: source (global record index attached) -> seeded shuffle -> this process's
slice `[process_index::process_count]` -> repeat (each epoch reshuffled) -> decode (corrupt
records counted, logged and skipped) -> keep `fields` -> read threads -> batch -> optional worker
processes. The element order depends on `worker_count`; keep it fixed across a resume.
"""
from __future__ import annotations

import bisect
import os
import threading
from pathlib import Path
from typing import Any, Sequence

from absl import logging
import grain
import jax
import numpy as np

from vft.data.records import CorruptRecordError, decode_record
from vft.data.writer import read_manifest, split_entry

_corrupt_lock = threading.Lock()
_corrupt_count = 0


def corrupt_record_count() -> int:
  """Corrupt records skipped by pipelines of this process so far (decodes in worker processes,
  with worker_count > 0, are counted there and not seen here)."""
  return _corrupt_count


def reset_corrupt_record_count() -> None:
  global _corrupt_count
  with _corrupt_lock:
    _corrupt_count = 0


def _count_corrupt() -> None:
  global _corrupt_count
  with _corrupt_lock:
    _corrupt_count += 1


def _with_index(index: int, data: bytes) -> tuple[int, bytes]:
  return index, data


def _is_not_none(x: Any) -> bool:
  return x is not None


class _Decode:
  """(global record index, bytes) -> {field: value} or None for a corrupt record. Picklable."""

  def __init__(self, shard_files: Sequence[str], shard_sizes: Sequence[int],
               fields: Sequence[str]):
    self.shard_files = list(shard_files)
    self.starts = [int(s) for s in np.cumsum([0] + list(shard_sizes))[:-1]]
    self.total = int(sum(shard_sizes))
    self.fields = tuple(fields)

  def locate(self, index: int) -> str:
    index %= self.total
    shard = bisect.bisect_right(self.starts, index) - 1
    return f"{self.shard_files[shard]}[{index - self.starts[shard]}]"

  def __call__(self, item: tuple[int, bytes]) -> dict[str, Any] | None:
    index, data = item
    try:
      example = decode_record(data, source=self.locate(index))
    except CorruptRecordError as e:
      _count_corrupt()
      logging.warning("skipping corrupt record (%d skipped so far): %s", _corrupt_count, e)
      return None
    missing = [f for f in self.fields if f not in example]
    if missing:
      raise ValueError(f"record {self.locate(index)} lacks field(s) {missing}")
    return {f: example[f] for f in self.fields}


def _shards(data_dir: str | os.PathLike, split: str) -> tuple[dict[str, Any], list[Path]]:
  data_dir = Path(data_dir)
  entry = split_entry(read_manifest(data_dir), split, data_dir)
  if not entry.get("complete", True):
    logging.warning("split %r in %s is incomplete (its prep was interrupted); using the %d "
                    "records of its finished shards", split, data_dir, entry["num_records"])
  if entry["num_records"] == 0:
    raise ValueError(f"split {split!r} in {data_dir} has no records")
  return entry, [data_dir / s["file"] for s in entry["shards"]]


def _check_fields(fields: Sequence[str], entry: dict[str, Any], split: str) -> None:
  spec = entry.get("example_spec") or {}
  missing = [f for f in fields if f not in spec]
  if spec and missing:
    raise ValueError(f"fields {missing} are not in split {split!r}; it has {sorted(spec)}")


def make_dataset(
    data_dir: str | os.PathLike,
    split: str,
    *,
    batch_size_per_process: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    drop_remainder: bool = True,
    worker_count: int = 0,
    fields: Sequence[str] | None = ("latents",),
    read_threads: int = 4,
    prefetch_buffer_size: int | None = None,
) -> grain.IterDataset:
  """A grain IterDataset of batches {field: np.ndarray [batch_size_per_process, ...]}.

  Arrays keep their stored dtype (latents: bfloat16). `num_epochs=None` repeats forever. Each
  process reads a disjoint slice of every (shuffled) epoch. `fields=None` keeps every field of
  the split. `read_threads` threads read and decode ahead, up to `prefetch_buffer_size` records
(default: one batch, at least 16).
  Corrupt records are skipped, logged and counted (`corrupt_record_count()`).
  """
  if batch_size_per_process < 1:
    raise ValueError(f"batch_size_per_process must be >= 1, got {batch_size_per_process}")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
  entry, paths = _shards(data_dir, split)
  fields = tuple(fields) if fields is not None else tuple(entry.get("example_spec") or {})
  if not fields:
    raise ValueError(f"split {split!r} in {data_dir}: no fields to read")
  _check_fields(fields, entry, split)
  nonempty = [(p, s["num_records"]) for p, s in zip(paths, entry["shards"]) if s["num_records"]]
  source = grain.sources.ArrayRecordDataSource([str(p) for p, _ in nonempty])
  if len(source) != entry["num_records"]:
    raise ValueError(f"split {split!r} in {data_dir}: the manifest lists {entry['num_records']} "
                     f"records but the shards hold {len(source)}; re-run the prep step")
  if entry["num_records"] < process_count:
    raise ValueError(f"split {split!r} has {entry['num_records']} records, fewer than "
                     f"process_count={process_count}")

  ds = grain.MapDataset.source(source).map_with_index(_with_index)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds[process_index::process_count]
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  decode = _Decode([p.name for p, _ in nonempty], [n for _, n in nonempty], fields)
  ds = ds.map(decode).filter(_is_not_none)
  prefetch = (max(16, batch_size_per_process) if prefetch_buffer_size is None
              else prefetch_buffer_size)
  it_ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
  it_ds = it_ds.batch(batch_size_per_process, drop_remainder=drop_remainder)
  if worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it_ds


def to_global_batch(local_batch: dict[str, Any], sharding: jax.sharding.Sharding) -> dict:
  """Per-process batch -> global jax.Arrays (leading axis = global batch) laid out by `sharding`.

  Every numeric array goes through `jax.make_array_from_process_local_data`; string arrays
  (caption, video_id) stay host numpy arrays of this process's examples.
  """
  out = {}
  for name, x in local_batch.items():
    x = np.asarray(x)
    if x.dtype.kind in "OSU":
      out[name] = x
    else:
      out[name] = jax.make_array_from_process_local_data(sharding, x)
  return out


def load_split(data_dir: str | os.PathLike, split: str,
               fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Every record of a (small, eval) split in stored order. Raises CorruptRecordError on a bad
  record (evaluation must not silently drop examples)."""
  entry, paths = _shards(data_dir, split)
  if fields is not None:
    _check_fields(fields, entry, split)
  examples = []
  for path, shard in zip(paths, entry["shards"]):
    if not shard["num_records"]:
      continue
    source = grain.sources.ArrayRecordDataSource([str(path)])
    if len(source) != shard["num_records"]:
      raise ValueError(f"shard {path}: the manifest lists {shard['num_records']} records but it "
                       f"holds {len(source)}; re-run the prep step")
    for i in range(len(source)):
      example = decode_record(source[i], source=f"{path.name}[{i}]")
      examples.append(example if fields is None else {f: example[f] for f in fields})
  return examples
