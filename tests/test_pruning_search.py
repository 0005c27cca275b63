"""Pruning schedules, G-Search, P-Sigmoid BO, cost reports, Kendall-tau diagnostics, the
prune_search entry point and the pruning benchmark (tiny models, toy metrics)."""

import dataclasses
import json
import os
import sys

import ml_collections
import numpy as np
import pytest

from vlm_jax.bench import pruning as bench
from vlm_jax.models import init_params, presets
from vlm_jax.models import llm as llm_mod
from vlm_jax.models.layers import attention_weights, causal_mask
from vlm_jax.models.vlm import VLM
from vlm_jax.pruning import ScheduleError, calibration, diagnostics, report, schedules
from vlm_jax.pruning.gsearch import default_grid, g_search
from vlm_jax.pruning.psigmoid import psigmoid_search
from vlm_jax.pruning.runner import default_config, load_model, run
from vlm_jax.train import trainer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs"))
import tiny_vlm  # noqa: E402


@pytest.fixture(scope="module")
def model():
    cfg = presets.llava("clip-tiny", "qwen2-tiny")
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, depth=4))
    return cfg, init_params(cfg, 1)


# ----------------------------------------------------------------------------- schedules


def test_fastv_and_psigmoid_shapes():
    assert schedules.fastv(6, 576, 2, 0.5) == (576, 576, 288, 288, 288, 288)
    assert schedules.fastv(4, 576, 3, 0.875) == (576, 576, 576, 72)
    keep = schedules.psigmoid(24, 576, 0.8, 10.0, 0.1)
    assert keep[0] == 576 and all(a >= b for a, b in zip(keep, keep[1:]))
    want = [round(576 * (0.1 + 0.9 / (1 + np.exp(0.8 * (layer - 10.0))))) for layer in range(24)]
    assert list(keep[1:]) == [min(want[1:i + 1]) for i in range(1, 24)]
    assert keep[-1] == round(576 * (0.1 + 0.9 / (1 + np.exp(0.8 * 13))))
    with pytest.raises(ScheduleError, match="K=0"):
        schedules.fastv(6, 576, 0, 0.5)
    with pytest.raises(ScheduleError, match="floor b=1.5"):
        schedules.psigmoid(6, 576, 1.0, 2.0, 1.5)


def test_schedule_file_roundtrip_and_errors(tmp_path):
    path = str(tmp_path / "s.json")
    schedules.save(path, (8, 8, 4, 2), method="test")
    assert schedules.load(path, 4, 8) == (8, 8, 4, 2)
    assert json.load(open(path))["avg_kept"] == 5.5
    with pytest.raises(ScheduleError, match="has 4 layers but the LLM has 5"):
        schedules.load(path, 5, 8)
    (tmp_path / "bad.json").write_text("{\"keep\": [8, 9]")
    with pytest.raises(ScheduleError, match="cannot read schedule file"):
        schedules.load(str(tmp_path / "bad.json"), 2, 8)
    cfg = ml_collections.ConfigDict(dict(method="explicit", keep=(8, 3, 5, 1)))
    with pytest.raises(ScheduleError, match="prune.keep: layer 2 keeps 5 tokens, more than"):
        schedules.from_config(cfg, 4, 8)


# ----------------------------------------------------------------------------- G-Search

NEED = (32, 20, 12, 12, 6, 6)  # toy: the tokens each layer needs; a shortfall costs metric


def toy_metric(keep):
    return 1.0 - 0.01 * sum(max(0, n - k) for n, k in zip(NEED, keep))


@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_gsearch_is_greedy_minimal_and_within_eps(eps, tmp_path):
    grid = list(range(0, 33, 2))
    cache = str(tmp_path / "cache.json")
    res = g_search(toy_metric, 6, 32, grid, eps, cache_path=cache)
    keep = res.keep
    assert keep[0] == 32 and all(a >= b for a, b in zip(keep, keep[1:]))
    assert toy_metric(keep) >= res.baseline - eps - 1e-12
    assert res.metric == pytest.approx(toy_metric(keep))
    if eps == 0.0:
        assert keep == (32, 20, 12, 12, 6, 6)
    for layer in range(1, 6):  # greedy minimality: the next smaller count breaks the tolerance
        smaller = [c for c in grid if c < keep[layer]]
        if smaller:
            cand = list(keep[:layer]) + [smaller[-1]] * (6 - layer)
            assert toy_metric(cand) < res.baseline - eps
    again = g_search(toy_metric, 6, 32, grid, eps, cache_path=cache)
    assert again.keep == keep and again.evaluations == 0  # resumed from the cache file


