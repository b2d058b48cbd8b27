"""Files on any `etils.epath` path (a local folder or gs://...): one atomic write for all writers.

Locally a file is written next to its destination and renamed onto it. On an object store
(gs://) it is written to a local temporary file and uploaded as one object, which the store makes
visible atomically. Either way a reader never sees a partial file, and writers that need a real
local file (PyAV, ArrayRecord, matplotlib, np.savez) get one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator
import uuid

from etils import epath


def is_local(path: str | os.PathLike) -> bool:
  return "://" not in os.fspath(path)


def absolute(path: str | os.PathLike) -> epath.Path:
  """`path` as an epath.Path; a local one made absolute, a gs:// one unchanged."""
  return epath.Path(os.path.abspath(path) if is_local(path) else path)


def publish(local_tmp: str, dst: str | os.PathLike) -> None:
  """Moves a finished local file onto `dst` (a rename locally, one upload on an object store)."""
  if is_local(dst):
    os.replace(local_tmp, dst)
  else:
    epath.Path(local_tmp).copy(epath.Path(dst), overwrite=True)
    os.unlink(local_tmp)


def local_temp(dst: str | os.PathLike) -> str:
  """A fresh local file path to write `dst` into before `publish`: next to `dst` when it is
  local (so a rename publishes it), else in the local temp dir. Named `.<name>.<pid>.<uuid>.tmp`
  and not created here (not tempfile.mkstemp: its 0600 mode would survive the rename; the
  writers create the file themselves under the usual umask)."""
  dst = absolute(dst)
  folder = os.fspath(dst.parent) if is_local(dst) else tempfile.gettempdir()
  return os.path.join(folder, f".{dst.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a local temporary file path; on success it becomes `path` (creating its folder)."""
  dst = absolute(path)
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = local_temp(dst)
  try:
    yield tmp
    publish(tmp, dst)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
