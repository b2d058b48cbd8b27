"""The train state pytree and its sharded creation."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from vft import sharding
from vft.models.tokenizer import VideoFlexTok, init_params


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # int32 scalar
  params: Any
  opt_state: Any
  ema_params: Any  # None when EMA is off


def create_state(model: VideoFlexTok, tx: optax.GradientTransformation, key: jax.Array,
                 latent_shape, use_ema: bool, boxed: bool = False) -> TrainState:
  return create_state_from(lambda k: init_params(model, k, latent_shape), tx, key, use_ema, boxed)


def create_state_from(init_fn: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                      key: jax.Array, use_ema: bool, boxed: bool = False) -> TrainState:
  """The state of a task whose `init_fn(key)` returns its boxed params."""
  params = init_fn(key)
  if not boxed:
    params = nn.unbox(params)
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      ema_params=jax.tree_util.tree_map(jnp.copy, params) if use_ema else None)


def abstract_state(model, tx, latent_shape, use_ema, mesh, rules):
  """The (unboxed) TrainState as jax.ShapeDtypeStructs carrying the NamedShardings derived from
  the params' logical annotations; nothing is allocated."""
  return abstract_state_from(lambda k: init_params(model, k, latent_shape), tx, use_ema, mesh,
                             rules)


def abstract_state_from(init_fn, tx, use_ema, mesh, rules):
  """`abstract_state` of a task whose `init_fn(key)` returns its boxed params."""
  boxed = jax.eval_shape(
      lambda k: create_state_from(init_fn, tx, k, use_ema, boxed=True), jax.random.key(0))
  shapes = nn.unbox(boxed)
  shard = sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules, shapes=shapes)
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shard)


def state_sharding(model, tx, latent_shape, use_ema, mesh, rules):
  """NamedShardings of the (unboxed) TrainState."""
  return jax.tree_util.tree_map(
      lambda a: a.sharding, abstract_state(model, tx, latent_shape, use_ema, mesh, rules))


def init_state(model, tx, key, latent_shape, use_ema, mesh, rules):
  """Creates the state directly in its sharded layout (no host round trip)."""
  return init_state_from(lambda k: init_params(model, k, latent_shape), tx, key, use_ema, mesh,
                         rules)


def init_state_from(init_fn, tx, key, use_ema, mesh, rules):
  """`init_state` of a task whose `init_fn(key)` returns its boxed params. -> (state, shardings)"""
  shard = jax.tree_util.tree_map(lambda a: a.sharding,
                                 abstract_state_from(init_fn, tx, use_ema, mesh, rules))
  init = jax.jit(lambda k: create_state_from(init_fn, tx, k, use_ema), out_shardings=shard)
  return init(key), shard
