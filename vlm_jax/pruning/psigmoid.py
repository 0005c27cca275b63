"""P-Sigmoid schedule parameters `(k, l0, b)` by Bayesian optimisation under a budget.

optuna (seeded TPE or GP sampler) maximises the calibration metric of
`schedules.psigmoid(depth, V, k, l0, b)` subject to `cost_fn(keep) <= budget`, where the cost is
the average kept visual tokens over layers (default) or any other static cost (e.g. LLM prefill
FLOPs, see `report.prefill_flops`). Infeasible proposals are not evaluated: they are reported to
the sampler as violated constraints (`Trial.set_constraint`) and scored below every feasible
trial. A
feasible starting point is enqueued first, so a result always exists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import optuna

from vlm_jax.pruning import schedules
from vlm_jax.pruning.gsearch import EvalCache, MetricFn, SearchResult

SAMPLERS = ("tpe", "gp")


def _sampler(name: str, seed: int):
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8)
    raise ValueError(f"unknown P-Sigmoid sampler {name!r}; known: {list(SAMPLERS)}")


def _feasible_start(depth: int, num_visual: int, budget: float, cost_fn, k: float
                    ) -> dict | None:
    """The largest floor b (a sharp drop right after layer 0) whose schedule meets the budget."""
    for b in np.linspace(1.0, 0.0, 101):
        keep = schedules.psigmoid(depth, num_visual, k, 0.5, float(b))
        if cost_fn(keep) <= budget:
            return {"k": k, "l0": 0.5, "b": float(b)}
    return None


def psigmoid_search(metric_fn: MetricFn, depth: int, num_visual: int, budget: float,
                    cost_fn: Callable[[Sequence[int]], float] | None = None,
                    n_trials: int = 30, sampler: str = "tpe", seed: int = 0,
                    k_range: tuple[float, float] = (0.05, 20.0), storage: str | None = None,
                    study_name: str = "psigmoid", cache_path: str | None = None
                    ) -> SearchResult:
    """Best P-Sigmoid schedule within `budget` (a cap on `cost_fn(keep)`, default the average
    kept visual tokens). storage: an optuna storage (e.g. a JournalStorage) to resume a study."""
    cost_fn = cost_fn or schedules.average_kept
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    start = _feasible_start(depth, num_visual, budget, cost_fn, k_range[1])
    if start is None:
        floor = cost_fn(schedules.psigmoid(depth, num_visual, k_range[1], 0.5, 0.0))
        raise ValueError(f"budget {budget} is below the smallest P-Sigmoid cost {floor} (layer 0 "
                         "always keeps all V tokens)")
    evaluate = EvalCache(metric_fn, cache_path)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=_sampler(sampler, seed),
                                storage=storage, study_name=study_name, load_if_exists=True)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        study.enqueue_trial(start)

    def objective(trial: optuna.Trial) -> float:
        k = trial.suggest_float("k", *k_range, log=True)
        l0 = trial.suggest_float("l0", 0.0, depth - 1.0)
        b = trial.suggest_float("b", 0.0, 1.0)
        keep = schedules.psigmoid(depth, num_visual, k, l0, b)
        cost = float(cost_fn(keep))
        trial.set_user_attr("cost", cost)
        trial.set_user_attr("keep", list(keep))
        trial.set_constraint("budget", cost - budget)  # feasible when <= 0
        if cost > budget:  # infeasible: not evaluated, ranked below every feasible trial
            seen = [t.value for t in study.trials
                    if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["cost"] <= budget]
            return (min(seen) if seen else 0.0) - 1.0 - (cost / budget - 1.0)
        return evaluate(keep)

    try:
        study.optimize(objective, n_trials=max(0, n_trials - len(done)))
    finally:
        optuna.logging.set_verbosity(level)
    feasible = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                and t.user_attrs["cost"] <= budget]
    best = max(feasible, key=lambda t: (t.value, -t.user_attrs["cost"]))
    keep = schedules.validate(best.user_attrs["keep"], depth, num_visual, "P-Sigmoid result")
    log = [{"trial": t.number, **t.params, "cost": t.user_attrs["cost"],
            "feasible": t.user_attrs["cost"] <= budget,
            "metric": t.value if t.user_attrs["cost"] <= budget else None}
           for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    baseline = evaluate(schedules.full(depth, num_visual))
    return SearchResult("psigmoid", keep, float(best.value), baseline, evaluate.runs,
                        {**best.params, "budget": budget, "cost": best.user_attrs["cost"],
                         "sampler": sampler, "seed": seed}, log)
