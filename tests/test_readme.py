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
