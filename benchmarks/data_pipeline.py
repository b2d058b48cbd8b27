"""Data pipeline benchmark: grain read throughput vs raw sequential reads of the same shards.

Writes `--records` latent records (`--shape`, bfloat16, the prep job's format) to a temp dir,
then in one run measures (median of `--reps`, files warm in the page cache after a warm-up pass):
  raw file     sequential `read()` of the shard files (bytes/s of the files)
  raw records  sequential ArrayRecord reads of every record, no decoding
  grain w=N    `vft.data.pipeline.make_dataset` (shuffle, decode, batch) with N worker processes
and prints records/s, MB/s of latent payload, and grain / raw-records ratios.

  python benchmarks/data_pipeline.py                      # 5x32x32x16 (17x256x256 VidTok clips)
  python benchmarks/data_pipeline.py --shape=17,32,32,16 --workers=0,1,2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402


def write_shards(out: str, n: int, shape, per_shard: int) -> list[str]:
  from vft.data.writer import ShardWriter, read_manifest
  rng = np.random.default_rng(0)
  with ShardWriter(out, "train", records_per_shard=per_shard) as w:
    for i in range(n):
      w.write({"latents": rng.standard_normal(shape, np.float32).astype(ml_dtypes.bfloat16),
               "video_id": f"clip{i:06d}"})
  return [os.path.join(out, s["file"]) for s in read_manifest(out)["splits"]["train"]["shards"]]


def raw_file_read(paths) -> tuple[int, int]:
  total = 0
  for p in paths:
    with open(p, "rb", buffering=0) as f:
      while chunk := f.read(8 << 20):
        total += len(chunk)
  return 0, total


def raw_record_read(paths) -> tuple[int, int]:
  from array_record.python import array_record_module
  n = total = 0
  for p in paths:
    reader = array_record_module.ArrayRecordReader(p, "readahead_buffer_size:16777216")
    for rec in reader.read_all():
      n += 1
      total += len(rec)
    reader.close()
  return n, total


def grain_read(data_dir: str, batch: int, workers: int) -> tuple[int, int, float, int]:
  """One epoch -> (records, payload bytes, seconds to the first batch, its records)."""
  from vft.data import pipeline
  ds = pipeline.make_dataset(data_dir, "train", batch_size_per_process=batch, seed=0,
                             num_epochs=1, process_index=0, process_count=1,
                             worker_count=workers, drop_remainder=False)
  n = total = 0
  t0 = time.perf_counter()
  first = None
  for b in ds:
    n += len(b["latents"])
    total += b["latents"].nbytes
    if first is None:
      first = (time.perf_counter() - t0, n)
  return n, total, first[0], first[1]


def timed(fn, reps: int):
  out, times = None, []
  fn()  # warm-up (page cache, worker start-up paths, imports)
  for _ in range(reps):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return out, statistics.median(times)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--records", type=int, default=2048)
  ap.add_argument("--shape", default="5,32,32,16")
  ap.add_argument("--per_shard", type=int, default=256)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--workers", default="0,1,2")
  ap.add_argument("--reps", type=int, default=3)
  args = ap.parse_args()
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
  shape = tuple(int(s) for s in args.shape.split(","))
  payload = int(np.prod(shape)) * 2
  with tempfile.TemporaryDirectory(prefix="vft_bench_data_") as d:
    paths = write_shards(d, args.records, shape, args.per_shard)
    size = sum(os.path.getsize(p) for p in paths)
    print(f"{args.records} records of {list(shape)} bf16 ({payload / 1e3:.1f} kB payload), "
          f"{len(paths)} shards, {size / 1e6:.1f} MB on disk")
    rows = []
    (_, nbytes), t = timed(lambda: raw_file_read(paths), args.reps)
    rows.append(("raw file read()", args.records / t, nbytes / t / 1e6, t))
    (_, _), t_raw = timed(lambda: raw_record_read(paths), args.reps)
    rows.append(("raw ArrayRecord records", args.records / t_raw, args.records * payload / t_raw
                 / 1e6, t_raw))
    for w in [int(x) for x in args.workers.split(",")]:
      (n, nb, t_first, n_first), t = timed(lambda w=w: grain_read(d, args.batch, w), args.reps)
      assert n == args.records, (n, args.records)
      rows.append((f"grain make_dataset, {w} workers", n / t, nb / t / 1e6, t))
      if w:  # steady state: after the first batch (worker start-up excluded)
        rate = (n - n_first) / (t - t_first)
        rows.append((f"  ... after its first batch", rate, rate * payload / 1e6, t - t_first))
    base = args.records / t_raw
    print(f"{'reader (one epoch)':<34} {'records/s':>10} {'MB/s':>9} {'time (s)':>9} "
          f"{'vs raw records':>15}")
    for name, rps, mbs, t in rows:
      print(f"{name:<34} {rps:>10.0f} {mbs:>9.0f} {t:>9.3f} {rps / base:>14.0%}")


if __name__ == "__main__":
  main()
