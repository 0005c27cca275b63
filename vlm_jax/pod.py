"""A training config or a sweep point as a TPU pod job: gcloud TPU VM, queued resource or xpk.

The steps of a job, as commands (`Step`), and `execute` to print / run them. The CLI is
launch/tpu_pod.py; vlm_jax.scaling.executors' `tpu_pod` executor runs sweep points with it.

`tpu-vm` / `queued` steps: create the slice (`gcloud compute tpus tpu-vm create`, or
`queued-resources create` then poll until ACTIVE), ship the code (`git archive` of the working
tree's tracked files, copied to every worker), make a venv on every worker (requirements.txt +
`jax[tpu]` at the pinned jax version), copy the config JSON to every worker, run
`python -m vlm_jax.main --config=configs/from_json.py:PATH --workdir=gs://... --multihost` on
all workers at once (`--worker=all`; `--multihost` calls `jax.distributed.initialize()`, which
finds the pod's hosts itself), then delete the slice unless `--keep`. `xpk` builds an image of
the code (plus the config) on `--base_image` and submits it to a GKE cluster with
`xpk workload create`. A dry run prints the exact commands and runs none.
The code shipped is the git checkout this package is imported from (`REPO`); `git archive`
needs one, so a wheel install launches from a clone.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
MODES = ("tpu-vm", "queued", "xpk")
# TPU software version per accelerator family (cloud.google.com/tpu/docs/runtimes).
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
QUEUED_OK, QUEUED_FAILED = ("ACTIVE",), ("FAILED", "SUSPENDED")


@dataclasses.dataclass(frozen=True)
class PodSpec:
    """Where a job runs. `accelerator`: gcloud's --accelerator-type / xpk's --tpu-type."""

    name: str
    zone: str
    accelerator: str
    mode: str = "tpu-vm"
    project: str = ""
    runtime: str = ""  # default: RUNTIMES[family of accelerator]
    spot: bool = False
    python: str = "python3.11"  # interpreter the workers' venv is made with
    code_dir: str = "vlm_jax"  # on each worker, relative to the ssh user's home
    cluster: str = ""  # xpk
    base_image: str = "python:3.11"  # xpk --base-docker-image

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"pod mode must be one of {MODES}, got {self.mode!r}")
        for key in ("name", "zone", "accelerator"):
            if not getattr(self, key):
                raise ValueError(f"pod spec needs `{key}`")
        if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", self.name):
            raise ValueError(f"pod name {self.name!r}: lowercase letters, digits and '-' only")
        if self.mode == "xpk" and not self.cluster:
            raise ValueError("mode 'xpk' needs `cluster` (an xpk GKE cluster)")
        if not self.runtime and self.mode != "xpk" and self.family not in RUNTIMES:
            raise ValueError(f"no default runtime for accelerator {self.accelerator!r}; pass "
                             f"`runtime` (known families: {sorted(RUNTIMES)})")

    @property
    def family(self) -> str:
        return self.accelerator.rsplit("-", 1)[0]

    @property
    def queued_resource(self) -> str:
        return f"{self.name}-qr"

    def gcloud_common(self) -> list[str]:
        return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])


@dataclasses.dataclass(frozen=True)
class Step:
    """One command. `poll`: rerun every `poll_s` until stdout holds one of `poll[0]` (raise on
    one of `poll[1]`). `local`: a command for this machine, not GCP."""

    what: str
    argv: tuple[str, ...]
    poll: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    local: bool = False

    def shell(self) -> str:
        return shlex.join(self.argv)


def _gcloud_tpu(spec: PodSpec, *args: str) -> tuple[str, ...]:
    return ("gcloud", "compute", "tpus", *args, *spec.gcloud_common())


def ssh_all(spec: PodSpec, command: str, what: str) -> Step:
    """`command` on every worker of the slice at once."""
    return Step(what, _gcloud_tpu(spec, "tpu-vm", "ssh", spec.name, "--worker=all",
                                  f"--command={command}"))


def jax_version(repo: str = REPO) -> str:
    """The jax version requirements.txt pins (the workers install `jax[tpu]` at it)."""
    with open(os.path.join(repo, "requirements.txt")) as f:
        m = re.search(r"^jax(?:\[[^\]]*\])?==([\w.]+)", f.read(), re.M)
    if not m:
        raise ValueError(f"{repo}/requirements.txt pins no jax version (jax[...]==X)")
    return m.group(1)


def setup_command(spec: PodSpec, version: str) -> str:
    """Shell run on every worker: a venv with the pinned requirements and jax[tpu]."""
    py, venv = spec.python, f"~/{spec.code_dir}/.venv"
    return " && ".join([
        f"cd ~/{spec.code_dir}",
        f"({py} -m venv {venv} || (sudo apt-get update -qq && sudo apt-get install -y -qq "
        f"{py} {py}-venv && {py} -m venv --clear {venv}))",
        f"{venv}/bin/pip install -q -U pip",
        f"{venv}/bin/pip install -q -r requirements.txt 'jax[tpu]=={version}'",
        f"{venv}/bin/pip install -q --no-deps -e ."])


def train_command(config_rel: str, workdir: str, log_rel: str, python: str = ".venv/bin/python"
                  ) -> str:
    """Shell that runs one config (its JSON at `config_rel`, relative to the code dir)."""
    return (f"set -o pipefail; {python} -m vlm_jax.main "
            f"--config=configs/from_json.py:{config_rel} --workdir={shlex.quote(workdir)} "
            f"--multihost 2>&1 | tee -a {log_rel}")


def code_ref(repo: str = REPO) -> str:
    """A commit of the working tree's tracked files (uncommitted edits included)."""
    stash = subprocess.run(["git", "-C", repo, "stash", "create"], capture_output=True,
                           text=True, check=True).stdout.strip()
    return stash or "HEAD"


