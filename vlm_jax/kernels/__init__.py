"""Pallas kernels for in-LLM visual-token pruning; one package per kernel, each with
`reference.py` (pure jnp, the semantics), `kernel.py` (Pallas) and `api.py` (dispatch on
`impl="pallas" | "xla"`, see `dispatch.py`).

- `importance_attention`: attention output plus the attention mass each key receives from
  chosen query rows, without the `[Lq, Lk]` matrix (lowers on TPU and GPU).
- `topk_compact`: keep the top-k visual tokens in order and gather hidden states, positions and
  KV entries into the shorter sequence (lowers on TPU).
"""

from vlm_jax.kernels.importance_attention import importance_attention
from vlm_jax.kernels.topk_compact import topk_compact

__all__ = ["importance_attention", "topk_compact"]
