"""attention_impl="splash": the Pallas splash kernel (interpret mode on CPU) equals the xla path
in outputs and gradients for every mask, on one device and per shard under the 8-device mesh;
the padding / block rule; errors; and (marker `tpu_aot`, needs libtpu) a TPU compile."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config
from vft import sharding
from vft.models import masks, splash
from vft.models.transformer import Attention, Transformer

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
MESH = {"data": 2, "fsdp": 2, "tensor": 2}
FRAMES, PATCHES, REGISTERS = 2, 16, 8  # S = 48 -> padded to 128


@pytest.fixture
def interpret(monkeypatch):
  monkeypatch.setenv(splash.INTERPRET_ENV, "1")


def assert_close(a, b, rtol=2e-5):
  """Equal within fp32 round-off, relative to the largest magnitude of the reference."""
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(float(np.abs(b).max()), 1e-6))


def value_and_grads(impl, mask, params, x, jit=jax.jit):
  """(outputs, d loss / d(params, x)) of a 2-layer scanned, rematted trunk."""
  model = Transformer(depth=2, num_heads=4, head_dim=16, mlp_dim=32, attention_impl=impl,
                      scan=True, remat=True)

  def loss(p, x):
    y, _ = model.apply(p, x, mask)
    return jnp.sum(jnp.sin(y) * x), y

  (_, y), grads = jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
  return y, grads


def trunk_inputs(mask):
  model = Transformer(depth=2, num_heads=4, head_dim=16, mlp_dim=32, scan=True)
  x = jax.random.normal(jax.random.key(0), (4, mask.shape[0], 64))
  return model.init(jax.random.key(1), x, mask), x


@pytest.mark.parametrize("mode", [  # "full" (the dense case) in the slow set
    pytest.param(m, marks=pytest.mark.slow) if m == "full" else m for m in masks.MASK_MODES])
def test_attention_equals_xla_path(mode, interpret):
  mask = masks.make_mask(mode, FRAMES, PATCHES, REGISTERS)
  x = jax.random.normal(jax.random.key(0), (2, mask.shape[0], 32))
  outs = {}
  for impl in ("xla", "splash"):
    attn = Attention(num_heads=2, head_dim=16, impl=impl)
    params = attn.init(jax.random.key(1), x, mask)  # same params: same key, same structure
    f = lambda p, x: jnp.sum(jnp.cos(attn.apply(p, x, mask)) * x)  # noqa: B023, E731
    outs[impl] = (attn.apply(params, x, mask), jax.grad(f, argnums=(0, 1))(params, x))
  assert_close(outs["splash"][0], outs["xla"][0])
  for g, ref in zip(jax.tree.leaves(outs["splash"][1]), jax.tree.leaves(outs["xla"][1])):
    assert_close(g, ref)


@pytest.mark.parametrize("mode", [  # the encoder's mask in the default suite, the rest slow
    m if m == "time_block_causal_last" else pytest.param(m, marks=pytest.mark.slow)
    for m in masks.MASK_MODES])
def test_sharded_trunk_equals_xla_path(mode, interpret):
  """Scan + remat trunk under the (data 2, fsdp 2, tensor 2) mesh: the kernel runs per shard
  (batch 4 over data x fsdp, 4 heads over tensor) and matches the xla path on the same mesh."""
  mesh = sharding.make_mesh(MESH)
  mask = masks.make_mask(mode, FRAMES, PATCHES, REGISTERS)
  params, x = trunk_inputs(mask)
  jit = lambda f: sharding.jit(f, mesh, sharding.DEFAULT_RULES)  # noqa: E731
  y_ref, g_ref = value_and_grads("xla", mask, params, x, jit)
  y, g = value_and_grads("splash", mask, params, x, jit)
  hlo = jit(lambda p, x: value_and_grads("splash", mask, p, x, lambda f: f)[0]).lower(
      params, x).as_text()
  assert "shard_map" in hlo or "manual_computation" in hlo  # per-shard kernel, not global
  assert_close(y, y_ref)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    assert_close(a, b)


@pytest.mark.slow
def test_unpadded_length_equals_xla_path(interpret):
  """S = 2 x (48 + 16) = 128: no padding, one 128 block."""
  mask = masks.make_mask("time_block_causal_last", 2, 48, 16)
  params, x = trunk_inputs(mask)
  y_ref, g_ref = value_and_grads("xla", mask, params, x)
  y, g = value_and_grads("splash", mask, params, x)
  assert_close(y, y_ref)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    assert_close(a, b)


def test_padding_and_block_rule():
  assert [splash.padded_length(s) for s in (48, 128, 129, 2560)] == [128, 128, 256, 2560]
  assert [splash.block_size(s) for s in (128, 256, 384, 2560, 3072)] == [128, 256, 128, 512, 512]
  mask = masks.make_mask("time_block_causal", FRAMES, PATCHES, REGISTERS)
  full = splash.padded_mask(mask)
  assert full.shape == (128, 128) and (full[:48, :48] == mask).all()
  assert not full[:48, 48:].any() and not full[48:, :48].any()  # real and padding never mix
  assert (full[48:, 48:] == np.eye(80, dtype=bool)).all()  # a padded query sees itself only


def test_static_mask_is_hashable_by_content():
  a = masks.static_mask(masks.make_mask("causal", 2, 4, 2))
  assert a == masks.static_mask(jnp.asarray(masks.make_mask("causal", 2, 4, 2)))
  assert hash(a) == hash(masks.static_mask(masks.make_mask("causal", 2, 4, 2)))
  assert a != masks.static_mask(masks.make_mask("full", 2, 4, 2))
  assert jax.tree.leaves(a) == []  # passes nn.scan / nn.remat as static data


def test_errors(monkeypatch):
  monkeypatch.delenv(splash.INTERPRET_ENV, raising=False)
  mask = masks.make_mask("causal", FRAMES, PATCHES, REGISTERS)
  q = jnp.ones((4, mask.shape[0], 2, 16))
  mesh = sharding.make_mesh(MESH)
  f = sharding.jit(lambda q: splash.attention(q, q, q, masks.static_mask(mask), 0.5), mesh,
                   sharding.DEFAULT_RULES)
  with pytest.raises(ValueError, match=r"TPU kernel.*'cpu'.*VFT_SPLASH_INTERPRET=1"):
    f.lower(q)
  with pytest.raises(ValueError, match="does not match the sequence length 48"):
    splash.attention(q, q, q, masks.static_mask(np.ones((8, 8), bool)), 0.5)
  with pytest.raises(ValueError, match=r"must be \[S, S\]"):
    masks.static_mask(np.ones((4, 8), bool))
  with pytest.raises(ValueError, match="needs a static mask"):
    jax.jit(masks.static_mask)(jnp.ones((4, 4), bool))


@pytest.mark.tpu_aot
@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (make plan builds .venv-tpu)")
def test_splash_train_step_compiles_for_a_v5e_2x2(tmp_path):
  from vft import plan as plan_lib
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only; no chip is opened
  cfg = tiny_config(tmp_path, **{"model.attention_impl": "splash"})
  topo = plan_lib.parse_topology("v5e-4")
  devices = plan_lib.topology_devices(topo)
  layout = plan_lib.Layout(1, 4, 1, "nothing_saveable")
  lowered, _, _ = plan_lib.lower_train_step(plan_lib.with_layout(cfg, layout), devices)
  assert "tpu_custom_call" in lowered.as_text()  # the Mosaic kernel, not a fallback
  row = plan_lib.plan_layout(cfg, topo, layout, devices)
  assert row["fits"] and row["status"] == "fits" and row["xla_flops"] > 0
