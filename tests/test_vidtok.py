"""VidTok VAE: parity with the official goldens (every fixture folder that holds VAE tensors),
causality, posterior sampling, the weight mapping and errors."""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from safetensors import safe_open

from vft.convert import vidtok_weights
from vft.models.vae import make_codec
from vft.models.vae import vidtok as vt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get("VFT_FIXTURES", os.path.join(REPO, "..", "shared", "fixtures"))
TOL = 1e-4
ROLES = ("video", "eps", "moments", "latents", "rgb")


def _golden_names(folder: str) -> set[str]:
  with safe_open(os.path.join(folder, "golden.safetensors"), framework="numpy") as f:
    return set(f.keys())


def _cases_of(folder: str) -> list[tuple[str, dict[str, str]]]:
  """(case name, {role: golden tensor name}) for the VAE goldens of one fixture folder, from its
  fixture.json: kind "vae" lists `cases` (<c>_video, _eps, _moments, _latents, _rgb) and may hold
  decode-only pairs <x>_latents/<x>_rgb; kind "full" stores video, vae_eps, vae_moments,
  vae_latents, vae_decode_rgb."""
  spec_path = os.path.join(folder, "fixture.json")
  if not (os.path.isfile(spec_path) and os.path.isfile(os.path.join(folder, "golden.safetensors"))
          and os.path.isfile(os.path.join(folder, "model.safetensors"))):
    return []
  with open(spec_path) as f:
    spec = json.load(f)
  names = _golden_names(folder)
  cases = []
  if spec.get("kind") == "vae":
    listed = list(spec.get("cases", {}))
    for c in listed:
      cases.append((c, {r: f"{c}_{r}" for r in ROLES}))
    for n in sorted(names):  # decode-only pairs such as randz_latents -> randz_rgb
      stem = n[:-len("_latents")]
      if n.endswith("_latents") and stem not in listed and f"{stem}_rgb" in names:
        cases.append((stem, {"latents": n, "rgb": f"{stem}_rgb"}))
  elif spec.get("kind") == "full":
    cases.append(("vae", {"video": "video", "eps": "vae_eps", "moments": "vae_moments",
                          "latents": "vae_latents", "rgb": "vae_decode_rgb"}))
  out = []
  for c, roles in cases:
    roles = {r: n for r, n in roles.items() if n in names}
    if "moments" in roles or "rgb" in roles:
      out.append((c, roles))
  return out


def _all_cases():
  if not os.path.isdir(FIXTURES):
    return []
  out = []
  for name in sorted(os.listdir(FIXTURES)):
    folder = os.path.join(FIXTURES, name)
    if os.path.isdir(folder):
      out += [pytest.param(folder, c, roles, id=f"{name}:{c}") for c, roles in _cases_of(folder)]
  return out


CASES = _all_cases()


@functools.lru_cache(maxsize=None)
def _codec(folder: str) -> vt.VidTokCodec:
  return vt.VidTokCodec.from_safetensors(os.path.join(folder, "model.safetensors"))


def _golden(folder: str, names) -> dict[str, np.ndarray]:
  with safe_open(os.path.join(folder, "golden.safetensors"), framework="numpy") as f:
    return {n: f.get_tensor(n) for n in names}


def _cl(x: np.ndarray) -> np.ndarray:
  """Official [B, C, T, H, W] -> ours [B, T, H, W, C]."""
  return np.moveaxis(x, 1, -1)


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.skipif(not CASES, reason=f"no fixture folder with VAE goldens under {FIXTURES}")
@pytest.mark.parametrize("folder,case,roles", CASES)
def test_parity_with_official(folder, case, roles):
  codec = _codec(folder)
  g = {r: _cl(x) for r, x in _golden(folder, roles.values()).items()}
  g = {r: g[n] for r, n in roles.items()}
  errs = {}
  if "video" in g:
    moments = codec.moments(g["video"])
    if "moments" in g:
      errs["moments"] = _rel(moments, g["moments"])
    if "eps" in g and "latents" in g:
      errs["latents"] = _rel(codec.encode(g["video"], eps=g["eps"]), g["latents"])
  if "latents" in g and "rgb" in g:
    errs["rgb"] = _rel(codec.decode(g["latents"]), g["rgb"])
  print(f"{os.path.basename(folder)}:{case} max rel err {errs}")
  assert errs, f"{case}: nothing to compare in {roles}"
  for what, err in errs.items():
    assert err <= TOL, f"{os.path.basename(folder)}:{case} {what}: rel err {err:.3g} > {TOL}"


