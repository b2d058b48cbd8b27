"""First-frame conditioning during the decoder fine-tune (the release's PrefixMinRFNoiseModule).

Per sample, with probability `prob` the first `prefix_len` latent frames become a condition:
x_t there is replaced by sigma_c * eps + (1 - sigma_c) * x0, where sigma_c ~ U(sigma_min,
sigma_max) with probability `noise_prob` and 0 otherwise (the flow time t of the other frames is
unchanged); those frames' registers get the prefix-mask token (`prefix_len` to the decoder) and
the loss skips them. Counts are in decoder latent frames (after temporal patching): with
patch_size[0] = pt, a prefix of P frames covers the first P * pt frames of x_t.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class FrameCond:
  prob: float = 0.0
  prefix_len: int = 1
  noise_prob: float = 0.5
  sigma_min: float = 0.0
  sigma_max: float = 0.02

  @property
  def enabled(self) -> bool:
    return self.prob > 0

  @classmethod
  def from_config(cls, cfg) -> "FrameCond":
    """From `config.train.frame_cond` (absent: off)."""
    fc = cfg.train.get("frame_cond", None)
    if fc is None:
      return cls()
    d = dict(fc.to_dict() if hasattr(fc, "to_dict") else fc)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f"config.train.frame_cond: unknown fields {unknown}; known: "
                       f"{sorted(fields)}")
    out = cls(**d)
    if not 0.0 <= out.prob <= 1.0 or not 0.0 <= out.noise_prob <= 1.0:
      raise ValueError(f"config.train.frame_cond: prob and noise_prob must lie in [0, 1], got "
                       f"{out.prob}, {out.noise_prob}")
    if not 0.0 <= out.sigma_min <= out.sigma_max <= 1.0:
      raise ValueError(f"config.train.frame_cond: need 0 <= sigma_min <= sigma_max <= 1, got "
                       f"({out.sigma_min}, {out.sigma_max})")
    if out.enabled and out.prefix_len < 1:
      raise ValueError(f"config.train.frame_cond.prefix_len must be >= 1, got {out.prefix_len}")
    return out


def sample(key: jax.Array, batch: int, fc: FrameCond) -> tuple[jax.Array, jax.Array]:
  """-> (prefix_len [B] int32 in {0, fc.prefix_len}, sigma_c [B] float32 condition noise)."""
  k_on, k_noisy, k_sigma = jax.random.split(key, 3)
  on = jax.random.bernoulli(k_on, fc.prob, (batch,))
  noisy = jax.random.bernoulli(k_noisy, fc.noise_prob, (batch,))
  sigma = jax.random.uniform(k_sigma, (batch,), jnp.float32, fc.sigma_min, fc.sigma_max)
  return jnp.where(on, fc.prefix_len, 0).astype(jnp.int32), jnp.where(noisy, sigma, 0.0)


def frame_mask(prefix_len: jax.Array, num_frames: int, time_patch: int = 1) -> jax.Array:
  """[B, T] float32, 1 where the loss counts: frames >= prefix_len * time_patch."""
  return (jnp.arange(num_frames)[None, :] >= prefix_len[:, None] * time_patch).astype(jnp.float32)


def condition(x0: jax.Array, eps: jax.Array, x_t: jax.Array, prefix_len: jax.Array,
              sigma_c: jax.Array, time_patch: int = 1) -> tuple[jax.Array, jax.Array]:
  """x0, eps, x_t [B, T, H, W, C] -> (x_t with the prefix frames replaced by the condition,
  loss frame mask [B, T])."""
  keep = frame_mask(prefix_len, x_t.shape[1], time_patch)  # 1 = noisy frame, 0 = condition
  s = sigma_c[:, None, None, None, None]
  cond = s * eps + (1.0 - s) * x0
  return jnp.where(keep[:, :, None, None, None] > 0, x_t, cond), keep
