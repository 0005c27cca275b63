"""Attention that also returns per-key importance (attention mass) without the `[Lq, Lk]`
matrix. Public: `importance_attention`, `last_token_weights`, `text_after_weights`."""

from vlm_jax.kernels.importance_attention.api import (
    importance_attention,
    last_token_weights,
    text_after_weights,
)
from vlm_jax.kernels.importance_attention.reference import importance_attention_reference

__all__ = ["importance_attention", "importance_attention_reference", "last_token_weights",
           "text_after_weights"]