def provision_steps(spec: PodSpec, tarball: str, ref: str) -> list[Step]:
    """Create the slice, ship the code at `ref`, set up every worker's venv."""
    if spec.mode == "xpk":
        raise ValueError("xpk jobs are made by xpk_steps")
    runtime = spec.runtime or RUNTIMES[spec.family]
    spot = ["--spot"] if spec.spot else []
    if spec.mode == "tpu-vm":
        steps = [Step("create the TPU VM slice", _gcloud_tpu(
            spec, "tpu-vm", "create", spec.name, f"--accelerator-type={spec.accelerator}",
            f"--version={runtime}", *spot))]
    else:
        qr = spec.queued_resource
        steps = [Step("request a queued resource", _gcloud_tpu(
            spec, "queued-resources", "create", qr, f"--node-id={spec.name}",
            f"--accelerator-type={spec.accelerator}", f"--runtime-version={runtime}", *spot)),
            Step("wait until the queued resource is ACTIVE", _gcloud_tpu(
                spec, "queued-resources", "describe", qr, "--format=value(state.state)"),
                poll=(QUEUED_OK, QUEUED_FAILED))]
    remote_tar = f"{spec.code_dir}.tar.gz"
    return steps + [
        Step("archive the code", ("git", "-C", REPO, "archive", "--format=tar.gz", "-o", tarball,
                                  ref), local=True),
        Step("copy the code to every worker", _gcloud_tpu(
            spec, "tpu-vm", "scp", tarball, f"{spec.name}:~/{remote_tar}", "--worker=all")),
        ssh_all(spec, f"rm -rf ~/{spec.code_dir} && mkdir -p ~/{spec.code_dir} && "
                      f"tar -xzf ~/{remote_tar} -C ~/{spec.code_dir}", "unpack the code"),
        ssh_all(spec, setup_command(spec, jax_version()), "make the venv on every worker"),
    ]


def run_steps(spec: PodSpec, job: str, config_json: str, workdir: str) -> list[Step]:
    """Copy a config JSON to every worker and run it there on all workers at once."""
    rel = f"runs/{job}/config.json"
    return [
        ssh_all(spec, f"mkdir -p ~/{spec.code_dir}/runs/{job}", f"make runs/{job} on every worker"),
        Step("copy the config to every worker", _gcloud_tpu(
            spec, "tpu-vm", "scp", config_json, f"{spec.name}:~/{spec.code_dir}/{rel}",
            "--worker=all")),
        ssh_all(spec, f"cd ~/{spec.code_dir} && " + train_command(rel, workdir, f"runs/{job}/log.txt"),
                f"run {job} on all workers"),
    ]


