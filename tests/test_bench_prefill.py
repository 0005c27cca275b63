"""bench.prefill end to end on a tiny model: same logits and greedy tokens as transformers,
every timing reported beside the load average."""

import math

from vlm_jax.bench import prefill


def test_tiny_benchmark_agrees_with_transformers_and_reports_the_load():
    s = prefill.main(["--models", "tiny", "--threads", "1", "--repeats", "1", "--batch", "2",
                      "--text", "8", "--new_tokens", "4"])
    r = s["models"]["tiny"]["threads"]["1"]
    assert r["max_logit_diff"] < 1e-4
    assert r["generate"]["token_agreement"] == 1.0
    for key in ("vlm_jax_ms", "transformers_ms"):
        assert r[key] > 0 and r["generate"][key] > 0
    for pair in r["load_avg"].values():
        assert len(pair) == 2 and all(len(load) == 3 for load in pair)
    assert math.isfinite(s["load_avg_max"])


def test_speed_figures_need_the_load_average(monkeypatch):
    import os

    import pytest

    from vlm_jax.bench import load

    def unreadable():
        raise OSError("no load average here")

    monkeypatch.setattr(os, "getloadavg", unreadable)
    with pytest.raises(RuntimeError, match="load average"):
        load.load_average()
    with pytest.warns(UserWarning, match="load average 3.5 > 1"):
        load.warn_if_loaded([3.5, 1.0, 1.0], "test")
