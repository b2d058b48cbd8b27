"""Preemption and crash safety of training checkpoints, with real processes and real signals:
SIGTERM saves the current step and exits 143, the rerun resumes bit for bit; a save killed with
SIGKILL is never resumed from; a corrupt latest checkpoint falls back to the previous one."""
from __future__ import annotations

import glob
import os
from pathlib import Path
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.helpers import write_tiny_dataset
from vft import checkpoint as ckpt_lib
from vft.train import preemption

REPO = Path(__file__).resolve().parents[1]
TOTAL, EVERY = 6, 4  # checkpoints at 4 and 6; the preemptions below hit other steps


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
  """Holds the tiny dataset, the config file and the compilation cache the processes share.
  (tiny_config saves synchronously: on 8 CPU devices an async orbax save of its 144 sharded
  arrays blocks for about 20 s here, longer than the whole run.)"""
  root = tmp_path_factory.mktemp("preemption")
  write_tiny_dataset(root / "data")
  (root / "config.py").write_text(
      f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
      "from tests.helpers import tiny_config\n\n"
      "def get_config():\n"
      f"  return tiny_config({str(root / 'data')!r}, total_steps={TOTAL}, **{{\n"
      f"      'checkpoint.every_steps': {EVERY}}})\n")
  return root


# Runs `vft train` (vft.main, as the console script does) after wrapping Trainer.step so that the
# process sends itself a real SIGTERM right after the step `sigterm_after` (-1: never); the
# signal then takes the production path (handler -> step boundary -> save -> exit status).
_DRIVER = """
import os, signal, sys
config, workdir, sigterm_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
from vft.train import loop
step = loop.Trainer.step
def step_then_signal(self, batch):
  metrics = step(self, batch)
  if int(self.state.step) == sigterm_after:
    os.kill(os.getpid(), signal.SIGTERM)
  return metrics
loop.Trainer.step = step_then_signal
from vft import main
sys.argv = ["vft", "train", f"--config={config}", f"--workdir={workdir}"]
main.run()
"""


