"""Pure-jnp top-k compaction of a visual-token span (the semantics kernel.py must match exactly).

Each example b holds V visual tokens in the contiguous slots `[start[b], start[b] + V)` of its
length-L sequence. The `keep` visual tokens with the highest scores survive, **in their original
order**; every other slot (text, padding) survives too. Ties are broken by index: among equal
scores the lower slot wins (a stable descending sort). NaN scores count as -inf and -0.0 as 0.0
(api.py canonicalises scores before either implementation sees them).

Output slot r of the `L - V + keep` slots reads input slot
    r                           if r < start
    start + sel[r - start]      if start <= r < start + keep
    r + (V - keep)              otherwise
where `sel [B, keep]` are the kept visual offsets in increasing order.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def select_reference(scores: jax.Array, keep: int) -> jax.Array:
    """`[B, V]` scores -> `[B, keep]` int32 kept visual offsets, increasing."""
    order = jnp.argsort(-scores, axis=1, stable=True)[:, :keep]
    return jnp.sort(order, axis=1).astype(jnp.int32)


def source_index(sel: jax.Array, start: jax.Array, length: int, num_visual: int) -> jax.Array:
    """Kept offsets `[B, keep]`, span starts `[B]` -> input slot of every output slot
    `[B, L - V + keep]` int32."""
    keep = sel.shape[1]
    r = jnp.arange(length - num_visual + keep, dtype=jnp.int32)[None, :]
    s = start.astype(jnp.int32)[:, None]
    vis = s + jnp.take_along_axis(sel, jnp.clip(r - s, 0, max(keep - 1, 0)), axis=1) \
        if keep else r
    return jnp.where(r < s, r, jnp.where(r < s + keep, vis, r + (num_visual - keep)))


def gather_rows(x: jax.Array, index: jax.Array) -> jax.Array:
    """`[B, L, ...]`, `[B, M]` -> `[B, M, ...]`."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def topk_compact_reference(scores: jax.Array, start: jax.Array, keep: int,
                           arrays: Sequence[jax.Array]) -> tuple[list[jax.Array], jax.Array]:
    """scores `[B, V]`, start `[B]`, arrays each `[B, L, ...]` -> (arrays `[B, L - V + keep,
    ...]`, source index `[B, L - V + keep]` int32)."""
    index = source_index(select_reference(scores, keep), start, arrays[0].shape[1],
                         scores.shape[1])
    return [gather_rows(x, index) for x in arrays], index
