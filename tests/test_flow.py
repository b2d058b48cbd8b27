"""Rectified flow: noising, keep-k budgets, losses, Euler sampler, CFG / APG, determinism."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vft import flow
from vft.models.vae import PatchCodec, num_latent_frames


def test_noising_and_target():
  x0 = jax.random.normal(jax.random.key(0), (2, 3, 2, 2, 4))
  eps = jax.random.normal(jax.random.key(1), x0.shape)
  t = jnp.array([0.0, 1.0])
  xt = flow.add_noise(x0, eps, t)
  np.testing.assert_array_equal(np.asarray(xt[0]), np.asarray(x0[0]))
  np.testing.assert_array_equal(np.asarray(xt[1]), np.asarray(eps[1]))
  np.testing.assert_allclose(np.asarray(flow.velocity_target(x0, eps)), np.asarray(eps - x0))
  ts = flow.sample_t(jax.random.key(2), 20000)
  assert 0 < float(ts.min()) and float(ts.max()) < 1
  assert abs(float(jnp.mean(ts)) - 0.5) < 0.01  # logit-normal(0, 1) is symmetric about 1/2


@pytest.mark.parametrize("mode,n,allowed", [
    ("pow2", 16, {1, 2, 4, 8, 16}), ("pow2", 12, {1, 2, 4, 8, 12}),
    ("uniform", 5, {1, 2, 3, 4, 5}), ("uniform_pow2", 16, {1, 2, 4, 8, 16})])
def test_keep_k_modes(mode, n, allowed):
  k = np.asarray(flow.sample_keep_k(jax.random.key(0), 4000, n, mode))
  assert set(np.unique(k)) == allowed
  if mode == "uniform_pow2":  # rounded up: P(16) = P(k in 9..16) = 1/2
    assert abs(np.mean(k == 16) - 0.5) < 0.05
  with pytest.raises(ValueError, match="unknown"):
    flow.sample_keep_k(jax.random.key(0), 2, n, "zipf")


def test_flow_loss_frame_mask_and_repa_loss():
  v = jnp.zeros((2, 3, 1, 1, 2))
  target = jnp.ones((2, 3, 1, 1, 2)).at[:, 0].set(5.0)
  assert float(flow.flow_loss(v, target)) == pytest.approx((25 + 1 + 1) / 3)
  mask = jnp.array([[0, 1, 1], [0, 1, 1]])
  assert float(flow.flow_loss(v, target, mask)) == pytest.approx(1.0)
  f = jax.random.normal(jax.random.key(0), (2, 2, 3, 3, 8))
  assert float(flow.repa_loss(f, 3.0 * f)) == pytest.approx(-1.0, abs=1e-6)
  assert float(flow.repa_loss(f, -f)) == pytest.approx(1.0, abs=1e-6)
  with pytest.raises(ValueError, match="same shape"):
    flow.repa_loss(f, f[:, :1])


def _linear_field(x, t, uncond):
  """A velocity field with a known flow: v = x - c (c = 0.5 cond, -0.5 uncond)."""
  c = jnp.where(uncond, -0.5, 0.5)[:, None, None, None, None]
  return x - c


def test_euler_grid_and_determinism():
  np.testing.assert_allclose(flow.euler_timesteps(4), [1.0, 0.75, 0.5, 0.25])
  seen = []

  def field(x, t, uncond):
    seen.append(t)
    return _linear_field(x, t, uncond)

  noise = jax.random.normal(jax.random.key(0), (2, 2, 2, 2, 3))
  a = flow.euler_sample(field, noise, 4)
  b = flow.euler_sample(field, noise, 4)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = flow.euler_sample(field, noise * 1.01, 4)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-4
  # x_{n+1} = x_n - (x_n - c)/N  =>  x_N - c = (1 - 1/N)^N (x_0 - c)
  np.testing.assert_allclose(np.asarray(a), 0.5 + (0.75**4) * (np.asarray(noise) - 0.5),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="steps"):
    flow.euler_sample(field, noise, 0)


def test_cfg_and_apg():
  noise = jax.random.normal(jax.random.key(0), (2, 2, 2, 2, 3))
  plain = flow.euler_sample(_linear_field, noise, 3)
  # scale 1 = guidance off
  same = flow.euler_sample(_linear_field, noise, 3, flow.Guidance(scale=1.0))
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(same))
  # CFG: v = v_u + w (v_c - v_u) = x - (c_u + w (c_c - c_u)) -> a field with c = -0.5 + w
  w = 2.0
  cfg = flow.euler_sample(_linear_field, noise, 3, flow.Guidance(scale=w))
  c = -0.5 + w
  np.testing.assert_allclose(np.asarray(cfg), c + (2 / 3) ** 3 * (np.asarray(noise) - c),
                             rtol=1e-5)
  # APG removes the component of the guidance parallel to v_c (eta = 0): check one step by hand.
  v_c = jax.random.normal(jax.random.key(1), (1, 2, 2, 2, 3))
  v_u = jax.random.normal(jax.random.key(2), (1, 2, 2, 2, 3))
  g = flow.Guidance(scale=3.0, apg=True, norm_threshold=0.0)
  v, _ = flow.apg_velocity(v_c, v_u, jnp.zeros_like(v_c), g)
  d = np.asarray(v - v_c) / (g.scale - 1)  # = d_perp
  dot = np.sum(d * np.asarray(v_c), axis=(1, 2, 3))  # per channel
  np.testing.assert_allclose(dot, 0.0, atol=1e-5)
  # norm threshold caps the per-channel norm of the guidance direction
  g2 = flow.Guidance(scale=3.0, apg=True, norm_threshold=0.1, eta=1.0)
  v2, _ = flow.apg_velocity(v_c, v_u, jnp.zeros_like(v_c), g2)
  norms = np.sqrt(np.sum(np.square(np.asarray(v2 - v_c) / 2.0), axis=(1, 2, 3)))
  assert np.all(norms <= 0.1 + 1e-5)


def test_cond_latents_are_clamped():
  noise = jax.random.normal(jax.random.key(0), (1, 3, 2, 2, 3))
  cond = jnp.full((1, 1, 2, 2, 3), 7.0)
  out = flow.euler_sample(_linear_field, noise, 3, cond_latents=cond)
  np.testing.assert_array_equal(np.asarray(out[:, :1]), np.asarray(cond))


def test_patch_codec_exact_and_frame_errors():
  codec = PatchCodec(spatial_factor=4)
  v = jax.random.uniform(jax.random.key(0), (2, 9, 16, 8, 3), minval=-1, maxval=1)
  z = codec.encode(v)
  assert z.shape == (2, 3, 4, 2, 192) == (2, *codec.latent_shape(9, 16, 8))
  np.testing.assert_array_equal(np.asarray(codec.decode(z)), np.asarray(v))
  # Latent frame 0 holds frame 0 only (causal): changing frame 1 leaves it unchanged.
  z2 = codec.encode(v.at[:, 1].add(0.5))
  np.testing.assert_array_equal(np.asarray(z[:, 0]), np.asarray(z2[:, 0]))
  assert num_latent_frames(17) == 5
  with pytest.raises(ValueError, match=r"1 \+ 4k"):
    codec.encode(jnp.zeros((1, 16, 16, 16, 3)))
  with pytest.raises(ValueError, match="divisible"):
    codec.encode(jnp.zeros((1, 5, 18, 16, 3)))
  with pytest.raises(ValueError, match="latents"):
    codec.decode(jnp.zeros((1, 2, 4, 4, 10)))


def test_eval_budgets_default_and_validation():
  """The one default budget list (training eval, `vft eval`, benchmarks)."""
  assert flow.eval_budgets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
  assert flow.eval_budgets(12, None) == flow.eval_budgets(12, []) == [1, 2, 4, 8, 12]
  assert flow.eval_budgets(16, (4, 16)) == [4, 16]
  with pytest.raises(ValueError, match=r"--budgets \[1, 32\].*num_registers=16.*\[32\]"):
    flow.eval_budgets(16, [1, 32], "--budgets")
