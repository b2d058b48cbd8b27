"""Official VidTok VAE weights <-> our `VidTokConfig` + Flax params.

The official state dict names the VAE modules `<prefix>{encoder,decoder}.*` with the prefix
`vae.vidtok.` in a VideoFlexTok checkpoint (`video_tokenizer.vae.vidtok.` in the hub form) and
`vidtok.` in a VAE-only file. The architecture widths are read off the weights (the official
config only names `tokenizer_id`): `ch` from `encoder.conv_in.conv.weight` [ch, 3, 3, 3, 3],
`ch_mult` from each level's first conv, `num_res_blocks` from the block count, `z_channels`
from `decoder.conv_in.conv.weight` [., z, 3, 3, 3].

Layouts: torch conv weights [O, I, *k] <-> our kernels [*k, I, O]; 1x1 convs (shortcuts,
attention q/k/v/proj_out) become Dense kernels [I, O]; LayerNorm weight/bias -> scale/bias;
`mix_factor` [1] verbatim.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterator, Mapping

import jax
import numpy as np

from vft.models.vae.vidtok import VidTokConfig, init_params

_ENC_CONV_IN = "encoder.conv_in.conv.weight"
_DEC_CONV_IN = "decoder.conv_in.conv.weight"

# One mapped tensor: (our param path, official key without prefix, torch kernel ndim or None).
Entry = tuple[tuple[str, ...], str, "int | None"]


def load_tensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a safetensors file as numpy arrays (bf16 via ml_dtypes)."""
  from safetensors.numpy import load_file
  if not os.path.isfile(path):
    raise FileNotFoundError(f"VidTok weights: no such file {path!r}")
  return load_file(path)


def find_prefix(tensors: Mapping[str, Any], where: str = "state dict") -> str:
  """The key prefix before `encoder.conv_in.conv.weight` (e.g. "vae.vidtok.")."""
  found = sorted(k[:-len(_ENC_CONV_IN)] for k in tensors
                 if k.endswith(_ENC_CONV_IN) and k[:-len(_ENC_CONV_IN)] + _DEC_CONV_IN in tensors)
  found = [p for p in found if p == "" or p.endswith(".")]
  if not found:
    raise ValueError(f"{where}: no VidTok VAE weights (expected keys '<prefix>{_ENC_CONV_IN}' and "
                     f"'<prefix>{_DEC_CONV_IN}', e.g. with prefix 'vae.vidtok.')")
  if len(found) > 1:
    raise ValueError(f"{where}: several VidTok VAEs under the prefixes {found}; pass `prefix`")
  return found[0]


def _norm_prefix(prefix: str) -> str:
  return prefix if not prefix or prefix.endswith(".") else prefix + "."


def _get(tensors: Mapping[str, Any], key: str, why: str) -> np.ndarray:
  if key not in tensors:
    raise ValueError(f"VidTok weights: missing tensor {key!r} (needed for {why})")
  return np.asarray(tensors[key])


def _count(tensors: Mapping[str, Any], pattern: str) -> int:
  """Number of consecutive indices i = 0, 1, ... for which pattern.format(i) is a key."""
  n = 0
  while pattern.format(n) in tensors:
    n += 1
  return n