# ---------------------------------------------------------------- self-contained model tests

TINY = vt.VidTokConfig(ch=4, ch_mult=(1, 2, 2, 2), num_res_blocks=1)


@functools.lru_cache(maxsize=None)
def _tiny_codec() -> vt.VidTokCodec:
  """Random weights, every parameter nonzero (kernels ~ N(0, 1/fan_in), vectors ~ N(0, 0.2^2)),
  drawn with one PRNG call (a flax init compiles one threefry per parameter: slow on CPU)."""
  shapes = jax.eval_shape(lambda: vt.init_params(TINY, jax.random.key(0)))
  leaves, tree = jax.tree.flatten(shapes)
  sizes = [int(np.prod(s.shape)) for s in leaves]
  flat = np.asarray(jax.random.normal(jax.random.key(1), (sum(sizes),)))
  out, start = [], 0
  for s, n in zip(leaves, sizes):
    std = 1 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.2
    out.append(jnp.asarray(flat[start:start + n].reshape(s.shape) * std))
    start += n
  return vt.VidTokCodec(TINY, jax.tree.unflatten(tree, out))


def _video(key, t=9, h=16, w=16):
  return jax.random.uniform(jax.random.key(key), (2, t, h, w, 3), minval=-1.0, maxval=1.0)


def test_shapes_and_frame_counts():
  codec = _tiny_codec()
  assert (codec.time_factor, codec.spatial_factor, codec.latent_channels) == (4, 8, 16)
  assert codec.latent_shape(17, 64, 48) == (5, 8, 6, 16)
  assert codec.latent_shape(1, 8, 8) == (1, 1, 1, 16)
  assert codec.latent_shape(16, 32, 32) == (4, 4, 4, 16)  # 4k frames: no front padding
  video = _video(0)
  lat = codec.encode(video, mode=True)
  assert lat.shape == (2,) + codec.latent_shape(9, 16, 16)
  assert codec.decode(lat).shape == video.shape


def test_encoder_is_causal_per_frame_group():
  """Changing frames 5..8 (latent frame 2) leaves latent frames 0 and 1 unchanged; changing
  frame 1 (group 1) leaves latent frame 0 unchanged."""
  codec = _tiny_codec()
  video = _video(0)
  base = np.asarray(codec.moments(video))
  late = np.asarray(codec.moments(video.at[:, 5:].set(_video(1)[:, 5:])))
  np.testing.assert_array_equal(late[:, :2], base[:, :2])
  assert _rel(late[:, 2], base[:, 2]) > 1e-2
  mid = np.asarray(codec.moments(video.at[:, 1].set(-video[:, 1])))
  np.testing.assert_array_equal(mid[:, :1], base[:, :1])
  assert _rel(mid[:, 1], base[:, 1]) > 1e-2


def test_decoder_is_causal():
  """Latent frame k >= 1 only affects decoded frames 4k - 3 and later."""
  codec = _tiny_codec()
  lat = codec.encode(_video(0), mode=True)
  base = np.asarray(codec.decode(lat))
  out = np.asarray(codec.decode(lat.at[:, 2].add(1.0)))
  np.testing.assert_array_equal(out[:, :5], base[:, :5])
  assert _rel(out[:, 5:], base[:, 5:]) > 1e-2


