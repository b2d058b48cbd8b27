"""Pure train / eval step functions (jitted with explicit shardings by the loop)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from vft import flow
from vft.models.tokenizer import VideoFlexTok
from vft.train.optimizer import ema_update
from vft.train.state import TrainState


def make_loss_fn(model: VideoFlexTok, cfg) -> Callable:
  """loss(params, batch, key) -> (loss, aux metrics). batch['latents'] [B, T, H, W, C]."""
  mcfg = model.cfg
  t_cfg = cfg.train
  repa_weight = float(t_cfg.get("repa_weight", 0.0))
  use_repa = mcfg.repa_layer is not None and repa_weight > 0
  loss_space = t_cfg.get("loss_space", "v")
  if loss_space not in ("v", "x"):
    raise ValueError(f"config.train.loss_space: {loss_space!r} is not 'v' or 'x'")

  def loss_fn(params, batch, key):
    x0 = batch["latents"].astype(jnp.float32)
    b = x0.shape[0]
    k_t, k_eps, k_keep, k_null = jax.random.split(key, 4)
    codes, _ = model.apply({"params": params}, x0, method="encode")
    t = flow.sample_t(k_t, b, float(t_cfg.get("t_logit_mean", 0.0)),
                      float(t_cfg.get("t_logit_std", 1.0)))
    eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
    x_t = flow.add_noise(x0, eps, t)
    keep_k = flow.sample_keep_k(k_keep, b, mcfg.num_registers, t_cfg.nested_dropout_mode)
    null = jax.random.bernoulli(k_null, float(t_cfg.cfg_dropout), (b,))
    prefix = jnp.zeros((b,), jnp.int32) if mcfg.prefix_masking else None
    out = model.apply({"params": params}, codes, x_t, t, keep_k=keep_k, null_cond=null,
                      prefix_len=prefix, with_repa=use_repa, method="decode")
    v, repa = out if use_repa else (out, None)
    if loss_space == "v":
      loss_flow = flow.flow_loss(v, flow.velocity_target(x0, eps))
    else:  # compare the implied clean latents x0_hat = x_t - t v: weights all t equally
      loss_flow = flow.flow_loss(flow.x0_from_velocity(x_t, v, t), x0)
    aux = {"flow_loss": loss_flow}
    loss = loss_flow
    if use_repa:
      if "repa" not in batch:
        raise ValueError("train.repa_weight > 0 but the batch has no 'repa' target features")
      loss_repa = flow.repa_loss(repa, batch["repa"])
      aux["repa_loss"] = loss_repa
      loss = loss + repa_weight * loss_repa
    return loss, aux

  return loss_fn


def make_train_step(model: VideoFlexTok, tx: optax.GradientTransformation, cfg) -> Callable:
  """train_step(state, batch) -> (state, metrics). Randomness: fold_in(key(seed), step)."""
  loss_fn = make_loss_fn(model, cfg)
  ema_decay = float(cfg.optim.get("ema_decay", 0.0))
  seed = int(cfg.seed)

  def train_step(state: TrainState, batch: dict):
    key = jax.random.fold_in(jax.random.key(seed), state.step)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = ema_update(ema, params, ema_decay)
    metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema), metrics

  return train_step

