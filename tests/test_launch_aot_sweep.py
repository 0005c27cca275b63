"""launch/aot_sweep.py: every LLM x stage of a sweep compiled for a TPU topology (the tiny
rehearsal config on v5e:2x2 here), compiled in full or extrapolated from two depths, and the
chip-hours arithmetic against a hand-computed case."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "launch"), os.path.join(REPO, "configs")]
import aot_sweep  # noqa: E402
import sweep_paper  # noqa: E402


def _row(llm, stage, steps, chips, by_v):
    return dict(llm=llm, stage=stage, steps=steps, chips=chips, step_s_by_V=by_v)


def test_chip_hours_by_hand():
    assert aot_sweep.chip_hours(3600, 0.5, 8) == pytest.approx(4.0)
    # Two stages of one LLM at V in {1, 4}: 100 steps x 0.9 s x 8 chips = 0.2 chip-hours, ...
    rows = [_row("a", "align", 100, 8, {1: 0.9, 4: 1.8}),
            _row("a", "tune", 200, 8, {1: 0.45, 4: 0.9}),
            _row("b", "align", 10, 8, {1: 36.0, 4: 72.0})]
    hours = aot_sweep.point_hours(rows)
    # a@V1: 0.2 + 200 x 0.45 x 8 / 3600 = 0.2 + 0.2; a@V4: 0.4 + 0.4; b@V1: 0.8, b@V4: 1.6.
    assert hours == {"a": {1: pytest.approx(0.4), 4: pytest.approx(0.8)},
                     "b": {1: pytest.approx(0.8), 4: pytest.approx(1.6)}}


def test_extrapolate_is_the_line_through_two_depths():
    a = dict(mem_gib=1.0, xla_tflops=2.0, compute_s=0.1, memory_s=0.2, xla_s=0.3, compile_s=5)
    b = dict(mem_gib=1.5, xla_tflops=3.0, compute_s=0.2, memory_s=0.3, xla_s=None, compile_s=7)
    e = aot_sweep.extrapolate(a, b, 1, 2, 24)
    assert (e["mem_gib"], e["xla_tflops"]) == pytest.approx((12.5, 25.0))
    assert (e["compute_s"], e["memory_s"]) == pytest.approx((2.4, 2.5))
    assert e["xla_s"] is None and e["compile_s"] == 12  # no XLA estimate at one depth: none
    assert aot_sweep.step_time(e) == (pytest.approx(2.5), "roofline")
    assert aot_sweep.step_time(dict(e, xla_s=1.0)) == (1.0, "xla")


def test_stage_table_compiled_and_extrapolated():
    """Extrapolating from 1 and 2 layers reproduces a full 4-layer compile; chip-hours are
    steps x step time x chips per V, the step time scaled by analytic FLOPs below the
    compiled V."""
    pytest.importorskip("libtpu")
    c = sweep_paper.get_config("smoke")
    llm = next(iter(c.sweep.grid.llm))
    c.sweep.grid.llm[llm]["depth"] = 4
    full = aot_sweep.stage_rows(c, "v5e:2x2", [llm], 64, None, echo=lambda s: None)
    assert [(r["stage"], r["method"]) for r in full] == [("align", "compiled"), ("tune", "compiled")]
    ext = aot_sweep.stage_rows(c, "v5e:2x2", [llm], 64, (1, 2), ["align"], echo=lambda s: None)
    f, e = full[0], ext[0]
    assert e["method"] == "extrapolated from 1 and 2 layers" and e["depth"] == 4
    assert e["xla_tflops"] == pytest.approx(f["xla_tflops"], rel=1e-3)
    assert e["mem_gib"] == pytest.approx(f["mem_gib"], rel=0.02)
    assert e["step_s"] == pytest.approx(f["step_s"], rel=0.02)
    for r in full:
        assert r["fits"] and r["chips"] == 4 and r["mem_gib"] > 0 and r["step_s"] > 0
        by_v = r["step_s_by_V"]
        assert by_v[64] == r["step_s"] and 0 < by_v[1] < by_v[64]  # a shorter sequence
        assert r["chip_hours_at_V"] == pytest.approx(2 * r["step_s"] * 4 / 3600)
        assert r["chip_hours"] == pytest.approx(2 * (by_v[1] + by_v[64]) * 4 / 3600)
        assert r["chip_hours_bound"] == pytest.approx(2 * r["chip_hours_at_V"])
    # Training the LLM (tune) costs more FLOPs than training the compressor alone (align).
    assert full[1]["xla_tflops"] > full[0]["xla_tflops"]
    table = aot_sweep.markdown(full + ext, "v5e:2x2", "python launch/aot_sweep.py ...")
    assert table.count(f"| {llm} |") == 4 and "extrapolated from 1 and 2 layers" in table
    assert "Total over 2 points x 2 stage(s)" in table.splitlines()[-1]
    by_point = aot_sweep.point_hours(full)[llm]
    assert sum(by_point.values()) == pytest.approx(sum(r["chip_hours"] for r in full))
