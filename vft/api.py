"""`vft.VideoTokenizer`: videos -> flexible-length token ids -> videos.

  tok = VideoTokenizer.from_official("videoflextok_d18_d28/model.safetensors")
  video = tok.read_video("clip.mp4")                     # [T, 256, 256, 3] in [-1, 1]
  ids = tok.tokenize(video, rng=0)                       # int32 [T', 256], T' = 1 + (T - 1) / 4
  recon = tok.detokenize(ids, keep_k=16, steps=30, guidance_scale=20.0, apg=True, rng=1)

Clips longer than one chunk (17 frames) go through the release's chunked path
(`vft.inference.chunked`). Everything is jit-compiled per chunk shape; `keep_k` is a traced
argument, so rendering one clip at many token budgets compiles once. `steps` and the guidance
settings are compile-time constants.

Layouts are channels-last: video [T, H, W, 3] or [B, T, H, W, 3], float in [-1, 1] (uint8 is
accepted and rescaled); ids [T', N] or [B, T', N].
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from vft import files, flow, sharding
from vft.data import video_io
from vft.inference.chunked import ChunkDraws, ChunkedTokenizer, ChunkSpec
from vft.models.tokenizer import VideoFlexTok

DEFAULT_FPS = 8.0  # the released models were trained on ~8 fps clips (model card)


def _key(rng) -> jax.Array | None:
  if rng is None:
    return None
  if isinstance(rng, (int, np.integer)):
    return jax.random.key(int(rng))
  return rng


class VideoTokenizer:
  """A VideoFlexTok model, its codec and its chunking, with a tokenize/detokenize API.

  Args:
    model, params: the tokenizer and its (unboxed) parameters.
    codec: the pixel <-> latent codec (VidTokCodec, PatchCodec).
    chunking: chunk geometry (default 17 frames, overlap 1).
    frame_size: default (H, W) in pixels for reading videos and rendering ids.
    fps: default sampling rate for reading videos.
    posterior: "sample" (the release: the codec posterior is sampled) or "mode" (its mean).
    source: where the model came from (recorded in tokenized files).
    mesh, rules: where the jitted stages run and their logical axis rules (default: one
      device, `vft.sharding.DEFAULT_RULES`).
  """

  def __init__(self, model: VideoFlexTok, params: Any, codec, *,
               chunking: ChunkSpec | None = None, frame_size: tuple[int, int] | None = None,
               fps: float | None = None, posterior: str = "sample", source: str = "",
               mesh=None, rules=sharding.DEFAULT_RULES):
    self.model, self.params, self.codec = model, params, codec
    self.frame_size = tuple(frame_size) if frame_size is not None else None
    self.fps = float(fps) if fps else DEFAULT_FPS
    self.source = source
    self.runner = ChunkedTokenizer(model, codec, chunking, posterior=posterior, mesh=mesh,
                                   rules=rules)

  # ------------------------------------------------------------------ loading
  @classmethod
  def from_official(cls, path: str | os.PathLike, *, config_path: str | os.PathLike | None = None,
                    posterior: str = "sample", dtype: str = "float32",
                    attention_impl: str | None = None, chunking: ChunkSpec | None = None,
                    frame_size: tuple[int, int] | None = None) -> "VideoTokenizer":
    """From a released PyTorch checkpoint: a `model.safetensors` with the config in its header,
    or the hub form (`model.safetensors` + `config.json`, found next to it or given).

    dtype: compute dtype of the transformers and VAE convolutions ("float32" or "bfloat16";
    parameters stay float32). attention_impl: e.g. "cudnn" on GPUs (default: the config's).
    chunking / frame_size: override what the hub config says (the metadata form records neither:
    17-frame chunks with overlap 1 and no default frame size then).
    """
    from vft.convert import load_official
    from vft.models.vae.vidtok import VidTokCodec
    m = load_official(str(path), config_path=None if config_path is None else str(config_path))
    if m.tokenizer_cfg is None or m.vae_cfg is None:
      raise ValueError(f"{path}: needs both the tokenizer and the VidTok VAE weights (this file "
                       f"has {'no tokenizer' if m.tokenizer_cfg is None else 'no VAE'})")
    tcfg = dataclasses.replace(m.tokenizer_cfg, dtype=dtype,
                               attention_impl=attention_impl or m.tokenizer_cfg.attention_impl)
    codec = VidTokCodec(dataclasses.replace(m.vae_cfg, dtype=dtype),
                        jax.tree.map(jnp.asarray, m.vae_params))
    chunk = _get(m.chunking, "chunk_size", 17)
    overlap = _get(m.chunking, "overlap_size_frames", 1)
    sizes = _get(m.chunking, "vae_video_sizes", None)
    if frame_size is None and sizes is not None:
      frame_size = (int(sizes[1]) * codec.spatial_factor, int(sizes[2]) * codec.spatial_factor)
    fps = _get(_get(m.chunking, "video_preprocess_args", None) or {}, "fps", None)
    return cls(VideoFlexTok(tcfg), jax.tree.map(jnp.asarray, m.params), codec,
               chunking=chunking or ChunkSpec(int(chunk), int(overlap), codec.time_factor),
               frame_size=frame_size, fps=fps, posterior=posterior, source=os.fspath(path))

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike, *,
                   posterior: str = "sample") -> "VideoTokenizer":
    """From one of our training runs: `<workdir>/config.json` + the latest orbax checkpoint
    (EMA params when the run kept them) + the codec the config names."""
    from vft import config_lib
    from vft.eval.job import restore_eval_params
    from vft.models.vae import make_codec
    from vft.train.loop import build_model
    workdir = os.fspath(workdir)
    config = config_lib.read_workdir_config(workdir)
    codec = make_codec(config.codec)
    size = int(config.data.size)
    spec = codec.latent_shape(int(config.data.clip_len), size, size)
    model = build_model(config, spec)
    _, params = restore_eval_params(config, workdir, model, spec)
    from jax.experimental import multihost_utils  # params may span processes (--distributed)
    params = jax.device_put(multihost_utils.process_allgather(params, tiled=True),
                            jax.local_devices()[0])
    fps = (config.data.get("prep") or {}).get("fps")
    return cls(model, params, codec, chunking=ChunkSpec(time_factor=codec.time_factor),
               frame_size=(size, size), fps=fps, posterior=posterior, source=workdir,
               rules=sharding.rules_from_config(config.get("sharding_rules")))

  @classmethod
  def load(cls, path: str | os.PathLike, **kwargs) -> "VideoTokenizer":
    """A workdir (a folder with config.json) or an official .safetensors file."""
    if ((epath.Path(path) / "config.json").is_file()
        and (epath.Path(path) / "checkpoints").is_dir()):
      return cls.from_workdir(path, **kwargs)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "model.safetensors")):
      return cls.from_official(os.path.join(path, "model.safetensors"), **kwargs)
    if os.path.isfile(path) and str(path).endswith(".safetensors"):
      return cls.from_official(path, **kwargs)
    raise FileNotFoundError(f"--model {path}: expected an official .safetensors file (or a "
                            "folder holding model.safetensors) or a vft workdir (config.json + "
                            "checkpoints/)")

  # ------------------------------------------------------------------ properties
  @property
  def chunking(self) -> ChunkSpec:
    return self.runner.spec

  @property
  def num_registers(self) -> int:
    return self.model.cfg.num_registers

  def latent_hw(self, frame_size: tuple[int, int] | None = None) -> tuple[int, int]:
    size = frame_size or self.frame_size
    if size is None:
      raise ValueError("frame size unknown: the model does not record it; pass frame_size=(H, W)")
    s = self.codec.spatial_factor
    if size[0] % s or size[1] % s:
      raise ValueError(f"frame size {tuple(size)} is not divisible by the codec's spatial "
                       f"factor {s}")
    return size[0] // s, size[1] // s

  # ------------------------------------------------------------------ video I/O
  def read_video(self, path: str | os.PathLike, *, fps: float | None = None,
                 num_frames: int | None = None, size: int | None = None) -> np.ndarray:
    """Reads a clip as the release's `read_mp4` does: frames sampled uniformly over the whole
    video (count = duration * fps rounded up to 1 + 16k, or `num_frames`), bicubic short-side
    resize to `size`, centre crop, scaled to [-1, 1] -> float32 [T, size, size, 3].

    Frames are never repeated: where the release's count exceeds the video's frames, the
    default count is the largest valid one the video holds (an explicit `num_frames` above it
    is an error), and a file that does not decode to its end raises
    `vft.data.video_io.DecodeError` naming it and the frame where decoding stopped."""
    if size is None:
      if self.frame_size is None or self.frame_size[0] != self.frame_size[1]:
        raise ValueError("read_video: pass size= (the model does not record a square size)")
      size = self.frame_size[0]
    if num_frames is None:
      info = video_io.probe_video(path)
      total = info.num_frames or video_io.count_frames(path)
      duration = total / info.fps if info.fps else info.duration
      num_frames = self.chunking.round_up_frames(int(duration * (fps or self.fps)))
      if num_frames > total:  # the release would repeat frames here
        num_frames = self.chunking.round_down_frames(total)
    else:
      self.chunking.chunks_for_frames(num_frames)  # validates
    frames = video_io.read_video_uniform(path, num_frames, size=size, crop=True)
    return frames.astype(np.float32) / 127.5 - 1.0

  # ------------------------------------------------------------------ tokenize / detokenize
  def tokenize(self, video, rng=None, *, eps: jax.Array | Sequence[jax.Array] | None = None,
               progress: bool = False) -> np.ndarray:
    """video [T, H, W, 3] or [B, T, H, W, 3] in [-1, 1] (or uint8), T = 17 + 16k or 1 + 4j <= 17
    -> int32 ids [T', N] or [B, T', N].

    rng: jax key or int seed for the codec's posterior sample (None: seed 0); chunk c uses
    fold_in(rng, c). eps: injected posterior noise instead, one [B, t, h, w, C] per chunk (a
    single array for a one-chunk clip).
    """
    video, batched = _as_video(video)
    if eps is not None and not isinstance(eps, (list, tuple)):
      eps = [eps]  # one chunk
    ids = self.runner.tokenize(self.params, video, rng=_key(rng), eps=eps, progress=progress)
    return ids if batched else ids[0]

  def detokenize(self, ids, keep_k=None, steps: int = 30, guidance_scale: float = 1.0, *,
                 apg: bool = False, eta: float = 0.0, momentum: float = 0.0,
                 norm_threshold: float = 0.6, rng=None,
                 noise: jax.Array | Sequence[ChunkDraws] | None = None,
                 conditioning_frames=None, frame_size: tuple[int, int] | None = None,
                 progress: bool = False) -> np.ndarray:
    """ids [T', N] or [B, T', N] -> video float32 [T, H, W, 3] or [B, ...] (not clipped),
    T = 1 + 4(T' - 1).

    keep_k: tokens kept per latent frame (int or one per sample; None: all). The rest are
      replaced by the nested-dropout mask token; changing it does not recompile.
    steps: Euler steps. guidance_scale: CFG scale (1 = off); apg switches to adaptive projected
      guidance with eta / momentum / norm_threshold.
    rng: jax key or int seed (None: seed 0); chunk c draws from fold_in(rng, c).
    noise: the initial flow noise [B, t, h, w, C] (or [t, h, w, C]) of a one-chunk clip, or one
      `ChunkDraws` per chunk (noise and the conditioning encodes' posterior eps).
    conditioning_frames: [F, H, W, 3] or [B, F, H, W, 3] pixel frames (F = 1 + 4j) the first
      frames are conditioned on (re-tokenized, clean latents clamped).
    frame_size: (H, W) to render (default: the model's).
    """
    ids = np.asarray(ids)
    batched = ids.ndim == 3
    if ids.ndim not in (2, 3):
      raise ValueError(f"ids: expected [T', N] or [B, T', N], got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"ids: expected integer token ids, got dtype {ids.dtype}")
    ids = ids if batched else ids[None]
    draws = None
    if noise is not None:
      if isinstance(noise, (list, tuple)):
        draws = list(noise)
      else:
        n = jnp.asarray(noise, jnp.float32)
        draws = [ChunkDraws(noise=n if n.ndim == 5 else n[None])]
    cond = None
    if conditioning_frames is not None:
      cond, cond_batched = _as_video(conditioning_frames)
      if cond_batched != batched:
        raise ValueError("conditioning_frames must be batched exactly when ids are")
    guidance = flow.Guidance(scale=float(guidance_scale), apg=bool(apg), eta=float(eta),
                             momentum=float(momentum), norm_threshold=float(norm_threshold))
    video = self.runner.detokenize(
        self.params, ids, latent_hw=self.latent_hw(frame_size), keep_k=keep_k,
        steps=int(steps), guidance=guidance, rng=_key(rng), draws=draws,
        conditioning_frames=cond, progress=progress)
    return video if batched else video[0]


def _get(obj, name: str, default=None):
  if obj is None:
    return default
  if isinstance(obj, dict):
    return obj.get(name, default)
  return getattr(obj, name, default)


def _as_video(video) -> tuple[np.ndarray | jax.Array, bool]:
  """-> (float32 [B, T, H, W, 3] in [-1, 1], whether the input was batched). Host arrays stay
  on the host (the chunked driver sends one chunk at a time to the device)."""
  x = video if isinstance(video, jax.Array) else np.asarray(video)
  if x.ndim not in (4, 5) or x.shape[-1] != 3:
    raise ValueError(f"video: expected [T, H, W, 3] or [B, T, H, W, 3], got shape "
                     f"{tuple(x.shape)}")
  batched = x.ndim == 5
  if x.dtype == np.uint8:
    x = np.asarray(x, np.float32) / 127.5 - 1.0
  x = x.astype(jnp.float32) if isinstance(x, jax.Array) else np.asarray(x, np.float32)
  return (x if batched else x[None]), batched
