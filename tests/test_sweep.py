"""The main job in shrunk form: the smoke sweep end to end, killed and resumed."""

import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(workdir, data_dir):
    return [sys.executable, "-m", "vlm_jax.main", "--config=configs/sweep_tiny.py:smoke",
            f"--workdir={workdir}", f"--config.point.data.data_dir={data_dir}",
            f"--config.pretrain.data.data_dir={data_dir}"]


def test_smoke_sweep_resumes_after_sigkill_without_redoing_points(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    work, data_dir = str(tmp_path / "sweep"), str(tmp_path / "tfds")
    points = os.path.join(work, "points")
    proc = subprocess.Popen(_cmd(work, data_dir), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    done, deadline = [], time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(points):
            done = [p for p in os.listdir(points)
                    if os.path.exists(os.path.join(points, p, "result.json"))]
            if done:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(done) == 1, f"expected to kill after one point, got {done}"
    first = os.path.join(points, done[0], "result.json")
    mtime = os.path.getmtime(first)

    out = subprocess.run(_cmd(work, data_dir), cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.getmtime(first) == mtime, "a finished point was redone"
    assert f"{done[0]} done, skipping" in out.stderr
    with open(os.path.join(work, "results.json")) as f:
        rows = json.load(f)
    assert sorted(r["name"] for r in rows) == sorted(
        ["s_V1_quecc", "s_V16_quecc", "m_V1_quecc", "m_V16_quecc"])
    for r in rows:
        assert 0 <= r["score"] <= 1 and r["ttft_ms"] > 0 and r["prefill_gflops"] > 0
    with open(os.path.join(work, "fit.json")) as f:
        fits = json.load(f)
    assert set(fits) == {"reasoning", "ocr"}
    for fam in fits.values():
        assert "alpha" in fam or "error" in fam
    assert "reasoning:" in out.stdout and "wall time" in out.stdout
    assert os.path.exists(os.path.join(work, "results.csv"))
    assert any(f.endswith(".png") for f in os.listdir(os.path.join(work, "plots")))
    # it ends saying where everything went, and the frontier CLI reads its own table
    assert (f"results: {work}/results.csv (and results.json), fit: {work}/fit.json, plots: "
            f"{work}/plots/") in out.stdout.splitlines()[-1]
    fr = subprocess.run([sys.executable, "-m", "vlm_jax.scaling", "frontier",
                         os.path.join(work, "results.csv"), "--text-tokens", "10"], cwd=REPO,
                        env=env, capture_output=True, text=True)
    assert fr.returncode == 0, fr.stderr[-2000:]
    frontier = json.loads(fr.stdout)["frontier"]
    assert frontier and {r["name"] for r in frontier} <= {r["name"] for r in rows}
