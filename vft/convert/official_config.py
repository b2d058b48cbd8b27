"""The release's hydra config: both stored forms, and its translation to our `TokenizerConfig`.

Forms (nothing from either is executed or imported; `_target_`s are only compared to names):
  * metadata: a safetensors `__metadata__` with one entry per top-level key of the VideoFlexTok
    config, each a Python repr parsed as YAML after `None` -> `null` (the release's loader);
  * hub: a `config.json` `{video_flex_tok: <config>, chunk_size, overlap_size_frames,
    vae_video_sizes[, video_preprocess_args]}` whose weights carry the `video_tokenizer.` prefix.

`translate` walks the encoder and decoder `module_dict`s in execution order and follows the data
dict keys (`read_key` -> `write_key`) so that each official module is identified by what it
reads, not by its name; whatever our modules cannot express is a ValueError naming the module.
`to_hydra` is the inverse: the canonical config (module names as in the release) of a
`TokenizerConfig`, so a model trained here loads in the PyTorch code.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import yaml

from vft.models.config import REGISTER_OPS, TokenizerConfig
from vft.models.masks import MASK_MODES

_P = "videoflextok."
ALLOWED_TARGETS = frozenset(_P + t for t in (
    "wrappers.VideoFlexTok",
    "flow_matching.pipelines.VideoMinRFPipeline",
    "flow_matching.noise_modules.PrefixMinRFNoiseModule",
    "flow_matching.noise_modules.MinRFNoiseModule",
    "resamplers.video_wrappers.VideoFlowMatchingResampler",
    "compressors.vidtok.VidTokVAE",
    "model.utils.wrappers.SequentialModuleDictWrapper",
    "model.utils.posembs.PositionalEmbeddingAdder",
    "model.utils.dict_ops.PerSampleOp",
    "model.utils.dict_ops.channels_first_to_last",
    "model.utils.dict_ops.channels_last_to_first",
    "model.trunks.transformers.FlexTransformer",
    "model.preprocessors.token_dropout.MaskedNestedDropout",
    "model.preprocessors.token_dropout.MaskedPrefixDropout",
    "model.preprocessors.time_embedding.TimestepEmbedder",
    "model.preprocessors.registers.RegistersTemporal2D",
    "model.preprocessors.patching.PatchEmbedder",
    "model.preprocessors.nullcond.LearnedNullCond",
    "model.preprocessors.linear.LinearLayer",
    "model.preprocessors.flex_seq_packing.BlockWiseSequenceInterleavePacker",
    "model.postprocessors.seq_unpacking.SequenceInterleavedUnpacker",
    "model.postprocessors.heads.LinearHead",
    "model.postprocessors.heads.TransformerHead",
    "model.postprocessors.heads.ToPatchesLinearHead",
    "regularizers.quantize_fsq.FSQ",
))
ROOT_TARGETS = (_P + "wrappers.VideoFlexTok",
                _P + "resamplers.video_wrappers.VideoFlowMatchingResampler")
VAE_TARGET = _P + "compressors.vidtok.VidTokVAE"
VIDTOK_ID = "vidtok_kl_causal_488_16chn"
HUB_PREFIX = "video_tokenizer."
# The release's hub defaults (VideoFlexTokFromHub) for a config.json that omits them.
HUB_DEFAULTS = {"chunk_size": 17, "overlap_size_frames": 1, "vae_video_sizes": [5, 32, 32]}
# TokenizerConfig fields that describe how we run a model, not what the file holds.
RUNTIME_FIELDS = ("posemb_init_std", "dtype", "attention_impl", "scan", "remat", "remat_policy",
                  "x_pred_t_min")


def short(target: str) -> str:
  return target.rsplit(".", 1)[-1]


# ---------------------------------------------------------------------------- reading the forms
def parse_metadata(metadata: Mapping[str, str]) -> dict:
  """`__metadata__` strings -> values: YAML of the Python repr with `None` -> `null` (the
  release's `safe_parse_metadata`); a value YAML cannot parse stays a string."""
  out = {}
  for k, v in metadata.items():
    try:
      out[k] = yaml.safe_load(v.replace("None", "null"))
    except yaml.YAMLError:
      out[k] = v
  return out


def check_targets(cfg: Any, where: str) -> None:
  """Every `_target_` anywhere in `cfg` must be one of the release's allowed targets."""
  def walk(node, path):
    if isinstance(node, Mapping):
      for k, v in node.items():
        if k == "_target_":
          if not isinstance(v, str) or v not in ALLOWED_TARGETS:
            raise ValueError(f"{where}: unknown _target_ {v!r} at {path or '<root>'}; vft knows "
                             f"only the release's targets ({len(ALLOWED_TARGETS)} names, e.g. "
                             f"{_P}model.trunks.transformers.FlexTransformer)")
        else:
          walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, (list, tuple)):
      for i, v in enumerate(node):
        walk(v, f"{path}[{i}]")
  walk(cfg, "")


@dataclasses.dataclass
class ConfigSource:
  """The model config found for a checkpoint."""
  model: dict  # the VideoFlexTok (or VidTokVAE) hydra config
  chunking: dict | None  # hub form: chunk_size, overlap_size_frames, vae_video_sizes, ...
  form: str  # "metadata" or "hub"
  where: str  # file the config came from
  notes: list[str] = dataclasses.field(default_factory=list)


def _from_mapping(d: Mapping, where: str, form: str) -> ConfigSource:
  if not isinstance(d, Mapping):
    raise ValueError(f"{where}: the model config must be a mapping, got {type(d).__name__}")
  if "video_flex_tok" in d:
    model, notes, chunking = d["video_flex_tok"], [], {}
    for k, default in HUB_DEFAULTS.items():
      if k in d:
        chunking[k] = d[k]
      else:
        chunking[k] = default
        notes.append(f"{where}: no {k!r}; using the release's default {default!r}")
    if "video_preprocess_args" in d:
      chunking["video_preprocess_args"] = d["video_preprocess_args"]
    if not isinstance(model, Mapping):
      raise ValueError(f"{where}: 'video_flex_tok' must be a mapping")
    return ConfigSource(dict(model), chunking, "hub", where, notes)
  if "_target_" not in d:
    raise ValueError(f"{where}: no model config (expected a '_target_' key or a hub "
                     f"'video_flex_tok' entry; found keys {sorted(d)[:12]})")
  return ConfigSource(dict(d), None, form, where)


