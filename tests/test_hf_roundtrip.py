"""hf.save -> transformers, other on-disk layouts (legacy llava-hf, transformers runtime names,
original LLaVA), sharded and half-precision files."""

import dataclasses
import json
import os

import hf_tiny
import numpy as np
import pytest
import torch
import transformers as tf
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from vlm_jax import models
from vlm_jax.interop import check_logits, hf
from vlm_jax.models.config import LLMConfig, ViTConfig, VLMConfig


def big_random(params, seed=0):
    """Random params large enough that the outputs are far from trivial (see hf_tiny.randomize)."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(params, sep="/")
    out = {}
    for name, v in flat.items():
        shape = np.shape(v)
        noise = rng.standard_normal(shape).astype(np.float32)
        if len(shape) >= 2:
            out[name] = noise * 1.5 / np.sqrt(np.prod(shape[:-1]))
        elif name.endswith(("scale", "norm/weight", "layernorm/weight")):
            out[name] = 1.0 + 0.2 * noise
        else:
            out[name] = 0.2 * noise
        out[name] = out[name].astype(np.float32)
    return traverse_util.unflatten_dict(out, sep="/")


SIGLIP_LLAMA = VLMConfig(
    vision=ViTConfig("siglip", 32, 8, 32, 3, 4, 64, 1e-6, use_head=True),
    llm=LLMConfig(family="llama", vocab_size=100, width=48, depth=2, heads=4, kv_heads=2,
                  mlp_dim=96, head_dim=16, rope_theta=1e5, norm_eps=1e-5, max_len=256),
    vision_feature_layer=(-3, -1), vision_feature_select="full", image_token_id=7)

ROUND_TRIPS = {
    "llava_tiny_preset": models.presets.get("llava-tiny"),
    "llava_siglip_llama": SIGLIP_LLAMA,
    "llama_tiny": models.presets.get("llama-tiny"),
    "qwen2_tiny": models.presets.get("qwen2-tiny"),
    "clip_tiny": models.presets.get("clip-tiny"),
    "siglip_tiny": models.presets.get("siglip-tiny"),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_save_loads_in_transformers_with_same_outputs(case, tmp_path):
    cfg = ROUND_TRIPS[case]
    params = big_random(models.init_params(cfg), seed=1)
    path = str(tmp_path / case)
    hf.save(cfg, params, path)
    assert os.path.exists(os.path.join(path, "model.safetensors"))
    hf_tiny.parity(path, cfg, params, batch=2, pad=2 if not isinstance(cfg, ViTConfig) else 0)
    cfg2, params2 = hf.load(path)
    assert cfg2 == cfg
    hf_tiny.tree_equal(params2, params)


def test_sharded_save_and_load(tmp_path):
    cfg = SIGLIP_LLAMA
    params = big_random(models.init_params(cfg), seed=2)
    path = str(tmp_path / "sharded")
    hf.save(cfg, params, path, max_shard_bytes=40_000)
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        index = json.load(f)
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and not os.path.exists(os.path.join(path, "model.safetensors"))
    assert all(os.path.exists(os.path.join(path, f)) for f in files)
    hf_tiny.parity(path, cfg, params)  # transformers reads the index too
    cfg2, params2 = hf.load(path)
    assert cfg2 == cfg
    hf_tiny.tree_equal(params2, params)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("llava"))
    config = hf_tiny.llava(hf_tiny.clip_vision(), hf_tiny.llama_text())
    return hf_tiny.make(config, tf.LlavaForConditionalGeneration, path)


def _rewrite(src: str, dst: str, rename, config=None) -> str:
    os.makedirs(dst, exist_ok=True)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    save_file({rename(k): v for k, v in tensors.items()}, os.path.join(dst, "model.safetensors"),
              metadata={"format": "pt"})
    if config is None:
        with open(os.path.join(src, "config.json")) as f:
            config = json.load(f)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return dst


def _hub_legacy(k):  # llava-hf checkpoints as published: CLIPVisionModel's `vision_model.`
    return k.replace("vision_tower.", "vision_tower.vision_model.", 1)


def _runtime(k):  # transformers 5 module names (LlavaForConditionalGeneration.state_dict())
    if k.startswith("language_model.lm_head."):
        return k[len("language_model."):]
    if k.startswith("language_model.model."):
        return "model.language_model." + k[len("language_model.model."):]
    return "model." + k


@pytest.mark.parametrize("rename", [_hub_legacy, _runtime], ids=["hub_legacy", "runtime"])
def test_other_llava_key_layouts_load_the_same(llava_dir, tmp_path, rename):
    cfg, params = hf.load(llava_dir)
    other = _rewrite(llava_dir, str(tmp_path / "other"), rename)
    keys = load_file(os.path.join(other, "model.safetensors")).keys()
    assert any(k.startswith(("vision_tower.vision_model.", "model.language_model.")) for k in keys)
    cfg2, params2 = hf.load(other)
    assert cfg2 == cfg
    hf_tiny.tree_equal(params2, params)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_files_load_exactly(tmp_path, dtype):
    torch.manual_seed(0)
    model = hf_tiny.randomize(tf.Qwen2ForCausalLM(hf_tiny.qwen2_text()))
    model.to(getattr(torch, dtype)).save_pretrained(str(tmp_path))
    cfg, params = hf.load(str(tmp_path))
    ref = model.model.layers[1].self_attn.k_proj.weight.detach().float().numpy()
    got = params["layers_1"]["self_attn"]["k_proj"]["kernel"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref.T)
    np.testing.assert_array_equal(params["embed_tokens"]["embedding"],
                                  model.model.embed_tokens.weight.detach().float().numpy())


# ---- original LLaVA repository layout --------------------------------------------------------

def _original_name(k: str, with_tower: bool) -> str | None:
    if k.startswith("language_model.model."):
        return "model." + k[len("language_model.model."):]
    if k.startswith("language_model.lm_head."):
        return k[len("language_model."):]
    if k.startswith("multi_modal_projector.linear_"):
        idx = {"1": "0", "2": "2"}[k[len("multi_modal_projector.linear_")]]
        return f"model.mm_projector.{idx}." + k.split(".", 2)[2]
    assert k.startswith("vision_tower."), k
    return ("model.vision_tower.vision_tower.vision_model." + k[len("vision_tower."):]
            if with_tower else None)


def _original_config(model, arch: str, model_type: str) -> dict:
    t = model.config.text_config
    return {
        "architectures": [arch], "model_type": model_type, "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads, "rms_norm_eps": t.rms_norm_eps,
        "max_position_embeddings": 4096, "hidden_act": "silu", "tie_word_embeddings": False,
        "rope_theta": t.rope_parameters["rope_theta"], "rope_scaling": None,  # 4.x spelling
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_hidden_size": model.config.vision_config.hidden_size, "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False, "image_aspect_ratio": "pad", "mm_patch_merge_type": "flat",
    }


@pytest.mark.parametrize("family,with_tower", [("llama", True), ("qwen2", False)])
def test_original_llava_layout_matches_transformers(tmp_path, family, with_tower):
    # head dim 64 so the tower's head count can be inferred from the checkpoint alone
    vision = hf_tiny.clip_vision(hidden_size=64, num_attention_heads=1 if with_tower else 4)
    text = hf_tiny.llama_text() if family == "llama" else hf_tiny.qwen2_text()
    hf_dir = str(tmp_path / "hf")
    hf_tiny.make(hf_tiny.llava(vision, text), tf.LlavaForConditionalGeneration, hf_dir)
    model = tf.LlavaForConditionalGeneration.from_pretrained(hf_dir)
    arch = {"llama": ("LlavaLlamaForCausalLM", "llava_llama"),
            "qwen2": ("LlavaQwenForCausalLM", "llava_qwen")}[family]
    orig = str(tmp_path / "original")
    tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
    renamed = {_original_name(k, with_tower): v for k, v in tensors.items()}
    renamed.pop(None, None)
    os.makedirs(orig)
    save_file(renamed, os.path.join(orig, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(orig, "config.json"), "w") as f:
        json.dump(_original_config(model, *arch), f)
    vision_path = None
    if not with_tower:
        vision_path = str(tmp_path / "clip")
        model.model.vision_tower.save_pretrained(vision_path)
        with pytest.raises(ValueError, match="vision_path"):
            hf.load(orig)
    cfg, params = hf.load(orig, vision_path=vision_path)  # detected as original LLaVA
    assert cfg.image_token_id == text.vocab_size  # one past the table, like the -200 marker
    assert cfg.vision == hf.load(hf_dir)[0].vision

    # Same logits as transformers' LLaVA, whose placeholder is vocab - 1.
    ref_cfg = dataclasses.replace(cfg, image_token_id=text.vocab_size - 1)
    ref_inputs = check_logits.make_inputs(ref_cfg, batch=2, pad=2)
    inputs = dict(ref_inputs, tokens=np.where(ref_inputs["tokens"] == text.vocab_size - 1,
                                              text.vocab_size, ref_inputs["tokens"]))
    ours = check_logits.run_vlm_jax(cfg, params, inputs)
    ref = check_logits.run_transformers(hf_dir, ref_inputs)
    report = check_logits.compare(ours, ref, inputs["valid"])
    assert check_logits.within(report, 1e-4, 1e-6), report

    # Growing the vocabulary for the placeholder makes it saveable as a transformers LLaVA.
    with pytest.raises(ValueError, match="image_token_id"):
        hf.save(cfg, params, str(tmp_path / "nope"))
    cfg2, params2 = hf.add_image_token(cfg, params)
    assert cfg2.image_token_id == text.vocab_size and cfg2.llm.vocab_size == text.vocab_size + 1
    grown = check_logits.run_vlm_jax(cfg2, params2, inputs)["logits"]
    np.testing.assert_allclose(grown[..., :-1], ours["logits"], atol=1e-5)
    out = str(tmp_path / "converted")
    hf.save(cfg2, params2, out)
    hf_tiny.parity(out, cfg2, params2, inputs=inputs)
