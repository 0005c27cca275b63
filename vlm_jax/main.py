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
flags.mark_flags_as_required(["config", "workdir"])

def main(argv):
    del argv
    logging.getLogger().setLevel(logging.WARNING)  # orbax / grain / absl chatter
    logging.getLogger("vlm_jax").setLevel(logging.INFO)
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
