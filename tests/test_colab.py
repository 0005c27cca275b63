"""The Colab notebooks run top to bottom (nbclient, a fresh kernel each) and show what they claim.

Each notebook runs as committed, with its small CPU defaults, in a kernel whose working
directory is the repository root and whose `VLM_JAX_COLAB_WORKDIR` is a fresh temporary folder.
After its last cell, checks run in the same kernel on the variables it left. The quick ones are
in the default suite; the ones that train a model are marked `colab` (`make test-colab`, which
CI runs).
"""

import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(REPO, "colabs")

# notebook -> Python run in its kernel after the last cell (an AssertionError fails the test)
CHECKS = {
    "quickstart": """
assert logits.shape[-1] == cfg.llm.vocab_size
assert 0 < law.alpha < 0.2
assert row['train_steps'] == STEPS and progress.n == STEPS  # the bar followed the trainer
assert len(shown) == len(SHOW)
assert all(r['prediction'] is not None for r in shown)
""",
    "scaling_law": """
r, o = PAPER_LAWS['reasoning'], PAPER_LAWS['ocr']
assert r.alpha > 3 * r.beta > 0, (r.alpha, r.beta)      # reasoning: parameters matter more
assert o.beta > o.alpha > 0, (o.alpha, o.beta)          # OCR-like: tokens matter more
assert 8 < r.optimal_tokens(text_tokens=50) < 25
assert abs(SWEEP_LAWS['reasoning'].alpha - r.alpha) < 1e-9   # the CSV round trip refits the same
assert os.path.exists(os.path.join(WORKDIR, 'scaling_law_budget.png'))
""",
    "interop": """
assert parity['max_abs_diff'] <= 1e-4 * max(1.0, parity['ref_max_abs']) and parity['kl'] < 1e-6
assert cfg2 == cfg and roundtrip_diff == 0.0
assert export_parity['max_abs_diff'] <= 1e-4 * max(1.0, export_parity['ref_max_abs'])
assert qcfg.num_visual_tokens == 4 and cfg.num_visual_tokens == 16
assert qlogits.shape == (2, 4 + text_tokens, cfg.llm.vocab_size)
assert qcfg2 == qcfg and quecc_diff == 0.0 and quecc_logit_diff < 1e-5  # llava_original
""",
    "pruning": """
assert importance.shape == (DEPTH, len(meta['id']), V) and (importance >= 0).all()
assert set(pick) == {'fastv', 'psigmoid', 'gsearch'} and rows[0]['method'] == 'unpruned'
assert all(r['ttft_s'] > 0 and r['metric'] is not None for r in rows)
for family, kept in KEPT.items():  # the pruned forward keeps what the schedule says, nested
    assert [len(k) for k in kept] == list(pick[family]['keep']), family
    assert all(set(b) <= set(a) for a, b in zip(kept, kept[1:])), family
for name in ('importance', 'schedules', 'tradeoff'):
    assert os.path.exists(os.path.join(WORKDIR, f'pruning_{name}.png'))
""",
}
SLOW = {"quickstart", "pruning"}


def execute(name: str, workdir: str, monkeypatch) -> float:
    """Runs colabs/NAME.ipynb plus its checks in a fresh kernel; returns the wall seconds."""
    nb = nbformat.read(os.path.join(COLABS, f"{name}.ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECKS[name]))
    monkeypatch.setenv("VLM_JAX_COLAB_WORKDIR", workdir)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, as in Colab
    t0 = time.time()
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": REPO}}).execute()
    return time.time() - t0


def test_notebooks_import_the_package_and_never_copy_it():
    names = sorted(f[:-len(".ipynb")] for f in os.listdir(COLABS) if f.endswith(".ipynb"))
    assert set(CHECKS) <= set(names), names
    for name in names:
        nb = nbformat.read(os.path.join(COLABS, f"{name}.ipynb"), as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "from vlm_jax" in code or "import vlm_jax" in code, name
        for cell in nb.cells:  # saved without outputs: small files, no stale figures
            assert not cell.get("outputs"), f"{name}.ipynb has saved outputs; strip them"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.colab) if n in SLOW else n
                                  for n in CHECKS])
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    seconds = execute(name, str(tmp_path), monkeypatch)
    print(f"{name}.ipynb: {seconds:.0f} s")
