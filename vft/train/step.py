"""Pure train / eval step functions (jitted with explicit shardings by the loop)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vft import flow, sharding
from vft.models import fsq
from vft.models.tokenizer import VideoFlexTok
from vft.train import frame_cond as frame_cond_lib
from vft.train import partition
from vft.train.optimizer import ema_update
from vft.train.state import TrainState


def flow_objective(v, x0, eps, x_t, t, loss_space: str, frame_mask=None):
  """The flow loss of a predicted velocity v [B, T, H, W, C]: MSE on v ("v") or on the implied
  clean latents x0_hat = x_t - t v ("x"); frame_mask [B, T] (1 = counts) skips conditioned
  frames."""
  if loss_space == "v":
    return flow.flow_loss(v, flow.velocity_target(x0, eps), frame_mask)
  return flow.flow_loss(flow.x0_from_velocity(x_t, v, t), x0, frame_mask)


def make_loss_fn(model: VideoFlexTok, cfg) -> Callable:
  """loss(params, batch, key) -> (loss, aux metrics). batch['latents'] [B, T, H, W, C].

  With a frozen encoder (`config.train.trainable_params` not matching it) the codes are
  stop-gradient; with `config.train.frame_cond.prob > 0` first frames are conditions
  (`vft.train.frame_cond`).
  """
  mcfg = model.cfg
  t_cfg = cfg.train
  repa_weight = float(t_cfg.get("repa_weight", 0.0))
  bound_weight = float(t_cfg.get("fsq_bound_weight", 0.0))
  bound = float(t_cfg.get("fsq_bound", 1.5))
  use_repa = mcfg.repa_layer is not None and repa_weight > 0
  loss_space = t_cfg.get("loss_space", "v")
  if loss_space not in ("v", "x"):
    raise ValueError(f"config.train.loss_space: {loss_space!r} is not 'v' or 'x'")
  pred = partition.trainable_predicate(cfg)
  fc = frame_cond_lib.FrameCond.from_config(cfg)
  if fc.enabled and not mcfg.prefix_masking:
    raise ValueError("config.train.frame_cond.prob > 0 needs config.model.prefix_masking=True "
                     "(the prefix-mask token replaces the conditioned frames' registers)")
  if fc.enabled and fc.prefix_len >= mcfg.max_latent_frames:
    raise ValueError(f"config.train.frame_cond.prefix_len={fc.prefix_len} must be below "
                     f"config.model.max_latent_frames={mcfg.max_latent_frames}")

  def loss_fn(params, batch, key):
    x0 = batch["latents"].astype(jnp.float32)
    b = x0.shape[0]
    keys = jax.random.split(key, 5 if fc.enabled else 4)
    k_t, k_eps, k_keep, k_null = keys[:4]
    codes, z = model.apply({"params": params}, x0, method="encode_logits")
    if pred is not None and not partition.select({"encoder": params["encoder"]}, pred):
      codes = jax.lax.stop_gradient(codes)
    t = flow.sample_t(k_t, b, float(t_cfg.get("t_logit_mean", 0.0)),
                      float(t_cfg.get("t_logit_std", 1.0)))
    eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
    x_t = flow.add_noise(x0, eps, t)
    keep_k = flow.sample_keep_k(k_keep, b, mcfg.num_registers, t_cfg.nested_dropout_mode)
    null = jax.random.bernoulli(k_null, float(t_cfg.cfg_dropout), (b,))
    prefix = jnp.zeros((b,), jnp.int32) if mcfg.prefix_masking else None
    mask = None
    aux = {}
    if fc.enabled:
      prefix, sigma_c = frame_cond_lib.sample(keys[4], b, fc)
      x_t, mask = frame_cond_lib.condition(x0, eps, x_t, prefix, sigma_c, mcfg.patch_size[0])
      aux["cond_fraction"] = jnp.mean((prefix > 0).astype(jnp.float32))
    out = model.apply({"params": params}, codes, x_t, t, keep_k=keep_k, null_cond=null,
                      prefix_len=prefix, with_repa=use_repa, method="decode")
    v, repa = out if use_repa else (out, None)
    loss_flow = flow_objective(v, x0, eps, x_t, t, loss_space, mask)
    aux["flow_loss"] = loss_flow
    loss = loss_flow
    z_c = z + fsq.logit_shift(mcfg.fsq_levels)  # the tanh argument
    # Share of code channels whose tanh' < 0.1 (|tanh| > 0.95): the straight-through gradient
    # barely reaches the encoder there.
    aux["fsq_saturation"] = jnp.mean((jnp.abs(z_c) > np.arctanh(0.95)).astype(jnp.float32))
    if bound_weight > 0:  # keeps the pre-FSQ logits where tanh still passes gradients
      loss_bound = jnp.mean(jnp.square(jax.nn.relu(jnp.abs(z_c) - bound)))
      aux["fsq_bound_loss"] = loss_bound
      loss = loss + bound_weight * loss_bound
    if use_repa:
      if "repa" not in batch:
        raise ValueError("train.repa_weight > 0 but the batch has no 'repa' target features")
      loss_repa = flow.repa_loss(repa, batch["repa"])
      aux["repa_loss"] = loss_repa
      loss = loss + repa_weight * loss_repa
    return loss, aux

  return loss_fn


def grad_accum_steps(cfg) -> int:
  """`config.train.grad_accum_steps` (1 = off), checked."""
  a = cfg.train.get("grad_accum_steps", 1)
  if not isinstance(a, int) or a < 1:
    raise ValueError(f"config.train.grad_accum_steps: expected an int >= 1, got {a!r}")
  return a


def split_microbatches(batch: dict, accum: int) -> dict:
  """Every leaf [B, ...] -> [accum, B / accum, ...]; microbatch i holds rows i, i + accum, ...

  Interleaved rather than contiguous, so with the batch sharded over its leading axis every
  microbatch keeps the same sharding (each device contributes B / (accum * shards) rows of its
  own to every microbatch) and no rows move between devices."""
  def split(x):
    b = x.shape[0]
    if b % accum:
      raise ValueError(f"config.train.grad_accum_steps={accum} must divide the global batch "
                       f"(config.data.global_batch_size), got a batch of {b}")
    x = x.reshape(b // accum, accum, *x.shape[1:]).swapaxes(0, 1)
    return sharding.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree_util.tree_map(split, batch)


def accumulated_value_and_grad(loss_fn: Callable, params, batch: dict, key: jax.Array,
                               accum: int):
  """((loss, aux), grads) of `loss_fn(params, batch, key) -> (loss, aux)`, averaged over
  `accum` microbatches (`split_microbatches`) under `lax.scan`, so only one microbatch's
  activations are live at a time. Microbatch i draws its randomness from fold_in(key, i);
  accum = 1 is the plain full-batch value_and_grad with `key` itself. With equal-size
  microbatches and a per-element mean loss, the average equals the full-batch loss and
  gradient (up to summation order), apart from the per-microbatch random draws."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum == 1:
    return grad_fn(params, batch, key)
  micro = split_microbatches(batch, accum)

  def body(carry, xs):
    i, mb = xs
    out = grad_fn(params, mb, jax.random.fold_in(key, i))
    return jax.tree_util.tree_map(jnp.add, carry, out), None

  first = jax.tree_util.tree_map(lambda x: x[0], micro)
  shapes = jax.eval_shape(grad_fn, params, first, key)
  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
  return jax.tree_util.tree_map(lambda x: x / accum, total)


