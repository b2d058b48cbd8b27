"""The AR transformer (vft.models.ar), sequence orders (vft.ar.order) and KV-cache sampling
(vft.ar.sample): cached decoding against the full forward, conditioning, CFG, budgets, greedy,
T2V cross-attention, no recompiles, sharding, and the paper's parameter counts."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vft import sharding
from vft.ar import order as order_lib
from vft.ar import sample as sample_lib
from vft.models import ar

FRAMES, PER_FRAME = 3, 4  # T' x N = 12 tokens, max_len 16


def _model(**kw):
  kw = dict(dict(vocab_size=64, depth=2, width=32, num_heads=2, max_len=16, num_classes=3),
            **kw)
  return ar.ARTransformer(ar.ARConfig(**kw))


def _params(model, text_len=0, seed=0):
  c = model.cfg
  kw = {}
  if c.num_classes:
    kw["label"] = jnp.zeros((1,), jnp.int32)
  if c.text_dim:
    kw["text"] = jnp.zeros((1, text_len, c.text_dim))
  return nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32), **kw))


def _tokens(b=2, n=FRAMES * PER_FRAME, vocab=64, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (b, n)), jnp.int32)


def _text(b=2, lt=5, dt=8, seed=0):
  """A tiny random "text encoder": random ids through a random embedding and tanh layer; the
  odd rows are padded after 3 tokens."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 100, (b, lt))
  table, w = rng.normal(size=(100, dt)), rng.normal(size=(dt, dt)) / np.sqrt(dt)
  feats = jnp.asarray(np.tanh(table[ids] @ w), jnp.float32)
  mask = jnp.asarray(np.arange(lt)[None] < np.array([lt, 3] * (b // 2))[:, None])
  return feats, mask


def _decode_all(model, params, tokens, chunk=1, **cond):
  """Logits [B, L, V] of the cached decode, `chunk` positions per call."""
  b, n = tokens.shape
  cache = ar.init_cache(model.cfg, b, model.cfg.max_len)
  inputs = jnp.concatenate([tokens[:, :1], tokens[:, :-1]], axis=1)
  decode = jax.jit(functools.partial(model.apply, method=ar.ARTransformer.decode))
  outs, text_kv = [], None
  for i in range(0, n, chunk):
    kw = dict(cond) if text_kv is None else {"label": cond.get("label"), "text_kv": text_kv}
    logits, cache, text_kv = decode(params, inputs[:, i:i + chunk], i, cache, **kw)
    outs.append(logits)
  return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize("scan,impl", [(False, "xla"), (True, "einsum")])
def test_kv_cache_decode_equals_full_forward(scan, impl):
  model = _model(text_dim=8, scan=scan, remat=scan, attention_impl=impl)
  params = _params(model, text_len=5)
  tokens = _tokens()
  text, mask = _text()
  cond = dict(label=jnp.array([1, 3]), text=text, text_mask=mask)
  full = model.apply(params, tokens, **cond)
  assert full.shape == (2, 12, 64) and full.dtype == jnp.float32
  for chunk in (1, 4):
    np.testing.assert_allclose(_decode_all(model, params, tokens, chunk, **cond), full,
                               atol=1e-5, rtol=1e-5)


def test_logits_are_causal():
  model = _model()
  params = _params(model)
  a, b = _tokens(seed=0), _tokens(seed=0).at[:, 7].set(5)
  la, lb = model.apply(params, a), model.apply(params, b)
  # position i sees tokens < i: changing token 7 changes only logits of positions >= 8
  np.testing.assert_array_equal(la[:, :8], lb[:, :8])
  assert float(jnp.abs(la[:, 8:] - lb[:, 8:]).max()) > 1e-4


@pytest.mark.parametrize("xp", [np, jnp])
def test_orders_round_trip(xp):
  ids = xp.asarray(np.arange(2 * FRAMES * PER_FRAME).reshape(2, FRAMES, PER_FRAME))
  for order in order_lib.ORDERS:
    for k in range(1, PER_FRAME + 1):
      seq = order_lib.to_sequence(ids, order, k)
      assert seq.shape == (2, FRAMES * k) and isinstance(seq, type(ids))
      np.testing.assert_array_equal(order_lib.from_sequence(seq, FRAMES, k, order),
                                    np.asarray(ids)[:, :, :k])
  tf = np.asarray(order_lib.to_sequence(ids))
  # time first: token k of frame t at k * T' + t; any budget is a prefix of the full sequence
  assert tf[0, 1 * FRAMES + 2] == ids[0, 2, 1]
  np.testing.assert_array_equal(order_lib.to_sequence(ids, budget=2), tf[:, :2 * FRAMES])
  df = np.asarray(order_lib.to_sequence(ids, "depth_first", 2))
  assert df[0, 2 * 2 + 1] == ids[0, 2, 1]


def test_order_errors():
  ids = np.zeros((1, FRAMES, PER_FRAME), np.int32)
  with pytest.raises(ValueError, match="order 'raster' unknown"):
    order_lib.to_sequence(ids, "raster")
  with pytest.raises(ValueError, match="budget 5 outside"):
    order_lib.to_sequence(ids, budget=5)
  with pytest.raises(ValueError, match="sequence length 12 != 3 frames x budget 3"):
    order_lib.from_sequence(np.zeros((1, 12)), FRAMES, 3)


def test_class_condition_and_null_class():
  model = _model()
  params = _params(model)
  tokens = _tokens()
  by_label = [model.apply(params, tokens, label=jnp.array([y, y])) for y in range(4)]
  assert float(jnp.abs(by_label[0] - by_label[1]).max()) > 1e-4
  # label None = the learned null class (index num_classes) = unconditional
  np.testing.assert_array_equal(model.apply(params, tokens), by_label[3])


def test_text_condition_and_null_text():
  model = _model(text_dim=8)
  params = _params(model, text_len=5)
  tokens = _tokens()
  text, mask = _text()
  cond = model.apply(params, tokens, text=text, text_mask=mask)
  other = model.apply(params, tokens, text=_text(seed=1)[0], text_mask=mask)
  assert float(jnp.abs(cond - other).max()) > 1e-4
  # padded text positions are ignored (row 1 keeps 3 of 5 tokens)
  garbage = text.at[1, 3:].set(100.0)
  np.testing.assert_allclose(model.apply(params, tokens, text=garbage, text_mask=mask), cond,
                             atol=1e-6)
  # an all-False mask (the CFG-dropped row) is the null text, whatever the features
  null = model.apply(params, tokens)
  dropped = model.apply(params, tokens, text=text, text_mask=jnp.zeros_like(mask))
  np.testing.assert_allclose(dropped, null, atol=1e-6)
  assert float(jnp.abs(null - cond).max()) > 1e-4


def test_bad_inputs_name_the_field():
  with pytest.raises(ValueError, match="config.model.width: 30 is not a multiple"):
    ar.ARConfig(depth=4, width=30)
  with pytest.raises(ValueError, match=r"unknown AR fields \['widht'\]"):
    ar.ARConfig.from_config({"depth": 2, "widht": 64})
  model = _model(num_classes=0)
  params = _params(model)
  with pytest.raises(ValueError, match="num_classes is 0"):
    model.apply(params, _tokens(), label=jnp.array([0, 1]))
  with pytest.raises(ValueError, match="text_dim is 0"):
    model.apply(params, _tokens(), text=jnp.zeros((2, 3, 8)))
  with pytest.raises(ValueError, match="exceeds config.model.max_len 16"):
    model.apply(params, _tokens(n=17))
  with pytest.raises(ValueError, match="exceeds config.model.max_len"):
    sample_lib.sample(model, params, batch=1, num_frames=3, max_budget=6, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="budget 6 outside"):
    sample_lib.sample(model, params, batch=1, num_frames=3, budget=6, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="cfg_scale needs a condition"):
    sample_lib.sample(model, params, batch=1, num_frames=3, cfg_scale=2.0,
                      rng=jax.random.key(0))


def test_dropout_is_keyed_and_off_when_deterministic():
  model = _model(dropout=0.5, attn_dropout=0.5)
  params = _params(model)
  tokens = _tokens()
  base = _model().apply(params, tokens)
  np.testing.assert_array_equal(model.apply(params, tokens), base)
  drop = lambda s: model.apply(params, tokens, deterministic=False,
                               rngs={"dropout": jax.random.key(s)})
  np.testing.assert_array_equal(drop(1), drop(1))
  assert float(jnp.abs(drop(1) - drop(2)).max()) > 1e-3
  assert float(jnp.abs(drop(1) - base).max()) > 1e-3


def _greedy_reference(model, params, ids, guidance=None, **cond):
  """Checks that every greedy token is the argmax of the full forward over the sampled
  sequence (guided: of cond + (s - 1) (cond - uncond))."""
  seq = order_lib.to_sequence(ids)
  fwd = jax.jit(model.apply)
  logits = fwd(params, seq, **cond)
  if guidance is not None:
    scale, uncond = guidance
    logits = logits + (scale - 1.0) * (logits - fwd(params, seq, **uncond))
  np.testing.assert_array_equal(seq, jnp.argmax(logits, axis=-1))


def test_greedy_is_deterministic_and_the_full_forward_argmax():
  model = _model(scan=True)
  params = _params(model)
  label = jnp.array([0, 2])
  kw = dict(batch=2, num_frames=FRAMES, max_budget=PER_FRAME, label=label, temperature=0.0)
  a = sample_lib.sample(model, params, rng=jax.random.key(0), **kw)
  b = sample_lib.sample(model, params, rng=jax.random.key(1), **kw)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (2, FRAMES, PER_FRAME) and a.dtype == jnp.int32
  _greedy_reference(model, params, a, label=label)
  g = sample_lib.sample(model, params, rng=jax.random.key(0), cfg_scale=3.0, **kw)
  _greedy_reference(model, params, g, (3.0, {"label": jnp.array([3, 3])}), label=label)
  assert not np.array_equal(a, g)


def test_budget_and_seeded_sampling():
  model = _model()
  params = _params(model)
  kw = dict(batch=2, num_frames=FRAMES, max_budget=PER_FRAME, label=jnp.array([0, 1]))
  for k in range(1, PER_FRAME + 1):
    ids = sample_lib.sample(model, params, budget=k, rng=jax.random.key(3), **kw)
    assert ids.shape == (2, FRAMES, k)  # exactly K x T' tokens
    if k > 1:  # time-first: a smaller budget is the prefix of a larger one (same key)
      np.testing.assert_array_equal(ids[:, :, :k - 1], prev)
    prev = ids
  again = sample_lib.sample(model, params, budget=PER_FRAME, rng=jax.random.key(3), **kw)
  np.testing.assert_array_equal(again, prev)
  other = sample_lib.sample(model, params, budget=PER_FRAME, rng=jax.random.key(4), **kw)
  assert not np.array_equal(other, prev)
  # top-k 1 = greedy whatever the temperature; top-p tiny keeps only the argmax too
  greedy = sample_lib.sample(model, params, temperature=0.0, rng=jax.random.key(0), **kw)
  for f in (dict(top_k=1), dict(top_p=1e-6)):
    np.testing.assert_array_equal(
        sample_lib.sample(model, params, temperature=5.0, rng=jax.random.key(9), **f, **kw),
        greedy)


def test_filter_logits():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  neg = jnp.finfo(jnp.float32).min
  keep = lambda **kw: np.asarray(sample_lib.filter_logits(logits, **kw) > neg)[0].tolist()
  assert keep(top_k=2) == [True, True, False, False]
  assert keep(top_p=0.7) == [True, True, False, False]
  assert keep(top_p=0.81) == [True, True, True, False]
  assert keep() == [True] * 4


def test_cfg_scale_one_equals_conditional_sampling():
  model = _model(text_dim=8)
  params = _params(model, text_len=5)
  text, mask = _text()
  kw = dict(batch=2, num_frames=FRAMES, max_budget=PER_FRAME, label=jnp.array([0, 1]),
            text=text, text_mask=mask, rng=jax.random.key(5))
  plain = sample_lib.sample(model, params, **kw)
  np.testing.assert_array_equal(sample_lib.sample(model, params, cfg_scale=1.0, **kw), plain)
  assert not np.array_equal(sample_lib.sample(model, params, cfg_scale=4.0, **kw), plain)


def test_t2v_sampling_with_cross_attention():
  model = _model(num_classes=0, text_dim=8, scan=True)
  params = _params(model, text_len=5)
  text, mask = _text()
  kw = dict(batch=2, num_frames=FRAMES, max_budget=PER_FRAME, temperature=0.0,
            rng=jax.random.key(0))
  ids = sample_lib.sample(model, params, text=text, text_mask=mask, **kw)
  _greedy_reference(model, params, ids, text=text, text_mask=mask)
  uncond = sample_lib.sample(model, params, **kw)
  _greedy_reference(model, params, uncond)
  assert not np.array_equal(ids, uncond)
  guided = sample_lib.sample(model, params, text=text, text_mask=mask, cfg_scale=2.0, **kw)
  _greedy_reference(model, params, guided, (2.0, {}), text=text, text_mask=mask)


def test_no_recompilation_across_budget_and_cfg_scale():
  model = _model(scan=True)
  params = _params(model)
  kw = dict(batch=2, num_frames=FRAMES, max_budget=PER_FRAME, label=jnp.array([0, 1]))
  for k, s, t in ((1, 1.0, 1.0), (2, 2.5, 0.0), (4, 7.0, 0.7), (3, 1.5, 1.0)):
    ids = sample_lib.sample(model, params, budget=k, cfg_scale=s, temperature=t,
                            rng=jax.random.key(k), **kw)
    assert ids.shape == (2, FRAMES, k)
  fn = sample_lib.make_sampler(model, FRAMES, PER_FRAME, 0, 1.0, True, None,
                               sharding.DEFAULT_RULES)
  assert fn._cache_size() == 1


def test_sharded_forward_and_sampling_equal_one_device():
  model = _model(text_dim=8, scan=True)
  c = model.cfg
  boxed = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32),
                     label=jnp.zeros((1,), jnp.int32), text=jnp.zeros((1, 5, 8)))
  params = nn.unbox(boxed)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.DEFAULT_RULES
  shards = sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules, params)
  sharded = jax.device_put(params, shards)
  assert sharded["params"]["head"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
  tokens, (text, mask) = _tokens(b=4), _text(b=4)
  label = jnp.array([0, 1, 2, 3])
  fwd = lambda p, t: model.apply(p, t, label=label, text=text, text_mask=mask)
  one = jax.jit(fwd)(params, tokens)
  jitted = sharding.jit(fwd, mesh, rules)
  np.testing.assert_allclose(jitted(sharded, tokens), one, atol=1e-5, rtol=1e-5)
  assert "sharding_constraint" in jitted.lower(sharded, tokens).as_text()
  kw = dict(batch=4, num_frames=FRAMES, max_budget=PER_FRAME, label=label, text=text,
            text_mask=mask, cfg_scale=2.0, temperature=0.0, rng=jax.random.key(0))
  np.testing.assert_array_equal(
      sample_lib.sample(model, sharded, mesh=mesh, rules=rules, **kw),
      sample_lib.sample(model, params, **kw))
  cache = jax.eval_shape(lambda: ar.init_cache(c, 8, 12))
  assert cache["k"].shape == (c.depth, 8, 12, c.num_heads, c.head_dim)


# Table 6: (depth, non-embedding parameters) with width 64 x depth, heads = depth.
TABLE6 = [(10, 49e6), (12, 85e6), (16, 201e6), (20, 393e6), (24, 679e6), (30, 1.33e9),
          (36, 2.29e9)]


@pytest.mark.parametrize("depth,expected", TABLE6)
def test_table6_parameter_counts(depth, expected):
  model = ar.ARTransformer(ar.ARConfig(depth=depth, num_classes=600, scan=True))
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32), label=jnp.zeros((1,), jnp.int32))))
  p = shapes["params"]
  count = lambda t: sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(t))
  d = 64 * depth
  assert model.cfg.width == d and model.cfg.num_heads == depth
  blocks = count(p["blocks"])
  assert abs(blocks - 12 * d * d * depth) / (12 * d * d * depth) < 0.002, blocks
  assert abs(blocks - expected) / expected < 0.01, blocks
  embeddings = count(p) - blocks - count(p["final_norm"])
  assert embeddings == (64000 * 2 + 1280 + 601 + 1) * d
