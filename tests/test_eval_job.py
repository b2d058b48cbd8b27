"""`vft eval --checkpoint`: the per-budget evaluation job on a tiny random tokenizer, with a
cheap I3D stand-in (the real I3D is covered by test_eval_fvd)."""
import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_eval_fvd import StubI3D
from tests.tiny_inference import CODEC, tiny_model
from vft import VideoTokenizer
from vft.data import video_io
from vft.eval import checkpoint_eval as job
from vft.eval import metrics, report
from vft.eval.frechet import FeatureStats, stats_distance

VIDEOS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "videos")
SIZE = 32


@pytest.fixture(scope="module")
def tok():
  model, params = tiny_model()
  return VideoTokenizer(model, params, CODEC, frame_size=(SIZE, SIZE))


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
  """Two real 17-frame clips at 32x32 written as mp4 (8 fps), and a truncated file (the first
  20000 bytes of a 10 s video: 10 frames decode) that the eval job must skip and count."""
  d = tmp_path_factory.mktemp("videos")
  for name in ("asl_book.mp4", "bikes_street.mp4"):
    clip = video_io.read_video(os.path.join(VIDEOS, name), num_frames=17, size=SIZE)
    report.write_video(d / name, clip, fps=8)
  with open(os.path.join(VIDEOS, "airplane_field.mp4"), "rb") as f:
    (d / "truncated.mp4").write_bytes(f.read(20000))
  return d


def _settings(video_dir, out, **kw):
  kw = dict(dict(budgets=[1, 4], batch_size=1, steps=2, seed=7, grid_clips=2), **kw)
  return job.EvalSettings(checkpoint="tiny", videos=str(video_dir), out=str(out), **kw)


@pytest.fixture(scope="module")
def first_run(tok, video_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("eval") / "a"
  rec = job.evaluate_checkpoint(_settings(video_dir, out), tokenizer=tok, i3d_net=StubI3D(),
                                log=lambda m: None)
  return rec, out


def test_eval_job_scores_and_files(tok, video_dir, first_run):
  rec, out = first_run
  assert rec["num_clips"] == 2 and rec["budgets"] == [1, 4]
  for m in ("psnr", "ssim", "lpips", "mae", "mse", "rfvd", "rfvd17"):
    assert len(rec[m]) == 2 and all(np.isfinite(rec[m])), m
  assert rec["rfid"] == [None, None] and "rFID skipped" in rec["rfid_note"]

  # Independent recomputation of the second batch (clip 1) with the documented seeds.
  clip = video_io.read_video(os.path.join(video_dir, "bikes_street.mp4"), num_frames=17,
                             size=SIZE)[None]
  key = jax.random.key(7)
  ids = tok.tokenize(clip, rng=jax.random.fold_in(jax.random.fold_in(key, 0), 1))
  for k in (1, 4):
    dec = tok.detokenize(ids, keep_k=k, steps=2,
                         rng=jax.random.fold_in(jax.random.fold_in(key, 1), 1))
    rec01 = np.clip((np.asarray(dec) + 1) / 2, 0, 1)
    want = job._frame_scores(rec01, clip / 255.0)
    np.testing.assert_allclose(rec["per_clip"]["psnr"][str(k)][1:], want["psnr"], rtol=1e-4)
    np.testing.assert_allclose(rec["per_clip"]["mse"][str(k)][1:], want["mse"], rtol=1e-4)

  # rFVD is the distance between the saved statistics files.
  files = rec["fvd"]["stats_files"]
  real = FeatureStats.load(files["real_f16"])
  assert real.n == 2 and real.meta["frames"] == 16 and real.meta["resize"] == "tf1"
  for i, k in enumerate((1, 4)):
    fake = FeatureStats.load(files[f"recon_k{k:04d}_f16"])
    assert rec["rfvd"][i] == pytest.approx(stats_distance(real, fake), rel=1e-9)

  # Files: metrics.json, CSV, plot, grid video, TensorBoard events.
  saved = json.loads((out / "metrics.json").read_text())
  for m in ("budgets", "psnr", "ssim", "lpips", "rfvd", "num_clips"):
    assert m in saved
  assert saved["psnr"] == pytest.approx(rec["psnr"], abs=1e-6)
  assert saved["sampler"]["steps"] == 2 and saved["seed"] == 7
  assert saved["fvd"]["num_real"] == {"16": 2, "17": 2}
  # The truncated video: skipped whole (no clip repeats its frames), counted, with its reason.
  skipped = saved["skipped_videos"]
  assert skipped["num_undecodable"] == 1 and skipped["num_too_short"] == 0
  assert skipped["undecodable"][0]["path"] == str(video_dir / "truncated.mp4")
  assert "decoding stopped at frame 10" in skipped["undecodable"][0]["reason"]
  rows = list(csv.reader(open(out / "metrics.csv")))
  assert rows[0][:5] == ["budget", "psnr", "ssim", "lpips", "rfvd"]
  assert [r[0] for r in rows[1:]] == ["1", "4"]
  assert float(rows[2][1]) == pytest.approx(rec["psnr"][1], rel=1e-5)
  assert (out / "metrics.png").stat().st_size > 0
  grid = video_io.read_video(out / "recon_grid.mp4")
  assert grid.shape[0] == 17
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))



