"""P-Sigmoid schedule by Bayesian optimisation (optuna) under a budget (docs/algorithms.md section 4).

    python -m vlm_jax.main --config=configs/prune_psigmoid.py:budget=0.5 --workdir=DIR

arg keys: model, checkpoint, source (random | eval), metric, budget (<= 1: a fraction of the
unpruned cost; > 1: an absolute cost), budget_kind (tokens: average kept visual tokens | flops:
LLM prefill FLOPs), trials, sampler (tpe | gp), seed, query, impl, n (calibration examples).
"""

import ml_collections

from vlm_jax.config_args import parse_arg
from vlm_jax.pruning.runner import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, model="llava-tiny", checkpoint="", source="random", metric="accuracy",
                  budget=0.5, budget_kind="tokens", trials=30, sampler="tpe", seed=0,
                  query="last", impl="xla", n=16)
    c = default_config()
    c.model, c.checkpoint = a.model, a.checkpoint
    c.calib.source, c.calib.num_examples = a.source, a.n
    c.prune.method, c.prune.metric = "psigmoid", a.metric
    c.prune.budget, c.prune.budget_kind = a.budget, a.budget_kind
    c.prune.n_trials, c.prune.sampler, c.prune.seed = a.trials, a.sampler, a.seed
    c.prune.query, c.prune.impl = a.query, a.impl
    return c
