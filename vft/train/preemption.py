"""Preemption: a SIGTERM makes training save at a step boundary every process agrees on, then stop.

How a run learns of it (chosen once, when `PreemptionWatch` starts):
- "sync_manager": `jax.distributed` is initialised (`vft ... --distributed`) with the preemption
  service on (jax's default). jax's preemption sync manager owns SIGTERM (a C++ handler, so no
  Python handler may replace it); `CheckpointManager.reached_preemption(step)` is a local check at
  every step boundary (no host sync), and every process gets True at the same step: one after the
  fastest process's step when the notice reached the coordinator (about 1 s after the signal: the
  notifier polls once a second).
- "signal": one process without jax.distributed. A Python SIGTERM handler sets a flag that the next
  step boundary reads.
- "allgather": several processes without the sync manager (preemption service disabled). The same
  handler, plus every `sync_every` steps an all-gather of the flags (a host sync, about 1 ms on
  2 CPU processes, but it also waits for the step in flight), so all processes save the same step.
The run then raises `Preempted`, a SystemExit with status 143 (128 + SIGTERM, what an unhandled
SIGTERM gives), which schedulers treat as a termination to retry.
"""
from __future__ import annotations

import signal

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

EXIT_CODE = 143  # 128 + SIGTERM


class Preempted(SystemExit):
  """Raised by `Trainer.run` after the preemption checkpoint `step` is on disk."""

  def __init__(self, step: int, directory: str):
    super().__init__(EXIT_CODE)
    self.step, self.directory = step, directory

  def __str__(self) -> str:
    return (f"preempted: saved checkpoint step {self.step} in {self.directory}; exit status "
            f"{EXIT_CODE} (rerun the same command to resume)")


class PreemptionWatch:
  """Answers, at each step boundary, whether the run must save and stop for a preemption.

  `reached(step)` must be called by every process at every step boundary, with consecutive steps
  (the sync manager's protocol picks the step after the largest one reported). `close()` restores
  the previous SIGTERM handler.
  """

  def __init__(self, manager, start_step: int, sync_every: int = 10):
    if int(sync_every) < 1:
      raise ValueError(f"config.checkpoint.preemption_sync_every={sync_every}: expected >= 1")
    self._manager, self._sync_every = manager, int(sync_every)
    self._received, self._previous = False, None
    self.mode = "sync_manager" if _has_sync_manager(start_step) else None
    if self.mode is None:
      self.mode = "signal" if jax.process_count() == 1 else "allgather"
      try:
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      except ValueError:  # not the main thread: signals cannot be caught here
        self.mode = "off"
        logging.warning("Preemption handling is off: Trainer.run is not on the main thread.")
    logging.info("Preemption watch: %s (a SIGTERM saves a checkpoint and exits %d)", self.mode,
                 EXIT_CODE)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._received = True
    logging.warning("SIGTERM received: saving a checkpoint at the next agreed step boundary.")

  def reached(self, step: int) -> bool:
    if self.mode == "sync_manager":
      return self._manager.reached_preemption(step)
    if self.mode == "allgather":
      if step % self._sync_every:
        return False
      return bool(np.any(multihost_utils.process_allgather(np.asarray(self._received))))
    return self._received

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def _has_sync_manager(step: int) -> bool:
  """Whether jax's preemption sync manager runs here; registers `step` with it if so."""
  if not jax.distributed.is_initialized():
    return False
  try:
    multihost_utils.reached_preemption_sync_point(step)
  except RuntimeError:  # jax_enable_preemption_service was off at jax.distributed.initialize
    return False
  return True
