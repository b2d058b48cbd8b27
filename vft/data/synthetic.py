"""Procedural synthetic videos: a deterministic, numpy-only source of clips with real motion.

A scene = a background (solid, gradient, stripes, checker or smooth noise) plus 1-4 objects
(disc, rectangle, triangle, ring) with their own colour/texture (solid, stripes, checker,
radial gradient). Each object moves linearly and bounces off the scene borders, and may rotate
and pulse in size; later objects occlude earlier ones. Optionally the camera pans (the whole
scene, background included, translates) and the brightness ramps. Shapes are drawn from signed
distances, which gives one pixel of anti-aliasing for free.

Everything is evaluated on [T, H, W] coordinate grids at once: about 5 ms per 17x64x64 clip.
"""
from __future__ import annotations

from typing import Iterable

import math

import numpy as np

_SHAPES = ("disc", "rect", "triangle", "ring")
_TEXTURES = ("solid", "solid", "stripes", "checker", "radial")
_BACKGROUNDS = ("solid", "gradient", "stripes", "checker", "noise")


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
  """A random RGB colour in [0, 1]^3, at some distance from `avoid` when given."""
  for _ in range(8):
    c = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    if avoid is None or np.abs(c - avoid).sum() > 0.6:
      break
  return c


def _mix(c0: np.ndarray, c1: np.ndarray, m: np.ndarray) -> np.ndarray:
  """m [T, H, W] in [0, 1] -> colours [T, H, W, 3] blending c0 (m=0) and c1 (m=1)."""
  return c0 + (c1 - c0) * m[..., None]


def _pattern(rng: np.random.Generator, kind: str, u: np.ndarray, v: np.ndarray,
             scale: float) -> np.ndarray:
  """A [0, 1] pattern over coordinates u, v (pixels); `scale` ~ the region size in pixels."""
  a = rng.uniform(0, np.pi)
  ru = u * math.cos(a) + v * math.sin(a)
  rv = -u * math.sin(a) + v * math.cos(a)
  if kind == "stripes":
    period = rng.uniform(0.15, 0.5) * scale
    return 0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * np.pi * ru / period))
  if kind == "checker":
    cell = rng.uniform(0.08, 0.3) * scale
    return ((np.floor(ru / cell) + np.floor(rv / cell)) % 2).astype(np.float32)
  if kind == "gradient":
    return np.clip(ru / (1.4 * scale) + 0.5, 0.0, 1.0)
  if kind == "noise":  # smooth noise: a sum of random plane waves
    n = np.zeros_like(u)
    for _ in range(6):
      f = rng.uniform(1.0, 6.0) / scale
      b = rng.uniform(0, 2 * np.pi)
      n += np.sin(2 * np.pi * f * (u * math.cos(b) + v * math.sin(b)) + rng.uniform(0, 2 * np.pi))
    return np.clip(0.5 + n / 6.0, 0.0, 1.0)
  raise ValueError(f"synthetic: unknown pattern {kind!r}")


def _bounce(p0: float, v: float, lo: float, hi: float, t: np.ndarray) -> np.ndarray:
  """Position of a point moving at speed v inside [lo, hi], reflecting at the walls. [T]."""
  length = max(hi - lo, 1e-3)
  u = np.mod(p0 - lo + v * t, 2 * length)
  return lo + length - np.abs(u - length)


def _object_sdf(shape: str, ux: np.ndarray, uy: np.ndarray, r: float, aspect: float) -> np.ndarray:
  """Signed distance (object units, < 0 inside) of a shape of size r centred at the origin."""
  if shape == "disc":
    return np.sqrt(ux * ux + uy * uy) - r
  if shape == "ring":
    return np.abs(np.sqrt(ux * ux + uy * uy) - 0.75 * r) - 0.25 * r
  if shape == "rect":
    return np.maximum(np.abs(ux) - r, np.abs(uy) - r * aspect)
  if shape == "triangle":  # equilateral, circumradius r: inside all 3 half-planes at inradius r/2
    d = None
    for k in range(3):
      ang = np.pi / 2 + 2 * np.pi * k / 3
      dk = ux * math.cos(ang) + uy * math.sin(ang)
      d = dk if d is None else np.maximum(d, dk)
    return d - 0.5 * r
  raise ValueError(f"synthetic: unknown shape {shape!r}")


