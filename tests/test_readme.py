"""The README's python snippets run as written (in a fresh process, with a scratch HOME)."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_snippets_run(tmp_path):
    with open(os.path.join(REPO, "README.md")) as f:
        snippets = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert len(snippets) >= 2
    script = tmp_path / "snippets.py"
    script.write_text("\n".join(snippets))
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_PLATFORMS", None)  # as a user runs it: the package picks the CPU itself
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "INVALID_ARGUMENT" not in proc.stderr and "TPU_WORKER_HOSTNAMES" not in proc.stderr


def _main(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("JAX_PLATFORMS", None)
    return subprocess.run([sys.executable, "-m", "vlm_jax.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_main_help_lists_every_config_and_how_to_see_its_keys():
    proc = _main("--help")
    assert proc.returncode == 1, proc.stderr[-2000:]  # absl's status for --help
    text = " ".join(proc.stdout.split())  # absl wraps the flag help
    names = sorted(n for n in os.listdir(os.path.join(REPO, "configs"))
                   if n.endswith(".py") and not n.startswith("_"))
    for name in names:
        assert f"configs/{name}:" in text, name
    # whole first paragraphs, not first lines cut mid-sentence
    assert "on a TPU pod slice" in text and "LLaVA-1.5 benchmark suite" in text
    assert "Add --print_config to see a config's keys" in text


def test_print_config_shows_the_keys_with_overrides_and_runs_nothing(tmp_path):
    proc = _main("--config=configs/tiny_vlm.py:steps=7", "--config.train.ckpt_every=3",
                 "--print_config", f"--workdir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"^  steps: 7$", proc.stdout, re.M) and re.search(
        r"^  ckpt_every: 3$", proc.stdout, re.M), proc.stdout
    assert not os.path.exists(tmp_path / "run")