def load_config_file(path: str) -> ConfigSource:
  """A hub `config.json` (or a JSON/YAML file holding the VideoFlexTok config itself)."""
  with open(path) as f:
    text = f.read()
  try:
    d = json.loads(text)
  except json.JSONDecodeError:
    try:
      d = yaml.safe_load(text)
    except yaml.YAMLError as e:
      raise ValueError(f"{path}: neither JSON nor YAML ({e})") from None
  return _from_mapping(d, path, "hub")


def find_config(weights_path: str, metadata: Mapping[str, str],
                config_path: str | None = None) -> ConfigSource:
  """The model config of `weights_path`: `config_path` if given, else the safetensors
  `__metadata__` when it holds one, else a `config.json` beside the file."""
  if config_path is not None:
    src = load_config_file(config_path)
  else:
    parsed = parse_metadata(metadata)
    if "_target_" in parsed or "video_flex_tok" in parsed:
      src = _from_mapping(parsed, f"{weights_path} (__metadata__)", "metadata")
    else:
      beside = os.path.join(os.path.dirname(os.path.abspath(weights_path)), "config.json")
      if not os.path.isfile(beside):
        raise ValueError(f"{weights_path}: no model config: the safetensors __metadata__ has "
                         f"no '_target_' and there is no {beside}; pass config_path=")
      src = load_config_file(beside)
  check_targets(src.model, src.where)
  return src


# ---------------------------------------------------------------------------- translation
@dataclasses.dataclass(frozen=True)
class Layout:
  """The official module names (module_dict keys) of each piece of our model. The defaults are
  the release's names; `translate` reads the actual ones from a config."""
  enc_patch_emb: str = "enc_patch_emb"
  enc_posemb: str = "enc_posemb_module"
  enc_registers: str = "enc_register_module"
  enc_transformer: str = "enc_transformer"
  enc_to_latents: str = "enc_to_latents"
  dec_from_latents: str = "dec_from_latents"
  dec_registers_posemb: str = "dec_registers_posemb_module"
  dec_nested_dropout: str = "dec_nested_dropout"
  dec_prefix_masking: str = "dec_prefix_masking"
  dec_null_cond: str = "dec_latent_dropout"
  dec_patch_emb: str = "dec_noise_patch_emb"
  dec_posemb: str = "dec_patches_posemb_module"
  dec_time_embedder: str = "dec_time_embedder"
  dec_transformer: str = "dec_transformer"
  dec_to_patches: str = "dec_to_patches"
  dec_repa_head: str = "dec_repa_head"


@dataclasses.dataclass
class Translation:
  tokenizer: TokenizerConfig | None  # None for a VAE-only config
  layout: Layout | None
  vae: dict | None  # the VidTokVAE config entry (its widths come from the weights)
  notes: list[str]


def _get(m: Mapping, key: str, where: str, default: Any = dataclasses.MISSING):
  if key in m and m[key] is not None:
    return m[key]
  if default is dataclasses.MISSING:
    raise ValueError(f"{where}: missing required entry {key!r}")
  return default


def _expect(m: Mapping, key: str, want: Any, default: Any, where: str) -> None:
  got = m.get(key, default)
  if got != want:
    raise ValueError(f"{where}: {key}={got!r} is not supported by vft (needs {want!r})")


def _module_dict(cfg: Mapping, part: str, where: str) -> dict:
  wrapper = _get(cfg, part, where)
  if short(wrapper.get("_target_", "")) != "SequentialModuleDictWrapper":
    raise ValueError(f"{where}.{part}: expected a SequentialModuleDictWrapper, got "
                     f"{wrapper.get('_target_')!r}")
  md = _get(wrapper, "module_dict", f"{where}.{part}")
  if not isinstance(md, Mapping) or not md:
    raise ValueError(f"{where}.{part}.module_dict: must be a non-empty mapping")
  return dict(md)


def _trunk(m: Mapping, where: str) -> dict:
  """Checks a FlexTransformer/TransformerHead has the release's fixed block type."""
  for key, want, default in (("mlp_ratio", 4.0, 4.0), ("qkv_bias", False, False),
                             ("proj_bias", False, False), ("mlp_bias", False, False),
                             ("gated_mlp", True, True), ("qk_norm", True, True),
                             ("rope_forward_read_key", None, None),
                             ("score_mod_read_key", None, None), ("use_mup_readout", False, False)):
    _expect(m, key, want, default, where)
  return dict(dim=int(_get(m, "dim", where, 768)), depth=int(_get(m, "depth", where, 12)),
              head_dim=int(_get(m, "head_dim", where, 64)))


def _posemb(m: Mapping, where: str, ndim: int) -> dict:
  kind = m.get("posemb_type", "sincos")
  sizes = [int(s) for s in _get(m, "max_sizes", where)]
  if len(sizes) != ndim:
    raise ValueError(f"{where}: max_sizes {sizes} must have {ndim} entries")
  _expect(m, "posemb_scaling", "absolute", "absolute", where)
  if kind in ("learnable_sum", "learnable_prod") and len(set(sizes)) != 1:
    raise ValueError(f"{where}: learnable posembs need equal max_sizes, got {sizes}")
  return dict(kind=kind, sizes=sizes, dim=int(_get(m, "dim", where)))


class _Keys:
  """Data-dict keys -> what they hold: (kind, ops applied so far)."""

  def __init__(self, where: str):
    self.where, self.roles = where, {}

  def set(self, key, kind, ops=()):
    self.roles[key] = (kind, tuple(ops))

  def need(self, key, kind, who):
    role = self.roles.get(key)
    if role is None or role[0] != kind:
      raise ValueError(f"{self.where}.module_dict.{who}: reads {key!r}, which holds "
                       f"{role[0] if role else 'nothing yet'}; vft expects {kind} there")
    return role


