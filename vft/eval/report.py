"""Evaluation artifacts: budget comparison grids, videos, curves, metrics JSON.

Host-side only (numpy, Pillow, matplotlib's Agg canvas, PyAV, imageio); nothing
here touches JAX. Every writer goes through `vft.files.atomic_path` (any
etils.epath destination, gs:// included), so a reader never sees a
half-written file.
"""
from __future__ import annotations

import fractions
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vft import files

# ----------------------------------------------------------------------------
# Budget grid.

_WHITE = 255
_MIN_FONT_SIZE = 6


def _font_size(cell_width: int) -> int:
  """Label font size in pixels for a column `cell_width` pixels wide."""
  return int(np.clip(round(cell_width / 6), 10, 28))


def header_height(cell_width: int) -> int:
  """Height in pixels of the label strip that `budget_grid` puts on top."""
  size = _font_size(cell_width)
  return math.ceil(1.4 * size) + 4


def _load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  """Pillow's built-in font at `size` px; needs no font files on disk.

  Pillow >= 10.1 with FreeType embeds a scalable font; otherwise fall back to
  its fixed-size bitmap font (about 11 px tall).
  """
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, ImportError, OSError):
    return ImageFont.load_default()


def _draw_centered(draw: ImageDraw.ImageDraw, text: str, box_x: int, box_w: int,
                   box_h: int, size: int) -> None:
  """Draws `text` centred in the box [box_x, box_x + box_w) x [0, box_h).

  Shrinks the font, then drops trailing characters, until the text fits.
  """
  font = _load_font(size)
  while True:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    if right - left <= box_w or not text:
      break
    if size > _MIN_FONT_SIZE:
      size -= 1
      font = _load_font(size)
    else:
      text = text[:-1]
  x = box_x + (box_w - (right - left)) / 2 - left
  y = (box_h - (bottom - top)) / 2 - top
  draw.text((x, y), text, fill=(0, 0, 0), font=font)


def _check_uint8_video(x: Any, name: str, layout: str) -> np.ndarray:
  """Returns `x` as uint8 with the given layout ("[n, T, H, W, 3]" or "[T, H, W, 3]") and no
  empty axis, or raises ValueError naming it."""
  x = np.asarray(x)
  if x.dtype != np.uint8 or x.ndim != layout.count(",") + 1 or x.shape[-1] != 3:
    raise ValueError(f"{name} must be uint8 {layout}; got dtype {x.dtype}, shape {x.shape}")
  if 0 in x.shape:
    raise ValueError(f"{name} must not have an empty axis; got shape {x.shape}")
  return x


def budget_grid(originals: np.ndarray, recons: Sequence[np.ndarray], *,
                pad: int = 2, labels: Sequence[str] | None = None) -> np.ndarray:
  """Tiles clips into one video: rows = clips, columns = original + budgets.

  Layout (k = len(recons), hh = header_height(W)):
    H' = hh + pad + n * (H + pad),   W' = pad + (k + 1) * (W + pad).
  A white strip of height hh on top holds the column labels; cells are
  separated (and surrounded) by `pad` white pixels. The cell of clip i and
  column j (0 = original, j = budget j) starts at
    y = hh + pad + i * (H + pad),   x = pad + j * (W + pad)
  and holds the input pixels unchanged.

  Args:
    originals: uint8 `[n, T, H, W, 3]`.
    recons: one uint8 `[n, T, H, W, 3]` per budget, same shape as originals.
    pad: separator width in pixels, >= 0.
    labels: k + 1 column labels, or k budget labels ("orig" is then prepended).
      Default: "orig", "#1", ..., "#k".
  Returns:
    uint8 `[T, H', W', 3]`.
  """
  originals = _check_uint8_video(originals, "originals", "[n, T, H, W, 3]")
  recons = [_check_uint8_video(r, f"recons[{j}]", "[n, T, H, W, 3]")
            for j, r in enumerate(recons)]
  for j, r in enumerate(recons):
    if r.shape != originals.shape:
      raise ValueError(
          f"recons[{j}] must have the shape of originals {originals.shape}; "
          f"got {r.shape}")
  if not isinstance(pad, (int, np.integer)) or pad < 0:
    raise ValueError(f"pad must be an int >= 0; got {pad!r}")
  k = len(recons)
  if labels is None:
    labels = ["orig"] + [f"#{j + 1}" for j in range(k)]
  labels = [str(s) for s in labels]
  if len(labels) == k:
    labels = ["orig"] + labels
  if len(labels) != k + 1:
    raise ValueError(
        f"labels must have {k + 1} entries (one per column) or {k} (one per "
        f"budget); got {len(labels)}: {labels}")

  n, t, h, w, _ = originals.shape
  hh = header_height(w)
  out_h = hh + pad + n * (h + pad)
  out_w = pad + (k + 1) * (w + pad)
  grid = np.full((t, out_h, out_w, 3), _WHITE, dtype=np.uint8)

  header = Image.new("RGB", (out_w, hh), (_WHITE,) * 3)
  draw = ImageDraw.Draw(header)
  for j, label in enumerate(labels):
    _draw_centered(draw, label, pad + j * (w + pad), w, hh, _font_size(w))
  grid[:, :hh] = np.asarray(header)[None]

  for j, clips in enumerate([originals, *recons]):
    x = pad + j * (w + pad)
    for i in range(n):
      y = hh + pad + i * (h + pad)
      grid[:, y:y + h, x:x + w] = clips[i]
  return grid