def make_train_step(model: VideoFlexTok, tx: optax.GradientTransformation, cfg,
                    loss_fn: Callable | None = None) -> Callable:
  """train_step(state, batch) -> (state, metrics). Randomness: fold_in(key(seed), step).

  `config.train.grad_accum_steps` = A > 1 averages the gradients (and the loss / metrics) of A
  microbatches of B / A rows (`accumulated_value_and_grad`) before one optimizer update: the
  same update for a global batch that does not fit in memory at once.

  `loss_fn(params, batch, key) -> (loss, aux)`: the task's loss (vft.train.tasks; default: the
  tokenizer's `make_loss_fn(model, cfg)`).

  With `config.train.trainable_params`, gradients are taken w.r.t. the trainable subtree only
  (frozen parameters enter the loss as constants and leave the step bit-identical); `tx` must
  then be the matching `make_optimizer(cfg)` (state for the trainable subtree only).
  """
  loss_fn = make_loss_fn(model, cfg) if loss_fn is None else loss_fn
  ema_decay = float(cfg.optim.get("ema_decay", 0.0))
  seed = int(cfg.seed)
  pred = partition.trainable_predicate(cfg)
  accum = grad_accum_steps(cfg)

  def train_step(state: TrainState, batch: dict):
    key = jax.random.fold_in(jax.random.key(seed), state.step)
    if pred is None:
      trainable, frozen = state.params, None
      full = lambda p: p  # noqa: E731
    else:
      trainable, frozen = partition.split(state.params, pred)
      full = lambda p: partition.merge(p, frozen)  # noqa: E731
    (loss, aux), grads = accumulated_value_and_grad(
        lambda p, b, k: loss_fn(full(p), b, k), trainable, batch, key, accum)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    params = full(trainable)
    ema = state.ema_params
    if ema is not None:
      if pred is None:
        ema = ema_update(ema, params, ema_decay)
      else:  # the frozen part of the EMA stays what it is (equal to the frozen params)
        ema_tr, ema_fr = partition.split(ema, pred)
        ema = partition.merge(ema_update(ema_tr, trainable, ema_decay), ema_fr)
    metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema), metrics

  return train_step


def jit_train_step(model: VideoFlexTok, tx: optax.GradientTransformation, cfg, mesh, rules,
                   state_sharding, *, donate: bool = True,
                   loss_fn: Callable | None = None) -> sharding.Jitted:
  """The train step as every caller runs it (Trainer, `vft plan`, benchmarks, tests):
  `(state, batch) -> (state, metrics)` traced under the logical axis `rules` on `mesh`, the
  state in `state_sharding`, the batch sharded over the batch axes, metrics replicated."""
  return sharding.jit(
      make_train_step(model, tx, cfg, loss_fn), mesh, rules,
      in_shardings=(state_sharding, sharding.batch_sharding(mesh, rules)),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
      donate_argnums=(0,) if donate else ())
