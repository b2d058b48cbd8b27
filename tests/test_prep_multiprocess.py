"""`vft prep` as real processes: two JAX processes (jax.distributed on localhost, CPU) and a
run killed with SIGKILL and resumed. Slow (each process imports JAX): `make test-slow`."""
from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import time

import pytest

from vft.data import pipeline

REPO = Path(__file__).resolve().parents[1]
VIDEOS = Path("/work/shared/data/videos")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not VIDEOS.is_dir(), reason="shared sample videos not present")]


def _cmd(inp, out, *extra):
  return [sys.executable, "-m", "vft.main", "prep", f"--input={inp}", f"--output={out}",
          f"--config={REPO / 'configs/prep_video.py'}:tiny", "--config.progress=False",
          "--config.videos_per_shard=2", *extra]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _input(tmp_path: Path) -> Path:
  """All shared videos plus a corrupt one, as a folder of symlinks."""
  d = tmp_path / "videos"
  d.mkdir()
  for p in sorted(VIDEOS.glob("*.mp4")):
    (d / p.name).symlink_to(p)
  (d / "zz_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
  return d


def _shards(out: Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(out.glob("*-*.array_record"))}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_jax_processes_write_disjoint_shards_equal_to_one(tmp_path):
  inp = _input(tmp_path)
  single = tmp_path / "single"
  subprocess.run(_cmd(inp, single), check=True, env=_env(), cwd=REPO, capture_output=True)
  ref = json.loads((single / "manifest.json").read_text())
  assert ref["num_skipped"] == 8 and "zz_corrupt.mp4" in ref["skipped"][-1]["path"]

  multi = tmp_path / "multi"
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(inp, multi, "--distributed", f"--coordinator=localhost:{port}", "--num_processes=2",
           f"--process_id={i}"), env=_env(), cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  logs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs
  done = {}
  for i, (_, err) in enumerate(logs):  # which shards each process wrote
    assert f"process {i}/2" in err
  for name in _shards(multi):
    k = int(name.split("-")[1].split(".")[0])
    done.setdefault(k % 2, []).append(name)
  assert set(done) == {0, 1}  # both processes wrote shards, disjoint by construction (k % 2)
  assert _shards(multi) == _shards(single)  # the union equals the single-process output
  assert json.loads((multi / "manifest.json").read_text()) == ref


def test_killed_prep_resumes_to_identical_shards(tmp_path):
  inp = _input(tmp_path)
  full = tmp_path / "full"
  subprocess.run(_cmd(inp, full, "--config.videos_per_shard=1"), check=True, env=_env(),
                 cwd=REPO, capture_output=True)
  out = tmp_path / "killed"
  p = subprocess.Popen(_cmd(inp, out, "--config.videos_per_shard=1"), env=_env(), cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and len(list(out.glob("train-*.json"))) < 3:
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  finished = len(list(out.glob("train-*.json")))
  assert 3 <= finished < 19 and not (out / "manifest.json").exists()
  res = subprocess.run(_cmd(inp, out, "--config.videos_per_shard=1"), env=_env(), cwd=REPO,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  assert f"{19 - finished} of its 19 shards to do" in res.stderr
  assert _shards(out) == _shards(full)
  assert json.loads((out / "manifest.json").read_text()) == json.loads(
      (full / "manifest.json").read_text())
  assert not list(out.glob(".*"))  # no temp files left behind
  assert len(pipeline.load_split(out, "train")) == 11