# ----------------------------------------------------------------------------
# File writers.


def _check_fps(fps: float) -> fractions.Fraction:
  if not fps > 0:
    raise ValueError(f"fps must be > 0; got {fps!r}")
  return fractions.Fraction(fps).limit_denominator(1001)


def write_video(path: str | os.PathLike, frames: np.ndarray,
                fps: float = 8) -> None:
  """Writes an H.264 (libx264, yuv420p) mp4 with PyAV.

  yuv420p needs even sizes, so an odd height or width is padded by repeating
  the last row or column; the file is then (H + H % 2) x (W + W % 2).

  Args:
    path: output file, usually `*.mp4`.
    frames: uint8 `[T, H, W, 3]` RGB.
    fps: frames per second.
  """
  import av  # Local: only the writers need PyAV.

  frames = _check_uint8_video(frames, "frames", "[T, H, W, 3]")
  rate = _check_fps(fps)
  _, h, w, _ = frames.shape
  frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  with files.atomic_path(path) as tmp:
    with av.open(tmp, mode="w", format="mp4") as container:
      stream = container.add_stream("libx264", rate=rate)
      stream.width = frames.shape[2]
      stream.height = frames.shape[1]
      stream.pix_fmt = "yuv420p"
      stream.options = {"crf": "18"}
      for frame in frames:
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        container.mux(stream.encode(video_frame))
      container.mux(stream.encode())  # Flush the encoder.


def write_gif(path: str | os.PathLike, frames: np.ndarray,
              fps: float = 8) -> None:
  """Writes a looping (forever) GIF with imageio's Pillow plugin.

  Pillow merges consecutive identical frames into one longer frame, so a
  reader may see fewer frames than written; the playback time is unchanged.

  Args:
    path: output file, usually `*.gif`.
    frames: uint8 `[T, H, W, 3]` RGB.
    fps: frames per second; GIF stores per-frame delays in 1/100 s units,
      so the delay is quantised (8 fps -> 0.12 s).
  """
  import imageio.v3 as iio  # Local: only the writers need imageio.

  frames = _check_uint8_video(frames, "frames", "[T, H, W, 3]")
  _check_fps(fps)
  with files.atomic_path(path) as tmp:
    iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)


def _budget_axes(ax, budgets, ylabel: str) -> None:
  """Log2 x axis ticked at exactly the budgets, labels and a major grid."""
  from matplotlib.ticker import NullLocator
  ax.set_xscale("log", base=2)
  ax.set_xticks(budgets, labels=[str(b) for b in budgets])
  ax.xaxis.set_minor_locator(NullLocator())
  ax.set_xlabel("tokens per latent frame")
  ax.set_ylabel(ylabel)
  ax.grid(True, which="major", alpha=0.4)


def plot_budget_curve(path: str | os.PathLike, budgets: Sequence[int],
                      psnr: Sequence[float], ssim: Sequence[float], *,
                      title: str = "") -> None:
  """Saves a PNG with PSNR and SSIM against tokens per latent frame.

  Two side-by-side panels on a log2 x-axis whose ticks are the budgets.

  Args:
    path: output file, usually `*.png`.
    budgets: tokens per latent frame, positive ints, one per point.
    psnr: PSNR in dB per budget.
    ssim: SSIM per budget.
    title: figure title.
  """
  # The Figure API with an explicit Agg canvas avoids pyplot's global state
  # and works without a display whatever the configured backend is.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  budgets = _check_budgets(budgets)
  _check_aligned(budgets, psnr=psnr, ssim=ssim)
  fig = Figure(figsize=(10, 4), dpi=100)
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2)
  panels = ((axes[0], psnr, "PSNR (dB)", "tab:blue"),
            (axes[1], ssim, "SSIM", "tab:orange"))
  for ax, values, ylabel, color in panels:
    ax.plot(budgets, [float(v) for v in values], marker="o", color=color)
    _budget_axes(ax, budgets, ylabel)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png")