def _translate_encoder(md: dict, latents_key: str, where: str
                       ) -> tuple[dict, dict, "_Keys"]:
  keys, f, names = _Keys(where), {}, {}
  keys.set(latents_key, "vae latents (channels-first)")
  for name, m in md.items():
    w, t = f"{where}.module_dict.{name}", short(m.get("_target_", ""))
    if t == "PerSampleOp":
      op = short(_get(m, "per_sample_op", w).get("_target_", ""))
      if op != "channels_first_to_last":
        raise ValueError(f"{w}: per_sample_op {op!r} is not supported in the encoder")
      keys.need(_get(m, "read_key", w), "vae latents (channels-first)", name)
      keys.set(_get(m, "write_key", w), "vae latents")
    elif t == "PatchEmbedder":
      keys.need(_get(m, "input_tensor_list_read_key", w), "vae latents", name)
      _expect(m, "flatten_patches", False, True, w)
      f.update(patch_size=tuple(int(p) for p in _get(m, "patch_sizes", w)),
               latent_channels=int(_get(m, "channels_in", w)), patch_dim=int(_get(m, "dim", w)))
      if len(f["patch_size"]) != 3:
        raise ValueError(f"{w}: patch_sizes {list(f['patch_size'])} must be [pt, ph, pw]")
      keys.set(_get(m, "patches_list_write_key", w), "patches")
      names["enc_patch_emb"] = name
    elif t == "PositionalEmbeddingAdder":
      _, ops = keys.need(_get(m, "read_key", w), "patches", name)
      if ops:
        raise ValueError(f"{w}: a second positional embedding on the encoder patches")
      pe = _posemb(m, w, 3)
      if pe["kind"] not in ("learnable_sum", "learnable_prod"):
        raise ValueError(f"{w}: posemb_type {pe['kind']!r} cannot embed a 3D patch grid")
      f.update(enc_posemb=pe)
      keys.set(_get(m, "write_key", w), "patches", ("posemb",))
      names["enc_posemb"] = name
    elif t == "RegistersTemporal2D":
      keys.need(_get(m, "input_tensor_list_read_key", w), "patches", name)
      n_max = int(_get(m, "n_max", w))
      if m.get("n_eval") not in (None, n_max):
        raise ValueError(f"{w}: n_eval={m['n_eval']} != n_max={n_max} is not supported")
      _expect(m, "ordering_mode", "nested", "nested", w)
      _expect(m, "extra_registers_write_key", None, None, w)
      f.update(num_registers=n_max, max_latent_frames=int(_get(m, "t_max", w)),
               reg_dim=int(_get(m, "dim", w)))
      keys.set(_get(m, "registers_write_key", w), "registers")
      names["enc_registers"] = name
    elif t == "BlockWiseSequenceInterleavePacker":
      _packer_inputs(m, w, keys, name, "encoder")
      f["enc_mask"] = _mask_mode(m, w)
      f["enc_block_mask_key"] = m.get("block_mask_write_key")
      keys.set(_get(m, "packed_seq_write_key", w), "sequence")
    elif t == "FlexTransformer":
      keys.need(_get(m, "input_seq_read_key", w), "sequence", name)
      tr = _trunk(m, w)
      _expect(m, "adaLN_emb_read_key", None, None, w)
      if m.get("block_mask_read_key") != f.get("enc_block_mask_key"):
        raise ValueError(f"{w}: block_mask_read_key {m.get('block_mask_read_key')!r} is not the "
                         f"packer's mask {f.get('enc_block_mask_key')!r}")
      if m.get("intermediate_layer_write_key"):
        raise ValueError(f"{w}: intermediate layer outputs are not supported in the encoder")
      f.update(enc_width=tr["dim"], enc_depth=tr["depth"], enc_head_dim=tr["head_dim"])
      keys.set(_get(m, "output_seq_write_key", w), "trunk output")
      names["enc_transformer"] = name
    elif t == "SequenceInterleavedUnpacker":
      keys.need(_get(m, "packed_seq_read_key", w), "trunk output", name)
      outs = list(_get(m, "inner_seq_write_keys", w))
      if len(outs) != 2:
        raise ValueError(f"{w}: inner_seq_write_keys {outs} must be [patches, registers]")
      keys.set(outs[0], "output patches")
      keys.set(outs[1], "output registers")
    elif t == "LinearHead":
      keys.need(_get(m, "read_key", w), "output registers", name)
      _head_checks(m, w, adaln=False)
      f.update(code_dim=int(_get(m, "dim_out", w)), head_dim_in=int(_get(m, "dim", w)))
      keys.set(_get(m, "write_key", w), "encoder latents")
      names["enc_to_latents"] = name
    else:
      raise ValueError(f"{w}: {m.get('_target_')!r} is not supported in the encoder")
  return f, names, keys


def _packer_inputs(m: Mapping, where: str, keys: _Keys, name: str, side: str) -> tuple:
  """Checks a sequence packer reads [patches (with one posemb), registers]; -> the ops applied
  to the registers on their way there."""
  ins = list(_get(m, "input_list_read_keys", where))
  if len(ins) != 2:
    raise ValueError(f"{where}: input_list_read_keys {ins} must be [patches, registers]")
  _, pops = keys.need(ins[0], "patches", name)
  _, rops = keys.need(ins[1], "registers", name)
  if pops != ("posemb",):
    raise ValueError(f"{where}: the {side} patches must carry one positional embedding")
  return rops


def _mask_mode(m: Mapping, where: str) -> str:
  mode = m.get("mask_mode", "full")
  if mode not in MASK_MODES:
    raise ValueError(f"{where}: mask_mode {mode!r} is not supported (vft has {MASK_MODES})")
  return mode


def _head_checks(m: Mapping, where: str, adaln: bool) -> None:
  _expect(m, "use_mup_readout", False, False, where)
  _expect(m, "proj_bias", True, True, where)
  if "norm_layer" in m:
    raise ValueError(f"{where}: a custom norm_layer is not supported")
  if adaln:
    if not m.get("adaLN_emb_read_key"):
      raise ValueError(f"{where}: vft's output head needs adaLN (adaLN_emb_read_key)")
    _expect(m, "adaLN_bias", True, True, where)
  else:
    _expect(m, "adaLN_emb_read_key", None, None, where)


