"""Choosing how a kernel runs: `impl` ("pallas" | "xla") and the Pallas backend.

Every kernel's `api.py` calls `resolve(...)`. Rules:
- `impl=None` picks "pallas" where the kernel lowers (the backends in `lowers_on`), else "xla".
- `impl="pallas"` with `interpret=True` runs the kernel through the Pallas interpreter (any
  backend; this is how CPU tests check kernels against their references).
- `impl="pallas"` on a backend the kernel cannot lower to (e.g. CPU without `interpret=True`)
  raises a ValueError saying so.
- `backend` defaults to `jax.default_backend()`; pass `backend="tpu"` to lower for a TPU
  topology from a CPU host (ahead-of-time compilation).
"""

from __future__ import annotations

from typing import NamedTuple

import jax

IMPLS = ("pallas", "xla")


class Plan(NamedTuple):
    impl: str  # "pallas" | "xla"
    backend: str  # "tpu" | "gpu" | "cpu"
    interpret: bool


def platform_of(backend: str) -> str:
    """jax backend/platform name -> "tpu" | "gpu" | "cpu"."""
    b = backend.lower()
    if b in ("cuda", "rocm", "gpu"):
        return "gpu"
    if b in ("tpu", "cpu"):
        return b
    raise ValueError(f"unknown backend {backend!r}; expected tpu, gpu (cuda/rocm) or cpu")


def resolve(kernel: str, impl: str | None, backend: str | None, interpret: bool,
            lowers_on: tuple[str, ...]) -> Plan:
    """Decide impl/backend/interpret for `kernel` (its name, used in errors)."""
    plat = platform_of(backend or jax.default_backend())
    if impl is None:
        impl = "pallas" if (interpret or plat in lowers_on) else "xla"
    if impl not in IMPLS:
        raise ValueError(f"{kernel}: impl={impl!r} is not one of {IMPLS}")
    if impl == "pallas" and not interpret and plat not in lowers_on:
        raise ValueError(
            f"{kernel}: the Pallas kernel cannot lower on {plat!r} (it lowers on "
            f"{', '.join(lowers_on)}); use impl='xla', or interpret=True to run it through the "
            "Pallas interpreter (slow; for tests)")
    return Plan(impl, plat, bool(interpret))


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m
