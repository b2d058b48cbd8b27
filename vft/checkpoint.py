"""Orbax checkpoints holding the train state and the data-iterator state together.

Layout: <workdir>/checkpoints/<step>/{state, data}. Saves are asynchronous (config) with a
keep-N policy; restore re-creates the state in the sharding of the abstract target, so a run can
resume on a different mesh. `directory` is any etils.epath path (local or gs://).
"""
from __future__ import annotations

from typing import Any

from etils import epath
import grain
import jax
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
    jax.ShapeDtypeStruct); restores `data_iter` in place. -> (step, state)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
    items = {"state": ocp.args.StandardRestore(target)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return step, restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
