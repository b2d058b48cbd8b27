"""Tokenizer parity with the official goldens, generic over fixture folders.

Every folder under $VFT_FIXTURES (default ../shared/fixtures) with a model.safetensors holding a
VideoFlexTok config and a golden.safetensors is covered. What runs is derived from the folder:
its fixture.json (`detok` argument sets, `single_forward` variants, `chunk`), the config inside
model.safetensors (through the importer) and the golden tensor names; a check whose goldens a
folder lacks is not generated. The VidTok VAE's own goldens are tests/test_vidtok.py's; here the
VAE only decodes detokenized latents and encodes conditioning frames. The chunked path's
end-to-end goldens are the long-video tests'; here a chunked folder's per-chunk encoder / FSQ
tensors and its teacher-forced per-chunk sampler runs are checked.

Tolerance: max|a - b| / max|b| <= 1e-4 in float32; token ids must be identical. Run with -s to
see the error of every golden ("PARITY <folder>/<golden>: <rel err>").
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vft import flow
from vft.convert import load_official, official_config, safetensors_io
from vft.models import fsq
from vft.models.embed import timestep_features
from vft.models.tokenizer import VideoFlexTok, sample_latents

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get("VFT_FIXTURES", os.path.join(REPO, "..", "shared", "fixtures"))
TOL = 1e-4


# ------------------------------------------------------------------------- fixture discovery
@dataclasses.dataclass(frozen=True)
class Folder:
  path: str
  name: str
  spec: dict  # fixture.json ({} when absent)
  golden: frozenset  # golden tensor names
  prefix_masking: bool


def _folder(path: str) -> Folder | None:
  model, golden = (os.path.join(path, f) for f in ("model.safetensors", "golden.safetensors"))
  if not (os.path.isfile(model) and os.path.isfile(golden)):
    return None
  header = safetensors_io.read_header(model)
  try:
    src = official_config.find_config(model, header.metadata)
  except ValueError:
    return None  # no config at all: not a tokenizer fixture
  tr = official_config.translate(src.model, src.where)
  if tr.tokenizer is None:
    return None  # VAE-only folder (tests/test_vidtok.py)
  spec = {}
  if os.path.isfile(os.path.join(path, "fixture.json")):
    with open(os.path.join(path, "fixture.json")) as f:
      spec = json.load(f)
  names = frozenset(safetensors_io.read_header(golden).tensors)
  return Folder(path, os.path.basename(path), spec, names, tr.tokenizer.prefix_masking)


def _folders() -> list[Folder]:
  if not os.path.isdir(FIXTURES):
    return []
  out = [_folder(os.path.join(FIXTURES, n)) for n in sorted(os.listdir(FIXTURES))]
  return [f for f in out if f is not None]


def _encoder_cases(f: Folder) -> list[tuple[str, str | None, str | None]]:
  """(latents, pre-FSQ latents, token ids) golden triples: a clip, per-chunk encodes and the
  re-encodes of the chunked decode."""
  g, out = f.golden, []
  for lat, reg, tok in (("vae_latents", "enc_reg_latents", "tokens"),
                        ("chunk_vae_latents", "chunk_enc_reg_latents", "chunk_tokens")):
    if lat in g and (reg in g or tok in g):
      out.append((lat, reg if reg in g else None, tok if tok in g else None))
  for n in sorted(g):
    m = re.fullmatch(r"(.+)_reenc_latents", n)
    if m and f"{m[1]}_reenc_tokens" in g:
      out.append((n, None, f"{m[1]}_reenc_tokens"))
  return out


def _variant_args(variant: str) -> dict:
  """'keep8_prefix1' -> {keep_k: 8, prefix_len: 1}; 'uncond' -> {null_cond: True}."""
  args = {}
  for part in variant.split("_"):
    if part == "cond":
      continue
    if part == "uncond":
      args["null_cond"] = True
    elif m := re.fullmatch(r"keep(\d+)", part):
      args["keep_k"] = int(m[1])
    elif m := re.fullmatch(r"prefix(\d+)", part):
      args["prefix_len"] = int(m[1])
    else:
      raise ValueError(f"single_forward variant {variant!r}: unknown part {part!r}")
  return args


def _chunk_runs(f: Folder) -> list[tuple[str, int]]:
  """(detok name, chunk index) for every teacher-forced chunk run in the goldens."""
  out = []
  for n in sorted(f.golden):
    m = re.fullmatch(r"chunk_(.+)_c(\d+)_latents", n)
    if m and m[1] in f.spec.get("detok", {}) and f"chunk_{m[1]}_c{m[2]}_noise" in f.golden:
      out.append((m[1], int(m[2])))
  return out


def _cases():
  cases = []
  for f in _folders():
    g = f.golden

    def add(kind, arg=None, id_=None):
      cases.append(pytest.param(f, kind, arg, id=f"{f.name}:{id_ or kind}"))
    for enc in _encoder_cases(f):
      add("encoder", enc, f"encoder:{enc[0]}")
      if enc[1] is not None and enc[2] is not None:
        add("fsq", enc, f"fsq:{enc[1]}")
    if "fsq_quants" in g and "tokens" in g:
      add("ids_to_codes")
    if "dec_t" in g and ({"dec_temb", "dec_temb_freq"} & g):
      add("time_embedding")
    sf = f.spec.get("single_forward", {})
    for v in sf.get("variants", []):
      if f"dec_v_{v}" in g and "dec_xt" in g and "fsq_quants" in g:
        add("single_forward", v, f"single_forward:{v}")
    for name in f.spec.get("detok", {}):
      if f"detok_latents_{name}" in g and "detok_noise" in g and "tokens" in g:
        add("detok", name, f"detok:{name}")
        if f"detok_rgb_{name}" in g:
          add("detok_rgb", name, f"detok_rgb:{name}")
      if f.spec["detok"][name].get("conditioning_frames") and {"detok_cond_eps",
                                                               "detok_cond_latents", "video"} <= g:
        add("cond_latents", name, f"cond_latents:{name}")
    for name, c in _chunk_runs(f):
      add("chunk_detok", (name, c), f"chunk_detok:{name}:c{c}")
  return cases


CASES = _cases()


# ------------------------------------------------------------------------- shared state
@functools.lru_cache(maxsize=None)
def _model(path: str):
  m = load_official(os.path.join(path, "model.safetensors"))
  assert not m.report.missing_keys
  return m, VideoFlexTok(m.tokenizer_cfg), jax.tree.map(jnp.asarray, m.params)


@functools.lru_cache(maxsize=None)
def _apply(path: str, method: str):
  """jit(model.apply) of `method` ("encode" / "decode") that also returns the intermediates."""
  _, model, _ = _model(path)

  def run(params, *args, **kw):
    return model.apply({"params": params}, *args, method=method, **kw,
                       capture_intermediates=True, mutable=["intermediates"])
  return jax.jit(run)


@functools.lru_cache(maxsize=None)
def _codec(path: str):
  from vft.models.vae.vidtok import VidTokCodec
  m, _, _ = _model(path)
  if m.vae_cfg is None:
    pytest.skip(f"{path}: the checkpoint has no VAE")
  return VidTokCodec(m.vae_cfg, jax.tree.map(jnp.asarray, m.vae_params))


def _golden(f: Folder, *names) -> list[np.ndarray]:
  tensors = safetensors_io.read_tensors(os.path.join(f.path, "golden.safetensors"), names)
  return [tensors[n] for n in names]


def _cl(x: np.ndarray) -> jnp.ndarray:
  """Official channels-first [B, C, T, H, W] -> ours [B, T, H, W, C]."""
  return jnp.asarray(np.moveaxis(np.asarray(x), 1, -1))


def _check(f: Folder, name: str, ours, golden, tol: float = TOL) -> float:
  ours, golden = np.asarray(ours, np.float64), np.asarray(golden, np.float64)
  assert ours.shape == golden.shape, f"{name}: shape {ours.shape} vs golden {golden.shape}"
  err = float(np.max(np.abs(ours - golden)) / max(np.max(np.abs(golden)), 1e-30))
  print(f"PARITY {f.name}/{name}: {err:.2e}")
  assert err <= tol, f"{f.name}/{name}: max relative error {err:.3e} > {tol}"
  return err


def _check_ids(f: Folder, name: str, ours, golden) -> None:
  ours, golden = np.asarray(ours), np.asarray(golden)
  assert ours.shape == golden.shape, f"{name}: shape {ours.shape} vs golden {golden.shape}"
  flips = int(np.sum(ours != golden))
  print(f"PARITY {f.name}/{name}: {flips} of {golden.size} ids differ")
  assert flips == 0, f"{f.name}/{name}: {flips} of {golden.size} token ids differ"


def _guidance(args: dict) -> flow.Guidance:
  return flow.Guidance(scale=float(args.get("guidance_scale", 1.0)),
                       apg=bool(args.get("perform_norm_guidance", False)),
                       eta=float(args.get("eta", 0.0)),
                       momentum=float(args.get("momentum", 0.0)),
                       norm_threshold=float(args.get("norm_threshold", 0.6)))


@functools.lru_cache(maxsize=None)
def _sampler(path: str, steps: int, guidance: flow.Guidance, with_cond: bool, with_prefix: bool):
  _, model, _ = _model(path)

  def run(params, codes, noise, keep_k, cond, prefix):
    return sample_latents(model, params, codes, noise, steps, keep_k=keep_k, guidance=guidance,
                          cond_latents=cond if with_cond else None,
                          prefix_len=prefix if with_prefix else None)
  return jax.jit(run)


def _detokenize(f: Folder, args: dict, ids, noise, cond=None) -> jax.Array:
  """The release's detokenize of token ids [B, T, N] from `noise` (channels-first), optionally
  conditioned on clean latents `cond` (channels-first) clamped into the first latent frames;
  the conditioned frames' registers get the prefix-mask token when the model has that module
  (the release sets eval_prefix_len only then)."""
  m, _, params = _model(f.path)
  cfg = m.tokenizer_cfg
  codes = fsq.ids_to_codes(jnp.asarray(ids), cfg.fsq_levels)
  b = codes.shape[0]
  keep = args.get("num_keep_tokens_list")
  keep_k = jnp.full((b,), cfg.num_registers if keep is None else int(keep[0]), jnp.int32)
  prefix = None
  if cond is not None:
    cond = _cl(cond)
    plen = (args.get("prefix_len") or [cond.shape[1]])[0]
    prefix = jnp.full((b,), int(plen), jnp.int32)
  with_prefix = cond is not None and cfg.prefix_masking
  run = _sampler(f.path, int(args["timesteps"]), _guidance(args), cond is not None, with_prefix)
  return run(params, codes, _cl(noise), keep_k, cond, prefix)


def _cond_frames(spec_value) -> int:
  m = re.fullmatch(r"video\[:, :, :(\d+)\]", str(spec_value).strip())
  if not m:
    pytest.skip(f"conditioning_frames {spec_value!r}: not a leading-frames slice of `video`")
  return int(m[1])


# ------------------------------------------------------------------------- the checks
def _run_encoder(f, arg):
  lat_name, reg_name, tok_name = arg
  _, _, params = _model(f.path)
  (lat,) = _golden(f, lat_name)
  (_, ids), inter = _apply(f.path, "encode")(params, _cl(lat))
  enc = inter["intermediates"]["encoder"]
  if reg_name:
    _check(f, reg_name, enc["__call__"][0], *_golden(f, reg_name))
  if tok_name:
    _check_ids(f, tok_name, ids, *_golden(f, tok_name))
  if lat_name != "vae_latents":
    return
  if "enc_patches_in" in f.golden:
    _check(f, "enc_patches_in", enc["posemb"]["__call__"][0], *_golden(f, "enc_patches_in"))
  if "enc_registers_out" in f.golden:  # trunk output, per frame [patches | registers]
    seq, (want,) = enc["transformer"]["__call__"][0][0], _golden(f, "enc_registers_out")
    b, t, n, d = want.shape
    _check(f, "enc_registers_out", seq.reshape(b, t, -1, d)[:, :, -n:], want)


def _run_fsq(f, arg):
  _, reg_name, tok_name = arg
  m, _, _ = _model(f.path)
  reg, tok = _golden(f, reg_name, tok_name)
  codes = fsq.quantize(jnp.asarray(reg), m.tokenizer_cfg.fsq_levels)
  _check_ids(f, f"{tok_name} (FSQ of golden {reg_name})",
             fsq.codes_to_ids(codes, m.tokenizer_cfg.fsq_levels), tok)
  if reg_name == "enc_reg_latents" and "fsq_quants" in f.golden:
    np.testing.assert_array_equal(np.asarray(codes), *_golden(f, "fsq_quants"))


def _run_ids_to_codes(f, arg):
  m, _, _ = _model(f.path)
  quants, tok = _golden(f, "fsq_quants", "tokens")
  np.testing.assert_array_equal(np.asarray(fsq.ids_to_codes(tok, m.tokenizer_cfg.fsq_levels)),
                                quants)  # bit-identical, as in the release


def _run_time_embedding(f, arg):
  m, _, params = _model(f.path)
  (t,) = _golden(f, "dec_t")
  if "dec_temb_freq" in f.golden:
    _check(f, "dec_temb_freq", timestep_features(jnp.asarray(t), m.tokenizer_cfg.max_timestep),
           *_golden(f, "dec_temb_freq"))
  if "dec_temb" in f.golden:
    _, inter = _apply(f.path, "decode")(params, *_decode_inputs(f))
    _check(f, "dec_temb", inter["intermediates"]["decoder"]["time_embedder"]["__call__"][0],
           *_golden(f, "dec_temb"))


def _decode_inputs(f):
  quants, xt, t = _golden(f, "fsq_quants", "dec_xt", "dec_t")
  return jnp.asarray(quants), _cl(xt), jnp.asarray(t)


def _run_single_forward(f, variant):
  m, _, params = _model(f.path)
  sf = f.spec["single_forward"]
  codes, xt, t = _decode_inputs(f)
  if "t" in sf:
    np.testing.assert_allclose(np.asarray(t), float(sf["t"]), rtol=1e-6)
  b = codes.shape[0]
  args = _variant_args(variant)
  if "prefix_len" in args and not m.tokenizer_cfg.prefix_masking:
    pytest.fail(f"{f.name}: variant {variant!r} needs a prefix-masking module the config lacks")
  kw = dict(keep_k=jnp.full((b,), args["keep_k"], jnp.int32) if "keep_k" in args else None,
            null_cond=jnp.full((b,), True) if args.get("null_cond") else None,
            prefix_len=jnp.full((b,), args["prefix_len"], jnp.int32) if "prefix_len" in args
            else None)
  v, inter = _apply(f.path, "decode")(params, codes, xt, t, **kw)
  _check(f, f"dec_v_{variant}", jnp.moveaxis(v, -1, 1), *_golden(f, f"dec_v_{variant}"))
  if variant == "cond" and "dec_patches_in" in f.golden:
    _check(f, "dec_patches_in", inter["intermediates"]["decoder"]["posemb"]["__call__"][0],
           *_golden(f, "dec_patches_in"))


def _run_detok(f, name):
  args = f.spec["detok"][name]
  tok, noise = _golden(f, "tokens", "detok_noise")
  cond = None
  if args.get("conditioning_frames"):
    (cond,) = _golden(f, "detok_cond_latents")  # teacher-forced conditioning latent
  out = _detokenize(f, args, tok, noise, cond)
  _check(f, f"detok_latents_{name}", jnp.moveaxis(out, -1, 1), *_golden(f, f"detok_latents_{name}"))


def _run_detok_rgb(f, name):
  codec = _codec(f.path)
  lat, rgb = _golden(f, f"detok_latents_{name}", f"detok_rgb_{name}")
  _check(f, f"detok_rgb_{name}", jnp.moveaxis(codec.decode(_cl(lat)), -1, 1), rgb)


def _run_cond_latents(f, name):
  codec = _codec(f.path)
  n = _cond_frames(f.spec["detok"][name]["conditioning_frames"])
  video, eps, want = _golden(f, "video", "detok_cond_eps", "detok_cond_latents")
  lat = codec.encode(_cl(video[:, :, :n]), eps=_cl(eps))
  _check(f, "detok_cond_latents", jnp.moveaxis(lat, -1, 1), want)


def _run_chunk_detok(f, arg):
  name, c = arg
  args = f.spec["detok"][name]
  p = f"chunk_{name}_c{c}_"
  tokens, chunk_tokens = _golden(f, "tokens", "chunk_tokens")
  per_chunk = chunk_tokens.shape[1]
  (noise,) = _golden(f, p + "noise")
  if c == 0:
    ids, cond = tokens[:, :per_chunk], None
  else:
    reenc, cond = _golden(f, p + "reenc_tokens", p + "cond_latents")
    stride = per_chunk - reenc.shape[1]
    start = per_chunk + (c - 1) * stride
    ids = np.concatenate([reenc, tokens[:, start:start + stride]], axis=1)
    args = {**args, "prefix_len": [cond.shape[2]]}
  out = _detokenize(f, args, ids, noise, cond)
  _check(f, p + "latents", jnp.moveaxis(out, -1, 1), *_golden(f, p + "latents"))


RUNNERS = {"encoder": _run_encoder, "fsq": _run_fsq, "ids_to_codes": _run_ids_to_codes,
           "time_embedding": _run_time_embedding, "single_forward": _run_single_forward,
           "detok": _run_detok, "detok_rgb": _run_detok_rgb, "cond_latents": _run_cond_latents,
           "chunk_detok": _run_chunk_detok}


@pytest.mark.skipif(not CASES, reason=f"no tokenizer fixture folder under {FIXTURES}")
@pytest.mark.parametrize("folder,kind,arg", CASES)
def test_parity(folder, kind, arg):
  with jax.default_matmul_precision("highest"):
    RUNNERS[kind](folder, arg)


def test_variant_parsing():
  assert _variant_args("cond") == {}
  assert _variant_args("keep8_prefix1") == {"keep_k": 8, "prefix_len": 1}
  assert _variant_args("uncond") == {"null_cond": True}
  with pytest.raises(ValueError, match="unknown part"):
    _variant_args("keep8_sdedit")
