"""`vft prep --input DIR_OR_MANIFEST --output OUT [--config=configs/prep_*.py]` (issue #4).

Flags are defined here (imported by vft/main.py before parsing); heavy imports stay inside
the functions.
"""
from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS


def standalone_requested() -> bool:
  """True when `vft prep` was called with --input (a folder, glob or manifest of videos)
  rather than as the demo-dataset step of a --config/--workdir run."""
  return bool(FLAGS["input"].present and FLAGS.input)


def prep_main(config, input_path: str, output: str | None):
  raise NotImplementedError("vft prep --input: being built (issue #4)")
