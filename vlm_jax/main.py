"""Entry point: `python -m vlm_jax.main --config=configs/FILE.py[:ARGS] --workdir=DIR`.

Runs what `config.mode` says (train | eval | train_eval | sweep | prune_search) and resumes from DIR.
Any config value can be overridden with `--config.KEY=VALUE`; unknown keys are errors.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import logging  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vlm_jax.modes import run  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config(arg)).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if present).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() first: every host of a pod runs the "
    "same command (launch/tpu_pod.py). A TPU pod is detected; elsewhere JAX_COORDINATOR_ADDRESS, "
    "VLM_JAX_NUM_PROCESSES and VLM_JAX_PROCESS_ID say where this process stands.")
flags.mark_flags_as_required(["config", "workdir"])


def init_distributed() -> None:
    """`jax.distributed.initialize()`, from the environment where no TPU pod is detected."""
    import jax

    n, i = os.environ.get("VLM_JAX_NUM_PROCESSES"), os.environ.get("VLM_JAX_PROCESS_ID")
    jax.distributed.initialize(**({} if n is None else dict(num_processes=int(n),
                                                             process_id=int(i or 0))))


def main(argv):
    del argv
    if _MULTIHOST.value:
        init_distributed()
    logging.getLogger().setLevel(logging.WARNING)  # orbax / grain / absl chatter
    logging.getLogger("vlm_jax").setLevel(logging.INFO)
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
