"""Choosing how a kernel runs: `impl` (one of `IMPLS`) and the Pallas backend.

`IMPLS` is the one vocabulary of the kernels and of everything that calls them (pruning's
`PruneSpec.impl`). Every kernel's `api.py` calls `resolve(...)`. Rules:
- "xla": the kernel's pure-jnp reference (reference.py), on any backend.
- "pallas": the Pallas kernel; on a backend it cannot lower to (e.g. CPU) it raises a
  ValueError saying so, never falls back.
- "pallas_interpret": the Pallas kernel through the Pallas interpreter (any backend; this is
  how CPU tests check kernels against their references).
- `impl=None` picks "pallas" where the kernel lowers (the backends in `lowers_on`), else "xla".
- `backend` defaults to `jax.default_backend()`; pass `backend="tpu"` to lower for a TPU
  topology from a CPU host (ahead-of-time compilation).
"""

from __future__ import annotations

from typing import NamedTuple

import jax

IMPLS = ("xla", "pallas", "pallas_interpret")


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


def check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; known: {list(IMPLS)}")


def resolve(kernel: str, impl: str | None, backend: str | None,
            lowers_on: tuple[str, ...]) -> Plan:
    """Decide impl/backend/interpret for `kernel` (its name, used in errors)."""
    plat = platform_of(backend or jax.default_backend())
    if impl is None:
        impl = "pallas" if plat in lowers_on else "xla"
    if impl not in IMPLS:
        raise ValueError(f"{kernel}: impl={impl!r} is not one of {IMPLS}")
    if impl == "pallas" and plat not in lowers_on:
        raise ValueError(
            f"{kernel}: the Pallas kernel cannot lower on {plat!r} (it lowers on "
            f"{', '.join(lowers_on)}); use impl='xla', or impl='pallas_interpret' to run it "
            "through the Pallas interpreter (slow; for tests)")
    interpret = impl == "pallas_interpret"
    return Plan("pallas" if interpret else impl, plat, interpret)


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m
