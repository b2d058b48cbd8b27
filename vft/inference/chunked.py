"""Long videos: chunked tokenization and decoding as the release's `VideoChunkTokenizerWrapper`
(official-architecture.md section 9).

Chunks of `chunk_frames` (17) frames with stride `chunk_frames - overlap_frames` (16): chunk c
covers frames [16c, 16c + 17), so a clip needs 17 + 16k frames (1 + 16k for k >= 1).

Tokenize: every chunk is tokenized on its own (codec posterior sample -> encoder -> FSQ); chunk 0
keeps all its latent frames of ids, every later chunk drops its first `overlap_latents` (1), so
1 + 16k frames give 1 + 4k latent frames of ids `[B, T', N]`.

Detokenize: chunk 0 is rendered from noise. Every later chunk c is conditioned on the last
`overlap_frames` frames of the *decoded* chunk c - 1: they are (1) re-tokenized and their ids
prepended to the chunk's stored ids, and (2) encoded by the codec a second time (an independent
posterior sample) to give the clean latent clamped into the first latent frame(s) before every
decoder call and after the last step; a decoder with a prefix-mask token also gets
prefix_len = overlap latents. The decoded conditioning frames are dropped from the output. The
same keep_k applies to every chunk, the re-tokenized prefix included.

Chunks run one after another through jitted stages of fixed shapes (codec encode, tokenizer
encode, flow sampling, codec decode), each compiled once per shape and reused by every chunk,
so device memory does not grow with the video length; finished frames are moved to the host.
Randomness: the draws of chunk c use `fold_in(rng, c)` (then one sub-key per purpose), or are
injected (`ChunkDraws`) to replay the reference exactly.

Layouts are channels-last: video [B, T, H, W, 3] in [-1, 1]; latents [B, t, h, w, C].
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from vft import flow, sharding
from vft.models import fsq
from vft.models.tokenizer import VideoFlexTok, sample_latents

# Sub-keys of one chunk's key, one per purpose.
_NOISE, _REENC, _COND = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class ChunkSpec:
  """Chunk geometry. `time_factor` is the codec's causal time compression."""
  chunk_frames: int = 17
  overlap_frames: int = 1
  time_factor: int = 4

  def __post_init__(self):
    tf = self.time_factor
    if self.chunk_frames < 1 or (self.chunk_frames - 1) % tf:
      raise ValueError(f"chunking: chunk_frames={self.chunk_frames} must be 1 + {tf}k")
    if not 0 <= self.overlap_frames < self.chunk_frames:
      raise ValueError(f"chunking: overlap_frames={self.overlap_frames} must lie in "
                       f"[0, chunk_frames={self.chunk_frames})")
    if self.overlap_frames and (self.overlap_frames - 1) % tf:
      raise ValueError(f"chunking: overlap_frames={self.overlap_frames} must be 0 or 1 + {tf}k")

  @property
  def chunk_latents(self) -> int:
    """Latent frames (= frames of ids) of one chunk: 5 for 17 frames."""
    return (self.chunk_frames - 1) // self.time_factor + 1

  @property
  def overlap_latents(self) -> int:
    return (self.overlap_frames - 1) // self.time_factor + 1 if self.overlap_frames else 0

  @property
  def stride_frames(self) -> int:
    return self.chunk_frames - self.overlap_frames

  @property
  def stride_latents(self) -> int:
    return self.chunk_latents - self.overlap_latents

  def num_frames(self, num_chunks: int) -> int:
    return self.chunk_frames + self.stride_frames * (num_chunks - 1)

  def num_latents(self, num_chunks: int) -> int:
    return self.chunk_latents + self.stride_latents * (num_chunks - 1)

  def chunks_for_frames(self, num_frames: int) -> int:
    """Number of chunks of a clip; a clip no longer than one chunk is one (shorter) chunk."""
    if num_frames <= self.chunk_frames:
      if num_frames < 1 or (num_frames - 1) % self.time_factor:
        raise ValueError(f"video: {num_frames} frames; a clip of at most one chunk needs "
                         f"1 + {self.time_factor}k frames")
      return 1
    n, rem = divmod(num_frames - self.chunk_frames, self.stride_frames)
    if rem:
      raise ValueError(
          f"video: {num_frames} frames; chunked tokenization needs {self.chunk_frames} + "
          f"{self.stride_frames}k frames ({self.num_frames(2)}, {self.num_frames(3)}, ...); "
          f"`read_video` rounds the frame count up to such a value")
    return n + 1

  def chunks_for_latents(self, num_latents: int) -> int:
    if num_latents <= self.chunk_latents:
      if num_latents < 1:
        raise ValueError("ids: need at least one latent frame")
      return 1
    n, rem = divmod(num_latents - self.chunk_latents, self.stride_latents)
    if rem:
      raise ValueError(
          f"ids: {num_latents} latent frames; chunked ids have {self.chunk_latents} + "
          f"{self.stride_latents}k frames ({self.num_latents(2)}, {self.num_latents(3)}, ...)")
    return n + 1

  def round_up_frames(self, num_frames: int) -> int:
    """The smallest valid frame count >= num_frames (the official `read_mp4` rule
    1 + k * stride; clips shorter than one chunk stay 1 + 4k)."""
    if num_frames <= 1:
      return 1
    k = -(-(num_frames - 1) // self.stride_frames)
    return 1 + k * self.stride_frames

  def round_down_frames(self, num_frames: int) -> int:
    """The largest valid frame count <= num_frames (>= 1): chunk + k * stride, or 1 + 4k for
    less than one chunk."""
    if num_frames >= self.chunk_frames:
      return num_frames - (num_frames - self.chunk_frames) % self.stride_frames
    return max(1, num_frames - (num_frames - 1) % self.time_factor)


@dataclasses.dataclass(frozen=True)
class ChunkDraws:
  """Injected random tensors of one chunk (any None is drawn from the chunk's key).

  noise:     [B, t, h, w, C] flow state at t = 1.
  reenc_eps: [B, t_o, h, w, C] posterior eps of the re-tokenized conditioning frames.
  cond_eps:  [B, t_o, h, w, C] posterior eps of the clean conditioning latent.
  """
  noise: jax.Array | None = None
  reenc_eps: jax.Array | None = None
  cond_eps: jax.Array | None = None


@dataclasses.dataclass
class DecodedChunk:
  """One decoded chunk: `frames` [B, t, H, W, 3] (host, conditioning frames already dropped)
  and the chunk's device-side intermediates in `aux` (latents, ids, cond/reenc latents)."""
  index: int
  frames: np.ndarray
  aux: dict


def _takes(fn, name: str) -> bool:
  try:
    return name in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


class ChunkedTokenizer:
  """Tokenizes and renders clips of any number of chunks with fixed-shape jitted functions.

  `model`/`params`: a VideoFlexTok and its (unboxed) params; `codec`: a VideoCodec whose
  `encode(video, key=None, *, eps=None, mode=False)` samples a posterior (VidTok) or is
  deterministic (PatchCodec: eps unused). A codec that carries its weights in a `params` field
  (VidTokCodec) gets them passed into the jitted functions as arguments, not baked-in constants.
  `posterior="mode"` uses the posterior mean instead of a sample (deterministic; not the
  official behaviour). `mesh` / `rules`: where the stages run and the logical axis rules their
  activations follow (default: one device, the default rules).
  """

  def __init__(self, model: VideoFlexTok, codec, spec: ChunkSpec | None = None, *,
               posterior: str = "sample", mesh=None, rules=sharding.DEFAULT_RULES):
    if posterior not in ("sample", "mode"):
      raise ValueError(f"posterior must be 'sample' or 'mode', got {posterior!r}")
    self.model, self.codec, self.posterior = model, codec, posterior
    self.spec = spec or ChunkSpec(time_factor=codec.time_factor)
    if self.spec.time_factor != codec.time_factor:
      raise ValueError(f"chunking: time_factor {self.spec.time_factor} differs from the codec's "
                       f"{codec.time_factor}")
    self.stochastic = _takes(codec.encode, "eps") and posterior == "sample"
    self._mode_arg = _takes(codec.encode, "mode")
    self._has_params = dataclasses.is_dataclass(codec) and hasattr(codec, "params")
    # Separately jitted stages, so the (large) codec programs are compiled once per shape and
    # shared by every chunk kind and sampler setting.
    mesh = sharding.make_mesh({}, jax.local_devices()[:1]) if mesh is None else mesh
    jit = functools.partial(sharding.jit, mesh=mesh, rules=rules)
    self._codec_encode_jit = jit(self._with_codec(self._codec_encode))
    self._codec_decode_jit = jit(self._with_codec(lambda codec, lat: codec.decode(lat)))
    self._model_encode_jit = jit(self._model_encode)
    self._sample_jit = jit(self._sample, static_argnames=("steps", "guidance"))

  def _with_codec(self, fn):
    """fn(codec, ...) -> f(codec_params, ...) with the codec rebuilt around traced weights."""
    def f(codec_params, *args, **kwargs):
      codec = self.codec
      if self._has_params:
        codec = dataclasses.replace(codec, params=codec_params)
      return fn(codec, *args, **kwargs)
    return f

  def _codec_params(self):
    return self.codec.params if self._has_params else None

  def cache_sizes(self) -> dict:
    """Compiled variants of each jitted stage (for recompilation checks)."""
    return {name: getattr(self, f"_{name}_jit")._cache_size()
            for name in ("codec_encode", "codec_decode", "model_encode", "sample")}

  # ------------------------------------------------------------------ pure stages
  def _codec_encode(self, codec, video: jax.Array, eps: jax.Array | None) -> jax.Array:
    """video [B, T, H, W, 3] -> latents [B, t, h, w, C] (posterior sample with `eps`)."""
    if self.stochastic:
      return codec.encode(video, eps=eps)
    if self._mode_arg:
      return codec.encode(video, mode=True)
    return codec.encode(video)

  def _model_encode(self, params, latents: jax.Array) -> jax.Array:
    """latents [B, t, h, w, C] -> ids [B, t', N]."""
    return self.model.apply({"params": params}, latents, method="encode")[1]

  def _sample(self, params, ids, noise, keep_k, cond_latents, prefix_len, *, steps: int,
              guidance: flow.Guidance) -> jax.Array:
    """ids [B, t, N], noise [B, t, h, w, C] -> latents [B, t, h, w, C] (Euler from t = 1)."""
    codes = fsq.ids_to_codes(ids, self.model.cfg.fsq_levels)
    return sample_latents(self.model, params, codes, noise, steps, keep_k=keep_k,
                          guidance=guidance, cond_latents=cond_latents, prefix_len=prefix_len)

  # ------------------------------------------------------------------ per-chunk steps
  def codec_encode(self, video, eps=None) -> jax.Array:
    """Jitted: video [B, T, H, W, 3] -> latents [B, t, h, w, C] (eps [B, t, h, w, C])."""
    return self._codec_encode_jit(self._codec_params(), video, eps)

  def codec_decode(self, latents) -> jax.Array:
    """Jitted: latents [B, t, h, w, C] -> video [B, 1 + 4(t - 1), H, W, 3]."""
    return self._codec_decode_jit(self._codec_params(), latents)

  def model_encode(self, params, latents) -> jax.Array:
    """Jitted: latents [B, t, h, w, C] (t <= chunk latents) -> ids [B, t, N] int32."""
    return self._model_encode_jit(params, latents)

  def encode_chunk(self, params, video, eps) -> dict:
    """video [B, T, H, W, 3], eps [B, t, h, w, C] | None -> {ids [B, t, N], latents}."""
    latents = self.codec_encode(video, eps)
    return {"ids": self._model_encode_jit(params, latents), "latents": latents}

  def decode_free(self, params, ids, noise, keep_k, *, steps: int,
                  guidance: flow.Guidance) -> dict:
    """ids [B, t, N], noise [B, t, h, w, C], keep_k [B] -> {video [B, T, H, W, 3], latents,
    ids}."""
    lat = self._sample_jit(params, ids, noise, keep_k, None, None, steps=steps, guidance=guidance)
    return {"video": self.codec_decode(lat), "latents": lat, "ids": ids}

  def decode_cond(self, params, cond_frames, new_ids, noise, reenc_eps, cond_eps, keep_k, *,
                  steps: int, guidance: flow.Guidance) -> dict:
    """A chunk conditioned on pixel frames.

    cond_frames [B, F, H, W, 3] (F = 1 + 4j), new_ids [B, t - t_o, N] (the chunk's ids after the
    t_o conditioning latent frames), noise [B, t, h, w, C], reenc_eps / cond_eps
    [B, t_o, h, w, C], keep_k [B] -> {video [B, T, H, W, 3] including the conditioning frames,
    latents, ids (with the re-tokenized prefix), reenc_latents, cond_latents}.
    """
    reenc = self.encode_chunk(params, cond_frames, reenc_eps)
    ids = jnp.concatenate([reenc["ids"], jnp.asarray(new_ids, reenc["ids"].dtype)], axis=1)
    cond = self.codec_encode(cond_frames, cond_eps)
    prefix = None
    if self.model.cfg.prefix_masking:
      prefix = jnp.full((ids.shape[0],), cond.shape[1], jnp.int32)
    lat = self._sample_jit(params, ids, noise, keep_k, cond, prefix, steps=steps,
                           guidance=guidance)
    return {"video": self.codec_decode(lat), "latents": lat, "ids": ids,
            "reenc_latents": reenc["latents"], "cond_latents": cond}

  # ------------------------------------------------------------------ random draws
  def eps_shape(self, batch: int, num_frames: int, height: int, width: int):
    return (batch, *self.codec.latent_shape(num_frames, height, width))

  def _normal(self, key, shape):
    return jax.random.normal(key, shape, jnp.float32)

  # ------------------------------------------------------------------ drivers
  def tokenize(self, params, video: jax.Array, *, rng: jax.Array | None = None,
               eps: Sequence[jax.Array | None] | None = None, progress: bool = False,
               return_aux: bool = False):
    """video [B, T, H, W, 3] in [-1, 1], T = 17 + 16k (or 1 + 4j <= 17) -> ids [B, T', N] int32.

    eps: optional per-chunk posterior noise [B, t, h, w, C] (chunk c: `eps[c]`); otherwise
    drawn from `fold_in(rng, c)` (rng None: key 0). With `return_aux` also returns the per-chunk
    intermediates (host copies of latents and ids). A host (numpy) video stays on the host;
    only one chunk at a time is sent to the device.
    """
    if not isinstance(video, jax.Array):
      video = np.asarray(video, np.float32)
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"video: expected [B, T, H, W, 3], got shape {tuple(video.shape)}")
    b, t, h, w, _ = video.shape
    n = self.spec.chunks_for_frames(t)
    clen = t if n == 1 else self.spec.chunk_frames
    _check_draws(eps, n, "eps")
    rng = jax.random.key(0) if rng is None else rng
    out, aux = [], []
    for c in tqdm.trange(n, desc="tokenize chunks", disable=not progress, leave=False):
      start = c * self.spec.stride_frames
      chunk = video[:, start:start + clen]
      e = None
      if self.stochastic:
        e = eps[c] if eps is not None and eps[c] is not None else self._normal(
            jax.random.fold_in(rng, c), self.eps_shape(b, clen, h, w))
        e = _check_shape(e, self.eps_shape(b, clen, h, w), f"eps[{c}]")
      res = self.encode_chunk(params, chunk, e)
      ids = res["ids"] if c == 0 else res["ids"][:, self.spec.overlap_latents:]
      out.append(np.asarray(ids))
      if return_aux:
        aux.append(jax.device_get(res))
    ids = np.concatenate(out, axis=1).astype(np.int32)
    return (ids, aux) if return_aux else ids

  def iter_detokenize(self, params, ids, *, latent_hw: tuple[int, int], keep_k=None,
                      steps: int = 30, guidance: flow.Guidance = flow.Guidance(),
                      rng: jax.Array | None = None,
                      draws: Sequence[ChunkDraws | None] | None = None,
                      conditioning_frames: jax.Array | None = None,
                      progress: bool = False) -> Iterator[DecodedChunk]:
    """Renders ids [B, T', N] chunk by chunk; yields `DecodedChunk`s whose frames concatenate
    to the video [B, T, H, W, 3] (T = 1 + 4(T' - 1)).

    latent_hw: the latent grid (h, w) to render. keep_k: int or [B] (None: all registers).
    conditioning_frames: optional [B, F, H, W, 3] pixel frames (F = 1 + 4j) that condition the
    first chunk as the previous chunk's frames condition later ones (their ids replace the first
    latent frames of ids; the output keeps them).
    draws: optional per-chunk injected randomness; otherwise `fold_in(rng, c)` (rng None:
    key 0).
    """
    cfg = self.model.cfg
    ids = np.asarray(ids)
    if ids.ndim != 3 or ids.shape[-1] != cfg.num_registers:
      raise ValueError(f"ids: expected [B, T', {cfg.num_registers}], got shape {ids.shape}")
    fsq.check_ids(ids, cfg.fsq_levels, "ids")
    b, t_ids, _ = ids.shape
    n = self.spec.chunks_for_latents(t_ids)
    clat = t_ids if n == 1 else self.spec.chunk_latents
    _check_draws(draws, n, "draws")
    rng = jax.random.key(0) if rng is None else rng
    keep = _keep_k(keep_k, b, cfg.num_registers)
    h, w = latent_hw
    noise_shape = (b, clat, h, w, cfg.latent_channels)
    px_h, px_w = h * self.codec.spatial_factor, w * self.codec.spatial_factor
    ids = jnp.asarray(ids, jnp.int32)
    cond = None
    if conditioning_frames is not None:
      cond = jnp.asarray(conditioning_frames, jnp.float32)
      if cond.ndim != 5 or cond.shape[0] != b or cond.shape[2:] != (px_h, px_w, 3):
        raise ValueError(f"conditioning_frames: expected [{b}, F, {px_h}, {px_w}, 3], got "
                         f"{tuple(cond.shape)}")
    for c in tqdm.trange(n, desc="decode chunks", disable=not progress, leave=False):
      d = draws[c] if draws is not None and draws[c] is not None else ChunkDraws()
      key = jax.random.fold_in(rng, c)

      def draw(given, purpose, shape, name):
        if given is not None:
          return _check_shape(given, shape, f"draws[{c}].{name}")
        return self._normal(jax.random.fold_in(key, purpose), shape)

      noise = draw(d.noise, _NOISE, noise_shape, "noise")
      if c == 0:
        chunk_ids = ids[:, :clat]
      else:
        start = self.spec.chunk_latents + (c - 1) * self.spec.stride_latents
        chunk_ids = ids[:, start:start + self.spec.stride_latents]
      cond_frames, drop = None, 0
      if c > 0 and self.spec.overlap_frames:
        cond_frames, drop = cond, self.spec.overlap_frames
      elif c == 0 and cond is not None:
        cond_frames = cond
      if cond_frames is None:
        res = self.decode_free(params, chunk_ids, noise, keep, steps=steps, guidance=guidance)
      else:
        eps_shape = self.eps_shape(b, cond_frames.shape[1], px_h, px_w)
        reenc = draw(d.reenc_eps, _REENC, eps_shape, "reenc_eps") if self.stochastic else None
        ceps = draw(d.cond_eps, _COND, eps_shape, "cond_eps") if self.stochastic else None
        new_ids = chunk_ids if c > 0 else chunk_ids[:, eps_shape[1]:]
        res = self.decode_cond(params, cond_frames, new_ids, noise, reenc, ceps, keep,
                               steps=steps, guidance=guidance)
      video = res.pop("video")
      if self.spec.overlap_frames:
        cond = video[:, video.shape[1] - self.spec.overlap_frames:]
      yield DecodedChunk(c, np.asarray(video[:, drop:]), res)

  def detokenize(self, params, ids, **kwargs) -> np.ndarray:
    """`iter_detokenize` concatenated: video [B, T, H, W, 3] float32 (not clipped)."""
    return np.concatenate([ch.frames for ch in self.iter_detokenize(params, ids, **kwargs)],
                          axis=1)


def _keep_k(keep_k, batch: int, num_registers: int) -> jax.Array:
  k = np.full((batch,), num_registers) if keep_k is None else np.asarray(keep_k)
  k = np.broadcast_to(k, (batch,)) if k.ndim == 0 else k
  if k.shape != (batch,):
    raise ValueError(f"keep_k: expected an int or {batch} values, got shape {k.shape}")
  if np.any(k < 1) or np.any(k > num_registers):
    raise ValueError(f"keep_k: budgets must lie in [1, {num_registers}], got {k.tolist()}")
  return jnp.asarray(k, jnp.int32)


def _check_draws(draws, n: int, name: str):
  if draws is not None and len(draws) != n:
    raise ValueError(f"{name}: expected one entry per chunk ({n}), got {len(draws)}")


def _check_shape(x, shape, name: str) -> jax.Array:
  x = jnp.asarray(x, jnp.float32)
  if x.shape != tuple(shape):
    raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(x.shape)}")
  return x
