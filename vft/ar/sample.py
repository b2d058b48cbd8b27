"""Token sampling from `vft.models.ar.ARTransformer` with a KV cache: the AR twin of flow.py's
Euler sampler.

One jitted program per (model, frames, max budget, top-k, top-p, guidance on/off, mesh): the
first decode call (prefill) writes [SOS] + condition into the cache and computes the text
keys/values once; then one cached decode step per token inside `lax.fori_loop` with a traced
bound, budget K x T' steps. K, the CFG scale and the temperature are traced values, so changing
them does not recompile. Classifier-free guidance batches the conditional rows with their
unconditional twins (null class `num_classes`, all-False text mask) and mixes the logits as
cond + (scale - 1) * (cond - uncond) (scale 1 is exactly the conditional logits). Then top-k,
top-p (nucleus), temperature (0: greedy argmax); token i draws from `fold_in(rng, i)`.

The KV cache is constrained like the activations (`vft.models.ar.CACHE_AXES`: batch over the
batch mesh axes, heads over tensor) when a mesh is given (`sharding.jit`).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from vft import sharding
from vft.ar import order as order_lib
from vft.models import ar


def guide(logits: jax.Array, cfg_scale) -> jax.Array:
  """logits [2B, V] (conditional rows first, then their unconditional twins) -> [B, V]."""
  cond, uncond = jnp.split(logits, 2, axis=0)
  return cond + (cfg_scale - 1.0) * (cond - uncond)


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """logits [B, V] with everything outside the top-k / the top-p nucleus set to -inf (the most
  likely token always stays). top_k 0 and top_p 1: unchanged."""
  neg = jnp.finfo(logits.dtype).min
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p < 1.0:
    desc = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
    kept = jnp.sum(before < top_p, axis=-1, keepdims=True)  # >= 1
    threshold = jnp.take_along_axis(desc, kept - 1, axis=-1)
    logits = jnp.where(logits < threshold, neg, logits)
  return logits


def pick(logits: jax.Array, key: jax.Array, temperature, top_k: int, top_p: float) -> jax.Array:
  """logits [B, V] -> tokens [B] int32: a draw at `temperature` (> 0) or the argmax (0)."""
  logits = filter_logits(logits, top_k, top_p)
  safe_t = jnp.maximum(temperature, 1e-6)
  drawn = jax.random.categorical(key, logits / safe_t, axis=-1)
  return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


@functools.lru_cache(maxsize=64)
def make_sampler(model: ar.ARTransformer, num_frames: int, max_budget: int, top_k: int = 0,
                 top_p: float = 1.0, guidance: bool = False, mesh: Mesh | None = None,
                 rules: Any = sharding.DEFAULT_RULES):
  """The jitted sampler (cached per static setting):
  fn(params, label [B] | None, text [B, Lt, Dt] | None, text_mask [B, Lt] | None,
     budget, cfg_scale, temperature, rng) -> seq [B, num_frames * max_budget] int32,
  of which the first budget * num_frames tokens are sampled (the rest are 0)."""
  cfg = model.cfg
  length = num_frames * max_budget
  if length > cfg.max_len:
    raise ValueError(f"sampling {num_frames} frames x {max_budget} tokens = {length} exceeds "
                     f"config.model.max_len {cfg.max_len}")

  def run(params, label, text, text_mask, budget, cfg_scale, temperature, rng, *, batch):
    rows = 2 * batch if guidance else batch
    if guidance:
      if label is not None:
        label = jnp.concatenate([label, jnp.full_like(label, cfg.num_classes)])
      if text is not None:
        if text_mask is None:
          text_mask = jnp.ones(text.shape[:2], bool)
        text = jnp.concatenate([text, text])
        text_mask = jnp.concatenate([text_mask, jnp.zeros_like(text_mask)])
    decode = functools.partial(model.apply, params, method=ar.ARTransformer.decode)

    def next_token(logits, i):
      logits = logits[:, 0]
      if guidance:
        logits = guide(logits, cfg_scale)
      return pick(logits, jax.random.fold_in(rng, i), temperature, top_k, top_p)

    cache = ar.init_cache(cfg, rows, length)
    inputs = jnp.zeros((rows, 1), jnp.int32)
    logits, cache, text_kv = decode(inputs, 0, cache, label=label, text=text,
                                    text_mask=text_mask)
    tok = next_token(logits, 0)
    seq = jnp.zeros((batch, length), jnp.int32).at[:, 0].set(tok)

    def step(i, state):
      seq, cache, tok = state
      inputs = jnp.concatenate([tok, tok]) if guidance else tok
      logits, cache, _ = decode(inputs[:, None], i, cache, label=label, text_kv=text_kv)
      tok = next_token(logits, i)
      return jax.lax.dynamic_update_slice_in_dim(seq, tok[:, None], i, axis=1), cache, tok

    seq, _, _ = jax.lax.fori_loop(1, budget * num_frames, step, (seq, cache, tok))
    return seq

  if mesh is None:
    return jax.jit(run, static_argnames=("batch",))
  return sharding.jit(run, mesh, rules, static_argnames=("batch",))


def sample(model: ar.ARTransformer, params, *, batch: int, num_frames: int,
           budget: int | None = None, max_budget: int | None = None, label=None, text=None,
           text_mask=None, cfg_scale: float | None = None, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, rng: jax.Array, order: str = "time_first",
           mesh: Mesh | None = None, rules: Any = sharding.DEFAULT_RULES) -> jax.Array:
  """Samples ids [batch, num_frames, K] (K = budget, None: max_budget).

  max_budget (None: max_len // num_frames, 256 for 5 latent frames at 1280) sizes the cache
  and the compiled program; any budget <= it reuses the program. label [B] int32 (C2V;
  num_classes = unconditional), text [B, Lt, text_dim] / text_mask [B, Lt] (T2V). cfg_scale
  None: plain conditional sampling (no unconditional rows); a number: classifier-free guidance
  (needs a label or text). temperature 0: greedy. order: how the model's sequences were laid
  out (`vft.ar.order`; a depth-first model samples its own budget)."""
  cfg = model.cfg
  order_lib.check_order(order)
  max_budget = int(max_budget or cfg.max_len // num_frames)
  budget = max_budget if budget is None else int(budget)
  if not 1 <= budget <= max_budget:
    raise ValueError(f"sample: budget {budget} outside [1, max_budget={max_budget}]")
  if top_k < 0 or top_k > cfg.vocab_size:
    raise ValueError(f"sample: top_k {top_k} outside [0, vocab_size={cfg.vocab_size}]")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"sample: top_p {top_p} outside (0, 1]")
  guidance = cfg_scale is not None
  if guidance and label is None and text is None:
    raise ValueError("sample: cfg_scale needs a condition (label or text)")
  fn = make_sampler(model, int(num_frames), max_budget, int(top_k), float(top_p), guidance,
                    mesh, rules)
  label = None if label is None else jnp.asarray(label, jnp.int32)
  seq = fn(params, label, text, text_mask, jnp.int32(budget),
           jnp.float32(1.0 if cfg_scale is None else cfg_scale), jnp.float32(temperature), rng,
           batch=int(batch))
  return order_lib.from_sequence(seq[:, :budget * num_frames], num_frames, budget, order)
