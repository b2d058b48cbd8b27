"""The autoregressive transformer of the generation stage (paper 3.3 and F.2, Tables 6 and 7).

A LLaMA-like decoder-only transformer over VideoFlexTok token ids: learned token and positional
embeddings (max sequence 1280), pre-norm blocks with RMSNorm (learned scale, eps 1e-5),
causal self-attention (no biases, scale 1/sqrt(head_dim)), SwiGLU MLP (hidden 8 x width / 3 as
`transformer.mlp_hidden_dim`, so each block holds ~12 width^2 parameters), a final RMSNorm and
an untied linear head over the 64 000 FSQ codes. Width = 64 x depth and heads = depth by default.
Dropout (C2V: 0.1) on the attention probabilities (`attn_dropout`), after the attention output
projection and after the MLP (`dropout`); rng name "dropout".

Conditioning: position 0 holds the [SOS] embedding plus a class embedding (`num_classes` rows
and a learned null class at index `num_classes`). T2V (`text_dim` > 0) adds a cross-attention
sub-block to every block (after self-attention) over the text features with a learned null-text
token prepended: a row whose `text_mask` is all False (or `text=None`) attends to the null token
only, any other row to its valid text tokens only. Classifier-free-guidance dropout is the
training task's job: it sets `label = num_classes` and/or an all-False `text_mask` per dropped
row; sampling uses the same inputs for its unconditional rows.

Shapes: tokens [B, L] int32, label [B] int32, text [B, Lt, text_dim], text_mask [B, Lt] bool ->
logits [B, L, vocab] float32, where logits[:, i] predicts tokens[:, i] (the input at position i
is tokens[:, i - 1], at position 0 the [SOS] + condition embedding).

KV cache (`decode`, `init_cache`): keys and values of every layer in one array per kind,
[depth, B, S, H, Dh] (logical axes `CACHE_AXES`: batch over the batch mesh axes, heads over
tensor), written at `index` with dynamic_update_slice; the text keys/values are computed by the
first decode call (prefill) and passed back in afterwards.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vft import sharding
from vft.models.config import DTYPES
from vft.models.transformer import (DENSE_MASK_IMPLS, REMAT_POLICIES, SwiGLU, dense_init,
                                    mlp_hidden_dim)

CACHE_AXES = ("layers", "batch", "length", "heads", "kv")
_HEADS = ("batch", "length", "heads", "kv")


@dataclasses.dataclass(frozen=True)
class ARConfig:
  """`config.model` of an AR run. width / num_heads / mlp_hidden 0: 64 x depth / depth /
  `mlp_hidden_dim(width)` (set in __post_init__)."""
  vocab_size: int = 64000
  depth: int = 12
  width: int = 0
  num_heads: int = 0
  mlp_hidden: int = 0
  max_len: int = 1280
  num_classes: int = 0  # 0: no class conditioning; label == num_classes is the null class
  text_dim: int = 0  # 0: no text cross-attention
  dropout: float = 0.0  # after the attention projection and the MLP
  attn_dropout: float = 0.0  # on the attention probabilities
  norm_eps: float = 1e-5
  init_std: float = 0.02
  dtype: str = "float32"  # compute dtype (and the KV cache's)
  param_dtype: str = "float32"
  attention_impl: str = "xla"  # einsum when attention dropout is active
  scan: bool = False
  remat: bool = False
  remat_policy: str = "nothing_saveable"

  def __post_init__(self):
    def bad(field, msg):
      raise ValueError(f"config.model.{field}: {msg}")
    if self.depth < 1:
      bad("depth", f"must be >= 1, got {self.depth}")
    if not self.width:
      object.__setattr__(self, "width", 64 * self.depth)
    if not self.num_heads:
      object.__setattr__(self, "num_heads", self.depth)
    if not self.mlp_hidden:
      object.__setattr__(self, "mlp_hidden", mlp_hidden_dim(self.width))
    if self.width % self.num_heads:
      bad("width", f"{self.width} is not a multiple of num_heads {self.num_heads}")
    for name in ("vocab_size", "max_len"):
      if getattr(self, name) < 1:
        bad(name, f"must be >= 1, got {getattr(self, name)}")
    for name in ("num_classes", "text_dim"):
      if getattr(self, name) < 0:
        bad(name, f"must be >= 0 (0: off), got {getattr(self, name)}")
    for name in ("dropout", "attn_dropout"):
      if not 0.0 <= getattr(self, name) < 1.0:
        bad(name, f"must be in [0, 1), got {getattr(self, name)}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        bad(name, f"{getattr(self, name)!r} is not one of {sorted(DTYPES)}")
    if self.attention_impl not in DENSE_MASK_IMPLS:
      bad("attention_impl", f"{self.attention_impl!r} is not one of {DENSE_MASK_IMPLS}")
    if self.remat_policy not in REMAT_POLICIES:
      bad("remat_policy", f"{self.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}")

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def params_dtype(self):
    return DTYPES[self.param_dtype]

  @classmethod
  def from_config(cls, cfg: Any) -> "ARConfig":
    """From an ml_collections ConfigDict (or dict); unknown keys are an error."""
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f"config.model: unknown AR fields {unknown}; expected some of "
                       f"{sorted(fields)}")
    return cls(**d)


def init_cache(cfg: ARConfig, batch: int, length: int) -> dict[str, jax.Array]:
  """An empty KV cache: {"k", "v"} each [depth, batch, length, H, Dh] in the compute dtype."""
  if length > cfg.max_len:
    raise ValueError(f"KV cache length {length} exceeds config.model.max_len {cfg.max_len}")
  shape = (cfg.depth, batch, length, cfg.num_heads, cfg.head_dim)
  zeros = jnp.zeros(shape, cfg.compute_dtype)
  return {"k": sharding.constrain(zeros, CACHE_AXES), "v": sharding.constrain(zeros, CACHE_AXES)}


def _attend(q, k, v, mask, *, impl, dropout, deterministic, name):
  """q [B, Sq, H, Dh], k/v [B, Sk, H, Dh], mask [B or 1, 1, Sq, Sk] bool -> [B, Sq, H, Dh]."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  if impl == "einsum" or (dropout > 0 and not deterministic):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = nn.Dropout(dropout, name=name)(probs, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
  else:
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=impl)
  return sharding.constrain(out, _HEADS)


