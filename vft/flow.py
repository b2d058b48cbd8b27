"""Rectified flow: noising, training targets, nested-dropout sampling, Euler sampler, CFG / APG.

Convention of the release: x_t = t * eps + (1 - t) * x0 (t = 1 is pure noise), the model predicts
v = eps - x0. Sampling integrates from t = 1 to 0 on the uniform grid t = 1, (N-1)/N, ..., 1/N
with x <- x - v / N (the model is never evaluated at t = 0).

Latents are channels-last [B, T, H, W, C]; APG norms are per (sample, channel) over (T, H, W).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

KEEP_K_MODES = ("pow2", "uniform", "uniform_pow2")


def _bcast(t: jax.Array, x: jax.Array) -> jax.Array:
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def sample_t(key: jax.Array, batch: int, mean: float = 0.0, std: float = 1.0) -> jax.Array:
  """Logit-normal(mean, std) flow times, [B] in (0, 1) (the release: mean 0, std 1; a positive
  mean puts more weight on high noise, where only the tokens tell the decoder what to draw)."""
  return jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,), jnp.float32))


def add_noise(x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = t * eps + (1 - t) * x0 with t [B]."""
  t = _bcast(t, x0)
  return t * eps + (1.0 - t) * x0


def velocity_target(x0: jax.Array, eps: jax.Array) -> jax.Array:
  return eps - x0


def x0_from_velocity(x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
  """The clean latents a velocity implies: x0 = x_t - t v."""
  return x_t - _bcast(t, x_t) * v


def pow2_budgets(num_registers: int) -> list[int]:
  """1, 2, 4, ..., up to num_registers (num_registers itself always included)."""
  out, k = [], 1
  while k < num_registers:
    out.append(k)
    k *= 2
  return out + [num_registers]


def eval_budgets(num_registers: int, budgets=None, what: str = "budgets") -> list[int]:
  """The token budgets an evaluation renders: `budgets` (each checked to lie in
  [1, num_registers]) or, when empty/None, `pow2_budgets(num_registers)`. `what` names the
  setting in the error (e.g. "config.eval.budgets", "--budgets")."""
  if not budgets:
    return pow2_budgets(num_registers)
  bad = [k for k in budgets if not 1 <= int(k) <= num_registers]
  if bad:
    raise ValueError(f"{what} {list(budgets)}: budgets must lie in [1, num_registers="
                     f"{num_registers}] (tokens per latent frame), got {bad}")
  return [int(k) for k in budgets]


def sample_keep_k(key: jax.Array, batch: int, num_registers: int, mode: str = "pow2") -> jax.Array:
  """One nested-dropout budget per sample, int32 [B] in [1, N].

  pow2: uniform over {1, 2, 4, ..., N}; uniform: uniform over {1, ..., N};
  uniform_pow2: uniform over {1..N}, rounded up to the next power of two (capped at N).
  """
  if mode == "pow2":
    choices = jnp.asarray(pow2_budgets(num_registers), jnp.int32)
    return choices[jax.random.randint(key, (batch,), 0, choices.size)]
  k = jax.random.randint(key, (batch,), 1, num_registers + 1)
  if mode == "uniform":
    return k
  if mode == "uniform_pow2":
    up = jnp.left_shift(1, jnp.ceil(jnp.log2(k.astype(jnp.float32))).astype(jnp.int32))
    return jnp.minimum(up, num_registers)
  raise ValueError(f"nested dropout mode {mode!r} unknown; expected one of {KEEP_K_MODES}")


def flow_loss(v_pred: jax.Array, v_target: jax.Array, frame_mask: jax.Array | None = None):
  """MSE over all elements; frame_mask [B, T] (1 = counts) excludes conditioned frames."""
  err = jnp.square(v_pred.astype(jnp.float32) - v_target.astype(jnp.float32))
  if frame_mask is None:
    return jnp.mean(err)
  w = jnp.broadcast_to(_bcast(frame_mask.astype(jnp.float32), err), err.shape)
  return jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)


