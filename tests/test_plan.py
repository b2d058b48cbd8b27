"""vft.plan: per-chip accounting on the 8 simulated CPU devices, the layout chooser under a
small fake HBM, and (marker `tpu_aot`, needs libtpu) an ahead-of-time TPU compile."""
import importlib.util
import os

import jax
import pytest

from tests.helpers import tiny_config
from vft import plan as plan_lib
from vft import sharding
from vft.models.config import TokenizerConfig
from vft.models.tokenizer import VideoFlexTok
from vft.train import optimizer as optim_lib
from vft.train import state as state_lib

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def _cfg(tmp_path):
  return tiny_config(tmp_path, **{"optim.ema_decay": 0.9})


def _fake(hbm_bytes: int, chips: int = 8, tpu=None) -> plan_lib.Topology:
  return plan_lib.Topology("fake", plan_lib.Chip("fake", 1e12, int(hbm_bytes), "test"), chips,
                           tpu)


def test_per_device_bytes_equal_the_addressable_shards(tmp_path):
  cfg = _cfg(tmp_path)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.DEFAULT_RULES
  model = VideoFlexTok(TokenizerConfig.from_config(cfg.model))
  tx = optim_lib.make_optimizer(cfg)
  shape = (1, *plan_lib.latent_shape(cfg))
  abstract = state_lib.abstract_state(model, tx, shape, True, mesh, rules)
  state, _ = state_lib.init_state(model, tx, jax.random.key(0), shape, True, mesh, rules)
  for field in ("params", "opt_state", "ema_params"):
    per_device = {d: 0 for d in mesh.devices.flat}
    for leaf in jax.tree_util.tree_leaves(getattr(state, field)):
      for shard in leaf.addressable_shards:
        per_device[shard.device] += shard.data.nbytes
    assert set(per_device.values()) == {plan_lib.tree_bytes_per_device(getattr(abstract, field))}
  total = sum(x.nbytes for x in jax.tree_util.tree_leaves(state.params))
  assert plan_lib.tree_bytes_per_device(abstract.params) < total / 2  # fsdp x tensor shard it


@pytest.mark.slow  # default-suite budget (issue 14 stop); a sibling covers the path
def test_chooser_takes_the_first_layout_that_fits(tmp_path):
  cfg = _cfg(tmp_path)
  devices = jax.devices()[:8]
  quiet = lambda s: None  # noqa: E731
  layouts = plan_lib.parse_layouts(["8x1x1", "1x8x1"], ["none"], 8)
  rows, chosen = plan_lib.plan(cfg, _fake(2**40), layouts, devices=devices, stop_at_fit=False,
                               log=quiet)
  for r in rows:  # what the compiler reserves for the arguments is the state + batch + step
    assert r["argument"] == r["params"] + r["opt_state"] + r["ema"] + r["batch"] + 4
    assert r["peak"] == r["argument"] + r["output"] - r["alias"] + r["temp"] + r["code"]
    assert r["step_s"] == pytest.approx(r["model_flops"] / (8 * 1e12 * 0.4))
  assert rows[0]["params"] > rows[1]["params"]  # replicated vs FSDP-sharded
  assert chosen is rows[0]
  # Fastest-first order = the larger peak first; a limit between the peaks rejects it.
  big, small = sorted(rows, key=lambda r: -r["peak"])
  limit = (big["peak"] + small["peak"]) / 2 / 0.9
  assert plan_lib.choose([big, small], limit, headroom=0.1) is small
  assert not plan_lib.fits(big, limit) and plan_lib.fits(small, limit)
  assert plan_lib.choose([big, small], small["peak"] / 2) is None
  assert plan_lib.choose([big, small], small["peak"], headroom=0.0) is small


def test_batch_that_does_not_divide_the_mesh_is_a_row_not_a_crash(tmp_path):
  cfg = _cfg(tmp_path)
  cfg.data.global_batch_size = 4
  row = plan_lib.plan_layout(cfg, _fake(2**40), plan_lib.Layout(1, 8, 1, "none"),
                             jax.devices()[:8])
  assert not row["fits"] and "not divisible by 8 batch shards" in row["status"]