def infer_config(tensors: Mapping[str, Any], prefix: str) -> VidTokConfig:
  """Reads the VAE widths off the weight shapes."""
  p = _norm_prefix(prefix)
  w_in = _get(tensors, p + _ENC_CONV_IN, "the base width ch")
  if w_in.ndim != 5:
    raise ValueError(f"VidTok weights: {p + _ENC_CONV_IN} has shape {w_in.shape}; expected "
                     f"[ch, in_channels, 3, 3, 3]")
  ch, in_channels = int(w_in.shape[0]), int(w_in.shape[1])
  levels = _count(tensors, p + "encoder.down.{}.block.0.conv1.weight")
  if levels == 0:
    _get(tensors, p + "encoder.down.0.block.0.conv1.weight", "the level widths ch_mult")
  ch_mult = []
  for i in range(levels):
    key = p + f"encoder.down.{i}.block.0.conv1.weight"
    width = int(np.shape(tensors[key])[0])
    if width % ch:
      raise ValueError(f"VidTok weights: {key} has {width} output channels, not a multiple of "
                       f"ch = {ch}")
    ch_mult.append(width // ch)
  num_res_blocks = _count(tensors, p + "encoder.down.0.block.{}.conv1.weight")
  z = int(_get(tensors, p + _DEC_CONV_IN, "z_channels").shape[1])
  out_channels = int(_get(tensors, p + "decoder.conv_out.conv.weight", "out_channels").shape[0])
  return VidTokConfig(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                      z_channels=z, in_channels=in_channels, out_channels=out_channels)


def _conv(ours: tuple[str, ...], official: str, ndim: int) -> Iterator[Entry]:
  yield ours + ("kernel",), official + ".weight", ndim
  yield ours + ("bias",), official + ".bias", None


def _norm(ours: tuple[str, ...], official: str) -> Iterator[Entry]:
  yield ours + ("scale",), official + ".norm.weight", None
  yield ours + ("bias",), official + ".norm.bias", None


def _resblock(ours, official, kind: str, c_in: int, c_out: int) -> Iterator[Entry]:
  """kind: spatial (Conv2d), temporal (CausalConv1d) or 3d (CausalConv3d)."""
  ndim, inner = {"spatial": (4, ""), "temporal": (3, ".conv"), "3d": (5, ".conv")}[kind]
  yield from _norm(ours + ("norm1",), official + ".norm1")
  yield from _conv(ours + ("conv1",), official + ".conv1" + inner, ndim)
  yield from _norm(ours + ("norm2",), official + ".norm2")
  yield from _conv(ours + ("conv2",), official + ".conv2" + inner, ndim)
  if c_in != c_out:
    yield from _conv(ours + ("shortcut",), official + ".nin_shortcut" + inner, ndim)


def _mid(ours, official: str, width: int) -> Iterator[Entry]:
  yield from _resblock(ours + ("mid_block1",), official + "mid.block_1", "3d", width, width)
  yield from _norm(ours + ("mid_attn", "norm"), official + "mid.attn_1.norm")
  for n in ("q", "k", "v", "proj_out"):
    yield from _conv(ours + ("mid_attn", n), official + f"mid.attn_1.{n}.conv", 5)
  yield from _resblock(ours + ("mid_block2",), official + "mid.block_2", "3d", width, width)


def key_map(cfg: VidTokConfig, prefix: str) -> list[Entry]:
  """Every parameter of our VidTok tree with its official key (prefix included)."""
  p = _norm_prefix(prefix)
  widths = cfg.widths()
  out: list[Entry] = []
  e, oe = ("encoder",), p + "encoder."
  out += _conv(e + ("conv_in",), oe + "conv_in.conv", 5)
  c_in = cfg.ch
  for i, w in enumerate(widths):
    for j in range(cfg.num_res_blocks):
      blk = e + (f"down{i}_block{j}",)
      out += _resblock(blk + ("spatial",), oe + f"down.{i}.block.{j}", "spatial", c_in, w)
      out += _resblock(blk + ("temporal",), oe + f"down_temporal.{i}.block.{j}", "temporal", w, w)
      c_in = w
    if i in cfg.space_down_levels:
      out += _conv(e + (f"down{i}_downsample",), oe + f"down.{i}.downsample.conv", 4)
      if i in cfg.time_down_levels:
        td, otd = e + (f"down{i}_time_downsample",), oe + f"down_temporal.{i}.downsample"
        out.append((td + ("mix_factor",), otd + ".mix_factor", None))
        out += _conv(td + ("conv",), otd + ".conv.conv", 5)
  out += _mid(e, oe, widths[-1])
  out += _norm(e + ("norm_out",), oe + "norm_out")
  out += _conv(e + ("conv_out",), oe + "conv_out.conv", 5)

  d, od = ("decoder",), p + "decoder."
  out += _conv(d + ("conv_in",), od + "conv_in.conv", 5)
  out += _mid(d, od, widths[-1])
  c_in = widths[-1]
  for i in reversed(range(len(widths))):
    w = widths[i]
    for j in range(cfg.num_res_blocks + 1):
      blk = d + (f"up{i}_block{j}",)
      out += _resblock(blk + ("spatial",), od + f"up.{i}.block.{j}", "spatial", c_in, w)
      out += _resblock(blk + ("temporal",), od + f"up_temporal.{i}.block.{j}", "temporal", w, w)
      c_in = w
    if i in cfg.space_up_levels:
      out += _conv(d + (f"up{i}_upsample",), od + f"up.{i}.upsample.conv", 4)
      if i in cfg.time_up_levels:
        tu, otu = d + (f"up{i}_time_upsample",), od + f"up_temporal.{i}.upsample"
        out.append((tu + ("mix_factor",), otu + ".mix_factor", None))
        out += _conv(tu + ("conv",), otu + ".conv.conv", 5)
  out += _norm(d + ("norm_out",), od + "norm_out")
  out += _conv(d + ("conv_out",), od + "conv_out.conv", 5)
  return out


def _torch_kernel_shape(ours: tuple[int, ...], ndim: int) -> tuple[int, ...]:
  """Our kernel [*k, I, O] (or Dense [I, O] for a 1x1 conv) -> torch [O, I, *k]."""
  k = ours[:-2] if len(ours) == ndim else (1,) * (ndim - 2)
  return (ours[-1], ours[-2], *k)


def _to_ours(w: np.ndarray, ndim: int | None, shape: tuple[int, ...]) -> np.ndarray:
  if ndim is not None:
    w = np.transpose(w, (*range(2, ndim), 1, 0))
  return np.ascontiguousarray(w.reshape(shape))


def _to_torch(w: np.ndarray, ndim: int | None) -> np.ndarray:
  if ndim is None:
    return np.ascontiguousarray(w)
  tshape = _torch_kernel_shape(w.shape, ndim)
  w = w.reshape((*tshape[2:], tshape[1], tshape[0]))
  return np.ascontiguousarray(np.transpose(w, (ndim - 1, ndim - 2, *range(ndim - 2))))


def _param_shapes(cfg: VidTokConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  tree = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _official_shape(shape: tuple[int, ...], ndim: int | None) -> tuple[int, ...]:
  return shape if ndim is None else _torch_kernel_shape(shape, ndim)


def vidtok_from_state_dict(tensors: Mapping[str, np.ndarray], prefix: str
                           ) -> tuple[VidTokConfig, dict, set[str]]:
  """Official VAE tensors -> (config read off the shapes, our params {"encoder", "decoder"} as
  float32 numpy arrays, the set of keys consumed). A missing key or a shape mismatch is a
  ValueError naming the key."""
  cfg = infer_config(tensors, prefix)
  shapes = _param_shapes(cfg)
  entries = key_map(cfg, prefix)
  if set(shapes) != {e[0] for e in entries}:  # the map must cover our tree exactly
    raise AssertionError(f"vidtok key map out of sync: "
                         f"{sorted(set(shapes) ^ {e[0] for e in entries})}")
  params: dict = {}
  used = set()
  for ours, key, ndim in entries:
    shape = shapes[ours]
    w = _get(tensors, key, "/".join(ours))
    want = _official_shape(shape, ndim)
    if tuple(w.shape) != want:
      raise ValueError(f"VidTok weights: {key} has shape {tuple(w.shape)}, expected {want} "
                       f"(for a VAE with ch={cfg.ch}, ch_mult={cfg.ch_mult}, "
                       f"z_channels={cfg.z_channels})")
    node = params
    for name in ours[:-1]:
      node = node.setdefault(name, {})
    node[ours[-1]] = _to_ours(w.astype(np.float32), ndim, shape)
    used.add(key)
  return cfg, params, used


def vidtok_to_state_dict(cfg: VidTokConfig, params: Mapping[str, Any], prefix: str
                         ) -> dict[str, np.ndarray]:
  """Inverse of `vidtok_from_state_dict`: our params -> official keys and layouts (float32)."""
  out = {}
  for ours, key, ndim in key_map(cfg, prefix):
    node = params
    for name in ours:
      if not isinstance(node, Mapping) or name not in node:
        raise ValueError(f"VidTok params: missing {'/'.join(ours)} (for {key})")
      node = node[name]
    out[key] = _to_torch(np.asarray(node, dtype=np.float32), ndim)
  return out


def vidtok_key_pattern(prefix: str) -> re.Pattern:
  """Matches every official key of the VAE under `prefix` (for unused-key reports)."""
  return re.compile(re.escape(_norm_prefix(prefix)) + r"(encoder|decoder)\.")
