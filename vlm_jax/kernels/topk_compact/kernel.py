"""Pallas top-k compaction (TPU / interpreter). Semantics: reference.py.

Two steps, each one `pallas_call`:
1. `select_kernel`, grid `(B,)`: ranks the V scores of an example against each other in
   `[128, Vp]` tiles (rank = how many scores beat it; "beat" = higher, or equal at a lower
   slot), keeps rank < keep, and writes the kept offsets in increasing order (an exclusive
   running count of kept slots gives each its output row). Vector compares and sums only.
2. a gather that reads each array once and writes `[B, L - V + keep, ...]`; the source row of
   every output row is computed on the scalar core from `start` and the kept offsets (both
   scalar-prefetched), so no index array is materialised:
   - arrays with per-token slabs of rank >= 2 (KV caches `[B, L, KV, Dh]`): one HBM->HBM DMA
     per row, up to `WAVE` in flight;
   - `[B, L, F]` arrays (hidden states; positions as `[B, L, 1]`): the `[L, Fc]` slab of a
     feature chunk sits in VMEM and rows are copied one by one (16-bit dtypes are staged
     through float32 scratch: Mosaic moves single rows of 32-bit data only; bf16 -> f32 ->
     bf16 is exact).
TPU constraints met: block minor dims are full or multiples of (8, 128); DMAs index only
untiled leading dims. These kernels use scalar prefetch and DMAs, so they lower on TPU only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

CHUNK = 128  # rows of the rank tile
WAVE = 64  # row DMAs in flight
ROWS_VMEM_BUDGET = 4 << 20  # bytes of one [L, Fc] slab


def _tpu_params(interpret: bool, dims: int, vmem_bytes: int = 0):
    if interpret:
        return None
    limit = min(max(32 << 20, int(vmem_bytes * 1.25) + (8 << 20)), 100 << 20)
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * dims, vmem_limit_bytes=limit)


def _select_kernel(row_ref, col_ref, sel_ref, *, keep: int):
    vp = row_ref.shape[1]
    sj = row_ref[...]  # [1, Vp]
    j = jax.lax.broadcasted_iota(jnp.int32, (CHUNK, vp), 1)

    def count(c, carry):
        rank, dest = carry  # [1, Vp] float32 counts (exact below 2**24)
        i0 = pl.multiple_of(c * CHUNK, CHUNK)
        si = col_ref[pl.ds(i0, CHUNK), :]  # [CHUNK, 1]
        i = i0 + jax.lax.broadcasted_iota(jnp.int32, (CHUNK, vp), 0)
        beats = ((si > sj) | ((si == sj) & (i < j))).astype(jnp.float32)  # i ranks above j
        rank = rank + jnp.sum(beats, axis=0, keepdims=True)
        # exactly one of (i beats j), (j beats i) holds for i != j
        kept_i = (vp - 1) - jnp.sum(beats, axis=1, keepdims=True) < keep  # [CHUNK, 1]
        dest = dest + jnp.sum(jnp.where(kept_i & (i < j), 1.0, 0.0), axis=0, keepdims=True)
        return rank, dest

    zeros = jnp.zeros((1, vp), jnp.float32)
    rank, dest = jax.lax.fori_loop(0, vp // CHUNK, count, (zeros, zeros))
    kept = rank < keep
    jf = jax.lax.broadcasted_iota(jnp.int32, (8, vp), 1).astype(jnp.float32)

    def emit(c, carry):
        r0 = pl.multiple_of(c * 8, 8)
        r = (r0 + jax.lax.broadcasted_iota(jnp.int32, (8, vp), 0)).astype(jnp.float32)
        hit = kept & (dest == r)
        sel_ref[pl.ds(r0, 8), :] = jnp.sum(jnp.where(hit, jf, 0.0), axis=1,
                                           keepdims=True).astype(jnp.int32)
        return carry

    jax.lax.fori_loop(0, sel_ref.shape[0] // 8, emit, 0)


@functools.partial(jax.jit, static_argnames=("keep", "interpret"))
def select_kernel(scores: jax.Array, *, keep: int, interpret: bool) -> jax.Array:
    """`[B, Vp]` float32 (Vp a multiple of 128; padding -inf after the real slots) ->
    `[B, Kp]` int32 kept offsets, increasing; Kp = keep rounded up to 8, the tail is junk."""
    b, vp = scores.shape
    kp = max(8, -(-keep // 8) * 8)
    sel = pl.pallas_call(
        functools.partial(_select_kernel, keep=keep),
        grid=(b,),
        in_specs=[pl.BlockSpec((None, 1, vp), lambda i: (i, 0, 0)),
                  pl.BlockSpec((None, vp, 1), lambda i: (i, 0, 0))],
        out_specs=pl.BlockSpec((None, kp, 1), lambda i: (i, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((b, kp, 1), jnp.int32),
        compiler_params=_tpu_params(interpret, 1, 4 * vp * (CHUNK + 8) * 4),
        interpret=interpret, name="topk_select")(scores[:, None, :], scores[:, :, None])
    return sel[:, :, 0]


def _source_row(r, b, start_ref, sel_ref, keep: int, drop: int):
    """Input slot of output slot r (scalar arithmetic; see reference.source_index)."""
    s = start_ref[b]
    vis = s + sel_ref[b, jnp.clip(r - s, 0, max(keep - 1, 0))]
    return jnp.where(r < s, r, jnp.where(r < s + keep, vis, r + drop))


def _dma_kernel(start_ref, sel_ref, x_hbm, o_hbm, sem, *, keep: int, drop: int, rows: int):
    b = pl.program_id(0)

    def copy(r):
        r = jnp.minimum(r, rows - 1)  # the last wave may repeat the last row (same bytes)
        src = _source_row(r, b, start_ref, sel_ref, keep, drop)
        return pltpu.make_async_copy(x_hbm.at[b, src], o_hbm.at[b, r], sem)

    def wave(w, carry):
        base = w * WAVE

        def start(t, c):
            copy(base + t).start()
            return c

        def wait(t, c):
            copy(base + t).wait()
            return c

        jax.lax.fori_loop(0, WAVE, start, 0)
        jax.lax.fori_loop(0, WAVE, wait, 0)
        return carry

    jax.lax.fori_loop(0, pl.cdiv(rows, WAVE), wave, 0)


def _rows_kernel(start_ref, sel_ref, x_ref, o_ref, *scratch, keep: int, drop: int):
    b = pl.program_id(0)
    if scratch:  # 16-bit: move rows as float32
        src, dst = scratch
        src[...] = x_ref[...].astype(jnp.float32)
    else:
        src, dst = x_ref, o_ref

    def body(r, carry):
        dst[pl.ds(r, 1), :] = src[pl.ds(_source_row(r, b, start_ref, sel_ref, keep, drop), 1), :]
        return carry

    jax.lax.fori_loop(0, dst.shape[0], body, 0)
    if scratch:
        o_ref[...] = dst[...].astype(o_ref.dtype)


def _feature_chunk(length: int, f: int, itemsize: int) -> int:
    if f <= 128 or f % 128:
        return f
    for fc in (512, 256, 128):
        if f % fc == 0 and length * fc * 4 <= ROWS_VMEM_BUDGET:
            return fc
    return 128


@functools.partial(jax.jit, static_argnames=("keep", "num_visual", "interpret"))
def gather_kernel(x: jax.Array, start: jax.Array, sel: jax.Array, *, keep: int, num_visual: int,
                  interpret: bool) -> jax.Array:
    """x `[B, L, F]` (32- or 16-bit) or `[B, L, A, C]`, start `[B]` int32 (the visual span fits:
    `0 <= start <= L - V`), sel `[B, Kp]` kept offsets -> `[B, L - V + keep, ...]`."""
    b, length = x.shape[:2]
    rows = length - num_visual + keep
    out_shape = jax.ShapeDtypeStruct((b, rows) + x.shape[2:], x.dtype)
    kw = dict(keep=keep, drop=num_visual - keep)
    if x.ndim >= 4:
        anywhere = pl.BlockSpec(memory_space=pl.ANY)
        return pl.pallas_call(
            functools.partial(_dma_kernel, rows=rows, **kw), out_shape=out_shape,
            grid_spec=pltpu.PrefetchScalarGridSpec(
                num_scalar_prefetch=2, grid=(b,), in_specs=[anywhere], out_specs=anywhere,
                scratch_shapes=[pltpu.SemaphoreType.DMA]),
            compiler_params=_tpu_params(interpret, 1), interpret=interpret,
            name="topk_gather_dma")(start, sel, x)
    if x.ndim != 3 or x.dtype.itemsize not in (2, 4):
        raise ValueError(f"topk_compact gather: need [B, L, F] with a 16- or 32-bit dtype or "
                         f"[B, L, A, C]; got {x.shape} {x.dtype}")
    f = x.shape[2]
    fc = _feature_chunk(length, f, x.dtype.itemsize)
    scratch = []
    if x.dtype.itemsize == 2:
        scratch = [pltpu.VMEM((length, fc), jnp.float32), pltpu.VMEM((rows, fc), jnp.float32)]
    vmem = (length + rows) * fc * (2 * x.dtype.itemsize + (4 if scratch else 0))
    return pl.pallas_call(
        functools.partial(_rows_kernel, **kw), out_shape=out_shape,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(b, f // fc),
            in_specs=[pl.BlockSpec((None, length, fc), lambda i, c, *_: (i, 0, c))],
            out_specs=pl.BlockSpec((None, rows, fc), lambda i, c, *_: (i, 0, c)),
            scratch_shapes=scratch),
        compiler_params=_tpu_params(interpret, 2, vmem), interpret=interpret,
        name="topk_gather_rows")(start, sel, x)
