"""bench.prefill end to end on a tiny model: same logits and greedy tokens as transformers,
every timing reported beside the load average."""

import math

from vlm_jax.bench import prefill


def test_tiny_benchmark_agrees_with_transformers_and_reports_the_load():
    s = prefill.main(["--models", "tiny", "--threads", "1", "--repeats", "1", "--batch", "2",
                      "--text", "8", "--new_tokens", "4", "--settle_s", "0", "--rounds", "2"])
    r = s["models"]["tiny"]["threads"]["1"]
    assert len(r["round_ratios"]) == 2 and len(r["generate"]["round_ratios"]) == 2
    assert r["max_logit_diff"] < 1e-4
    assert r["generate"]["token_agreement"] == 1.0
    for key in ("vlm_jax_ms", "transformers_ms"):
        assert r[key] > 0 and r["generate"][key] > 0
    for pair in r["load_avg"].values():  # [start, end] of each round's worker
        assert len(pair) == 4 and all(len(load) == 3 for load in pair)
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


def test_profile_categories_from_the_compiled_prefill():
    import jax

    from vlm_jax import models
    from vlm_jax.bench import profile

    cfg = prefill.bench_config("tiny")
    module, params = models.build(cfg), models.init_params(cfg, 0)
    inputs = prefill.make_inputs(cfg, 2, 8)
    hlo = jax.jit(lambda p, i, t: module.apply({"params": p}, i, t)).lower(
        params, inputs["images"], inputs["tokens"]).compile().as_text()
    kinds = set(profile.hlo_categories(hlo).values())
    assert {"matmuls", "attention", "norms"} <= kinds <= set(profile.CATEGORIES)
    assert profile.categorize_hlo("jit(f)/VLM/llm/layers_0/self_attn/q_proj/dot_general",
                                  "fusion") == "matmuls"
    assert profile.categorize_hlo("jit(f)/VLM/llm/layers_0/self_attn/dot_general",
                                  "fusion") == "attention"
    assert profile.categorize_aten("aten::addmm") == "matmuls"
    assert profile.categorize_aten("aten::_softmax") == "attention"


def test_profile_on_one_thread_in_a_child_reports_the_matmul_floor():
    from vlm_jax.bench import profile

    r = profile.main(["--model", "tiny", "--batch", "1", "--text", "8", "--runs", "1",
                      "--threads", "1"])
    assert r["threads"] == 1
    torch_ms = r["transformers"]
    assert r["ratio_floor_at_matmul_parity"] == torch_ms["matmuls"] / sum(torch_ms.values())
    assert 0 < r["ratio_floor_at_matmul_parity"] < 1
    assert sum(r["vlm_jax"].values()) > 0 and len(r["load_avg"]) == 3
