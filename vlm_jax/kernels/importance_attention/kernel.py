"""Pallas importance attention: flash attention plus per-key attention mass, never holding the
`[Lq, Lk]` probability matrix.

Two `pallas_call`s on head-major, padded inputs (api.py does the layout and padding):
1. `attention_pass`, grid `(B, H, Lq/bq)`: online softmax over key tiles of `bk` (a loop inside
   the kernel; causal rows stop at their last visible tile) -> out `[B, H, Lq, Dh]` and the
   per-row log-sum-exp `[B, H, Lq, 1]`.
2. `scores_pass`, grid `(B, H, Lk/bk)`: for one key tile, loop over the query tiles that hold a
   selected row (per-tile flags skip the rest; causal tiles above the diagonal are skipped too),
   recompute `exp(q.k * scale - lse)` and add `sum_i w_i * p_ij` -> per-head mass `[B, H, 1, Lk]`.

The same kernel bodies lower with Mosaic (TPU: block minor dims multiples of (8, 128) or full)
and Triton (GPU: power-of-two blocks, >= 16); only compiler params and where the tile flags live
(SMEM on TPU) differ. Key validity is int32 `[B, 1, Lk]`, weights float32 `[B, Lq, 1]`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

NEG = -1e30  # finite "minus infinity": keeps the online-softmax rescaling free of inf - inf


def _visible(kvalid, q_start, k_start, shape, causal: bool, offset: int):
    """`[bq, bk]` bool: key tile columns each query tile row may attend to."""
    vis = jnp.broadcast_to(kvalid != 0, shape)
    if causal:
        rows = q_start + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
        cols = k_start + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
        vis = vis & (cols <= rows + offset)
    return vis


def _precision(dtype):
    """Full precision for float32 operands; the native MXU pass for 16-bit ones (Mosaic rejects
    HIGHEST on bf16, which a global `jax_default_matmul_precision` would otherwise ask for)."""
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT


def _qk(q, k, scale: float):
    """`[bq, Dh] x [bk, Dh] -> [bq, bk]` float32 logits."""
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=_precision(q.dtype),
                            preferred_element_type=jnp.float32)
    return s * scale


def _attention_kernel(q_ref, k_ref, v_ref, kvalid_ref, o_ref, lse_ref, *, scale, causal, offset,
                      block_k, num_k_blocks):
    bq, dh = q_ref.shape
    q_start = pl.program_id(2) * bq
    q = q_ref[...]

    def body(j, carry):
        m, denom, acc = carry
        k_start = pl.multiple_of(j * block_k, block_k)
        k = k_ref[pl.ds(k_start, block_k), :]
        v = v_ref[pl.ds(k_start, block_k), :]
        vis = _visible(kvalid_ref[:, pl.ds(k_start, block_k)], q_start, k_start,
                       (bq, block_k), causal, offset)
        s = jnp.where(vis, _qk(q, k, scale), NEG)
        m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
        p = jnp.where(vis, jnp.exp(s - m_new), 0.0)
        alpha = jnp.exp(m - m_new)
        denom = alpha * denom + jnp.sum(p, axis=1, keepdims=True)
        acc = alpha * acc + jnp.dot(p.astype(v.dtype), v, precision=_precision(v.dtype),
                                    preferred_element_type=jnp.float32)
        return m_new, denom, acc

    n = num_k_blocks
    if causal:  # tiles wholly right of this query tile's last row are invisible
        n = jnp.minimum(n, (q_start + bq + offset + block_k - 1) // block_k)
    init = (jnp.full((bq, 1), NEG, jnp.float32), jnp.zeros((bq, 1), jnp.float32),
            jnp.zeros((bq, dh), jnp.float32))
    m, denom, acc = jax.lax.fori_loop(0, n, body, init)
    seen = denom > 0
    o_ref[...] = jnp.where(seen, acc / jnp.where(seen, denom, 1.0), 0.0).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m + jnp.log(jnp.where(seen, denom, 1.0)), 0.0)


def _scores_kernel(flags_ref, q_ref, k_ref, lse_ref, w_ref, kvalid_ref, s_ref, *, scale, causal,
                   offset, block_q, num_q_blocks):
    bk = k_ref.shape[0]
    b = pl.program_id(0)
    k_start = pl.program_id(2) * bk
    k = k_ref[...]
    kvalid = kvalid_ref[...]
    s_ref[...] = jnp.zeros(s_ref.shape, jnp.float32)

    def body(i, carry):
        @pl.when(flags_ref[b, i] != 0)
        def _():
            q_start = pl.multiple_of(i * block_q, block_q)
            q = q_ref[pl.ds(q_start, block_q), :]
            lse = lse_ref[pl.ds(q_start, block_q), :]
            w = w_ref[pl.ds(q_start, block_q), :]
            vis = _visible(kvalid, q_start, k_start, (block_q, bk), causal, offset)
            p = jnp.where(vis, jnp.exp(_qk(q, k, scale) - lse), 0.0)
            s_ref[...] += jnp.sum(p * w, axis=0, keepdims=True)
        return carry

    start = 0
    if causal:  # query tiles whose last row is left of this key tile see none of it
        start = jnp.clip((k_start - offset) // block_q, 0, num_q_blocks)
    jax.lax.fori_loop(start, num_q_blocks, body, 0)


def _compiler_params(backend: str, interpret: bool, vmem_bytes: int):
    if interpret:
        return None
    if backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu
        limit = min(max(32 << 20, int(vmem_bytes * 1.5) + (8 << 20)), 100 << 20)
        return pltpu.CompilerParams(dimension_semantics=("parallel",) * 3,
                                    vmem_limit_bytes=limit)
    if backend == "gpu":
        from jax.experimental.pallas import triton as pltriton
        return pltriton.CompilerParams(num_warps=4, num_stages=2)
    raise ValueError(f"importance_attention kernel: no lowering for backend {backend!r}")


def _flags_spec(backend: str, interpret: bool, shape):
    if backend == "tpu" and not interpret:
        from jax.experimental.pallas import tpu as pltpu
        return pl.BlockSpec(memory_space=pltpu.SMEM)
    return pl.BlockSpec(shape, lambda b, h, j: (0, 0))


@functools.partial(jax.jit, static_argnames=(
    "causal", "scale", "offset", "block_q", "block_k", "backend", "interpret"))
def importance_attention_kernel(q, k, v, kvalid, weights, flags, *, causal: bool, scale: float,
                                offset: int, block_q: int, block_k: int, backend: str,
                                interpret: bool):
    """Padded head-major inputs -> (out `[B, H, Lq, Dh]`, per-head scores `[B, H, 1, Lk]` f32).

    q `[B, H, Lq, Dh]`, k, v `[B, KV, Lk, Dh]`, kvalid `[B, 1, Lk]` int32, weights
    `[B, Lq, 1]` float32, flags `[B, Lq / block_q]` int32 (1 where the q tile has a nonzero
    weight). Lq, Lk must be multiples of block_q, block_k; `offset` = true Lk - true Lq.
    """
    b, h, lq, dh = q.shape
    kvh, lk = k.shape[1], k.shape[2]
    group = h // kvh
    nq, nk = lq // block_q, lk // block_k
    isz = q.dtype.itemsize

    attn = pl.pallas_call(
        functools.partial(_attention_kernel, scale=scale, causal=causal, offset=offset,
                          block_k=block_k, num_k_blocks=nk),
        grid=(b, h, nq),
        in_specs=[
            pl.BlockSpec((None, None, block_q, dh), lambda bi, hi, i: (bi, hi, i, 0)),
            pl.BlockSpec((None, None, lk, dh), lambda bi, hi, i: (bi, hi // group, 0, 0)),
            pl.BlockSpec((None, None, lk, dh), lambda bi, hi, i: (bi, hi // group, 0, 0)),
            pl.BlockSpec((None, 1, lk), lambda bi, hi, i: (bi, 0, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, block_q, dh), lambda bi, hi, i: (bi, hi, i, 0)),
            pl.BlockSpec((None, None, block_q, 1), lambda bi, hi, i: (bi, hi, i, 0)),
        ],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, h, lq, 1), jnp.float32)],
        compiler_params=_compiler_params(backend, interpret, 4 * lk * dh * isz + 8 * lk * 4),
        interpret=interpret, name="importance_attention_fwd")
    out, lse = attn(q, k, v, kvalid)

    scores = pl.pallas_call(
        functools.partial(_scores_kernel, scale=scale, causal=causal, offset=offset,
                          block_q=block_q, num_q_blocks=nq),
        grid=(b, h, nk),
        in_specs=[
            _flags_spec(backend, interpret, flags.shape),
            pl.BlockSpec((None, None, lq, dh), lambda bi, hi, j: (bi, hi, 0, 0)),
            pl.BlockSpec((None, None, block_k, dh), lambda bi, hi, j: (bi, hi // group, j, 0)),
            pl.BlockSpec((None, None, lq, 1), lambda bi, hi, j: (bi, hi, 0, 0)),
            pl.BlockSpec((None, lq, 1), lambda bi, hi, j: (bi, 0, 0)),
            pl.BlockSpec((None, 1, block_k), lambda bi, hi, j: (bi, 0, j)),
        ],
        out_specs=pl.BlockSpec((None, None, 1, block_k), lambda bi, hi, j: (bi, hi, 0, j)),
        out_shape=jax.ShapeDtypeStruct((b, h, 1, lk), jnp.float32),
        compiler_params=_compiler_params(backend, interpret, 2 * lq * dh * isz + 4 * lq * 512),
        interpret=interpret, name="importance_attention_scores")(
            flags, q, k, lse, weights, kvalid)
    return out, scores
