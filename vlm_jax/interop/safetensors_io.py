"""Lazy reading and shard-by-shard writing of Hugging Face safetensors checkpoints.

A checkpoint directory holds `model.safetensors`, or shards `model-0000i-of-0000n.safetensors`
listed by `model.safetensors.index.json`. `Checkpoint` lists names, shapes and dtypes from the
file headers without reading data, and reads one tensor at a time (as float32), so a large
checkpoint never sits in memory twice. `write_checkpoint` takes tensor producers and
materialises one shard at a time.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
_NUMPY_UNSUPPORTED = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
                      "F8_E5M2": ml_dtypes.float8_e5m2}


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8,
             "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _header(path: str) -> dict:
    """The JSON header of one safetensors file (names -> dtype, shape, data_offsets); a file
    too short for its header or its tensors is an error naming the file and tensor."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if n is None or 8 + n > size:
            raise ValueError(f"{path}: truncated or not a safetensors file ({size} bytes; the "
                             f"header needs {8 + (n or 0)})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: the safetensors header is not valid JSON ({e})") from None
    header.pop("__metadata__", None)
    for name, entry in header.items():
        entry["start"] = 8 + n + entry["data_offsets"][0]
        end = 8 + n + entry["data_offsets"][1]
        want = _ITEMSIZE.get(entry["dtype"], 0) * int(np.prod(entry["shape"], dtype=np.int64))
        if want and end - entry["start"] != want:
            raise ValueError(f"{path}: tensor {name!r} is {entry['dtype']}{list(entry['shape'])} "
                             f"({want} bytes) but its header's data_offsets span "
                             f"{end - entry['start']} bytes")
        if end > size:
            raise ValueError(f"{path} is truncated: tensor {name!r} ends at byte {end}, the file "
                             f"has {size}")
    return header


class Checkpoint:
    """Read-only, lazy view of the safetensors weights in a directory."""

    def __init__(self, directory: str):
        self.directory = directory
        index = os.path.join(directory, INDEX)
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index} has no `weight_map` object")
            files = sorted(set(weight_map.values()))
        elif os.path.exists(os.path.join(directory, SINGLE)):
            files = [SINGLE]
        else:
            found = sorted(os.listdir(directory)) if os.path.isdir(directory) else None
            raise FileNotFoundError(
                f"no {SINGLE} or {INDEX} in {directory!r} (found: {found}); only safetensors "
                "checkpoints are read: convert pytorch_model.bin files with safetensors first")
        self.files = [os.path.join(directory, f) for f in files]
        for path in self.files:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{INDEX} in {directory!r} lists {path!r}, which is missing")
        self._headers = {path: _header(path) for path in self.files}
        self._file_of: dict[str, str] = {}
        for path, header in self._headers.items():
            for name in header:
                if name in self._file_of:
                    raise ValueError(f"tensor {name!r} is stored twice: in {self._file_of[name]!r} "
                                     f"and {path!r}")
                self._file_of[name] = path

    def keys(self) -> list[str]:
        return list(self._file_of)

    def file_of(self, name: str) -> str:
        return self._file_of[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._headers[self._file_of[name]][name]["shape"])

    def dtype(self, name: str) -> str:
        """safetensors dtype code, e.g. `F32`, `F16`, `BF16`."""
        return self._headers[self._file_of[name]][name]["dtype"]

    def iter_tensors(self, names: Sequence[str]) -> Iterator[tuple[str, np.ndarray]]:
        """Yields `(name, float32 array)` for `names`, file by file, one tensor at a time.

        Each tensor is read through its own short-lived `safe_open`, so the memory map is
        released before the next one: resident memory stays at the arrays handed out plus one
        tensor, never a whole shard.
        """
        wanted = set(names)
        for path in self.files:
            for name in [n for n in self._headers[path] if n in wanted]:
                yield name, self._read(path, name)

    def _read(self, path: str, name: str) -> np.ndarray:
        """One tensor as float32; a non-float or non-finite weight is an error naming it."""
        entry = self._headers[path][name]
        if not entry["dtype"].startswith(("F", "BF")):
            raise ValueError(f"tensor {name!r} in {path} is {entry['dtype']}: weights must be "
                             "floating point")
        special = _NUMPY_UNSUPPORTED.get(entry["dtype"])
        if special is None:
            try:
                with safe_open(path, framework="numpy") as f:
                    arr = np.asarray(f.get_tensor(name), dtype=np.float32)
            except Exception as e:  # noqa: BLE001 - safetensors' errors name no file
                raise ValueError(f"{path}: cannot read tensor {name!r}: {e}") from e
        else:  # numpy has no bfloat16 / float8: read the raw bytes, view them with ml_dtypes
            count = int(np.prod(entry["shape"], dtype=np.int64))
            with open(path, "rb") as raw:
                raw.seek(entry["start"])
                data = np.fromfile(raw, dtype=np.dtype(special), count=count)
            arr = data.reshape(entry["shape"]).astype(np.float32)
        bad = arr.size - int(np.isfinite(arr).sum())
        if bad:
            raise ValueError(f"tensor {name!r} in {path} has {bad} non-finite value(s) (NaN or "
                             f"inf) of {arr.size}")
        return arr


Producer = Callable[[], np.ndarray]


def write_checkpoint(directory: str, tensors: Sequence[tuple[str, tuple[int, ...], Producer]],
                     max_shard_bytes: int | None = None) -> list[str]:
    """Writes `(name, shape, produce)` float32 tensors as safetensors; returns the file names.

    One `model.safetensors` when everything fits in `max_shard_bytes` (or it is None); otherwise
    `model-0000i-of-0000n.safetensors` shards plus `model.safetensors.index.json`. Tensors are
    produced shard by shard, so only one shard's worth of converted arrays exists at a time.
    """
    os.makedirs(directory, exist_ok=True)
    shards: list[list[tuple[str, tuple[int, ...], Producer]]] = [[]]
    size = 0
    for item in tensors:
        nbytes = 4 * int(np.prod(item[1], dtype=np.int64))
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    for stale in (SINGLE, INDEX):
        if os.path.exists(os.path.join(directory, stale)):
            os.remove(os.path.join(directory, stale))
    n = len(shards)
    names = [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
        arrays = {}
        for name, shape, produce in shard:
            arr = np.ascontiguousarray(produce(), dtype=np.float32)
            if arr.shape != tuple(shape):
                raise ValueError(f"tensor {name!r}: produced shape {arr.shape}, declared {shape}")
            arrays[name] = arr
            weight_map[name] = fname
            total += arr.nbytes
        save_file(arrays, os.path.join(directory, fname), metadata={"format": "pt"})
        del arrays
    if n > 1:
        with open(os.path.join(directory, INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return names