def _translate_decoder(md: dict, quants_key: str, noised_key: str, t_key: str, where: str
                       ) -> tuple[dict, dict, list[str]]:
  keys, f, names, notes = _Keys(where), {}, {}, []
  keys.set(quants_key, "FSQ codes")
  keys.set(noised_key, "noised latents (channels-first)")
  keys.set(t_key, "timesteps")
  for name, m in md.items():
    w, t = f"{where}.module_dict.{name}", short(m.get("_target_", ""))
    if t == "LinearLayer":
      keys.need(_get(m, "read_key", w), "FSQ codes", name)
      _expect(m, "proj_bias", True, True, w)
      f.update(code_dim_in=int(_get(m, "dim_in", w)), from_latents_dim=int(_get(m, "dim", w)))
      keys.set(_get(m, "write_key", w), "registers")
      names["dec_from_latents"] = name
    elif t in ("MaskedNestedDropout", "MaskedPrefixDropout", "LearnedNullCond"):
      key = _get(m, "read_write_key", w)
      _, ops = keys.need(key, "registers", name)
      op = {"MaskedNestedDropout": "nested_dropout", "MaskedPrefixDropout": "prefix_mask",
            "LearnedNullCond": "null_cond"}[t]
      if op in ops:
        raise ValueError(f"{w}: a second {t} on the registers")
      if t == "LearnedNullCond":
        _expect(m, "replace_with_single_token", False, False, w)
        names["dec_null_cond"] = name
      elif t == "MaskedNestedDropout":
        names["dec_nested_dropout"] = name
        if name != "dec_nested_dropout":
          notes.append(f"{w}: the release's detokenize finds the nested dropout by the name "
                       f"'dec_nested_dropout'; with {name!r} it cannot apply keep-k")
      else:
        names["dec_prefix_masking"] = name
        if name != "dec_prefix_masking":
          notes.append(f"{w}: the release's decode masks conditioning frames only through a "
                       f"module named 'dec_prefix_masking'; this one is never used there")
      keys.set(key, "registers", ops + (op,))
    elif t == "PositionalEmbeddingAdder":
      kind, ops = keys.roles.get(_get(m, "read_key", w), (None, ()))
      if kind == "registers":
        if "posemb" in ops:
          raise ValueError(f"{w}: a second positional embedding on the registers")
        pe = _posemb(m, w, 2)
        if pe["kind"] not in ("learnable_sum", "learnable_prod", "sincos"):
          raise ValueError(f"{w}: posemb_type {pe['kind']!r} is not supported")
        f["reg_posemb"] = pe
        keys.set(_get(m, "write_key", w), "registers", ops + ("posemb",))
        names["dec_registers_posemb"] = name
      elif kind == "patches":
        if ops:
          raise ValueError(f"{w}: a second positional embedding on the decoder patches")
        pe = _posemb(m, w, 3)
        if pe["kind"] not in ("learnable_sum", "learnable_prod"):
          raise ValueError(f"{w}: posemb_type {pe['kind']!r} cannot embed a 3D patch grid")
        f["dec_posemb"] = pe
        keys.set(_get(m, "write_key", w), "patches", ("posemb",))
        names["dec_posemb"] = name
      else:
        keys.need(_get(m, "read_key", w), "registers or patches", name)
    elif t == "PerSampleOp":
      op = short(_get(m, "per_sample_op", w).get("_target_", ""))
      if op == "channels_first_to_last":
        keys.need(_get(m, "read_key", w), "noised latents (channels-first)", name)
        keys.set(_get(m, "write_key", w), "noised latents")
      elif op == "channels_last_to_first":
        keys.need(_get(m, "read_key", w), "velocity (channels-last)", name)
        keys.set(_get(m, "write_key", w), "velocity")
        f["out_key"] = _get(m, "write_key", w)
      else:
        raise ValueError(f"{w}: per_sample_op {op!r} is not supported in the decoder")
    elif t == "PatchEmbedder":
      keys.need(_get(m, "input_tensor_list_read_key", w), "noised latents", name)
      _expect(m, "flatten_patches", False, True, w)
      f.update(dec_patch_size=tuple(int(p) for p in _get(m, "patch_sizes", w)),
               dec_channels_in=int(_get(m, "channels_in", w)), dec_patch_dim=int(_get(m, "dim", w)))
      keys.set(_get(m, "patches_list_write_key", w), "patches")
      names["dec_patch_emb"] = name
    elif t == "TimestepEmbedder":
      keys.need(_get(m, "timesteps_read_key", w), "timesteps", name)
      _expect(m, "frequency_embedding_size", 256, 256, w)
      _expect(m, "temb_as_tokens", False, False, w)
      f.update(max_timestep=float(m.get("max_timestep", 1000.0)),
               temb_dim=int(_get(m, "dim", w)))
      keys.set(_get(m, "time_embedding_write_key", w), "time embedding")
      f["temb_key"] = _get(m, "time_embedding_write_key", w)
      names["dec_time_embedder"] = name
    elif t == "BlockWiseSequenceInterleavePacker":
      rops = _packer_inputs(m, w, keys, name, "decoder")
      f.update(dec_mask=_mask_mode(m, w), register_ops=rops,
               dec_block_mask_key=m.get("block_mask_write_key"),
               emb_packing_key=m.get("emb_packing_fn_write_key"),
               per_subseq_embs=bool(m.get("per_subseq_embs", False)),
               repa_mask_key=m.get("repa_block_mask_write_key"),
               repa_mask_mode=m.get("repa_mask_mode", "time_block_causal"))
      _expect(m, "repa_patch_index", 0, 0, w)
      keys.set(_get(m, "packed_seq_write_key", w), "sequence")
    elif t == "FlexTransformer":
      keys.need(_get(m, "input_seq_read_key", w), "sequence", name)
      tr = _trunk(m, w)
      if m.get("block_mask_read_key") != f.get("dec_block_mask_key"):
        raise ValueError(f"{w}: block_mask_read_key {m.get('block_mask_read_key')!r} is not the "
                         f"packer's mask {f.get('dec_block_mask_key')!r}")
      keys.need(_get(m, "adaLN_emb_read_key", w), "time embedding", name)
      expansion = int(m.get("adaLN_expansion", 1))
      if expansion not in (1, 2):
        raise ValueError(f"{w}: adaLN_expansion {expansion} is not supported (1 or 2)")
      if expansion == 2 and not (f.get("per_subseq_embs") and
                                 m.get("adaLN_packing_fn_read_key") == f.get("emb_packing_key")):
        raise ValueError(f"{w}: adaLN_expansion 2 needs the packer's per-sub-sequence packing "
                         f"function (per_subseq_embs and adaLN_packing_fn_read_key)")
      layers = list(m.get("intermediate_layers") or [])
      if m.get("intermediate_layer_write_key") and layers:
        if len(layers) != 1:
          raise ValueError(f"{w}: intermediate_layers {layers}: vft supports one (the REPA layer)")
        f["repa_layer"] = int(layers[0])
        keys.set(_get(m, "intermediate_layer_write_key", w), "intermediate output")
      f.update(dec_width=tr["dim"], dec_depth=tr["depth"], dec_head_dim=tr["head_dim"],
               adaln_expansion=expansion)
      keys.set(_get(m, "output_seq_write_key", w), "trunk output")
      names["dec_transformer"] = name
    elif t == "SequenceInterleavedUnpacker":
      kind, _ = keys.roles.get(_get(m, "packed_seq_read_key", w), (None, ()))
      outs = list(_get(m, "inner_seq_write_keys", w))
      if len(outs) != 2:
        raise ValueError(f"{w}: inner_seq_write_keys {outs} must be [patches, registers]")
      if kind == "trunk output":
        keys.set(outs[0], "output patches")
        keys.set(outs[1], "output registers")
      elif kind == "intermediate output":
        keys.set(outs[0], "intermediate patches")
        keys.set(outs[1], "intermediate registers")
      else:
        keys.need(_get(m, "packed_seq_read_key", w), "trunk output", name)
    elif t == "TransformerHead":
      keys.need(_get(m, "read_key", w), "intermediate patches", name)
      tr = _trunk(m, w)
      if m.get("block_mask_read_key") is None or m["block_mask_read_key"] != f.get("repa_mask_key"):
        raise ValueError(f"{w}: the REPA head must use the packer's REPA mask "
                         f"(repa_block_mask_write_key)")
      if f.get("repa_mask_mode") != "time_block_causal":
        raise ValueError(f"{w}: repa_mask_mode {f.get('repa_mask_mode')!r} is not supported "
                         f"(vft's REPA head is time_block_causal)")
      f.update(repa_depth=tr["depth"], repa_dim=int(_get(m, "dim_out", w)),
               repa_width=tr["dim"], repa_head_dim=tr["head_dim"])
      keys.set(_get(m, "write_key", w), "REPA features")
      names["dec_repa_head"] = name
    elif t == "ToPatchesLinearHead":
      keys.need(_get(m, "read_key", w), "output patches", name)
      _head_checks(m, w, adaln=True)
      keys.need(_get(m, "adaLN_emb_read_key", w), "time embedding", name)
      _expect(m, "adaLN_packing_fn_read_key", None, None, w)
      f.update(out_channels=int(_get(m, "channels_out", w)),
               out_patch_size=tuple(int(p) for p in _get(m, "patch_sizes", w)),
               head_dim_in=int(_get(m, "dim", w)))
      keys.set(_get(m, "write_key", w), "velocity (channels-last)")
      names["dec_to_patches"] = name
    else:
      raise ValueError(f"{w}: {m.get('_target_')!r} is not supported in the decoder")
  return f, names, notes


