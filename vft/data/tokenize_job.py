"""`vft tokenize-dataset`: a `vft prep` dataset (codec latents in ArrayRecord shards) -> a token
dataset (tokenizer ids [T', N] per clip) in the same layout, for AR training.

    manifest = run_tokenize(VideoTokenizer.load(ckpt), "/data/k600_latents", "/data/k600_tokens")

Records: `tokens` [T', N] (int32, or uint16 with token_dtype="uint16"), `video_id`, and `label`,
`caption`, `text_emb`/`text_len` carried over when the input has them (pixels are dropped).
The ids are the tokenizer's encoder on the stored `latents`; a split storing VAE `moments`
is tokenized from a posterior sample keyed by (seed, record index in its split) (posterior
"sample", what the tokenizer was trained on) or from the mean ("mode").

Work units are the input's shards: input shard k of a split becomes output shard k of that
split, done by process k % process_count, with the shard bookkeeping of `vft prep`
(vft.data.prep_job.PrepJob: per-shard manifests mark finished shards, so a re-run resumes;
another tokenizer/setting in the same output is refused unless overwrite; the last process to
finish writes manifest.json). A record that fails to decode is skipped, counted and listed.

manifest.json: the vft.data.writer layout plus {"tokenizer": {"source", "config",
"weights_sha256", "codec"}, "vocab_size", "label_names", "tokens_shape", "token_dtype",
"num_records", "num_skipped", "skipped": [{"record", "reason"}], "input": {...}, "text",
"config_hash", "inputs_hash"}.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from absl import logging
from array_record.python import array_record_module
from etils import epath
from flax import traverse_util
import grain
import jax
import numpy as np

from vft import files
from vft.data import pipeline, prep_job
from vft.data.records import CorruptRecordError, decode_record, encode_record
from vft.data.writer import (MANIFEST_NAME, MANIFEST_VERSION, WRITER_OPTIONS, example_spec,
                             label_names, read_manifest, shard_name)

CARRIED = ("video_id", "label", "caption", "text_emb", "text_len")
POSTERIORS = ("sample", "mode")
TOKEN_DTYPES = ("int32", "uint16")


def params_sha256(params) -> str:
  """sha256 (16 hex digits) over every parameter's path, dtype, shape and bytes."""
  h = hashlib.sha256()
  for path, x in sorted(traverse_util.flatten_dict(jax.device_get(params), sep="/").items()):
    x = np.ascontiguousarray(np.asarray(x))
    h.update(f"{path}:{x.dtype.name}:{x.shape}".encode())
    h.update(x.tobytes())
  return h.hexdigest()[:16]


def tokenizer_identity(tok) -> dict[str, Any]:
  """What a token dataset records of its tokenizer (a vft.api.VideoTokenizer)."""
  codec = tok.codec
  return {"source": os.path.basename(os.path.normpath(str(tok.source))),
          "config": json.loads(json.dumps(dataclasses.asdict(tok.model.cfg))),
          "weights_sha256": params_sha256(tok.params),
          "codec": {"name": type(codec).__name__, "spatial_factor": int(codec.spatial_factor),
                    "time_factor": int(codec.time_factor),
                    "latent_channels": int(codec.latent_channels)}}


def _check_input(tok, manifest: dict[str, Any], input_dir: str) -> dict[str, list[int]]:
  """Latent shapes per split, checked against the tokenizer (channels, one chunk, VAE)."""
  cfg = tok.model.cfg
  where = os.path.join(str(input_dir), MANIFEST_NAME)
  vae = manifest.get("vae")
  if isinstance(vae, dict):
    for k in ("spatial_factor", "time_factor", "latent_channels"):
      want = int(getattr(tok.codec, k))
      if k in vae and int(vae[k]) != want:
        raise ValueError(f"{where}: the latents were made with a VAE of {k}={vae[k]} ({vae}), "
                         f"but the tokenizer's codec has {k}={want}")
  shapes = {}
  for split in manifest["splits"]:
    shape = pipeline.latent_shape(input_dir, split)
    if shape[-1] != cfg.latent_channels:
      raise ValueError(f"{where} (split {split!r}): latents have {shape[-1]} channels (shape "
                       f"{shape}) but the tokenizer expects {cfg.latent_channels}")
    chunk = tok.chunking.chunk_latents
    if shape[0] > min(chunk, cfg.max_latent_frames):
      raise ValueError(f"{where} (split {split!r}): {shape[0]} latent frames (shape {shape}); "
                       f"the tokenizer encodes clips of at most {min(chunk, cfg.max_latent_frames)}"
                       " latent frames (one chunk): prep clips of that length")
    shapes[split] = shape
  return shapes