def _check_budgets(budgets: Sequence[int]) -> list[int]:
  budgets = list(budgets)
  if not budgets or not all(
      isinstance(b, (int, np.integer)) and b > 0 for b in budgets):
    raise ValueError(f"budgets must be a non-empty list of ints > 0; got {budgets}")
  return [int(b) for b in budgets]


def _check_aligned(budgets: list[int], **series: Sequence[float]) -> None:
  for name, values in series.items():
    if len(values) != len(budgets):
      raise ValueError(
          f"{name} must have one value per budget ({len(budgets)}: {budgets}); "
          f"got {len(values)}")


def _jsonable(x: Any, decimals: int = 4) -> Any:
  """Plain-JSON copy of `x`: floats rounded to `decimals` decimals, non-finite -> None."""
  if isinstance(x, dict):
    return {str(k): _jsonable(v, decimals) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v, decimals) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist(), decimals)
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    x = float(x)
    return round(x, decimals) if math.isfinite(x) else None
  if hasattr(x, "__array__"):  # jax arrays and other array-likes.
    return _jsonable(np.asarray(x), decimals)
  return x


_RESERVED_KEYS = ("budgets", "psnr", "ssim", "num_clips", "steps")


def write_metrics_json(path: str | os.PathLike, *, budgets: Sequence[int],
                       psnr: Sequence[float], ssim: Sequence[float],
                       num_clips: int, steps: int,
                       extra: dict[str, Any] | None = None, decimals: int = 4) -> None:
  """Writes per-budget metrics as JSON, atomically.

  Output: {"budgets": [...], "psnr": [...], "ssim": [...], "num_clips": n,
  "steps": s, **extra}. Floats (also inside `extra`) are rounded to `decimals`
  (default 4) decimals; NaN and inf become null so the file stays strict JSON.

  Args:
    path: output file, usually `*.json`.
    budgets: tokens per latent frame, positive ints.
    psnr, ssim: one value per budget.
    num_clips: number of evaluated clips.
    steps: number of sampling steps used for the reconstructions.
    extra: more top-level entries; must not reuse the keys above.
  """
  budgets = _check_budgets(budgets)
  _check_aligned(budgets, psnr=psnr, ssim=ssim)
  extra = dict(extra or {})
  clash = sorted(set(extra) & set(_RESERVED_KEYS))
  if clash:
    raise ValueError(f"extra must not contain the reserved keys {clash}")
  record = {
      "budgets": budgets,
      "psnr": _jsonable([float(v) for v in psnr], decimals),
      "ssim": _jsonable([float(v) for v in ssim], decimals),
      "num_clips": int(num_clips),
      "steps": int(steps),
      **_jsonable(extra, decimals),
  }
  write_json(path, record, decimals)


def write_json(path: str | os.PathLike, record: dict[str, Any], decimals: int = 4) -> None:
  """Writes `record` as strict JSON, atomically: floats rounded to `decimals`, non-finite ->
  null (`_jsonable`)."""
  text = json.dumps(_jsonable(record, decimals), indent=2, allow_nan=False) + "\n"
  with files.atomic_path(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)


def write_metrics_csv(path: str | os.PathLike, budgets: Sequence[int],
                      columns: dict[str, Sequence[float | None]]) -> None:
  """Writes a budget x metric table: header `budget,<metric>,...`, one row per budget; None
  (a skipped metric) is written as an empty cell."""
  budgets = _check_budgets(budgets)
  _check_aligned(budgets, **columns)
  lines = [",".join(["budget", *columns])]
  for i, b in enumerate(budgets):
    cells = [str(b)]
    for values in columns.values():
      v = values[i]
      cells.append("" if v is None or not math.isfinite(float(v)) else f"{float(v):.6g}")
    lines.append(",".join(cells))
  with files.atomic_path(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")


def plot_metric_curves(path: str | os.PathLike, budgets: Sequence[int],
                       series: dict[str, Sequence[float | None]], *, title: str = "",
                       ncols: int = 3) -> None:
  """Saves a PNG with one panel per metric against tokens per latent frame (log2 x-axis).
  Metrics whose values are all None are left out."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  budgets = _check_budgets(budgets)
  _check_aligned(budgets, **series)
  series = {k: v for k, v in series.items() if any(x is not None for x in v)}
  if not series:
    raise ValueError("plot_metric_curves: no metric has values")
  ncols = min(ncols, len(series))
  nrows = math.ceil(len(series) / ncols)
  fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), dpi=100)
  FigureCanvasAgg(fig)
  axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
  for ax, (name, values) in zip(axes, series.items()):
    ys = [float("nan") if v is None else float(v) for v in values]
    ax.plot(budgets, ys, marker="o")
    _budget_axes(ax, budgets, name)
  for ax in axes[len(series):]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png")