def _draw_object(rng: np.random.Generator, img: np.ndarray, x: np.ndarray, y: np.ndarray,
                 t: np.ndarray, size: int, bg_colour: np.ndarray, must_move: bool) -> np.ndarray:
  """Composites one random moving object over img [T, H, W, 3]; x, y: world coords [T, H, W]."""
  shape = _SHAPES[rng.integers(len(_SHAPES))]
  r = rng.uniform(0.08, 0.22) * size
  aspect = rng.uniform(0.4, 1.0)
  speed = rng.uniform(0.3 if must_move else 0.0, 2.5) * size / 64
  heading = rng.uniform(0, 2 * np.pi)
  cx = _bounce(rng.uniform(r, size - r), speed * math.cos(heading), r, size - r, t)
  cy = _bounce(rng.uniform(r, size - r), speed * math.sin(heading), r, size - r, t)
  theta = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.15, 0.15) * t * (rng.random() < 0.6)
  pulse = rng.uniform(0.0, 0.25) * (rng.random() < 0.4)
  scale = 1.0 + pulse * np.sin(2 * np.pi * t / rng.uniform(6, 20) + rng.uniform(0, 2 * np.pi))
  cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
  s = scale[:, None, None]
  dx, dy = x - cx[:, None, None], y - cy[:, None, None]
  ux = (cos * dx + sin * dy) / s
  uy = (-sin * dx + cos * dy) / s
  alpha = np.clip(0.5 - _object_sdf(shape, ux, uy, r, aspect) * s, 0.0, 1.0)
  c0 = _colour(rng, bg_colour)
  texture = _TEXTURES[rng.integers(len(_TEXTURES))]
  if texture == "solid":
    colour = c0
  elif texture == "radial":
    colour = _mix(c0, _colour(rng, c0), np.clip(np.sqrt(ux * ux + uy * uy) / r, 0.0, 1.0))
  else:
    colour = _mix(c0, _colour(rng, c0), _pattern(rng, texture, ux, uy, 2 * r))
  a = alpha[..., None]
  return img * (1.0 - a) + colour * a


def make_video(seed: int, num_frames: int = 17, size: int = 64) -> np.ndarray:
  """A deterministic procedural clip: uint8 [num_frames, size, size, 3]. Same seed, same video."""
  if num_frames < 1 or size < 8:
    raise ValueError(f"make_video: need num_frames >= 1 and size >= 8, got {num_frames}, {size}")
  rng = np.random.default_rng(seed)
  t = np.arange(num_frames, dtype=np.float32)
  pan = rng.uniform(-1.5, 1.5, 2) * size / 64 if rng.random() < 0.4 else np.zeros(2)
  pan = pan.astype(np.float32)  # pixels per frame
  grid = np.arange(size, dtype=np.float32) + 0.5
  x = grid[None, None, :] + (pan[0] * t)[:, None, None] + np.zeros((1, size, 1), np.float32)
  y = grid[None, :, None] + (pan[1] * t)[:, None, None] + np.zeros((1, 1, size), np.float32)

  kind = _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))]
  c0, c1 = _colour(rng), _colour(rng)
  if kind == "solid":
    img = np.broadcast_to(c0, x.shape + (3,)).astype(np.float32)
  else:
    img = _mix(c0, c1, _pattern(rng, kind, x - size / 2, y - size / 2, size))
  bg_colour = c0 if kind == "solid" else (c0 + c1) / 2

  for i in range(int(rng.integers(1, 5))):
    img = _draw_object(rng, img, x, y, t, size, bg_colour, must_move=(i == 0))

  if rng.random() < 0.3:  # brightness ramp, up or down
    gain = 1.0 + rng.uniform(-0.4, 0.4) * t / max(num_frames - 1, 1)
    img = img * gain[:, None, None, None]
  return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_videos(seeds: Iterable[int], num_frames: int = 17, size: int = 64) -> np.ndarray:
  """Stacked make_video clips: uint8 [len(seeds), num_frames, size, size, 3]."""
  return np.stack([make_video(int(s), num_frames, size) for s in seeds])


