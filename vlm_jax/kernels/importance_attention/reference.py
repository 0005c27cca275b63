"""Pure-jnp importance attention: materialises the full probability matrix `[B, H, Lq, Lk]`.

Semantics shared with the Pallas kernel (kernel.py):
- key j is visible to query i iff `key_valid[b, j]` and, when causal, `j <= i + (Lk - Lq)`
  (queries are the last Lq positions of the key sequence; Lq == Lk is plain self-attention);
- a query row that sees no key at all gets output 0 and probability 0 everywhere;
- `scores[b, j] = mean_h sum_i query_weights[b, i] * P[b, h, i, j]` (float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def visibility(key_valid: jax.Array, lq: int, causal: bool) -> jax.Array:
    """`[B, Lk]` bool -> `[B, Lq, Lk]` bool: which keys each query row attends to."""
    lk = key_valid.shape[1]
    mask = jnp.broadcast_to(key_valid[:, None, :], (key_valid.shape[0], lq, lk))
    if causal:
        rows = jnp.arange(lq)[:, None] + (lk - lq)
        mask = mask & (jnp.arange(lk)[None, :] <= rows)[None]
    return mask


def importance_attention_reference(
        q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array,
        query_weights: jax.Array, *, causal: bool, scale: float) -> tuple[jax.Array, jax.Array]:
    """q `[B, Lq, H, Dh]`, k, v `[B, Lk, KV, Dh]`, key_valid `[B, Lk]` bool, query_weights
    `[B, Lq]` -> (out `[B, Lq, H, Dh]` in q's dtype, scores `[B, Lk]` float32)."""
    b, lq, h, dh = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, lq, kv, h // kv, dh)
    s = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32) * scale
    mask = visibility(key_valid, lq, causal)[:, None, None]  # [B, 1, 1, Lq, Lk]
    s = jnp.where(mask, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(mask, jnp.exp(s - m), 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom > 0, denom, 1.0)
    out = jnp.einsum("bkgqs,bskd->bqkgd", p.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    scores = jnp.einsum("bkgqs,bq->bs", p, query_weights.astype(jnp.float32)) / h
    return out.reshape(b, lq, h, dh).astype(q.dtype), scores
