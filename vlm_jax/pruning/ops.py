"""The two primitives pruning needs, on the kernels' one `impl` switch (kernels.dispatch.IMPLS).

- `ImportanceRequest`: what a decoder layer's attention is asked to compute: the attention
  output plus, per key, the attention mass it receives from chosen query rows, averaged over
  heads (docs/algorithms.md section 4; `vlm_jax.kernels.importance_attention`, whose
  reference defines the masking: a row that sees no key gets output 0 and gives no mass).
- `select_and_compact`: keep every non-visual token and the top-k visual tokens by importance,
  in original order (ties to the earlier token), gathering any number of `[B, L, ...]` arrays in
  one go (`vlm_jax.kernels.topk_compact`).

impl: "xla" (the kernels' pure-jnp references), "pallas" (the Pallas kernels: importance
attention lowers on TPU and GPU, top-k compaction on TPU; elsewhere it raises), or
"pallas_interpret" (the same kernels through the Pallas interpreter, any backend: for tests).
Both assume what pruning guarantees: a prefill (queries are the keys) and one contiguous visual
span per row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from vlm_jax.kernels.dispatch import IMPLS, check_impl
from vlm_jax.kernels.importance_attention import importance_attention
from vlm_jax.kernels.topk_compact import topk_compact

__all__ = ["IMPLS", "ImportanceRequest", "check_impl", "select_and_compact"]


@struct.dataclass
class ImportanceRequest:
    """Asks a decoder layer's attention for key importance as well (a models.llm.ImportanceFn:
    `(q [B, L, H, Dh], k, v [B, L, KV, Dh], valid [B, L]) -> (out [B, L, H, Dh],
    importance [B, L])`). A pytree (arrays are leaves, impl static), so it crosses `nn.remat`.
    """

    rows: jax.Array  # [B, L] bool: the query set S
    impl: str = struct.field(pytree_node=False, default="xla")

    def __call__(self, q, k, v, valid):
        return importance_attention(q, k, v, self.rows, key_valid=valid, causal=True,
                                    impl=self.impl)


def select_and_compact(importance: jax.Array, visual: jax.Array, num_visual: int, keep: int,
                       arrays: tuple[jax.Array, ...], impl: str = "xla"
                       ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Keeps all non-visual tokens and the top-`keep` of the `num_visual` visual tokens per row.

    importance `[B, L]`, visual `[B, L]` bool (one contiguous span of `num_visual` per row),
    arrays: each `[B, L, ...]` -> (index `[B, L - num_visual + keep]` of the survivors in
    original order, the arrays gathered there).
    """
    check_impl(impl)
    if not 0 <= keep <= num_visual:
        raise ValueError(f"keep={keep} outside [0, {num_visual}]")
    start = jnp.argmax(visual, axis=1).astype(jnp.int32)  # the span's first slot
    span = start[:, None] + jnp.arange(num_visual, dtype=jnp.int32)[None]
    scores = jnp.take_along_axis(importance.astype(jnp.float32), span, axis=1)
    outs, index = topk_compact(scores, start, keep, arrays, impl=impl)
    return index, tuple(outs)
