"""Trainable / frozen parameter partitions (decoder fine-tuning freezes the encoder).

Parameter trees are nested dicts; a leaf's path is its keys joined by "/" (the same names as
`optimizer.scale_by_path`, e.g. "encoder/transformer/blocks_0/attn/wq/kernel"). A partition is a
regex over those paths (`config.train.trainable_params`; "" = everything trainable). Frozen
parameters are passed through the step untouched (no gradient is computed for them), and the
optimizer is built on the trainable subtree only, so it holds no state for frozen ones.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Callable

import optax

Predicate = Callable[[str], bool]


def trainable_predicate(cfg) -> Predicate | None:
  """From `config.train.trainable_params`; None when everything trains (stage 1)."""
  pattern = str(cfg.train.get("trainable_params", "") or "")
  if not pattern:
    return None
  try:
    rx = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"config.train.trainable_params: {pattern!r} is not a regex ({e})") from e
  return lambda path: rx.search(path) is not None


def select(tree: Mapping, pred: Predicate, prefix: str = "") -> dict:
  """The subtree of leaves whose path satisfies `pred` (empty dicts dropped). Idempotent: a
  selected subtree selects to itself, since it keeps the full paths."""
  out = {}
  for k, v in tree.items():
    path = f"{prefix}{k}"
    if isinstance(v, Mapping):
      sub = select(v, pred, path + "/")
      if sub:
        out[k] = sub
    elif pred(path):
      out[k] = v
  return out


def split(tree: Mapping, pred: Predicate) -> tuple[dict, dict]:
  """-> (trainable, frozen) subtrees; `merge` inverts it."""
  return select(tree, pred), select(tree, lambda p: not pred(p))


def merge(a: Mapping, b: Mapping) -> dict:
  """Deep union of two trees with disjoint leaves."""
  out = dict(a)
  for k, v in b.items():
    if k not in out:
      out[k] = v
    elif isinstance(out[k], Mapping) and isinstance(v, Mapping):
      out[k] = merge(out[k], v)
    else:
      raise ValueError(f"partition.merge: leaf {k!r} is in both trees")
  return out


def leaf_paths(tree: Mapping, prefix: str = "") -> list[str]:
  out = []
  for k, v in tree.items():
    path = f"{prefix}{k}"
    out.extend(leaf_paths(v, path + "/") if isinstance(v, Mapping) else [path])
  return out


def only_trainable(inner: optax.GradientTransformation,
                   pred: Predicate) -> optax.GradientTransformation:
  """`inner` restricted to the trainable subtree: `init` takes the full parameter tree (so the
  train state is created as in stage 1) and keeps state for trainable leaves only; `update`
  takes full or trainable-only trees and returns updates for the trainable subtree."""

  def init_fn(params):
    return inner.init(select(params, pred))

  def update_fn(updates, state, params=None):
    return inner.update(select(updates, pred), state,
                        None if params is None else select(params, pred))

  return optax.GradientTransformation(init_fn, update_fn)
