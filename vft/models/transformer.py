"""The transformer trunk shared by the encoder, the flow decoder and the REPA head.

Matches the official `FlexTransformer`: pre-norm blocks, parameter-free LayerNorm (eps 1e-5,
fp32), QK-norm over head_dim, attention scale 8/head_dim, separate q/k/v/out projections without
bias, SwiGLU MLP with hidden int(2*int(4*D)/3) and no biases, no final norm. The decoder variant
adds adaLN-zero modulation with expansion E: every token slot of a latent-frame block belongs to
a sub-sequence e (patches 0, registers 1) and gets its own (gate_msa, gate_mlp, shift_msa,
scale_msa, shift_mlp, scale_mlp) from `Linear(SiLU(temb)) -> [E, 6, D]`.

Shapes: x [B, S, D] with S = T * L (L = slots per latent frame), mask [S, S] bool (static, a
`masks.StaticMask`, with the attention impls of STATIC_MASK_IMPLS).

Attention impls: "xla" / "cudnn" (`jax.nn.dot_product_attention`), "einsum" (dense einsum +
softmax), "splash" (Pallas TPU kernel, `splash.py`), "blocked" (only the key blocks the mask
allows, `block_attention.py`), "auto" (`resolve_impl`: the fastest measured one per platform).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vft import sharding
from vft.models import block_attention, masks, splash

Dtype = Any
ATTENTION_IMPLS = ("xla", "einsum", "cudnn", "splash", "blocked", "auto")
DENSE_MASK_IMPLS = ("xla", "einsum", "cudnn")  # impls that take any (traced, batched) mask
STATIC_MASK_IMPLS = ("splash", "blocked", "auto")  # impls that need the mask at trace time
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
REMAT_POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def layer_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Parameter-free LayerNorm over the last axis, computed in fp32, cast back to x.dtype."""
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
  return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def mlp_hidden_dim(dim: int) -> int:
  """SwiGLU hidden width of the release: int(2 * int(4 * D) / 3) (3072 for 1152, 4778 for 1792)."""
  return int(2 * int(4 * dim) / 3)


def resolve_impl(impl: str, dtype, head_dim: int, seq_len: int,
                 platform: str | None = None) -> str:
  """attention_impl "auto" -> the fastest available one on the platform of the active mesh (or
  the default backend outside a mesh): cuDNN on GPUs where its constraints hold (bf16/fp16,
  head_dim <= 128 and a multiple of 8, even S; else xla), splash on TPUs, "blocked" on CPUs
  (measured fastest there: benchmarks/attention.py). Other impls are returned unchanged."""
  if impl != "auto":
    return impl
  if platform is None:
    device = jax.sharding.get_abstract_mesh().abstract_device
    platform = device.platform if device is not None else jax.default_backend()
  if platform == "gpu":
    ok = (jnp.dtype(dtype) in map(jnp.dtype, CUDNN_DTYPES) and head_dim <= 128
          and head_dim % 8 == 0 and seq_len % 2 == 0)
    return "cudnn" if ok else "xla"
  if platform == "tpu":
    return "splash"
  return "blocked"


class _LogicalParam(nn.LogicallyPartitioned):
  """A logically partitioned parameter whose unboxing constrains it with `sharding.constrain`
  (mesh axes that do not divide a dimension are dropped, as in the state shardings), and not at
  all while its rank differs from its names: `nn.DenseGeneral` initialises multi-dimensional
  kernels / biases flat and unboxes them before reshaping (flax issue 3676)."""

  def unbox(self, apply_constraint=True):
    if not apply_constraint or self.value.ndim != len(self.names):
      return self.value
    return sharding.constrain(self.value, self.names)


def accumulating_dot(dtype):
  """The `dot_general` for flax Dense layers computing in `dtype`: None (flax's) for float32;
  for reduced precision, bf16 x bf16 products accumulated and returned in fp32
  (`preferred_element_type`), which CPU matrix units, tensor cores and TPU MXUs run fast while
  the rest of the layer (residual stream, norms, softmax, gates) stays fp32."""
  if jnp.dtype(dtype) == jnp.float32:
    return None
  return functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32)


def dense_init(names: Sequence[str | None], init=nn.initializers.xavier_uniform()):
  """`init` with logical axis names (`nn.with_logical_partitioning`, usable in DenseGeneral)."""
  return lambda *args: _LogicalParam(init(*args), tuple(names))


