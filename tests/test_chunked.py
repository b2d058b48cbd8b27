"""Long videos through the chunked path (vft.inference.chunked).

1. Parity with the official `VideoChunkTokenizerWrapper`, generic over the fixture folders of
   kind "chunked" under $VFT_FIXTURES (default ../shared/fixtures): the chunk geometry comes from
   the folder's fixture.json `chunk`, the detokenize argument sets from its `detok`, the number
   of chunks from the golden shapes, and the goldens are named `chunk_<variant>_c<c>_<what>`.
   Every golden tensor is compared (token ids equal; the rest max|a-b| / max|b| <= 1e-4), both
   end to end (our own decoded frames condition the next chunk) and teacher-forced (each chunk
   from the golden overlap frame), with every random draw injected from the goldens.
2. A 65-frame clip round trip with a tiny random model and PatchCodec: chunk structure, the
   conditioning recurrence, continuity at the chunk borders and no recompilation per chunk.
"""
from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny_inference import CODEC, tiny_model
from vft import VideoTokenizer, flow
from vft.convert import safetensors_io
from vft.inference import ChunkDraws, ChunkedTokenizer, ChunkSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get("VFT_FIXTURES", os.path.join(REPO, "..", "shared", "fixtures"))
TOL = 1e-4


def _chunked_folders() -> list[str]:
  if not os.path.isdir(FIXTURES):
    return []
  out = []
  for name in sorted(os.listdir(FIXTURES)):
    spec = os.path.join(FIXTURES, name, "fixture.json")
    if os.path.isfile(spec):
      with open(spec) as f:
        if json.load(f).get("kind") == "chunked":
          out.append(os.path.join(FIXTURES, name))
  return out


FOLDERS = _chunked_folders()


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def last(x):
  """Official channels-first [B, C, T, H, W] -> channels-last [B, T, H, W, C]."""
  return np.moveaxis(np.asarray(x), 1, -1)


class Fixture:
  def __init__(self, path: str):
    self.path, self.name = path, os.path.basename(path)
    with open(os.path.join(path, "fixture.json")) as f:
      self.spec = json.load(f)
    self.golden = safetensors_io.read_tensors(os.path.join(path, "golden.safetensors"))
    chunk = self.spec["chunk"]
    # The metadata form carries no chunking: take the folder's description.
    self.tok = VideoTokenizer.from_official(
        os.path.join(path, "model.safetensors"),
        chunking=ChunkSpec(chunk["chunk_size"], chunk["overlap_size_frames"]))
    self.latent_hw = tuple(chunk["vae_video_sizes"][1:])
    self.n_chunks = self.golden["chunk_vae_eps"].shape[0]

  def check(self, name: str, ours, what: str = ""):
    want = self.golden[name]
    if np.issubdtype(want.dtype, np.integer):
      np.testing.assert_array_equal(np.asarray(ours), want, err_msg=f"{self.name}/{name} {what}")
      return
    err = rel_err(ours, want)
    print(f"PARITY {self.name}/{name} {what}: {err:.2e}")
    assert err <= TOL, f"{self.name}/{name} {what}: relative error {err:.2e} > {TOL}"

  def variants(self) -> dict:
    return self.spec["detok"]

  def guidance(self, args: dict) -> flow.Guidance:
    return flow.Guidance(scale=float(args.get("guidance_scale", 1.0)),
                         apg=bool(args.get("perform_norm_guidance", False)),
                         eta=float(args.get("eta", 0.0)), momentum=float(args.get("momentum", 0.0)),
                         norm_threshold=float(args.get("norm_threshold", 0.6)))

  def keep_k(self, args: dict):
    k = args.get("num_keep_tokens_list")
    return None if k is None else np.asarray(k)

  def draws(self, v: str) -> list[ChunkDraws]:
    g = self.golden
    out = []
    for c in range(self.n_chunks):
      get = lambda what: (jnp.asarray(last(g[f"chunk_{v}_c{c}_{what}"]))  # noqa: E731
                          if f"chunk_{v}_c{c}_{what}" in g else None)
      out.append(ChunkDraws(noise=get("noise"), reenc_eps=get("reenc_eps"),
                            cond_eps=get("cond_eps")))
    return out


@pytest.fixture(scope="module", params=FOLDERS, ids=[os.path.basename(p) for p in FOLDERS])
def fx(request):
  return Fixture(request.param)


def test_chunked_fixtures_found():
  """The default fixture directory ships at least one chunked folder."""
  if "VFT_FIXTURES" in os.environ and not FOLDERS:
    pytest.skip("VFT_FIXTURES has no chunked folder")
  assert FOLDERS, f"no fixture folder of kind 'chunked' under {FIXTURES}"


def test_hub_config_chunking(fx):
  hub = os.path.join(fx.path, "hub_config.json")
  if not os.path.isfile(hub):
    pytest.skip("folder has no hub_config.json")
  tok = VideoTokenizer.from_official(os.path.join(fx.path, "model.safetensors"), config_path=hub)
  chunk = fx.spec["chunk"]
  assert tok.chunking == ChunkSpec(chunk["chunk_size"], chunk["overlap_size_frames"], 4)
  s = tok.codec.spatial_factor
  assert tok.frame_size == (chunk["vae_video_sizes"][1] * s, chunk["vae_video_sizes"][2] * s)


