"""Executors run one sweep point (a config and a workdir) somewhere.

The sweep logic never knows where: `inprocess` calls the `run(config, workdir)` callable it
is given (`vlm_jax.modes.run`, passed down by the modes: this package never imports them) in
this process, `subprocess` starts `python -m vlm_jax.main` per point (a crash or a kill takes
only that point), and `tpu_pod` runs each point on all workers of a TPU slice (`vlm_jax.pod`;
`executor = "tpu_pod:KEY=VALUE,..."`, see `TpuPod`). All of them write the point's config to
`WORKDIR/config.json` and run it with configs/from_json.py; a failed point raises
`PointFailed` naming its log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import ml_collections

from vlm_jax import pod
from vlm_jax.io import write_json_atomic

Run = Callable[[ml_collections.ConfigDict, str], object]  # (config, workdir) -> result

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_point_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    write_json_atomic(path, json.loads(config.to_json()))
    return path


class PointFailed(RuntimeError):
    """A sweep point (or its stage) failed; `log` is where its output went."""

    def __init__(self, name: str, log: str, detail: str):
        super().__init__(f"sweep point {name} failed {detail}; see {log}")
        self.name, self.log = name, log


class InProcess:
    """Runs points one after the other in this Python process with `run(config, workdir)`."""

    def __init__(self, run: Run):
        self._run = run

    def run(self, name: str, config: ml_collections.ConfigDict, workdir: str) -> None:
        write_point_config(config, workdir)
        self._run(config, workdir)

    def wait(self) -> None:
        pass


class Subprocess:
    """Runs every point as `python -m vlm_jax.main --config=configs/from_json.py:PATH`."""

    def __init__(self, run: Run | None = None, python: str = sys.executable):
        del run  # the child process runs the modes itself
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
            raise PointFailed(name, log, f"(exit {proc.returncode})")

    def wait(self) -> None:
        pass


class DryRunDone(RuntimeError):
    """A dry run printed every command and submitted nothing, so no point has a result."""


def _rewrite(tree, old: str, new: str):
    """Every string in a JSON tree that starts with `old`, starting with `new` instead."""
    if isinstance(tree, dict):
        return {k: _rewrite(v, old, new) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_rewrite(v, old, new) for v in tree]
    if isinstance(tree, str) and (tree == old or tree.startswith(old + "/")):
        return new + tree[len(old):]
    return tree


class TpuPod:
    """Runs points one after the other on one TPU slice, made at the first point and deleted at
    `wait()` or when a point fails (unless `keep`).

    `arg` is "KEY=VALUE,...": `vlm_jax.pod.PodSpec` fields (name, zone, accelerator, mode
    tpu-vm | queued, project, runtime, spot, python) plus `remote`, the gs:// directory the
    sweep's workdir stands for on the pod (every local path under the sweep workdir in a point's
    config, e.g. `init_from.workdir`, is rewritten under it), `dry_run` (print the commands, run
    none, then raise `DryRunDone` at `wait()`), `keep` and `ref` (the git commit to ship;
    default: the working tree's tracked files). A finished point's JSON files
    (result.json, run_summary.json, ...) are copied back into its local workdir.
    """

    BOOL_KEYS = ("spot", "dry_run", "keep")

    def __init__(self, arg: str = "", run: Run | None = None, echo=print):
        kv = {}
        for item in filter(None, arg.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"tpu_pod executor argument {item!r} is not KEY=VALUE")
            kv[key.strip()] = value.strip()
        flags = {k: kv.pop(k, "0").lower() in ("1", "true", "yes") for k in self.BOOL_KEYS}
        self.remote = kv.pop("remote", "").rstrip("/")
        self.ref = kv.pop("ref", "")
        if not self.remote.startswith("gs://"):
            raise ValueError("tpu_pod executor needs remote=gs://BUCKET/PATH (where every worker "
                             f"writes the sweep), got {self.remote!r}")
        del run  # the workers run the modes themselves
        self.pod = pod
        try:
            self.spec = self.pod.PodSpec(**kv, spot=flags["spot"])
        except TypeError as e:
            raise ValueError(f"tpu_pod executor: {e}; keys: PodSpec fields + remote, dry_run, "
                             "keep") from None
        if self.spec.mode == "xpk":
            raise ValueError("tpu_pod executor runs modes tpu-vm and queued; xpk workloads are "
                             "detached: submit them with launch/tpu_pod.py --mode=xpk")
        self.dry_run, self.keep, self.echo = flags["dry_run"], flags["keep"], echo
        self.ready, self.jobs = False, 0

    def _execute(self, steps) -> None:
        self.pod.execute(steps, self.dry_run, echo=self.echo)

    def run(self, name: str, config: ml_collections.ConfigDict, workdir: str) -> None:
        workdir = os.path.abspath(workdir)
        parent = os.path.dirname(workdir)
        root = os.path.dirname(parent) if os.path.basename(parent) == "points" else parent
        remote_dir = f"{self.remote}/{os.path.relpath(workdir, root)}"
        tree = _rewrite(json.loads(config.to_json()), root, self.remote)
        path = write_point_config(ml_collections.ConfigDict(tree), workdir)
        steps = []
        if not self.ready:
            ref = self.ref or self.pod.code_ref()
            steps += self.pod.provision_steps(self.spec, os.path.join(root, "code.tar.gz"), ref)
        steps += self.pod.run_steps(self.spec, name, path, remote_dir)
        steps.append(self.pod.Step(f"copy {name}'s results back", (
            "gcloud", "storage", "cp", f"{remote_dir}/*.json", workdir + "/"), local=True))
        try:
            self._execute(steps)
        except BaseException as e:
            if not self.keep:
                self._execute(self.pod.teardown_steps(self.spec))
            self.ready = False
            if isinstance(e, Exception):
                raise PointFailed(name, f"{remote_dir}/log.txt (on every worker: "
                                  f"~/{self.spec.code_dir}/runs/{name}/log.txt)",
                                  f"on TPU slice {self.spec.name} ({e})") from e
            raise
        self.ready, self.jobs = True, self.jobs + 1

    def wait(self) -> None:
        if self.ready and not self.keep:
            self._execute(self.pod.teardown_steps(self.spec))
            self.ready = False
        if self.dry_run:
            raise DryRunDone(f"dry run: printed the commands of {self.jobs} job(s) on "
                             f"{self.spec.accelerator} slice {self.spec.name}; nothing was run")


EXECUTORS = {"inprocess": InProcess, "subprocess": Subprocess, "tpu_pod": TpuPod}


def make(name: str, run: Run | None = None):
    """The executor `name` ("inprocess", "subprocess", or "tpu_pod:KEY=VALUE,..."); `run`
    (config, workdir) runs a point in this process (needed by "inprocess")."""
    kind, _, arg = name.partition(":")
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}; known: {sorted(EXECUTORS)}")
    if arg and kind != "tpu_pod":
        raise ValueError(f"executor {kind!r} takes no argument, got {arg!r}")
    if kind == "inprocess" and run is None:
        raise ValueError("the inprocess executor needs `run` (vlm_jax.modes.run)")
    return EXECUTORS[kind](arg, run=run) if kind == "tpu_pod" else EXECUTORS[kind](run)
