"""One cost report for every pruned run, whatever the method (docs/algorithms.md section 4,
budget accounting): per-layer kept counts, average kept visual tokens, LLM prefill FLOPs,
measured time to first token, and the metric, always together.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

import jax

from vlm_jax.models.config import LLMConfig
from vlm_jax.models.flops import llm_prefill_flops
from vlm_jax.pruning import schedules


def prefill_flops(cfg: LLMConfig, text_tokens: int, visual_tokens: int,
                  keep: Sequence[int] | None = None) -> float:
    """LLM prefill FLOPs of one prompt (`vlm_jax.models.flops.llm_prefill_flops` total: layer l
    holds `text_tokens + keep[l]` tokens, plus the last position's LM head)."""
    keep = schedules.full(cfg.depth, visual_tokens) if keep is None else tuple(keep)
    schedules.validate(keep, cfg.depth, visual_tokens)
    return float(llm_prefill_flops(cfg, text_tokens, visual_tokens, schedule=keep)["total"])


def measure_interleaved(fns: dict[str, Callable[[], object]], runs: int = 5
                        ) -> dict[str, float]:
    """Median wall time of each `fn()`, timed round-robin (one call of each per round, after a
    warm-up round) so that load changes on a shared machine hit every entry alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, runs)):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


@dataclasses.dataclass
class CostReport:
    """The cost of one pruned configuration, relative to the unpruned one where given."""

    method: str
    keep: tuple[int, ...]
    avg_kept: float
    prefill_flops: float
    ttft_s: float | None
    metric_name: str
    metric: float | None
    baseline_flops: float | None = None
    baseline_ttft_s: float | None = None
    baseline_metric: float | None = None

    @property
    def flops_speedup(self) -> float | None:
        return self.baseline_flops / self.prefill_flops if self.baseline_flops else None

    @property
    def ttft_speedup(self) -> float | None:
        if self.baseline_ttft_s is None or not self.ttft_s:
            return None
        return self.baseline_ttft_s / self.ttft_s

    @property
    def efficiency(self) -> float | None:
        """Measured speed-up over the FLOPs-predicted one."""
        if self.ttft_speedup is None or not self.flops_speedup:
            return None
        return self.ttft_speedup / self.flops_speedup

    @property
    def metric_drop(self) -> float | None:
        if self.metric is None or self.baseline_metric is None:
            return None
        return self.baseline_metric - self.metric

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["keep"] = list(self.keep)
        d.update(flops_speedup=self.flops_speedup, ttft_speedup=self.ttft_speedup,
                 efficiency=self.efficiency, metric_drop=self.metric_drop)
        return d


def make_report(method: str, cfg: LLMConfig, keep: Sequence[int], text_tokens: int,
                visual_tokens: int, metric_name: str, metric: float | None,
                ttft_s: float | None = None, baseline: CostReport | None = None) -> CostReport:
    """A CostReport; `baseline` (the unpruned report) fills the relative columns."""
    keep = schedules.validate(keep, cfg.depth, visual_tokens, method)
    return CostReport(
        method=method, keep=keep, avg_kept=schedules.average_kept(keep),
        prefill_flops=prefill_flops(cfg, text_tokens, visual_tokens, keep), ttft_s=ttft_s,
        metric_name=metric_name, metric=metric,
        baseline_flops=baseline.prefill_flops if baseline else None,
        baseline_ttft_s=baseline.ttft_s if baseline else None,
        baseline_metric=baseline.metric if baseline else None)


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(reports: Sequence[CostReport]) -> str:
    """A fixed-width table, one row per report (the same columns for every method)."""
    head = (f"{'method':<22} {'avg_kept':>8} {'GFLOPs':>9} {'flops_x':>7} {'ttft_ms':>9} "
            f"{'ttft_x':>6} {'eff':>5} {'metric':>8} {'drop':>7}  keep[l]")
    lines = [head, "-" * len(head)]
    for r in reports:
        lines.append(
            f"{r.method:<22} {r.avg_kept:>8.1f} {r.prefill_flops / 1e9:>9.3f} "
            f"{_fmt(r.flops_speedup, '.2f'):>7} "
            f"{_fmt(None if r.ttft_s is None else r.ttft_s * 1e3, '.1f'):>9} "
            f"{_fmt(r.ttft_speedup, '.2f'):>6} {_fmt(r.efficiency, '.2f'):>5} "
            f"{_fmt(r.metric, '.4f'):>8} {_fmt(r.metric_drop, '.4f'):>7}  "
            f"{_compact_keep(r.keep)}")
    return "\n".join(lines)


def _compact_keep(keep: Sequence[int]) -> str:
    """`576x2,288x22` run-length form of a schedule."""
    runs: list[list[int]] = []
    for k in keep:
        if runs and runs[-1][0] == k:
            runs[-1][1] += 1
        else:
            runs.append([k, 1])
    return ",".join(f"{k}x{n}" if n > 1 else str(k) for k, n in runs)