def _dense(cfg: ARConfig, features, names, name: str, axis=-1) -> nn.DenseGeneral:
  """A bias-free projection with normal(init_std) kernels named by logical `names`."""
  return nn.DenseGeneral(
      features, axis=axis, use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
      kernel_init=dense_init(names, nn.initializers.normal(cfg.init_std)), name=name)


def _heads(cfg: ARConfig, name: str, x: jax.Array) -> jax.Array:
  """q/k/v projection [B, S, Din] -> [B, S, H, Dh]."""
  y = _dense(cfg, (cfg.num_heads, cfg.head_dim), ("embed", "heads", "kv"), name)(x)
  return sharding.constrain(y, _HEADS)


def _out_proj(cfg: ARConfig, name: str, x: jax.Array) -> jax.Array:
  """[B, S, H, Dh] -> [B, S, D]."""
  return _dense(cfg, cfg.width, ("heads", "kv", "embed"), name, axis=(-2, -1))(x)


def _rms_norm(cfg: ARConfig, name: str) -> nn.RMSNorm:
  return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                    scale_init=dense_init(("norm",), nn.initializers.ones), name=name)


class Block(nn.Module):
  """Pre-norm block: causal self-attention (+ KV cache), text cross-attention (T2V), SwiGLU.

  x [B, S, D]; cache None or (k, v) [B, Smax, H, Dh] (this chunk goes at `index`); mask
  [1, 1, S, Sk]; text [B, Lt+1, Dt] (with the null token) or None when text_kv (k, v)
  [B, Lt+1, H, Dh] is given; text_mask [B, Lt+1]. Returns (x, (new_kv, text_kv)) where new_kv
  (k, v) [B, S, H, Dh] are this chunk's keys / values (None without a cache).
  """
  cfg: ARConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, cache, text_kv, mask, text, text_mask, index):
    c, det = self.cfg, self.deterministic
    impl = c.attention_impl
    h = _rms_norm(c, "attn_norm")(x)
    q, k, v = (_heads(c, n, h) for n in ("wq", "wk", "wv"))
    if cache is not None:  # attend over the cached keys with this chunk's written in
      new = (k.astype(cache[0].dtype), v.astype(cache[1].dtype))
      k, v = (sharding.constrain(jax.lax.dynamic_update_slice_in_dim(a, b, index, axis=1),
                                 _HEADS) for a, b in zip(cache, new))
      cache = new  # only the new entries leave the layer: the caller writes them in place
    h = _attend(q, k, v, mask, impl=impl, dropout=c.attn_dropout, deterministic=det,
                name="attn_dropout")
    h = _out_proj(c, "proj", h)
    x = x + nn.Dropout(c.dropout, name="proj_dropout")(h, deterministic=det)
    if c.text_dim:
      h = _rms_norm(c, "cross_norm")(x)
      q = _heads(c, "cross_wq", h)
      if text_kv is None:
        text_kv = (_heads(c, "cross_wk", text), _heads(c, "cross_wv", text))
      h = _attend(q, *text_kv, text_mask[:, None, None, :], impl=impl, dropout=c.attn_dropout,
                  deterministic=det, name="cross_attn_dropout")
      h = _out_proj(c, "cross_proj", h)
      x = x + nn.Dropout(c.dropout, name="cross_dropout")(h, deterministic=det)
    h = SwiGLU(c.mlp_hidden, c.compute_dtype, c.params_dtype, name="mlp")(
        _rms_norm(c, "mlp_norm")(x))
    x = x + nn.Dropout(c.dropout, name="mlp_dropout")(h, deterministic=det)
    return sharding.constrain(x, ("batch", "length", "embed")), (cache, text_kv)


