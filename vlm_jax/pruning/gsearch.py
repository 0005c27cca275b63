"""G-Search: greedy shallow-to-deep search of a pruning schedule (docs/algorithms.md section 4).

Layer 0 keeps all V tokens. For l = 1 .. L-1, with layers < l fixed, the smallest count c from a
grid with `c <= keep[l-1]` is chosen whose metric (on the schedule `keep[:l] + [c] * (L - l)`)
stays within `eps` of the unpruned model's. Since `c = keep[l-1]` reproduces the schedule
accepted one step before, a choice always exists and the final schedule meets the tolerance.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence

from vlm_jax.io import write_json_atomic
from vlm_jax.pruning import schedules

MetricFn = Callable[[Sequence[int]], float]


@dataclasses.dataclass
class SearchResult:
    """A searched schedule with its calibration metric and the search log."""

    method: str
    keep: tuple[int, ...]
    metric: float
    baseline: float  # metric of the unpruned model
    evaluations: int  # metric calls actually run (cache hits excluded)
    params: dict = dataclasses.field(default_factory=dict)
    log: list[dict] = dataclasses.field(default_factory=list)


def default_grid(num_visual: int, fractions: Sequence[float] = (0, 1 / 16, 1 / 8, 1 / 4, 3 / 8,
                                                                1 / 2, 5 / 8, 3 / 4, 7 / 8, 1)
                 ) -> list[int]:
    """Counts `round(f * V)` for the given fractions, deduplicated and sorted."""
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"grid fraction {f} outside [0, 1]")
    return sorted({int(round(f * num_visual)) for f in fractions})


class EvalCache:
    """Memoises metric values by schedule, optionally persisted to a JSON file (resume)."""

    def __init__(self, metric_fn: MetricFn, path: str | None = None):
        self.metric_fn, self.path, self.runs = metric_fn, path, 0
        self.values: dict[str, float] = {}
        if path and os.path.exists(path):
            with open(path) as f:
                self.values = {k: float(v) for k, v in json.load(f).items()}

    def __call__(self, keep: Sequence[int]) -> float:
        key = ",".join(str(int(k)) for k in keep)
        if key not in self.values:
            self.values[key] = float(self.metric_fn(tuple(int(k) for k in keep)))
            self.runs += 1
            if self.path:
                write_json_atomic(self.path, self.values, indent=None)
        return self.values[key]


def g_search(metric_fn: MetricFn, depth: int, num_visual: int, grid: Sequence[int] | None = None,
             eps: float = 0.0, baseline: float | None = None, cache_path: str | None = None,
             log: Callable[[dict], None] | None = None) -> SearchResult:
    """Greedy schedule search. metric_fn(keep) -> float (higher is better); grid: candidate counts
    (default `default_grid(V)`); eps >= 0: allowed metric drop from `baseline` (default: the
    metric of the unpruned schedule)."""
    if eps < 0:
        raise ValueError(f"G-Search eps must be >= 0, got {eps}")
    grid = default_grid(num_visual) if grid is None else sorted({int(c) for c in grid})
    bad = [c for c in grid if not 0 <= c <= num_visual]
    if bad:
        raise ValueError(f"G-Search grid counts {bad} outside [0, V={num_visual}]")
    evaluate = EvalCache(metric_fn, cache_path)
    full = schedules.full(depth, num_visual)
    base = evaluate(full) if baseline is None else float(baseline)
    keep, history, current = [num_visual], [], base
    for layer in range(1, depth):
        prev, chosen = keep[-1], keep[-1]
        for c in (c for c in grid if c < prev):
            cand = schedules.validate(keep + [c] * (depth - layer), depth, num_visual)
            value = evaluate(cand)
            ok = value >= base - eps
            entry = {"layer": layer, "count": c, "metric": value, "accepted": ok}
            history.append(entry)
            if log:
                log(entry)
            if ok:
                chosen, current = c, value
                break
        keep.append(chosen)
    keep = schedules.validate(keep, depth, num_visual, "G-Search result")
    return SearchResult("gsearch", keep, current, base, evaluate.runs,
                        {"eps": eps, "grid": grid}, history)
