"""configs/sweep_paper.py: the grid and recipe, the pod dry run's plan, inputs checked before a
pod exists, a failed point named with its log, and the CPU rehearsal (shrunk) end to end."""

import json
import os
import subprocess
import sys

import pytest

from vlm_jax import pod
from vlm_jax.data import benchmarks as bl
from vlm_jax.data import export
from vlm_jax.data.synthetic import DEFAULT_TASKS, SyntheticConfig
from vlm_jax.scaling import executors, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import sweep_paper  # noqa: E402

POD = "pod=paper1,zone=us-east5-a,accelerator=v5litepod-256,remote=gs://b/paper"


def test_grid_and_recipe():
    c = sweep_paper.get_config("data_root=/d")
    points = dict(sweep.make_points(c, "/w"))
    assert len(points) == 4 * 7
    p = points["qwen-7b_V576_identity"]
    assert points["qwen-0_5b_V16_quecc"].model.compressor.name == "quecc"
    assert sorted({q.model.compressor.name for q in points.values()}) == ["identity", "quecc"]
    assert p.model.llm.width == 4096 and p.model.llm.dtype == "bfloat16" and p.model.llm.remat
    assert (p.mesh.to_dict(), p.sharding) == ({"fsdp": -1, "tensor": 4}, "fsdp_tp")
    assert points["qwen-0_5b_V1_quecc"].mesh.to_dict() == {"fsdp": -1, "tensor": 2}
    (s1, c1, d1), (s2, c2, d2) = sweep.stage_configs(p, "/w/points/x")
    assert (s1, s2) == ("align", "tune") and d1 == "/w/points/x/align"
    assert (c1.stage, c1.optim.lr, c1.train.batch_size, c1.optim.schedule) == (1, 1e-3, 256, "cosine")
    assert (c2.stage, c2.optim.lr, c2.train.batch_size, c1.optim.warmup_frac) == (2, 2e-5, 128, 0.03)
    assert c1.data.files.train == "/d/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
    assert c2.data.files.train == "/d/llava_v1_5_mix665k.json"
    assert [i["hf"] for i in c1.init_from] == ["/d/Qwen1.5-7B", "/d/clip-vit-large-patch14-336"]
    assert c2.init_from.workdir == d1 and c1.data.tokenizer.path == "/d/Qwen1.5-7B"
    fam = {k: v["family"] for k, v in p.eval.benchmarks.items()}
    assert fam["textvqa"] == "ocr" and fam["mme"] == fam["gqa"] == "reasoning" and len(fam) == 9


def test_pod_dry_run_prints_the_plan(tmp_path, capsys, monkeypatch):
    ran, real_run = [], pod.subprocess.run

    def run(argv, *a, **k):  # git (the code's commit) runs; anything else is recorded
        if argv[0] != "git":
            ran.append(argv)
        return real_run(argv, *a, **k)

    monkeypatch.setattr(pod.subprocess, "run", run)
    c = sweep_paper.get_config(f"data_root={tmp_path}/nodata,{POD},dry_run=1")
    with pytest.raises(executors.DryRunDone, match=r"28 job\(s\) on v5litepod-256"):
        sweep.run_sweep(c, str(tmp_path / "w"))
    out = capsys.readouterr().out
    assert "# sweep plan" in out and out.count("  stage align: ") == 28
    assert f"point qwen-4b_V576_identity: {tmp_path}/w/points/qwen-4b_V576_identity" in out
    assert f"init_from[0].hf: {tmp_path}/nodata/Qwen1.5-4B/config.json" in out
    assert f"MISSING stage 'align': data.files.train = {tmp_path}/nodata/LLaVA-Pretrain" in out
    assert "gcloud compute tpus queued-resources create paper1-qr" in out
    assert "--workdir=gs://b/paper/points/qwen-0_5b_V1_quecc --multihost" in out
    assert not ran  # nothing was run


