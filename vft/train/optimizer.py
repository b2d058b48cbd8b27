"""AdamW with linear warmup + cosine decay, global-norm clipping, decoupled weight decay on
matrices only, and an optional parameter EMA."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(cfg) -> optax.Schedule:
  """`config.optim`: lr, warmup_steps, init_lr, end_lr_factor; `config.total_steps`."""
  o = cfg.optim
  total = int(cfg.total_steps)
  warmup = min(int(o.warmup_steps), max(total - 1, 0))
  if total < 1:
    raise ValueError(f"config.total_steps must be >= 1, got {total}")
  return optax.warmup_cosine_decay_schedule(
      init_value=float(o.get("init_lr", 0.0)), peak_value=float(o.lr), warmup_steps=warmup,
      decay_steps=max(total, warmup + 1), end_value=float(o.lr) * float(o.get("end_lr_factor", 0.0)))


def _decay_mask(params):
  return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg) -> optax.GradientTransformation:
  o = cfg.optim
  return optax.chain(
      optax.clip_by_global_norm(float(o.grad_clip)),
      optax.adamw(learning_rate_schedule(cfg), b1=float(o.b1), b2=float(o.b2),
                  eps=float(o.get("eps", 1e-8)), weight_decay=float(o.weight_decay),
                  mask=_decay_mask),
  )


def ema_update(ema, params, decay: float):
  return jax.tree_util.tree_map(
      lambda e, p: (decay * e + (1.0 - decay) * p.astype(jnp.float32)).astype(e.dtype), ema, params)
