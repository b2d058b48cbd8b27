"""The CLI end to end on the seconds-long `smoke` config: prep -> train -> eval artifacts,
then a resume that picks up where it stopped."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, workdir):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run(
      [sys.executable, "-m", "vft.main", *args, f"--workdir={workdir}"], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=600)


def _check_tokenizer_half(wd):
  m = json.loads((wd / "metrics.json").read_text())
  assert m["budgets"] == [1, 2, 4] and m["steps"] == 4 and m["num_clips"] == 2
  assert len(m["psnr"]) == len(m["ssim"]) == 3 and all(0 < p < 100 for p in m["psnr"])
  for name in ("recon_budgets.mp4", "recon_budgets.gif", "budget_curve.png"):
    assert (wd / name).stat().st_size > 0
  assert any(p.name.startswith("events.out.tfevents") for p in wd.iterdir())


def test_demo_smoke_end_to_end(tmp_path):
  """The tokenizer half of `vft demo` (the generation half: the slow test below; its parts are
  tested in test_tokenize_dataset / test_ar_train / test_generate)."""
  wd = tmp_path / "run"
  r = _run("demo", "--config=configs/demo.py:smoke", "--config.gen.enabled=False", workdir=wd)
  assert r.returncode == 0, r.stderr[-3000:]
  _check_tokenizer_half(wd)
  assert not (wd / "gen_metrics.json").exists()
  # Longer run in the same workdir resumes from step 4 and reuses the dataset.
  r = _run("train", "--config=configs/demo.py:smoke", "--config.total_steps=6", workdir=wd)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resumed from step 4" in r.stderr
  assert sorted(os.listdir(wd / "checkpoints"))[-1] == "6"


@pytest.mark.slow  # I3D at 224 x 224 and three small trainings on CPU: ~4-10 min
def test_demo_smoke_with_generation(tmp_path):
  wd = tmp_path / "run"
  r = _run("demo", "--config=configs/demo.py:smoke", workdir=wd)
  assert r.returncode == 0, r.stderr[-3000:]
  _check_tokenizer_half(wd)
  # The generation half: tokens -> AR -> clips per class and budget, gFVD and alignment.
  g = json.loads((wd / "gen_metrics.json").read_text())
  assert g["budgets"] == [1, 2, 4] and g["num_samples"] == 4
  assert all(len(g[k]) == 3 for k in ("gfvd", "top1", "top5", "prob"))
  assert all(v > 0 for v in g["gfvd"]) and all(0 <= v <= 1 for v in g["prob"])
  assert g["grid_rows"] == ["disc horizontal", "disc vertical", "disc diagonal",
                            "square horizontal"]
  assert g["classifier_info"]["train_clips"] > 0 and "heldout_accuracy" in g["classifier_info"]
  tokens = json.loads((wd / "tokens" / "manifest.json").read_text())
  assert tokens["tokens_shape"] == [5, 4] and len(tokens["label_names"]) == 12
  for name in ("generated.mp4", "generated.gif", "gen_curves.png", "ar/config.json"):
    assert (wd / name).stat().st_size > 0


def test_cli_errors(tmp_path):
  r = _run("dance", "--config=configs/demo.py:smoke", workdir=tmp_path)
  assert r.returncode != 0 and "unknown command 'dance'" in r.stderr
  r = _run("train", "--config=configs/demo.py:smoke", workdir=tmp_path / "empty")
  assert r.returncode != 0 and "vft prep" in r.stderr
  assert _run("prep", "--config=configs/demo.py:smoke", workdir=tmp_path).returncode == 0
  r = _run("train", "--config=configs/demo.py:smoke", "--config.model.dec_mask=sideways",
           workdir=tmp_path)
  assert r.returncode != 0 and "config.model.dec_mask" in r.stderr