@pytest.mark.slow
def test_eval_job_reproducible_and_cached_real_stats(tok, video_dir, first_run, tmp_path):
  """Same seeds -> same numbers; cached real statistics give the same rFVD."""
  rec, _ = first_run
  stub = StubI3D()
  again = job.evaluate_checkpoint(
      _settings(video_dir, tmp_path / "b", real_stats=str(tmp_path / "real.npz"), lpips_nets=(),
                grid_clips=0, tensorboard=False),
      tokenizer=tok, i3d_net=stub, log=lambda m: None)
  assert again["psnr"] == rec["psnr"] and again["rfvd"] == pytest.approx(rec["rfvd"])
  assert os.path.isfile(tmp_path / "real_f16.npz") and os.path.isfile(tmp_path / "real_f17.npz")
  cached = job.evaluate_checkpoint(
      _settings(video_dir, tmp_path / "c", real_stats=str(tmp_path / "real.npz"), lpips_nets=(),
                grid_clips=0, tensorboard=False, fvd_frames=(16,)),
      tokenizer=tok, i3d_net=stub, log=lambda m: None)
  assert cached["fvd"]["real_stats_cached"] == {16: True}
  assert cached["rfvd"] == pytest.approx(rec["rfvd"], rel=1e-9)
  assert again["lpips"] == [None, None]


def test_eval_job_input_errors(tok, video_dir, tmp_path):
  with pytest.raises(ValueError, match="budgets"):
    job.evaluate_checkpoint(job.EvalSettings(checkpoint="tiny", videos=str(video_dir),
                                             out=str(tmp_path), budgets=[8]),
                            tokenizer=tok, i3d_net=StubI3D())
  with pytest.raises(ValueError, match="none fits"):
    job.evaluate_checkpoint(job.EvalSettings(checkpoint="tiny", videos=str(video_dir),
                                             out=str(tmp_path), num_frames=5, fvd_frames=(16,)),
                            tokenizer=tok, i3d_net=StubI3D())
  with pytest.raises(FileNotFoundError, match="no video files"):
    job.evaluate_checkpoint(job.EvalSettings(checkpoint="tiny", videos=str(tmp_path),
                                             out=str(tmp_path / "o"), fvd_frames=()),
                            tokenizer=tok, i3d_net=StubI3D())


def test_cli_settings_from_config_and_flags():
  import ml_collections
  from absl import flags
  import vft.main  # noqa: F401  (defines the shared flags: --steps, --seed, --config, ...)
  from vft.eval import cli
  config = ml_collections.ConfigDict(dict(checkpoint="runs/demo", videos="v", out="o",
                                          budgets=[1, 2], steps=10, seed=3))
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["vft", "--budgets=4,8", "--steps=5", "--lpips_nets=alexnet,vgg16"])
  try:
    s = cli.settings_from(config)
    assert (s.checkpoint, s.budgets, s.steps, s.seed) == ("runs/demo", [4, 8], 5, 3)
    assert s.lpips_nets == ["alexnet", "vgg16"]
    flags.FLAGS(["vft", "--budgets=a"])
    with pytest.raises(Exception, match="--budgets"):
      cli.settings_from(config)
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["vft"])
    with pytest.raises(Exception, match="--checkpoint is required"):
      cli.settings_from(None)
    config.bogus = 1
    with pytest.raises(Exception, match="unknown field 'bogus'"):
      cli.settings_from(config)
  finally:
    flags.FLAGS.unparse_flags()


