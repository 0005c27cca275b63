"""Entry point: `python -m vlm_jax.main --config=configs/FILE.py[:ARGS] --workdir=DIR`.

Runs what `config.mode` says (train | eval | train_eval | sweep | prune_search) and resumes from DIR.
Any config value can be overridden with `--config.KEY=VALUE`; unknown keys are errors.
`--print_config` prints a config's keys and values (overrides applied) and exits; `--help`
lists the configs.
"""

from __future__ import annotations

import ast
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import logging  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vlm_jax.modes import run  # noqa: E402
from vlm_jax.train.trainer import show_progress_notes  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def configs_help() -> str:
    """One entry per config file beside the package: `configs/NAME.py: the docstring's first
    paragraph` (a first line may end mid-sentence)."""
    if not os.path.isdir(CONFIG_DIR):
        return "a config file defining get_config(arg)"
    lines = []
    for name in sorted(os.listdir(CONFIG_DIR)):
        if name.endswith(".py") and not name.startswith("_"):
            with open(os.path.join(CONFIG_DIR, name)) as f:
                doc = ast.get_docstring(ast.parse(f.read())) or ""
            lines.append(f"  configs/{name}: {' '.join(doc.split(chr(10) * 2)[0].split())}")
    return "\n".join(lines)


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (get_config(arg)), one of:\n" + configs_help()
    + "\nAdd --print_config to see a config's keys.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if present).")
_PRINT = flags.DEFINE_bool("print_config", False, "Print the config (with overrides) and exit.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() first: every host of a pod runs the "
    "same command (launch/tpu_pod.py). A TPU pod is detected; elsewhere JAX_COORDINATOR_ADDRESS, "
    "VLM_JAX_NUM_PROCESSES and VLM_JAX_PROCESS_ID say where this process stands.")
flags.mark_flag_as_required("config")


def init_distributed() -> None:
    """`jax.distributed.initialize()`, from the environment where no TPU pod is detected."""
    import jax

    n, i = os.environ.get("VLM_JAX_NUM_PROCESSES"), os.environ.get("VLM_JAX_PROCESS_ID")
    jax.distributed.initialize(**({} if n is None else dict(num_processes=int(n),
                                                             process_id=int(i or 0))))


def main(argv):
    del argv
    if _PRINT.value:
        print(_CONFIG.value)
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required (the run directory; resumed if present)")
    if _MULTIHOST.value:
        init_distributed()
    logging.getLogger().setLevel(logging.WARNING)  # orbax / grain / absl chatter
    logging.getLogger("vlm_jax").setLevel(logging.INFO)
    show_progress_notes()
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
