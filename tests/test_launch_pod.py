"""vlm_jax.pod (CLI: launch/tpu_pod.py) and the `tpu_pod` sweep executor: the exact gcloud /
xpk commands of a job (nothing reaches GCP), dry runs, polling, and a real run against a fake
`gcloud` on PATH that logs its calls, fails on request and copies results back."""

import json
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "configs")]

from vlm_jax import pod as tpu_pod  # noqa: E402  (the launcher, importable from the package)
from vlm_jax.scaling import executors, sweep  # noqa: E402


def _spec(**kw):
    base = dict(name="job1", zone="us-west4-a", accelerator="v5litepod-16", project="proj")
    return tpu_pod.PodSpec(**{**base, **kw})


def _shells(steps):
    return [s.shell() for s in steps]


def test_pod_spec_errors():
    with pytest.raises(ValueError, match="mode must be one of"):
        _spec(mode="gke")
    with pytest.raises(ValueError, match="lowercase"):
        _spec(name="Job_1")
    with pytest.raises(ValueError, match="needs `cluster`"):
        _spec(mode="xpk")
    with pytest.raises(ValueError, match="no default runtime for accelerator 'v9-8'"):
        _spec(accelerator="v9-8")
    assert _spec(accelerator="v9-8", runtime="v2-alpha").runtime == "v2-alpha"


def test_tpu_vm_job_commands(tmp_path):
    cfg = str(tmp_path / "config.json")
    steps = tpu_pod.job_steps(_spec(), "job1", cfg, "gs://b/runs/job1", ref="HEAD")
    sh = _shells(steps)
    common = "--zone=us-west4-a --project=proj"
    assert sh[0] == ("gcloud compute tpus tpu-vm create job1 --accelerator-type=v5litepod-16 "
                     f"--version=v2-alpha-tpuv5-lite {common}")
    tar = str(tmp_path / "code.tar.gz")
    assert sh[1] == f"git -C {REPO} archive --format=tar.gz -o {tar} HEAD" and steps[1].local
    # `~` is quoted here and expanded by the worker's shell (scp's remote side).
    assert sh[2] == (f"gcloud compute tpus tpu-vm scp {tar} 'job1:~/vlm_jax.tar.gz' "
                     f"--worker=all {common}")
    ssh = "gcloud compute tpus tpu-vm ssh job1 --worker=all"
    commands = {}
    for s in steps:  # every ssh runs on all workers; collect what each runs
        if s.argv[:5] == ("gcloud", "compute", "tpus", "tpu-vm", "ssh"):
            assert s.shell().startswith(ssh) and s.shell().endswith(common)
            commands[s.what] = s.argv[7][len("--command="):]
    unpack, setup = commands["unpack the code"], commands["make the venv on every worker"]
    assert "tar -xzf ~/vlm_jax.tar.gz -C ~/vlm_jax" in unpack
    version = tpu_pod.jax_version()
    assert version == "0.10.2"  # requirements.txt's pin
    assert "python3.11 -m venv ~/vlm_jax/.venv" in setup
    assert f"pip install -q -r requirements.txt 'jax[tpu]=={version}'" in setup
    assert setup.endswith("pip install -q --no-deps -e .")
    i_cfg = next(i for i, s in enumerate(steps) if s.what == "copy the config to every worker")
    assert sh[i_cfg] == (f"gcloud compute tpus tpu-vm scp {cfg} "
                         f"'job1:~/vlm_jax/runs/job1/config.json' --worker=all {common}")
    run = commands["run job1 on all workers"]
    assert run == ("cd ~/vlm_jax && set -o pipefail; .venv/bin/python -m vlm_jax.main "
                   "--config=configs/from_json.py:runs/job1/config.json "
                   "--workdir=gs://b/runs/job1 --multihost 2>&1 | tee -a runs/job1/log.txt")
    # Order: create, code, venv, config, run, delete.
    whats = [s.what for s in steps]
    assert whats.index("make the venv on every worker") < i_cfg < whats.index(
        "run job1 on all workers") < whats.index("delete the slice") == len(steps) - 1
    assert sh[-1] == f"gcloud compute tpus tpu-vm delete job1 --quiet {common}"
    kept = tpu_pod.job_steps(_spec(), "job1", cfg, "gs://b/r", keep=True, ref="HEAD")
    assert kept[-1].what == "run job1 on all workers"