# Class-labelled clips (the demo's data): one large solid shape of a named colour moving in one of
# a few ways over a smooth two-colour gradient. label = shape index * len(MOTIONS) + motion index.
CLASS_SHAPES = ("disc", "square", "triangle", "ring")
MOTIONS = ("horizontal", "vertical", "diagonal")
LABEL_NAMES = tuple(f"{s} {m}" for s in CLASS_SHAPES for m in MOTIONS)
_PALETTE = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.25, 0.9),
    "yellow": (0.95, 0.9, 0.1), "cyan": (0.1, 0.85, 0.9), "magenta": (0.9, 0.15, 0.8),
    "orange": (1.0, 0.55, 0.05), "purple": (0.5, 0.15, 0.7), "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
}
_MOTION_TEXT = {"horizontal": "left and right", "vertical": "up and down",
                "diagonal": "diagonally"}


def make_class_video(seed: int, num_frames: int = 17,
                     size: int = 64) -> tuple[np.ndarray, int, str]:
  """A deterministic labelled clip: (uint8 [num_frames, size, size, 3], label in
  [0, len(LABEL_NAMES)), caption such as "a red disc moving left and right on a blue-to-white
  background"). Same seed, same clip."""
  if num_frames < 1 or size < 8:
    raise ValueError(f"make_class_video: need num_frames >= 1 and size >= 8, got {num_frames}, "
                     f"{size}")
  rng = np.random.default_rng(seed)
  label = int(rng.integers(len(LABEL_NAMES)))
  shape, motion = CLASS_SHAPES[label // len(MOTIONS)], MOTIONS[label % len(MOTIONS)]
  names = list(_PALETTE)
  fg, bg0, bg1 = (names[i] for i in rng.choice(len(names), 3, replace=False))
  colour = lambda n: np.asarray(_PALETTE[n], np.float32)  # noqa: E731
  t = np.arange(num_frames, dtype=np.float32)
  grid = np.arange(size, dtype=np.float32) + 0.5
  y, x = np.meshgrid(grid, grid, indexing="ij")
  a = rng.uniform(0, 2 * np.pi)
  ramp = np.clip(((x - size / 2) * math.cos(a) + (y - size / 2) * math.sin(a)) / size + 0.5, 0, 1)
  img = np.broadcast_to(_mix(colour(bg0), colour(bg1), ramp)[None],
                        (num_frames, size, size, 3))
  r = rng.uniform(0.2, 0.3) * size
  speed = rng.uniform(1.5, 3.0) * size / 64 * rng.choice([-1.0, 1.0])
  vx, vy = {"horizontal": (speed, 0.0), "vertical": (0.0, speed),
            "diagonal": (speed * 0.7, speed * 0.7 * rng.choice([-1.0, 1.0]))}[motion]
  cx = _bounce(rng.uniform(r, size - r), vx, r, size - r, t)[:, None, None]
  cy = _bounce(rng.uniform(r, size - r), vy, r, size - r, t)[:, None, None]
  sdf_shape = "rect" if shape == "square" else shape
  alpha = np.clip(0.5 - _object_sdf(sdf_shape, x[None] - cx, y[None] - cy, r, 1.0), 0.0, 1.0)
  img = img * (1.0 - alpha[..., None]) + colour(fg) * alpha[..., None]
  article = "an" if fg[0] in "aeiou" else "a"
  caption = f"{article} {fg} {shape} moving {_MOTION_TEXT[motion]} on a {bg0}-to-{bg1} background"
  return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), label, caption
