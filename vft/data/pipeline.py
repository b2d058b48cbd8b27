"""grain input pipeline: ArrayRecord shards -> per-process batches -> global jax.Arrays.

    ds = make_dataset(data_dir, "train", batch_size_per_process=32, seed=0)
    it = iter(ds)                       # checkpointable: get_state() / set_state(), or orbax
    batch = next(it)                    # {"latents": np [32, T, h, w, C] bfloat16}
    batch = to_global_batch(batch, NamedSharding(mesh, P("data")))

Order of operations: source (global record index attached) -> seeded shuffle -> repeat (each
epoch reshuffled) -> decode -> (posterior sampling): ONE global record stream, the same for every
process count. It is cut into global batches of `batch_size_per_process * process_count`
records; process p takes its contiguous block `[p * b:(p + 1) * b]` of every global batch
(`vft.data.global_order.ProcessRows`), which is how `jax.make_array_from_process_local_data`
lays the process-local rows into the global array (process 0's devices hold the first rows). So the global batch at
every step is the same ordered list of records whatever the process count, and a run resumed on
another pod shape reads on in the same order. Then: batch (read threads fetch whole batches
ahead) -> optional worker processes (each takes every worker_count-th batch, so the order does
not depend on `worker_count` either).

Corrupt records: a record that fails to decode is logged, counted and replaced by the next
readable record of the global stream (which then appears twice), so every batch stays full and
the order stays independent of the process count.

Iterator state (`get_state`, orbax `grain.checkpoint.CheckpointSave`) is the global position
{"position": records of the global stream consumed, "global_batch_size"}: the same in every
process, so it restores exactly under another process count (`vft.checkpoint` reads another
count's state file then) and, at a record boundary, under another global batch size.

Posterior sampling at train time: when a split stores VAE `moments` [T, h, w, 2C] instead of
`latents` (prep with store="moments"), asking for "latents" draws
`mean + exp(0.5 * clip(logvar, -30, 20)) * eps` per record and epoch; eps comes from grain's
`random_map` seeded with `seed` (a Philox stream per element index), so a resumed iterator
draws the same noise. `check_dataset` validates a prepared dataset against a training config.
"""
from __future__ import annotations

import bisect
import os
import threading
from typing import Any, Sequence

from absl import logging
from etils import epath
import grain
import jax
import ml_dtypes
import numpy as np

from vft import files
from vft.data import global_order
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


