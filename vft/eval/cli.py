"""`vft eval --checkpoint ...` and `vft fvd DIR_A DIR_B` (issue #5).

Flags are defined here (imported by vft/main.py before parsing); heavy imports stay inside
the functions.
"""
from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS


def standalone_requested() -> bool:
  """True when `vft eval` names a checkpoint directly (not a --config/--workdir training run)."""
  return False


def eval_main(config):
  raise NotImplementedError("vft eval --checkpoint: being built (issue #5)")


def fvd_main(args: list[str]):
  raise NotImplementedError("vft fvd: being built (issue #5)")
