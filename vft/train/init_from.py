"""Initial parameters of a later training stage (the decoder fine-tune) from a stage-1 workdir
of ours or an official safetensors file.

`config.init.workdir`: its `config.json` gives the stage-1 model, its latest (or
`config.init.step`) orbax checkpoint the parameters (the EMA ones if saved and
`config.init.use_ema`), restored straight into this run's shardings (only the parameters are
read). `config.init.official`: `vft.convert.load_official(path)`.

The source model must equal `config.model` except for the fields a later stage may change
(`STAGE_FIELDS`: decoder mask, prefix masking, compute settings, REPA head). Parameters the
source lacks because of those changes (the prefix-mask token, a new REPA head) keep their fresh
initialisation; source parameters this model has no place for (a dropped REPA head) are
skipped; both are listed in the report. Anything else missing or unused, or a shape mismatch, is
an error naming the key.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

from etils import epath
from flax import traverse_util
import jax
import numpy as np

from vft import checkpoint as ckpt_lib
from vft import files
from vft.models.config import TokenizerConfig

# Fields of config.model that may differ between the source and this run.
STAGE_FIELDS = ("dec_mask", "prefix_masking", "dtype", "attention_impl", "remat", "remat_policy",
                "repa_layer", "repa_depth", "repa_dim")
_PREFIX_TOKEN = "decoder/prefix_mask_token"
_REPA = "decoder/repa_head/"
_SCANNED = re.compile(r"^(.*/transformer/)blocks/block(/.*)$")
_UNSCANNED = re.compile(r"^(.*/transformer/)blocks_(\d+)(/.*)$")


@dataclasses.dataclass
class InitReport:
  source: str  # "workdir:<path>" or "official:<path>"
  step: int | None  # checkpoint step (workdir sources)
  subtree: str  # "params" / "ema_params" (workdir) or "official"
  loaded: int  # number of parameter arrays taken from the source
  initialised: list[str]  # freshly initialised (absent from the source)
  skipped: list[str]  # in the source, no place in this model
  notes: list[str] = dataclasses.field(default_factory=list)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def source(config) -> tuple[str, str] | None:
  """("workdir" | "official", path) from `config.init`, or None."""
  init = config.get("init", None)
  if init is None:
    return None
  workdir, official = str(init.get("workdir", "") or ""), str(init.get("official", "") or "")
  if workdir and official:
    raise ValueError(f"config.init: set one of workdir ({workdir!r}) and official "
                     f"({official!r}), not both")
  if workdir:
    return "workdir", workdir
  if official:
    return "official", official
  return None


def check(config, run_workdir: str, dst_cfg: TokenizerConfig) -> tuple[str, str] | None:
  """Cheap checks of `config.init` before anything is built (a fresh run): one source at most,
  not the run's own workdir, a source whenever parameters are frozen, and for a workdir its
  config.json (model compatible) and a checkpoint. -> `source(config)`."""
  src = source(config)
  pattern = str(config.train.get("trainable_params", "") or "")
  if src is None:
    if pattern:
      raise ValueError(f"config.train.trainable_params={pattern!r} freezes the other parameters, "
                       "but config.init names no checkpoint to take them from (set "
                       "config.init.workdir or config.init.official)")
    return None
  if files.absolute(src[1]) == files.absolute(run_workdir):
    raise ValueError(f"config.init.{src[0]}={src[1]!r} is this run's own workdir; fine-tune into "
                     "a new workdir")
  if src[0] == "workdir":
    _workdir_source(config, dst_cfg)
  elif not os.path.isfile(src[1]):
    raise FileNotFoundError(f"config.init.official={src[1]!r}: no such file (download the "
                            "official safetensors first)")
  return src


def _workdir_source(config, dst_cfg: TokenizerConfig):
  """-> (workdir, what, src_cfg, step, state metadata tree), checked."""
  workdir = os.fspath(files.absolute(str(config.init.workdir)))
  what = f"config.init.workdir={config.init.workdir!r}"
  stage1 = _read_json_config(workdir)
  if "model" not in stage1:
    raise ValueError(f"{what}: {workdir}/config.json has no 'model' section")
  src_cfg = TokenizerConfig.from_config(stage1["model"])
  if src_cfg.scan != dst_cfg.scan:
    raise ValueError(f"{what}: the source was trained with model.scan={src_cfg.scan}; set "
                     f"config.model.scan={src_cfg.scan} (the parameter layouts differ)")
  check_compatible(src_cfg, dst_cfg, what)
  try:
    step, meta = ckpt_lib.state_metadata(os.path.join(workdir, "checkpoints"),
                                         config.init.get("step", None))
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{what}: {e}; train stage 1 there first (`vft train`)") from e
  return workdir, what, src_cfg, step, meta


def check_compatible(src: TokenizerConfig, dst: TokenizerConfig, what: str) -> None:
  diff = {f.name: (getattr(src, f.name), getattr(dst, f.name))
          for f in dataclasses.fields(TokenizerConfig)
          if f.name not in STAGE_FIELDS and getattr(src, f.name) != getattr(dst, f.name)}
  if diff:
    lines = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in sorted(diff.items()))
    raise ValueError(f"config.model does not match the model of {what}: {lines}. Only "
                     f"{list(STAGE_FIELDS)} may change between stages")


def _match(src: dict[str, Any], dst: dict[str, Any], src_cfg: TokenizerConfig,
           dst_cfg: TokenizerConfig, what: str) -> tuple[list[str], list[str], list[str]]:
  """-> (loaded, initialised, skipped) paths; errors for anything else."""
  new_ok = lambda p: ((p == _PREFIX_TOKEN and not src_cfg.prefix_masking)  # noqa: E731
                      or (p.startswith(_REPA) and src_cfg.repa_layer is None))
  loaded, initialised, missing = [], [], []
  for path, leaf in dst.items():
    if path in src:
      if tuple(src[path].shape) != tuple(leaf.shape):
        raise ValueError(f"{what}: parameter {path} has shape {tuple(src[path].shape)}, this "
                         f"model expects {tuple(leaf.shape)}")
      loaded.append(path)
    elif new_ok(path):
      initialised.append(path)
    else:
      missing.append(path)
  skipped = [p for p in src if p not in dst and p.startswith(_REPA) and dst_cfg.repa_layer is None]
  unused = [p for p in src if p not in dst and p not in skipped]
  if missing or unused:
    raise ValueError(f"{what}: parameters missing from the source: {missing[:8]}"
                     f"{' ...' if len(missing) > 8 else ''}; source parameters with no place in "
                     f"this model: {unused[:8]}{' ...' if len(unused) > 8 else ''}")
  return loaded, initialised, skipped


def _read_json_config(workdir: str) -> dict:
  path = epath.Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"config.init.workdir={workdir!r}: no {path} (a workdir of "
                            "`vft train` holds config.json and checkpoints/)")
  return json.loads(path.read_text())


def from_workdir(config, fresh: dict, dst_cfg: TokenizerConfig) -> tuple[dict, InitReport]:
  """fresh: this run's newly initialised params (sharded jax arrays) -> (params, report)."""
  workdir, what, src_cfg, step, meta = _workdir_source(config, dst_cfg)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  use_ema = bool(config.init.get("use_ema", True)) and meta.get("ema_params") is not None
  subtree = "ema_params" if use_ema else "params"
  src = traverse_util.flatten_dict(meta[subtree], sep="/")
  dst = traverse_util.flatten_dict(fresh, sep="/")
  loaded, initialised, skipped = _match(src, dst, src_cfg, dst_cfg, what)
  target = {subtree: traverse_util.unflatten_dict(
      {p: jax.ShapeDtypeStruct(dst[p].shape, dst[p].dtype, sharding=dst[p].sharding)
       for p in loaded}, sep="/")}
  restored = traverse_util.flatten_dict(
      ckpt_lib.restore_state_subtree(ckpt_dir, step, target)[subtree], sep="/")
  params = traverse_util.unflatten_dict(
      {p: restored[p] if p in restored else dst[p] for p in dst}, sep="/")
  return params, InitReport(f"workdir:{workdir}", step, subtree, len(loaded), initialised,
                            skipped)