def _sample_posterior(example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
  """{"moments": [..., 2C], ...} -> {"latents": [..., C] in the moments' 16-bit dtype (bfloat16
  for float32 moments), ...}: a posterior sample drawn from `rng`."""
  if example is None:
    return None
  example = dict(example)
  moments = example.pop("moments")
  z = moments.shape[-1] // 2
  mean = moments[..., :z].astype(np.float32)
  logvar = np.clip(moments[..., z:].astype(np.float32), -30.0, 20.0)
  eps = rng.standard_normal(mean.shape, dtype=np.float32)
  dtype = moments.dtype if moments.dtype.name in ("bfloat16", "float16") else ml_dtypes.bfloat16
  example["latents"] = (mean + np.exp(0.5 * logvar) * eps).astype(dtype)
  return example


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


def _shards(data_dir: str | os.PathLike, split: str) -> tuple[dict[str, Any], list[epath.Path]]:
  data_dir = files.absolute(data_dir)
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
) -> global_order.GlobalOrderDataset:
  """A grain IterDataset of batches {field: np.ndarray [batch_size_per_process, ...]}.

  Arrays keep their stored dtype (latents: bfloat16). `num_epochs=None` repeats forever.
  Process p's batch k is rows [p * b:(p + 1) * b] of global batch k of one global stream
  (module doc), b = batch_size_per_process. `fields=None` keeps every field of the split.
  Asking for "latents" from a split that stores `moments` yields posterior samples (module doc).
  `read_threads` threads read and decode whole batches ahead, up to `prefetch_buffer_size`
  batches (default: read_threads, at least 2). Corrupt records are logged, counted
  (`corrupt_record_count()`) and replaced by the next readable record of the stream.
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
  stored = entry.get("example_spec") or {}
  sample = "latents" in fields and "latents" not in stored and "moments" in stored
  if sample:  # read the moments and sample the posterior (module doc)
    fields = tuple(f for f in fields if f != "latents") + ("moments",)
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
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  decode = _Decode([p.name for p, _ in nonempty], [n for _, n in nonempty], fields)
  ds = global_order.ReadableRecords(ds.map(decode), max_scan=len(source))
  if sample:  # keyed by the global stream position: the same draws for every process count
    ds = ds.random_map(_sample_posterior, seed=seed)
  gbs = batch_size_per_process * process_count
  prefetch = max(2, read_threads) if prefetch_buffer_size is None else prefetch_buffer_size

  def build(start: int) -> grain.IterDataset:
    rows = global_order.ProcessRows(ds, start=start, global_batch_size=gbs,
                                    process_index=process_index, process_count=process_count,
                                    drop_remainder=drop_remainder)
    it_ds = rows.batch(batch_size_per_process, drop_remainder=drop_remainder).to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
    if worker_count > 0:
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it_ds

  return global_order.GlobalOrderDataset(build, gbs)


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


def latent_shape(data_dir: str | os.PathLike, split: str) -> list[int]:
  """[T, h, w, C] of the latents of `split` (stored, or sampled from stored `moments`)."""
  entry = split_entry(read_manifest(data_dir, check_files=False), split, data_dir)
  spec = entry.get("example_spec") or {}
  if "latents" in spec:
    return list(spec["latents"]["shape"])
  if "moments" in spec:
    shape = list(spec["moments"]["shape"])
    return shape[:-1] + [shape[-1] // 2]
  raise ValueError(f"split {split!r} in {data_dir} has neither latents nor moments (fields: "
                   f"{sorted(spec)}); re-run the prep step")


def _vae_of(manifest: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any] | None:
  vae = manifest.get("vae") or (entry.get("meta") or {}).get("codec")
  return vae if isinstance(vae, dict) else None


def check_dataset(config, data_dir: str | os.PathLike, split: str | None = None,
                  *, codec=None) -> list[int]:
  """Checks a prepared dataset against a training config; returns the latent shape [T, h, w, C].

  Raises ValueError naming data_dir/manifest.json, the field and both values when the latent
  channels differ from config.model.latent_channels, the latent frames exceed
  config.model.max_latent_frames, the latent grid is not divisible by config.model.patch_size,
  the latent shape differs from what config.codec makes of config.data.clip_len x size
  (when those are set), the VAE (name, factors, weights hash) differs from config.codec, or
  REPA targets are needed (config.train.repa_weight > 0) but missing or of another width.
  """
  from vft.models.vae import make_codec
  split = split or config.data.train_split
  where = f"{epath.Path(data_dir) / 'manifest.json'} (split {split!r})"
  manifest = read_manifest(data_dir)
  entry = split_entry(manifest, split, data_dir)
  shape = latent_shape(data_dir, split)
  codec = make_codec(config.codec) if codec is None else codec
  vae = _vae_of(manifest, entry)
  if vae is not None:
    cfg_codec = {"name": config.codec.name, "spatial_factor": int(codec.spatial_factor),
                 "time_factor": int(codec.time_factor)}
    if config.codec.name == "patch":
      cfg_codec["pool"] = int(config.codec.get("pool", 1))
    cfg_codec["latent_channels"] = int(codec.latent_channels)
    for k, v in cfg_codec.items():
      if k in vae and vae[k] != v:
        raise ValueError(f"{where}: the data was made with VAE {k}={vae[k]!r} ({vae}), but "
                         f"config.codec gives {k}={v!r}; use the same codec as the prep job")
    path = config.codec.get("path", None)
    if vae.get("weights_sha256") and path:
      from vft.data.prep_job import codec_identity
      got = codec_identity(codec, dict(config.codec)).get("weights_sha256")
      if got != vae["weights_sha256"]:
        raise ValueError(f"{where}: the data was encoded with VAE weights sha256 "
                         f"{vae['weights_sha256']} ({vae.get('weights_file')}), but "
                         f"config.codec.path={path} has {got}")
  model = config.model
  if shape[-1] != int(model.latent_channels):
    raise ValueError(f"{where}: latents have {shape[-1]} channels (shape {shape}) but "
                     f"config.model.latent_channels={model.latent_channels}")
  if shape[0] > int(model.max_latent_frames):
    raise ValueError(f"{where}: {shape[0]} latent frames (shape {shape}) exceed "
                     f"config.model.max_latent_frames={model.max_latent_frames}")
  patch = tuple(int(p) for p in model.patch_size)
  if any(d % p for d, p in zip(shape[:3], patch)):
    raise ValueError(f"{where}: latent grid {shape[:3]} is not divisible by "
                     f"config.model.patch_size={list(patch)}")
  clip_len, size = config.data.get("clip_len"), config.data.get("size")
  if clip_len and size:
    want = list(codec.latent_shape(int(clip_len), int(size), int(size)))
    if want != shape:
      raise ValueError(f"{where}: latent shape {shape}, but config.codec "
                       f"({config.codec.name}) makes {want} from config.data.clip_len={clip_len} "
                       f"and size={size}; re-run prep with this clip size or fix the config")
  if float(config.train.get("repa_weight", 0.0)) > 0:
    spec = entry.get("example_spec") or {}
    if "repa" not in spec:
      raise ValueError(f"{where}: config.train.repa_weight > 0 needs REPA targets, but the "
                       f"records have no 'repa' field (fields: {sorted(spec)}); prep with "
                       "--config.repa.path=<DINOv2 checkpoint>")
    width = spec["repa"]["shape"][-1]
    grid = [shape[0] // patch[0], shape[1] // patch[1], shape[2] // patch[2]]
    if list(spec["repa"]["shape"][:3]) != grid:
      raise ValueError(f"{where}: REPA targets {spec['repa']['shape']} do not match the patch "
                       f"grid {grid} (latents {shape} / config.model.patch_size={list(patch)}); "
                       "prep with --config.repa.patch=<the model's spatial patch size>")
    if width != int(model.repa_dim):
      raise ValueError(f"{where}: REPA targets have {width} features but "
                       f"config.model.repa_dim={model.repa_dim}")
  return shape
