"""G-Search of a pruning schedule on a calibration set (docs/algorithms.md section 4).

    python -m vlm_jax.main --config=configs/prune_gsearch.py:eps=0.05 --workdir=DIR
    python -m vlm_jax.main --config=configs/prune_gsearch.py:checkpoint=RUN_DIR,source=eval \
        --workdir=DIR

arg keys: model (preset, when no checkpoint), checkpoint (training run dir or HF dir), source
(random | eval), metric (accuracy | loglik), eps, query (last | text), impl, n (calibration
examples). Every key of `vlm_jax.pruning.runner.default_config` can be set with --config.KEY=VALUE.
"""

import ml_collections

from vlm_jax.config_args import parse_arg
from vlm_jax.pruning.runner import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, model="llava-tiny", checkpoint="", source="random", metric="accuracy",
                  eps=0.0, query="last", impl="xla", n=16)
    c = default_config()
    c.model, c.checkpoint = a.model, a.checkpoint
    c.calib.source, c.calib.num_examples = a.source, a.n
    c.prune.method, c.prune.metric, c.prune.eps = "gsearch", a.metric, a.eps
    c.prune.query, c.prune.impl = a.query, a.impl
    return c
