"""Sharding: the logical rules reach the compiled train step, the sharded step equals one
device, a changed rule changes the layout, and the mesh orders devices by process."""

import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config, write_tiny_dataset
from vft import sharding
from vft.models.transformer import mlp_hidden_dim
from vft.train import loop
from vft.train import state as state_lib
from vft.train.step import jit_train_step

MESH = {"data": 2, "fsdp": 2, "tensor": 2}
BATCH = ("data", "fsdp")
_CONSTRAINT = re.compile(r"sdy\.sharding_constraint %\S+ <@mesh, \[(.*?)\]> : tensor<([0-9x]+)x\w+>")


def constraints(hlo_text: str) -> dict[tuple[int, ...], set[tuple[tuple[str, ...], ...]]]:
  """{shape: {per-dimension mesh axes}} of the `with_sharding_constraint` ops in StableHLO."""
  out = {}
  for m in _CONSTRAINT.finditer(hlo_text):
    dims = tuple(tuple(re.findall(r'"(\w+)"', d)) for d in re.findall(r"\{([^}]*)\}", m.group(1)))
    out.setdefault(tuple(int(n) for n in m.group(2).split("x")), set()).add(dims)
  return out


def paper_tiny_config(data_dir):
  """The paper's recipe in miniature: bf16 compute with fp32 params, scan + remat, REPA after
  decoder layer 1, v-prediction; widths chosen so heads (2) and the SwiGLU hidden (128) divide
  the tensor axis. Optimizer for comparing updates: one step at full lr with eps = 1 (gradients
  are ~1e-3 per element), so the first AdamW update g / (|g| + eps) is ~ g itself; with the
  default eps it is lr * sign(g), whose sign flips on gradients at bf16 noise level."""
  return tiny_config(data_dir, mesh=dict(MESH), **{
      "model.dtype": "bfloat16", "model.scan": True, "model.remat": True,
      "model.enc_width": 48, "model.dec_width": 48, "model.head_dim": 24,
      "model.repa_layer": 1, "model.repa_depth": 1, "model.repa_dim": 8,
      "model.prediction": "v", "train.loss_space": "v", "train.t_logit_mean": 0.0,
      "train.repa_weight": 1.0, "optim.warmup_steps": 0, "optim.lr": 1.0, "optim.eps": 1.0,
      "optim.weight_decay": 0.0})


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
  data = write_tiny_dataset(tmp_path_factory.mktemp("repa_data"), num_train=8, repa_dim=8)
  tr = loop.Trainer(paper_tiny_config(data), str(tmp_path_factory.mktemp("run")))
  yield tr
  tr.close()


def expected_shapes(tr):
  c = tr.model.cfg
  t, h, w, _ = tr.spec
  b, s, d = tr.config.data.global_batch_size, t * (h * w + c.num_registers), c.dec_width
  return dict(heads=(b, s, d // c.head_dim, c.head_dim), mlp=(b, s, mlp_hidden_dim(d)),
              residual=(b, s, d))


def test_train_step_activations_follow_the_rules(trainer):
  tr = trainer
  found = constraints(tr.train_step.lower(tr.state, tr.next_batch()).as_text())
  shapes = expected_shapes(tr)
  # q, k, v and the attention output: batch over (data, fsdp), heads over tensor.
  assert found[shapes["heads"]] == {(BATCH, (), ("tensor",), ())}
  # SwiGLU hidden: mlp over tensor; the residual stream: batch only.
  assert found[shapes["mlp"]] == {(BATCH, (), ("tensor",))}
  assert found[shapes["residual"]] == {(BATCH, (), ())}


def test_changed_rule_changes_the_layout(trainer):
  tr = trainer
  rules = tuple((k, None if k == "heads" else v) for k, v in tr.rules)
  abstract = state_lib.abstract_state(tr.model, tr.tx, (1, *tr.spec), False, tr.mesh, rules)
  shard = jax.tree_util.tree_map(lambda a: a.sharding, abstract)
  batch = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tr.next_batch())
  step = jit_train_step(tr.model, tr.tx, tr.config, tr.mesh, rules, shard, donate=False)
  found = constraints(step.lower(abstract, batch).as_text())
  shapes = expected_shapes(tr)
  assert found[shapes["heads"]] == {(BATCH, (), (), ())}
  assert found[shapes["mlp"]] == {(BATCH, (), ("tensor",))}  # untouched rule, same layout
  wq = shard.params["encoder"]["transformer"]["blocks"]["block"]["attn"]["wq"]["kernel"]
  assert wq.spec == jax.sharding.PartitionSpec(None, "fsdp", None, None)  # [layers, D, H, Dh]


