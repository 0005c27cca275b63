"""Top-k compaction of a visual-token span and its per-token arrays (hidden, positions, KV).
Public: `topk_compact`, `select`, `topk_compact_reference`."""

from vlm_jax.kernels.topk_compact.api import canonical_scores, select, topk_compact
from vlm_jax.kernels.topk_compact.reference import source_index, topk_compact_reference

__all__ = ["canonical_scores", "select", "source_index", "topk_compact",
           "topk_compact_reference"]
