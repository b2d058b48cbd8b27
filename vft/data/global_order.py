"""grain datasets that make the training stream independent of the process count (see
vft.data.pipeline): corrupt records replaced by the next readable one, each process's rows of
every global batch, and an iterator whose state is the global stream position."""
from __future__ import annotations

from typing import Any, Callable

import grain


class ReadableRecords(grain.MapDataset):
  """Element j of `parent` (decoded records, None where corrupt), a corrupt one replaced by the
  next readable element (j + 1, j + 2, ..., wrapping around at the end)."""

  def __init__(self, parent: grain.MapDataset, max_scan: int):
    super().__init__(parent)
    self._max_scan = max_scan

  def __len__(self) -> int:
    return len(self._parent)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    for k in range(self._max_scan):
      example = self._parent[(index + k) % len(self._parent)]
      if example is not None:
        return example
    raise ValueError(f"no readable record among the {self._max_scan} records from stream "
                     f"position {index} on: every one of them is corrupt")


class ProcessRows(grain.MapDataset):
  """This process's rows of the global batches of `parent` (the global record stream, from
  record `start` on): element i is parent[start + (i // b) * G + p * b + i % b], with
  b = G / process_count rows per process and global batch size G."""

  def __init__(self, parent: grain.MapDataset, *, start: int, global_batch_size: int,
               process_index: int, process_count: int, drop_remainder: bool):
    super().__init__(parent)
    self._start, self._g, self._p = start, global_batch_size, process_index
    self._b = global_batch_size // process_count
    full, rest = divmod(max(0, len(parent) - start), global_batch_size)
    if rest and not drop_remainder and process_count > 1:
      raise ValueError(f"drop_remainder=False: the last global batch has {rest} of "
                       f"{global_batch_size} records, which {process_count} processes cannot "
                       "split evenly; use drop_remainder=True with several processes")
    self._length = full * self._b + (0 if drop_remainder else min(self._b, rest))

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, row = divmod(index, self._b)
    return self._parent[self._start + step * self._g + self._p * self._b + row]


class GlobalOrderDataset(grain.IterDataset):
  """Batches of this process's rows of every global batch; `build(start)` makes the pipeline
  from global record `start` on. Its iterator's state is the global position (module doc)."""

  def __init__(self, build: Callable[[int], grain.IterDataset], global_batch_size: int):
    super().__init__(build(0))
    self.build, self.global_batch_size = build, global_batch_size

  def __iter__(self) -> "_GlobalOrderIterator":
    return _GlobalOrderIterator(self)


class _GlobalOrderIterator(grain.DatasetIterator):

  def __init__(self, ds: GlobalOrderDataset):
    super().__init__(iter(ds._parent))
    self._ds = ds
    self._start = self._batches = 0

  def __next__(self) -> dict[str, Any]:
    batch = next(self._parent)
    self._batches += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"position": self._start + self._batches * self._ds.global_batch_size,
            "global_batch_size": self._ds.global_batch_size}

  def set_state(self, state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or not isinstance(state.get("position"), int):
      raise ValueError(f"data iterator state {state!r}: expected {{'position': <records of the "
                       "global stream consumed>, ...}} (written by this version of "
                       "vft.data.pipeline)")
    self._parent.close()
    self._parents = (iter(self._ds.build(state["position"])),)
    self._start, self._batches = state["position"], 0
