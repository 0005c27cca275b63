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
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # what numpy holds (bfloat16 through ml_dtypes)


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8,
             "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _header(path: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (safetensors dtype code, shape) of one file, from safetensors' own
    header check (no tensor is read); a file it refuses is an error naming the file."""
    try:
        with safe_open(path, framework="numpy") as f:
            return {name: (s.get_dtype(), tuple(s.get_shape()))
                    for name in f.keys() for s in (f.get_slice(name),)}
    except SafetensorError as e:
        raise ValueError(_why_refused(path, e)) from None


def _why_refused(path: str, error: Exception) -> str:
    """Names what safetensors refused (its errors name no file and no tensor): a file too
    short for its header, a header that is not JSON, or the first tensor past the end."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else None
        if n is None or 8 + n > size:
            return (f"{path}: truncated or not a safetensors file ({size} bytes; the header "
                    f"needs {8 + (n or 0)})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return f"{path}: the safetensors header is not valid JSON ({e})"
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if name == "__metadata__" or not offsets:
            continue
        want = _ITEMSIZE.get(entry.get("dtype"), 0) * int(np.prod(entry.get("shape", ()),
                                                                 dtype=np.int64))
        if want and offsets[1] - offsets[0] != want:
            return (f"{path}: tensor {name!r} is {entry['dtype']}{list(entry['shape'])} "
                    f"({want} bytes) but its header's data_offsets span "
                    f"{offsets[1] - offsets[0]} bytes")
        if 8 + n + offsets[1] > size:
            return (f"{path} is truncated: tensor {name!r} ends at byte {8 + n + offsets[1]}, "
                    f"the file has {size}")
    return f"{path}: not a valid safetensors file ({error})"


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
        return self._headers[self._file_of[name]][name][1]

    def dtype(self, name: str) -> str:
        """safetensors dtype code, e.g. `F32`, `F16`, `BF16`."""
        return self._headers[self._file_of[name]][name][0]

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
        dtype = self._headers[path][name][0]
        if dtype not in FLOAT_DTYPES:
            kind = "floating point" if not dtype.startswith(("F", "BF")) else "one of"
            raise ValueError(f"tensor {name!r} in {path} is {dtype}: weights must be {kind} "
                             f"{FLOAT_DTYPES} (numpy holds no other)")
        try:
            with safe_open(path, framework="numpy") as f:
                arr = np.asarray(f.get_slice(name)[:], dtype=np.float32)
        except Exception as e:  # noqa: BLE001 - safetensors' errors name no file
            raise ValueError(f"{path}: cannot read tensor {name!r}: {e}") from e
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
