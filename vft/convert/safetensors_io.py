"""Reading and writing safetensors files: header, string metadata and numpy tensors.

Layout of a safetensors file: 8 bytes little-endian u64 `n`, then an n-byte JSON header
`{name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}`, then the raw tensor bytes.
The header is parsed here directly (so a bad file fails with its name and what was wrong);
tensor data goes through the `safetensors` package's numpy API. Nothing in a file is executed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  dtype: str  # safetensors dtype code, e.g. "F32", "BF16"
  shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Header:
  tensors: dict[str, TensorInfo]
  metadata: dict[str, str]  # empty when the file has none


def read_header(path: str) -> Header:
  """Parses the JSON header of a safetensors file (no tensor data is read)."""
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file (shorter than the 8-byte header length)")
    (n,) = struct.unpack("<Q", raw)
    if n > MAX_HEADER_BYTES or n > os.path.getsize(path) - 8:
      raise ValueError(f"{path}: not a safetensors file (header length {n} is impossible)")
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}: the safetensors header is not valid JSON ({e})") from None
  if not isinstance(header, dict):
    raise ValueError(f"{path}: the safetensors header must be a JSON object")
  metadata = header.pop("__metadata__", None) or {}
  if not isinstance(metadata, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
    raise ValueError(f"{path}: __metadata__ must map strings to strings")
  tensors = {}
  for name, info in header.items():
    try:
      tensors[name] = TensorInfo(str(info["dtype"]), tuple(int(s) for s in info["shape"]))
    except (TypeError, KeyError, ValueError):
      raise ValueError(f"{path}: header entry {name!r} lacks a valid dtype/shape: "
                       f"{info!r}") from None
  return Header(tensors, dict(metadata))


def read_tensors(path: str, keys=None) -> dict[str, np.ndarray]:
  """Loads tensors (all, or `keys`) as numpy arrays in their stored dtype."""
  header = read_header(path)
  for name, info in header.tensors.items():
    if info.dtype not in DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has dtype {info.dtype}, supported: "
                       f"{sorted(DTYPES)}")
  keys = list(header.tensors) if keys is None else list(keys)
  missing = [k for k in keys if k not in header.tensors]
  if missing:
    raise KeyError(f"{path}: no tensors named {missing}")
  out = {}
  with safe_open(path, framework="np") as f:
    for k in keys:
      out[k] = f.get_tensor(k)
  return out


def write_file(path: str, tensors: Mapping[str, np.ndarray],
               metadata: Mapping[str, str] | None = None) -> str:
  """Writes `tensors` (numpy arrays, made contiguous) and optional string metadata."""
  bad = [k for k, v in (metadata or {}).items() if not isinstance(k, str) or not isinstance(v, str)]
  if bad:
    raise TypeError(f"{path}: safetensors metadata values must be strings; bad keys {bad}")
  arrays = {}
  for k, v in tensors.items():
    a = np.ascontiguousarray(np.asarray(v))
    if a.dtype not in DTYPES.values():
      raise TypeError(f"{path}: tensor {k!r} has unsupported dtype {a.dtype}")
    arrays[k] = a
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  save_file(arrays, path, metadata=dict(metadata) if metadata else None)
  return path