def test_sharded_bf16_steps_equal_single_device(trainer):
  tr = trainer
  batch = tr.next_batch()
  host = jax.device_get(batch)
  params0 = jax.device_get(tr.state.params)
  mesh1 = sharding.make_mesh({}, jax.devices()[:1])
  state1, shard1 = state_lib.init_state(tr.model, tr.tx, jax.random.key(tr.config.seed),
                                        (1, *tr.spec), False, mesh1, tr.rules)
  batch1 = sharding.batch_sharding(mesh1, tr.rules)
  step1 = jit_train_step(tr.model, tr.tx, tr.config, mesh1, tr.rules, shard1)
  # Two steps: after the first, the adaLN-zero gates open and every parameter gets a gradient.
  for _ in range(2):
    state1, m1 = step1(state1, jax.device_put(host, batch1))
    m8 = tr.step(batch)
  # bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 2e-3). The sharded program sums
  # partial products (tensor-parallel projections, FSDP gradient reductions) in another order,
  # so every bf16 activation may round differently. The loss (a mean) agrees within 1e-3
  # (measured 2e-5); the updates (~ the gradients, see paper_tiny_config) agree within a few
  # percent overall (measured 2% median per leaf), and worst in bias gradients, which are sums
  # with cancellation over B x S cotangents (measured up to 12% in one leaf). A sharding bug (a
  # missing or doubled reduction, a wrong device order) is off by >= 50% in whole groups of
  # leaves and overall. (In fp32 the same comparison is exact to 1e-5: tests/test_train.py.)
  for k in ("loss", "flow_loss", "grad_norm"):
    np.testing.assert_allclose(float(m8[k]), float(m1[k]), rtol=1e-2 if k == "grad_norm" else 1e-3)
  p1, p8 = jax.device_get(state1.params), jax.device_get(tr.state.params)
  upd1 = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: a - b, p1, params0))
  upd8 = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: a - b, p8, params0))
  moved = [i for i, u in enumerate(upd1) if np.abs(u).max() > 0]
  # Leaves without a gradient in this batch (e.g. the null-condition token when no sample
  # drew CFG dropout) stay put in both; all transformer weights move.
  assert len(moved) >= 0.8 * len(upd1), (len(moved), len(upd1))
  for i in set(range(len(upd1))) - set(moved):
    np.testing.assert_array_equal(upd8[i], 0.0)
  rel = [float(np.linalg.norm(upd8[i] - upd1[i]) / np.linalg.norm(upd1[i])) for i in moved]
  flat = lambda us: np.concatenate([np.ravel(us[i]) for i in moved])  # noqa: E731
  overall = float(np.linalg.norm(flat(upd8) - flat(upd1)) / np.linalg.norm(flat(upd1)))
  print("relative L2 error of the updates: overall %.2e; per leaf max %.2e, median %.2e" % (
      overall, max(rel), float(np.median(rel))))
  assert overall < 3e-2 and float(np.median(rel)) < 4e-2 and max(rel) < 0.25, rel


def test_constrain_acts_only_under_rules_and_mesh():
  mesh = sharding.make_mesh(MESH)
  f = lambda x: sharding.constrain(x * 2.0, ("batch", "mlp"))  # noqa: E731
  x = jnp.arange(48.0).reshape(8, 6)
  assert constraints(jax.jit(f).lower(x).as_text()) == {}
  jitted = sharding.jit(f, mesh, sharding.DEFAULT_RULES)
  assert constraints(jitted.lower(x).as_text()) == {(8, 6): {(BATCH, ("tensor",))}}
  y = jitted(x)
  np.testing.assert_array_equal(np.asarray(y), 2.0 * np.asarray(x))
  assert y.sharding.spec == jax.sharding.PartitionSpec(BATCH, "tensor")
  # Mesh axes that do not divide a dimension are dropped (eval batches, SwiGLU width 4778).
  odd = constraints(jitted.lower(jnp.ones((2, 5))).as_text())
  assert odd == {(2, 5): {(("data",), ())}}


def test_default_mesh_batch_shards_in_process_and_device_order():
  """The multi-process input pipeline relies on it: along the batch dimension, shards go to
  devices in process order (each process a contiguous block, process 0 first) and, within one
  process, in increasing device id."""
  for shape in ({"data": -1, "fsdp": 1, "tensor": 1}, MESH):
    mesh = sharding.make_mesh(shape)
    shard = sharding.batch_sharding(mesh, ndim=2)
    index = shard.devices_indices_map((16, 3))
    rows = sorted((idx[0].start, d.process_index, d.id) for d, idx in index.items())
    owners = [min(d for s, _, d in rows if s == start) for start in sorted({r[0] for r in rows})]
    assert owners == sorted(owners) and len(owners) == sharding.num_batch_shards(mesh)
    assert [p for _, p, _ in rows] == sorted(p for _, p, _ in rows)


def test_process_ordered_sorts_batch_positions_by_process():
  dev = lambda i, p: types.SimpleNamespace(id=i, process_index=p)  # noqa: E731
  # 4 batch positions x tensor 2; processes interleaved as a topology-first layout might be.
  grid = np.array([[dev(0, 0), dev(1, 0)], [dev(4, 1), dev(5, 1)], [dev(2, 0), dev(3, 0)],
                   [dev(6, 1), dev(7, 1)]], dtype=object).reshape(2, 2, 2)
  out = sharding.process_ordered(grid)
  assert [d.id for d in out.flat] == [0, 1, 2, 3, 4, 5, 6, 7]
  assert [d.id for d in sharding.process_ordered(out).flat] == [0, 1, 2, 3, 4, 5, 6, 7]


def test_make_mesh_dcn_and_errors():
  devices = jax.devices()
  ones = sharding.make_mesh({"data": -1}, dcn_shape={"data": 1, "fsdp": 1, "tensor": 1})
  assert ones.devices.tolist() == sharding.make_mesh({"data": -1}).devices.tolist()
  assert ones.shape == {"data": 8, "fsdp": 1, "tensor": 1}
  assert sharding.make_mesh({"fsdp": -1}, devices[:4]).shape == {"data": 1, "fsdp": 4, "tensor": 1}
  with pytest.raises(ValueError, match="config.mesh_dcn .* spans 2 processes, but the devices "
                                       "belong to 1"):
    sharding.make_mesh({"data": -1}, dcn_shape={"data": 2})
  with pytest.raises(ValueError, match="config.mesh_dcn.*divide"):
    sharding.make_mesh({"data": -1}, dcn_shape={"data": 3})
  with pytest.raises(ValueError, match="config.mesh_dcn: unknown axes"):
    sharding.make_mesh({"data": -1}, dcn_shape={"model": 2})
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sharding.make_mesh({"data": -1, "fsdp": -1})
  with pytest.raises(ValueError, match="needs 4 devices, 8 available"):
    sharding.make_mesh({"data": 4})