@pytest.mark.slow
def test_budget_evaluator_extra_metrics(tok, video_dir, monkeypatch, tmp_path):
  """The training-time evaluator with config.eval.metrics = psnr, ssim, lpips, mae, mse, rfvd."""
  from vft.eval import i3d as i3d_lib
  from vft.eval import recon
  monkeypatch.setattr(i3d_lib, "I3D", lambda *a, **k: StubI3D())
  videos = np.stack([video_io.read_video(os.path.join(video_dir, n), num_frames=17, size=SIZE)
                     for n in ("asl_book.mp4", "bikes_street.mp4")])
  latents = CODEC.encode(jnp.asarray(videos, jnp.float32) / 127.5 - 1.0)
  base = recon.BudgetEvaluator(tok.model, CODEC, steps=2, seed=3)
  full = recon.BudgetEvaluator(tok.model, CODEC, steps=2, seed=3,
                               metrics=("psnr", "ssim", "lpips", "mae", "mse", "rfvd"))
  a = base(tok.params, latents, videos, [1, 4])
  b = full(tok.params, latents, videos, [1, 4])
  assert a["metrics"] == ["psnr", "ssim"] and "lpips" not in a
  assert b["metrics"] == ["psnr", "ssim", "lpips", "mae", "mse", "rfvd"]
  assert a["psnr"] == b["psnr"] and a["ssim"] == b["ssim"]
  for k, rec in enumerate(b["recons"]):
    unit = rec.astype(np.float32) / 255.0  # 8-bit recon vs the float one: mse within 1e-4
    assert b["mse"][k] == pytest.approx(float(np.mean((unit - videos / 255.0) ** 2)), abs=1e-4)
    # PSNR is the per-frame dm-pix mean (vft.eval.metrics.psnr); 8-bit rounding moves it little
    per_clip = np.asarray(metrics.psnr(unit, videos.astype(np.float32) / 255.0))
    np.testing.assert_allclose(a["psnr_per_clip"][k], per_clip, atol=0.05)
  assert all(v > 0 for v in b["lpips"] + b["rfvd"])
  paths = recon.write_artifacts(str(tmp_path), b, videos, steps=5)
  saved = json.loads(open(paths["metrics"]).read())
  assert saved["rfvd"] == pytest.approx(b["rfvd"], rel=1e-5)
  assert os.path.getsize(paths["metrics_plot"]) > 0
  with pytest.raises(ValueError, match="eval metrics"):
    recon.BudgetEvaluator(tok.model, CODEC, steps=2, metrics=("psnr", "fid"))


def test_standalone_only_for_eval_configs():
  import sys
  from absl import flags
  import vft.main  # noqa: F401
  from vft.eval import cli
  root = os.path.join(os.path.dirname(__file__), "..")
  sys.path.insert(0, root)
  from configs import demo, eval_demo
  assert cli._config_is_eval(eval_demo.get_config())
  assert not cli._config_is_eval(demo.get_config())  # its `checkpoint` is a section
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["vft"])
  try:
    assert not cli.standalone_requested()
    flags.FLAGS(["vft", "--checkpoint=runs/demo"])
    assert cli.standalone_requested()
  finally:
    flags.FLAGS.unparse_flags()


def test_clip_sources_skip_and_count_undecodable_videos(video_dir):
  """Both folder readers skip the truncated video whole and record why."""
  from vft.eval import clips as clips_lib
  for read in (lambda c: clips_lib.fvd_clips(video_dir, 16, c),
               lambda c: clips_lib.eval_clips(video_dir, num_frames=17, size=SIZE, fps=8.0,
                                              count=c)):
    count = clips_lib.ClipCount()
    assert len(list(read(count))) == 2 and count.used == 2 and count.skipped == []
    assert [u["path"] for u in count.undecodable] == [str(video_dir / "truncated.mp4")]
    assert count.undecodable[0]["reason"].startswith("decoding stopped at frame 10")
