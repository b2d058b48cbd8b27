"""Decoder fine-tuning (stage 2): init from stage 1, frozen encoder, full attention, first-frame
conditioning, masked loss, exact resume, init errors."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests.helpers import apply_overrides, tiny_config, write_tiny_dataset
from vft import config_lib
from vft.models.config import TokenizerConfig
from vft.models.tokenizer import VideoFlexTok, init_params
from vft.train import frame_cond, init_from, loop, partition
from vft.train.step import flow_objective, make_loss_fn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_tiny_dataset(tmp_path_factory.mktemp("ft_data"), num_train=16)


@pytest.fixture(scope="module")
def stage1(data_dir, tmp_path_factory):
  """A 2-step stage-1 run with EMA (time-causal decoder, no prefix masking)."""
  wd = str(tmp_path_factory.mktemp("stage1"))
  cfg = tiny_config(data_dir, total_steps=2, **{"optim.ema_decay": 0.5,
                                                "checkpoint.every_steps": 2})
  with open(os.path.join(wd, "config.json"), "w") as f:  # what `vft train` writes
    f.write(cfg.to_json_best_effort())
  tr = loop.Trainer(cfg, wd)
  tr.run()
  state = jax.device_get(tr.state)
  tr.close()
  return wd, state


def ft_config(data_dir, init_workdir, **overrides):
  c = config_lib.decoder_finetune_config(tiny_config(data_dir), init_workdir=init_workdir)
  c.data.dir = str(data_dir)
  c.total_steps = 4
  c.checkpoint.every_steps = 2
  return apply_overrides(c, overrides)


def _paths(tree):
  return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p)
          for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_init_train_freezes_encoder(data_dir, stage1, tmp_path):
  wd1, s1 = stage1
  cfg = ft_config(data_dir, wd1)
  assert cfg.model.dec_mask == "full" and cfg.model.prefix_masking
  tr = loop.Trainer(cfg, str(tmp_path / "ft"))
  assert tr.model.cfg.dec_mask == "full"
  # Init reproduces the stage-1 (EMA) params exactly; only the prefix-mask token is new.
  rep = json.loads((tmp_path / "ft" / "init_report.json").read_text())
  assert rep["subtree"] == "ema_params" and rep["step"] == 2
  assert rep["initialised"] == ["decoder/prefix_mask_token"] and rep["skipped"] == []
  p0 = jax.device_get(tr.state.params)
  src = dict(s1.ema_params)
  assert "prefix_mask_token" in p0["decoder"] and "prefix_mask_token" not in src["decoder"]
  ours = {k: v for k, v in p0["decoder"].items() if k != "prefix_mask_token"}
  jax.tree_util.tree_map(np.testing.assert_array_equal, ours, dict(src["decoder"]))
  jax.tree_util.tree_map(np.testing.assert_array_equal, p0["encoder"], src["encoder"])
  ema_vs_raw = jax.tree_util.tree_map(lambda a, b: np.array_equal(a, b), src["decoder"],
                                      dict(s1.params["decoder"]))
  assert not all(jax.tree_util.tree_leaves(ema_vs_raw))  # the EMA was taken, not the raw params
  # The optimizer holds no encoder state at all.
  opt_paths = _paths(tr.state.opt_state)
  assert opt_paths and not any("encoder" in p for p in opt_paths)
  assert any("decoder" in p for p in opt_paths)
  tr.run()
  p1 = jax.device_get(tr.state.params)
  assert int(tr.state.step) == 4
  tr.close()
  jax.tree_util.tree_map(np.testing.assert_array_equal, p1["encoder"], src["encoder"])
  changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b),
                                   p1["decoder"], p0["decoder"])
  assert all(jax.tree_util.tree_leaves(changed["transformer"]))  # every decoder block trained


@pytest.mark.slow  # default-suite budget (issue 14 stop); a sibling covers the path
def test_full_attention_reaches_back_in_time(data_dir, stage1, tmp_path):
  """Decoder frame 0 sees later frames with the fine-tune's full mask, not stage 1's causal."""
  wd1, _ = stage1
  cfg = ft_config(data_dir, wd1)
  tr = loop.Trainer(cfg, str(tmp_path / "ft"))
  model, params = tr.model, tr.state.params
  tr.close()
  x = jax.random.normal(jax.random.key(0), (1, *tr.spec))
  codes, _ = model.apply({"params": params}, x, method="encode")
  t = jnp.full((1,), 0.5)
  # Make the adaLN gates non-zero so the trunk mixes tokens (they start at zero).
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.05 if "adaLN" in str(p) else v, params)

  def v0(x_t, mask):
    m = VideoFlexTok(dataclasses.replace(model.cfg, dec_mask=mask))
    return m.apply({"params": params}, codes, x_t, t, method="decode")[:, 0]

  x2 = x.at[:, -1].add(1.0)  # change the last latent frame only
  assert float(jnp.max(jnp.abs(v0(x, "full") - v0(x2, "full")))) > 1e-4
  assert float(jnp.max(jnp.abs(v0(x, "time_block_causal") - v0(x2, "time_block_causal")))) < 1e-6


def test_conditioning_recipe_and_masked_loss():
  fc = frame_cond.FrameCond(prob=1.0, prefix_len=1, noise_prob=0.5, sigma_min=0.0, sigma_max=0.02)
  prefix, sigma = frame_cond.sample(jax.random.key(3), 4000, fc)
  assert set(np.unique(np.asarray(prefix)).tolist()) == {1}
  s = np.asarray(sigma)
  assert 0.4 < np.mean(s > 0) < 0.6 and s.max() <= 0.02  # noisy condition half the time
  half = frame_cond.sample(jax.random.key(4), 4000, frame_cond.FrameCond(prob=0.5))[0]
  assert 0.45 < float(jnp.mean(half > 0)) < 0.55
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x0, eps = jax.random.normal(k1, (2, 5, 2, 2, 3)), jax.random.normal(k2, (2, 5, 2, 2, 3))
  t = jnp.array([0.7, 0.3])
  x_t = t[:, None, None, None, None] * eps + (1 - t[:, None, None, None, None]) * x0
  prefix, sigma = jnp.array([1, 0]), jnp.array([0.01, 0.01])
  xc, mask = frame_cond.condition(x0, eps, x_t, prefix, sigma)
  np.testing.assert_allclose(xc[0, 0], 0.01 * eps[0, 0] + 0.99 * x0[0, 0], rtol=1e-6)
  np.testing.assert_array_equal(xc[0, 1:], x_t[0, 1:])
  np.testing.assert_array_equal(xc[1], x_t[1])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
  # Temporal patching: a prefix of 1 latent frame covers pt frames of x_t.
  np.testing.assert_array_equal(frame_cond.frame_mask(jnp.array([1]), 4, 2), [[0, 0, 1, 1]])
  v = jax.random.normal(k3, x0.shape)
  for space in ("v", "x"):
    base = flow_objective(v, x0, eps, xc, t, space, mask)
    # Changing the prediction on a conditioned frame leaves the loss unchanged ...
    assert float(flow_objective(v.at[0, 0].add(5.0), x0, eps, xc, t, space, mask)) == float(base)
    # ... on an unconditioned sample's frame 0 or any later frame it does not.
    assert float(flow_objective(v.at[1, 0].add(5.0), x0, eps, xc, t, space, mask)) != float(base)
    assert float(flow_objective(v.at[0, 1].add(5.0), x0, eps, xc, t, space, mask)) != float(base)


@pytest.mark.slow  # default-suite budget (issue 14 stop); a sibling covers the path
def test_prefix_token_used_when_conditioning(data_dir, stage1, tmp_path):
  wd1, _ = stage1
  tr = loop.Trainer(ft_config(data_dir, wd1), str(tmp_path / "ft"))
  batch, params, model = tr.next_batch(), tr.state.params, tr.model
  tr.close()
  # Non-zero adaLN gates so patch tokens read the registers (a 2-step stage 1 leaves them ~0).
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.05 if "adaLN" in str(p) else v, params)
  token = params["decoder"]["prefix_mask_token"]  # (a constant shift would vanish in the LN)
  bumped = dict(params, decoder=dict(params["decoder"], prefix_mask_token=token + jax.random.normal(
      jax.random.key(1), token.shape)))
  key = jax.random.key(7)
  for prob, used in ((1.0, True), (0.0, False)):
    cfg = ft_config(data_dir, wd1, **{"train.frame_cond.prob": prob})
    loss_fn = jax.jit(make_loss_fn(model, cfg))
    (l0, aux), (l1, _) = loss_fn(params, batch, key), loss_fn(bumped, batch, key)
    assert float(aux.get("cond_fraction", 0.0)) == prob
    assert (float(l0) != float(l1)) == used, (prob, float(l0), float(l1))


@pytest.mark.slow  # ~45 s; exact resume of the one Trainer is in test_train
def test_resume_equals_uninterrupted(data_dir, stage1, tmp_path):
  wd1, _ = stage1
  tr = loop.Trainer(ft_config(data_dir, wd1), str(tmp_path / "full"))
  tr.run()
  ref = jax.device_get(tr.state)
  tr.close()
  tr = loop.Trainer(ft_config(data_dir, wd1), str(tmp_path / "resume"))
  tr.run(until_step=2)
  tr.close()
  tr = loop.Trainer(ft_config(data_dir, wd1), str(tmp_path / "resume"))
  assert tr.init_report is None  # its own checkpoint wins over config.init
  tr.run()
  got = jax.device_get(tr.state)
  tr.close()
  assert int(got.step) == 4
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                         ref.params, got.params)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                         ref.opt_state, got.opt_state)
  jax.tree_util.tree_map(np.testing.assert_array_equal, ref.params["encoder"],
                         got.params["encoder"])


def test_init_errors(data_dir, stage1, tmp_path):
  wd1, _ = stage1
  with pytest.raises(FileNotFoundError, match="config.json"):
    loop.Trainer(ft_config(data_dir, str(tmp_path / "nowhere")), str(tmp_path / "a"))
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text(open(os.path.join(wd1, "config.json")).read())
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    loop.Trainer(ft_config(data_dir, str(empty)), str(tmp_path / "b"))
  with pytest.raises(FileNotFoundError, match="step 7"):
    loop.Trainer(ft_config(data_dir, wd1, **{"init.step": 7}), str(tmp_path / "b2"))
  with pytest.raises(ValueError, match="enc_depth"):
    loop.Trainer(ft_config(data_dir, wd1, **{"model.enc_depth": 2}), str(tmp_path / "c"))
  with pytest.raises(ValueError, match="config.init names no checkpoint"):
    loop.Trainer(ft_config(data_dir, ""), str(tmp_path / "d"))
  with pytest.raises(ValueError, match="not both"):
    loop.Trainer(ft_config(data_dir, wd1, **{"init.official": "x.safetensors"}),
                 str(tmp_path / "e"))
  with pytest.raises(ValueError, match="prefix_masking"):
    loop.Trainer(ft_config(data_dir, wd1, **{"model.prefix_masking": False}),
                 str(tmp_path / "f"))
  with pytest.raises(ValueError, match="own workdir"):
    loop.Trainer(ft_config(data_dir, str(tmp_path / "g")), str(tmp_path / "g"))


def test_partition_and_layout_helpers():
  tree = {"encoder": {"a": 1, "b": {"c": 2}}, "decoder": {"d": 3, "repa_head": {"e": 4}}}
  pred = lambda p: p.startswith("decoder/")  # noqa: E731
  tr, fr = partition.split(tree, pred)
  assert tr == {"decoder": {"d": 3, "repa_head": {"e": 4}}} and set(fr) == {"encoder"}
  assert partition.merge(tr, fr) == tree and partition.select(tr, pred) == tr
  blocks = {f"decoder/transformer/blocks_{i}/attn/wq/kernel": np.full((2, 3), i) for i in range(3)}
  blocks["decoder/repa_head/transformer/blocks_0/attn/wq/kernel"] = np.zeros((2, 3))
  scanned_dst = ["decoder/transformer/blocks/block/attn/wq/kernel",
                 "decoder/repa_head/transformer/blocks_0/attn/wq/kernel"]
  stacked = init_from._to_layout(blocks, scanned_dst)
  assert sorted(stacked) == sorted(scanned_dst)
  np.testing.assert_array_equal(stacked[scanned_dst[0]][:, 0, 0], [0, 1, 2])
  back = init_from._to_layout(stacked, list(blocks))
  assert sorted(back) == sorted(blocks)
  for k, v in blocks.items():
    np.testing.assert_array_equal(back[k], v)


def test_init_from_official_fixture(data_dir, tmp_path):
  convert = pytest.importorskip("vft.convert")
  if not hasattr(convert, "load_official"):
    pytest.skip("vft.convert.load_official not available yet")
  path = os.path.join(ROOT, "..", "shared", "fixtures", "official_tiny", "model.safetensors")
  official = convert.load_official(path)
  src_cfg = official.tokenizer_cfg
  flat_src = traverse_util.flatten_dict(official.params, sep="/")
  for scan in (False, True):  # the importer's unscanned tree, stacked for a scanned model
    model = dataclasses.asdict(src_cfg)
    model.update(dec_mask="full", prefix_masking=True, dtype="float32", scan=scan, remat=False)
    c = config_lib.decoder_finetune_config(tiny_config(data_dir), init_official=path)
    c.model = config_lib.ml_collections.ConfigDict(model)
    dst_cfg = TokenizerConfig.from_config(c.model)
    params, rep = init_from.from_official(c, _fresh_params(c), dst_cfg)
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    expect_new = [] if src_cfg.prefix_masking else ["decoder/prefix_mask_token"]
    assert rep.initialised == expect_new and len(flat) == rep.loaded + len(expect_new)
    for k, v in flat_src.items():
      if not scan:
        np.testing.assert_array_equal(flat[k], np.asarray(v))
      elif "/transformer/blocks_" in k and "repa_head" not in k:
        head, rest = k.split("/blocks_", 1)
        i, rest = rest.split("/", 1)
        np.testing.assert_array_equal(flat[f"{head}/blocks/block/{rest}"][int(i)], np.asarray(v))
      else:
        np.testing.assert_array_equal(flat[k], np.asarray(v))


def _fresh_params(cfg):
  import flax.linen as nn
  mcfg = TokenizerConfig.from_config(cfg.model)
  model = VideoFlexTok(mcfg)
  shape = (1, 5, 4 * mcfg.patch_size[1], 4 * mcfg.patch_size[2], mcfg.latent_channels)
  return nn.unbox(jax.jit(lambda k: init_params(model, k, shape))(jax.random.key(0)))


@pytest.mark.slow
def test_cli_finetune_from_demo_smoke(tmp_path):
  """The Done-means check on the smoke configs: stage 1 by `vft demo`, then the decoder
  fine-tune through `vft train` and a resume; encoder bit-identical throughout; the result
  loads in `VideoTokenizer`."""
  import subprocess
  import sys
  import orbax.checkpoint as ocp
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  s1, ft = tmp_path / "smoke", tmp_path / "ft"

  def run(*args, workdir):
    r = subprocess.run([sys.executable, "-m", "vft.main", *args, f"--workdir={workdir}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r

  run("demo", "--config=configs/demo.py:smoke", workdir=s1)
  ft_args = ("--config=configs/finetune_decoder_demo.py:smoke", f"--config.init.workdir={s1}")
  run("train", *ft_args, workdir=ft)
  assert json.loads((ft / "init_report.json").read_text())["initialised"] == [
      "decoder/prefix_mask_token"]
  r = run("train", *ft_args, "--config.total_steps=6", workdir=ft)
  assert "Resumed from step 4" in r.stderr
  with ocp.PyTreeCheckpointer() as c:
    a = c.restore(str(s1 / "checkpoints" / "4" / "state"))["params"]
    b = c.restore(str(ft / "checkpoints" / "6" / "state"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, a["encoder"], b["params"]["encoder"])
  assert not any("encoder" in p for p in _paths(b["opt_state"]))
  # The fine-tuned run loads in the inference API (its optimizer state has the stage-2 layout).
  from vft.api import VideoTokenizer
  tok = VideoTokenizer.from_workdir(ft)
  assert tok.model.cfg.dec_mask == "full" and tok.model.cfg.prefix_masking
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(tok.params["decoder"]),
                         b["params"]["decoder"])