def _register_order(ops: tuple[str, ...]) -> tuple[str, ...]:
  """The ops present in their order; absent ones where the default order puts them."""
  present = [o for o in REGISTER_OPS if o in ops]
  if list(ops) == present:
    return REGISTER_OPS
  return tuple(ops) + tuple(o for o in REGISTER_OPS if o not in ops)


def translate(model_cfg: Mapping, where: str = "config") -> Translation:
  """The release's hydra config -> our TokenizerConfig (+ the official module names)."""
  check_targets(model_cfg, where)
  target = model_cfg.get("_target_")
  if target == VAE_TARGET:
    _check_vae(model_cfg, where)
    return Translation(None, None, dict(model_cfg), [])
  if target not in ROOT_TARGETS:
    raise ValueError(f"{where}: the root _target_ {target!r} is not a VideoFlexTok model "
                     f"(expected one of {ROOT_TARGETS + (VAE_TARGET,)})")
  vae = _get(model_cfg, "vae", where)
  _check_vae(vae, f"{where}.vae")
  reg = _get(model_cfg, "regularizer", where)
  if short(reg.get("_target_", "")) != "FSQ":
    raise ValueError(f"{where}.regularizer: {reg.get('_target_')!r} is not supported (FSQ)")
  levels = tuple(int(v) for v in _get(reg, "levels", f"{where}.regularizer"))
  pipe = _get(model_cfg, "pipeline", where)
  if short(pipe.get("_target_", "")) != "VideoMinRFPipeline":
    raise ValueError(f"{where}.pipeline: {pipe.get('_target_')!r} is not supported")
  pw = f"{where}.pipeline"
  quants = _get(reg, "quants_write_key", f"{where}.regularizer")
  if pipe.get("latents_read_key") != quants:
    raise ValueError(f"{pw}: latents_read_key {pipe.get('latents_read_key')!r} is not the FSQ "
                     f"quants_write_key {quants!r}")
  if pipe.get("zero_noise", False):
    raise ValueError(f"{pw}: zero_noise=True (a one-step MSE decoder) is not supported")

  enc, enc_names, enc_keys = _translate_encoder(
      _module_dict(model_cfg, "encoder", where), _get(vae, "vae_latents_write_key", f"{where}.vae"),
      f"{where}.encoder")
  enc_keys.need(_get(reg, "latents_read_key", f"{where}.regularizer"), "encoder latents",
                "regularizer (FSQ)")
  dec, dec_names, notes = _translate_decoder(
      _module_dict(model_cfg, "decoder", where), quants, _get(pipe, "noised_videos_read_key", pw),
      _get(pipe, "timesteps_read_key", pw), f"{where}.decoder")
  names = {**enc_names, **dec_names}
  required = ("enc_patch_emb", "enc_posemb", "enc_registers", "enc_transformer", "enc_to_latents",
              "dec_from_latents", "dec_nested_dropout", "dec_null_cond", "dec_patch_emb",
              "dec_posemb", "dec_time_embedder", "dec_transformer", "dec_to_patches")
  missing = [r for r in required if r not in names]
  if missing:
    raise ValueError(f"{where}: vft needs modules the config lacks: {missing}")
  if dec.get("out_key") != _get(pipe, "reconst_write_key", pw):
    raise ValueError(f"{where}.decoder: its output {dec.get('out_key')!r} is not the pipeline's "
                     f"reconst_write_key {pipe.get('reconst_write_key')!r}")
  if "repa_layer" in dec and "repa_depth" not in dec:
    notes.append(f"{where}.decoder: intermediate layer outputs without a REPA head are ignored")
  if "repa_depth" in dec and "repa_layer" not in dec:
    raise ValueError(f"{where}.decoder: a REPA head without the trunk's intermediate_layers")

  def same(what, *vals):
    if len(set(vals)) != 1:
      raise ValueError(f"{where}: {what} differ ({', '.join(map(str, vals))}); vft uses one value")
  d_enc, d_dec = enc["enc_width"], dec["dec_width"]
  same("encoder widths (patch embedding, posemb, registers, trunk, head)", d_enc,
       enc["patch_dim"], enc["enc_posemb"]["dim"], enc["reg_dim"], enc["head_dim_in"])
  dec_dims = [d_dec, dec["from_latents_dim"], dec["dec_patch_dim"], dec["dec_posemb"]["dim"],
              dec["temb_dim"], dec["head_dim_in"]]
  if "reg_posemb" in dec:
    dec_dims.append(dec["reg_posemb"]["dim"])
  if "repa_width" in dec:
    dec_dims.append(dec["repa_width"])
  same("decoder widths (trunk, embeddings, heads)", *dec_dims)
  same("head_dim of the trunks", enc["enc_head_dim"], dec["dec_head_dim"],
       *([dec["repa_head_dim"]] if "repa_head_dim" in dec else []))
  same("patch sizes (encoder, decoder, output head)", enc["patch_size"], dec["dec_patch_size"],
       dec["out_patch_size"])
  same("latent channels (encoder in, decoder in/out, pipeline)", enc["latent_channels"],
       dec["dec_channels_in"], dec["out_channels"], int(pipe.get("out_channels") or
                                                         enc["latent_channels"]))
  same("FSQ code width (levels, encoder head, decoder input)", len(levels), enc["code_dim"],
       dec["code_dim_in"])
  same("patch posemb types (encoder, decoder)", enc["enc_posemb"]["kind"],
       dec["dec_posemb"]["kind"])

  reg_pe = dec.get("reg_posemb")
  fields = dict(
      latent_channels=enc["latent_channels"], patch_size=enc["patch_size"],
      num_registers=enc["num_registers"], max_latent_frames=enc["max_latent_frames"],
      posemb_max=enc["enc_posemb"]["sizes"][0], dec_posemb_max=dec["dec_posemb"]["sizes"][0],
      patch_posemb=enc["enc_posemb"]["kind"],
      register_posemb=reg_pe["kind"] if reg_pe else "none",
      register_posemb_max=(reg_pe["sizes"][0] if reg_pe and reg_pe["kind"] != "sincos"
                           else None),
      register_posemb_shape=(tuple(reg_pe["sizes"]) if reg_pe and reg_pe["kind"] == "sincos"
                             else None),
      fsq_levels=levels, head_dim=enc["enc_head_dim"],
      enc_width=d_enc, enc_depth=enc["enc_depth"], enc_mask=enc["enc_mask"],
      dec_width=d_dec, dec_depth=dec["dec_depth"], dec_mask=dec["dec_mask"],
      adaln_expansion=dec["adaln_expansion"],
      prefix_masking="prefix_mask" in dec["register_ops"],
      register_order=_register_order(dec["register_ops"]),
      max_timestep=dec["max_timestep"], prediction="v",
      repa_layer=dec.get("repa_layer") if "repa_depth" in dec else None,
      repa_depth=dec.get("repa_depth", 2), repa_dim=dec.get("repa_dim", 1024),
      dtype="float32", scan=False, remat=False)
  try:
    tok = TokenizerConfig(**fields)
  except ValueError as e:
    raise ValueError(f"{where}: translates to an invalid vft config: {e}") from None
  return Translation(tok, Layout(**names), dict(vae), notes)


