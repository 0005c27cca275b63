"""The two primitives pruning needs, behind one `impl` switch.

- `attention_importance`: attention output plus, per key, the attention mass it receives from
  chosen query rows, averaged over heads (docs/algorithms.md section 4).
- `select_and_compact`: keep every non-visual token and the top-k visual tokens by importance,
  in original order, gathering any number of `[B, L, ...]` arrays in one go.

impl: "xla" (plain jnp, here); "pallas" (the kernels in `vlm_jax.kernels`: importance attention
lowers on TPU and GPU, top-k compaction on TPU; where the compaction kernel does not lower,
compaction uses XLA); "pallas_interpret" (the same kernels through the Pallas interpreter, any
backend: for tests). The Pallas paths assume what pruning guarantees: a prefill on a fresh cache
(queries are the first Lq key slots) and one contiguous visual span per row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from vlm_jax.models.layers import attention_weights

IMPLS = ("xla", "pallas", "pallas_interpret")


def check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"unknown pruning impl {impl!r}; known: {list(IMPLS)}")


def attention_importance_xla(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                             rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """q `[B, Lq, H, Dh]`, k, v `[B, Lk, KV, Dh]`, mask `[B, Lq, Lk]` bool, rows `[B, Lq]` bool
    -> (output `[B, Lq, H, Dh]`, importance `[B, Lk]` float32 = mean over heads of the summed
    probabilities from the rows)."""
    b, lq, h, dh = q.shape
    kv = k.shape[2]
    probs = attention_weights(q.reshape(b, lq, kv, h // kv, dh), k, mask)  # [B, KV, G, Lq, Lk]
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs.astype(v.dtype), v).reshape(b, lq, h, dh)
    importance = jnp.einsum("bkgqs,bq->bs", probs, rows.astype(jnp.float32)) / h
    return out, importance


def _attention_importance_pallas(q, k, v, rows, valid, interpret: bool):
    from vlm_jax.kernels.importance_attention.api import importance_attention
    n, slots = q.shape[1], k.shape[1]
    out, scores = importance_attention(q, k[:, :n], v[:, :n], rows.astype(jnp.float32),
                                       key_valid=valid, causal=True, impl="pallas",
                                       interpret=interpret)
    return out, jnp.pad(scores, ((0, 0), (0, slots - n)))


@struct.dataclass
class ImportanceRequest:
    """Passed to a decoder layer to ask its attention for key importance as well.

    Calling it has `attention`'s contract plus the importance: `(q, k, v, mask) -> (out,
    importance [B, Lk])`. A pytree (arrays are leaves, impl static), so it crosses `nn.remat`.
    """

    rows: jax.Array  # [B, Lq] bool: the query set S
    valid: jax.Array  # [B, Lq] bool: which of this prefill's tokens are real (key validity)
    impl: str = struct.field(pytree_node=False, default="xla")

    def __call__(self, q, k, v, mask):
        check_impl(self.impl)
        if self.impl == "xla":
            return attention_importance_xla(q, k, v, mask, self.rows)
        return _attention_importance_pallas(q, k, v, self.rows, self.valid,
                                            self.impl == "pallas_interpret")


def gather_tokens(index: jax.Array, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Each `[B, L, ...]` array at `index` `[B, L']` along axis 1."""
    out = []
    for a in arrays:
        idx = index.reshape(index.shape + (1,) * (a.ndim - 2))
        out.append(jnp.take_along_axis(a, idx, axis=1))
    return tuple(out)


def _compact_pallas(importance, visual, num_visual, keep, arrays, interpret: bool):
    from vlm_jax.kernels.dispatch import platform_of
    from vlm_jax.kernels.topk_compact import api
    impl = "pallas" if interpret or platform_of(jax.default_backend()) in api.LOWERS_ON else "xla"
    start = jnp.argmax(visual, axis=1).astype(jnp.int32)  # the span's first slot
    span = start[:, None] + jnp.arange(num_visual, dtype=jnp.int32)[None]
    scores = jnp.take_along_axis(importance.astype(jnp.float32), span, axis=1)
    outs, index = api.topk_compact(scores, start, keep, arrays, impl=impl, interpret=interpret)
    return index, tuple(outs)


def select_and_compact(importance: jax.Array, visual: jax.Array, num_visual: int, keep: int,
                       arrays: tuple[jax.Array, ...], impl: str = "xla"
                       ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Keeps all non-visual tokens and the top-`keep` of the `num_visual` visual tokens per row
    (ties to the earlier token).

    importance `[B, L]`, visual `[B, L]` bool (exactly `num_visual` per row), arrays: each
    `[B, L, ...]` -> (index `[B, L - num_visual + keep]` of the survivors in original order, the
    arrays gathered there).
    """
    check_impl(impl)
    if not 0 <= keep <= num_visual:
        raise ValueError(f"keep={keep} outside [0, {num_visual}]")
    if impl != "xla":
        return _compact_pallas(importance, visual, num_visual, keep, arrays,
                               impl == "pallas_interpret")
    b, n = visual.shape
    prio = jnp.where(visual, importance.astype(jnp.float32), jnp.inf)
    _, idx = jax.lax.top_k(prio, n - num_visual + keep)
    index = jnp.sort(idx, axis=1).astype(jnp.int32)
    return index, gather_tokens(index, *arrays)
