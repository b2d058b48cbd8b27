"""Building blocks of the VidTok causal VAE (`vidtok_kl_causal_488_16chn`), channels-last.

Every activation is a video `x [B, T, H, W, C]`. Time is causal: a time convolution sees only
the current and earlier frames (zero frames are padded in front, none at the back). Spatial
convolutions run per frame, temporal ones per pixel, LayerNorms (eps 1e-6, affine) per
(t, h, w) position over the channels, and the mid attention per frame over its h*w positions.

Parameters (our names; `vft/convert/vidtok_weights.py` maps them to the official ones):
  CausalConv3d / CausalConv1d: kernel [kt, kh, kw, I, O] / [k, I, O], bias [O]
  nn.Conv (per-frame 2D):      kernel [kh, kw, I, O], bias [O]
  nn.Dense (1x1 convs):        kernel [I, O], bias [O]
  nn.LayerNorm:                scale [C], bias [C]
  Time{Down,Up}sample:         mix_factor [1] (mixing weight sigmoid(mix_factor))
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
_DN2 = ("NHWC", "HWIO", "NHWC")
# torch's Conv default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# CausalConv3d stacks its time taps along the inputs when kt * I is at most this (else along
# the outputs): measured on XLA:CPU, 3 -> 16 channels 3.4x faster stacked on the inputs, 16 ->
# 192 and 192 -> 192 1.2x faster stacked on the outputs.
_MAX_STACKED_INPUTS = 32


def layer_norm(eps: float, name: str) -> nn.LayerNorm:
  """Affine LayerNorm over channels, two-pass variance, computed in float32."""
  return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, use_fast_variance=False, name=name)


def _frame_conv(x: jax.Array, kernel: jax.Array, dtype: Dtype, pad_hw, pad_w=None) -> jax.Array:
  """Per-frame 2D convolution (time folded into the batch) with zero padding `pad_hw` (lo, hi)
  on H and `pad_w` on W (default: `pad_hw` on both; inside the convolution: no padded copy):
  x [B, T, H, W, I], kernel [kh, kw, I, O] -> [B, T, H', W', O] float32 (bf16 operands
  accumulate in float32)."""
  b, t, h, w, i = x.shape
  y = jax.lax.conv_general_dilated(
      x.reshape(b * t, h, w, i).astype(dtype), kernel.astype(dtype), (1, 1),
      (pad_hw, pad_hw if pad_w is None else pad_w), dimension_numbers=_DN2,
      preferred_element_type=jnp.float32)
  return y.reshape((b, t) + y.shape[1:])


def _shift(y: jax.Array, frames: int) -> jax.Array:
  """y [B, T, ...] delayed by `frames` in time (zero frames in front, the last ones dropped)."""
  pad = ((0, 0), (frames, 0)) + ((0, 0),) * (y.ndim - 2)
  return jnp.pad(y, pad)[:, :y.shape[1]]


class CausalConv3d(nn.Module):
  """[B, T, H, W, I] -> [B, T', H, W, O]: zero-pad (kt - 1) + (1 - stride) frames in front and
  (k - 1) pixels split floor/ceil around H and W (the reference uses the height kernel size for
  the width as well), then a VALID 3D convolution with stride (time_stride, 1, 1).

  Computed as one per-frame 2D convolution (XLA:CPU's 3D convolutions run 3-5x slower than its
  2D ones at these shapes) with the kt time taps stacked either along its inputs (the frames
  x[stride * t + j - pad] concatenated on channels, kernel [kh, kw, kt * I, O]; only the output
  frames are convolved: strided and narrow-input convolutions) or along its outputs (kernel
  [kh, kw, I, kt * O], then out[t] = sum_j y[stride * t + j - pad, tap j], zero before frame 0).
  `time_repeat=2` computes the convolution of `jnp.repeat(x, 2, axis=1)` (stride 1, kt 3) from
  x itself: frame 2s sees (k0 + k1) x[s-1] + k2 x[s] and frame 2s+1 sees k0 x[s-1] + (k1 + k2)
  x[s], one convolution of [x[s-1], x[s]] with both frames as outputs, so the doubled frames are
  never convolved (TimeUpsample). Returns float32.
  """
  features: int
  kernel_size: tuple[int, int, int] = (3, 3, 3)
  time_stride: int = 1
  dtype: Dtype = jnp.float32
  zero_init: bool = False
  time_repeat: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kt, kh, kw = self.kernel_size
    init = nn.initializers.zeros if self.zero_init else conv_init
    kernel = self.param("kernel", init, (kt, kh, kw, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    time_pad = (kt - 1) + (1 - self.time_stride)
    space_pad = kh - 1
    pad_hw = (space_pad // 2, space_pad - space_pad // 2)
    b, t = x.shape[:2]
    i, o = kernel.shape[3:]
    if self.time_repeat == 2 and kt == 3 and self.time_stride == 1:
      k0, k1, k2 = kernel
      # inputs [x[s-1], x[s]] (2I channels) -> outputs [frame 2s, frame 2s+1] (2O channels)
      taps = jnp.stack([jnp.stack([k0 + k1, k0], axis=-2), jnp.stack([k2, k1 + k2], axis=-2)],
                       axis=2).reshape(kh, kw, 2 * i, 2 * o)
      xs = jnp.concatenate([_shift(x, 1), x], axis=-1)
      y = _frame_conv(xs, taps, self.dtype, pad_hw)  # [B, T, H, W, 2O]
      y = y.reshape(y.shape[:4] + (2, o)).transpose(0, 1, 4, 2, 3, 5)
      return y.reshape((b, 2 * t) + y.shape[3:]) + bias.astype(jnp.float32)
    if self.time_repeat != 1:
      raise ValueError(f"CausalConv3d.time_repeat={self.time_repeat}: only 2 with a 3-frame "
                       f"kernel and stride 1 is supported")
    t_out = (t + time_pad - kt) // self.time_stride + 1
    span = self.time_stride * (t_out - 1) + 1
    if self.time_stride > 1 or kt * i <= _MAX_STACKED_INPUTS:
      # Taps stacked along the inputs: out[t] = conv2d([x[s t - pad], ..., x[s t - pad + kt - 1]])
      # convolves only the output frames (half the work at stride 2); for narrow inputs (the
      # RGB conv_in) it also avoids a kt-times wider output (3.4x faster there).
      xp = jnp.pad(x, ((0, 0), (time_pad, 0)) + ((0, 0),) * 3)
      xs = jnp.concatenate([xp[:, j:j + span:self.time_stride] for j in range(kt)], axis=-1)
      taps = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * i, o)
      return _frame_conv(xs, taps, self.dtype, pad_hw) + bias.astype(jnp.float32)
    taps = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(kh, kw, i, kt * o)
    y = _frame_conv(x, taps, self.dtype, pad_hw)
    y = jnp.pad(y.reshape(y.shape[:4] + (kt, o)), ((0, 0), (time_pad, 0)) + ((0, 0),) * 4)
    out = sum(y[:, j:j + span:self.time_stride, :, :, j] for j in range(kt))
    return out + bias.astype(jnp.float32)


class CausalConv1d(nn.Module):
  """Per-pixel causal time convolution: [B, T, H, W, I] -> [B, T, H, W, O], k - 1 zero frames in
  front. Kernel [k, I, O]."""
  features: int
  kernel_size: int = 3
  dtype: Dtype = jnp.float32
  zero_init: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    init = nn.initializers.zeros if self.zero_init else conv_init
    kernel = self.param("kernel", init, (k, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    # A 2D convolution over the [T, H*W] "image" with a [k, 1] kernel and k - 1 zero rows on
    # top (padded inside the convolution): 6x faster on XLA:CPU than the equivalent 3D
    # convolution with a 1x1 spatial kernel at the VAE's 128x128x16 level.
    b, t, h, w, i = x.shape
    y = jax.lax.conv_general_dilated(
        x.reshape(b, t, h * w, i).astype(self.dtype), kernel[:, None].astype(self.dtype), (1, 1),
        ((k - 1, 0), (0, 0)), dimension_numbers=_DN2, preferred_element_type=jnp.float32)
    y = y.reshape(b, t, h, w, self.features)
    return y + bias.astype(jnp.float32)


def conv2d(features: int, dtype: Dtype, name: str, strides: int = 1,
           padding: Any = ((1, 1), (1, 1))) -> nn.Conv:
  """Per-frame 3x3 convolution (leading [B, T] are batch dims), zero padding 1 by default."""
  return nn.Conv(features, (3, 3), strides=strides, padding=padding, dtype=dtype,
                 kernel_init=conv_init, name=name)


def dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
  """A 1x1(x1) convolution."""
  return nn.Dense(features, dtype=dtype, kernel_init=conv_init, name=name)


class ResBlock(nn.Module):
  """x + conv2(SiLU(LN2(conv1(SiLU(LN1(x)))))) with a 1x1 shortcut when the width changes.

  kind: "spatial" (3x3 per frame), "temporal" (causal k=3 per pixel; conv2 zero-initialised as in
  the reference) or "3d" (causal 3x3x3, the mid blocks). [B, T, H, W, I] -> [B, T, H, W, O].
  """
  features: int
  kind: str
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  def _conv(self, name: str, zero_init: bool = False):
    if self.kind == "spatial":
      return conv2d(self.features, self.dtype, name)
    if self.kind == "temporal":
      return CausalConv1d(self.features, 3, self.dtype, zero_init=zero_init, name=name)
    if self.kind == "3d":
      return CausalConv3d(self.features, (3, 3, 3), 1, self.dtype, name=name)
    raise ValueError(f"ResBlock.kind: {self.kind!r}; expected 'spatial', 'temporal' or '3d'")

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.silu(layer_norm(self.eps, "norm1")(x))
    h = self._conv("conv1")(h)
    h = nn.silu(layer_norm(self.eps, "norm2")(h))
    h = self._conv("conv2", zero_init=self.kind == "temporal")(h)
    if x.shape[-1] != self.features:
      x = dense(self.features, self.dtype, "shortcut")(x)
    return (x + h).astype(jnp.float32)


class SpaceTimeBlock(nn.Module):
  """A per-frame spatial ResBlock (I -> O) followed by a per-pixel temporal one (O -> O)."""
  features: int
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ResBlock(self.features, "spatial", self.eps, self.dtype, name="spatial")(x)
    return ResBlock(self.features, "temporal", self.eps, self.dtype, name="temporal")(x)


class FrameAttention(nn.Module):
  """Single-head self-attention within each frame over its h*w positions, scale 1/sqrt(C):
  x + proj_out(attn(LN(x))). [B, T, H, W, C] -> same."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, hh, ww, c = x.shape
    h = layer_norm(self.eps, "norm")(x)
    q, k, v = (dense(c, self.dtype, n)(h).reshape(b, t, hh * ww, c) for n in ("q", "k", "v"))
    logits = jnp.einsum("btqc,btkc->btqk", q, k).astype(jnp.float32) / jnp.sqrt(c)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    h = jnp.einsum("btqk,btkc->btqc", probs, v).reshape(b, t, hh, ww, c)
    return (x + dense(c, self.dtype, "proj_out")(h)).astype(jnp.float32)


def downsample2d(x: jax.Array, dtype: Dtype, name: str) -> jax.Array:
  """Per-frame x1/2: zero-pad one row at the bottom and one column at the right, then a VALID
  3x3 convolution with stride 2. [B, T, H, W, C] -> [B, T, H/2, W/2, C] (H, W even)."""
  x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
  return conv2d(x.shape[-1], dtype, name, strides=2, padding="VALID")(x)


def _parity_taps(w: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  """3 taps along `axis` of a kernel applied after a nearest x2 upsample -> the 2-tap kernels
  each output parity applies to the low-resolution input: even outputs see offsets (-1, 0)
  with (w0, w1 + w2), odd ones offsets (0, +1) with (w0 + w1, w2)."""
  w0, w1, w2 = (jnp.take(w, i, axis=axis) for i in range(3))
  return jnp.stack([w0, w1 + w2], axis), jnp.stack([w0 + w1, w2], axis)


class Upsample2d(nn.Module):
  """Per-frame nearest x2, then a 3x3 convolution (zero padding 1). [B, T, H, W, C] -> [B, T, 2H,
  2W, C]. Params as `nn.Conv`: kernel [3, 3, C, C], bias [C].

  Computed without the upsampled copy: each of the 4 output parities is a 2x2 convolution of
  the low-resolution frame with the summed taps it sees (`_parity_taps`), 4/9 of the work of
  the 3x3 convolution at full resolution (1.3-2.1x faster on XLA:CPU at the VAE's shapes).
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    kernel = self.param("kernel", conv_init, (3, 3, c, c))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    pads = ((1, 0), (0, 1))  # parity 0 reads rows y - 1, y; parity 1 reads y, y + 1
    rows = [jnp.stack([_frame_conv(x, kab, self.dtype, pads[a], pads[bb])
                       for bb, kab in enumerate(_parity_taps(ka, 1))], axis=4)
            for a, ka in enumerate(_parity_taps(kernel, 0))]  # each [B, T, H, W, 2 (col), C]
    y = jnp.stack(rows, axis=3)  # [B, T, H, 2 (row parity), W, 2, C]
    return y.reshape(b, t, 2 * h, 2 * w, c) + bias.astype(jnp.float32)


def upsample2d(x: jax.Array, dtype: Dtype, name: str) -> jax.Array:
  """Per-frame nearest x2, then a 3x3 convolution (`Upsample2d`). [B, T, H, W, C] -> [B, T,
  2H, 2W, C]."""
  return Upsample2d(dtype, name=name)(x)


class TimeDownsample(nn.Module):
  """Causal x1/2 in time: a * avgpool3(pad1(x), stride 2) + (1 - a) * causal_conv3x3x3(x, stride
  (2,1,1)), a = sigmoid(mix_factor). [B, T, H, W, C] -> [B, floor(T/2), H, W, C]."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    mix = self.param("mix_factor", nn.initializers.constant(2.0), (1,))
    alpha = jax.nn.sigmoid(mix.astype(jnp.float32))
    xp = jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0), (0, 0)))
    pooled = nn.avg_pool(xp, (3, 1, 1), strides=(2, 1, 1), padding="VALID")
    conv = CausalConv3d(x.shape[-1], (3, 3, 3), 2, self.dtype, name="conv")(x)
    return alpha * pooled.astype(jnp.float32) + (1 - alpha) * conv.astype(jnp.float32)


class TimeUpsample(nn.Module):
  """x2 in time: every frame repeated twice, then a * x + (1 - a) * causal_conv3x3x3(x),
  a = sigmoid(mix_factor). [B, T, H, W, C] -> [B, 2T, H, W, C]."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    mix = self.param("mix_factor", nn.initializers.constant(2.0), (1,))
    alpha = jax.nn.sigmoid(mix.astype(jnp.float32))
    conv = CausalConv3d(x.shape[-1], (3, 3, 3), 1, self.dtype, time_repeat=2, name="conv")(x)
    x = jnp.repeat(x, 2, axis=1)
    return alpha * x.astype(jnp.float32) + (1 - alpha) * conv
