"""Video-text alignment scorers for `vft eval-gen --text_scorer=SPEC`.

  clip:PATH       a local Hugging Face CLIP folder (`FlaxCLIPModel` weights + its tokenizer):
                  frame-averaged CLIPScore, the cosine similarity between the prompt's text
                  embedding and the normalised mean of the normalised image embeddings of
                  `num_frames` frames taken uniformly from the clip. (The paper scores with
                  ViCLIP, which has no transformers port; a ViCLIP wrapper plugs in as below.)
  module:factory  any importable factory returning fn(videos, prompts) -> scores [S]

A scorer is fn(videos uint8 [S, T, H, W, 3], prompts: list of S str) -> float scores [S].
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vft.eval.resize import center_crop

# OpenAI CLIP's pixel normalisation (what CLIPImageProcessor defaults to).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _normalise(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ClipScorer:
  """Frame-averaged CLIPScore from a local HF CLIP folder; see the module doc.

  Frames: the largest centred square, resized (bilinear, antialiased) to the model's
  `image_size`, normalised with the folder's `preprocessor_config.json` mean/std (CLIP's
  defaults without one). Scores lie in [-1, 1] (no 100x / clipping at 0 as in CLIPScore).
  """

  def __init__(self, path: str | os.PathLike, num_frames: int = 8, batch_size: int = 32):
    from transformers import AutoTokenizer, FlaxCLIPModel
    path = os.fspath(path)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"text scorer clip:{path}: not a directory (a Hugging Face CLIP "
                              "folder with config.json, flax_model.msgpack or model.safetensors "
                              "and the tokenizer files)")
    self.model = FlaxCLIPModel.from_pretrained(path)
    self.tokenizer = AutoTokenizer.from_pretrained(path)
    self.num_frames, self.batch_size = int(num_frames), int(batch_size)
    self.image_size = int(self.model.config.vision_config.image_size)
    self.max_len = int(self.model.config.text_config.max_position_embeddings)
    mean, std = CLIP_MEAN, CLIP_STD
    pre = os.path.join(path, "preprocessor_config.json")
    if os.path.exists(pre):
      with open(pre) as f:
        p = json.load(f)
      mean, std = p.get("image_mean", mean), p.get("image_std", std)
    self.mean = jnp.asarray(mean, jnp.float32)
    self.std = jnp.asarray(std, jnp.float32)
    self._image = jax.jit(lambda params, px: _normalise(
        self.model.get_image_features(pixel_values=px, params=params)))
    self._text = jax.jit(lambda params, ids, mask: _normalise(
        self.model.get_text_features(input_ids=ids, attention_mask=mask, params=params)))

  def pixels(self, frames: np.ndarray) -> jax.Array:
    """uint8 frames [n, H, W, 3] -> CLIP pixel_values [n, 3, S, S] (channels first)."""
    x = jnp.asarray(center_crop(np.asarray(frames)), jnp.float32) / 255.0
    s = self.image_size
    x = jax.image.resize(x, (x.shape[0], s, s, 3), "bilinear", antialias=True)
    return jnp.transpose((x - self.mean) / self.std, (0, 3, 1, 2))

  def video_embeddings(self, videos: np.ndarray) -> np.ndarray:
    """uint8 [S, T, H, W, 3] -> unit-norm [S, E]: the mean of `num_frames` frame embeddings."""
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
      raise ValueError(f"text scorer: videos must be uint8 [S, T, H, W, 3], got "
                       f"{videos.dtype} {videos.shape}")
    t = videos.shape[1]
    idx = np.linspace(0, t - 1, min(self.num_frames, t)).round().astype(int)
    frames = videos[:, idx].reshape(-1, *videos.shape[2:])
    emb = np.concatenate([np.asarray(self._image(self.model.params,
                                                 self.pixels(frames[i:i + self.batch_size])))
                          for i in range(0, len(frames), self.batch_size)])
    emb = emb.reshape(videos.shape[0], len(idx), -1).mean(axis=1)
    return np.asarray(_normalise(jnp.asarray(emb)))

  def text_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
    """S prompts -> unit-norm [S, E]."""
    tok = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                         max_length=self.max_len, return_tensors="np")
    return np.asarray(self._text(self.model.params, tok["input_ids"], tok["attention_mask"]))

  def __call__(self, videos: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    if len(prompts) != len(videos):
      raise ValueError(f"text scorer: {len(videos)} videos but {len(prompts)} prompts")
    v, t = self.video_embeddings(videos), self.text_embeddings(prompts)
    return np.sum(v * t, axis=-1).astype(np.float64)


def load_text_scorer(spec: str) -> Callable:
  """`clip:PATH` or `module:factory` (see the module doc) -> fn(videos, prompts) -> [S]."""
  kind, sep, rest = spec.partition(":")
  if not sep or not rest:
    raise ValueError(f"text scorer {spec!r}: expected 'clip:PATH' or 'module:factory'")
  if kind == "clip":
    return ClipScorer(rest)
  return getattr(importlib.import_module(kind), rest)()
