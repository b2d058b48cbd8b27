"""The training-record schema: one record = one clip, stored as msgpack bytes in ArrayRecord shards.

Fields of an example (a plain dict):
  latents   required* np.ndarray [T, H, W, C], bfloat16 or float16: VAE latents, channels-last.
  moments   required* np.ndarray [T, H, W, 2C], bfloat16/float16/float32: VAE posterior (mean
            channels [:C], logvar [C:]), so that the posterior can be sampled at train time.
  tokens    required* np.ndarray [T', N], int32 or uint16: tokenizer ids of the clip's latents
            (token datasets, `vft tokenize-dataset`).
            (*) a record holds `latents`, `moments` or both, or `tokens`.
  label     optional  int: class label.
  caption   optional  str: text caption.
  repa      optional  np.ndarray [T, h, w, F], bfloat16/float16/float32: REPA target features.
  video_id  optional  str: where the clip came from, e.g. "synthetic/000123", "asl_book/clip1".
  video     optional  np.ndarray [T_px, H_px, W_px, 3], uint8: original pixels (eval splits only).
  text_emb  optional  np.ndarray [L, D], bfloat16/float16/float32: text-encoder token embeddings
            of the caption, zero-padded to a fixed L; `text_len` of them are real.
  text_len  optional  int: number of valid rows of text_emb.

Wire format: a msgpack map from field name to value. Arrays are maps
`{"shape": [...], "dtype": <numpy dtype name>, "data": <raw little-endian bytes, C order>}`;
bfloat16 is resolved through `ml_dtypes` on decode (`np.save` would lose it). Scalars and strings
are stored as msgpack ints / strings.

`decode_record` returns read-only numpy arrays that view the record bytes (no copy); copy them
before writing in place. Anything malformed raises `CorruptRecordError` naming the record source.
"""
from __future__ import annotations

from typing import Any

import ml_dtypes
import msgpack
import numpy as np

ARRAY_FIELDS = {
    # field: (ndim, allowed dtype names, last-dim size or None)
    "latents": (4, ("bfloat16", "float16"), None),
    "repa": (4, ("bfloat16", "float16", "float32"), None),
    "video": (4, ("uint8",), 3),
    "moments": (4, ("bfloat16", "float16", "float32"), None),
    "text_emb": (2, ("bfloat16", "float16", "float32"), None),
    "tokens": (2, ("int32", "uint16"), None),
}
INT_FIELDS = ("label", "text_len")
STR_FIELDS = ("caption", "video_id")
REQUIRED_ANY = ("latents", "moments", "tokens")  # a record holds at least one of these
KNOWN_FIELDS = tuple(ARRAY_FIELDS) + INT_FIELDS + STR_FIELDS

_DTYPES = {
    name: np.dtype(name)
    for name in ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
                 "float16", "float32", "float64")
}
_DTYPES["bfloat16"] = np.dtype(ml_dtypes.bfloat16)


class CorruptRecordError(ValueError):
  """A record's bytes could not be decoded into a valid example."""


