"""Official tokenizer weights (encoder + decoder state dict) <-> our Flax param tree.

Every parameter of our tree is produced by exactly one `Rule`: an official key (the module names
come from the config's `Layout`), our path, and a layout conversion. The conversions are exact
permutations/reshapes, so import -> export is bit-identical:

  linear     torch Linear weight [out, in]   <-> kernel [in, out]   (transpose)
  split_out  torch [prod(out...), in]        <-> kernel [in, *out]  (q/k/v [D, H, hd],
                                                 adaLN [D, E, 6, D], head adaLN [D, 2, D])
  split_in   torch [out, prod(in...)]        <-> kernel [*in, out]  (attn proj [H, hd, D])
  reshape    bias [prod(shape)]              <-> bias [*shape]      (adaLN biases)
  posemb     learnable posembs [n, 1, D, M]  <-> [n, M, D]
  sincos     fixed posembs [1, D, R, C]      <-> [R, C, D]
  verbatim   registers [t_max, N, D], tokens [D], plain biases
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import flax.linen as nn
import jax
import numpy as np

from vft.convert.official_config import Layout
from vft.models.config import TokenizerConfig
from vft.models.tokenizer import VideoFlexTok, init_params

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
  key: str  # official state-dict key (without a file prefix)
  path: Path  # our param path
  kind: str  # one of CONVERSIONS


def _official_shape(kind: str, ours: tuple[int, ...]) -> tuple[int, ...]:
  if kind == "linear":
    return ours[::-1]
  if kind == "split_out":
    return (math.prod(ours[1:]), ours[0])
  if kind == "split_in":
    return (ours[-1], math.prod(ours[:-1]))
  if kind == "reshape":
    return (math.prod(ours),)
  if kind == "posemb":
    n, m, d = ours
    return (n, 1, d, m)
  if kind == "sincos":
    r, c, d = ours
    return (1, d, r, c)
  if kind == "verbatim":
    return ours
  raise ValueError(f"unknown conversion {kind!r}")


def to_ours(kind: str, a: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
  """Official tensor -> our layout (shape `ours`)."""
  if kind in ("linear", "split_out", "split_in"):
    a = a.T
  elif kind == "posemb":
    a = a[:, 0].transpose(0, 2, 1)
  elif kind == "sincos":
    a = a[0].transpose(1, 2, 0)
  return np.ascontiguousarray(a.reshape(ours))


def to_official(kind: str, a: np.ndarray) -> np.ndarray:
  """Our layout -> the official tensor (inverse of `to_ours`)."""
  shape = _official_shape(kind, a.shape)
  if kind in ("linear", "split_out", "split_in"):
    a = a.reshape(shape[::-1]).T
  elif kind == "posemb":
    a = a.transpose(0, 2, 1)[:, None]
  elif kind == "sincos":
    a = a.transpose(2, 0, 1)[None]
  return np.ascontiguousarray(a.reshape(shape))


def _trunk_rules(prefix: str, ours: Path, depth: int, adaln: bool) -> list[Rule]:
  out = []
  for i in range(depth):
    p, o = f"{prefix}.blocks.{i}", ours + (f"blocks_{i}",)
    out += [Rule(f"{p}.attn.{n}.weight", o + ("attn", n, "kernel"), "split_out")
            for n in ("wq", "wk", "wv")]
    out.append(Rule(f"{p}.attn.proj.weight", o + ("attn", "proj", "kernel"), "split_in"))
    out += [Rule(f"{p}.mlp.{n}.weight", o + ("mlp", n, "kernel"), "linear")
            for n in ("fc1", "fc2", "fc3")]
    if adaln:
      out += [Rule(f"{p}.adaLN_modulation.1.weight", o + ("adaLN_modulation", "kernel"),
                   "split_out"),
              Rule(f"{p}.adaLN_modulation.1.bias", o + ("adaLN_modulation", "bias"), "reshape")]
  return out


def _linear(key: str, ours: Path, bias: bool = True) -> list[Rule]:
  out = [Rule(f"{key}.weight", ours + ("kernel",), "linear")]
  if bias:
    out.append(Rule(f"{key}.bias", ours + ("bias",), "verbatim"))
  return out


def rules(cfg: TokenizerConfig, layout: Layout = Layout()) -> list[Rule]:
  """The official key of every parameter of `VideoFlexTok(cfg)` (unscanned tree)."""
  e, d = "encoder.module_dict.", "decoder.module_dict."
  L = layout
  out = _linear(e + L.enc_patch_emb + ".patch_proj", ("encoder", "patch_emb", "patch_proj"))
  out.append(Rule(e + L.enc_posemb + ".posembs", ("encoder", "posemb", "posembs"), "posemb"))
  out.append(Rule(e + L.enc_registers + ".registers", ("encoder", "registers", "registers"),
                  "verbatim"))
  out += _trunk_rules(e + L.enc_transformer, ("encoder", "transformer"), cfg.enc_depth, False)
  out += _linear(e + L.enc_to_latents + ".proj", ("encoder", "to_latents"))

  out += _linear(d + L.dec_from_latents + ".proj", ("decoder", "from_latents"))
  if cfg.register_posemb != "none":
    kind = "sincos" if cfg.register_posemb == "sincos" else "posemb"
    out.append(Rule(d + L.dec_registers_posemb + ".posembs",
                    ("decoder", "registers_posemb", "posembs"), kind))
  out.append(Rule(d + L.dec_nested_dropout + ".dropout_mask_token",
                  ("decoder", "nested_dropout_token"), "verbatim"))
  if cfg.prefix_masking:
    out.append(Rule(d + L.dec_prefix_masking + ".dropout_mask_token",
                    ("decoder", "prefix_mask_token"), "verbatim"))
  out.append(Rule(d + L.dec_null_cond + ".nullcond", ("decoder", "null_cond"), "verbatim"))
  out += _linear(d + L.dec_patch_emb + ".patch_proj", ("decoder", "patch_emb", "patch_proj"))
  out.append(Rule(d + L.dec_posemb + ".posembs", ("decoder", "posemb", "posembs"), "posemb"))
  out += _linear(d + L.dec_time_embedder + ".mlp.0", ("decoder", "time_embedder", "mlp_0"))
  out += _linear(d + L.dec_time_embedder + ".mlp.2", ("decoder", "time_embedder", "mlp_2"))
  out += _trunk_rules(d + L.dec_transformer, ("decoder", "transformer"), cfg.dec_depth, True)
  if cfg.repa_layer is not None:
    out += _trunk_rules(d + L.dec_repa_head + ".transformer", ("decoder", "repa_head",
                                                                 "transformer"),
                        cfg.repa_depth, False)
    out += _linear(d + L.dec_repa_head + ".out_proj", ("decoder", "repa_head", "out_proj"),
                   bias=False)
  out += [Rule(d + L.dec_to_patches + ".adaLN_modulation.1.weight", ("decoder", "head_adaLN",
                                                                      "kernel"), "split_out"),
          Rule(d + L.dec_to_patches + ".adaLN_modulation.1.bias", ("decoder", "head_adaLN", "bias"),
               "reshape")]
  out += _linear(d + L.dec_to_patches + ".proj", ("decoder", "to_patches"))
  return out


def param_shapes(cfg: TokenizerConfig) -> dict[Path, tuple[int, ...]]:
  """Our parameter paths and shapes for `cfg` (unscanned; nothing is allocated)."""
  cfg = dataclasses.replace(cfg, scan=False, remat=False)
  lat = (1, cfg.patch_size[0], cfg.patch_size[1], cfg.patch_size[2], cfg.latent_channels)
  tree = jax.eval_shape(lambda: nn.unbox(init_params(VideoFlexTok(cfg), jax.random.key(0), lat)))
  return {tuple(k.key for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _checked_rules(cfg: TokenizerConfig, layout: Layout):
  shapes = param_shapes(cfg)
  rs = rules(cfg, layout)
  covered = {r.path for r in rs}
  if covered != set(shapes):  # the rule table must cover our tree exactly
    raise AssertionError(f"official_tokenizer rules out of sync with the model: "
                         f"{sorted(covered ^ set(shapes))}")
  return rs, shapes


def tokenizer_from_state_dict(tensors: Mapping[str, np.ndarray], cfg: TokenizerConfig,
                              layout: Layout = Layout(), prefix: str = "", dtype=np.float32,
                              where: str = "state dict", missing_ok: bool = False
                              ) -> tuple[dict, set[str]]:
  """Official tensors -> (our unscanned params as numpy arrays of `dtype`, keys consumed).

  Missing tensors (unless `missing_ok`: then their params are left out) and shape mismatches
  are ValueErrors naming the official keys.
  """
  rs, shapes = _checked_rules(cfg, layout)
  missing = [prefix + r.key for r in rs if prefix + r.key not in tensors]
  if missing and not missing_ok:
    raise ValueError(f"{where}: missing {len(missing)} tensor(s) the config implies: "
                     f"{missing[:8]}{' ...' if len(missing) > 8 else ''}")
  rs = [r for r in rs if prefix + r.key in tensors]
  params: dict = {}
  for r in rs:
    a = np.asarray(tensors[prefix + r.key])
    want = _official_shape(r.kind, shapes[r.path])
    if tuple(a.shape) != want:
      raise ValueError(f"{where}: {prefix + r.key} has shape {tuple(a.shape)}, the config "
                       f"implies {want} (for {'/'.join(r.path)} {shapes[r.path]})")
    node = params
    for name in r.path[:-1]:
      node = node.setdefault(name, {})
    node[r.path[-1]] = to_ours(r.kind, a, shapes[r.path]).astype(dtype, copy=False)
  return params, {prefix + r.key for r in rs}


def tokenizer_to_state_dict(cfg: TokenizerConfig, params: Mapping, layout: Layout = Layout(),
                            prefix: str = "", dtype=np.float32) -> dict[str, np.ndarray]:
  """Our params (scanned or not, boxed or plain) -> official keys and layouts."""
  params = unscan(nn.unbox(params))
  rs, shapes = _checked_rules(cfg, layout)
  out = {}
  for r in rs:
    node = params
    for name in r.path:
      if not isinstance(node, Mapping) or name not in node:
        raise ValueError(f"params: missing {'/'.join(r.path)} (official {r.key})")
      node = node[name]
    a = np.asarray(node)
    if tuple(a.shape) != shapes[r.path]:
      raise ValueError(f"params: {'/'.join(r.path)} has shape {tuple(a.shape)}, the config "
                       f"implies {shapes[r.path]}")
    out[prefix + r.key] = to_official(r.kind, a.astype(dtype, copy=False))
  return out


def unscan(params: Mapping) -> dict:
  """A tree with `nn.scan`-stacked trunks (`blocks/block/...`, leading layers axis) ->
  the loop layout (`blocks_0`, `blocks_1`, ...). Other subtrees are returned as they are."""
  out = {}
  for k, v in params.items():
    if k == "blocks" and isinstance(v, Mapping) and set(v) == {"block"}:
      depth = jax.tree_util.tree_leaves(v["block"])[0].shape[0]
      for i in range(depth):
        out[f"blocks_{i}"] = jax.tree.map(lambda a, i=i: a[i], dict(v["block"]))
    elif isinstance(v, Mapping):
      out[k] = unscan(v)
    else:
      out[k] = v
  return out


def scan(params: Mapping) -> dict:
  """Inverse of `unscan`: `blocks_0..blocks_{n-1}` -> `blocks/block` with a leading layers axis
  (the tree of a `scan=True` config)."""
  out, blocks = {}, {}
  for k, v in params.items():
    if k.startswith("blocks_") and k[7:].isdigit():
      blocks[int(k[7:])] = v
    elif isinstance(v, Mapping):
      out[k] = scan(v)
    else:
      out[k] = v
  if blocks:
    if sorted(blocks) != list(range(len(blocks))):
      raise ValueError(f"scan: non-consecutive blocks {sorted(blocks)}")
    out["blocks"] = {"block": jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]),
                                           *[blocks[i] for i in range(len(blocks))])}
  return out
