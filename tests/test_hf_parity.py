"""Numerical parity with transformers: checkpoints saved by transformers, loaded by hf.load."""

import dataclasses

import hf_tiny
import jax
import numpy as np
import pytest
import transformers as tf

from vlm_jax import models
from vlm_jax.interop import check_logits, hf
from vlm_jax.models.config import LLMConfig, ViTConfig, VLMConfig

LLAVA_CASES = {
    # vision, text (GQA, tied), default strategy, penultimate layer; padded batch.
    "clip_qwen2_gqa_tied": (hf_tiny.clip_vision(), hf_tiny.qwen2_text(tie_word_embeddings=True),
                            dict(vision_feature_select_strategy="default",
                                 vision_feature_layer=-2)),
    # MHA, untied, all Llama biases, full strategy, a list of layers.
    "clip_llama_mha_list": (hf_tiny.clip_vision(),
                            hf_tiny.llama_text(attention_bias=True, mlp_bias=True),
                            dict(vision_feature_select_strategy="full",
                                 vision_feature_layer=[-3, -1])),
    # SigLIP (with its pooling head) + untied Qwen2, last layer, all tokens.
    "siglip_qwen2": (hf_tiny.siglip_vision(), hf_tiny.qwen2_text(),
                     dict(vision_feature_select_strategy="full", vision_feature_layer=-1)),
    # SigLIP without head + Llama with a custom head_dim and rope theta, no projector bias.
    "siglip_llama_headdim": (
        hf_tiny.siglip_vision(vision_use_head=False),
        hf_tiny.llama_text(head_dim=16, num_key_value_heads=2,
                           rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
        dict(vision_feature_select_strategy="default", vision_feature_layer=[0, 2],
             multimodal_projector_bias=False)),
}


@pytest.mark.parametrize("case", sorted(LLAVA_CASES))
def test_llava_logits_match_transformers(case, tmp_path):
    vision, text, extra = LLAVA_CASES[case]
    path = hf_tiny.make(hf_tiny.llava(vision, text, **extra), tf.LlavaForConditionalGeneration,
                        str(tmp_path))
    cfg, params = hf.load(path)
    assert isinstance(cfg, VLMConfig)
    assert cfg.llm.tie_embeddings == bool(text.tie_word_embeddings)
    layer = extra["vision_feature_layer"]
    assert cfg.vision_feature_layer == (layer if isinstance(layer, int) else tuple(layer))
    shapes = jax.tree_util.tree_map(np.shape, models.init_params(cfg))
    assert jax.tree_util.tree_map(np.shape, params) == shapes
    # Left-padded batch with an attention mask and explicit positions, valid positions compared.
    hf_tiny.parity(path, cfg, params, batch=2, pad=3)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_llm_logits_match_transformers(family, tmp_path):
    if family == "llama":
        config = hf_tiny.llama_text(num_key_value_heads=2, attention_bias=True, mlp_bias=True,
                                    rope_parameters={"rope_type": "default", "rope_theta": 5e5},
                                    rms_norm_eps=1e-5)
        cls = tf.LlamaForCausalLM
    else:
        config = hf_tiny.qwen2_text(num_key_value_heads=4, tie_word_embeddings=True)
        cls = tf.Qwen2ForCausalLM
    path = hf_tiny.make(config, cls, str(tmp_path))
    cfg, params = hf.load(path)
    assert isinstance(cfg, LLMConfig) and cfg.family == family
    assert cfg.norm_eps == config.rms_norm_eps
    assert cfg.rope_theta == config.rope_parameters["rope_theta"]
    hf_tiny.parity(path, cfg, params, batch=3, pad=2)


VISION_CASES = {
    "clip": (hf_tiny.clip_vision(), tf.CLIPVisionModel),
    "siglip_head": (hf_tiny.siglip_vision(), tf.SiglipVisionModel),
    "siglip_no_head": (hf_tiny.siglip_vision(vision_use_head=False), tf.SiglipVisionModel),
}


@pytest.mark.parametrize("case", sorted(VISION_CASES))
def test_vision_hidden_states_match_transformers(case, tmp_path):
    config, cls = VISION_CASES[case]
    path = hf_tiny.make(config, cls, str(tmp_path))
    cfg, params = hf.load(path)
    assert isinstance(cfg, ViTConfig) and cfg.use_head == (case == "siglip_head")
    report = hf_tiny.parity(path, cfg, params, batch=2)
    assert report["max_abs_diff"] < 1e-4


def test_full_clip_model_gives_its_vision_tower(tmp_path):
    config = tf.CLIPConfig(vision_config=hf_tiny.clip_vision().to_dict(),
                           text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32,
                                            num_hidden_layers=1, num_attention_heads=2,
                                            max_position_embeddings=16))
    path = hf_tiny.make(config, tf.CLIPModel, str(tmp_path / "clip"))
    cfg, params = hf.load(path)
    assert cfg == ViTConfig("clip", 32, 8, 32, 3, 4, 64, 1e-5)
    # The reference: transformers' CLIPVisionModel read from the same full-model directory.
    hf_tiny.parity(path, cfg, params, batch=1)


def test_vision_feature_layer_override_changes_logits(tmp_path):
    """The parsed layer really drives the output (not a constant that happens to match)."""
    path = hf_tiny.make(hf_tiny.llava(hf_tiny.clip_vision(), hf_tiny.qwen2_text()),
                        tf.LlavaForConditionalGeneration, str(tmp_path))
    cfg, params = hf.load(path)
    inputs = check_logits.make_inputs(cfg)
    base = check_logits.run_vlm_jax(cfg, params, inputs)["logits"]
    other = check_logits.run_vlm_jax(dataclasses.replace(cfg, vision_feature_layer=-1), params,
                                     inputs)["logits"]
    assert np.abs(base - other).max() > 1e-2