def _check_vae(vae: Mapping, where: str) -> None:
  if vae.get("_target_") != VAE_TARGET:
    raise ValueError(f"{where}: VAE {vae.get('_target_')!r} is not supported ({VAE_TARGET})")
  tid = vae.get("tokenizer_id")
  if tid != VIDTOK_ID:
    raise ValueError(f"{where}: tokenizer_id {tid!r} is not supported (vft has {VIDTOK_ID!r})")


def canonical(cfg: TokenizerConfig) -> TokenizerConfig:
  """`cfg` with implicit defaults made explicit and runtime fields reset: two configs describe
  the same checkpoint iff their canonical forms are equal."""
  runtime = {f.name: f.default for f in dataclasses.fields(TokenizerConfig)
             if f.name in RUNTIME_FIELDS}
  sincos = cfg.register_posemb == "sincos"
  learned = cfg.register_posemb in ("learnable_sum", "learnable_prod")
  return dataclasses.replace(
      cfg, **runtime, dec_posemb_max=cfg.dec_posemb_max or cfg.posemb_max,
      register_posemb_max=((cfg.register_posemb_max or max(cfg.posemb_max, cfg.num_registers))
                           if learned else None),
      register_posemb_shape=((cfg.register_posemb_shape
                              or (cfg.max_latent_frames, cfg.num_registers)) if sincos else None),
      register_order=_register_order(tuple(
          o for o in cfg.register_order
          if not (o == "prefix_mask" and not cfg.prefix_masking)
          and not (o == "posemb" and cfg.register_posemb == "none"))),
      repa_depth=cfg.repa_depth if cfg.repa_layer is not None else 2,
      repa_dim=cfg.repa_dim if cfg.repa_layer is not None else 1024)


