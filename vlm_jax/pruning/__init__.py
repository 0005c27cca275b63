"""Inference-time visual-token pruning inside the LLM (docs/algorithms.md section 4).

- `PruneSpec(keep, query="last"|"text", impl="xla"|"pallas"|"pallas_interpret")`: a static
  schedule; pass it as `VLM.forward(..., prune=spec)` (or its `spec.hook(visual, valid, ...)` as
  `Decoder.__call__(..., hook=...)`) to get a `PrunedOutput(logits, hidden, cache, index,
  importance)`.
- `schedules`: validate / full / fastv / psigmoid / save / load.
- generation under a schedule: `vlm_jax.eval.generate.Generator(module, steps, prune=spec)`.
- `gsearch.g_search`, `psigmoid.psigmoid_search`: schedule searches over `metric_fn(keep)`.
- `report`: the one cost-report format; `diagnostics`: Kendall tau of layer rankings.
- `run(config, workdir)`: `python -m vlm_jax.main` with `config.mode == "prune_search"`.
"""

from vlm_jax.pruning import schedules
from vlm_jax.pruning.forward import PrunedOutput, PruneSpec, cache_sizes, query_rows
from vlm_jax.pruning.schedules import ScheduleError


def run(config, workdir: str) -> dict:
    """Schedule search / evaluation from a config (see `vlm_jax.pruning.runner`)."""
    from vlm_jax.pruning.runner import run as _run
    return _run(config, workdir)


__all__ = ["PruneSpec", "PrunedOutput", "ScheduleError", "cache_sizes", "query_rows", "run",
           "schedules"]