class _ScanBody(nn.Module):
  """One scanned layer: carry x, per-layer xs (cache, text_kv) -> ys (cache, text_kv)."""
  cfg: ARConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, xs, mask, text, text_mask, index):
    cache, text_kv = xs
    return Block(self.cfg, self.deterministic, name="block")(
        x, cache, text_kv, mask, text, text_mask, index)


class ARTransformer(nn.Module):
  """See the module docstring. `__call__` is the training forward; `decode` the cached one."""
  cfg: ARConfig

  @nn.compact
  def __call__(self, tokens, *, label=None, text=None, text_mask=None, deterministic=True,
               cache=None, index=None, text_kv=None):
    """tokens [B, L] int32 -> logits [B, L, vocab] float32 (full causal forward).

    With `cache` (see `decode`): tokens [B, C] are the inputs of positions index .. index+C-1
    and the call returns (logits [B, C, vocab], cache, text_kv)."""
    c = self.cfg
    b, n = tokens.shape
    decode = cache is not None
    start = index if decode else 0
    if not decode and n > c.max_len:
      raise ValueError(f"AR sequence length {n} exceeds config.model.max_len {c.max_len}")
    q_pos = start + jnp.arange(n)
    names = ("batch", "length", "embed")

    emb = self.param("tok_embedding", dense_init(("vocab", "embed"), nn.initializers.normal(
        c.init_std)), (c.vocab_size, c.width), c.params_dtype)
    pos_table = self.param("pos_embedding", dense_init((None, "embed"), nn.initializers.normal(
        c.init_std)), (c.max_len, c.width), c.params_dtype)
    first = self.param("sos", dense_init(("embed",), nn.initializers.normal(c.init_std)),
                       (c.width,), c.params_dtype)[None]
    first = first + self._class_embedding(label, b)  # [B or 1, D]
    inputs = tokens if decode else jnp.concatenate([tokens[:, :1], tokens[:, :-1]], axis=1)
    x = jnp.take(emb, inputs, axis=0)
    x = jnp.where((q_pos == 0)[None, :, None], first[:, None].astype(x.dtype), x)
    x = x + jax.lax.dynamic_slice_in_dim(pos_table, start, n)[None]
    x = sharding.constrain(x.astype(c.compute_dtype), names)

    if text_kv is not None:
      text, text_mask = None, text_kv["mask"]
      kv = (text_kv["k"], text_kv["v"])
    else:
      text, text_mask = self._text_inputs(text, text_mask, b)
      kv = None
    k_len = cache["k"].shape[2] if decode else n
    mask = (jnp.arange(k_len)[None, :] <= q_pos[:, None])[None, None]  # [1, 1, n, k_len]
    layer_cache = (cache["k"], cache["v"]) if decode else None
    x, (new_cache, new_kv) = self._blocks(x, layer_cache, kv, mask, text, text_mask, index,
                                          deterministic)
    x = _rms_norm(c, "final_norm")(x)
    logits = _dense(c, c.vocab_size, ("embed", "vocab"), "head")(x)
    logits = sharding.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
    if not decode:
      return logits
    # [depth, B, n, H, Dh] written at `index` into the whole cache: in place inside a loop
    new_cache = {name: sharding.constrain(jax.lax.dynamic_update_slice_in_dim(
        cache[name], new.astype(cache[name].dtype), index, axis=2), CACHE_AXES)
        for name, new in zip(("k", "v"), new_cache)}
    if new_kv is not None:
      new_kv = {"k": new_kv[0], "v": new_kv[1], "mask": text_mask}
    return logits, new_cache, new_kv

  def decode(self, tokens, index, cache, *, label=None, text=None, text_mask=None,
             text_kv=None):
    """Cached forward of positions index .. index+C-1: tokens [B, C] are their inputs (the
    previous sequence tokens; ignored at position 0, which takes [SOS] + condition), cache from
    `init_cache` -> (logits [B, C, vocab] float32, cache, text_kv). The first call computes the
    text keys/values from `text` / `text_mask` (T2V) and returns them as text_kv
    {"k", "v": [depth, B, Lt+1, H, Dh], "mask": [B, Lt+1]}; later calls pass it back instead of
    the text (None without text cross-attention)."""
    return self(tokens, label=label, text=text, text_mask=text_mask, cache=cache, index=index,
                text_kv=text_kv)

  def _class_embedding(self, label, b):
    c = self.cfg
    if not c.num_classes:
      if label is not None:
        raise ValueError("ARTransformer: a label was given but config.model.num_classes is 0")
      return jnp.zeros((1, c.width), c.params_dtype)
    table = self.param("class_embedding", dense_init((None, "embed"), nn.initializers.normal(
        c.init_std)), (c.num_classes + 1, c.width), c.params_dtype)
    if label is None:  # unconditional: the null class
      label = jnp.full((b,), c.num_classes, jnp.int32)
    label = jnp.asarray(label)
    if label.shape != (b,):
      raise ValueError(f"ARTransformer: label shape {label.shape}, expected ({b},)")
    return jnp.take(table, label, axis=0)

  def _text_inputs(self, text, text_mask, b):
    """-> (text [B, Lt+1, Dt] with the null token first, mask [B, Lt+1]) or (None, None)."""
    c = self.cfg
    if not c.text_dim:
      if text is not None:
        raise ValueError("ARTransformer: text was given but config.model.text_dim is 0")
      return None, None
    null = self.param("null_text", dense_init((None, "embed"), nn.initializers.normal(1.0)),
                      (1, c.text_dim), c.params_dtype)
    if text is None:
      text = jnp.zeros((b, 0, c.text_dim), c.compute_dtype)
      text_mask = jnp.zeros((b, 0), bool)
    if text.ndim != 3 or text.shape[0] != b or text.shape[2] != c.text_dim:
      raise ValueError(f"ARTransformer: text shape {text.shape}, expected ({b}, Lt, "
                       f"{c.text_dim}) (config.model.text_dim)")
    if text_mask is None:
      text_mask = jnp.ones(text.shape[:2], bool)
    if text_mask.shape != text.shape[:2]:
      raise ValueError(f"ARTransformer: text_mask shape {text_mask.shape}, expected "
                       f"{text.shape[:2]}")
    text_mask = text_mask.astype(bool)
    null = jnp.broadcast_to(null.astype(c.compute_dtype)[None], (b, 1, c.text_dim))
    text = jnp.concatenate([null, text.astype(c.compute_dtype)], axis=1)
    text_mask = jnp.concatenate([~text_mask.any(-1, keepdims=True), text_mask], axis=1)
    return text, text_mask

  def _blocks(self, x, cache, text_kv, mask, text, text_mask, index, deterministic):
    c = self.cfg
    if c.scan:
      body = _ScanBody
      if c.remat:
        body = nn.remat(body, prevent_cse=False, policy=REMAT_POLICIES[c.remat_policy])
      stack = nn.scan(
          body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
          length=c.depth, metadata_params={nn.PARTITION_NAME: "layers"})
      return stack(c, deterministic, name="blocks")(x, (cache, text_kv), mask, text, text_mask,
                                                     index)
    block_cls = Block
    if c.remat:
      block_cls = nn.remat(Block, policy=REMAT_POLICIES[c.remat_policy])
    caches, kvs = [], []
    for i in range(c.depth):
      layer = None if cache is None else (cache[0][i], cache[1][i])
      layer_kv = None if text_kv is None else (text_kv[0][i], text_kv[1][i])
      x, (layer, layer_kv) = block_cls(c, deterministic, name=f"blocks_{i}")(
          x, layer, layer_kv, mask, text, text_mask, index)
      caches.append(layer)
      kvs.append(layer_kv)
    stack = lambda xs: None if xs[0] is None else tuple(jnp.stack(a) for a in zip(*xs))
    return x, (stack(caches), stack(kvs))
