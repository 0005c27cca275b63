"""Executors run one sweep point (a config and a workdir) somewhere.

The sweep logic never knows where: `inprocess` calls `vlm_jax.modes.run` in this process,
`subprocess` starts `python -m vlm_jax.main` per point (a crash or a kill takes only that
point), and `tpu_pod` runs each point on all workers of a TPU slice (launch/tpu_pod.py;
`executor = "tpu_pod:KEY=VALUE,..."`, see `TpuPod`). All of them write the point's config to
`WORKDIR/config.json` and run it with configs/from_json.py.
"""

from __future__ import annotations

import importlib.util
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


def launch_module(name: str):
    """launch/NAME.py of this checkout (launch/ holds scripts, not a package)."""
    path = os.path.join(REPO, "launch", f"{name}.py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: the pod executor needs a source checkout")
    key = f"vlm_jax_launch_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules[key]


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

    `arg` is "KEY=VALUE,...": launch/tpu_pod.py `PodSpec` fields (name, zone, accelerator, mode
    tpu-vm | queued, project, runtime, spot, python) plus `remote`, the gs:// directory the
    sweep's workdir stands for on the pod (every local path under the sweep workdir in a point's
    config, e.g. `init_from.workdir`, is rewritten under it), `dry_run` (print the commands, run
    none, then raise `DryRunDone` at `wait()`), `keep` and `ref` (the git commit to ship;
    default: the working tree's tracked files). A finished point's JSON files
    (result.json, run_summary.json, ...) are copied back into its local workdir.
    """

    BOOL_KEYS = ("spot", "dry_run", "keep")

    def __init__(self, arg: str = "", echo=print):
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
        self.pod = launch_module("tpu_pod")
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
                raise RuntimeError(f"sweep point {name} failed on TPU slice {self.spec.name}") from e
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


def make(name: str):
    """The executor `name` ("inprocess", "subprocess", or "tpu_pod:KEY=VALUE,...")."""
    kind, _, arg = name.partition(":")
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}; known: {sorted(EXECUTORS)}")
    if arg and kind != "tpu_pod":
        raise ValueError(f"executor {kind!r} takes no argument, got {arg!r}")
    return EXECUTORS[kind](arg) if arg else EXECUTORS[kind]()
