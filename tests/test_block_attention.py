"""attention_impl="blocked": the row-group plan covers exactly what the mask allows; outputs and
gradients equal the dense einsum path (fp32 round-off) on every mask mode, realistic and
non-aligned shapes, T = 1, an irregular mask, bf16, a sharded scanned trunk and the tokenizer's
train loss; "auto" resolution per platform; errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config
from vft import sharding
from vft.models import block_attention, masks, splash
from vft.models.config import TokenizerConfig
from vft.models.tokenizer import VideoFlexTok, init_params
from vft.models.transformer import Attention, Transformer, resolve_impl
from vft.train.step import make_loss_fn

BENCH_SMALL = (5, 256, 64)  # the bench small model: 5 frames x (16x16 patches + 64 registers)


@pytest.fixture
def small_groups(monkeypatch):
  """A tiny per-group overhead, so that test-sized sequences split into many groups."""
  monkeypatch.setattr(block_attention, "OVERHEAD", 64)


def assert_close(a, b, rtol=2e-5):
  """Equal within round-off, relative to the largest magnitude of the reference."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(float(np.abs(b).max()), 1e-6))


def irregular_mask(s: int) -> np.ndarray:
  """Causal with random holes (the diagonal kept): partial tiles everywhere."""
  rng = np.random.default_rng(0)
  m = np.tril(rng.random((s, s)) < 0.7)
  m[np.arange(s), np.arange(s)] = True
  return m


@pytest.mark.parametrize("shape", [BENCH_SMALL, (16, 256, 256), (3, 7, 3), (1, 16, 8)])
@pytest.mark.parametrize("mode", masks.MASK_MODES)
def test_plan_covers_exactly_the_mask(mode, shape):
  mask = masks.make_mask(mode, *shape)
  groups = block_attention.plan(mask)
  covered = np.zeros_like(mask)
  rows = np.concatenate([np.arange(g.q0, g.q1) for g in groups])
  np.testing.assert_array_equal(rows, np.arange(mask.shape[0]))  # consecutive, no overlap
  for g in groups:
    covered[g.q0:g.q1, g.k0:g.k1] = True
    assert g.dense == bool(mask[g.q0:g.q1, g.k0:g.k1].all())
  assert not (mask & ~covered).any()  # every allowed key is inside its group's span


def test_plan_skips_the_masked_work():
  s = BENCH_SMALL[0] * sum(BENCH_SMALL[1:])
  full = block_attention.plan(masks.make_mask("full", *BENCH_SMALL))
  assert len(full) == 1 and full[0].dense  # one dense group: the einsum path
  dec = block_attention.plan(masks.make_mask("time_block_causal", *BENCH_SMALL))
  # One group per latent frame, frame t over the prefix of frames 0..t: (T + 1) / 2T of S^2.
  assert [(g.q0, g.q1, g.k0, g.k1, g.dense) for g in dec] == [
      (320 * t, 320 * (t + 1), 0, 320 * (t + 1), True) for t in range(5)]
  assert block_attention.work_fraction(dec, s) == pytest.approx(0.6)
  enc = block_attention.plan(masks.make_mask("time_block_causal_last", *BENCH_SMALL))
  assert block_attention.work_fraction(enc, s) < 0.6
  t1 = block_attention.plan(masks.make_mask("time_block_causal", 1, 256, 64))
  assert len(t1) == 1 and t1[0].dense


@pytest.mark.parametrize("mode", masks.MASK_MODES)
@pytest.mark.parametrize("shape", [pytest.param(BENCH_SMALL, marks=pytest.mark.slow), (3, 7, 3),
                                   (1, 16, 8)])
def test_attention_equals_einsum(mode, shape, monkeypatch):
  """Outputs and gradients (w.r.t. params and x) of one attention layer; the bench shape with
  its real groups, the small ones split into many."""
  mask = masks.make_mask(mode, *shape)
  if shape != BENCH_SMALL:
    monkeypatch.setattr(block_attention, "OVERHEAD", 64)
    assert len(block_attention.plan(mask, 16)) > 1 or mask.all()
  x = jax.random.normal(jax.random.key(0), (2, mask.shape[0], 32))
  outs = {}
  for impl in ("einsum", "blocked"):
    attn = Attention(num_heads=2, head_dim=16, impl=impl)
    params = attn.init(jax.random.key(1), x, mask)
    f = lambda p, x: jnp.sum(jnp.cos(attn.apply(p, x, mask)) * x)  # noqa: B023, E731
    outs[impl] = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, x)
  for a, b in zip(jax.tree.leaves(outs["blocked"]), jax.tree.leaves(outs["einsum"])):
    assert_close(a, b)


