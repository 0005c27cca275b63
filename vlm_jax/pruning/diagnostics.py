"""Diagnostics for G-Search's premise: visual-token rankings agree across layers (except the
first). `layer_importance` records every layer's importance on an unpruned run;
`kendall_tau_matrix` compares the rankings layer against layer."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from vlm_jax.models.config import VLMConfig
from vlm_jax.models.vlm import VLM
from vlm_jax.pruning import schedules
from vlm_jax.pruning.forward import PruneSpec


@functools.lru_cache(maxsize=16)
def _importance_fn(cfg: VLMConfig, spec: PruneSpec):
    def fn(params, b):
        out = VLM(cfg).apply({"params": params}, b["images"], b["tokens"], b["valid"], None,
                             b["question"], b["question_valid"], prune=spec, logits=False,
                             method="forward")
        return jnp.stack(out.importance)  # [depth, B, L]
    return jax.jit(fn)


def layer_importance(cfg: VLMConfig, params, batch: dict, query: str = "last",
                     impl: str = "xla") -> np.ndarray:
    """Importance of every visual token at every layer, unpruned: `[depth, B, V]`.

    batch: {images, tokens, valid?, question?, question_valid?}; visual tokens are taken in
    their prompt order for each example (offsets may differ with padding).
    """
    spec = PruneSpec(schedules.full(cfg.llm.depth, cfg.num_visual_tokens), query=query,
                     impl=impl, record=True)
    keys = ("images", "tokens", "valid", "question", "question_valid")
    scores = np.asarray(_importance_fn(cfg, spec)(params, {k: batch.get(k) for k in keys}))

    visual = np.asarray(batch["tokens"]) == cfg.image_token_id
    return np.stack([scores[:, b, visual[b]] for b in range(visual.shape[0])], axis=1)


def kendall_tau_matrix(importance: np.ndarray) -> np.ndarray:
    """`[depth, B, V]` importance -> `[depth, depth]` Kendall tau between layer rankings,
    averaged over examples (tau-b; 1 on the diagonal)."""
    depth, batch, _ = importance.shape
    tau = np.eye(depth)
    for i in range(depth):
        for j in range(i + 1, depth):
            vals = [stats.kendalltau(importance[i, b], importance[j, b]).statistic
                    for b in range(batch)]
            tau[i, j] = tau[j, i] = float(np.nanmean(vals))
    return tau


def adjacent_tau(tau: np.ndarray) -> list[float]:
    """Kendall tau between consecutive layers (l-1, l) for l = 1 .. depth-1."""
    return [float(tau[i - 1, i]) for i in range(1, tau.shape[0])]