def teardown_steps(spec: PodSpec) -> list[Step]:
    if spec.mode == "queued":
        return [Step("delete the queued resource and its slice", _gcloud_tpu(
            spec, "queued-resources", "delete", spec.queued_resource, "--force", "--quiet"))]
    if spec.mode == "tpu-vm":
        return [Step("delete the slice", _gcloud_tpu(spec, "tpu-vm", "delete", spec.name,
                                                     "--quiet"))]
    return [Step("delete the workload", ("xpk", "workload", "delete", f"--workload={spec.name}",
                                         f"--cluster={spec.cluster}", *_xpk_common(spec)))]


def _xpk_common(spec: PodSpec) -> list[str]:
    return [f"--zone={spec.zone}"] + ([f"--project={spec.project}"] if spec.project else [])


def xpk_steps(spec: PodSpec, job: str, config_json: str, workdir: str, stage: str,
              ref: str) -> list[Step]:
    """Stage the code at `ref` plus the config in `stage`, then `xpk workload create`."""
    rel = f"runs/{job}/config.json"
    setup = (f"pip install -q -r requirements.txt 'jax[tpu]=={jax_version()}' && "
             "pip install -q --no-deps -e .")
    run = train_command(rel, workdir, f"runs/{job}/log.txt", python="python")
    return [
        Step("stage the code", ("bash", "-c", f"rm -rf {shlex.quote(stage)} && mkdir -p "
                                f"{shlex.quote(stage)}/runs/{job} && git -C {shlex.quote(REPO)} "
                                f"archive {ref} | tar -x -C {shlex.quote(stage)}"), local=True),
        Step("stage the config", ("cp", config_json, os.path.join(stage, rel)), local=True),
        Step("submit the workload", (
            "xpk", "workload", "create", f"--cluster={spec.cluster}", f"--workload={spec.name}",
            f"--tpu-type={spec.accelerator}", "--num-slices=1",
            f"--base-docker-image={spec.base_image}", f"--script-dir={stage}",
            f"--command=bash -c {shlex.quote(setup + ' && ' + run)}",
            *_xpk_common(spec))),
    ]


def execute(steps: Sequence[Step], dry_run: bool, echo: Callable[[str], None] = print,
            poll_s: float = 30.0, timeout_s: float = 7 * 24 * 3600) -> None:
    """Prints every step's command; unless `dry_run`, runs it (stops at the first failure)."""
    for step in steps:
        echo(f"# {step.what}{' (repeat until ' + '|'.join(step.poll[0]) + ')' if step.poll else ''}")
        echo(step.shell())
        if dry_run:
            continue
        if step.poll is None:
            subprocess.run(step.argv, check=True)
            continue
        deadline = time.time() + timeout_s
        while True:
            out = subprocess.run(step.argv, check=True, capture_output=True, text=True).stdout
            if any(s in out for s in step.poll[0]):
                break
            if any(s in out for s in step.poll[1]) or time.time() > deadline:
                raise RuntimeError(f"{step.what}: got {out.strip()!r} from {step.shell()}")
            time.sleep(poll_s)


def job_steps(spec: PodSpec, job: str, config_json: str, workdir: str, keep: bool = False,
              ref: str | None = None, stage: str | None = None) -> list[Step]:
    """Every step of one job on a fresh slice (or an xpk cluster)."""
    ref = ref or code_ref()
    if spec.mode == "xpk":
        return xpk_steps(spec, job, config_json, workdir,
                         stage or os.path.join(os.path.dirname(config_json), "xpk_stage"), ref)
    tarball = os.path.join(os.path.dirname(os.path.abspath(config_json)), "code.tar.gz")
    steps = provision_steps(spec, tarball, ref) + run_steps(spec, job, config_json, workdir)
    return steps + ([] if keep else teardown_steps(spec))
