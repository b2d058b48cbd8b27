"""Orbax checkpoints holding the train state and the data-iterator state together.

Layout: <workdir>/checkpoints/<step>/{state, data}. Saves are asynchronous (config) with a
keep-N policy; restore re-creates the state in the sharding of the abstract target, so a run can
resume on a different mesh. `directory` is any etils.epath path (local or gs://).

Crash safety (orbax-checkpoint 0.12.8): a step is written under <step>.orbax-checkpoint-tmp and
renamed to <step> once complete (on object stores without atomic rename, a commit_success.txt
marks it instead); unfinished steps are never listed, so a save killed halfway is never resumed
from. `Checkpointer.restore_latest` also survives a finished step whose files were damaged later.
"""
from __future__ import annotations

import json
import time
from typing import Any

from absl import logging
from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from vft import files


def _read_only_manager(directory: epath.Path) -> ocp.CheckpointManager:
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoint directory {directory}")
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=False, read_only=True), item_names=("state", "data"))


def state_metadata(directory: str, step: int | None = None) -> tuple[int, dict]:
  """The saved train state's tree (leaves with .shape / .dtype; None where the state had None)
  of the checkpoint `step` (None: latest) under `directory` (<workdir>/checkpoints), read
  without restoring anything. -> (step, tree)."""
  manager = _read_only_manager(files.absolute(directory))
  try:
    steps = manager.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    step = max(steps) if step is None else int(step)
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} in {directory}; it has {steps}")
  finally:
    manager.close()
  tree = ocp.PyTreeCheckpointHandler().metadata(_state_path(directory, step))
  return step, dict(getattr(tree, "tree", tree))


def _state_path(directory: str, step: int) -> epath.Path:
  path = files.absolute(directory) / str(step) / "state"
  if not path.is_dir():
    raise FileNotFoundError(f"no train state at {path}")
  return path


def restore_state_subtree(directory: str, step: int, target: Any) -> Any:
  """Restores only the parts of a saved train state named by `target` (a nested dict such as
  {"params": {...}} of jax.ShapeDtypeStruct with shardings), straight into those shardings."""
  path = _state_path(directory, step)
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  with ocp.PyTreeCheckpointer() as ckptr:
    return ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))


def _other_count_data_state(directory: str, step: int) -> dict | None:
  """The data-iterator state of checkpoint `step` when it was written under another process
  count (grain names its files process_<i>-of-<n>.json), else None: the lowest process's file,
  as vft.data.pipeline's state is the global position, the same in every process."""
  path = epath.Path(directory) / str(step) / "data"
  if (path / f"process_{jax.process_index()}-of-{jax.process_count()}.json").exists():
    return None
  states = sorted(path.glob("process_*-of-*.json"),
                 key=lambda f: int(f.name.split("_")[1].split("-")[0]))
  if not states:
    raise FileNotFoundError(f"no data-iterator state (process_*-of-*.json) in {path}")
  return json.loads(states[0].read_text())


class Checkpointer:
  def __init__(self, directory: str, *, keep: int = 3, use_async: bool = True):
    self.directory = files.absolute(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=use_async, create=True),
        item_names=("state", "data"),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iter: Any | None = None) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state: Any, data_iter: Any | None = None, step: int | None = None):
    """Restores the state into the shardings of `abstract_state` (a tree of arrays or
    jax.ShapeDtypeStruct); restores `data_iter` in place, also from a checkpoint written under
    another process count (its global position). -> (step, state)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
    items = {"state": ocp.args.StandardRestore(target)}
    other = None if data_iter is None else _other_count_data_state(self.directory, step)
    if data_iter is not None and other is None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if other is not None:
      data_iter.set_state(other)
    return step, restored["state"]

  def restore_latest(self, abstract_state: Any, data_iter: Any | None = None):
    """`restore` of the newest readable step. A step that fails to load on any process (a
    deleted or truncated array file, ...) is logged with its error, and the next older step is
    tried; once one loads, the bad newer steps move to <directory>.corrupt/ (so their step numbers
    can be saved again). -> (step, state), or None when there is no checkpoint. Raises
    RuntimeError naming every step and error when none loads (and moves nothing)."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      return None
    bad = []
    for step in steps:
      try:
        result, error = self.restore(abstract_state, data_iter, step=step), None
      except Exception as e:  # noqa: BLE001 -- any failure to read makes the step unusable
        result, error = None, e
        logging.warning("Checkpoint step %d in %s is unreadable on process %d: %s", step,
                        self.directory, jax.process_index(), _summary(e))
      if _all_processes(error is None):
        if bad:
          logging.warning("Resuming from checkpoint step %d instead of the unreadable step(s) %s; "
                          "moving those to %s.corrupt", step, [s for s, _ in bad], self.directory)
          self._quarantine([s for s, _ in bad])
        return result
      bad.append((step, _summary(error) if error is not None else "failed on another process"))
    raise RuntimeError(f"no readable checkpoint in {self.directory}: " + "; ".join(
        f"step {s}: {e}" for s, e in bad))

  def _quarantine(self, steps: list[int]) -> None:
    """Moves the step directories `steps` to <directory>.corrupt/<step>[-<time>] (process 0)."""
    if jax.process_index() == 0:
      dest_root = self.directory.parent / f"{self.directory.name}.corrupt"
      dest_root.mkdir(parents=True, exist_ok=True)
      for step in steps:
        dest = dest_root / str(step)
        if dest.exists():
          dest = dest_root / f"{step}-{int(time.time())}"
        (epath.Path(self.directory) / str(step)).rename(dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_processes("vft_checkpoint_quarantine")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _all_processes(ok: bool) -> bool:
  """True where `ok` holds on every process (an all-gather when there are several)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _summary(error: BaseException, limit: int = 200) -> str:
  """`Type: first line` of `error` and of its causes (TensorStore errors run to pages and name
  the file only in their cause), each cut at `limit` characters."""
  parts = []
  while error is not None and len(parts) < 4:
    first = (str(error).strip().splitlines() or [""])[0]
    parts.append(f"{type(error).__name__}: {first[:limit]}")
    error = error.__cause__ or error.__context__
  return " <- caused by ".join(parts)