class Attention(nn.Module):
  """Multi-head self-attention with QK-norm and scale 8/head_dim."""
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  impl: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, rows: np.ndarray | None = None) -> jax.Array:
    """x [B, S, D], mask [S, S] bool (a `masks.StaticMask` for STATIC_MASK_IMPLS) -> [B, S, D];
    with `rows` (static query positions, R of them) only those queries: -> [B, R, D]."""
    dim = x.shape[-1]
    dot = accumulating_dot(self.dtype)
    proj = functools.partial(
        nn.DenseGeneral, features=(self.num_heads, self.head_dim), use_bias=False,
        dtype=self.dtype, param_dtype=self.param_dtype, dot_general=dot,
        kernel_init=dense_init(("embed", "heads", "kv")))
    impl = resolve_impl(self.impl, self.dtype, self.head_dim, x.shape[1])
    # splash keeps its square kernel: all queries, then the rows of the output.
    q_rows = rows if impl != "splash" else None
    xq = x if q_rows is None else jnp.take(x, q_rows, axis=1)
    q, k, v = proj(name="wq")(xq), proj(name="wk")(x), proj(name="wv")(x)  # [B, S(R), H, Dh]
    q, k, v = (a.astype(self.dtype) for a in (layer_norm(q), layer_norm(k), v))
    heads = ("batch", "length", "heads", "kv")
    q, k, v = (sharding.constrain(a, heads) for a in (q, k, v))
    scale = 8.0 / self.head_dim
    if impl == "splash":
      out = splash.attention(q, k, v, masks.static_mask(mask), scale)
      if rows is not None:
        out = jnp.take(out, rows, axis=1)
    elif impl == "blocked":
      m = masks.static_mask(mask)
      # q and k are parameter-free-LayerNormed over head_dim: |q . k| <= head_dim.
      out = block_attention.attention(q, k, v, m if q_rows is None else m.rows(q_rows), scale,
                                      logit_bound=scale * self.head_dim)
    elif impl in ("einsum", "xla", "cudnn"):
      mask = jnp.asarray(mask.array if isinstance(mask, masks.StaticMask) else mask)
      if q_rows is not None:
        mask = jnp.take(mask, q_rows, axis=0)
      if impl == "einsum":
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
        logits = jnp.where(mask[None, None], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32)
      else:
        out = jax.nn.dot_product_attention(
            q, k, v, mask=mask[None, None], scale=scale, implementation=impl)
    else:
      raise ValueError(f"attention impl {self.impl!r} unknown; expected one of {ATTENTION_IMPLS}")
    out = sharding.constrain(out, heads)
    return nn.DenseGeneral(
        dim, axis=(-2, -1), use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
        dot_general=dot, kernel_init=dense_init(("heads", "kv", "embed")), name="proj")(out)


class SwiGLU(nn.Module):
  """fc2(SiLU(fc1(x)) * fc3(x)), no biases."""
  hidden: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype,
                              param_dtype=self.param_dtype,
                              dot_general=accumulating_dot(self.dtype))
    h = nn.silu(dense(self.hidden, kernel_init=dense_init(("embed", "mlp")), name="fc1")(x))
    h = h * dense(self.hidden, kernel_init=dense_init(("embed", "mlp")), name="fc3")(x)
    h = sharding.constrain(h, ("batch", "length", "mlp"))
    # In x's dtype: fp32 (accumulated) under a fp32 residual stream, x's own otherwise (ar.py).
    return dense(x.shape[-1], kernel_init=dense_init(("mlp", "embed")), name="fc2")(h).astype(
        jnp.promote_types(x.dtype, self.dtype))