def test_gsearch_on_tiny_model_respects_eps(model):
    cfg, params = model
    calib = calibration.random_calibration(cfg, 4, prompt_len=5, answer_len=2, seed=1)
    metric_fn = calibration.make_metric(cfg, params, calib, "loglik", batch_size=4)
    eps = 0.05
    res = g_search(metric_fn, 4, 16, [0, 8, 16], eps)
    assert res.keep[0] == 16 and all(a >= b for a, b in zip(res.keep, res.keep[1:]))
    assert metric_fn(res.keep) >= metric_fn(schedules.full(4, 16)) - eps
    assert res.evaluations >= 2


def test_default_grid():
    assert default_grid(576) == [0, 36, 72, 144, 216, 288, 360, 432, 504, 576]
    with pytest.raises(ValueError, match="outside"):
        g_search(toy_metric, 6, 32, [0, 40])


# ----------------------------------------------------------------------------- P-Sigmoid


def test_psigmoid_bo_respects_token_budget_and_is_seeded():
    metric = lambda keep: float(np.dot(keep, 0.7 ** np.arange(len(keep))))  # more is better
    budget = 0.4 * 64
    res = psigmoid_search(metric, 8, 64, budget, n_trials=16, seed=3)
    assert schedules.average_kept(res.keep) <= budget
    assert res.params["cost"] <= budget and res.keep[0] == 64
    assert any(not e["feasible"] for e in res.log)  # the sampler did propose over-budget points
    assert all(e["metric"] is None for e in res.log if not e["feasible"])  # never evaluated
    assert res.metric == max(e["metric"] for e in res.log if e["feasible"])
    assert psigmoid_search(metric, 8, 64, budget, n_trials=16, seed=3).keep == res.keep


def test_psigmoid_bo_flops_budget_and_infeasible_budget(model):
    cfg, _ = model
    flops = lambda keep: report.prefill_flops(cfg.llm, 10, 16, keep)
    full = flops(schedules.full(4, 16))
    res = psigmoid_search(lambda k: -abs(sum(k) - 30), 4, 16, 0.8 * full, flops, n_trials=10,
                          sampler="gp", seed=0)
    assert flops(res.keep) <= 0.8 * full
    with pytest.raises(ValueError, match="below the smallest P-Sigmoid cost"):
        psigmoid_search(lambda k: 0.0, 4, 16, 3.0, n_trials=4)


# ----------------------------------------------------------------------------- report


def test_prefill_flops_and_report_format(model):
    cfg, _ = model
    llm = cfg.llm
    full = report.prefill_flops(llm, 10, 16)
    pruned = report.prefill_flops(llm, 10, 16, (16, 16, 8, 0))
    d, m, kv = llm.width, llm.mlp_dim, llm.kv_heads * llm.dim_per_head
    layer = lambda n: 2 * n * (2 * d * d + 2 * d * kv) + 6 * n * d * m + 4 * n * n * d
    head = 2 * d * llm.vocab_size
    assert full == pytest.approx(4 * layer(26) + head)
    assert pruned == pytest.approx(2 * layer(26) + layer(18) + layer(10) + head)
    base = report.make_report("unpruned", llm, (16,) * 4, 10, 16, "accuracy", 0.9, 0.02)
    rep = report.make_report("fastv", llm, (16, 16, 8, 0), 10, 16, "accuracy", 0.85, 0.01,
                             baseline=base)
    assert rep.flops_speedup == pytest.approx(full / pruned)
    assert rep.ttft_speedup == pytest.approx(2.0) and rep.metric_drop == pytest.approx(0.05)
    assert rep.efficiency == pytest.approx(2.0 * pruned / full)
    table = report.format_table([base, rep])
    assert "16x2,8,0" in table and table.count("\n") == 3
    assert set(rep.to_dict()) >= {"keep", "avg_kept", "prefill_flops", "ttft_s", "metric"}
    with pytest.raises(ScheduleError, match="layer 1 keeps 17"):
        report.make_report("bad", llm, (16, 17, 8, 0), 10, 16, "accuracy", 0.0)


# ----------------------------------------------------------------------------- diagnostics


