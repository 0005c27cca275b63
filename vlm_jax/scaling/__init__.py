"""Scaling laws for inference-optimal VLMs: FLOPs model, law fitting, frontier, plots.

Public contract: `fit(table) -> Law` with `law.alpha, law.beta, law.A, law.D`,
`law.predict(N, V)` and `law.optimal_tokens(text_tokens=Q)`; `table` is rows `(N, V, score)`.
CLI: `python -m vlm_jax.scaling fit FILE.csv --text-tokens Q` prints JSON. Plots live in
`vlm_jax.scaling.plots` (imported on use: it pulls in matplotlib).
"""

from vlm_jax.models.flops import (
    Flops,
    compressor_flops,
    format_flops,
    llm_decode_flops,
    llm_layer_flops,
    llm_prefill_flops,
    param_count,
    projector_flops,
    simple_flops,
    vision_flops,
    vlm_flops,
)
from vlm_jax.scaling.frontier import inference_flops, pareto_frontier
from vlm_jax.scaling.law import BOUNDS, BoundWarning, Law, fit
from vlm_jax.scaling.table import TableError, read_table

__all__ = [
    "fit", "Law", "BOUNDS", "BoundWarning", "TableError", "read_table",
    "pareto_frontier", "inference_flops",
    "Flops", "format_flops", "param_count", "simple_flops", "vlm_flops", "vision_flops",
    "compressor_flops", "projector_flops", "llm_layer_flops", "llm_prefill_flops",
    "llm_decode_flops",
]