def test_posterior_mode_and_sampling():
  codec = _tiny_codec()
  video = _video(0)
  moments = codec.moments(video)
  mean, logvar = np.split(np.asarray(moments), 2, axis=-1)
  m1, m2 = codec.encode(video, mode=True), codec.encode(video, jax.random.key(3), mode=True)
  np.testing.assert_array_equal(m1, mean)
  np.testing.assert_array_equal(m2, mean)
  key = jax.random.key(7)
  s1, s2 = codec.encode(video, key), codec.encode(video, key)
  np.testing.assert_array_equal(s1, s2)
  assert not np.allclose(codec.encode(video, jax.random.key(8)), s1)
  # key <-> injected eps, and the release's formula (std from the clipped logvar).
  eps = jax.random.normal(key, mean.shape)
  np.testing.assert_allclose(codec.encode(video, eps=eps), s1, rtol=1e-6, atol=1e-6)
  want = mean + np.exp(0.5 * np.clip(logvar, -30, 20)) * np.asarray(eps)
  np.testing.assert_allclose(s1, want, rtol=1e-5, atol=1e-6)
  big = jnp.concatenate([jnp.zeros((1, 2)), jnp.full((1, 2), 50.0)], -1)
  np.testing.assert_allclose(vt.sample_posterior(big, eps=jnp.ones((1, 2))), np.exp(10.0),
                             rtol=1e-6)


def test_params_are_jit_arguments():
  """A second codec with other weights reuses the compiled function and gives other outputs."""
  codec = _tiny_codec()
  video = _video(0)
  first = codec.moments(video)
  size = vt._moments_jit._cache_size()
  other = vt.VidTokCodec(codec.cfg, jax.tree.map(lambda p: p * 1.1, codec.params))
  second = other.moments(video)
  assert vt._moments_jit._cache_size() == size
  assert not np.allclose(first, second)


def test_errors_on_bad_input():
  codec = _tiny_codec()
  with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
    codec.encode(jnp.zeros((9, 16, 16, 3)), mode=True)
  with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
    codec.encode(jnp.zeros((1, 9, 16, 16, 4)), mode=True)
  for t in (2, 7, 0):
    with pytest.raises(ValueError, match=f"{t} frames"):
      codec.encode(jnp.zeros((1, t, 16, 16, 3)), mode=True)
  with pytest.raises(ValueError, match="multiples of 8"):
    codec.encode(jnp.zeros((1, 5, 12, 16, 3)), mode=True)
  with pytest.raises(ValueError, match="multiples of 8"):
    codec.latent_shape(5, 16, 20)
  with pytest.raises(ValueError, match="PRNG `key`"):
    codec.encode(jnp.zeros((1, 1, 8, 8, 3)))
  with pytest.raises(ValueError, match="eps: expected shape"):
    codec.encode(_video(0), eps=jnp.zeros((2, 2, 2, 2, 16)))
  with pytest.raises(ValueError, match="latents: expected"):
    codec.decode(jnp.zeros((1, 2, 1, 1, 8)))
  m = jnp.zeros((1, 4))
  with pytest.raises(ValueError, match="PRNG `key`"):
    vt.sample_posterior(m)
  with pytest.raises(ValueError, match="not both"):
    vt.sample_posterior(m, jax.random.key(0), eps=jnp.zeros((1, 2)))
  with pytest.raises(ValueError, match="mode=True"):
    vt.sample_posterior(m, eps=jnp.zeros((1, 2)), mode=True)
  with pytest.raises(ValueError, match="time_downsample_factor"):
    vt.VidTokConfig(time_downsample_factor=8)


# ---------------------------------------------------------------- weight mapping

def test_state_dict_round_trip_random_params():
  params = _tiny_codec().params
  sd = vidtok_weights.vidtok_to_state_dict(TINY, params, "vae.vidtok.")
  assert sd["vae.vidtok.encoder.conv_in.conv.weight"].shape == (4, 3, 3, 3, 3)
  assert sd["vae.vidtok.encoder.mid.attn_1.q.conv.weight"].shape == (8, 8, 1, 1, 1)
  assert sd["vae.vidtok.decoder.up.0.block.0.nin_shortcut.weight"].shape == (4, 8, 1, 1)
  assert sd["vae.vidtok.decoder.up_temporal.1.upsample.mix_factor"].shape == (1,)
  assert vidtok_weights.find_prefix(sd) == "vae.vidtok."
  cfg, back, used = vidtok_weights.vidtok_from_state_dict(sd, "vae.vidtok.")
  assert cfg == TINY and used == set(sd)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))