class TokenizeJob(prep_job.PrepJob):
  """One process's part of a tokenize-dataset run (module doc). Reuses PrepJob's shard
  bookkeeping (`run`, `finalize`, resume and output checks); units are input shards."""

  def __init__(self, *, tok, input_dir: str, output: str, posterior: str = "sample",
               token_dtype: str = "int32", seed: int = 0, batch_size: int = 16,
               process_index: int = 0, process_count: int = 1, progress: bool = True,
               overwrite: bool = False, max_shards: int | None = None):
    if posterior not in POSTERIORS:
      raise ValueError(f"tokenize-dataset: posterior={posterior!r}; expected one of {POSTERIORS}")
    if token_dtype not in TOKEN_DTYPES:
      raise ValueError(f"tokenize-dataset: token_dtype={token_dtype!r}; expected one of "
                       f"{TOKEN_DTYPES}")
    if batch_size < 1:
      raise ValueError(f"tokenize-dataset: batch_size must be >= 1, got {batch_size}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"tokenize-dataset: process_index {process_index} not in "
                       f"[0, {process_count})")
    self.tok, self.input = tok, files.absolute(input_dir)
    self.input_manifest = read_manifest(self.input)
    self.latent_shapes = _check_input(tok, self.input_manifest, str(input_dir))
    self.vocab_size = int(np.prod(tok.model.cfg.fsq_levels))
    if token_dtype == "uint16" and self.vocab_size > 1 << 16:
      raise ValueError(f"tokenize-dataset: token_dtype=uint16 cannot hold vocab_size "
                       f"{self.vocab_size}; use int32")
    self.posterior, self.token_dtype = posterior, np.dtype(token_dtype)
    self.seed, self.batch_size = int(seed), int(batch_size)
    self.identity = tokenizer_identity(tok)
    self.out = epath.Path(output)
    self.process_index, self.process_count = process_index, process_count
    self.progress, self.max_shards = progress, max_shards
    self.units = []
    for split, entry in sorted(self.input_manifest["splits"].items()):
      first = 0
      for k, shard in enumerate(entry["shards"]):
        self.units.append((split, k, first, list(range(shard["num_records"]))))
        first += shard["num_records"]
    self.job_cfg = {"tokenizer": self.identity, "posterior": posterior,
                    "token_dtype": token_dtype, "seed": self.seed}
    self.config_hash = prep_job.config_hash(self.job_cfg)
    self.inputs_hash = prep_job.config_hash(
        {"config_hash": self.input_manifest.get("config_hash"),
         "shards": {s: [(x["file"], x["num_records"]) for x in e["shards"]]
                    for s, e in self.input_manifest["splits"].items()}})
    self.out.mkdir(parents=True, exist_ok=True)
    self._check_output(overwrite)

  def _latents(self, ex: dict[str, Any], index: int) -> np.ndarray:
    """The record's latents [T, h, w, C] float32: stored, or from its stored moments."""
    if "latents" in ex:
      return np.asarray(ex["latents"], np.float32)
    if self.posterior == "mode":
      z = ex["moments"].shape[-1] // 2
      return np.asarray(ex["moments"][..., :z], np.float32)
    rng = np.random.default_rng([self.seed, index])
    return np.asarray(pipeline._sample_posterior(ex, rng)["latents"], np.float32)

  def _do_unit(self, split: str, k: int, first: int, items: list, pbar) -> None:
    src_name = self.input_manifest["splits"][split]["shards"][k]["file"]
    name = shard_name(split, k)
    source = grain.sources.ArrayRecordDataSource([str(self.input / src_name)]) if items else []
    examples_meta, skipped, pending, spec_seen = [], [], [], None
    with files.atomic_path(self.out / name) as tmp:
      writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
      try:
        for i in items:
          where = f"{src_name}[{i}]"
          try:
            ex = decode_record(source[i], source=where)
            if "latents" not in ex and "moments" not in ex:
              raise CorruptRecordError(f"record {where}: no latents or moments")
            lat = self._latents(ex, first + i)
          except CorruptRecordError as e:
            skipped.append({"record": where, "reason": str(e)})
            logging.warning("tokenize-dataset: skipping %s", e)
            pbar.update(1)
            continue
          pending.append(({f: ex[f] for f in CARRIED if f in ex}, lat))
          pbar.update(1)
          if len(pending) == self.batch_size:
            spec_seen = self._flush(pending, writer, examples_meta, spec_seen)
            pending = []
        if pending:
          spec_seen = self._flush(pending, writer, examples_meta, spec_seen)
      finally:
        writer.close()
    meta = {"file": name, "split": split, "shard": k, "source": src_name,
            "num_records": len(examples_meta), "num_videos": len(items), "first_video": first,
            "records": examples_meta, "skipped": skipped, "example_spec": spec_seen or {},
            "config_hash": self.config_hash, "inputs_hash": self.inputs_hash}
    files.write_text(self._shard_json(split, k), prep_job.json_dumps(meta))

  def _flush(self, batch, writer, examples_meta, spec_seen):
    """Tokenizes one batch (padded to batch_size: one compiled shape) and writes its records."""
    lat = np.stack([b[1] for b in batch])
    pad = self.batch_size - len(batch)
    if pad:
      lat = np.concatenate([lat, np.zeros((pad, *lat.shape[1:]), lat.dtype)])
    ids = np.asarray(self.tok.runner.model_encode(self.tok.params, lat))[:len(batch)]
    for (carried, _), tokens in zip(batch, ids):
      ex = dict(carried, tokens=tokens.astype(self.token_dtype))
      spec = example_spec(ex)
      if spec_seen is not None and spec != spec_seen:
        raise ValueError(f"tokenize-dataset: record {ex.get('video_id')} has fields {spec}, "
                         f"earlier records {spec_seen}")
      writer.write(encode_record(ex))
      examples_meta.append({"video_id": ex.get("video_id", "")})
      spec_seen = spec
    return spec_seen

  def build_manifest(self, metas: list[dict[str, Any]]) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    skipped = []
    for meta in metas:
      entry = splits.setdefault(meta["split"], {
          "shards": [], "num_records": 0, "example_spec": {}, "complete": True,
          "meta": {"tokenizer_sha256": self.identity["weights_sha256"],
                   "vocab_size": self.vocab_size}})
      entry["shards"].append({"file": meta["file"], "num_records": meta["num_records"]})
      entry["num_records"] += meta["num_records"]
      if meta["example_spec"] and not entry["example_spec"]:
        entry["example_spec"] = meta["example_spec"]
      skipped.extend(meta["skipped"])
    src = self.input_manifest
    tokens = next((e["example_spec"]["tokens"]["shape"] for e in splits.values()
                   if e["example_spec"]), None)
    return {
        "version": MANIFEST_VERSION, "splits": splits,
        "num_records": sum(e["num_records"] for e in splits.values()),
        "num_skipped": len(skipped), "skipped": skipped, "tokenizer": self.identity,
        "vocab_size": self.vocab_size,
        "label_names": label_names(src),
        "tokens_shape": tokens, "token_dtype": self.token_dtype.name,
        "posterior": self.posterior, "seed": self.seed, "text": src.get("text"),
        "input": {"dir": str(self.input), "config_hash": src.get("config_hash"),
                  "vae": src.get("vae"), "latent_shapes": self.latent_shapes},
        "config_hash": self.config_hash, "inputs_hash": self.inputs_hash,
    }


def run_tokenize(tok, input_dir: str, output: str, *, posterior: str = "sample",
                 token_dtype: str = "int32", seed: int = 0, batch_size: int = 16,
                 process_index: int | None = None, process_count: int | None = None,
                 progress: bool = True, overwrite: bool = False,
                 max_shards: int | None = None) -> dict[str, Any] | None:
  """Runs this process's part (module doc). Without explicit process_index/process_count the
  jax processes split the shards and process 0 writes manifest.json after a barrier. Returns
  manifest.json's content once every shard is done, else None."""
  explicit = process_count is not None and process_count > 0
  index, count = prep_job._process_slice(
      {"process_index": -1 if process_index is None else process_index,
       "process_count": process_count if explicit else -1})
  job = TokenizeJob(tok=tok, input_dir=input_dir, output=output, posterior=posterior,
                    token_dtype=token_dtype, seed=seed, batch_size=batch_size,
                    process_index=index, process_count=count, progress=progress,
                    overwrite=overwrite, max_shards=max_shards)
  return prep_job.finish_processes(job, job.run(), output, explicit)