def test_chunked_tokenize_parity(fx):
  g, tok = fx.golden, fx.tok
  video = last(g["video"])
  assert tok.chunking.chunks_for_frames(video.shape[1]) == fx.n_chunks
  eps = [jnp.asarray(last(g["chunk_vae_eps"][c:c + 1])) for c in range(fx.n_chunks)]
  ids, aux = tok.runner.tokenize(tok.params, video, eps=eps, return_aux=True)
  fx.check("tokens", ids)
  fx.check("chunk_vae_latents", np.moveaxis(np.concatenate([a["latents"] for a in aux]), -1, 1))
  fx.check("chunk_tokens", np.concatenate([a["ids"] for a in aux]))
  # The tensors the driver does not return: VAE moments and pre-FSQ encoder outputs per chunk.
  stride, clen = tok.chunking.stride_frames, tok.chunking.chunk_frames
  chunks = np.concatenate([video[:, c * stride:c * stride + clen] for c in range(fx.n_chunks)])
  fx.check("chunk_vae_moments", np.moveaxis(np.asarray(tok.codec.moments(jnp.asarray(chunks))),
                                            -1, 1))
  enc = jax.jit(lambda p, x: tok.model.apply({"params": p}, x, method=lambda m, y: m.encoder(y)))
  fx.check("chunk_enc_reg_latents", enc(tok.params, jnp.asarray(last(g["chunk_vae_latents"]))))


def test_chunked_detokenize_parity_end_to_end(fx):
  """Our own decoded frames condition each next chunk; every intermediate is compared."""
  g, tok = fx.golden, fx.tok
  for v, args in fx.variants().items():
    chunks = list(tok.runner.iter_detokenize(
        tok.params, g["tokens"], latent_hw=fx.latent_hw, keep_k=fx.keep_k(args),
        steps=int(args["timesteps"]), guidance=fx.guidance(args), draws=fx.draws(v)))
    assert len(chunks) == fx.n_chunks
    rgb = np.concatenate([ch.frames for ch in chunks], axis=1)
    fx.check(f"chunk_{v}_rgb", np.moveaxis(rgb, -1, 1))
    for ch in chunks:
      c, pre = ch.index, f"chunk_{v}_c{ch.index}_"
      fx.check(pre + "latents", np.moveaxis(np.asarray(ch.aux["latents"]), -1, 1))
      if c == 0:
        continue
      fx.check(pre + "overlap_rgb", np.moveaxis(
          rgb[:, tok.chunking.num_frames(c) - tok.chunking.overlap_frames:
              tok.chunking.num_frames(c)], -1, 1))
      fx.check(pre + "reenc_latents", np.moveaxis(np.asarray(ch.aux["reenc_latents"]), -1, 1))
      fx.check(pre + "cond_latents", np.moveaxis(np.asarray(ch.aux["cond_latents"]), -1, 1))
      t_o = tok.chunking.overlap_latents
      fx.check(pre + "reenc_tokens", ch.aux["ids"][:, :t_o])


def test_chunked_detokenize_parity_teacher_forced(fx):
  """Each later chunk from the golden overlap frame (isolates a chunk's error from the chain)."""
  g, tok, spec = fx.golden, fx.tok, fx.tok.chunking
  ids = jnp.asarray(g["tokens"], jnp.int32)
  for v, args in fx.variants().items():
    steps, guidance = int(args["timesteps"]), fx.guidance(args)
    keep = jnp.asarray(np.broadcast_to(
        fx.keep_k(args) if fx.keep_k(args) is not None else tok.num_registers, (1,)), jnp.int32)
    draws = fx.draws(v)
    for c in range(1, fx.n_chunks):
      pre = f"chunk_{v}_c{c}_"
      start = spec.chunk_latents + (c - 1) * spec.stride_latents
      res = tok.runner.decode_cond(
          tok.params, jnp.asarray(last(g[pre + "overlap_rgb"])),
          ids[:, start:start + spec.stride_latents], draws[c].noise, draws[c].reenc_eps,
          draws[c].cond_eps, keep, steps=steps, guidance=guidance)
      fx.check(pre + "reenc_tokens", res["ids"][:, :spec.overlap_latents], "teacher-forced")
      fx.check(pre + "cond_latents", np.moveaxis(np.asarray(res["cond_latents"]), -1, 1),
               "teacher-forced")
      fx.check(pre + "latents", np.moveaxis(np.asarray(res["latents"]), -1, 1), "teacher-forced")


def test_every_golden_is_covered(fx):
  """Every golden of the folder is one the tests above compare (or an injected input)."""
  inputs = {"video", "chunk_vae_eps"}
  compared = {"tokens", "chunk_vae_latents", "chunk_tokens", "chunk_vae_moments",
              "chunk_enc_reg_latents"}
  pat = re.compile(r"chunk_(\w+?)_(rgb|c\d+_(noise|reenc_eps|cond_eps|latents|overlap_rgb|"
                   r"reenc_latents|cond_latents|reenc_tokens))$")
  for name in fx.golden:
    m = pat.match(name)
    assert name in inputs | compared or (m and m.group(1) in fx.variants()), name


