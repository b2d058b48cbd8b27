"""The prep job at scale: videos -> clips -> codec latents (+ REPA targets, text embeddings)
-> ArrayRecord shards with per-shard manifests and a dataset-level `manifest.json`.

    manifest = run_prep(config, "/data/k600/train.csv", "/data/k600_latents")

Records: `latents` (or `moments` with store="moments"), `video_id` ("<input id>/clip<j>"),
`label` (-1 for a video without one) when any input has a label, `caption` ("" when none) when
any input has one, `repa` with config.repa.path, `text_emb`/`text_len` with config.text.kind,
and `video` (uint8 pixels) in the eval split.

Work units. The input list (vft.data.sources; the same on every process) is cut into shards of
`videos_per_shard` consecutive videos: the last `eval_videos` inputs form the `eval` split
(records keep their pixels, as the trainer's evaluator needs), the rest `config.split`. Shard k
of every split is processed by process k % process_count, so processes write disjoint shards
and any process count produces the same files. A shard's records are a pure function of the
config, the inputs and the shard index (clip sampling seeded by the video's index, posterior
noise by (video, clip), see vft.data.encode), so an interrupted shard rewritten later is
identical.

Files in `output` (any `etils.epath` path; shards are written to a local temp file first):
  {split}-{k:05d}.array_record   the shard, renamed into place when finished
  {split}-{k:05d}.json           its manifest, written after the shard: its presence (with this
                                 job's config_hash and inputs_hash) marks the shard done
  manifest.json                  written once every shard is done (deterministic content):
    {"version": 1, "splits": {...vft.data.writer layout...}, "num_records", "num_videos",
     "num_skipped", "skipped": [{"path", "reason"}], "latent_shape", "dtype", "latent_field",
     "vae": {...}, "config_hash", "inputs_hash", "labels": [...] | null, "clip": {...},
     "repa": {...} | null, "text": {...} | null}
Resume: re-running skips finished shards and rewrites unfinished ones; a different config or
input list in the same output is refused (overwrite=True removes the old shards). A video that
cannot be opened or decoded, or is too short, is skipped and listed with its reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Sequence

from absl import logging
from array_record.python import array_record_module
from etils import epath
import jax
import ml_dtypes
import numpy as np
from tqdm import tqdm

from vft import files
from vft.data import clips as clips_lib
from vft.data import sources
from vft.data.records import encode_record, validate_example
from vft.data.writer import (MANIFEST_NAME, MANIFEST_VERSION, WRITER_OPTIONS, example_spec,
                             shard_name)

_SEED_STRIDE = 1_000_003


def json_dumps(obj: Any) -> str:
  return json.dumps(obj, indent=1, sort_keys=True)


def config_hash(cfg: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def inputs_hash(items: Sequence[sources.VideoItem]) -> str:
  h = hashlib.sha256()
  for it in items:
    h.update(json.dumps([it.path, it.video_id, it.label, it.caption, it.start, it.end]).encode())
  return h.hexdigest()[:16]


def codec_identity(codec, codec_cfg: dict[str, Any]) -> dict[str, Any]:
  """What the trainer checks the data against: name, factors, channels and, for a learned VAE,
  the sha256 of its weights file."""
  ident = {"name": str(codec_cfg.get("name", type(codec).__name__)),
           "spatial_factor": int(codec.spatial_factor), "time_factor": int(codec.time_factor),
           "latent_channels": int(codec.latent_channels)}
  if codec_cfg.get("name") == "patch":
    ident["pool"] = int(codec_cfg.get("pool", 1))
  path = codec_cfg.get("path")
  if path:
    h = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 22), b""):
        h.update(block)
    ident["weights_sha256"] = h.hexdigest()[:16]
    ident["weights_file"] = os.path.basename(str(path))
  return ident


def _units(items: list, split: str, eval_videos: int, per_shard: int):
  """[(split, shard index, first video index, items)] in a fixed order."""
  if eval_videos < 0 or (eval_videos and eval_videos >= len(items)):
    raise ValueError(f"eval_videos={eval_videos}: must be in [0, {len(items)}) (the number of "
                     "input videos); some must remain for training")
  cut = len(items) - eval_videos
  units = []
  for name, lo, hi in ((split, 0, cut), ("eval", cut, len(items))):
    for k, start in enumerate(range(lo, hi, per_shard)):
      units.append((name, k, start, items[start:min(hi, start + per_shard)]))
  return units


class PrepJob:
  """One process's part of a prep run. See the module doc; `run_prep` builds and runs it."""

  def __init__(self, *, items: list[sources.VideoItem], labels: list[str] | None, output: str,
               spec: clips_lib.ClipSpec, encoder, job_cfg: dict[str, Any],
               vae: dict[str, Any], text=None, split: str = "train", eval_videos: int = 0,
               videos_per_shard: int = 64, seed: int = 0, process_index: int = 0,
               process_count: int = 1, progress: bool = True, overwrite: bool = False,
               max_shards: int | None = None, frames_fn=None):
    if not items:
      raise ValueError("prep: no input videos")
    if not 0 <= process_index < process_count:
      raise ValueError(f"prep: process_index {process_index} not in [0, {process_count})")
    if videos_per_shard < 1:
      raise ValueError(f"prep: videos_per_shard must be >= 1, got {videos_per_shard}")
    self.items, self.labels, self.spec = items, labels, spec
    self.encoder, self.text, self.vae = encoder, text, vae
    self.out = epath.Path(output)
    self.split, self.seed = split, seed
    self.process_index, self.process_count = process_index, process_count
    self.progress, self.max_shards = progress, max_shards
    self.frames_fn = frames_fn  # item -> decoded segment (TFDS inputs), or None: decode the file
    self.units = _units(items, split, eval_videos, videos_per_shard)
    self.has_label = any(it.label is not None for it in items)
    self.has_caption = any(it.caption is not None for it in items)
    self.job_cfg = job_cfg
    self.config_hash = config_hash(job_cfg)
    self.inputs_hash = inputs_hash(items)
    self.out.mkdir(parents=True, exist_ok=True)
    self._check_output(overwrite)

  # ---- bookkeeping -------------------------------------------------------------------------
  def _shard_json(self, split: str, k: int) -> epath.Path:
    return self.out / shard_name(split, k).replace(".array_record", ".json")

  def _load_shard_json(self, split: str, k: int) -> dict[str, Any] | None:
    p = self._shard_json(split, k)
    if not p.exists():
      return None
    try:
      return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
      return None

  def _is_current(self, meta: dict[str, Any] | None) -> bool:
    return bool(meta) and meta.get("config_hash") == self.config_hash and meta.get(
        "inputs_hash") == self.inputs_hash

  def _check_output(self, overwrite: bool) -> None:
    """Refuses to mix runs: any shard manifest or manifest.json from another config/input list
    is an error, unless `overwrite` (then this process removes its own old shards)."""
    stale = []
    for split, k, _, _ in self.units:
      meta = self._load_shard_json(split, k)
      if meta is not None and not self._is_current(meta):
        stale.append((split, k))
    top = self.out / MANIFEST_NAME
    old_top = None
    if top.exists():
      try:
        old_top = json.loads(top.read_text())
      except (json.JSONDecodeError, UnicodeDecodeError):
        old_top = {}
    top_stale = old_top is not None and (old_top.get("config_hash"), old_top.get(
        "inputs_hash")) != (self.config_hash, self.inputs_hash)
    if (stale or top_stale) and not overwrite:
      raise ValueError(
          f"{self.out} holds a prep output made with another config or input list "
          f"(config_hash {self.config_hash}, inputs_hash {self.inputs_hash} now; "
          f"{len(stale)} shard(s) differ); pass overwrite (--config.overwrite=True) or use "
          "another --output")
    if overwrite:
      if top_stale and self.process_index == 0:
        top.unlink()
        # shards of the old run that this run does not have (e.g. fewer inputs)
        names = {shard_name(split, k) for split, k, _, _ in self.units}
        for p in self.out.glob("*-[0-9][0-9][0-9][0-9][0-9].*"):
          base = p.name.replace(".json", ".array_record")
          if p.suffix in (".json", ".array_record") and base not in names:
            p.unlink(missing_ok=True)
      for split, k in stale:
        if k % self.process_count == self.process_index:
          self._shard_json(split, k).unlink(missing_ok=True)
          (self.out / shard_name(split, k)).unlink(missing_ok=True)

  def my_units(self):
    return [u for u in self.units if u[1] % self.process_count == self.process_index]

  # ---- work ---------------------------------------------------------------------------------
  def run(self) -> dict[str, Any] | None:
    """Processes this process's unfinished shards; returns manifest.json's content when every
    shard is done (else None)."""
    todo = [u for u in self.my_units()
            if not (self._is_current(self._load_shard_json(u[0], u[1]))
                    and (self.out / shard_name(u[0], u[1])).exists())]
    if self.max_shards is not None:
      todo = todo[:self.max_shards]
    logging.info("prep: process %d/%d, %d of its %d shards to do", self.process_index,
                 self.process_count, len(todo), len(self.my_units()))
    total_videos = sum(len(u[3]) for u in todo)
    with tqdm(total=total_videos, disable=not self.progress, unit="video",
              desc=f"prep p{self.process_index}") as pbar:
      self._clips_done, self._t0 = 0, time.perf_counter()
      for unit in todo:
        self._do_unit(*unit, pbar=pbar)
    return self.finalize()

  def _do_unit(self, split: str, k: int, first: int, items: list, pbar) -> None:
    keep_pixels = split == "eval"
    examples_meta, skipped, pending = [], [], []
    name = shard_name(split, k)
    if files.is_local(self.out):  # next to the shard (a rename publishes it); stale ones removed
      for stale in self.out.glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)
    spec_seen = None
    with files.atomic_path(self.out / name) as tmp:
      writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
      try:
        for i, item in enumerate(items):
          vi = first + i
          rng = np.random.default_rng([self.seed, vi])
          try:
            frames = None if self.frames_fn is None else self.frames_fn(item)
            clips = clips_lib.sample_clips(item, self.spec, rng, frames=frames)
          except Exception as e:  # noqa: BLE001  one bad file never stops the job
            reason = str(e).removeprefix(f"{item.path}: ")
            skipped.append({"path": str(item.path), "video_id": item.video_id,
                            "reason": f"{type(e).__name__}: {reason}"})
            logging.warning("prep: skipping %s: %s", item.path, reason)
            pbar.update(1)
            continue
          for j, (start, px) in enumerate(clips):
            pending.append((vi, j, item, start, px))
          pbar.update(1)
          while len(pending) >= self.encoder.batch_size:
            spec_seen = self._flush(pending[:self.encoder.batch_size], writer, keep_pixels,
                                    examples_meta, spec_seen, pbar)
            del pending[:self.encoder.batch_size]
        if pending:
          spec_seen = self._flush(pending, writer, keep_pixels, examples_meta, spec_seen, pbar)
        writer.close()
        writer = None  # published by atomic_path
      finally:
        if writer is not None:
          writer.close()
    meta = {"file": shard_name(split, k), "split": split, "shard": k,
            "num_records": len(examples_meta), "num_videos": len(items),
            "first_video": first, "records": examples_meta, "skipped": skipped,
            "example_spec": spec_seen or {}, "config_hash": self.config_hash,
            "inputs_hash": self.inputs_hash}
    files.write_text(self._shard_json(split, k), json_dumps(meta))

  def _flush(self, batch, writer, keep_pixels, examples_meta, spec_seen, pbar):
    pixels = np.stack([b[4] for b in batch])
    out = self.encoder(pixels, np.array([b[0] for b in batch]), np.array([b[1] for b in batch]))
    if self.text is not None:
      emb, lengths = self.text([b[2].caption or "" for b in batch])
      out["text_emb"], out["text_len"] = emb, lengths
    for n, (vi, j, item, start, px) in enumerate(batch):
      ex = {"video_id": f"{item.video_id}/clip{j}"}
      for name, arr in out.items():
        ex[name] = int(arr[n]) if name == "text_len" else arr[n]
      if self.has_label:
        ex["label"] = -1 if item.label is None else int(item.label)
      if self.has_caption:
        ex["caption"] = item.caption or ""
      if keep_pixels:
        ex["video"] = px
        if "latents" not in ex:  # the evaluator reads latents: the posterior mean
          z = ex["moments"].shape[-1] // 2
          mean = ex["moments"][..., :z]
          ex["latents"] = (mean if mean.dtype.name in ("bfloat16", "float16")
                           else mean.astype(ml_dtypes.bfloat16))
      validate_example(ex)
      spec = example_spec(ex)
      if spec_seen is not None and spec != spec_seen:
        raise ValueError(f"prep: clip {ex['video_id']} has fields {spec}, earlier clips "
                         f"{spec_seen}")
      writer.write(encode_record(ex))
      examples_meta.append({"video_id": ex["video_id"], "start": round(start, 4)})
      spec_seen = spec
    self._clips_done += len(batch)
    rate = self._clips_done / max(time.perf_counter() - self._t0, 1e-9)
    pbar.set_postfix(clips=self._clips_done, clips_per_s=f"{rate:.2f}")
    return spec_seen

  # ---- dataset manifest ---------------------------------------------------------------------
  def finalize(self) -> dict[str, Any] | None:
    """Writes manifest.json if every shard of every process is done (its content depends only
    on the shard manifests, so concurrent writers write the same bytes)."""
    metas = []
    for split, k, _, _ in self.units:
      meta = self._load_shard_json(split, k)
      if not self._is_current(meta) or not (self.out / shard_name(split, k)).exists():
        return None
      metas.append(meta)
    manifest = self.build_manifest(metas)
    files.write_text(self.out / MANIFEST_NAME, json_dumps(manifest))
    return manifest

  def build_manifest(self, metas: list[dict[str, Any]]) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    skipped = []
    for meta in metas:
      entry = splits.setdefault(meta["split"], {"shards": [], "num_records": 0,
                                                "example_spec": {}, "complete": True,
                                                "meta": {}})
      entry["shards"].append({"file": meta["file"], "num_records": meta["num_records"]})
      entry["num_records"] += meta["num_records"]
      if meta["example_spec"] and not entry["example_spec"]:
        entry["example_spec"] = meta["example_spec"]
      skipped.extend({"path": s["path"], "reason": s["reason"]} for s in meta["skipped"])
    train = splits.get(self.split, {}).get("example_spec", {})
    field = "latents" if "latents" in train else "moments"
    lat = train.get(field, {})
    for entry in splits.values():
      entry["meta"] = {"codec": self.vae, "clip_len": self.spec.num_frames,
                       "size": self.spec.size, "fps": self.spec.fps, "seed": self.seed}
    return {
        "version": MANIFEST_VERSION, "splits": splits,
        "num_records": sum(e["num_records"] for e in splits.values()),
        "num_videos": len(self.items), "num_skipped": len(skipped), "skipped": skipped,
        "latent_field": field,
        "latent_shape": (lat.get("shape") if field == "latents" else
                         lat.get("shape", [])[:-1] + [lat["shape"][-1] // 2] if lat else None),
        "dtype": lat.get("dtype"), "vae": self.vae, "config_hash": self.config_hash,
        "inputs_hash": self.inputs_hash, "labels": self.labels,
        "clip": dict(self.job_cfg["clips"]), "store": self.job_cfg["store"],
        "repa": self.job_cfg.get("repa"), "text": self.job_cfg.get("text"),
    }


def _process_slice(cfg) -> tuple[int, int]:
  index, count = int(cfg.get("process_index", -1)), int(cfg.get("process_count", -1))
  if count <= 0:
    return jax.process_index(), jax.process_count()
  if index < 0:
    raise ValueError("config.process_index must be set when config.process_count is")
  return index, count


def job_config_dict(cfg) -> dict[str, Any]:
  """The parts of a prep config that determine the output (hashed into config_hash)."""
  codec = dict(cfg.codec)
  codec.pop("path", None)  # identity is the weights hash, recorded separately

  def model_part(c, on: bool):  # the checkpoint folder's name, not where it is mounted
    return dict(c, path=os.path.basename(os.path.normpath(str(c.path)))) if on else None
  return {"clips": dict(cfg.clips), "codec": codec, "store": str(cfg.store),
          "dtype": str(cfg.dtype), "seed": int(cfg.seed), "split": str(cfg.split),
          "eval_videos": int(cfg.eval_videos), "videos_per_shard": int(cfg.videos_per_shard),
          "repa": model_part(cfg.repa, bool(cfg.repa.get("path"))),
          "text": model_part(cfg.text, bool(cfg.text.get("kind"))),
          "tfds_fps": float(cfg.tfds.fps)}


def run_prep(cfg, input_spec: str, output: str, *, codec=None) -> dict[str, Any] | None:
  """Runs this process's part of the prep job described by `cfg` (configs/prep_video.py).
  Returns manifest.json's content once every shard is done, else None."""
  from vft.data.encode import BatchEncoder
  from vft.models.vae import make_codec
  spec = clips_lib.ClipSpec.from_config(cfg.clips)
  frames_fn = None
  if input_spec.startswith("tfds:"):
    from vft.data import tfds_videos
    t = cfg.tfds
    items, labels = tfds_videos.list_tfds(
        input_spec, data_dir=t.data_dir or None, video_key=t.video_key, label_key=t.label_key,
        caption_key=t.caption_key, id_key=t.id_key, limit=cfg.get("limit"))

    def frames_fn(item):
      frames, fps = tfds_videos.load_frames(item.path, data_dir=t.data_dir or None,
                                            video_key=t.video_key, default_fps=t.fps or None)
      stop = None if spec.max_seconds is None else spec.max_seconds
      return tfds_videos.resample(frames, fps, spec.fps, spec.size, spec.crop == "center",
                                  stop=stop)
  else:
    items, labels = sources.list_inputs(
        input_spec, label_from_dir=bool(cfg.label_from_dir),
        label_vocab=cfg.label_vocab or None, limit=cfg.get("limit"))
  codec = make_codec(cfg.codec) if codec is None else codec
  codec.latent_shape(spec.num_frames, spec.size, spec.size)  # validates the clip size
  job_cfg = job_config_dict(cfg)
  vae = codec_identity(codec, dict(cfg.codec))
  job_cfg["vae"] = vae
  repa = text = None
  if cfg.repa.get("path"):
    from vft.features import dinov2
    repa = dinov2.RepaFeatures.from_pretrained(
        cfg.repa.path, frames=str(cfg.repa.frames), time_factor=codec.time_factor,
        spatial_factor=codec.spatial_factor, patch=int(cfg.repa.get("patch", 1)),
        dtype=str(cfg.repa.dtype))
  if cfg.text.get("kind"):
    from vft.features import text as text_lib
    text = text_lib.TextEncoder.from_pretrained(
        cfg.text.path, kind=str(cfg.text.kind), max_length=int(cfg.text.max_length),
        dtype=str(cfg.text.dtype))
  encoder = BatchEncoder(codec, store=str(cfg.store), seed=int(cfg.seed),
                         batch_size=int(cfg.batch_size), dtype=str(cfg.dtype), repa=repa)
  index, count = _process_slice(cfg)
  job = PrepJob(items=items, labels=labels, output=output, spec=spec, encoder=encoder,
                job_cfg=job_cfg, vae=vae, text=text, split=str(cfg.split),
                eval_videos=int(cfg.eval_videos), videos_per_shard=int(cfg.videos_per_shard),
                seed=int(cfg.seed), process_index=index, process_count=count,
                progress=bool(cfg.progress), overwrite=bool(cfg.overwrite),
                max_shards=cfg.get("max_shards"), frames_fn=frames_fn)
  return finish_processes(job, job.run(), output, int(cfg.get("process_count", -1)) > 0)


def finish_processes(job: PrepJob, manifest: dict[str, Any] | None, output: str,
                     independent: bool) -> dict[str, Any] | None:
  """After `job.run()` in every jax process (unless the processes are `independent`, given
  explicit slices): a barrier, process 0 writes manifest.json, all return its content."""
  if jax.process_count() > 1 and not independent:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("vft_prep_shards_done")
    if jax.process_index() == 0:
      job.finalize()
    multihost_utils.sync_global_devices("vft_prep_manifest_written")
    manifest = json.loads((epath.Path(output) / MANIFEST_NAME).read_text())
  return manifest
