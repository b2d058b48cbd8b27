"""Training: loss decreases, sharded == single device, checkpoints, exact resume, guards."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config, write_tiny_dataset
from vft import sharding
from vft.train import loop
from vft.train import optimizer as optim_lib
from vft.train import state as state_lib
from vft.train.step import jit_train_step, make_loss_fn


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))


def test_loss_decreases(data_dir, tmp_path):
  cfg = tiny_config(data_dir, total_steps=60)
  tr = loop.Trainer(cfg, str(tmp_path))
  batch = tr.next_batch()
  loss_fn = jax.jit(make_loss_fn(tr.model, cfg))
  # Same batch, same noise / t / keep-k draws before and after: the loss must drop.
  held = lambda p: np.mean([float(loss_fn(p, batch, jax.random.key(i))[0]) for i in range(8)])
  before = held(tr.state.params)
  for _ in range(60):
    tr.step(batch)
  after = held(tr.state.params)
  tr.close()
  assert after < 0.9 * before, (before, after)  # flow loss has a high floor


@pytest.mark.slow  # ~45 s; test_sharding proves the (2,2,2) step against one device in bf16 + scan + remat
def test_sharded_step_equals_single_device(data_dir, tmp_path):
  cfg = tiny_config(data_dir)
  # Single device: a 1x1x1 mesh on device 0.
  cfg1 = tiny_config(data_dir)
  mesh1 = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  mesh8 = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  tr = loop.Trainer(cfg, str(tmp_path / "b"))
  model, tx = tr.model, tr.tx
  batch = jax.device_get(tr.next_batch())
  tr.close()
  results = []
  for mesh in (mesh1, mesh8):
    st, shard = state_lib.init_state(model, tx, jax.random.key(0), (1, *tr.spec), False, mesh,
                                     sharding.DEFAULT_RULES)
    bsh = sharding.batch_sharding(mesh)
    step = jit_train_step(model, tx, cfg1, mesh, sharding.DEFAULT_RULES, shard, donate=False)
    st, m = step(st, jax.device_put(batch, bsh))
    st, m = step(st, jax.device_put(batch, bsh))
    results.append((jax.device_get(st.params), float(m["loss"]), shard))
  (p1, l1, _), (p8, l8, shard8) = results
  assert abs(l1 - l8) < 1e-5 * max(1.0, abs(l1))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                         p1, p8)
  # FSDP / tensor sharding actually happened.
  wq = shard8.params["encoder"]["transformer"]["blocks_0"]["attn"]["wq"]["kernel"]
  assert wq.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)


def test_checkpoint_round_trip_and_exact_resume(data_dir, tmp_path):
  # Uninterrupted: 4 steps.
  full = tiny_config(data_dir, total_steps=4, **{"checkpoint.every_steps": 2})
  tr = loop.Trainer(full, str(tmp_path / "full"))
  tr.run()
  ref = jax.device_get(tr.state.params)
  ref_next = jax.device_get(tr.next_batch())
  tr.close()
  # Interrupted at 2, then resumed to 4 in a fresh Trainer.
  half = tiny_config(data_dir, total_steps=4, **{"checkpoint.every_steps": 2})
  tr = loop.Trainer(half, str(tmp_path / "resume"))
  tr.run(until_step=2)
  saved = jax.device_get(tr.state.params)
  next_after_2 = jax.device_get(tr.next_batch())
  tr.close()
  resumed_cfg = tiny_config(data_dir, total_steps=4, **{"checkpoint.every_steps": 2})
  tr = loop.Trainer(resumed_cfg, str(tmp_path / "resume"))
  # Round trip: restored params and the next batch are identical to what was saved.
  assert tr.restore_if_any() == 2
  jax.tree_util.tree_map(np.testing.assert_array_equal, saved, jax.device_get(tr.state.params))
  np.testing.assert_array_equal(jax.device_get(tr.next_batch())["latents"],
                                next_after_2["latents"])
  tr.close()
  tr = loop.Trainer(resumed_cfg, str(tmp_path / "resume"))
  tr.run()
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                         ref, jax.device_get(tr.state.params))
  np.testing.assert_array_equal(jax.device_get(tr.next_batch())["latents"], ref_next["latents"])
  assert int(tr.state.step) == 4
  tr.close()


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
  data = write_tiny_dataset(tmp_path / "data", num_train=16, nan_from=0)
  cfg = tiny_config(data, total_steps=4, **{"checkpoint.every_steps": 1})
  tr = loop.Trainer(cfg, str(tmp_path / "run"))
  with pytest.raises(FloatingPointError, match="non-finite loss"):
    tr.run()
  assert tr.checkpointer.latest_step() is None  # nothing bad was saved
  tr.close()


def test_optimizer_schedule_and_config_errors(data_dir, tmp_path):
  cfg = tiny_config(data_dir, total_steps=100, **{"optim.warmup_steps": 10, "optim.lr": 1.0,
                                                  "optim.init_lr": 0.0})
  sched = optim_lib.learning_rate_schedule(cfg)
  assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) < 1e-6
  assert float(sched(100)) < 1e-6 and float(sched(5)) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="latent_channels"):
    loop.Trainer(tiny_config(data_dir, **{"model.latent_channels": 48}), str(tmp_path / "x"))
  with pytest.raises(ValueError, match="global_batch_size"):
    loop.Trainer(tiny_config(data_dir, **{"data.global_batch_size": 6}), str(tmp_path / "y"))
  with pytest.raises(FileNotFoundError, match="vft prep"):
    loop.Trainer(tiny_config(tmp_path / "nowhere"), str(tmp_path / "z"))
  with pytest.raises(ValueError, match="budgets"):
    cfg = tiny_config(data_dir, **{"eval.budgets": [1, 2, 8]})
    loop.budgets_for(cfg, loop.build_model(cfg, [5, 4, 4, 192]))
  with pytest.raises(ValueError, match="config.mesh"):
    sharding.make_mesh({"data": 3, "fsdp": 1, "tensor": 1})


def test_fit_spec_drops_non_dividing_axes():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  P = jax.sharding.PartitionSpec
  assert sharding.fit_spec(P("fsdp", "tensor"), (32, 85), mesh) == P("fsdp", None)
  assert sharding.fit_spec(P(("data", "fsdp")), (6,), mesh) == P("data")


def test_lr_multipliers_scale_matching_updates():
  params = {"encoder": {"to_latents": {"kernel": jnp.ones((2, 2))}},
            "decoder": {"head": {"kernel": jnp.ones((2, 2))}}}
  tx = optim_lib.scale_by_path({"^encoder/": 0.1})
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  upd, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(upd["encoder"]["to_latents"]["kernel"]), 0.1)
  np.testing.assert_allclose(np.asarray(upd["decoder"]["head"]["kernel"]), 1.0)


@pytest.mark.slow  # ~20 s; an optional demo-probe loss term
def test_fsq_bound_loss_adds_the_hinge_on_the_tanh_argument(data_dir, tmp_path):
  cfg = tiny_config(data_dir, **{"model.fsq_levels": (8, 5, 2)})
  tr = loop.Trainer(cfg, str(tmp_path))
  batch, key, params = tr.next_batch(), jax.random.key(3), tr.state.params
  tr.close()
  base, aux0 = make_loss_fn(tr.model, cfg)(params, batch, key)
  assert "fsq_bound_loss" not in aux0
  _, z = tr.model.apply({"params": params}, batch["latents"].astype(jnp.float32),
                        method="encode_logits")
  zc = np.asarray(z) + np.arctanh(np.array([0.5 / 3.5035, 0.0, 0.5 / 0.5005]))
  np.testing.assert_allclose(float(aux0["fsq_saturation"]),
                             np.mean(np.abs(np.tanh(zc)) > 0.95), atol=1e-6)
  for bound in (0.3, 1.0):
    want = np.mean(np.maximum(np.abs(zc) - bound, 0.0) ** 2)
    assert want > 0
    c = tiny_config(data_dir, **{"model.fsq_levels": (8, 5, 2), "train.fsq_bound_weight": 2.0,
                                 "train.fsq_bound": bound})
    loss, aux = make_loss_fn(tr.model, c)(params, batch, key)
    np.testing.assert_allclose(float(aux["fsq_bound_loss"]), want, rtol=1e-4)
    np.testing.assert_allclose(float(loss), float(base) + 2.0 * want, rtol=1e-5)
  c = tiny_config(data_dir, **{"train.fsq_bound_weight": 2.0, "train.fsq_bound": 1e3})
  _, aux = make_loss_fn(tr.model, c)(params, batch, key)
  assert float(aux["fsq_bound_loss"]) == 0.0


def _event_tags(workdir) -> set[str]:
  """Scalar/image tags in the TensorBoard event files of a workdir."""
  import glob
  import tensorflow as tf
  tags = set()
  for path in glob.glob(os.path.join(str(workdir), "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


@pytest.fixture(scope="module")
def train_only_dir(tmp_path_factory):
  """A dataset like `vft prep` writes: a train split, no eval split."""
  return write_tiny_dataset(tmp_path_factory.mktemp("train_only"), num_train=8, num_eval=0)


@pytest.mark.slow  # default-suite budget (issue 14 stop); a sibling covers the path
def test_train_without_eval_split_runs_with_eval_off(train_only_dir, tmp_path, caplog):
  cfg = tiny_config(train_only_dir, total_steps=2, **{"eval.every_steps": 1,
                                                       "checkpoint.every_steps": 2})
  with caplog.at_level("INFO"):
    last = loop.train_and_evaluate(cfg, str(tmp_path))
  assert np.isfinite(last["loss"])
  assert "Periodic eval is off" in caplog.text and "manifest.json" in caplog.text
  tags = _event_tags(tmp_path)
  assert "loss" in tags and not any(t.startswith("eval/") for t in tags), tags
  assert os.path.isdir(os.path.join(tmp_path, "checkpoints", "2"))


@pytest.mark.slow  # default-suite budget (issue 14 stop); a sibling covers the path
def test_train_with_separate_eval_dataset(train_only_dir, tmp_path):
  eval_dir = write_tiny_dataset(tmp_path / "held_out", num_train=0, num_eval=2)
  cfg = tiny_config(train_only_dir, total_steps=1, **{
      "eval.every_steps": 1, "eval.steps": 2, "eval.data_dir": str(eval_dir)})
  lat, vid = loop.load_eval_clips(cfg, str(train_only_dir))
  assert lat.shape == (2, 5, 4, 4, 192) and vid.shape == (2, 17, 16, 16, 3)
  loop.train_and_evaluate(cfg, str(tmp_path / "run"))
  tags = _event_tags(tmp_path / "run")
  assert {f"eval/{m}_k{k:04d}" for m in ("psnr", "ssim") for k in (1, 2, 4)} <= tags, tags


def test_required_eval_split_errors(train_only_dir, data_dir, tmp_path):
  spec = [5, 4, 4, 192]
  with pytest.raises(ValueError, match=r"config.eval.required=True.*'eval'.*manifest.json.*"
                                       r"available splits: \['train'\]"):
    loop.periodic_eval_clips(tiny_config(train_only_dir, **{"eval.required": True}),
                             str(train_only_dir), spec)
  # A configured eval dataset must hold the split.
  cfg = tiny_config(data_dir, **{"eval.data_dir": str(train_only_dir)})
  with pytest.raises(ValueError, match=rf"{train_only_dir}.*manifest.json.*'eval'"):
    loop.periodic_eval_clips(cfg, str(data_dir), spec)
  with pytest.raises(ValueError, match=r"eval latents \[5, 4, 4, 192\] differ from the "
                                       r"training latents \[5, 4, 4, 48\]"):
    loop.periodic_eval_clips(tiny_config(data_dir), str(data_dir), [5, 4, 4, 48])
  # Without a requirement the data's own eval split is used.
  lat, _ = loop.periodic_eval_clips(tiny_config(data_dir), str(data_dir), spec)
  assert lat.shape[0] == 2
