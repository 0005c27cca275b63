"""Token scores that need no attention map: DART and the random-keep control.

A score is `[B, L]` float32 over the tokens present between two decoder layers, higher = kept;
only the visual tokens' scores matter (text tokens are never removed).

- DART (Wen et al., arXiv 2502.11494): tokens that duplicate others add little, so after a
  few layers pick a handful of pivot visual tokens (those whose hidden state has the largest L2
  norm) and keep, up to the budget, the visual tokens least similar to every pivot (smallest
  maximum cosine similarity), the pivots themselves included.
- Random keep (the control of Wen et al., arXiv 2502.11501): a seeded uniform subset of the
  visual tokens, the same positions of the grid for every image (so a prompt's answer does not
  depend on the batch it is in).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PIVOT_SCORE = 2.0  # above any -cos similarity: pivots always survive


def dart_scores(x: jax.Array, visual: jax.Array, pivots: int) -> jax.Array:
    """x `[B, L, D]` hidden states, visual `[B, L]` bool -> `[B, L]`: `PIVOT_SCORE` for the
    `pivots` visual tokens of largest L2 norm, minus the largest cosine similarity to a pivot
    for the other visual tokens."""
    if pivots < 1:
        raise ValueError(f"DART needs at least one pivot, got {pivots}")
    x32 = x.astype(jnp.float32)
    norm = jnp.linalg.norm(x32, axis=-1)  # [B, L]
    pivot_idx = jax.lax.top_k(jnp.where(visual, norm, -1.0), pivots)[1]  # [B, P]
    unit = x32 / jnp.maximum(norm, 1e-12)[..., None]
    pivot_unit = jnp.take_along_axis(unit, pivot_idx[..., None], axis=1)  # [B, P, D]
    duplication = jnp.einsum("bld,bpd->blp", unit, pivot_unit).max(axis=-1)
    is_pivot = jnp.zeros(visual.shape, bool).at[jnp.arange(x.shape[0])[:, None],
                                                pivot_idx].set(True)
    return jnp.where(is_pivot, PIVOT_SCORE, -duplication)


def random_scores(visual: jax.Array, num_visual: int, seed: int) -> jax.Array:
    """visual `[B, L]` bool (exactly `num_visual` per row) -> `[B, L]`: the i-th visual token
    of every row gets the i-th of `num_visual` seeded uniform draws."""
    draws = jax.random.uniform(jax.random.key(seed), (num_visual,))
    ordinal = jnp.clip(jnp.cumsum(visual, axis=1) - 1, 0, num_visual - 1)
    return jnp.where(visual, draws[ordinal], 0.0)