def _data_root(root) -> None:
    """Every file the paper config reads, in place (checkpoint dirs hold only config.json)."""
    cfg = SyntheticConfig(resolution=32, num_test=160, tasks=DEFAULT_TASKS + ("caption",),
                          max_objects=3, ocr_max_len=3)
    export.export_suite(cfg, str(root), 4, 4, 2)
    for d in [*(d for _, d in sweep_paper.LLMS.values()), sweep_paper.VISION_DIR]:
        os.makedirs(root / d)
        (root / d / "config.json").write_text("{}")


def test_inputs_checked_before_the_pod_is_made(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(pod, "execute", lambda *a, **k: ran.append(a))
    root = tmp_path / "data"
    c = sweep_paper.get_config(f"data_root={root},{POD}")
    with pytest.raises(FileNotFoundError) as e:
        sweep.run_sweep(c, str(tmp_path / "w"))
    assert f"data.files.train = {root}/llava_v1_5_mix665k.json does not exist" in str(e.value)
    assert f"init_from[0].hf = {root}/Qwen1.5-1.8B/config.json" in str(e.value)
    _data_root(root)
    os.remove(root / "Qwen1.5-4B" / "config.json")
    with pytest.raises(FileNotFoundError, match=f"{root}/Qwen1.5-4B/config.json does not exist"):
        sweep.run_sweep(c, str(tmp_path / "w"))
    (root / "Qwen1.5-4B" / "config.json").write_text("{}")
    seed = root / "eval" / "seed" / "SEED-Bench.json"
    seed.write_text(json.dumps([{"question": "a list, not SEED's layout"}]))
    with pytest.raises(bl.BenchmarkFormatError, match=f"{seed}: the file has no `questions`"):
        sweep.run_sweep(c, str(tmp_path / "w"))
    assert not ran


def test_init_from_pointing_nowhere_is_named_before_the_pod_is_made(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(pod, "execute", lambda *a, **k: ran.append(a))
    root = tmp_path / "data"
    _data_root(root)
    c = sweep_paper.get_config(f"data_root={root},{POD}")
    c.point.stages[1]["init_from"] = dict(workdir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as e:
        sweep.run_sweep(c, str(tmp_path / "w"))
    assert f"stage 'tune': init_from.workdir = {tmp_path}/nowhere does not exist" in str(e.value)
    assert "data.files" not in str(e.value)  # every other input is there
    assert not ran


def test_failed_point_is_named_with_its_log_and_the_sweep_goes_on(tmp_path):
    c = sweep_paper.get_config("smoke")
    c.executor = "subprocess"
    c.sweep.check_inputs = False  # so the points start, and fail in the child: no data made
    del c.assets
    names = [n for n, _ in sweep.make_points(c, str(tmp_path))]
    with pytest.raises(executors.PointFailed) as e:
        sweep.run_sweep(c, str(tmp_path))
    for n in names:
        log = os.path.join(tmp_path, "points", n, "log.txt")
        assert log in str(e.value) and "missing input(s)" in open(log).read()
    assert "rerun the same command to resume" in str(e.value)


def test_rehearsal_smoke_end_to_end(tmp_path):
    """The CPU rehearsal, shrunk: assets made in the workdir, both stages, every benchmark."""
    work = tmp_path / "paper"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-m", "vlm_jax.main",
                          "--config=configs/sweep_paper.py:smoke", f"--workdir={work}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    rows = json.loads((work / "results.json").read_text())
    assert [r["name"] for r in rows] == ["qwen-tiny-s_V1_quecc", "qwen-tiny-s_V64_identity"]
    for r in rows:
        assert [s["name"] for s in r["stages"]] == ["align", "tune"]
        assert set(r["benchmarks"]) == {"gqa", "vqav2", "vizwiz", "scienceqa", "textvqa", "pope",
                                        "mme", "mmbench", "seed"}
        assert set(r["benchmarks"]["mme"]) >= {"perception", "cognition"}
        assert set(r["families"]) == {"reasoning", "ocr"}
        assert all(0 <= r["tasks"][b] <= 1 for b in r["benchmarks"])
    assert (work / "data" / "Qwen-tiny-s".lower() / "config.json").exists()
    assert (work / "fit.json").exists() and (work / "results.csv").exists()
    assert "wall time" in out.stdout