def dtype_from_name(name: str) -> np.dtype:
  """'bfloat16' -> ml_dtypes.bfloat16 dtype, 'float32' -> np.float32 dtype, ..."""
  try:
    return _DTYPES[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


def validate_example(example: dict[str, Any]) -> None:
  """Checks an example against the schema above; raises ValueError naming the offending field."""
  if not isinstance(example, dict):
    raise ValueError(f"example: expected a dict, got {type(example).__name__}")
  unknown = sorted(set(example) - set(KNOWN_FIELDS))
  if unknown:
    raise ValueError(f"example: unknown field(s) {unknown}; known fields are {list(KNOWN_FIELDS)}")
  if not any(name in example for name in REQUIRED_ANY):
    raise ValueError(f"example: missing required field 'latents' (or 'moments') or 'tokens'; "
                     f"got fields {sorted(example)}")
  for name, (ndim, dtypes, last) in ARRAY_FIELDS.items():
    if name not in example:
      continue
    x = example[name]
    if not isinstance(x, np.ndarray):
      raise ValueError(f"example[{name!r}]: expected a numpy array, got {type(x).__name__}")
    if x.ndim != ndim:
      raise ValueError(f"example[{name!r}]: expected {ndim} dims, got shape {x.shape}")
    if x.dtype.name not in dtypes:
      raise ValueError(f"example[{name!r}]: dtype {x.dtype.name}; expected one of {list(dtypes)}")
    if last is not None and x.shape[-1] != last:
      raise ValueError(f"example[{name!r}]: expected last dim {last}, got shape {x.shape}")
  if "moments" in example and example["moments"].shape[-1] % 2:
    raise ValueError(f"example['moments']: last dim must be even (mean and logvar), got shape "
                     f"{example['moments'].shape}")
  if "latents" in example and "moments" in example and (
      example["moments"].shape[:-1] != example["latents"].shape[:-1]
      or example["moments"].shape[-1] != 2 * example["latents"].shape[-1]):
    raise ValueError(f"example: moments {example['moments'].shape} do not match latents "
                     f"{example['latents'].shape} (expected [..., 2C])")
  for name in INT_FIELDS:
    value = example.get(name)
    if name in example and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
      raise ValueError(f"example[{name!r}]: expected an int, got {type(example[name]).__name__}")
  for name in STR_FIELDS:
    if name in example and not isinstance(example[name], str):
      raise ValueError(f"example[{name!r}]: expected a str, got {type(example[name]).__name__}")


def _encode_array(x: np.ndarray) -> dict[str, Any]:
  x = np.ascontiguousarray(x)
  if x.dtype.byteorder == ">":
    x = x.astype(x.dtype.newbyteorder("<"))
  return {"shape": list(x.shape), "dtype": x.dtype.name, "data": x.tobytes()}


def encode_record(example: dict[str, Any]) -> bytes:
  """Example dict (schema above) -> msgpack bytes. Validates first."""
  validate_example(example)
  packed = {}
  for name, value in example.items():
    if name in ARRAY_FIELDS:
      packed[name] = _encode_array(value)
    elif name in INT_FIELDS:
      packed[name] = int(value)
    else:
      packed[name] = value
  return msgpack.packb(packed, use_bin_type=True)


def _decode_array(name: str, value: Any, where: str) -> np.ndarray:
  if not isinstance(value, dict) or set(value) != {"shape", "dtype", "data"}:
    raise CorruptRecordError(f"{where}: field {name!r} is not an encoded array "
                             "(expected a map with keys shape, dtype, data)")
  shape, dtype_name, data = value["shape"], value["dtype"], value["data"]
  if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
    raise CorruptRecordError(f"{where}: field {name!r} has an invalid shape {shape!r}")
  if not isinstance(data, bytes):
    raise CorruptRecordError(f"{where}: field {name!r} data is {type(data).__name__}, not bytes")
  try:
    dtype = dtype_from_name(dtype_name)
  except ValueError as e:
    raise CorruptRecordError(f"{where}: field {name!r}: {e}") from None
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) != expected:
    raise CorruptRecordError(
        f"{where}: field {name!r} has {len(data)} bytes but shape {shape} of {dtype_name} "
        f"needs {expected}")
  return np.frombuffer(data, dtype=dtype).reshape(shape)


def decode_record(data: bytes, *, source: str = "") -> dict[str, Any]:
  """msgpack bytes -> example dict with numpy arrays (read-only views of `data`).

  Raises CorruptRecordError (a ValueError) naming `source` for bad msgpack, missing
  `latents`/`moments`/`tokens`, an unknown field or dtype, a shape/bytes mismatch, or a wrong
  number of dims.
  """
  where = f"record {source}" if source else "record"
  try:
    packed = msgpack.unpackb(data, raw=False)
  except Exception as e:  # msgpack raises several unrelated exception types
    raise CorruptRecordError(f"{where}: not valid msgpack ({type(e).__name__}: {e})") from None
  if not isinstance(packed, dict):
    raise CorruptRecordError(f"{where}: expected a msgpack map, got {type(packed).__name__}")
  example = {}
  for name, value in packed.items():
    if name in ARRAY_FIELDS:
      example[name] = _decode_array(name, value, where)
    elif name in INT_FIELDS:
      if not isinstance(value, int) or isinstance(value, bool):
        raise CorruptRecordError(f"{where}: field {name!r} should be an int, got {value!r}")
      example[name] = value
    elif name in STR_FIELDS:
      if not isinstance(value, str):
        raise CorruptRecordError(f"{where}: field {name!r} should be a str, got {value!r}")
      example[name] = value
    else:
      raise CorruptRecordError(
          f"{where}: unknown field {name!r}; known fields are {list(KNOWN_FIELDS)}")
  try:
    validate_example(example)
  except ValueError as e:
    raise CorruptRecordError(f"{where}: {e}") from None
  return example