def test_queued_resource_commands():
    steps = tpu_pod.provision_steps(_spec(mode="queued", spot=True, project=""), "/t/c.tgz", "HEAD")
    assert steps[0].shell() == (
        "gcloud compute tpus queued-resources create job1-qr --node-id=job1 "
        "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot "
        "--zone=us-west4-a")
    assert steps[1].shell() == ("gcloud compute tpus queued-resources describe job1-qr "
                                "'--format=value(state.state)' --zone=us-west4-a")
    assert steps[1].poll == (("ACTIVE",), ("FAILED", "SUSPENDED"))
    assert tpu_pod.teardown_steps(_spec(mode="queued"))[0].shell() == (
        "gcloud compute tpus queued-resources delete job1-qr --force --quiet --zone=us-west4-a "
        "--project=proj")


def test_xpk_job_stages_code_and_config(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text('{"mode": "train"}')
    stage = str(tmp_path / "stage")
    spec = _spec(mode="xpk", cluster="c1", accelerator="v5p-128")
    steps = tpu_pod.job_steps(spec, "job1", str(cfg), "gs://b/r", ref="HEAD", stage=stage)
    submit = steps[-1].argv
    assert submit[:3] == ("xpk", "workload", "create") and "--cluster=c1" in submit
    assert "--tpu-type=v5p-128" in submit and f"--script-dir={stage}" in submit
    assert "--base-docker-image=python:3.11" in submit
    command = next(a for a in submit if a.startswith("--command="))[len("--command="):]
    inner = shlex.split(command)[2]  # bash -c '...'
    assert inner.startswith("pip install -q -r requirements.txt 'jax[tpu]==0.10.2'")
    assert ("python -m vlm_jax.main --config=configs/from_json.py:runs/job1/config.json "
            "--workdir=gs://b/r --multihost") in inner
    tpu_pod.execute([s for s in steps if s.local], dry_run=False, echo=lambda s: None)
    assert (tmp_path / "stage" / "runs" / "job1" / "config.json").read_text() == cfg.read_text()
    assert (tmp_path / "stage" / "vlm_jax" / "main.py").exists()
    assert not (tmp_path / "stage" / ".venv").exists()


def test_execute_dry_run_polls_and_failures(tmp_path):
    printed = []
    tpu_pod.execute([tpu_pod.Step("never", ("false",))], dry_run=True, echo=printed.append)
    assert printed == ["# never", "false"]
    counter = tmp_path / "n"
    script = (f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; "
              "[ $n -ge 2 ] && echo ACTIVE || echo WAITING_FOR_RESOURCES")
    poll = tpu_pod.Step("wait", ("bash", "-c", script), poll=(("ACTIVE",), ("FAILED",)))
    tpu_pod.execute([poll], dry_run=False, echo=lambda s: None, poll_s=0)
    assert counter.read_text().strip() == "3"
    bad = tpu_pod.Step("wait", ("echo", "FAILED"), poll=(("ACTIVE",), ("FAILED",)))
    with pytest.raises(RuntimeError, match="wait: got 'FAILED'"):
        tpu_pod.execute([bad], dry_run=False, echo=lambda s: None, poll_s=0)
    with pytest.raises(subprocess.CalledProcessError):
        tpu_pod.execute([tpu_pod.Step("fails", ("false",))], dry_run=False, echo=lambda s: None)


def test_cli_dry_run_writes_config_and_prints_commands(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launch/tpu_pod.py", "--config=configs/tiny_vlm.py:llm=s,V=4",
         "--config.train.steps=7", "--name=tiny1", "--zone=europe-west4-b",
         "--accelerator=v5litepod-8", "--workdir=gs://b/tiny1", "--dry_run", "--ref=HEAD",
         f"--stage_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["steps"] == 7 and config["model"]["compressor"]["num_tokens"] == 4
    lines = [s for s in proc.stdout.splitlines() if not s.startswith("#")]
    assert lines[0].startswith("gcloud compute tpus tpu-vm create tiny1 ")
    assert any("--workdir=gs://b/tiny1 --multihost" in s for s in lines)
    assert lines[-1].startswith("gcloud compute tpus tpu-vm delete tiny1 --quiet")


def _sweep_config(executor: str):
    import sweep_tiny

    c = sweep_tiny.get_config("smoke=True")
    c.executor = executor
    return c


def test_sweep_dry_run_through_the_executor(tmp_path):
    """The sweep runner, unchanged, plans every point on one slice and stops with DryRunDone."""
    root = str(tmp_path / "sw")
    arg = "name=sw1,zone=z1,accelerator=v5litepod-16,remote=gs://b/sw,dry_run=1,ref=HEAD"
    printed = []
    ex = executors.TpuPod(arg, echo=printed.append)
    executors.make("tpu_pod:" + arg)  # the name the sweep config uses
    c = _sweep_config("tpu_pod:" + arg)
    ex.run("pretrain", c.pretrain, os.path.join(root, "pretrain"))
    points = sweep.make_points(c, root)
    for name, cfg in points:
        ex.run(name, cfg, os.path.join(root, "points", name))
    with pytest.raises(executors.DryRunDone, match=r"5 job\(s\) on v5litepod-16 slice sw1"):
        ex.wait()
    cmds = [s for s in printed if not s.startswith("#")]
    assert sum(s.startswith("gcloud compute tpus tpu-vm create sw1") for s in cmds) == 1
    assert cmds[-1].startswith("gcloud compute tpus tpu-vm delete sw1")
    name = points[0][0]
    assert any(f"--workdir=gs://b/sw/points/{name} --multihost" in s for s in cmds)
    assert f"gcloud storage cp 'gs://b/sw/points/{name}/*.json' {root}/points/{name}/" in cmds
    # Local sweep paths in the configs point into the bucket on the pod.
    point = json.loads(open(os.path.join(root, "points", name, "config.json")).read())
    assert point["init_from"]["workdir"] == "gs://b/sw/pretrain"
    with pytest.raises(executors.DryRunDone):  # and through run_sweep itself
        sweep.run_sweep(_sweep_config("tpu_pod:" + arg), str(tmp_path / "sw2"))
    with pytest.raises(ValueError, match="remote=gs://"):
        executors.make("tpu_pod:name=a,zone=z,accelerator=v5litepod-8")
    with pytest.raises(ValueError, match="xpk workloads are detached"):
        executors.make("tpu_pod:name=a,zone=z,accelerator=v5p-8,mode=xpk,cluster=c,remote=gs://b")
    with pytest.raises(ValueError, match="takes no argument"):
        executors.make("subprocess:x=1")


FAKE_GCLOUD = r"""#!/bin/bash
echo "$*" >> "$FAKE_LOG"
if [[ "$1 $2" == "storage cp" ]]; then  # results back from the bucket
  echo '{"fake": true}' > "${@: -1}result.json"; exit 0
fi
if [[ "$*" == *"queued-resources describe"* ]]; then echo ACTIVE; exit 0; fi
if [[ "$*" == *"vlm_jax.main"* && "$*" == *"$FAKE_FAIL"* ]]; then exit 3; fi
exit 0
"""


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    log = tmp_path / "gcloud.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_FAIL", "no-point-fails")
    return log


def test_executor_runs_points_and_tears_down(tmp_path, fake_gcloud, monkeypatch):
    root = tmp_path / "sw"
    ex = executors.make("tpu_pod:name=sw1,zone=z1,accelerator=v5litepod-16,mode=queued,"
                        "remote=gs://b/sw,ref=HEAD")
    ex.echo = lambda s: None
    cfg = _sweep_config("inprocess").point
    ex.run("p1", cfg, str(root / "points" / "p1"))
    ex.run("p2", cfg, str(root / "points" / "p2"))
    ex.wait()
    calls = fake_gcloud.read_text().splitlines()
    assert sum("queued-resources create sw1-qr" in c for c in calls) == 1  # one slice for all
    assert sum("vlm_jax.main" in c for c in calls) == 2
    assert calls[-1].startswith("compute tpus queued-resources delete sw1-qr --force")
    assert json.loads((root / "points" / "p2" / "result.json").read_text()) == {"fake": True}
    assert (root / "code.tar.gz").stat().st_size > 10_000  # the real git archive of the code
    # A failing point deletes the slice before the error reaches the sweep.
    fake_gcloud.write_text("")
    monkeypatch.setenv("FAKE_FAIL", "points/p3")
    with pytest.raises(RuntimeError, match="sweep point p3 failed on TPU slice sw1"):
        ex.run("p3", cfg, str(root / "points" / "p3"))
    calls = fake_gcloud.read_text().splitlines()
    assert calls[0].startswith("compute tpus queued-resources create")  # a fresh slice
    assert calls[-1].startswith("compute tpus queued-resources delete sw1-qr")
    assert not (root / "points" / "p3" / "result.json").exists()