# ---------------------------------------------------------------------------- generation
def to_hydra(cfg: TokenizerConfig, layout: Layout = Layout()) -> dict:
  """The release's VideoFlexTok config for `cfg` (module names from `layout`; training-only
  entries at the release's values). Lists, never tuples: the metadata form is a Python repr
  that is read back as YAML."""
  if cfg.prediction != "v":
    raise ValueError(f"config.model.prediction={cfg.prediction!r}: the release's decoder "
                     f"predicts the velocity ('v'); an x-prediction model has no official form")
  c = canonical(cfg)
  de, dd, n = c.enc_width, c.dec_width, c.num_registers
  patch, levels = list(c.patch_size), list(c.fsq_levels)
  L = layout
  enc = {
      "enc_vae_latents_channels_last": _per_sample("vae_latents", "enc_vae_latents_cl", True),
      L.enc_patch_emb: {
          "_target_": _P + "model.preprocessors.patching.PatchEmbedder",
          "input_tensor_list_read_key": "enc_vae_latents_cl", "patches_list_write_key":
          "enc_patches", "n_patches_write_key": "enc_n_patches", "patch_sizes": patch,
          "channels_in": c.latent_channels, "dim": de, "flatten_patches": False},
      L.enc_posemb: _posemb_cfg("enc_patches", de, [c.posemb_max] * 3, c.patch_posemb),
      L.enc_registers: {
          "_target_": _P + "model.preprocessors.registers.RegistersTemporal2D",
          "input_tensor_list_read_key": "enc_patches", "register_sizes_read_write_key":
          "enc_register_sizes", "registers_write_key": "enc_registers", "dim": de,
          "t_max": c.max_latent_frames, "n_min": n, "n_max": n},
      "enc_seq_packer": _packer("enc", c.enc_mask, adaln=False),
      L.enc_transformer: {
          "_target_": _P + "model.trunks.transformers.FlexTransformer",
          "input_seq_read_key": "enc_packed_seq", "output_seq_write_key": "enc_packed_seq",
          "dim": de, "depth": c.enc_depth, "head_dim": c.head_dim,
          "block_mask_read_key": "enc_block_mask"},
      "enc_unpacker": _unpacker("enc"),
      L.enc_to_latents: {
          "_target_": _P + "model.postprocessors.heads.LinearHead", "read_key": "enc_registers",
          "write_key": "enc_reg_latents", "dim": de, "dim_out": len(levels),
          "use_mup_readout": False, "weight_init_style": "zero"},
  }
  reg_ops = {
      "posemb": (L.dec_registers_posemb, (
          None if c.register_posemb == "none" else
          _posemb_cfg("dec_registers", dd, list(c.register_posemb_shape), "sincos")
          if c.register_posemb == "sincos" else
          _posemb_cfg("dec_registers", dd, [c.register_posemb_max] * 2, c.register_posemb))),
      "nested_dropout": (L.dec_nested_dropout, {
          "_target_": _P + "model.preprocessors.token_dropout.MaskedNestedDropout",
          "read_write_key": "dec_registers", "dim": dd, "size_sampling_mode": "pow2"}),
      "prefix_mask": (L.dec_prefix_masking, {
          "_target_": _P + "model.preprocessors.token_dropout.MaskedPrefixDropout",
          "read_write_key": "dec_registers", "dim": dd}),
      "null_cond": (L.dec_null_cond, {
          "_target_": _P + "model.preprocessors.nullcond.LearnedNullCond",
          "read_write_key": "dec_registers", "dim": dd, "dropout_prob": 0.2}),
  }
  dec = {L.dec_from_latents: {
      "_target_": _P + "model.preprocessors.linear.LinearLayer", "read_key": "dec_quants",
      "write_key": "dec_registers", "dim_in": len(levels), "dim": dd}}
  for op in c.register_order:
    if (op == "posemb" and c.register_posemb == "none") or (
        op == "prefix_mask" and not c.prefix_masking):
      continue
    name, m = reg_ops[op]
    dec[name] = m
  dec.update({
      "dec_noise_channels_last": _per_sample("noised_vae_latents", "dec_noised_cl", True),
      L.dec_patch_emb: {
          "_target_": _P + "model.preprocessors.patching.PatchEmbedder",
          "input_tensor_list_read_key": "dec_noised_cl", "patches_list_write_key": "dec_patches",
          "n_patches_write_key": "dec_n_patches", "patch_sizes": patch,
          "channels_in": c.latent_channels, "dim": dd, "flatten_patches": False},
      L.dec_posemb: _posemb_cfg("dec_patches", dd, [c.dec_posemb_max] * 3, c.patch_posemb),
      "dec_seq_packer": _packer("dec", c.dec_mask, adaln=True, repa=c.repa_layer is not None),
      L.dec_time_embedder: {
          "_target_": _P + "model.preprocessors.time_embedding.TimestepEmbedder",
          "timesteps_read_key": "timesteps", "time_embedding_write_key": "dec_temb", "dim": dd,
          "max_timestep": float(c.max_timestep)},
  })
  trunk = {"_target_": _P + "model.trunks.transformers.FlexTransformer",
           "input_seq_read_key": "dec_packed_seq", "output_seq_write_key": "dec_packed_seq",
           "dim": dd, "depth": c.dec_depth, "head_dim": c.head_dim,
           "block_mask_read_key": "dec_block_mask", "adaLN_emb_read_key": "dec_temb",
           "adaLN_packing_fn_read_key": "dec_emb_packing_fn",
           "adaLN_expansion": c.adaln_expansion}
  if c.repa_layer is not None:
    trunk.update(intermediate_layer_write_key="dec_repa_seq", intermediate_layers=[c.repa_layer])
  dec[L.dec_transformer] = trunk
  dec["dec_unpacker"] = _unpacker("dec")
  if c.repa_layer is not None:
    dec["dec_repa_unpacker"] = {
        "_target_": _P + "model.postprocessors.seq_unpacking.SequenceInterleavedUnpacker",
        "packed_seq_read_key": "dec_repa_seq",
        "inner_seq_write_keys": ["dec_repa_patches", "dec_repa_registers"],
        "inner_packed_shapes_read_key": "dec_ps_inner",
        "outer_packed_shapes_read_key": "dec_ps_outer"}
    dec[L.dec_repa_head] = {
        "_target_": _P + "model.postprocessors.heads.TransformerHead",
        "read_key": "dec_repa_patches", "write_key": "dec_repa_features", "dim": dd,
        "dim_out": c.repa_dim, "depth": c.repa_depth, "head_dim": c.head_dim,
        "block_mask_read_key": "dec_repa_block_mask"}
  dec[L.dec_to_patches] = {
      "_target_": _P + "model.postprocessors.heads.ToPatchesLinearHead", "read_key": "dec_patches",
      "write_key": "dec_out_cl", "dim": dd, "channels_out": c.latent_channels,
      "patch_sizes": patch, "use_mup_readout": False, "weight_init_style": "zero",
      "adaLN_emb_read_key": "dec_temb"}
  dec["dec_channels_first"] = _per_sample("dec_out_cl", "vae_latents_reconst", False)

  noise = ({"_target_": _P + "flow_matching.noise_modules.PrefixMinRFNoiseModule",
            "clean_images_read_key": "vae_latents", "noised_images_write_key": "noised_vae_latents",
            "timesteps_write_key": "timesteps", "sigmas_write_key": "sigmas", "prefix_len": 1,
            "keep_prefix_prob": 0.2} if c.prefix_masking else
           {"_target_": _P + "flow_matching.noise_modules.MinRFNoiseModule",
            "clean_images_read_key": "vae_latents", "noised_images_write_key": "noised_vae_latents",
            "timesteps_write_key": "timesteps", "sigmas_write_key": "sigmas"})
  wrapper = _P + "model.utils.wrappers.SequentialModuleDictWrapper"
  return {
      "_target_": ROOT_TARGETS[0],
      "vae": {"_target_": VAE_TARGET, "images_read_key": "rgb",
              "vae_latents_read_key": "vae_latents_reconst", "vae_latents_write_key": "vae_latents",
              "images_reconst_write_key": "rgb_reconst", "tokenizer_id": VIDTOK_ID},
      "encoder": {"_target_": wrapper, "module_dict": enc},
      "decoder": {"_target_": wrapper, "module_dict": dec},
      "regularizer": {"_target_": _P + "regularizers.quantize_fsq.FSQ",
                      "latents_read_key": "enc_reg_latents", "quants_write_key": "dec_quants",
                      "tokens_write_key": "tokens", "levels": levels},
      "flow_matching_noise_module": noise,
      "pipeline": {"_target_": _P + "flow_matching.pipelines.VideoMinRFPipeline",
                   "_partial_": True, "target_sizes_read_key": None,
                   "latents_read_key": "dec_quants", "timesteps_read_key": "timesteps",
                   "noised_videos_read_key": "noised_vae_latents",
                   "reconst_write_key": "vae_latents_reconst",
                   "out_channels": c.latent_channels, "cond_vae_latents_key": "cond_vae_latents"},
  }