def _to_layout(src: dict[str, np.ndarray], dst_paths) -> dict[str, np.ndarray]:
  """Stacks `.../transformer/blocks_i/...` into scanned `.../transformer/blocks/block/...`
  (leading layers axis) or splits them, wherever `dst_paths` has the other layout."""
  dst_paths = set(dst_paths)
  out, stacks = {}, {}
  for path, v in src.items():
    m_un, m_sc = _UNSCANNED.match(path), _SCANNED.match(path)
    if path in dst_paths or not (m_un or m_sc):
      out[path] = v
    elif m_un and f"{m_un.group(1)}blocks/block{m_un.group(3)}" in dst_paths:
      stacks.setdefault(f"{m_un.group(1)}blocks/block{m_un.group(3)}", {})[int(m_un.group(2))] = v
    elif m_sc and f"{m_sc.group(1)}blocks_0{m_sc.group(2)}" in dst_paths:
      for i, layer in enumerate(np.asarray(v)):
        out[f"{m_sc.group(1)}blocks_{i}{m_sc.group(2)}"] = layer
    else:
      out[path] = v
  for path, layers in stacks.items():
    out[path] = np.stack([np.asarray(layers[i]) for i in sorted(layers)])
  return out


def from_official(config, fresh: dict, dst_cfg: TokenizerConfig) -> tuple[dict, InitReport]:
  path = str(config.init.official)
  what = f"config.init.official={path!r}"
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what}: no such file (download the official safetensors first)")
  from vft.convert import load_official  # noqa: PLC0415 (heavy; only this path needs it)
  official = load_official(path)
  src_cfg = official.tokenizer_cfg
  if not isinstance(src_cfg, TokenizerConfig):
    src_cfg = TokenizerConfig.from_config(src_cfg)
  check_compatible(dataclasses.replace(src_cfg, scan=dst_cfg.scan), dst_cfg, what)
  dst = traverse_util.flatten_dict(fresh, sep="/")
  src = _to_layout({p: np.asarray(v) for p, v in
                    traverse_util.flatten_dict(official.params, sep="/").items()}, dst)
  loaded, initialised, skipped = _match(src, dst, src_cfg, dst_cfg, what)

  def place(p):
    value = np.asarray(src[p], dst[p].dtype)
    return jax.make_array_from_callback(value.shape, dst[p].sharding, lambda idx: value[idx])

  params = traverse_util.unflatten_dict({p: place(p) if p in src else dst[p] for p in dst},
                                        sep="/")
  notes = list(official.report.notes)
  if official.report.unused_keys:
    notes.append(f"{len(official.report.unused_keys)} tensors of the file unused by the "
                 f"importer: {official.report.unused_keys[:8]}")
  return params, InitReport(f"official:{os.path.abspath(path)}", None, "official", len(loaded),
                            initialised, skipped, notes)


def initial_params(config, fresh: dict, dst_cfg: TokenizerConfig
                   ) -> tuple[dict, InitReport] | None:
  """The params to start from per `config.init` (None when it names no source)."""
  src = source(config)
  if src is None:
    return None
  return (from_workdir if src[0] == "workdir" else from_official)(config, fresh, dst_cfg)