class Block(nn.Module):
  """Pre-norm transformer block, optionally with adaLN-zero modulation.

  With `adaln_segments` (a tuple of E-ary segment ids, one per slot of a latent-frame block of
  length L), `cond` [B, D] produces per-segment modulations; otherwise `cond` is ignored.
  With `rows` (static sequence positions) the block returns only those R rows, [B, R, D]: keys
  and values still come from the whole sequence, but queries, the output projection and the
  MLP run on the R rows (the last block of a trunk whose caller keeps part of its output).
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  adaln_segments: tuple[int, ...] | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "xla"
  rows: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, cond: jax.Array | None = None) -> jax.Array:
    b, s, d = x.shape
    attn = Attention(self.num_heads, self.head_dim, self.dtype, self.param_dtype,
                     self.attention_impl, name="attn")
    mlp = SwiGLU(self.mlp_dim, self.dtype, self.param_dtype, name="mlp")
    dtype = x.dtype  # the residual stream keeps its dtype (fp32-accumulated branches add in)
    rows = None if self.rows is None else np.asarray(self.rows, dtype=np.int32)
    if rows is not None and (rows.ndim != 1 or rows.min() < 0 or rows.max() >= s):
      raise ValueError(f"Block.rows must be positions in [0, {s}), got {self.rows!r:.80}")
    x_rows = x if rows is None else jnp.take(x, rows, axis=1)
    if self.adaln_segments is None:
      x = x_rows + attn(layer_norm(x), mask, rows)
      x = x + mlp(layer_norm(x))
      return sharding.constrain(x.astype(dtype), ("batch", "length", "embed"))

    seg = np.asarray(self.adaln_segments, dtype=np.int32)
    num_seg, block = int(seg.max()) + 1, seg.size
    if s % block:
      raise ValueError(f"adaLN block: sequence length {s} is not a multiple of the block {block}")
    mod = nn.DenseGeneral(
        (num_seg, 6, d), dtype=self.dtype, param_dtype=self.param_dtype,
        dot_general=accumulating_dot(self.dtype),
        kernel_init=dense_init(("embed", None, None, "mlp"), nn.initializers.zeros),
        bias_init=dense_init((None, None, "mlp"), nn.initializers.zeros),
        name="adaLN_modulation")(nn.silu(cond)).astype(jnp.float32)  # [B, E, 6, D]
    # Per slot of a frame block [B, 1, L, 6, D] (h viewed as [B, T, L, D]); per kept row
    # [B, R, 6, D] (h as it is).
    slot_mod = mod[:, seg][:, None]
    row_mod = slot_mod if rows is None else mod[:, seg[rows % block]]

    def apply(h, m, fn):
      hv = h.reshape(b, -1, block, d) if m.ndim == 5 else h
      return fn(hv.astype(jnp.float32), m).reshape(h.shape)

    def modulate(h, m, i_shift, i_scale):
      return apply(h, m, lambda hv, m: hv * (1 + m[..., i_scale, :]) + m[..., i_shift, :]
                   ).astype(h.dtype)

    def gate(h, m, i):
      return apply(h, m, lambda hv, m: hv * m[..., i, :])

    # modulation index: 0 gate_msa, 1 gate_mlp, 2 shift_msa, 3 scale_msa, 4 shift_mlp, 5 scale_mlp
    h = attn(modulate(layer_norm(x), slot_mod, 2, 3), mask, rows)
    x = x_rows + gate(h, row_mod, 0)
    h = mlp(modulate(layer_norm(x), row_mod, 4, 5))
    x = x + gate(h, row_mod, 1)
    return sharding.constrain(x.astype(dtype), ("batch", "length", "embed"))


class _ScanBody(nn.Module):
  """One scanned layer: carry (x, captured) through a Block; capture x after `capture_layer`."""
  block_kwargs: dict
  capture_layer: int | None = None

  @nn.compact
  def __call__(self, carry, layer_idx, mask, cond):
    x, captured = carry
    x = Block(**self.block_kwargs, name="block")(x, mask, cond)
    if self.capture_layer is not None:
      captured = jnp.where(layer_idx == self.capture_layer, x, captured)
    return (x, captured), None


class Transformer(nn.Module):
  """`depth` blocks; `scan` stacks them under one `blocks` scope with a leading `layers` axis.

  Returns (x [B, S, D], captured) where captured is the output of block `capture_layer`
  (0-based; None if not requested).
  """
  depth: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  adaln_segments: tuple[int, ...] | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "xla"
  scan: bool = False
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  capture_layer: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, cond: jax.Array | None = None,
               out_rows: np.ndarray | None = None):
    """x [B, S, D] -> (x [B, S, D], captured); with `out_rows` (static positions) the output is
    only those rows, [B, R, D], and the last block computes nothing else (`Block.rows`; with
    `scan` the rows are taken after the stack)."""
    if self.capture_layer is not None and not 0 <= self.capture_layer < self.depth:
      raise ValueError(f"capture layer {self.capture_layer} outside [0, {self.depth})")
    if out_rows is not None and self.capture_layer == self.depth - 1:
      raise ValueError("Transformer: out_rows would prune the captured last layer")
    rows = None if out_rows is None else tuple(int(r) for r in np.asarray(out_rows).ravel())
    kw = dict(num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
              adaln_segments=self.adaln_segments, dtype=self.dtype,
              param_dtype=self.param_dtype, attention_impl=self.attention_impl)
    static = self.attention_impl in STATIC_MASK_IMPLS
    mask = masks.static_mask(mask) if static else jnp.asarray(mask)
    if self.scan:
      body = _ScanBody
      if self.remat:
        body = nn.remat(body, prevent_cse=False, policy=REMAT_POLICIES[self.remat_policy])
      stack = nn.scan(
          body, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(0, nn.broadcast, nn.broadcast), length=self.depth,
          metadata_params={nn.PARTITION_NAME: "layers"})
      captured = jnp.zeros_like(x) if self.capture_layer is not None else None
      (x, captured), _ = stack(kw, self.capture_layer, name="blocks")(
          (x, captured), jnp.arange(self.depth), mask, cond)
      if rows is not None:
        x = jnp.take(x, np.asarray(rows, dtype=np.int32), axis=1)
      return x, captured
    block_cls = Block
    if self.remat:
      block_cls = nn.remat(Block, policy=REMAT_POLICIES[self.remat_policy])
    captured = None
    for i in range(self.depth):
      last = i == self.depth - 1
      x = block_cls(**kw, rows=rows if last else None, name=f"blocks_{i}")(x, mask, cond)
      if i == self.capture_layer:
        captured = x
    return x, captured
