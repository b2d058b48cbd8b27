"""Metric writers (TensorBoard + log) on process 0 and progress reporting."""
from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
from clu import metric_writers, periodic_actions


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard + logging writer on process 0; other processes get a no-op logging writer."""
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
