"""VidTok's convolution rewrites equal the plain convolutions they replace (random weights,
fp32 round-off): CausalConv3d with taps stacked on inputs or outputs, strided and with the
merged time-repeat taps; CausalConv1d as a [T, H*W] 2D convolution; Upsample2d's parity taps."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vft.models.vae import vidtok_blocks as vb


def _conv3d_ref(x, kernel, bias, time_pad, time_stride):
  """Zero-pad `time_pad` frames in front and 1 pixel around, VALID 3D convolution."""
  kh = kernel.shape[1]
  sp = ((kh - 1) // 2, kh - 1 - (kh - 1) // 2)
  xp = jnp.pad(x, ((0, 0), (time_pad, 0), sp, sp, (0, 0)))
  y = jax.lax.conv_general_dilated(xp, kernel, (time_stride, 1, 1), "VALID",
                                   dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                   precision="highest")
  return y + bias


def _init_apply(module, x):
  params = jax.eval_shape(module.init, jax.random.PRNGKey(1), x)
  # random (non-zero) biases and kernels for every parameter
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = jax.tree_util.tree_unflatten(
      tree, [jax.random.normal(k, l.shape) * 0.2 for k, l in zip(keys, leaves)])
  return params, jax.jit(module.apply)(params, x)


@pytest.mark.parametrize("cin,cout,stride", [(3, 8, 1), (16, 24, 1), (8, 8, 2)])
def test_causal_conv3d_equals_3d_convolution(cin, cout, stride):
  # (3, 8): taps on the inputs (narrow); (16, 24): taps on the outputs; stride 2: on the inputs
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 6, 5, cin))
  params, y = _init_apply(vb.CausalConv3d(cout, (3, 3, 3), stride), x)
  p = params["params"]
  ref = _conv3d_ref(x, p["kernel"], p["bias"], 2 + (1 - stride), stride)
  assert y.shape == ref.shape == (2, (9 + 1 - stride) // stride if stride > 1 else 9, 6, 5, cout)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cin,cout", [(4, 6)])
def test_causal_conv3d_time_repeat_equals_conv_of_repeated_frames(cin, cout):
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 5, 6, cin))
  params, y = _init_apply(vb.CausalConv3d(cout, (3, 3, 3), 1, time_repeat=2), x)
  p = params["params"]
  ref = _conv3d_ref(jnp.repeat(x, 2, axis=1), p["kernel"], p["bias"], 2, 1)
  assert y.shape == (1, 8, 5, 6, cout)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_causal_conv1d_equals_per_pixel_time_convolution():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 3, 4, 6))
  params, y = _init_apply(vb.CausalConv1d(5, 3), x)
  p = params["params"]
  ref = _conv3d_ref(x, p["kernel"][:, None, None], p["bias"], 2, 1)[:, :, 0:3, 0:4]
  # the reference pads 0 pixels for a 1x1 kernel: kh - 1 = 0
  assert y.shape == (2, 7, 3, 4, 5)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  # causal: frame t does not depend on frames after it
  y2 = jax.jit(vb.CausalConv1d(5, 3).apply)(params, x.at[:, 4:].set(0.0))
  np.testing.assert_allclose(y2[:, :4], y[:, :4], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("h,w", [(3, 5)])
def test_upsample2d_equals_nearest_repeat_then_conv(h, w):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, h, w, 6))
  params, y = _init_apply(vb.Upsample2d(), x)
  p = params["params"]
  assert set(p) == {"kernel", "bias"} and p["kernel"].shape == (3, 3, 6, 6)
  up = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
  ref = jax.lax.conv_general_dilated(up.reshape(6, 2 * h, 2 * w, 6), p["kernel"], (1, 1),
                                     ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision="highest").reshape(2, 3, 2 * h, 2 * w, 6)
  np.testing.assert_allclose(y, ref + p["bias"], rtol=1e-5, atol=1e-5)