def _train(run_dir: Path, workdir: Path, sigterm_after: int = -1) -> subprocess.CompletedProcess:
  """A training process on 8 CPU devices (tests/conftest.py's environment); the processes share
  a persistent compilation cache, so only the first one compiles."""
  env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest",
             JAX_COMPILATION_CACHE_DIR=str(run_dir / "jax_cache"))
  done = subprocess.run(
      [sys.executable, "-c", _DRIVER, str(run_dir / "config.py"), str(workdir),
       str(sigterm_after)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  with open(f"{workdir}.log", "a") as f:  # for a look after a failure
    f.write(done.stderr)
  return done


def _saved_state(workdir, step: int) -> dict:
  """The train state of checkpoint `step` in `workdir`, as host arrays (read from disk)."""
  directory = os.path.join(workdir, "checkpoints")
  _, meta = ckpt_lib.state_metadata(directory, step)
  return jax.device_get(ckpt_lib.restore_state_subtree(directory, step, _target(meta)))


def _target(meta):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)


def _assert_bit_identical(want: dict, got: dict) -> None:
  want_leaves, want_tree = jax.tree_util.tree_flatten_with_path(want)
  got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(got)
  assert want_tree == got_tree
  assert set(want) >= {"params", "opt_state", "step"}
  for (path, a), (_, b) in zip(want_leaves, got_leaves):
    assert a.dtype == b.dtype and np.array_equal(a, b), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def reference(run_dir) -> Path:
  """The workdir of an uninterrupted run (checkpoints EVERY and TOTAL)."""
  workdir = run_dir / "uninterrupted"
  done = _train(run_dir, workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


def test_sigterm_saves_the_current_step_exits_143_and_resume_is_bit_identical(
    run_dir, reference, tmp_path):
  workdir = tmp_path / "run"
  first = _train(run_dir, workdir, sigterm_after=3)
  assert first.returncode == preemption.EXIT_CODE == 143, first.stderr[-3000:]
  assert "preempted: saved checkpoint step 3" in first.stderr
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]  # not a multiple of EVERY

  second = _train(run_dir, workdir)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resumed from step 3" in second.stderr
  _assert_bit_identical(_saved_state(reference, TOTAL), _saved_state(workdir, TOTAL))


# Saves step 1 (waits), starts the async save of step 2 and kills itself with SIGKILL once step
# 2's array data is being written into its temporary directory (exit 3: the save finished first).
_KILL_DRIVER = """
import glob, os, signal, sys, time
import jax, numpy as np
from vft import checkpoint as ckpt_lib
directory = sys.argv[1]
rng = np.random.default_rng(0)
state = {f"w{i}": jax.numpy.asarray(rng.random(2_000_000, np.float32)) for i in range(8)}
ckpt = ckpt_lib.Checkpointer(directory, use_async=True)
ckpt.save(1, state)
ckpt.wait()
ckpt.save(2, jax.tree_util.tree_map(lambda x: x + 1, state))
while not glob.glob(f"{directory}/2.orbax-checkpoint-tmp*/state*/ocdbt.process_0/d/*"):
  if os.path.isdir(f"{directory}/2"):
    sys.exit(3)
  time.sleep(0.001)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_save_killed_halfway_is_never_resumed_from(tmp_path):
  """orbax-checkpoint 0.12.8 on a local file system writes a step into
  <step>.orbax-checkpoint-tmp (and each item into <item>.orbax-checkpoint-tmp inside it) and
  renames it to <step> only after every array is written; the step listing skips tmp names.
  64 MB of incompressible float32 takes about 0.3 s to write here, the kill comes within a few
  ms of the first array data file, so the half-written directory is on disk when it lands."""
  directory = tmp_path / "checkpoints"
  killed = subprocess.run([sys.executable, "-c", _KILL_DRIVER, str(directory)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
  assert not (directory / "2").exists()
  half = glob.glob(f"{directory}/2.orbax-checkpoint-tmp*")
  assert half and glob.glob(f"{half[0]}/state*/ocdbt.process_0/d/*")  # partial data on disk

  rng = np.random.default_rng(0)
  want = {f"w{i}": rng.random(2_000_000, np.float32) for i in range(8)}
  ckpt = ckpt_lib.Checkpointer(str(directory))
  try:
    assert ckpt.latest_step() == 1
    step, state = ckpt.restore_latest(jax.tree_util.tree_map(jax.numpy.zeros_like, want))
    assert step == 1
    jax.tree_util.tree_map(np.testing.assert_array_equal, want, jax.device_get(state))
    ckpt.save(2, state)  # the rerun reaches step 2 again and saves it over the leftover
    ckpt.wait()
    assert ckpt.latest_step() == 2
  finally:
    ckpt.close()


def _truncate_array_files(step_dir: Path) -> None:
  """Cuts every array data file of the train state of a checkpoint step to half its size."""
  files = [p for p in step_dir.glob("state/ocdbt.process_*/d/*") if p.is_file()]
  assert files, step_dir
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(path.stat().st_size // 2)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(run_dir, reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  _truncate_array_files(workdir / "checkpoints" / str(TOTAL))
  resumed = _train(run_dir, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  log = "".join(line for line in resumed.stderr.splitlines(True)  # warnings and vft's own lines
                if line.startswith("W") or "metrics.py" in line)
  # The bad step with its error, then the step used.
  assert (f"Checkpoint step {TOTAL} in {workdir / 'checkpoints'} is unreadable on process 0: "
          "Exception: Encountered error while reading array") in log, log
  assert "caused by ValueError: OUT_OF_RANGE: Error reading" in log, log  # names the array
  assert (f"Resuming from checkpoint step {EVERY} instead of the unreadable step(s) [{TOTAL}]"
          in log), log
  assert f"Resumed from step {EVERY}" in log, log
  # Moved aside, so that step TOTAL could be saved again, and equal to the uninterrupted run.
  assert (workdir / "checkpoints.corrupt" / str(TOTAL)).is_dir()
  _assert_bit_identical(_saved_state(reference, TOTAL), _saved_state(workdir, TOTAL))


def test_no_readable_checkpoint_is_a_clear_error_and_moves_nothing(reference, tmp_path):
  directory = tmp_path / "checkpoints"
  shutil.copytree(reference / "checkpoints", directory)
  _, meta = ckpt_lib.state_metadata(str(directory), EVERY)
  for step in (EVERY, TOTAL):
    _truncate_array_files(directory / str(step))
  ckpt = ckpt_lib.Checkpointer(str(directory))
  try:
    with pytest.raises(RuntimeError, match=rf"no readable checkpoint in {directory}: step "
                       rf"{TOTAL}: .*Encountered error.*; step {EVERY}: "):
      ckpt.restore_latest(_target(meta))
  finally:
    ckpt.close()
  assert sorted(os.listdir(directory)) == [str(EVERY), str(TOTAL)]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _two_processes(run_dir: Path, workdir: Path, env: dict, sigterm_process_1_at: int | None):
  """`vft train --distributed` as 2 processes (2 CPU devices each) on localhost. With
  `sigterm_process_1_at`, process 1 alone gets a SIGTERM once process 0 logged that step.
  -> (return codes, process 0's log)."""
  port = _free_port()
  cmd = lambda i: [  # noqa: E731
      sys.executable, "-m", "vft.main", "train", f"--config={run_dir / 'config_mp.py'}",
      f"--workdir={workdir}", "--distributed", f"--coordinator=localhost:{port}",
      "--num_processes=2", f"--process_id={i}"]
  log1 = open(workdir.parent / f"{workdir.name}_process1.log", "w")
  p1 = subprocess.Popen(cmd(1), cwd=REPO, env=env, stdout=log1, stderr=subprocess.STDOUT)
  p0 = subprocess.Popen(cmd(0), cwd=REPO, env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in p0.stdout:
    lines.append(line)
    if sigterm_process_1_at is not None and f"] [{sigterm_process_1_at}] " in line:
      p1.send_signal(signal.SIGTERM)
      sigterm_process_1_at = None
  codes = [p0.wait(timeout=600), p1.wait(timeout=600)]
  log1.close()
  return codes, "".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync_manager", "allgather"])
def test_sigterm_to_one_of_two_processes_saves_one_agreed_step(run_dir, tmp_path, mode):
  """jax's preemption sync manager (jax.distributed's default) and, with the preemption service
  off, the all-gather of the local flags every `preemption_sync_every` steps: both processes stop
  after saving the same step, which the rerun resumes from."""
  (run_dir / "config_mp.py").write_text(
      f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
      "from tests.helpers import tiny_config\n\n"
      "def get_config():\n"
      f"  return tiny_config({str(run_dir / 'data')!r}, total_steps=100, **{{\n"
      "      'checkpoint.every_steps': 1000, 'checkpoint.preemption_sync_every': 7})\n")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_ENABLE_PREEMPTION_SERVICE=str(mode == "sync_manager").lower(),
             JAX_COMPILATION_CACHE_DIR=str(run_dir / "jax_cache_mp"))
  workdir = tmp_path / "run"
  codes, log = _two_processes(run_dir, workdir, env, sigterm_process_1_at=3)
  assert codes == [143, 143], log[-3000:]
  assert f"Preemption watch: {mode}" in log
  saved = [int(s) for s in os.listdir(workdir / "checkpoints")]
  assert len(saved) == 1 and 3 < saved[0] < 100, saved
  if mode == "allgather":
    assert saved[0] % 7 == 0
  assert f"preempted: saved checkpoint step {saved[0]}" in log

  codes, log = _two_processes(run_dir, workdir, env, sigterm_process_1_at=None)
  assert codes == [0, 0], log[-3000:]
  assert f"Resumed from step {saved[0]}" in log
  assert sorted(int(s) for s in os.listdir(workdir / "checkpoints")) == [saved[0], 100]
