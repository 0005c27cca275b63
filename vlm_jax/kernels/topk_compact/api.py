"""Top-k compaction of visual tokens: keep the best `keep` of a V-token visual span per example
(original order, ties to the lower slot), keep every other token, and gather any number of
per-token arrays into `[B, L - V + keep, ...]`.

    (hidden, positions, k, v), index = topk_compact(scores, start, keep,
                                                    [hidden, positions, k, v])

scores `[B, V]` (any float; NaN counts as -inf), start `[B]` int (first visual slot; clamped
to `[0, L - V]`), keep static `0 <= keep <= V`, arrays each `[B, L, ...]` of one L (e.g. hidden
`[B, L, D]`, positions `[B, L]`, valid `[B, L]` bool, cache keys/values `[B, L, KV, Dh]`)
-> (list of arrays `[B, L - V + keep, ...]`, index `[B, L - V + keep]` int32: the input slot
each output slot came from). Semantics: reference.py. `impl=None` picks Pallas on TPU, XLA
elsewhere; "pallas" raises where the kernel cannot lower; "pallas_interpret" runs it through
the Pallas interpreter.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from vlm_jax.kernels.dispatch import resolve, round_up
from vlm_jax.kernels.topk_compact.kernel import gather_kernel, select_kernel
from vlm_jax.kernels.topk_compact.reference import (
    select_reference,
    source_index,
    topk_compact_reference,
)

LOWERS_ON = ("tpu",)


def canonical_scores(scores: jax.Array) -> jax.Array:
    """float32 scores with NaN -> -inf and -0.0 -> 0.0, so every comparison is a total order."""
    s = scores.astype(jnp.float32)
    return jnp.where(jnp.isnan(s), -jnp.inf, s) + 0.0


def _check(scores, start, keep, arrays):
    if scores.ndim != 2:
        raise ValueError(f"topk_compact: scores must be [B, V], got {scores.shape}")
    b, v = scores.shape
    if not 0 <= keep <= v:
        raise ValueError(f"topk_compact: keep={keep} outside [0, V={v}]")
    if start.shape != (b,):
        raise ValueError(f"topk_compact: start must be [B] = ({b},), got {start.shape}")
    if not arrays:
        raise ValueError("topk_compact: give at least one array to compact")
    length = arrays[0].shape[1] if arrays[0].ndim >= 2 else -1
    for i, x in enumerate(arrays):
        if x.ndim < 2 or x.shape[0] != b or x.shape[1] != length:
            raise ValueError(f"topk_compact: arrays[{i}] has shape {x.shape}; every array must "
                             f"be [B={b}, L={length}, ...]")
    if length < v:
        raise ValueError(f"topk_compact: sequence length {length} < visual span V={v}")


def select(scores: jax.Array, keep: int, *, impl: str | None = None,
           backend: str | None = None) -> jax.Array:
    """`[B, V]` scores -> `[B, keep]` int32 kept visual offsets in increasing order."""
    plan = resolve("topk_compact", impl, backend, LOWERS_ON)
    interpret = plan.interpret
    s = canonical_scores(scores)
    if plan.impl == "xla":
        return select_reference(s, keep)
    v = s.shape[1]
    s = jnp.pad(s, ((0, 0), (0, round_up(v, 128) - v)), constant_values=-jnp.inf)
    return select_kernel(s, keep=keep, interpret=interpret)[:, :keep]


def topk_compact(scores: jax.Array, start: jax.Array, keep: int, arrays: Sequence[jax.Array], *,
                 impl: str | None = None,
                 backend: str | None = None) -> tuple[list[jax.Array], jax.Array]:
    """See the module docstring."""
    arrays = list(arrays)
    _check(scores, start, keep, arrays)
    b, v = scores.shape
    length = arrays[0].shape[1]
    start = jnp.clip(start.astype(jnp.int32), 0, length - v)
    plan = resolve("topk_compact", impl, backend, LOWERS_ON)
    interpret = plan.interpret
    if plan.impl == "xla":
        return topk_compact_reference(canonical_scores(scores), start, keep, arrays)
    s = jnp.pad(canonical_scores(scores), ((0, 0), (0, round_up(v, 128) - v)),
                constant_values=-jnp.inf)
    sel = select_kernel(s, keep=keep, interpret=interpret)
    outs = []
    for x in arrays:
        y = x.astype(jnp.int32) if x.dtype == jnp.bool_ else x
        y = y[:, :, None] if y.ndim == 2 else y
        y = gather_kernel(y, start, sel, keep=keep, num_visual=v, interpret=interpret)
        y = y[:, :, 0] if x.ndim == 2 else y
        outs.append(y.astype(x.dtype))
    return outs, source_index(sel[:, :keep], start, length, v)
