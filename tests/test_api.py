"""vft.VideoTokenizer: tokenize/detokenize values and shapes on a tiny random model with
PatchCodec, no recompilation across budgets, workdir loading, the CLI round trip on a real
clip, and errors for bad input."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny_inference import CODEC, random_like, tiny_model
from vft import VideoTokenizer, flow
from vft.data import video_io
from vft.eval import report
from vft.inference import ChunkDraws, cli
from vft.models import fsq
from vft.models.tokenizer import sample_latents

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIDEOS = os.path.join(ROOT, "..", "shared", "data", "videos")
FIXTURES = os.environ.get("VFT_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))
OFFICIAL = os.path.join(FIXTURES, "official_tiny")


@pytest.fixture(scope="module")
def tok():
  model, params = tiny_model()
  return VideoTokenizer(model, params, CODEC, frame_size=(16, 16))


def clip(seed=0, frames=17, batch=None):
  shape = (frames, 16, 16, 3) if batch is None else (batch, frames, 16, 16, 3)
  return np.asarray(jax.random.uniform(jax.random.key(seed), shape, minval=-1, maxval=1))


def test_tokenize_values_and_shapes(tok):
  v = clip(batch=2)
  ids = tok.tokenize(v)
  assert ids.shape == (2, 5, 4) and ids.dtype == np.int32
  _, ref = jax.jit(lambda p, x: tok.model.apply({"params": p}, CODEC.encode(x), method="encode"))(
      tok.params, jnp.asarray(v))
  np.testing.assert_array_equal(ids, np.asarray(ref))
  np.testing.assert_array_equal(tok.tokenize(v[1]), ids[1])  # unbatched == batch row
  u8 = np.round((v[0] + 1) * 127.5).astype(np.uint8)
  np.testing.assert_array_equal(tok.tokenize(u8), tok.tokenize(u8.astype(np.float32) / 127.5 - 1))
  assert len(np.unique(ids)) > 1


def test_detokenize_equals_sampler(tok):
  ids = tok.tokenize(clip(batch=2))
  noise = jax.random.normal(jax.random.key(5), (2, 5, 4, 4, 192))
  g = flow.Guidance(scale=3.0, apg=True, norm_threshold=0.5)
  out = tok.detokenize(ids, keep_k=[1, 3], steps=3, guidance_scale=3.0, apg=True,
                       norm_threshold=0.5, noise=noise)
  assert out.shape == (2, 17, 16, 16, 3) and out.dtype == np.float32
  ref = jax.jit(lambda p, i, n: CODEC.decode(sample_latents(
      tok.model, p, fsq.ids_to_codes(i), n, 3, keep_k=jnp.asarray([1, 3]), guidance=g)))(
          tok.params, jnp.asarray(ids), noise)
  ref = np.asarray(ref)
  np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_keep_k_changes_output_without_recompiling(tok):
  ids = tok.tokenize(clip(seed=3))
  outs = {1: tok.detokenize(ids, keep_k=1, steps=2, rng=7)}
  compiled = tok.runner.cache_sizes()
  outs.update({k: tok.detokenize(ids, keep_k=k, steps=2, rng=7) for k in (2, 4)})
  full = tok.detokenize(ids, keep_k=None, steps=2, rng=7)
  assert tok.runner.cache_sizes() == compiled  # one compilation serves every budget
  np.testing.assert_array_equal(outs[4], full)  # keep_k = N masks nothing
  assert np.abs(outs[1] - outs[4]).max() > 1e-3
  assert np.abs(outs[2] - outs[4]).max() > 1e-3
  # Same rng -> same sample; another rng -> another one.
  np.testing.assert_array_equal(tok.detokenize(ids, keep_k=1, steps=2, rng=7), outs[1])
  assert np.abs(tok.detokenize(ids, keep_k=1, steps=2, rng=8) - outs[1]).max() > 1e-3
  assert tok.runner.cache_sizes() == compiled


def test_conditioning_frames_are_kept(tok):
  """External conditioning frames: their clean latent is clamped into latent frame 0, which
  PatchCodec decodes back to the very frame."""
  ids = tok.tokenize(clip(seed=4))
  cond = clip(seed=9, frames=1)
  out = tok.detokenize(ids, steps=2, conditioning_frames=cond)
  assert out.shape == (17, 16, 16, 3)
  np.testing.assert_allclose(out[0], cond[0], atol=1e-6)
  free = tok.detokenize(ids, steps=2)
  assert np.abs(free[0] - cond[0]).max() > 1e-2


def test_input_errors(tok):
  with pytest.raises(ValueError, match=r"expected \[T, H, W, 3\]"):
    tok.tokenize(np.zeros((17, 16, 16)))
  with pytest.raises(ValueError, match="1 \\+ 4k"):
    tok.tokenize(clip(frames=16))
  with pytest.raises(ValueError, match="17 \\+ 16k"):
    tok.tokenize(clip(frames=25))
  ids = tok.tokenize(clip())
  with pytest.raises(ValueError, match=r"ids must lie in \[0, 64000\)"):
    tok.detokenize(ids + 64000, steps=1)
  with pytest.raises(ValueError, match="expected \\[B, T', 4\\]"):
    tok.detokenize(ids[:, :3], steps=1)
  with pytest.raises(ValueError, match="integer token ids"):
    tok.detokenize(ids.astype(np.float32), steps=1)
  with pytest.raises(ValueError, match=r"keep_k: budgets must lie in \[1, 4\]"):
    tok.detokenize(ids, keep_k=5, steps=1)
  with pytest.raises(ValueError, match="draws\\[0\\].noise: expected shape"):
    tok.detokenize(ids, steps=1, noise=np.zeros((1, 5, 4, 4, 3)))
  with pytest.raises(ValueError, match="one entry per chunk"):
    tok.detokenize(ids, steps=1, noise=[ChunkDraws(), ChunkDraws()])
  with pytest.raises(ValueError, match="not divisible"):
    tok.detokenize(ids, steps=1, frame_size=(18, 18))


def test_read_video_like_the_release(tok):
  """Uniform sampling over the whole video (np.linspace indices), duration * fps rounded up to
  1 + 16k frames, short-side resize + centre crop, [-1, 1]."""
  src = os.path.join(VIDEOS, "asl_book.mp4")  # 109 frames at 30 fps (3.63 s)
  total = video_io.count_frames(src)
  idx = video_io.uniform_indices(total, 33)
  np.testing.assert_array_equal(idx, np.linspace(0, total - 1, 33).astype(np.int32))
  every = video_io.read_video(src, size=16)
  assert len(every) == total
  np.testing.assert_array_equal(video_io.read_video_uniform(src, 33, size=16), every[idx])
  v = tok.read_video(src, fps=8.0)  # int(3.63 * 8) = 29 -> 33 frames
  assert v.shape == (33, 16, 16, 3) and v.dtype == np.float32
  np.testing.assert_allclose(v, every[idx] / 127.5 - 1.0, atol=1e-6)
  assert tok.read_video(src, fps=2.0).shape[0] == 17  # 7 -> 17
  assert tok.read_video(src, num_frames=49).shape[0] == 49
  with pytest.raises(ValueError, match="17 \\+ 16k"):
    tok.read_video(src, num_frames=20)
  with pytest.raises(FileNotFoundError):
    tok.read_video(os.path.join(VIDEOS, "missing.mp4"))


def test_read_video_never_repeats_frames(tok, tmp_path):
  """A short video: the release's count (here 33) exceeds its 24 frames, so the default is the
  largest valid count it holds (17); asking for more is an error. A truncated video is an
  error in read_video and in `vft tokenize`, not 81 frames resampled from the 10 that decode."""
  from vft.inference import cli
  short = os.path.join(VIDEOS, "fire_room.mp4")  # 24 frames at 10 fps (2.4 s)
  v = tok.read_video(short, fps=8.0)  # int(2.4 * 8) = 19 -> 33 > 24 -> 17
  np.testing.assert_allclose(v, video_io.read_video_uniform(short, 17, size=16) / 127.5 - 1.0,
                             atol=1e-6)
  assert len({f.tobytes() for f in v}) == 17  # distinct source frames
  with pytest.raises(ValueError, match="24 frames, fewer than the 33 needed"):
    tok.read_video(short, num_frames=33)
  cut = tmp_path / "t.mp4"
  with open(os.path.join(VIDEOS, "airplane_field.mp4"), "rb") as f:
    cut.write_bytes(f.read(20000))
  with pytest.raises(video_io.DecodeError, match="t.mp4: decoding stopped at frame 10 "):
    tok.read_video(str(cut))
  with pytest.raises(video_io.DecodeError, match="t.mp4: decoding stopped at frame 10 "):
    cli.tokenize_file("unused", str(cut), str(tmp_path / "t.npz"), tokenizer=tok)
  assert not (tmp_path / "t.npz").exists()


# ------------------------------------------------------------------ workdir + CLI
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A vft workdir as `vft train` leaves it: config.json + an orbax checkpoint."""
  from tests.helpers import tiny_config
  from vft import checkpoint as ckpt_lib
  from vft.train import optimizer as optim_lib
  from vft.train import state as state_lib
  from vft.train.loop import build_model
  wd = tmp_path_factory.mktemp("workdir")
  config = tiny_config(wd / "data")
  spec = CODEC.latent_shape(17, 16, 16)
  model = build_model(config, spec)
  tx = optim_lib.make_optimizer(config)
  shapes = jax.eval_shape(lambda k: state_lib.create_state(model, tx, k, (1, *spec), False),
                          jax.random.key(0))
  params = random_like(shapes.params, seed=3)
  state = state_lib.TrainState(step=jnp.asarray(3, jnp.int32), params=params,
                               opt_state=tx.init(params), ema_params=None)
  (wd / "config.json").write_text(config.to_json_best_effort(indent=2))
  ckpt = ckpt_lib.Checkpointer(str(wd / "checkpoints"), use_async=False)
  ckpt.save(3, state)
  ckpt.close()
  return wd, state.params


