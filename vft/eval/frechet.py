"""Streaming feature statistics and the Fréchet distance (FVD / FID).

`FeatureStats` accumulates the mean and covariance of feature vectors batch by batch in
float64 (Chan et al.'s pairwise update of the centred scatter matrix), so no feature needs to
be kept. `frechet_distance` is the TF-GAN symmetric form

  d^2 = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(sqrt(S1) S2 sqrt(S1))

with both square roots from `numpy.linalg.eigh` of symmetric PSD matrices (negative round-off
eigenvalues clipped to 0); this avoids `scipy.linalg.sqrtm(disp=...)`, deprecated in SciPy 1.17.
The covariance is the unbiased one (divided by n - 1), as in TF-GAN and StyleGAN-V.

Stats files (`save` / `load`) are `.npz` with `mu` [D], `sigma` [D, D], `n`, and `meta` (a JSON
string recording the preprocessing), readable with allow_pickle=False.
"""
from __future__ import annotations

import json
import os
from typing import Any

from etils import epath
import numpy as np

from vft import files


class FeatureStats:
  """Running mean / covariance of `[N, D]` features, float64.

  Args:
    dim: feature size D (default: taken from the first batch).
    meta: free-form dict recorded with the stats (preprocessing, model, frames, ...).
  """

  def __init__(self, dim: int | None = None, meta: dict[str, Any] | None = None):
    self.dim = dim
    self.meta = dict(meta or {})
    self.n = 0
    self._mean = None if dim is None else np.zeros(dim, np.float64)
    self._m2 = None if dim is None else np.zeros((dim, dim), np.float64)

  def update(self, feats) -> "FeatureStats":
    """Adds a batch `[N, D]` (any float dtype; accumulated in float64)."""
    x = np.asarray(feats, np.float64)
    if x.ndim != 2:
      raise ValueError(f"FeatureStats.update: expected features [N, D], got shape {x.shape}")
    if self.dim is None:
      self.dim = x.shape[1]
      self._mean = np.zeros(self.dim, np.float64)
      self._m2 = np.zeros((self.dim, self.dim), np.float64)
    if x.shape[1] != self.dim:
      raise ValueError(f"FeatureStats.update: expected D={self.dim}, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
      raise ValueError("FeatureStats.update: features contain NaN or inf")
    nb = x.shape[0]
    if nb == 0:
      return self
    mb = x.mean(axis=0)
    xc = x - mb
    self._combine(nb, mb, xc.T @ xc)
    return self

  def _combine(self, nb: int, mb: np.ndarray, m2b: np.ndarray) -> None:
    n = self.n + nb
    delta = mb - self._mean
    self._m2 = self._m2 + m2b + np.outer(delta, delta) * (self.n * nb / n)
    self._mean = self._mean + delta * (nb / n)
    self.n = n

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    """Adds the samples summarised by `other` (same D)."""
    if other.n == 0:
      return self
    if self.dim is None:
      self.dim = other.dim
      self._mean = np.zeros(self.dim, np.float64)
      self._m2 = np.zeros((self.dim, self.dim), np.float64)
    if other.dim != self.dim:
      raise ValueError(f"FeatureStats.merge: D {other.dim} != {self.dim}")
    self._combine(other.n, other._mean, other._m2)
    return self

  @property
  def mu(self) -> np.ndarray:
    self._need(1)
    return self._mean.copy()

  @property
  def sigma(self) -> np.ndarray:
    """Unbiased covariance `[D, D]` (needs n >= 2)."""
    self._need(2)
    return self._m2 / (self.n - 1)

  def _need(self, k: int) -> None:
    if self.n < k:
      raise ValueError(f"FeatureStats: needs at least {k} samples, has {self.n}")

  # -------------------------------------------------------------- files
  def save(self, path: str | os.PathLike) -> str:
    """Writes mu, sigma, n and meta to an .npz (atomically)."""
    path = os.fspath(path)
    with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
      np.savez(f, mu=self.mu, sigma=self.sigma, n=np.int64(self.n),
               meta=np.asarray(json.dumps(self.meta, sort_keys=True)))
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> "FeatureStats":
    path = os.fspath(path)
    try:
      with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as z:
        missing = {"mu", "sigma", "n"} - set(z.files)
        if missing:
          raise ValueError(f"missing arrays {sorted(missing)}")
        mu, sigma, n = z["mu"], z["sigma"], int(z["n"])
        meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
    except FileNotFoundError:
      raise FileNotFoundError(f"feature stats {path} not found") from None
    except ValueError as e:
      raise ValueError(f"{path}: not a feature-stats .npz ({e})") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2 or n < 2:
      raise ValueError(f"{path}: expected mu [D], sigma [D, D], n >= 2; got {mu.shape}, "
                       f"{sigma.shape}, n={n}")
    out = cls(mu.shape[0], meta)
    out.n = n
    out._mean = mu.astype(np.float64)
    out._m2 = sigma.astype(np.float64) * (n - 1)
    return out


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((s + s.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr sqrt(S1 S2) = tr sqrt(sqrt(S1) S2 sqrt(S1)) for symmetric PSD S1, S2."""
  r = _sqrt_psd(np.asarray(sigma1, np.float64))
  m = r @ np.asarray(sigma2, np.float64) @ r
  w = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or mu1.ndim != 1:
    raise ValueError(f"frechet_distance: means must be equal-length vectors, got {mu1.shape} "
                     f"and {mu2.shape}")
  d = mu1.shape[0]
  if sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f"frechet_distance: covariances must be [{d}, {d}], got {sigma1.shape} "
                     f"and {sigma2.shape}")
  diff = mu1 - mu2
  value = (diff @ diff + np.trace(sigma1) + np.trace(sigma2)
           - 2.0 * trace_sqrt_product(sigma1, sigma2))
  return float(max(value, 0.0))


def stats_distance(a: FeatureStats, b: FeatureStats) -> float:
  """Fréchet distance between two accumulated feature sets."""
  if a.dim != b.dim:
    raise ValueError(f"stats_distance: feature sizes differ ({a.dim} vs {b.dim})")
  return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
