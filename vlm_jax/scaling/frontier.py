"""Inference cost of sweep results and their Pareto-optimal set (docs/algorithms.md section 3).

Cost per query is the LLM's `C = 2 N (Q + V)` FLOPs (the vision encoder is a fixed cost), with
N in parameters; `n_unit=1e9` reads N given in billions. A table may instead carry its own
cost column (`flops`, or any name passed as `cost_column`), or a per-row `Q` column.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_jax.scaling.table import LAW_COLUMNS, TableError, read_table


def inference_flops(N: Any, V: Any, text_tokens: Any, n_unit: float = 1.0) -> np.ndarray | float:
    """`C = 2 N (Q + V)` FLOPs (numpy broadcasting); N is multiplied by `n_unit` first."""
    c = 2.0 * np.asarray(N, float) * n_unit * (np.asarray(text_tokens, float) + np.asarray(V,
                                                                                           float))
    return float(c) if np.ndim(c) == 0 else c


def pareto_frontier(table: Any, *, text_tokens: float | None = None, n_unit: float = 1.0,
                    cost_column: str | None = None) -> list[dict[str, Any]]:
    """The rows no cheaper-or-equal row beats: lowest error at each cost, cost ascending.

    table: rows with N, V, score (see `vlm_jax.scaling.table`), optionally a cost column
    (`cost_column`, default `flops` when present) or a `Q` column of per-row text tokens.
    text_tokens: Q for rows without a cost or Q column. Returns the frontier rows as dicts,
    each the original row plus `flops` (the cost used) and `error` (= 1 - score).
    """
    optional = ["Q"] + ([cost_column] if cost_column else ["flops"])
    t = read_table(table, LAW_COLUMNS, optional)
    if cost_column and cost_column not in t.columns:
        raise TableError(f"{t.source}: missing cost column {cost_column!r}")
    error = 1.0 - t["score"]
    cost_key = cost_column or "flops"
    if cost_key in t.columns:
        cost = t[cost_key]
    else:
        q = t.columns.get("Q")
        if q is None:
            if text_tokens is None:
                raise TableError(f"{t.source}: no 'flops' or 'Q' column; pass text_tokens (Q) "
                                 "to compute C = 2 N (Q + V)")
            q = np.full(len(t), float(text_tokens))
        cost = inference_flops(t["N"], t["V"], q, n_unit)
    cost = np.asarray(cost, float).reshape(-1)
    for name, col in (("cost", cost), ("score", t["score"])):
        bad = np.flatnonzero(~np.isfinite(col))
        if bad.size:
            raise TableError(f"{t.source}: {t.labels[bad[0]]} has a missing / NaN {name}")
    order = np.lexsort((error, cost))  # by cost, ties by error
    out, best = [], np.inf
    for i in order:
        if error[i] < best:
            best = error[i]
            out.append({**t.rows[i], "flops": float(cost[i]), "error": float(error[i])})
    return out
