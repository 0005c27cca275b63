"""Executors run one sweep point (a config and a workdir) somewhere.

The sweep logic never knows where: `inprocess` calls `vlm_jax.modes.run` in this process,
`subprocess` starts `python -m vlm_jax.main` per point (a crash or a kill takes only that
point), and a pod executor (launch/) does the same on a TPU slice. All of them write the
point's config to `WORKDIR/config.json` and run it with configs/from_json.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_collections

from vlm_jax.train.checkpoint import write_json_atomic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_point_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    write_json_atomic(path, json.loads(config.to_json()))
    return path


class InProcess:
    """Runs points one after the other in this Python process."""

    def run(self, name: str, config: ml_collections.ConfigDict, workdir: str) -> None:
        from vlm_jax.modes import run
        write_point_config(config, workdir)
        run(config, workdir)

    def wait(self) -> None:
        pass


class Subprocess:
    """Runs every point as `python -m vlm_jax.main --config=configs/from_json.py:PATH`."""

    def __init__(self, python: str = sys.executable):
        self.python = python

    def command(self, config_path: str, workdir: str) -> list[str]:
        return [self.python, "-m", "vlm_jax.main",
                f"--config={os.path.join(REPO, 'configs', 'from_json.py')}:{config_path}",
                f"--workdir={workdir}"]

    def run(self, name: str, config: ml_collections.ConfigDict, workdir: str) -> None:
        path = write_point_config(config, workdir)
        log = os.path.join(workdir, "log.txt")
        with open(log, "a") as f:
            proc = subprocess.run(self.command(path, workdir), stdout=f, stderr=subprocess.STDOUT,
                                  cwd=REPO)
        if proc.returncode:
            raise RuntimeError(f"sweep point {name} failed (exit {proc.returncode}); see {log}")

    def wait(self) -> None:
        pass


EXECUTORS = {"inprocess": InProcess, "subprocess": Subprocess}


def make(name: str):
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; known: {sorted(EXECUTORS)}")
    return EXECUTORS[name]()
