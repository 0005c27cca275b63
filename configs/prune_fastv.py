"""Cost report of a fixed FastV(K, R) schedule (no search) on a calibration set.

    python -m vlm_jax.main --config=configs/prune_fastv.py:K=2,R=0.5 --workdir=DIR

arg keys: model, checkpoint, source (random | eval), metric, K, R, query, impl, n.
"""

import ml_collections

from vlm_jax.config_args import parse_arg
from vlm_jax.pruning.runner import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, model="llava-tiny", checkpoint="", source="random", metric="accuracy",
                  K=1, R=0.5, query="last", impl="xla", n=16)
    c = default_config()
    c.model, c.checkpoint = a.model, a.checkpoint
    c.calib.source, c.calib.num_examples = a.source, a.n
    c.prune.method, c.prune.metric = "fastv", a.metric
    c.prune.fastv_k, c.prune.fastv_r = a.K, a.R
    c.prune.query, c.prune.impl = a.query, a.impl
    return c
