"""Pallas kernels vs their pure-jnp references, in interpret mode on CPU (tiny shapes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.kernels.importance_attention import (
    importance_attention,
    importance_attention_reference,
    last_token_weights,
    text_after_weights,
)
from vlm_jax.kernels.topk_compact import select, source_index, topk_compact, topk_compact_reference
from vlm_jax.models.layers import attention, causal_mask


def _qkv(rng, b, lq, lk, h, kv, dh, dtype=jnp.float32):
    q = jnp.asarray(rng.normal(size=(b, lq, h, dh)), dtype)
    k = jnp.asarray(rng.normal(size=(b, lk, kv, dh)), dtype)
    v = jnp.asarray(rng.normal(size=(b, lk, kv, dh)), dtype)
    return q, k, v


def _padding(rng, b, lk):
    """Random key validity with one left-padded and one right-padded example."""
    valid = rng.random((b, lk)) > 0.15
    valid[0, :3] = False
    valid[-1, lk - 4:] = False
    return jnp.asarray(valid)


# (B, Lq, Lk, H, KV, Dh, causal, block_q, block_k)
ATTN_CASES = [
    (2, 13, 13, 4, 4, 16, True, 8, 8),  # MHA, causal, ragged length
    (2, 37, 37, 4, 2, 8, True, 16, 8),  # GQA, several tiles each way
    (1, 20, 33, 6, 2, 8, False, 8, 16),  # GQA, cross-length, not causal
    (2, 5, 29, 2, 1, 16, True, 8, 8),  # queries are the last 5 of 29 keys (decode-like)
    (1, 19, 19, 2, 1, 8, True, 32, 32),  # blocks larger than the sequence
]


@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "x".join(map(str, c)))
def test_importance_attention_matches_reference(case):
    b, lq, lk, h, kv, dh, causal, bq, bk = case
    rng = np.random.default_rng(sum(case[:6]))
    q, k, v = _qkv(rng, b, lq, lk, h, kv, dh)
    valid = _padding(rng, b, lk)
    weights = jnp.asarray(rng.random((b, lq)) * (rng.random((b, lq)) > 0.5), jnp.float32)
    out_ref, s_ref = importance_attention(q, k, v, weights, key_valid=valid, causal=causal,
                                          impl="xla")
    out, s = importance_attention(q, k, v, weights, key_valid=valid, causal=causal,
                                  impl="pallas_interpret", block_q=bq, block_k=bk)
    assert out.shape == (b, lq, h, dh) and s.shape == (b, lk) and s.dtype == jnp.float32
    np.testing.assert_allclose(out, out_ref, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(s, s_ref, atol=2e-6, rtol=1e-5)
    assert float(jnp.abs(s_ref).sum()) > 0.1  # the comparison is not between zeros
    assert not bool(jnp.any(s[~valid]))  # padded keys get no mass


def test_importance_attention_bf16_last_token_under_jit():
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 3, 24, 24, 4, 2, 16, jnp.bfloat16)
    valid = _padding(rng, 3, 24)
    w = last_token_weights(valid).at[1].set(0.0)  # example 1 selects no row
    out_ref, s_ref = importance_attention(q, k, v, w, key_valid=valid, impl="xla")
    fn = jax.jit(lambda q, k, v, w, valid: importance_attention(
        q, k, v, w, key_valid=valid, impl="pallas_interpret", block_q=8, block_k=16))
    out, s = fn(q, k, v, w, valid)
    assert out.dtype == jnp.bfloat16
    assert not bool(jnp.any(s[1])) and bool(jnp.all(s[0][valid[0]] > 0))
    np.testing.assert_allclose(out.astype(jnp.float32), out_ref.astype(jnp.float32), atol=2e-2)
    np.testing.assert_allclose(s, s_ref, atol=5e-3)


def test_reference_matches_model_attention_and_probabilities():
    """The reference's output is the model's attention; its scores are the head-mean of the
    selected rows of softmax probabilities."""
    rng = np.random.default_rng(2)
    b, n, h, kv, dh = 2, 11, 4, 2, 8
    q, k, v = _qkv(rng, b, n, n, h, kv, dh)
    valid = jnp.ones((b, n), bool).at[1, :2].set(False)
    w = text_after_weights(valid, jnp.array([6, 8]))
    out, scores = importance_attention_reference(q, k, v, valid, w, causal=True,
                                                 scale=1 / np.sqrt(dh))
    want = attention(q, k, v, causal_mask(valid))
    seen = np.asarray(valid)  # rows that see at least one key (row i sees itself when valid)
    np.testing.assert_allclose(np.asarray(out)[seen], np.asarray(want)[seen], atol=1e-5)
    s = np.einsum("bqhd,bkhd->bhqk", np.repeat(np.asarray(q), 1, 2),
                  np.repeat(np.asarray(k), h // kv, 2)) / np.sqrt(dh)
    mask = np.asarray(causal_mask(valid))[:, None]
    p = np.where(mask, np.exp(s - np.where(mask, s, -np.inf).max(-1, keepdims=True)), 0)
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-30)
    np.testing.assert_allclose(scores, np.einsum("bhqk,bq->bk", p, np.asarray(w)) / h, atol=1e-5)
    np.testing.assert_allclose(scores.sum(1), w.sum(1), rtol=1e-5)  # each row sums to 1


def test_query_weight_helpers():
    valid = jnp.array([[True, True, True, False], [False, True, True, True]])
    np.testing.assert_array_equal(last_token_weights(valid), [[0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(text_after_weights(valid, jnp.array([1, 3])),
                                  [[0, 1, 1, 0], [0, 0, 0, 1]])


def test_importance_attention_errors():
    q, k, v = _qkv(np.random.default_rng(0), 1, 8, 8, 3, 2, 8)
    with pytest.raises(ValueError, match="multiple of KV"):
        importance_attention(q, k, v, jnp.ones((1, 8)))
    q, k, v = _qkv(np.random.default_rng(0), 1, 8, 8, 4, 2, 8)
    with pytest.raises(ValueError, match="query_weights"):
        importance_attention(q, k, v, jnp.ones((1, 7)))
    with pytest.raises(ValueError, match="cannot lower on 'cpu'"):
        importance_attention(q, k, v, jnp.ones((1, 8)), impl="pallas")
    with pytest.raises(ValueError, match="impl="):
        importance_attention(q, k, v, jnp.ones((1, 8)), impl="triton")
    with pytest.raises(ValueError, match="of 128 for the key block"):
        importance_attention(q, k, v, jnp.ones((1, 8)), impl="pallas", backend="tpu",
                             block_k=64)


# ---------------------------------------------------------------- top-k compaction


def _token_arrays(rng, b, length, full):
    """Every kind of per-token array (`full`), or one of each gather path."""
    arrays = [
        jnp.asarray(rng.normal(size=(b, length, 24)), jnp.bfloat16),  # hidden, 16-bit
        jnp.asarray(rng.normal(size=(b, length, 16)), jnp.float32),  # hidden, 32-bit
        jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32) * 3, (b, length)),  # positions
        jnp.asarray(rng.random((b, length)) > 0.2),  # valid, bool
        jnp.asarray(rng.normal(size=(b, length, 2, 8)), jnp.bfloat16),  # cache keys
        jnp.asarray(rng.normal(size=(b, length, 3, 4)), jnp.float32),  # cache values
    ]
    return arrays if full else [arrays[0], arrays[4]]


# (B, L, V, keep, starts, every array kind)
COMPACT_CASES = [
    (3, 40, 20, 7, (0, 5, 20), True),  # span at the start, middle and end
    (2, 30, 9, 0, (4, 21), False),  # drop every visual token
    (2, 30, 9, 9, (1, 2), False),  # keep all: identity
    (1, 150, 140, 1, (3,), False),  # V > 128: several rank tiles
    (2, 12, 12, 5, (0, 7), False),  # whole sequence visual; a too-late start is clamped
]


@pytest.mark.parametrize("case", COMPACT_CASES, ids=lambda c: "x".join(map(str, c[:4])))
def test_topk_compact_matches_reference_exactly(case):
    b, length, v, keep, starts, full = case
    rng = np.random.default_rng(length + keep)
    scores = rng.integers(0, 4, size=(b, v)).astype(np.float32)  # many ties
    scores[0, 1] = np.nan
    scores[-1, -1] = -0.0
    scores = jnp.asarray(scores)
    start = jnp.asarray(starts, jnp.int32)
    arrays = _token_arrays(rng, b, length, full)
    ref, ref_index = topk_compact(scores, start, keep, arrays, impl="xla")
    out, index = topk_compact(scores, start, keep, arrays, impl="pallas_interpret")
    np.testing.assert_array_equal(index, ref_index)
    for x, got, want in zip(arrays, out, ref):
        assert got.shape == (b, length - v + keep) + x.shape[2:] and got.dtype == x.dtype
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_select_reference_semantics():
    s = jnp.array([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0], [0.0, -0.0, jnp.nan, -jnp.inf, 0.0, 5.0]])
    for impl, kw in (("xla", {}), ("pallas_interpret", {})):
        np.testing.assert_array_equal(select(s, 2, impl=impl, **kw), [[1, 2], [0, 5]])
        np.testing.assert_array_equal(select(s, 4, impl=impl, **kw), [[1, 2, 3, 4], [0, 1, 4, 5]])
    distinct = jnp.asarray(np.random.default_rng(0).permutation(50)[None].astype(np.float32))
    np.testing.assert_array_equal(select(distinct, 10, impl="xla")[0],
                                  np.sort(np.argsort(-np.asarray(distinct[0]))[:10]))


def test_source_index_layout():
    sel = jnp.array([[1, 3]])
    np.testing.assert_array_equal(source_index(sel, jnp.array([2]), 8, 4), [[0, 1, 3, 5, 6, 7]])
    out, index = topk_compact_reference(jnp.array([[0.0, 9.0, 1.0, 8.0]]), jnp.array([2]), 2,
                                        [jnp.arange(8)[None] * 10])
    np.testing.assert_array_equal(out[0], [[0, 10, 30, 50, 60, 70]])


def test_topk_compact_errors():
    x = jnp.zeros((2, 10, 4))
    with pytest.raises(ValueError, match="keep=5 outside"):
        topk_compact(jnp.zeros((2, 4)), jnp.zeros(2, jnp.int32), 5, [x])
    with pytest.raises(ValueError, match=r"arrays\[1\]"):
        topk_compact(jnp.zeros((2, 4)), jnp.zeros(2, jnp.int32), 2, [x, jnp.zeros((2, 9))])
    with pytest.raises(ValueError, match="start must be"):
        topk_compact(jnp.zeros((2, 4)), jnp.zeros(3, jnp.int32), 2, [x])
    with pytest.raises(ValueError, match="cannot lower on 'cpu'"):
        topk_compact(jnp.zeros((2, 4)), jnp.zeros(2, jnp.int32), 2, [x], impl="pallas")


def test_kernel_benchmark_smoke_on_cpu(capsys):
    from vlm_jax.bench.kernels import main

    report = main([])
    out = capsys.readouterr()
    assert report["smoke"] and "NOT timings" in out.err and out.out.splitlines()[-1].startswith("{")
    for row in report["rows"]:
        assert row["max_abs_diff_out"] < 1e-5 and row["max_abs_diff_scores"] < 1e-5