def _vae_fixture_files() -> list[str]:
  if not os.path.isdir(FIXTURES):
    return []
  out = []
  for name in sorted(os.listdir(FIXTURES)):
    path = os.path.join(FIXTURES, name, "model.safetensors")
    if os.path.isfile(path):
      with safe_open(path, framework="numpy") as f:
        if any(k.endswith("encoder.conv_in.conv.weight") for k in f.keys()):
          out.append(path)
  return out


@pytest.mark.parametrize("path", _vae_fixture_files() or [pytest.param(None, marks=pytest.mark.skip(
    reason="no fixture model with VAE weights"))])
def test_state_dict_round_trip_official(path):
  tensors = vidtok_weights.load_tensors(path)
  prefix = vidtok_weights.find_prefix(tensors, where=path)
  cfg, params, used = vidtok_weights.vidtok_from_state_dict(tensors, prefix)
  pattern = vidtok_weights.vidtok_key_pattern(prefix)
  assert used == {k for k in tensors if pattern.match(k)}  # every VAE tensor, nothing else
  conv_in = tensors[prefix + "encoder.conv_in.conv.weight"]
  assert cfg.ch == conv_in.shape[0]
  back = vidtok_weights.vidtok_to_state_dict(cfg, params, prefix)
  assert set(back) == used
  for k, v in back.items():
    assert v.dtype == np.float32 and v.shape == tensors[k].shape, k
    np.testing.assert_array_equal(v, tensors[k].astype(np.float32), err_msg=k)
  # Another prefix (the hub form) maps the same tensors.
  hub = {"video_tokenizer." + k: v for k, v in back.items()}
  assert vidtok_weights.find_prefix(hub) == "video_tokenizer." + prefix


def test_state_dict_errors():
  sd = vidtok_weights.vidtok_to_state_dict(TINY, _tiny_codec().params, "vidtok.")
  key = "vidtok.decoder.up.2.block.1.conv2.weight"
  missing = dict(sd)
  del missing[key]
  with pytest.raises(ValueError, match=f"missing tensor '{key}'"):
    vidtok_weights.vidtok_from_state_dict(missing, "vidtok.")
  bad = dict(sd)
  bad[key] = np.zeros((8, 8, 3, 1), np.float32)
  with pytest.raises(ValueError, match=rf"{key} has shape \(8, 8, 3, 1\), expected \(8, 8, 3, 3\)"):
    vidtok_weights.vidtok_from_state_dict(bad, "vidtok.")
  with pytest.raises(ValueError, match="missing tensor 'vae.vidtok.encoder.conv_in"):
    vidtok_weights.vidtok_from_state_dict(sd, "vae.vidtok.")
  with pytest.raises(ValueError, match="no VidTok VAE weights"):
    vidtok_weights.find_prefix({"encoder.module_dict.x": np.zeros(1)})
  two = dict(sd, **{"a." + k: v for k, v in sd.items()})
  with pytest.raises(ValueError, match="several VidTok VAEs"):
    vidtok_weights.find_prefix(two)
  with pytest.raises(ValueError, match="missing encoder/conv_in/kernel"):
    vidtok_weights.vidtok_to_state_dict(TINY, {"encoder": {}, "decoder": {}}, "")


def test_from_safetensors_and_make_codec(tmp_path):
  from safetensors.numpy import save_file
  codec = _tiny_codec()
  sd = vidtok_weights.vidtok_to_state_dict(TINY, codec.params, "vae.vidtok.")
  path = str(tmp_path / "vae.safetensors")
  save_file(dict(sd, **{"encoder.module_dict.other": np.zeros(2, np.float32)}), path)
  loaded = make_codec(ml_collections.ConfigDict({"name": "vidtok", "path": path}))
  assert isinstance(loaded, vt.VidTokCodec) and loaded.cfg == TINY
  video = _video(0)
  np.testing.assert_array_equal(loaded.moments(video), codec.moments(video))
  with pytest.raises(ValueError, match="config.codec.path"):
    make_codec(ml_collections.ConfigDict({"name": "vidtok"}))
  with pytest.raises(ValueError, match="'patch', 'vidtok'"):
    make_codec(ml_collections.ConfigDict({"name": "nope"}))
  with pytest.raises(FileNotFoundError, match="no such file"):
    vt.VidTokCodec.from_safetensors(str(tmp_path / "missing.safetensors"))