def test_irregular_mask_and_bf16(small_groups):
  """An unstructured mask (partial tiles with holes) in fp32; bf16 q/k/v: bf16 out, fp32 softmax."""
  mask = irregular_mask(90)
  assert len(block_attention.plan(mask, 64)) > 3
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 90, 3, 8)) for i in range(3))

  def dense(q, k, v):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * 0.5
    probs = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32))

  blocked = jax.jit(lambda q, k, v: block_attention.attention(q, k, v, masks.StaticMask(mask),
                                                              0.5))
  assert_close(blocked(q, k, v), jax.jit(dense)(q, k, v))
  qb, kb, vb = (a.astype(jnp.bfloat16) for a in (q, k, v))
  out = blocked(qb, kb, vb)
  assert out.dtype == jnp.bfloat16
  assert_close(out, jax.jit(dense)(qb, kb, vb), rtol=1e-2)  # bf16 probabilities and output


def _dense_reference(q, k, v, mask, scale):
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  probs = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32))


def _qk_normed(shape, seed):
  x = jax.random.normal(jax.random.key(seed), shape)
  x = x - x.mean(-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5)


def test_logit_bound_tiles_equal_dense(small_groups, monkeypatch):
  """With a logit bound (no row max) over key tiles of 16: an irregular mask (partial tiles,
  and tiles hidden from a whole group, skipped), values and gradients; a bound too large for
  exp(-2 bound) falls back to the row max and agrees too."""
  monkeypatch.setattr(block_attention, "KEY_TILE", 16)
  mask = irregular_mask(90)
  mask[48:, :20] = False  # keys 0..19 hidden from the later rows: whole tiles to skip
  head_dim, scale = 8, 1.0
  q, k = _qk_normed((2, 90, 3, head_dim), 0), _qk_normed((2, 90, 3, head_dim), 1)
  v = jax.random.normal(jax.random.key(2), (2, 90, 3, head_dim))
  sm = masks.StaticMask(mask)
  ref = jax.jit(jax.value_and_grad(
      lambda q, k, v: jnp.sum(jnp.sin(_dense_reference(q, k, v, mask, scale))), (0, 1, 2)))
  for bound in (scale * head_dim, 1e4):
    f = jax.jit(jax.value_and_grad(lambda q, k, v, b=bound: jnp.sum(jnp.sin(
        block_attention.attention(q, k, v, sm, scale, logit_bound=b))), (0, 1, 2)))
    for a, b in zip(jax.tree.leaves(f(q, k, v)), jax.tree.leaves(ref(q, k, v))):
      assert_close(a, b)


def test_rectangular_mask_rows():
  """Queries of a subset of the rows ([R, S] mask) equal those rows of the square result."""
  mask = masks.make_mask("time_block_causal_last", 3, 8, 4)
  rows = np.array([8, 9, 10, 11, 20, 21, 22, 23, 32, 33, 34, 35])  # the registers
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 36, 2, 8)) for i in range(3))
  full = block_attention.attention(q, k, v, masks.StaticMask(mask), 0.5)
  part = block_attention.attention(q[:, rows], k, v, masks.StaticMask(mask).rows(rows), 0.5)
  assert part.shape == (2, 12, 2, 8)
  assert_close(part, full[:, rows])


@pytest.mark.parametrize("impl,adaln", [  # xla's out_rows also run in every parity test
    pytest.param("einsum", False, marks=pytest.mark.slow),
    pytest.param("xla", True, marks=pytest.mark.slow), ("blocked", True)])
def test_transformer_out_rows_equal_rows_of_full_output(impl, adaln):
  """`out_rows` (the last block computes only the kept rows) == the full trunk's rows, with and
  without adaLN segments (perturbed from the zero init), for the register and patch rows."""
  from vft.models.encoder import slot_rows
  t, p, n = 3, 8, 4
  mask = masks.make_mask("time_block_causal_last" if not adaln else "time_block_causal", t, p, n)
  x = jax.random.normal(jax.random.key(0), (2, t * (p + n), 32))
  cond = jax.random.normal(jax.random.key(1), (2, 32)) if adaln else None
  model = Transformer(depth=2, num_heads=2, head_dim=16, mlp_dim=48, attention_impl=impl,
                      adaln_segments=(0,) * p + (1,) * n if adaln else None)
  params = model.init(jax.random.key(2), x, mask, cond)
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = tree.unflatten([a + 0.1 * jax.random.normal(kk, a.shape) for a, kk in zip(leaves, keys)])
  full, _ = jax.jit(lambda p, x: model.apply(p, x, mask, cond))(params, x)
  for last in (True, False):
    rows = slot_rows(t, p, n, last=last)
    part, _ = jax.jit(lambda p, x, r=rows: model.apply(p, x, mask, cond, out_rows=r))(params, x)
    assert part.shape == (2, rows.size, 32)
    assert_close(part, full[:, rows])


