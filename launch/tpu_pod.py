"""A training config as a TPU pod job: gcloud TPU VM, queued resource or xpk (CLI).

    python launch/tpu_pod.py --config=configs/flagship_llava7b.py:data_root=/mnt/llava \\
        --name=llava7b --zone=us-west4-a --accelerator=v5litepod-256 \\
        --workdir=gs://B/runs/llava7b [--mode=tpu-vm|queued|xpk] [--spot] [--dry_run]

The steps and their commands are `vlm_jax.pod` (importable from the installed package); this
file only parses the flags. `--dry_run` prints the exact commands and runs none.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python launch/tpu_pod.py` from a checkout without `pip install -e .`
    sys.path.insert(0, REPO)

from vlm_jax import pod  # noqa: E402
from vlm_jax.scaling.executors import write_point_config  # noqa: E402


def main(argv: list[str]) -> int:
    import argparse

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from aot import load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="configs/FILE.py[:ARG]")
    p.add_argument("--workdir", required=True, help="run directory every worker sees (gs://...)")
    p.add_argument("--stage_dir", default=None, help="local dir for the config JSON (default "
                   "/tmp/vlm_jax_pod/NAME)")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run none")
    p.add_argument("--keep", action="store_true", help="keep the slice after the run")
    p.add_argument("--ref", default=None, help="git commit to ship (default: the working "
                   "tree's tracked files, uncommitted edits included)")
    for f in dataclasses.fields(pod.PodSpec):
        flag = f"--{f.name}"
        if f.type == "bool":
            p.add_argument(flag, action="store_true")
        else:
            p.add_argument(flag, required=f.default is dataclasses.MISSING,
                           default=None if f.default is dataclasses.MISSING else f.default)
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not re.match(r"^--config\.[\w.]+=", a)]
    if bad:
        p.error(f"unknown arguments {bad} (overrides look like --config.KEY=VALUE)")
    if not args.workdir.startswith("gs://") and args.mode != "xpk":
        print(f"warning: workdir {args.workdir} is not gs://: each worker writes its own copy",
              file=sys.stderr)
    spec = pod.PodSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(pod.PodSpec)})
    config = load_config(args.config, rest)
    stage = args.stage_dir or os.path.join("/tmp/vlm_jax_pod", spec.name)
    path = write_point_config(config, stage)
    pod.execute(pod.job_steps(spec, spec.name, path, args.workdir, keep=args.keep, ref=args.ref),
                args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
