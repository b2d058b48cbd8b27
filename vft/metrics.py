"""Metric writers (TensorBoard + log) on process 0 and progress reporting."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any

from etils import epath
import jax
import numpy as np
from clu import metric_writers, periodic_actions

from vft import files

SYNC_EVERY_SECS = 60.0


class _MirroredWriter(metric_writers.MultiWriter):
  """Writes TensorBoard events into a local folder and mirrors its files to `logdir` (gs://...)
  on flush/close and at most every SYNC_EVERY_SECS after a write. Each sync uploads whole event
  files, as TF's own GCS file system does on flush; the local writer needs no GCS client (so
  the same code runs against a real bucket and the test emulator)."""

  def __init__(self, logdir: str):
    self._local = tempfile.mkdtemp(prefix="vft-events-")
    self._remote = epath.Path(logdir)
    self._last_sync = time.monotonic()
    super().__init__([metric_writers.create_default_writer(self._local, asynchronous=True)])

  def _sync(self) -> None:
    for root, _, names in os.walk(self._local):
      for name in names:
        src = os.path.join(root, name)
        dst = self._remote / os.path.relpath(src, self._local)
        dst.parent.mkdir(parents=True, exist_ok=True)
        epath.Path(src).copy(dst, overwrite=True)
    self._last_sync = time.monotonic()

  def _maybe_sync(self) -> None:
    if time.monotonic() - self._last_sync > SYNC_EVERY_SECS:
      self.flush()

  def write_scalars(self, step, scalars):
    super().write_scalars(step, scalars)
    self._maybe_sync()

  def write_images(self, step, images):
    super().write_images(step, images)
    self._maybe_sync()

  def flush(self):
    super().flush()
    self._sync()

  def close(self):
    super().close()
    self._sync()
    shutil.rmtree(self._local, ignore_errors=True)


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard + logging writer on process 0; other processes get a no-op logging writer.
  A gs:// `workdir` gets its events through a local folder mirrored there (_MirroredWriter)."""
  if jax.process_index() == 0 and not files.is_local(workdir):
    return _MirroredWriter(os.fspath(workdir))
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=True)


def create_progress(total_steps: int, writer) -> list:
  """clu ReportProgress (steps/s, ETA) on process 0."""
  if jax.process_index() > 0:
    return []
  return [periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                          every_secs=30.0)]


def to_scalars(metrics: dict[str, Any]) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in metrics.items()}


def log(msg: str, *args) -> None:
  if jax.process_index() == 0:
    logging.info(msg, *args)
