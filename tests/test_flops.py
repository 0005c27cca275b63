"""FLOPs model and parameter counts: exact counts, hand-computed FLOPs, XLA's cost analysis."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import pytest

from vlm_jax.models import build, dummy_inputs, init_params, presets
from vlm_jax.models import compressors as compressors_lib
from vlm_jax.models import flops as F
from vlm_jax.models.config import CompressorConfig, LLMConfig, ViTConfig, VLMConfig


def real_param_count(cfg) -> int:
    """Parameters the module actually creates. For an LLM alone, `embed` is run as well as
    `__call__` (which takes embeddings) so the token table is created too."""
    if isinstance(cfg, LLMConfig):
        module = build(cfg)
        inputs = dummy_inputs(cfg)

        def both(m, tokens, positions, valid):
            return m(m.embed(tokens), positions, valid)

        shapes = jax.eval_shape(lambda: module.init(
            jax.random.key(0), jnp.zeros(inputs["positions"].shape, jnp.int32),
            inputs["positions"], inputs["valid"], method=both))
    else:
        shapes = jax.eval_shape(lambda: {"params": init_params(cfg)})
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("name", ["llava-tiny", "qwen2-tiny", "llama-tiny", "clip-tiny",
                                  "siglip-tiny"])
def test_param_count_matches_tiny_presets(name):
    cfg = presets.get(name)
    assert F.param_count(cfg) == real_param_count(cfg)


def test_param_count_variants():
    llm = dataclasses.replace(presets.get("llama-tiny"), head_dim=16, qkv_bias=True,
                              o_bias=True, mlp_bias=True)
    assert F.param_count(llm) == real_param_count(llm)
    vlm = presets.llava("siglip-tiny", "llama-tiny", vision_feature_select="full",
                        vision_feature_layer=(-2, -1), projector_bias=False)
    assert F.param_count(vlm) == real_param_count(vlm)
    # Published sizes: CLIP-L/14-336 is 304M, Qwen2-0.5B 494M, Llama-2-7B 6.74B.
    assert F.param_count(presets.get("clip-l/14-336")) == pytest.approx(303.5e6, rel=1e-3)
    assert F.param_count(presets.get("qwen2-0.5b")) == pytest.approx(494.0e6, rel=1e-3)
    assert F.param_count(presets.get("llama2-7b")) == 6_738_415_616
    with pytest.raises(TypeError, match="param_count takes"):
        F.param_count("llava-tiny")


@pytest.mark.parametrize("name,v,text", [("avgpool", 4, True), ("resampler", 1, True),
                                         ("tokenpacker", 4, True), ("quecc", 16, True),
                                         ("quecc", 1, False)])
def test_param_count_with_compressor(name, v, text):
    if name not in compressors_lib.REGISTRY:
        pytest.skip(f"compressor {name!r} not registered")
    cfg = dataclasses.replace(presets.get("llava-tiny"), compressor=CompressorConfig(
        name, v, feature_layers=(1, 2), use_text_query=text, heads=4))
    assert F.param_count(cfg) == real_param_count(cfg)


def test_llm_layer_hand_computed():
    cfg = presets.get("llama-tiny")  # d=32, heads 4 x 8, kv_heads 2 x 8, mlp 64, vocab 128
    layer = F.llm_layer_flops(cfg, 10)
    assert layer["projections"] == 2 * 10 * (32 * 32 + 2 * 32 * 16 + 32 * 32) == 61_440
    assert layer["mlp"] == 2 * 10 * 3 * 32 * 64 == 122_880
    assert layer["attention"] == 4 * 10 * 10 * 32 == 12_800
    assert layer["total"] == 61_440 + 122_880 + 12_800
    pre = F.llm_prefill_flops(cfg, 6, 4)  # n = 10 in both layers, head on one position
    assert pre["projections"] == 2 * 61_440 and pre["attention"] == 2 * 12_800
    assert pre["lm_head"] == 2 * 32 * 128
    assert pre["total"] == 2 * layer["total"] + 2 * 32 * 128
    assert F.llm_prefill_flops(cfg, 6, 4, lm_head="all")["lm_head"] == 10 * 2 * 32 * 128
    assert F.llm_prefill_flops(cfg, 6, 4, lm_head="none")["lm_head"] == 0
    # Causal: the 10 * 11 / 2 = 55 visited pairs instead of 100.
    assert F.llm_prefill_flops(cfg, 6, 4, causal=True)["attention"] == 2 * 4 * 55 * 32


def test_llm_flops_scale_with_tokens():
    cfg = presets.get("qwen2-7b")
    one, two = F.llm_prefill_flops(cfg, 50, 64), F.llm_prefill_flops(cfg, 100, 128)
    assert two["projections"] == pytest.approx(2 * one["projections"])
    assert two["mlp"] == pytest.approx(2 * one["mlp"])
    assert two["attention"] == pytest.approx(4 * one["attention"])
    assert two["lm_head"] == one["lm_head"]
    # At this size the matmuls are ~2N per token: the simple model is within a few percent.
    simple = F.simple_flops(cfg, 50, 64)
    assert one["total"] == pytest.approx(simple, rel=0.15)
    assert simple == 2 * F.param_count(cfg) * 114


def test_schedule_keep_all_equals_no_schedule_and_pruning_saves():
    cfg = presets.get("llava-1.5-7b")
    v, depth = cfg.num_visual_tokens, cfg.llm.depth
    full = F.llm_prefill_flops(cfg.llm, 40, v)
    assert F.llm_prefill_flops(cfg.llm, 40, v, (v,) * depth) == full
    assert F.vlm_flops(cfg, 40, schedule=(v,) * depth) == F.vlm_flops(cfg, 40)
    fastv = (v,) * 2 + (v // 2,) * (depth - 2)  # FastV K=2, R=50%
    pruned = F.llm_prefill_flops(cfg.llm, 40, v, fastv)
    by_hand = sum(F.llm_layer_flops(cfg.llm, 40 + k)["total"] for k in fastv)
    assert pruned["total"] - pruned["lm_head"] == pytest.approx(by_hand)
    saved = 1 - pruned["total"] / full["total"]
    assert 0.40 < saved < 0.50  # FastV reports ~45% on LLaVA-1.5
    with pytest.raises(ValueError, match="schedule has 3 entries for an LLM with 32 layers"):
        F.llm_prefill_flops(cfg.llm, 40, v, (v, v, v))
    with pytest.raises(ValueError, match=r"keep\[1\] = 577 is outside \[0, 576\]"):
        F.llm_prefill_flops(cfg.llm, 40, v, (v, v + 1) + (v,) * (depth - 2))


def test_decode_flops():
    cfg = presets.get("llama-tiny")
    steps = F.llm_decode_flops(cfg, [20, 12], steps=5)
    by_step = [F.llm_decode_flops(cfg, [20 + t, 12 + t]) for t in range(5)]
    for key in steps:
        assert steps[key] == pytest.approx(sum(s[key] for s in by_step))
    one = F.llm_decode_flops(cfg, 9)  # the new token sees 10 keys
    assert one["attention"] == 2 * 4 * 10 * 32 and one["lm_head"] == 2 * 32 * 128
    vlm = presets.get("llava-tiny")
    with_decode = F.vlm_flops(vlm, 8, decode_tokens=3)
    cached = 8 + vlm.num_visual_tokens
    assert with_decode["decode"] == F.llm_decode_flops(vlm.llm, cached, 3)["total"]


def test_vision_and_compressor_hand_computed():
    vit = presets.get("clip-tiny")  # 32 px / 8 -> 4x4 grid + CLS = 17 tokens, C=32, M=64
    f = F.vision_flops(vit)
    assert f["patch_embed"] == 2 * 16 * (8 * 8 * 3) * 32
    assert f["projections"] == 2 * (2 * 17 * 4 * 32 * 32)
    assert f["attention"] == 2 * (4 * 17 * 17 * 32)
    assert f["mlp"] == 2 * (2 * 17 * 2 * 32 * 64) and f["head"] == 0
    assert F.vision_flops(presets.get("siglip-tiny"))["head"] > 0
    assert F.vision_flops(vit, layers=1)["attention"] == f["attention"] / 2
    base = presets.get("llava-tiny")  # G=4, C=32, D_llm=32
    quecc = dataclasses.replace(base, compressor=CompressorConfig("quecc", 4, (1, 2)))
    c = F.compressor_flops(quecc)  # k = 2, P = 16, V = 4, Cm = 64
    assert c["text_proj"] == 2 * 32 * 32
    assert c["query_mlp"] == 2 * 16 * 2 * 32 * 32
    assert c["conv"] == 2 * 4 * 4 * 32
    assert c["kv_mlp"] == 2 * 2 * 16 * (64 * 32 + 32 * 32)
    assert c["attn_proj"] == 2 * 2 * 4 * 32 * 32 + 2 * 2 * 16 * 32 * 32
    assert c["attention"] == 4 * 4 * 4 * 32
    notext = dataclasses.replace(quecc, compressor=dataclasses.replace(
        quecc.compressor, use_text_query=False))
    assert F.compressor_flops(notext)["text_proj"] == 0
    assert F.vlm_flops(notext, 8)["text_query"] == 0
    text = F.vlm_flops(quecc, 8, question_tokens=5)["text_query"]
    assert text == F.llm_prefill_flops(base.llm, 5, 0, lm_head="none")["total"] > 0
    assert F.compressor_flops(base)["total"] == 0
    bad = dataclasses.replace(base, compressor=CompressorConfig("quecc", 9, (1, 2)))
    with pytest.raises(ValueError, match="num_tokens=9 must be h\\*h with h dividing the 4x4"):
        F.compressor_flops(bad)
    deep = dataclasses.replace(base, compressor=CompressorConfig("quecc", 4))  # layers 12..23
    with pytest.raises(ValueError, match="compressor.feature_layers: feature layer 12 out of"):
        F.vlm_flops(deep, 8)


def test_vlm_flops_components_sum_and_format():
    cfg = presets.llava("clip-l/14-336", "vicuna-7b", 64, "quecc")
    f = F.vlm_flops(cfg, 50)
    assert set(f) == {"vision", "compressor", "text_query", "projector", "llm_prefill",
                      "lm_head", "decode", "total"}
    assert f["total"] == pytest.approx(math.fsum(v for k, v in f.items() if k != "total"))
    # CLIP-L/14-336 up to the penultimate layer: 23 of 24 layers on 577 tokens, ~0.35 TFLOPs.
    assert F.vision_layers_needed(cfg) == 23
    assert f["vision"] == F.vision_flops(cfg.vision, layers=23, head=False)["total"]
    assert 0.3e12 < f["vision"] < 0.4e12
    text = F.format_flops(f)
    assert "llm_prefill" in text and "GFLOPs" in text and "100.0%" in text


def _xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


_LLM = LLMConfig(vocab_size=257, width=256, depth=2, heads=4, kv_heads=2, mlp_dim=512,
                 max_len=512)
_VIT = ViTConfig("clip", 64, 8, 192, 3, 4, 384)


def test_llm_and_vit_flops_match_xla_cost_analysis():
    """The matmul count is what XLA counts, up to the uncounted elementwise ops (~1%)."""
    m, n = build(_LLM), 96
    inp = dummy_inputs(_LLM, 1, n)
    params = jax.eval_shape(lambda: m.init(jax.random.key(0), **inp))
    xla = _xla_flops(lambda p, e, pos, v: m.apply(p, e, pos, v).logits, params, inp["embeds"],
                     inp["positions"], inp["valid"])
    assert xla == pytest.approx(F.llm_prefill_flops(_LLM, n, lm_head="all")["total"], rel=0.02)
    m = build(_VIT)
    img = dummy_inputs(_VIT)["images"]
    params = jax.eval_shape(lambda: m.init(jax.random.key(0), img))
    xla = _xla_flops(lambda p, x: m.apply(p, x).hidden_states[-1], params, img)
    assert xla == pytest.approx(F.vision_flops(_VIT)["total"], rel=0.02)


@pytest.mark.parametrize("comp", [CompressorConfig(),
                                  CompressorConfig("quecc", 16, (1, 2), heads=4),
                                  CompressorConfig("tokenpacker", 4, (1, 3), heads=4),
                                  CompressorConfig("resampler", 4, heads=4),
                                  CompressorConfig("avgpool", 4)])
def test_vlm_flops_match_xla_cost_analysis(comp):
    """Whole VLM forward (logits at every position), vision layers past the deepest one read
    dropped by XLA, the text query's LLM pass included for QueCC."""
    if comp.name not in compressors_lib.REGISTRY:
        pytest.skip(f"compressor {comp.name!r} not registered")
    cfg = VLMConfig(vision=_VIT, llm=_LLM, compressor=comp, image_token_id=256)
    m, q = build(cfg), 24
    inp = dummy_inputs(cfg, 1, q)
    params = jax.eval_shape(lambda: m.init(jax.random.key(0), **inp))
    xla = _xla_flops(lambda p, i: m.apply(p, **i), params, inp)
    f = F.vlm_flops(cfg, q, question_tokens=q)
    ours = f["total"] - f["lm_head"] + 2 * (q + cfg.num_visual_tokens) * 256 * 257
    assert xla == pytest.approx(ours, rel=0.04), f