def _per_sample(read: str, write: str, to_last: bool) -> dict:
  op = "channels_first_to_last" if to_last else "channels_last_to_first"
  return {"_target_": _P + "model.utils.dict_ops.PerSampleOp", "read_key": read, "write_key": write,
          "per_sample_op": {"_target_": _P + "model.utils.dict_ops." + op, "_partial_": True}}


def _posemb_cfg(key: str, dim: int, sizes: list[int], kind: str) -> dict:
  return {"_target_": _P + "model.utils.posembs.PositionalEmbeddingAdder", "read_key": key,
          "write_key": key, "dim": dim, "max_sizes": [int(s) for s in sizes],
          "posemb_type": kind, "posemb_scaling": "absolute"}


def _packer(p: str, mode: str, adaln: bool, repa: bool = False) -> dict:
  m = {"_target_": _P + "model.preprocessors.flex_seq_packing.BlockWiseSequenceInterleavePacker",
       "input_list_read_keys": [f"{p}_patches", f"{p}_registers"],
       "packed_seq_write_key": f"{p}_packed_seq", "block_mask_write_key": f"{p}_block_mask",
       "inner_packed_shapes_write_key": f"{p}_ps_inner",
       "outer_packed_shapes_write_key": f"{p}_ps_outer", "mask_mode": mode,
       "pad_to_multiple": 128}
  if adaln:
    m.update(emb_packing_fn_write_key=f"{p}_emb_packing_fn", per_subseq_embs=True)
  if repa:
    m.update(repa_block_mask_write_key=f"{p}_repa_block_mask", repa_mask_mode="time_block_causal")
  m["compile_block_mask"] = False
  return m


def _unpacker(p: str) -> dict:
  return {"_target_": _P + "model.postprocessors.seq_unpacking.SequenceInterleavedUnpacker",
          "packed_seq_read_key": f"{p}_packed_seq",
          "inner_seq_write_keys": [f"{p}_patches", f"{p}_registers"],
          "inner_packed_shapes_read_key": f"{p}_ps_inner",
          "outer_packed_shapes_read_key": f"{p}_ps_outer"}


def to_metadata(model_cfg: Mapping) -> dict[str, str]:
  """The metadata form: one Python-repr string per top-level key (the release's
  `save_safetensors(..., metadata_dict=config)`)."""
  return {str(k): str(v) for k, v in model_cfg.items()}