def test_from_workdir_restores_params(workdir):
  wd, params = workdir
  tok = VideoTokenizer.load(str(wd))
  assert tok.frame_size == (16, 16) and tok.num_registers == 4
  for a, b in zip(jax.tree_util.tree_leaves(tok.params), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(FileNotFoundError, match="not a vft workdir"):
    VideoTokenizer.from_workdir(str(wd / "checkpoints"))


def test_cli_round_trip_on_real_clip(workdir, tmp_path):
  wd, _ = workdir
  tok = VideoTokenizer.load(str(wd))
  src = os.path.join(VIDEOS, "asl_book.mp4")
  npz = tmp_path / "clip.npz"
  meta = cli.tokenize_file(str(wd), src, str(npz), fps=4.0, tokenizer=tok)
  ids, saved = cli.read_tokens(str(npz))
  assert meta["num_frames"] == 17 and ids.shape == (5, 4)  # 3.6 s at 4 fps -> 14 -> 17 frames
  assert saved["frame_size"] == [16, 16] and saved["model"] == os.path.abspath(wd)
  video = tok.read_video(src, num_frames=17)
  np.testing.assert_array_equal(ids, tok.tokenize(video, rng=0))
  out = tmp_path / "recon.mp4"
  res = cli.detokenize_file(None, str(npz), str(out), keep_k=[1, 4], steps=2, tokenizer=tok)
  grid = video_io.read_video(res["paths"]["grid"])
  assert grid.shape[0] == 17 and grid.shape[2] > 3 * 16  # original + 2 budgets
  # The mp4 holds the largest budget rendered with the file's seed: encode the API's output
  # the same way and compare the decoded frames.
  expected = tmp_path / "expected.mp4"
  report.write_video(str(expected), cli.to_uint8(tok.detokenize(ids, keep_k=4, steps=2, rng=0)),
                     fps=saved["fps"])
  recon = video_io.read_video(str(out)).astype(np.float64)
  assert recon.shape == (17, 16, 16, 3)
  # H.264 is lossy and its decisions can flip on float round-off between two jitted paths, so
  # compare with a tolerance far below what another seed or budget produces.
  mse = lambda a, b: np.mean((a - b) ** 2)  # noqa: E731
  err_same = mse(recon, video_io.read_video(str(expected)))
  err_k1 = mse(recon, video_io.read_video(res["paths"]["k1"]))
  other_seed = tmp_path / "other_seed.mp4"
  report.write_video(str(other_seed), cli.to_uint8(tok.detokenize(ids, keep_k=4, steps=2, rng=1)),
                     fps=saved["fps"])
  err_seed = mse(recon, video_io.read_video(str(other_seed)))
  assert err_same < 0.05 * min(err_k1, err_seed), (err_same, err_k1, err_seed)
  with pytest.raises(FileNotFoundError, match="vft tokenize"):
    cli.read_tokens(str(tmp_path / "missing.npz"))


@pytest.mark.skipif(not os.path.isfile(os.path.join(OFFICIAL, "model.safetensors")),
                    reason="no official_tiny fixture")
def test_official_fixture_api_and_cli_round_trip(tmp_path):
  """The converted official fixture through the API (goldens with injected randomness), then
  `vft tokenize` -> `vft detokenize` on a real clip."""
  from vft.convert import safetensors_io
  g = safetensors_io.read_tensors(os.path.join(OFFICIAL, "golden.safetensors"))
  with open(os.path.join(OFFICIAL, "fixture.json")) as f:
    spec = json.load(f)
  last = lambda x: np.moveaxis(np.asarray(x), 1, -1)  # noqa: E731  [B,C,T,H,W] -> [B,T,H,W,C]
  tok = VideoTokenizer.from_official(os.path.join(OFFICIAL, "model.safetensors"))
  ids = tok.tokenize(last(g["video"]), eps=[jnp.asarray(last(g["vae_eps"]))])
  np.testing.assert_array_equal(ids, g["tokens"])
  # One guided detokenize argument set of the folder (the one with the most options).
  name, args = max(spec["detok"].items(), key=lambda kv: (kv[1].get("guidance_scale", 1) != 1,
                                                          len(kv[1])))
  if "conditioning_frames" in args:
    pytest.skip("the richest argument set conditions on frames (model-level goldens)")
  kw = dict(keep_k=(args.get("num_keep_tokens_list") or [None])[0], steps=args["timesteps"],
            guidance_scale=args.get("guidance_scale", 1.0),
            apg=args.get("perform_norm_guidance", False), eta=args.get("eta", 0.0),
            momentum=args.get("momentum", 0.0), norm_threshold=args.get("norm_threshold", 0.6))
  frame_size = tuple(g["video"].shape[-2:])
  rgb = tok.detokenize(ids, noise=last(g["detok_noise"]), frame_size=frame_size, **kw)
  want = last(g[f"detok_rgb_{name}"])[0]
  err = np.abs(rgb - want).max() / np.abs(want).max()
  print(f"PARITY official_tiny/detok_rgb_{name} via VideoTokenizer: {err:.2e}")
  assert err <= 1e-4
  # CLI functions on a real clip (same shapes and settings: nothing recompiles).
  src, npz, out = os.path.join(VIDEOS, "bikes_street.mp4"), tmp_path / "t.npz", tmp_path / "r.mp4"
  model = os.path.join(OFFICIAL, "model.safetensors")
  meta = cli.tokenize_file(model, src, str(npz), size=frame_size[0], num_frames=17, seed=2,
                           tokenizer=tok)
  ids, saved = cli.read_tokens(str(npz))
  assert ids.shape == (5, tok.num_registers) and saved["frame_size"] == list(frame_size)
  np.testing.assert_array_equal(
      ids, tok.tokenize(tok.read_video(src, num_frames=17, size=frame_size[0]), rng=2))
  assert meta["model"] == os.path.abspath(model)
  del kw["keep_k"]
  before = tok.runner.cache_sizes()
  res = cli.detokenize_file(None, str(npz), str(out), keep_k=[1, tok.num_registers], seed=2,
                            tokenizer=tok, **kw)
  assert tok.runner.cache_sizes() == before
  assert video_io.read_video(str(out)).shape == (17, *frame_size, 3)
  assert video_io.read_video(res["paths"]["grid"]).shape[0] == 17


@pytest.mark.slow
def test_cli_subprocess_tokenize_detokenize(workdir, tmp_path):
  wd, _ = workdir
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  run = lambda *a: subprocess.run([sys.executable, "-m", "vft.main", *a], cwd=ROOT, env=env,  # noqa
                                  capture_output=True, text=True, timeout=600)
  npz, mp4 = tmp_path / "c.npz", tmp_path / "c.mp4"
  r = run("tokenize", f"--model={wd}", f"--input={os.path.join(VIDEOS, 'asl_book.mp4')}",
          f"--output={npz}", "--num_frames=33")
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads(r.stdout)["ids_shape"] == [9, 4]
  r = run("detokenize", f"--input={npz}", f"--output={mp4}", "--keep_k=1,2", "--steps=2")
  assert r.returncode == 0, r.stderr[-3000:]
  paths = json.loads(r.stdout)["paths"]
  assert all(os.path.getsize(p) > 0 for p in paths.values()) and len(paths) == 4
  r = run("detokenize", f"--input={npz}", f"--output={mp4}", "--keep_k=one")
  assert r.returncode != 0 and "--keep_k" in r.stderr