def test_layer_importance_matches_explicit_probabilities(model, monkeypatch):
    cfg, params = model
    calib = calibration.random_calibration(cfg, 2, prompt_len=5, max_pad=2, seed=2)
    batch = {k: calib[k] for k in ("images", "tokens", "valid")}
    imp = diagnostics.layer_importance(cfg, params, batch, query="text")
    assert imp.shape == (4, 2, 16)
    probs = []
    orig = llm_mod.causal_attention

    def capture(q, k, v, valid, impl="xla"):
        b, lq, h, dh = q.shape
        probs.append(np.asarray(attention_weights(
            q.reshape(b, lq, k.shape[2], h // k.shape[2], dh), k, causal_mask(valid))))
        return orig(q, k, v, valid, impl)

    monkeypatch.setattr(llm_mod, "causal_attention", capture)
    VLM(cfg).apply({"params": params}, batch["images"], batch["tokens"], batch["valid"])
    visual = calib["tokens"] == cfg.image_token_id
    for b in range(2):
        after = np.arange(visual.shape[1]) > np.flatnonzero(visual[b])[-1]
        rows = calib["valid"][b] & ~visual[b] & after
        for layer in range(4):
            want = probs[layer][b][:, :, rows].sum(2).mean((0, 1))[visual[b]]
            np.testing.assert_allclose(imp[layer, b], want, rtol=1e-5, atol=1e-6)
    tau = diagnostics.kendall_tau_matrix(imp)
    assert tau.shape == (4, 4) and np.allclose(np.diag(tau), 1) and np.allclose(tau, tau.T)
    assert np.all(np.abs(tau) <= 1) and len(diagnostics.adjacent_tau(tau)) == 3


def test_kendall_tau_extremes():
    x = np.random.default_rng(0).standard_normal((1, 3, 10))
    imp = np.concatenate([x, 2 * x + 1, -x])
    tau = diagnostics.kendall_tau_matrix(imp)
    np.testing.assert_allclose(tau, [[1, 1, -1], [1, 1, -1], [-1, -1, 1]], atol=1e-12)


# ----------------------------------------------------------------------------- entry points


def test_run_prune_search_writes_and_resumes(tmp_path):
    c = default_config()
    c.calib.update(num_examples=4, batch_size=4, prompt_len=4, answer_len=2)
    c.prune.update(method="gsearch", grid=(0, 8, 16), timing_runs=1)
    out = run(c, str(tmp_path))
    saved = json.load(open(tmp_path / "schedule.json"))
    assert saved["keep"] == out["pruned"]["keep"] and saved["method"] == "gsearch"
    assert out["pruned"]["ttft_s"] > 0 and out["unpruned"]["keep"] == [16, 16]
    assert len(json.load(open(tmp_path / "kendall_tau.json"))["adjacent"]) == 1
    cache = (tmp_path / "metric_cache.json").read_text()
    run(c, str(tmp_path))  # resumes: every metric value comes from the cache
    assert (tmp_path / "metric_cache.json").read_text() == cache
    c.prune.bogus = 1
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bogus'\] in config.prune"):
        run(c, str(tmp_path))


def test_bench_prints_best_and_min_efficiency(capsys):
    out = bench.main(["--model", "llava-tiny", "--n", "2", "--text", "4", "--runs", "1",
                      "--trials", "0", "--gsearch", "0", "--fastv", "1:0.5,1:0.75"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line) == json.loads(json.dumps(out))
    assert {"method", "speedup", "accuracy_drop"} <= set(out["best"])
    assert out["min_efficiency"] is not None and out["visual_tokens"] == 16
    assert [r["method"] for r in out["rows"]] == ["unpruned", "fastv K=1 R=0.5", "fastv K=1 R=0.75"]
    assert out["rows"][2]["keep"] == [16, 4] and out["rows"][2]["flops_speedup"] > 1


def test_load_model_takes_a_sweep_point_dir_for_a_training_run(tmp_path):
    """A sweep point's run directory also holds the point's config.json (not an HF config);
    the benchmark calibrates on one of its eval splits and scores on another."""
    c = tiny_vlm.get_config(f"llm=s,V=4,res=32,steps=1,data_dir={tmp_path / 'tfds'}")
    c.data.synthetic.update(num_train=32, num_validation=8, num_test=8)
    c.train.update(batch_size=8, ckpt_every=1)
    run_dir = tmp_path / "point"
    trainer.train(c, str(run_dir))
    (run_dir / "config.json").write_text(c.to_json())
    lc = default_config()
    lc.checkpoint = str(run_dir)
    cfg, params, train_cfg = load_model(lc)
    assert train_cfg is not None and cfg.num_visual_tokens == 4
    assert "vision_tower" in params
    out = bench.main(["--checkpoint", str(run_dir), "--source", "eval", "--n", "8", "--runs", "1",
                      "--trials", "0", "--gsearch", "0", "--fastv", "1:0.5",
                      "--calib_split", "validation", "--score_split", "test"])
    assert out["calib_split"] == "validation" and out["score_split"] == "test"
    assert out["visual_tokens"] == 4 and out["best"]["accuracy_drop"] is not None
