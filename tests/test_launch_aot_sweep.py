"""launch/aot_sweep.py: every LLM x stage of a sweep compiled for a TPU topology (the tiny
rehearsal config on v5e:2x2 here), compiled in full or extrapolated from two depths."""

import os
import sys

import pytest

pytest.importorskip("libtpu")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "launch"), os.path.join(REPO, "configs")]
import aot_sweep  # noqa: E402
import sweep_paper  # noqa: E402


def test_stage_table_compiled_and_extrapolated():
    c = sweep_paper.get_config("smoke")
    llm = next(iter(c.sweep.grid.llm))
    full = aot_sweep.stage_rows(c, "v5e:2x2", [llm], 64, None, echo=lambda s: None)
    assert [(r["stage"], r["method"]) for r in full] == [("align", "compiled"), ("tune", "compiled")]
    depth = full[0]["depth"]
    ext = aot_sweep.stage_rows(c, "v5e:2x2", [llm], 64, (1, depth), echo=lambda s: None)
    for f, e in zip(full, ext):
        assert f["fits"] and f["chips"] == 4 and f["mem_gib"] > 0 and f["step_s"] > 0
        # Extrapolating to the depth that was compiled returns the compiled figures.
        assert e["xla_tflops"] == pytest.approx(f["xla_tflops"], rel=1e-6)
        assert e["mem_gib"] == pytest.approx(f["mem_gib"], rel=1e-6)
        steps = {"align": 2, "tune": 2}[f["stage"]]
        assert f["chip_hours"] == pytest.approx(steps * 2 * f["step_s"] * 4 / 3600)
    # Training the LLM (tune) costs more FLOPs than training the compressor alone (align).
    assert full[1]["xla_tflops"] > full[0]["xla_tflops"]
    table = aot_sweep.markdown(full + ext, "v5e:2x2", "python launch/aot_sweep.py ...")
    assert table.count(f"| {llm} |") == 4 and "extrapolated from 1 and" in table
    assert "chip-hours." in table.splitlines()[-1]
