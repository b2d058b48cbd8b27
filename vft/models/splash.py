"""Splash attention (Pallas TPU kernel) for `model.attention_impl="splash"`.

Same semantics as the xla path of `transformer.Attention`: q, k already QK-normed, logits
scaled by `scale`, a static boolean mask [S, S] shared by all heads and samples (one of
`masks.MASK_MODES`). The kernel never materialises the [B, H, S, S] logits.

- Mask: our numpy mask becomes a `mask_lib.NumpyMask` per head. Its structure must be known at
  trace time, so `Transformer` wraps it in a `masks.StaticMask` (a pytree without leaves) that
  passes through `nn.scan` / `nn.remat` unchanged.
- Sequence padding: the kernel tiles S in blocks that are multiples of 128. S is padded to
  S_pad = ceil(S / 128) * 128 (no-op when 128 divides S); a padded query attends only itself,
  no real query attends a padded key, and the padded rows are dropped. Block size: the largest
  of 512, 256, 128 dividing S_pad (S = 2560 -> 512).
- Sharding: under a mesh (`sharding.jit`) the kernel runs per shard in a `jax.shard_map` over
  the batch and heads axes of the logical rules (`sharding.per_shard`); sequence and head_dim
  are whole on every shard.
- Platforms: TPU. Elsewhere the kernel runs only in Pallas interpret mode, selected with the
  environment variable VFT_SPLASH_INTERPRET=1 (read at trace time; slow, meant for CPU tests);
  without it a non-TPU mesh is an error (`check_platform`).
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

from vft import sharding
from vft.models.masks import StaticMask

INTERPRET_ENV = "VFT_SPLASH_INTERPRET"
LANES = 128
BLOCK_CANDIDATES = (512, 256, 128)


def padded_length(seq_len: int) -> int:
  """S -> S_pad, the next multiple of 128."""
  return -(-seq_len // LANES) * LANES


def block_size(padded_len: int) -> int:
  """The largest of 512, 256, 128 dividing S_pad."""
  return next(b for b in BLOCK_CANDIDATES if padded_len % b == 0)


def padded_mask(mask: np.ndarray) -> np.ndarray:
  """mask [S, S] -> [S_pad, S_pad]: padded queries attend only themselves."""
  s = mask.shape[0]
  sp = padded_length(s)
  out = np.zeros((sp, sp), dtype=bool)
  out[:s, :s] = mask
  pad = np.arange(s, sp)
  out[pad, pad] = True
  return out


@functools.lru_cache(maxsize=32)
def _kernel(mask: StaticMask, num_heads: int, interpret: bool) -> kernel_lib.SplashAttentionKernel:
  """The splash MHA kernel for one shard's `num_heads` heads (built once per mask/heads)."""
  full = padded_mask(mask.array)
  b = block_size(full.shape[0])
  sizes = kernel_lib.BlockSizes(
      block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
      block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  heads = mask_lib.MultiHeadMask([mask_lib.NumpyMask(full)] * num_heads)
  with jax.ensure_compile_time_eval():  # concrete mask-info arrays, safe to cache across traces
    return kernel_lib.make_splash_mha(heads, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                      interpret=interpret)


def interpret_mode() -> bool:
  return os.environ.get(INTERPRET_ENV, "0") not in ("", "0", "false", "False")


def check_platform(interpret: bool) -> None:
  """Raises unless the kernel can run on the active mesh's platform: TPU, or interpret mode.

  Outside a mesh nothing is checked here: shape-only traces (`jax.eval_shape` of the init, as
  `vft plan` does on a CPU host for a TPU target) never lower the kernel, and a lowering on a
  CPU without interpret mode fails in Pallas ("Only interpret mode is supported on CPU").
  """
  device = jax.sharding.get_abstract_mesh().abstract_device  # None outside a mesh
  if device is not None and device.platform != "tpu" and not interpret:
    raise ValueError(
        f"model.attention_impl='splash' is a TPU kernel; the mesh's platform is "
        f"{device.platform!r}. Use attention_impl='xla' (or 'cudnn' on GPUs), or set "
        f"{INTERPRET_ENV}=1 to run the kernel in Pallas interpret mode (slow; for tests)")


def _local_attention(q, k, v, *, mask: StaticMask, scale: float, interpret: bool):
  """One shard: q, k, v [b, S, h, Dh] -> [b, S, h, Dh]."""
  s, h = q.shape[1], q.shape[2]
  pad = padded_length(s) - s

  def heads_major(x):  # [b, S, h, Dh] -> [b, h, S_pad, Dh]
    return jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, pad), (0, 0)))

  fn = _kernel(mask, h, interpret)
  out = jax.vmap(fn)(heads_major(q * jnp.asarray(scale, q.dtype)), heads_major(k), heads_major(v))
  return out[:, :, :s].transpose(0, 2, 1, 3)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: StaticMask,
              scale: float) -> jax.Array:
  """q, k, v [B, S, H, Dh], mask [S, S] (static) -> [B, S, H, Dh]; softmax(scale q k^T) v."""
  if mask.array.shape != (q.shape[1],) * 2:
    raise ValueError(f"attention_impl='splash': mask {mask.array.shape} does not match the "
                     f"sequence length {q.shape[1]}")
  interpret = interpret_mode()
  check_platform(interpret)
  local = functools.partial(_local_attention, mask=mask, scale=scale, interpret=interpret)
  return sharding.per_shard(local, ("batch", None, "heads", None), q, k, v)
