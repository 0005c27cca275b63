"""The QueCC token-count prefill benchmark (`python -m vlm_jax.bench.tokens`): smoke run at tiny
widths, its JSON line, and its configuration helpers."""

import json

import pytest

from vlm_jax.bench import tokens as bench
from vlm_jax.models.flops import llm_prefill_flops


def test_feature_layers_scale_with_tower_depth():
    assert bench.scaled_feature_layers(24) == (12, 16, 22, 23)
    assert bench.scaled_feature_layers(4) == (2, 2, 3, 3)
    assert bench.scaled_feature_layers(2) == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="vision-depth must be >= 2"):
        bench.scaled_feature_layers(1)


def test_config_keeps_real_widths_and_vocab():
    cfg = bench.bench_config(16, llm_depth=3, vision_depth=5)
    assert (cfg.vision.grid, cfg.vision.width, cfg.vision.depth) == (24, 1024, 5)
    assert (cfg.llm.width, cfg.llm.heads, cfg.llm.mlp_dim, cfg.llm.depth) == (1024, 16, 2816, 3)
    assert cfg.llm.vocab_size == 151937 and cfg.image_token_id == 151936
    assert cfg.compressor.name == "quecc" and cfg.num_visual_tokens == 16
    assert cfg.compressor.feature_layers == (2, 3, 4, 4)
    base = bench.bench_config(576, llm_depth=3, vision_depth=5)
    assert base.compressor.name == "identity" and base.num_visual_tokens == 576


def test_smoke_run_json_line(capsys):
    out = bench.main(["--quick", "--tokens", "1,576", "--repeats", "1", "--text-tokens", "12",
                      "--llm-depth", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("QueCC prefill vs V") and "target:" in "\n".join(lines)
    summary = json.loads(lines[-1])
    assert summary == json.loads(json.dumps(out))
    rows = summary["rows"]
    assert [r["V"] for r in rows] == [1, 576]
    for r in rows:
        for key in ("total_ms", "vision_ms", "llm_ms", "speedup", "predicted_speedup"):
            assert r[key] > 0, (r["V"], key)
        # the chained pieces (features -> QueCC -> projector -> LLM) are the timed prefill
        assert r["max_abs_diff_pieces_vs_total"] < 1e-4
    base = rows[-1]
    assert base["speedup"] == base["predicted_speedup"] == 1.0
    assert base["compressor_ms"] == base["text_query_ms"] == 0.0
    cfg = bench.bench_config(576, llm_depth=1, vision_depth=2, quick=True).llm
    for r in rows[:-1]:
        assert r["compressor_ms"] > 0 and r["text_query_ms"] > 0
        want = llm_prefill_flops(cfg, 12, 576)["total"] / llm_prefill_flops(cfg, 12, r["V"])["total"]
        assert r["predicted_speedup"] == pytest.approx(want)
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["predicted_speedup"])
    assert rows[0]["predicted_speedup"] > 10  # about (12 + 576) / (12 + 1) tokens, more with attention
    assert summary["min_efficiency"] == min(r["efficiency"] for r in rows[:-1])
    assert summary["quecc_share_at_1"] == rows[0]["compressor_share"]
    assert 0 < summary["quecc_share_at_1"] < 1
    assert summary["targets"] == {"min_efficiency": 0.8, "quecc_share_at_1": 0.05}
    assert summary["targets_met"]["min_efficiency"] == (summary["min_efficiency"] >= 0.8)


def test_bad_token_lists_are_rejected():
    with pytest.raises(ValueError, match="must include V = 576"):
        bench.build_cases([1, 16], llm_depth=1, vision_depth=2, batch=1, text=4, quick=True)
    with pytest.raises(ValueError, match="V=5 does not fit a 24x24 patch grid"):
        bench.build_cases([5, 576], llm_depth=1, vision_depth=2, batch=1, text=4, quick=True)
    with pytest.raises(ValueError, match="comma-separated integers"):
        bench.main(["--quick", "--tokens", "1,x,576"])
