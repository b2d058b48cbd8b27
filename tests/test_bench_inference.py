"""benchmarks/inference.py: on the tiny bench model every stage passes its check against the
official outputs and gets a time; a wrong posterior eps, a changed encoder or decoder weight, or
an other video make the check fail (and the stage untimed), so the check is not a no-op."""
import importlib.util
import os
import pathlib
import sys

import jax
import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"
_spec = importlib.util.spec_from_file_location("bench_inference", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_inference"] = bench  # its dataclasses look their module up
_spec.loader.exec_module(bench)

TINY = os.path.join(bench.BENCH_MODELS, "tiny")
pytestmark = pytest.mark.skipif(not os.path.isdir(TINY), reason=f"no bench model at {TINY}")


def _scaled(params, path: tuple[str, ...], factor: float):
  """A copy of params with the subtree at `path` multiplied by `factor`."""
  out = dict(params)
  if len(path) == 1:
    out[path[0]] = jax.tree.map(lambda p: p * factor, params[path[0]])
  else:
    out[path[0]] = _scaled(params[path[0]], path[1:], factor)
  return out


def test_checked_stages_and_perturbations():
  tok, io = bench.load(TINY, "einsum", "float32")
  logs = []
  # api_detokenize (detokenize + vae_decode, both checked here) is left to the benchmark: its
  # first call compiles both again for the sampler's output sharding (~8 s).
  names = [s for s in bench.STAGES if s != "api_detokenize"]
  res = bench.run_stages(bench.build_stages(tok, io), names, "float32", reps=1, log=logs.append)
  for name in names:
    row = res[name]
    assert "error" not in row, row
    assert row["median_s"] > 0 and row["min_s"] <= row["median_s"] <= row["max_s"], (name, row)
  assert res["tokenize"]["id_flips"] == 0 and res["api_tokenize"]["id_flips"] == 0
  for name in ("vae_encode", "dec_forward", "detokenize", "vae_decode"):
    assert res[name]["rel_err"] <= bench.TOL["float32"], (name, res[name])

  # A wrong posterior eps: vae_encode's latents (and the API's ids) no longer match.
  bad_io = dict(io, eps=io["eps"] + 0.05)
  bad = bench.run_stages(bench.build_stages(tok, bad_io), ["vae_encode"], "float32", reps=1,
                         log=logs.append)["vae_encode"]
  assert "median_s" not in bad and "rel_err" in bad["error"]
  assert bad["rel_err"] > bench.TOL["float32"] and bad["moments_rel_err"] <= 1e-4

  # A changed decoder weight: one decoder call and the sampler differ.
  params = tok.params
  tok.params = _scaled(params, ("decoder", "to_patches"), 1.01)
  try:
    bad = bench.run_stages(bench.build_stages(tok, io), ["dec_forward", "detokenize"], "float32",
                           reps=1, log=logs.append)
    # A changed encoder weight: the token ids differ.
    tok.params = _scaled(params, ("encoder", "to_latents"), 1.5)
    bad.update(bench.run_stages(bench.build_stages(tok, io), ["tokenize"], "float32", reps=1,
                                log=logs.append))
  finally:
    tok.params = params
  for name in ("dec_forward", "detokenize", "tokenize"):
    assert "error" in bad[name] and "median_s" not in bad[name], (name, bad[name])
  assert bad["tokenize"]["id_flips"] > 0
  with pytest.raises(bench.CheckError, match="ids differ"):
    bench.check("tokenize", {"id_flips": 0.01}, "float32")
  with pytest.raises(bench.CheckError, match="rel_err"):
    bench.check("x", {"rel_err": 0.2}, "bfloat16")
  np.testing.assert_array_equal(bench.check("x", {"id_flips": 0.1}, "bfloat16")["id_flips"], 0.1)


def test_bench_io_and_impls():
  io = bench.read_bench_io(TINY)
  assert io["video"].shape == (1, 17, 64, 64, 3) and io["tokens"].dtype == np.int32
  assert io["eps"].shape == io["vae_latents"].shape
  assert set(bench.usable_impls("cpu")) == set(bench.ATTENTION_IMPLS) - {"splash", "cudnn"}
  assert "cudnn" in bench.usable_impls("gpu") and "splash" not in bench.usable_impls("gpu")
  with pytest.raises(FileNotFoundError, match="bench_io.safetensors"):
    bench.read_bench_io(os.path.dirname(TINY))
