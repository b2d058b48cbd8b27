"""benchmarks/budget_gap.py: the PCA reference is exact at full rank and ordered; the linear
FSQ auto-encoder reports one PSNR per budget at each requested step."""
import importlib.util
import pathlib

import numpy as np
import pytest

from vft.models.vae import PatchCodec

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "budget_gap.py"
_spec = importlib.util.spec_from_file_location("budget_gap", _PATH)
budget_gap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(budget_gap)


def _clips(n, seed):
  codec = PatchCodec(spatial_factor=8, pool=4)
  rng = np.random.default_rng(seed)
  vid = rng.integers(0, 256, (n, 5, 16, 16, 3), dtype=np.uint8)
  vid = np.repeat(np.repeat(vid, 4, axis=2), 4, axis=3)  # 4x4 blocks: exact under pool=4
  lat = np.asarray(codec.encode(vid.astype(np.float32) / 127.5 - 1.0))
  return codec, lat, vid


def test_pca_curve_is_exact_at_full_rank_and_non_decreasing_on_its_fit():
  codec, lat, vid = _clips(3, 0)
  rows = lat.shape[0] * lat.shape[1]
  curve = budget_gap.pca_curve(lat, lat, vid, codec, [1, 3, rows])
  full = budget_gap.psnr_db(lat, vid, codec)
  assert abs(curve[-1] - full) < 1e-3, (curve, full)
  assert curve[0] < curve[1] < curve[2], curve


def test_linear_fsq_ae_reports_each_step_and_budget():
  codec, lat, vid = _clips(4, 1)
  out = budget_gap.linear_fsq_ae(lat, lat[:2], vid[:2], codec, (3, 3), 4, "pow2", [1, 3],
                                 1e-3, 2, [1, 2, 4])
  assert sorted(out) == [1, 3]
  for curve in out.values():
    assert len(curve) == 3 and all(np.isfinite(curve))
  assert out[1] != out[3]  # the parameters moved between the two reports


@pytest.mark.slow  # ~1-2 min: a transformer encoder trained through the probe
def test_tokenizer_encoder_plugs_into_the_auto_encoder():
  from configs import demo
  c = demo.get_config("smoke")
  codec, lat, vid = _clips(2, 2)
  c.model.latent_channels = lat.shape[-1]
  enc = budget_gap.tokenizer_encoder(c.model, lat.shape[1:])
  out = budget_gap.linear_fsq_ae(lat, lat[:1], vid[:1], codec, tuple(c.model.fsq_levels),
                                 int(c.model.num_registers), "pow2", [2], 1e-3, 2, [1, 4],
                                 encoder=enc)
  assert list(out) == [2] and len(out[2]) == 2 and all(np.isfinite(out[2]))
