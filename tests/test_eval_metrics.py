"""Tests for vft.eval.metrics (PSNR, SSIM) and vft.eval.report (artifacts)."""
import json
import os

import av
import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vft.eval import metrics
from vft.eval import report


def _video(seed: int, shape=(2, 2, 24, 28, 3)) -> np.ndarray:
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _structured(shape=(2, 2, 32, 36, 3)) -> np.ndarray:
  """Gradients, a checkerboard and a disc: smooth and sharp structure."""
  b, t, h, w, c = shape
  yy, xx = np.mgrid[:h, :w].astype(np.float32)
  out = np.zeros(shape, np.float32)
  for i in range(b):
    for f in range(t):
      out[i, f, ..., 0] = (xx + 3 * f + 7 * i) / (w + 10)
      out[i, f, ..., 1] = ((xx // (4 + i) + yy // 4 + f) % 2).astype(np.float32)
      disc = (yy - h / 2) ** 2 + (xx - w / 2 - f) ** 2 < (h / 3) ** 2
      out[i, f, ..., 2] = np.where(disc, 0.8, 0.1 + 0.5 * yy / h)
  return out


def _blur(x: np.ndarray) -> np.ndarray:
  """3x3 box blur over H, W with edge padding."""
  p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  h, w = x.shape[2:4]
  return sum(p[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9


# ----------------------------------------------------------------------------
# PSNR.


def test_psnr_constant_offset_is_20db():
  a = np.full((2, 3, 8, 8, 3), 0.5, np.float32)
  np.testing.assert_allclose(metrics.psnr(a, a + 0.1), [20.0, 20.0], atol=1e-4)
  # max_val scales the peak: offset 25.5 on a 255 range is also 20 dB.
  np.testing.assert_allclose(
      metrics.psnr(a * 255, a * 255 + 25.5, max_val=255.0), [20.0, 20.0],
      atol=1e-4)


def test_psnr_identical_is_finite_and_large():
  a = _video(0)
  value = np.asarray(metrics.psnr(a, a))
  assert np.all(np.isfinite(value))
  np.testing.assert_allclose(value, 100.0, atol=1e-3)  # 10 log10(1 / 1e-10).


def test_psnr_is_the_mean_of_capped_frame_psnrs():
  """Per-frame PSNR, then the mean over frames (not the PSNR of the clip's MSE)."""
  a = np.full((1, 2, 8, 8, 3), 0.5, np.float32)
  b = a.copy()
  b[0, 1] += 0.1  # frame 0 identical (100 dB cap), frame 1 at 20 dB
  np.testing.assert_allclose(metrics.psnr(a, b), [60.0], atol=1e-3)


def test_psnr_and_ssim_are_dm_pix_per_frame():
  """The one PSNR / SSIM definition: dm-pix on every frame, mean over frames per clip."""
  import dm_pix as pix
  a = _structured((2, 3, 32, 36, 3))
  b = np.clip(a + 0.05 * _video(4, a.shape), 0, 1).astype(np.float32)
  fa, fb = a.reshape(6, 32, 36, 3), b.reshape(6, 32, 36, 3)
  np.testing.assert_allclose(jax.jit(metrics.psnr)(a, b),
                             np.asarray(pix.psnr(fa, fb)).reshape(2, 3).mean(1), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(metrics.ssim)(a, b),
                             np.asarray(pix.ssim(fa, fb)).reshape(2, 3).mean(1), rtol=1e-6)
  scores = metrics.frame_scores(a, b)  # the eval job's table uses the same two functions
  np.testing.assert_array_equal(scores["psnr"], metrics.psnr(a, b))
  np.testing.assert_array_equal(scores["ssim"], metrics.ssim(a, b))


# ----------------------------------------------------------------------------
# SSIM.


def test_ssim_identical_is_one():
  a = _structured()
  np.testing.assert_allclose(metrics.ssim(a, a), 1.0, atol=1e-5)


def test_ssim_matches_tf_image_ssim():
  tf = pytest.importorskip("tensorflow")
  rng = np.random.default_rng(1)
  random_a = _video(1, (2, 2, 24, 28, 3))
  random_b = np.clip(random_a + 0.1 * rng.normal(size=random_a.shape), 0, 1)
  struct_a = _structured()
  cases = {
      "random": (random_a, random_b.astype(np.float32)),
      "structured_blur": (struct_a, _blur(struct_a).astype(np.float32)),
      "structured_shift": (struct_a, np.roll(struct_a, 1, axis=3)),
  }
  ssim_jit = jax.jit(metrics.ssim)
  for name, (a, b) in cases.items():
    ours = np.asarray(ssim_jit(a, b))
    ref = tf.reduce_mean(tf.image.ssim(a, b, max_val=1.0), axis=-1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, err_msg=name)
    assert ours.min() < 0.99, name  # The cases are not trivially identical.


def test_ssim_decreases_with_noise():
  a = _structured((1, 2, 32, 32, 3))
  rng = np.random.default_rng(2)
  noise = rng.normal(size=a.shape).astype(np.float32)
  values = [float(metrics.ssim(a, np.clip(a + s * noise, 0, 1))[0])
            for s in (0.02, 0.1, 0.3)]
  assert values[0] > values[1] > values[2], values


def test_batched_equals_single_clip_calls():
  a = _structured((3, 2, 16, 20, 3))
  b = np.clip(a + 0.05 * _video(3, a.shape), 0, 1)
  for fn in (metrics.psnr, metrics.ssim):
    batched = np.asarray(jax.jit(fn)(a, b))
    assert batched.shape == (3,)
    singles = [float(fn(a[i:i + 1], b[i:i + 1])[0]) for i in range(3)]
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [metrics.psnr, metrics.ssim])
def test_shape_errors(fn):
  a = np.zeros((1, 2, 16, 16, 3), np.float32)
  with pytest.raises(ValueError, match=r"\(1, 2, 16, 16, 3\).*\(1, 2, 16, 12, 3\)"):
    fn(a, np.zeros((1, 2, 16, 12, 3), np.float32))
  with pytest.raises(ValueError, match="ndim 5"):
    fn(a[0], a[0])
  with pytest.raises(ValueError, match="floating"):
    fn(a.astype(np.uint8), a.astype(np.uint8))


def test_ssim_rejects_frames_smaller_than_window():
  a = np.zeros((1, 1, 10, 16, 3), np.float32)
  with pytest.raises(ValueError, match="at least 11x11"):
    metrics.ssim(a, a)


def test_to_unit():
  x = jnp.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
  np.testing.assert_allclose(metrics.to_unit(x), [0, 0, 0.5, 0.75, 1, 1])


# ----------------------------------------------------------------------------
# Budget grid.


def _clips(seed: int, shape=(2, 3, 12, 16, 3)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_budget_grid_layout_and_pixels():
  n, t, h, w = 2, 3, 12, 16
  pad = 3
  originals = _clips(0)
  recons = [_clips(1), _clips(2), _clips(3)]
  grid = report.budget_grid(originals, recons, pad=pad,
                            labels=["1", "2", "4"])
  k = len(recons)
  hh = report.header_height(w)
  assert grid.dtype == np.uint8
  assert grid.shape == (t, hh + pad + n * (h + pad), pad + (k + 1) * (w + pad), 3)
  for j, clips in enumerate([originals, *recons]):
    for i in range(n):
      y, x = hh + pad + i * (h + pad), pad + j * (w + pad)
      np.testing.assert_array_equal(grid[:, y:y + h, x:x + w], clips[i])
  # Separators are white; the header has dark label pixels in every column.
  assert np.all(grid[:, hh:hh + pad] == 255)
  assert np.all(grid[:, hh:, :pad] == 255)
  for j in range(k + 1):
    x = pad + j * (w + pad)
    assert grid[0, :hh, x:x + w].min() < 128, f"column {j} has no label"


def test_budget_grid_with_bitmap_font_fallback(monkeypatch):
  """Without a scalable font, Pillow's fixed bitmap font still draws labels."""
  from PIL import ImageFont
  load_default = ImageFont.load_default

  def no_sizes(size=None):
    if size is not None:
      raise TypeError("size not supported")
    return load_default()

  monkeypatch.setattr(ImageFont, "load_default", no_sizes)
  grid = report.budget_grid(_clips(0), [_clips(1)], labels=["orig", "256"])
  assert grid[0, :report.header_height(16)].min() < 128


def test_budget_grid_errors():
  originals = _clips(0)
  with pytest.raises(ValueError, match=r"recons\[1\].*\(2, 3, 12, 16, 3\).*\(2, 3, 12, 8, 3\)"):
    report.budget_grid(originals, [_clips(1), _clips(2, (2, 3, 12, 8, 3))])
  with pytest.raises(ValueError, match="originals must be uint8"):
    report.budget_grid(originals.astype(np.float32), [])
  with pytest.raises(ValueError, match="labels must have 3 entries"):
    report.budget_grid(originals, [_clips(1), _clips(2)], labels=["a"])


# ----------------------------------------------------------------------------
# Writers.


def _moving_frames(t=5, h=21, w=30) -> np.ndarray:
  """Distinct frames (GIF writers merge identical consecutive frames)."""
  yy, xx = np.mgrid[:h, :w]
  frames = np.zeros((t, h, w, 3), np.uint8)
  for f in range(t):
    frames[f, ..., 0] = (xx * 8 + f * 40) % 256
    frames[f, ..., 1] = (yy * 12) % 256
    frames[f, ..., 2] = 60 * f
  return frames


def test_write_video_readable_with_even_size(tmp_path):
  frames = _moving_frames(t=5, h=21, w=30)
  path = tmp_path / "sub" / "grid.mp4"
  report.write_video(path, frames, fps=8)
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    assert stream.codec_context.name in ("h264", "libx264")
    decoded = [fr.to_ndarray(format="rgb24") for fr in container.decode(stream)]
  assert len(decoded) == 5
  assert decoded[0].shape == (22, 30, 3)  # Height 21 padded to even.
  # Lossy, but close: mean abs error in the original area is small.
  err = np.abs(decoded[2][:21].astype(int) - frames[2].astype(int)).mean()
  assert err < 20, err
  assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]


def test_write_gif_readable(tmp_path):
  frames = _moving_frames(t=4, h=16, w=20)
  path = tmp_path / "grid.gif"
  report.write_gif(path, frames, fps=8)
  decoded = iio.imread(path, index=None)
  assert decoded.shape[:3] == (4, 16, 20)
  assert iio.immeta(path).get("loop") == 0


def test_plot_budget_curve_writes_png(tmp_path):
  path = tmp_path / "curve.png"
  report.plot_budget_curve(path, [1, 2, 4, 8], [18.0, 20.5, 23.0, 25.1],
                           [0.5, 0.6, 0.7, 0.8], title="test")
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
  with pytest.raises(ValueError, match="ssim must have one value per budget"):
    report.plot_budget_curve(path, [1, 2], [1.0, 2.0], [0.5])


def test_metrics_json_round_trip(tmp_path):
  path = tmp_path / "metrics.json"
  report.write_metrics_json(
      path, budgets=[1, 4, 16], psnr=[np.float32(18.123456), 21.0, 25.55555],
      ssim=[0.512345, 0.6, 0.7], num_clips=8, steps=25,
      extra={"cfg": 1.23456789, "bad": float("nan")})
  got = json.loads(path.read_text())
  assert got == {"budgets": [1, 4, 16], "psnr": [18.1235, 21.0, 25.5556],
                 "ssim": [0.5123, 0.6, 0.7], "num_clips": 8, "steps": 25,
                 "cfg": 1.2346, "bad": None}
  assert os.listdir(tmp_path) == ["metrics.json"]


def test_metrics_json_errors(tmp_path):
  path = tmp_path / "metrics.json"
  with pytest.raises(ValueError, match="psnr must have one value per budget"):
    report.write_metrics_json(path, budgets=[1, 2], psnr=[1.0], ssim=[0.1, 0.2],
                              num_clips=1, steps=1)
  with pytest.raises(ValueError, match="reserved keys"):
    report.write_metrics_json(path, budgets=[1], psnr=[1.0], ssim=[0.1],
                              num_clips=1, steps=1, extra={"steps": 3})
  assert not path.exists()
