"""Class-/text-to-video generation: AR token sampling -> flow decoder at budget K -> pixels.

    gen = Generator(ar_model, ar_params, tokenizer, num_frames=5, num_registers=16)
    ids = gen.sample_ids(budget=4, labels=[3, 7], settings=SampleSettings(cfg_scale=3.0))
    video = gen.render(ids)            # uint8 [2, T, H, W, 3]

The AR model emits K tokens per latent frame (time-first: K x T' tokens, then it stops); the
tokenizer's decoder renders them with keep_k = K (the ids past K are padding the decoder never
sees: its nested-dropout mask replaces them). Every draw is keyed: chunk c of a request samples
with fold_in(key(seed), c), and renders with fold_in(key(seed + 1), c).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vft.ar import sample as sample_lib
from vft.inference.cli import to_uint8


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """How tokens are drawn and rendered; recorded next to every generated result (gFVD moves
  with each of these)."""
  cfg_scale: float | None = 3.0   # AR classifier-free guidance (None: plain conditional)
  temperature: float = 1.0        # 0: greedy
  top_k: int = 0                  # 0: off
  top_p: float = 1.0              # 1: off
  seed: int = 0
  flow_steps: int = 25            # Euler steps of the flow decoder
  flow_guidance: float = 1.0      # the flow decoder's CFG scale (1 = off)
  batch_size: int = 8             # samples per AR / decoder call

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class Generator:
  """An AR model over a tokenizer's ids, and that tokenizer's decoder.

  Args:
    model, params: the AR transformer (`vft.models.ar.ARTransformer`) and its parameters (the
      "params" collection, as `vft.train.ar_task.load_ar` returns them).
    tokenizer: a `vft.api.VideoTokenizer` (its decoder renders the ids).
    num_frames: latent frames T' per clip of the token dataset the AR model was trained on.
    num_registers: tokens per latent frame N of the tokenizer (the largest budget).
    order: the AR model's sequence order (`vft.ar.order`).
  """

  def __init__(self, model, params, tokenizer, *, num_frames: int, num_registers: int,
               order: str = "time_first"):
    self.model, self.params, self.tokenizer = model, params, tokenizer
    self.num_frames, self.num_registers, self.order = int(num_frames), int(num_registers), order
    if tokenizer is not None and tokenizer.num_registers != self.num_registers:
      raise ValueError(f"the AR model's token dataset has {num_registers} tokens per latent "
                       f"frame, the tokenizer {tokenizer.num_registers}")
    cfg = model.cfg
    if self.num_frames * self.num_registers > cfg.max_len:
      # The largest budget that fits (a model trained on the first K tokens of every frame).
      self.max_budget = cfg.max_len // self.num_frames
    else:
      self.max_budget = self.num_registers

  @property
  def num_classes(self) -> int:
    return int(self.model.cfg.num_classes)

  def check_budget(self, budget: int) -> int:
    budget = int(budget)
    if not 1 <= budget <= self.max_budget:
      raise ValueError(f"budget {budget}: expected 1..{self.max_budget} tokens per latent frame "
                       f"(the AR model's max_len {self.model.cfg.max_len} over "
                       f"{self.num_frames} latent frames)")
    return budget

  def check_labels(self, labels: Sequence[int]) -> np.ndarray:
    labels = np.asarray(labels, np.int32).reshape(-1)
    if self.num_classes <= 0:
      raise ValueError("class labels given, but the AR model is not class-conditional "
                       "(config.model.num_classes = 0)")
    bad = labels[(labels < 0) | (labels >= self.num_classes)]
    if bad.size:
      raise ValueError(f"class labels {sorted(set(bad.tolist()))} outside "
                       f"0..{self.num_classes - 1}")
    return labels

  def sample_ids(self, budget: int, *, labels: Sequence[int] | None = None,
                 text: np.ndarray | None = None, text_mask: np.ndarray | None = None,
                 num: int | None = None, settings: SampleSettings = SampleSettings()
                 ) -> np.ndarray:
    """-> int32 ids [S, T', budget]. S = len(labels), len(text) or `num` (unconditional)."""
    budget = self.check_budget(budget)
    conditional = labels is not None or text is not None
    if labels is not None:
      labels = self.check_labels(labels)
      total = len(labels)
    elif text is not None:
      total = len(text)
      if text_mask is None:
        text_mask = np.ones(np.shape(text)[:2], bool)
    elif num is not None:
      total = int(num)
      if self.num_classes > 0:  # the learned null class = unconditional
        labels = np.full((total,), self.num_classes, np.int32)
    else:
      raise ValueError("sample_ids: give labels, text or num")
    cfg_scale = settings.cfg_scale if conditional else None
    key = jax.random.key(int(settings.seed))
    bs = int(settings.batch_size)
    out = []
    for c, start in enumerate(range(0, total, bs)):
      sl = slice(start, min(start + bs, total))
      n = sl.stop - sl.start
      ids = sample_lib.sample(
          self.model, {"params": self.params}, batch=n, num_frames=self.num_frames, budget=budget,
          max_budget=self.max_budget,
          label=None if labels is None else jnp.asarray(labels[sl]),
          text=None if text is None else jnp.asarray(text[sl], jnp.float32),
          text_mask=None if text_mask is None else jnp.asarray(text_mask[sl]),
          cfg_scale=cfg_scale, temperature=settings.temperature, top_k=settings.top_k,
          top_p=settings.top_p, rng=jax.random.fold_in(key, c), order=self.order)
      out.append(np.asarray(ids))
    return np.concatenate(out).astype(np.int32)

  def render(self, ids: np.ndarray, settings: SampleSettings = SampleSettings()) -> np.ndarray:
    """ids [S, T', K] -> uint8 video [S, T, H, W, 3], decoded with keep_k = K."""
    ids = np.asarray(ids, np.int32)
    if ids.ndim != 3 or ids.shape[1] != self.num_frames:
      raise ValueError(f"render: expected ids [S, {self.num_frames}, K], got {ids.shape}")
    k = self.check_budget(ids.shape[2])
    full = np.zeros((*ids.shape[:2], self.num_registers), np.int32)
    full[..., :k] = ids  # the rest is masked by keep_k
    key = jax.random.key(int(settings.seed) + 1)
    bs = int(settings.batch_size)
    out = []
    for c, start in enumerate(range(0, len(full), bs)):
      video = self.tokenizer.detokenize(
          full[start:start + bs], keep_k=k, steps=int(settings.flow_steps),
          guidance_scale=float(settings.flow_guidance), rng=jax.random.fold_in(key, c))
      out.append(to_uint8(video))
    return np.concatenate(out)

  def generate(self, budget: int, *, settings: SampleSettings = SampleSettings(),
               **condition) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids [S, T', K], uint8 video [S, T, H, W, 3]); condition as `sample_ids`."""
    ids = self.sample_ids(budget, settings=settings, **condition)
    return ids, self.render(ids, settings)
