"""AdamW with linear warmup + cosine decay, global-norm clipping, decoupled weight decay on
matrices only, and an optional parameter EMA."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax

from vft.train import partition


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


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def scale_by_path(multipliers: dict[str, float]) -> optax.GradientTransformation:
  """Multiplies the updates of every parameter whose path ("encoder/to_latents/kernel")
  matches a regex key by its value (per-module learning-rate multipliers)."""
  rules = [(re.compile(k), float(v)) for k, v in (multipliers or {}).items()]

  def factor(path) -> float:
    name = _path_str(path)
    for rx, mult in rules:
      if rx.search(name):
        return mult
    return 1.0

  def update_fn(updates, state, params=None):
    del params
    updates = jax.tree_util.tree_map_with_path(lambda p, u: u * factor(p), updates)
    return updates, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _as_dict(m) -> dict:
  if m is None:
    return {}
  return m.to_dict() if hasattr(m, "to_dict") else dict(m)


def make_optimizer(cfg) -> optax.GradientTransformation:
  """With `config.train.trainable_params` the optimizer sees (and keeps state for) only the
  trainable subtree (`partition.only_trainable`)."""
  o = cfg.optim
  tx = optax.chain(
      optax.clip_by_global_norm(float(o.grad_clip)),
      optax.adamw(learning_rate_schedule(cfg), b1=float(o.b1), b2=float(o.b2),
                  eps=float(o.get("eps", 1e-8)), weight_decay=float(o.weight_decay),
                  mask=_decay_mask),
      scale_by_path(_as_dict(o.get("lr_multipliers", None))),
  )
  pred = partition.trainable_predicate(cfg)
  return tx if pred is None else partition.only_trainable(tx, pred)


def ema_update(ema, params, decay: float):
  return jax.tree_util.tree_map(
      lambda e, p: (decay * e + (1.0 - decay) * p.astype(jnp.float32)).astype(e.dtype), ema, params)