@pytest.mark.slow  # ~20 s: two compiles; the semantics are in test_ar_train
def test_grad_accumulation_shrinks_the_temporaries(tmp_path):
  """train.grad_accum_steps: the plan compiles the accumulating step; with 4 microbatches only
  a quarter of the per-chip activations is live, so the compiler's temporaries drop (the
  state and the batch do not), and the row shows the split."""
  rows = []
  for accum in (1, 4):
    cfg = _cfg(tmp_path)
    cfg.data.global_batch_size = 32
    cfg.train.grad_accum_steps = accum
    rows.append(plan_lib.plan_layout(cfg, _fake(2**40), plan_lib.Layout(8, 1, 1, "none"),
                                     jax.devices()[:8]))
  one, four = rows
  assert four["temp"] < 0.6 * one["temp"], (one["temp"], four["temp"])
  assert four["params"] == one["params"] and four["batch"] == one["batch"]
  assert "| 4 (4x1) |" in plan_lib.format_row(four) and "| 4 |" in plan_lib.format_row(one)
  cfg.train.grad_accum_steps = 3
  row = plan_lib.plan_layout(cfg, _fake(2**40), plan_lib.Layout(8, 1, 1, "none"),
                             jax.devices()[:8])
  assert not row["fits"] and "8 batch shards x 3 microbatches" in row["status"]


def test_topology_and_layout_parsing():
  t = plan_lib.parse_topology("v5p-256")
  assert t.num_chips == 128 and t.tpu["topology_name"] == "v5p:4x4x8"
  assert t.tpu["chip_config_name"] == "megacore" and t.chip.hbm_bytes == 95 * 2**30
  t = plan_lib.parse_topology("2xv5e-256")
  assert t.num_chips == 512 and t.tpu["num_slices"] == 2 and t.chip.peak_flops == 197e12
  t = plan_lib.parse_topology("h100-8")
  assert t.num_chips == 8 and t.tpu is None and t.chip.peak_flops == 989e12
  for bad in ("v5p-3", "tpu7-8", "2xh100-8"):
    with pytest.raises(ValueError, match="--topology"):
      plan_lib.parse_topology(bad)
  assert plan_lib.parse_layouts(["1x-1x1"], ["dots_saveable", "none"], 8) == [
      plan_lib.Layout(1, 8, 1, "dots_saveable"), plan_lib.Layout(1, 8, 1, "none")]
  assert [x.label for x in plan_lib.parse_layouts([], [], 128)] == ["1x128x1"] * 2 + ["16x8x1"] * 2
  with pytest.raises(ValueError, match="does not multiply to 8"):
    plan_lib.parse_layouts(["3x-1x1"], [], 8)
  with pytest.raises(ValueError, match="--plan_remat"):
    plan_lib.parse_layouts([], ["sometimes"], 8)


def test_model_flops_frozen_encoder_runs_forward_only(tmp_path):
  cfg = _cfg(tmp_path)
  spec = plan_lib.latent_shape(cfg)
  full = plan_lib.model_flops(cfg, 8, spec)
  assert plan_lib.model_flops(cfg, 16, spec) == 2 * full
  cfg.model.enc_depth = 0
  dec_only = plan_lib.model_flops(cfg, 8, spec)
  cfg.model.enc_depth = 1
  enc = full - dec_only  # 3x the encoder forward
  assert plan_lib.model_flops(cfg, 8, spec, encoder_trainable=False) == pytest.approx(
      dec_only + enc / 3)


@pytest.mark.tpu_aot
@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (make plan builds .venv-tpu)")
def test_tiny_config_compiles_for_a_v5e_2x2(tmp_path):
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only; no chip is opened
  cfg = _cfg(tmp_path)
  topo = plan_lib.parse_topology("v5e-4")
  devices = plan_lib.topology_devices(topo)
  assert len(devices) == 4 and devices[0].platform == "tpu"
  layout = plan_lib.Layout(1, 4, 1, "nothing_saveable")
  row = plan_lib.plan_layout(cfg, topo, layout, devices)
  assert row["fits"] and row["status"] == "fits" and row["xla_flops"] > 0
  # TPU pads small arrays to its tiles: at least the logical bytes
  assert row["argument"] >= row["params"] + row["opt_state"] + row["ema"] + row["batch"]
  assert row["peak"] < row["hbm_gib"] * 2**30 and not plan_lib.fits(row, row["peak"] // 2)