# ------------------------------------------------------------------ tiny model, 65 frames
@pytest.fixture(scope="module")
def tiny():
  model, params = tiny_model(seed=2)
  return ChunkedTokenizer(model, CODEC), params


def test_65_frame_round_trip(tiny):
  runner, params = tiny
  spec = runner.spec
  video = jax.random.uniform(jax.random.key(0), (1, 65, 16, 16, 3), minval=-1, maxval=1)
  assert spec.chunks_for_frames(65) == 4
  ids = runner.tokenize(params, video)
  assert ids.shape == (1, 17, 4)  # 5 + 3 * 4 latent frames
  # Chunk c's ids are those of frames [16c, 16c + 17) tokenized alone, minus the overlap.
  for c in range(4):
    alone = np.asarray(runner.encode_chunk(params, video[:, 16 * c:16 * c + 17], None)["ids"])
    np.testing.assert_array_equal(ids[:, 1 + 4 * c:5 + 4 * c], alone[:, 1:])
    if c == 0:
      np.testing.assert_array_equal(ids[:, :1], alone[:, :1])

  chunks = list(runner.iter_detokenize(params, ids, latent_hw=(4, 4), keep_k=2, steps=2,
                                       guidance=flow.Guidance(2.0), rng=jax.random.key(3)))
  out = np.concatenate([ch.frames for ch in chunks], axis=1)
  assert out.shape == (1, 65, 16, 16, 3) and np.isfinite(out).all()
  assert [ch.frames.shape[1] for ch in chunks] == [17, 16, 16, 16]
  for ch in chunks[1:]:
    c = ch.index
    # The chunk decodes the stored ids after the re-tokenized overlap frame ...
    np.testing.assert_array_equal(np.asarray(ch.aux["ids"][:, 1:]), ids[:, 1 + 4 * c:5 + 4 * c])
    # ... which is the previous chunk's last decoded frame, re-encoded; PatchCodec is exact, so
    # the clamped latent frame 0 decodes back to that very frame: the video is continuous.
    prev_last = out[:, 16 * c:16 * c + 1]
    np.testing.assert_allclose(np.asarray(ch.aux["cond_latents"]),
                               np.asarray(CODEC.encode(jnp.asarray(prev_last))), atol=1e-6)
    np.testing.assert_allclose(np.asarray(ch.aux["latents"][:, :1]),
                               np.asarray(ch.aux["cond_latents"]), atol=1e-6)
    reenc = runner.encode_chunk(params, jnp.asarray(prev_last), None)["ids"]
    np.testing.assert_array_equal(np.asarray(ch.aux["ids"][:, :1]), np.asarray(reenc))
    dropped = np.asarray(runner.codec_decode(ch.aux["latents"]))[:, :1]
    np.testing.assert_allclose(dropped, prev_last, atol=1e-6)
  # Chunk 0 alone is a plain one-chunk decode with the same draws.
  first = runner.detokenize(params, ids[:, :5], latent_hw=(4, 4), keep_k=2, steps=2,
                            guidance=flow.Guidance(2.0), rng=jax.random.key(3))
  np.testing.assert_array_equal(first, out[:, :17])
  # Every stage compiled once per shape: a clip of another length and another budget reuse them.
  compiled = runner.cache_sizes()
  runner.detokenize(params, ids[:, :9], latent_hw=(4, 4), keep_k=4, steps=2,
                    guidance=flow.Guidance(2.0), rng=jax.random.key(3))
  assert runner.cache_sizes() == compiled


def test_chunk_spec_geometry_and_errors():
  s = ChunkSpec()
  assert (s.chunk_latents, s.overlap_latents, s.stride_frames, s.stride_latents) == (5, 1, 16, 4)
  assert [s.chunks_for_frames(t) for t in (1, 9, 17, 33, 65)] == [1, 1, 1, 2, 4]
  assert [s.chunks_for_latents(t) for t in (1, 5, 9, 17)] == [1, 1, 2, 4]
  assert [s.round_up_frames(t) for t in (0, 1, 2, 17, 18, 29)] == [1, 1, 17, 17, 33, 33]
  s0 = ChunkSpec(overlap_frames=0)
  assert s0.chunks_for_frames(34) == 2 and s0.num_latents(2) == 10
  with pytest.raises(ValueError, match="17 \\+ 16k frames"):
    s.chunks_for_frames(40)
  with pytest.raises(ValueError, match="1 \\+ 4k frames"):
    s.chunks_for_frames(12)
  with pytest.raises(ValueError, match="5 \\+ 4k frames"):
    s.chunks_for_latents(11)
  with pytest.raises(ValueError, match="overlap_frames=2 must be 0 or 1 \\+ 4k"):
    ChunkSpec(overlap_frames=2)
  with pytest.raises(ValueError, match="chunk_frames=16"):
    ChunkSpec(chunk_frames=16)