def test_sharded_scanned_trunk_equals_einsum(small_groups):
  """Scan + remat trunk under the (data 2, fsdp 2, tensor 2) mesh, values and gradients."""
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  mask = masks.make_mask("time_block_causal_last", 3, 16, 8)
  x = jax.random.normal(jax.random.key(0), (4, mask.shape[0], 64))
  res = {}
  for impl in ("einsum", "blocked"):
    model = Transformer(depth=2, num_heads=4, head_dim=16, mlp_dim=32, attention_impl=impl,
                        scan=True, remat=True)
    params = model.init(jax.random.key(1), x, mask)

    def loss(p, x, model=model):
      y, _ = model.apply(p, x, mask)
      return jnp.sum(jnp.sin(y) * x)

    step = sharding.jit(jax.value_and_grad(loss, argnums=(0, 1)), mesh, sharding.DEFAULT_RULES)
    res[impl] = step(params, x)
  for a, b in zip(jax.tree.leaves(res["blocked"]), jax.tree.leaves(res["einsum"])):
    assert_close(a, b)


@pytest.mark.slow  # ~80 s on the loaded 2-core machine
def test_train_loss_gradients_equal_einsum(tmp_path, monkeypatch):
  """The tokenizer's train loss (encoder time_block_causal_last, decoder time_block_causal,
  adaLN perturbed away from its zero init): loss and every gradient equal the einsum path's."""
  monkeypatch.setattr(block_attention, "OVERHEAD", 1024)  # 2 groups per frame-causal mask
  cfg = tiny_config(tmp_path)
  spec = (5, 4, 4, cfg.model.latent_channels)
  batch = {"latents": jax.random.normal(jax.random.key(0), (2, *spec)).astype(jnp.bfloat16)}
  for mode in ("time_block_causal", "time_block_causal_last"):
    assert len(block_attention.plan(masks.make_mask(mode, 5, 16, 4), 1024)) == 2
  res = {}
  for impl in ("einsum", "blocked"):
    cfg.model.attention_impl = impl
    model = VideoFlexTok(TokenizerConfig.from_config(cfg.model))
    params = nn.unbox(init_params(model, jax.random.key(1), (1, *spec)))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = tree.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    loss_fn = make_loss_fn(model, cfg)
    res[impl] = jax.jit(jax.value_and_grad(lambda p, lf=loss_fn: lf(p, batch, jax.random.key(3))[0]))(
        params)
  assert float(res["einsum"][0]) > 0
  for a, b in zip(jax.tree.leaves(res["blocked"]), jax.tree.leaves(res["einsum"])):
    assert_close(a, b, rtol=1e-4)


def test_auto_resolution():
  cpu = resolve_impl("auto", jnp.float32, 64, 1600)
  assert cpu == "blocked" and jax.default_backend() == "cpu"
  assert resolve_impl("auto", jnp.bfloat16, 64, 1600, "gpu") == "cudnn"
  assert resolve_impl("auto", jnp.float32, 64, 1600, "gpu") == "xla"  # cuDNN: bf16/fp16 only
  assert resolve_impl("auto", jnp.bfloat16, 160, 1600, "gpu") == "xla"
  assert resolve_impl("auto", jnp.bfloat16, 64, 1601, "gpu") == "xla"
  assert resolve_impl("auto", jnp.float32, 64, 1600, "tpu") == "splash"
  assert resolve_impl("einsum", jnp.float32, 64, 1600, "tpu") == "einsum"
  mask = masks.make_mask("time_block_causal", 2, 4, 2)
  x = jax.random.normal(jax.random.key(0), (1, 12, 32))
  attn = {i: Attention(num_heads=2, head_dim=16, impl=i) for i in ("auto", "blocked")}
  params = attn["auto"].init(jax.random.key(1), x, mask)
  np.testing.assert_array_equal(np.asarray(attn["auto"].apply(params, x, mask)),
                                np.asarray(attn["blocked"].apply(params, x, mask)))


def test_errors():
  with pytest.raises(ValueError, match="query row 1 of the mask attends no key"):
    block_attention.plan(np.eye(3, dtype=bool) & np.array([True, False, True])[:, None])
  with pytest.raises(ValueError, match=r"must be \[Sq, Sk\]"):
    block_attention.plan(np.ones((3, 4, 1), bool))
  q = jnp.ones((1, 8, 2, 4))
  with pytest.raises(ValueError, match=r"does not match the query / key lengths \(8, 8\)"):
    block_attention.attention(q, q, q, masks.StaticMask(np.ones((6, 6), bool)), 0.5)
  with pytest.raises(ValueError, match="config.model.attention_impl"):
    TokenizerConfig(latent_channels=8, attention_impl="flash")
