"""Importance attention: softmax attention that also returns the attention mass each key gets.

    out, scores = importance_attention(q, k, v, query_weights, key_valid=valid, causal=True)

q `[B, Lq, H, Dh]`, k, v `[B, Lk, KV, Dh]` (H a multiple of KV: grouped-query or multi-head),
query_weights `[B, Lq]` bool/float (which query rows count, and how much), key_valid `[B, Lk]`
bool (False = padding) -> out `[B, Lq, H, Dh]` (q's dtype), scores `[B, Lk]` float32 with
`scores[b, j] = mean_h sum_i query_weights[b, i] * softmax_j(q_i . k_j * scale)`.
Masking and edge cases are those of reference.py. `impl="xla"` is the reference (it
materialises `[B, H, Lq, Lk]`); `impl="pallas"` is kernel.py (never does; raises where it
cannot lower), "pallas_interpret" the same through the Pallas interpreter; `impl=None` picks
Pallas on TPU and GPU and XLA elsewhere (see vlm_jax.kernels.dispatch).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vlm_jax.kernels.dispatch import resolve, round_up
from vlm_jax.kernels.importance_attention.kernel import importance_attention_kernel
from vlm_jax.kernels.importance_attention.reference import importance_attention_reference

LOWERS_ON = ("tpu", "gpu")


def _check(q, k, v, query_weights, key_valid):
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(f"importance_attention: need q [B, Lq, H, Dh] and k, v [B, Lk, KV, Dh] "
                         f"of one shape; got q {q.shape}, k {k.shape}, v {v.shape}")
    b, lq, h, dh = q.shape
    if k.shape[0] != b or k.shape[3] != dh or h % k.shape[2]:
        raise ValueError(f"importance_attention: q {q.shape} and k {k.shape} disagree on batch "
                         "or head size, or H is not a multiple of KV")
    if query_weights.shape != (b, lq):
        raise ValueError(f"importance_attention: query_weights {query_weights.shape} must be "
                         f"[B, Lq] = {(b, lq)}")
    if key_valid.shape != (b, k.shape[1]):
        raise ValueError(f"importance_attention: key_valid {key_valid.shape} must be [B, Lk] = "
                         f"{(b, k.shape[1])}")


def _block(n: int, block: int, backend: str, interpret: bool, minor: bool) -> int:
    """Tile size for a length-n axis: `block`, or the padded length when that is shorter."""
    if backend == "gpu" and not interpret:
        if block < 16 or block & (block - 1):
            raise ValueError(f"importance_attention: GPU block sizes must be powers of two "
                             f">= 16, got {block}")
        return min(block, max(16, 1 << (n - 1).bit_length()))
    if block % 8 or (backend == "tpu" and minor and not interpret and block % 128):
        raise ValueError(f"importance_attention: block {block} must be a multiple of 8 "
                         "(and of 128 for the key block on TPU)")
    return block if n > block else round_up(n, 8)


def _pad(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def importance_attention(q: jax.Array, k: jax.Array, v: jax.Array, query_weights: jax.Array, *,
                         key_valid: jax.Array | None = None, causal: bool = True,
                         scale: float | None = None, impl: str | None = None,
                         block_q: int = 128, block_k: int = 128,
                         backend: str | None = None) -> tuple[jax.Array, jax.Array]:
    """See the module docstring. `scale` defaults to `1/sqrt(Dh)`; `block_q`/`block_k` tile
    the Pallas kernel (lengths need not be multiples: inputs are padded and masked)."""
    b, lq, h, dh = q.shape
    lk = k.shape[1]
    if key_valid is None:
        key_valid = jnp.ones((b, lk), bool)
    _check(q, k, v, query_weights, key_valid)
    scale = float(1.0 / math.sqrt(dh) if scale is None else scale)
    plan = resolve("importance_attention", impl, backend, LOWERS_ON)
    interpret = plan.interpret
    if plan.impl == "xla":
        return importance_attention_reference(q, k, v, key_valid.astype(bool), query_weights,
                                              causal=causal, scale=scale)

    bq = _block(lq, block_q, plan.backend, interpret, minor=False)
    bk = _block(lk, block_k, plan.backend, interpret, minor=True)
    lq_pad, lk_pad = round_up(lq, bq), round_up(lk, bk)
    dh_pad = dh
    if plan.backend == "gpu" and not interpret:  # Triton tiles are powers of two >= 16
        dh_pad = max(16, 1 << (dh - 1).bit_length())
    heads_major = lambda x, n: _pad(_pad(jnp.swapaxes(x, 1, 2), 2, n), 3, dh_pad)
    qh, kh, vh = heads_major(q, lq_pad), heads_major(k, lk_pad), heads_major(v, lk_pad)
    kvalid = _pad(key_valid.astype(jnp.int32), 1, lk_pad)[:, None, :]
    weights = _pad(query_weights.astype(jnp.float32), 1, lq_pad)
    flags = jnp.any(weights.reshape(b, lq_pad // bq, bq) != 0, axis=-1).astype(jnp.int32)
    out, scores = importance_attention_kernel(
        qh, kh, vh, kvalid, weights[:, :, None], flags, causal=causal, scale=scale,
        offset=lk - lq, block_q=bq, block_k=bk, backend=plan.backend, interpret=interpret)
    out = jnp.swapaxes(out[:, :, :lq, :dh], 1, 2)
    return out, jnp.mean(scores[:, :, 0, :lk], axis=1)


def last_token_weights(valid: jax.Array) -> jax.Array:
    """`[B, L]` bool -> `[B, L]` float32 one-hot at each row's last valid token (FastV code)."""
    idx = valid.shape[1] - 1 - jnp.argmax(valid[:, ::-1], axis=1)
    return jax.nn.one_hot(idx, valid.shape[1], dtype=jnp.float32) * jnp.any(valid, 1)[:, None]


def text_after_weights(valid: jax.Array, start: jax.Array) -> jax.Array:
    """`[B, L]` bool, `[B]` int first slot after the image -> `[B, L]` float32: 1 on valid
    tokens from `start` on (the FastV paper's prompt-aware query set)."""
    slots = jnp.arange(valid.shape[1])[None, :]
    return (valid & (slots >= start[:, None])).astype(jnp.float32)