def repa_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Negative cosine similarity averaged over tokens: pred, target [B, T, h, w, F]."""
  if pred.shape != target.shape:
    raise ValueError(f"repa: prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                     "must have the same shape")
  p = pred.astype(jnp.float32)
  q = target.astype(jnp.float32)
  p = p / jnp.maximum(jnp.linalg.norm(p, axis=-1, keepdims=True), 1e-6)
  q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-6)
  return -jnp.mean(jnp.sum(p * q, axis=-1))


@dataclasses.dataclass(frozen=True)
class Guidance:
  """Classifier-free guidance. scale 1 = off. `apg` switches to adaptive projected guidance."""
  scale: float = 1.0
  apg: bool = False
  eta: float = 0.0
  momentum: float = 0.0
  norm_threshold: float = 0.6

  @property
  def enabled(self) -> bool:
    return self.scale != 1.0


def _norm(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=(1, 2, 3), keepdims=True))


def apg_velocity(v_c, v_u, buf, g: Guidance):
  """Adaptive projected guidance (arXiv 2410.02416) with per-channel norms. -> (v, new buffer)."""
  d = v_c - v_u
  if g.momentum != 0.0:
    d = d + g.momentum * buf
    buf = d
  if g.norm_threshold > 0:
    d = d * jnp.minimum(1.0, g.norm_threshold / jnp.maximum(_norm(d), 1e-12))
  u = v_c / jnp.maximum(_norm(v_c), 1e-12)
  d_par = jnp.sum(d * u, axis=(1, 2, 3), keepdims=True) * u
  d_perp = d - d_par
  return v_c + (g.scale - 1.0) * (d_perp + g.eta * d_par), buf


def euler_sample(velocity_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
                 noise: jax.Array, steps: int, guidance: Guidance = Guidance(),
                 cond_latents: jax.Array | None = None) -> jax.Array:
  """Integrates dx/dt = v from t = 1 (noise) to 0 with `steps` Euler steps.

  Args:
    velocity_fn: (x [B,T,H,W,C], t [B], uncond [B] bool) -> v. Under guidance it is called once
      per step on the concatenation [cond; uncond] (batch 2B).
    noise: [B, T, H, W, C] initial state at t = 1.
    cond_latents: optional [B, P, H, W, C] clean latents clamped into the first P latent frames
      before every model call and after the last step.
  Returns: x at t = 0, [B, T, H, W, C] float32.
  """
  if steps < 1:
    raise ValueError(f"euler_sample: steps must be >= 1, got {steps}")
  b = noise.shape[0]
  x = noise.astype(jnp.float32)

  def clamp(x):
    if cond_latents is None:
      return x
    return x.at[:, :cond_latents.shape[1]].set(cond_latents.astype(x.dtype))

  def body(i, carry):
    x, buf = carry
    t = jnp.full((b,), (steps - i) / steps, jnp.float32)
    x = clamp(x)
    if guidance.enabled:
      v = velocity_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                      jnp.concatenate([jnp.zeros((b,), bool), jnp.ones((b,), bool)]))
      v_c, v_u = v[:b].astype(jnp.float32), v[b:].astype(jnp.float32)
      if guidance.apg:
        v, buf = apg_velocity(v_c, v_u, buf, guidance)
      else:
        v = v_u + guidance.scale * (v_c - v_u)
    else:
      v = velocity_fn(x, t, jnp.zeros((b,), bool)).astype(jnp.float32)
    return x - v / steps, buf

  x, _ = jax.lax.fori_loop(0, steps, body, (x, jnp.zeros_like(x)))
  return clamp(x)


def euler_timesteps(steps: int) -> np.ndarray:
  """The t values the sampler evaluates the model at: 1, (N-1)/N, ..., 1/N."""
  return np.arange(steps, 0, -1) / steps
