"""Official VideoFlexTok checkpoints <-> vft: config-driven import and export.

  model = load_official("model.safetensors")          # config from the file's __metadata__
  model = load_official("videoflextok_d18_d28/")      # hub form: config.json + model.safetensors
  model.tokenizer_cfg, model.params                   # VideoFlexTok(cfg), plain param tree
  model.vae_cfg, model.vae_params                     # the VidTok VAE (None if the file has none)
  export_official("out.safetensors", cfg, params, vae_cfg, vae_params)   # loads in PyTorch

The importer is the only place that knows the official module names: the embedded hydra config
is parsed (never executed) and translated into our `TokenizerConfig` (`official_config`), the
weights are mapped by rules derived from it (`official_tokenizer`, `vidtok_weights`), and every
tensor the model does not use is listed in `OfficialModel.report`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from vft.convert import official_config, official_tokenizer, safetensors_io
from vft.convert.official_config import HUB_PREFIX, Layout
from vft.models.config import TokenizerConfig

__all__ = ["OfficialModel", "ImportReport", "load_official", "export_official", "Layout"]

VAE_PREFIX = "vae.vidtok."  # the VAE's keys inside a VideoFlexTok state dict
_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


@dataclasses.dataclass
class ImportReport:
  unused_keys: list[str]  # tensors of the file that no parameter was taken from
  missing_keys: list[str]  # tensors the config implies but the file lacks (strict=False only)
  notes: list[str]  # everything else worth knowing (defaults used, quirks of the config)


@dataclasses.dataclass
class OfficialModel:
  tokenizer_cfg: TokenizerConfig | None  # None for a VAE-only file
  params: dict | None  # plain (unboxed, unscanned) tree for VideoFlexTok(tokenizer_cfg)
  vae_cfg: Any  # vft.models.vae.vidtok.VidTokConfig, or None when the file has no VAE
  vae_params: dict | None  # {"encoder": ..., "decoder": ...}
  chunking: dict | None  # hub form: chunk_size, overlap_size_frames, vae_video_sizes
  report: ImportReport
  hydra_config: dict | None = None  # the file's model config (pass it back to export_official)
  layout: Layout | None = None  # the official module names of this config


def _weights_file(path: str) -> str:
  if os.path.isdir(path):
    f = os.path.join(path, "model.safetensors")
    if not os.path.isfile(f):
      raise FileNotFoundError(f"{path}: a checkpoint directory needs a model.safetensors")
    return f
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such checkpoint: {path}")
  return path


def _dtype(dtype) -> np.dtype:
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]
  return np.dtype(dtype)


def load_official(path: str, *, config_path: str | None = None, dtype="float32",
                  strict: bool = True) -> OfficialModel:
  """Loads an official checkpoint.

  Args:
    path: a `.safetensors` file whose `__metadata__` holds the config, or a hub checkpoint
      (a directory with `model.safetensors` + `config.json`, or the file itself) whose config
      comes from `config.json` beside it or `config_path`. Keys may carry the hub's
      `video_tokenizer.` prefix.
    config_path: an explicit config (hub `config.json`, or a JSON/YAML VideoFlexTok config).
    dtype: dtype of the returned parameter arrays ("float32" or "bfloat16"); the stored dtype
      may be either.
    strict: with False, tokenizer tensors the config implies but the file lacks are listed in
      `report.missing_keys` and left out of `params` instead of raising.
  Returns: an OfficialModel; params are numpy arrays.
  """
  file = _weights_file(path)
  header = safetensors_io.read_header(file)
  src = official_config.find_config(file, header.metadata, config_path)
  tr = official_config.translate(src.model, src.where)
  tensors = safetensors_io.read_tensors(file)
  dt = _dtype(dtype)
  notes = list(src.notes) + list(tr.notes)
  prefix = HUB_PREFIX if any(k.startswith(HUB_PREFIX) for k in tensors) else ""
  if src.form == "hub" and not prefix:
    notes.append(f"{file}: hub config but no '{HUB_PREFIX}' key prefix; keys used as they are")

  used: set[str] = set()
  params, missing = None, []
  if tr.tokenizer is not None:
    params, used = official_tokenizer.tokenizer_from_state_dict(
        tensors, tr.tokenizer, tr.layout, prefix, dt, where=file, missing_ok=not strict)
    missing = sorted(prefix + r.key for r in official_tokenizer.rules(tr.tokenizer, tr.layout)
                     if prefix + r.key not in tensors)

  vae_cfg, vae_params = _load_vae(tensors, prefix + VAE_PREFIX if tr.tokenizer is not None
                                  else None, file, notes, used)
  if vae_params is not None:
    vae_params = _cast(vae_params, dt)
  unused = sorted(set(tensors) - used)
  return OfficialModel(tr.tokenizer, params, vae_cfg, vae_params, src.chunking,
                       ImportReport(unused, missing, notes), src.model, tr.layout)


def _load_vae(tensors, prefix, file, notes, used):
  """The VidTok VAE under `prefix` (None: find it, for VAE-only files); None if absent."""
  from vft.convert import vidtok_weights  # helper module owned with the VAE
  if prefix is None:
    try:
      prefix = vidtok_weights.find_prefix(tensors, where=file)
    except ValueError as e:
      raise ValueError(f"{file}: a VAE-only config but {e}") from None
  elif prefix + "encoder.conv_in.conv.weight" not in tensors:
    notes.append(f"{file}: no VAE weights under '{prefix}'; vae_cfg/vae_params are None")
    return None, None
  vae_cfg, vae_params, vae_used = vidtok_weights.vidtok_from_state_dict(tensors, prefix)
  used |= set(vae_used)
  return vae_cfg, vae_params


def _cast(tree, dt):
  if isinstance(tree, Mapping):
    return {k: _cast(v, dt) for k, v in tree.items()}
  return np.asarray(tree).astype(dt, copy=False)


def export_official(path: str, tokenizer_cfg: TokenizerConfig | None, params: Mapping | None,
                    vae_cfg=None, vae_params: Mapping | None = None, *, hub: bool = False,
                    hydra_config: Mapping | None = None, chunking: Mapping | None = None,
                    dtype="float32") -> str:
  """Writes our parameters in the official format; returns what `load_official` takes.

  Args:
    path: the `.safetensors` file (metadata form), or with `hub=True` a directory that gets
      `model.safetensors` (keys prefixed `video_tokenizer.`) and `config.json`.
    tokenizer_cfg, params: our model (params scanned or not, boxed or plain); None for a
      VAE-only file.
    vae_cfg, vae_params: the VidTok VAE. The PyTorch VideoFlexTok needs it to load strictly.
    hydra_config: the model config to embed, e.g. `OfficialModel.hydra_config` to keep the
      original module names and training entries; it must describe `tokenizer_cfg`. Default:
      the canonical config generated from `tokenizer_cfg`.
    chunking: hub form only: chunk_size, overlap_size_frames, vae_video_sizes (the release's
      defaults where missing).
    dtype: dtype of the written tensors.
  """
  dt = _dtype(dtype)
  tensors: dict[str, np.ndarray] = {}
  if tokenizer_cfg is None:
    if vae_cfg is None or vae_params is None:
      raise ValueError("export_official: nothing to export (no tokenizer and no VAE)")
    model_cfg = dict(hydra_config) if hydra_config is not None else _vae_only_config()
    vae_prefix = "vidtok."
  else:
    if params is None:
      raise ValueError("export_official: tokenizer_cfg given without params")
    model_cfg, layout = _hydra_for(tokenizer_cfg, hydra_config)
    tensors.update(official_tokenizer.tokenizer_to_state_dict(tokenizer_cfg, params, layout,
                                                              dtype=dt))
    vae_prefix = VAE_PREFIX
  if vae_cfg is not None:
    if vae_params is None:
      raise ValueError("export_official: vae_cfg given without vae_params")
    from vft.convert import vidtok_weights
    vae = vidtok_weights.vidtok_to_state_dict(vae_cfg, vae_params, vae_prefix)
    tensors.update({k: v.astype(dt, copy=False) for k, v in vae.items()})
  elif vae_params is not None:
    raise ValueError("export_official: vae_params given without vae_cfg")

  if not hub:
    return safetensors_io.write_file(path, tensors, official_config.to_metadata(model_cfg))
  os.makedirs(path, exist_ok=True)
  safetensors_io.write_file(os.path.join(path, "model.safetensors"),
                            {HUB_PREFIX + k: v for k, v in tensors.items()}, {"format": "pt"})
  hub_cfg = {"video_flex_tok": model_cfg, **official_config.HUB_DEFAULTS, **dict(chunking or {})}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hub_cfg, f, indent=2)
  return path


def _hydra_for(cfg: TokenizerConfig, hydra_config: Mapping | None):
  if hydra_config is None:
    return official_config.to_hydra(cfg), Layout()
  tr = official_config.translate(hydra_config, "hydra_config")
  if tr.tokenizer is None:
    raise ValueError("export_official: hydra_config is a VAE-only config")
  want, got = official_config.canonical(cfg), official_config.canonical(tr.tokenizer)
  diff = [f.name for f in dataclasses.fields(want) if getattr(want, f.name) != getattr(got, f.name)]
  if diff:
    raise ValueError(f"export_official: hydra_config does not describe tokenizer_cfg (fields "
                     f"{diff} differ); pass hydra_config=None to generate one")
  return dict(hydra_config), tr.layout


def _vae_only_config() -> dict:
  return {"_target_": official_config.VAE_TARGET, "images_read_key": "rgb",
          "vae_latents_read_key": "vae_latents_reconst", "vae_latents_write_key": "vae_latents",
          "images_reconst_write_key": "rgb_reconst", "tokenizer_id": official_config.VIDTOK_ID}
