"""Bad input gets a clear error naming the key, tensor, file or shape at fault."""

import dataclasses
import json
import os
import re
import shutil

import hf_tiny
import jax.numpy as jnp
import numpy as np
import pytest
import transformers as tf
from safetensors.numpy import load_file, save_file

from vlm_jax import models
from vlm_jax.interop import hf


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("qwen"))
    return hf_tiny.make(hf_tiny.qwen2_text(), tf.Qwen2ForCausalLM, path)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("llava"))
    return hf_tiny.make(hf_tiny.llava(hf_tiny.clip_vision(), hf_tiny.qwen2_text()),
                        tf.LlavaForConditionalGeneration, path)


def _copy(src, tmp_path, name="copy"):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


def _edit_tensors(path, edit):
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_missing_tensor(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path)
    _edit_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
        hf.load(path)


def test_unexpected_tensor(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path)
    _edit_tensors(path, lambda t: t.update({"model.layers.0.self_attn.o_proj.bias":
                                            np.zeros(32, np.float32)}))
    with pytest.raises(ValueError, match=r"unexpected tensor.*o_proj\.bias.*model\.safetensors"):
        hf.load(path)


def test_shape_mismatch_names_tensor_and_shapes(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path)
    hf_tiny.edit_config(path, intermediate_size=48)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.down_proj\.weight' has shape "
                                         r"\[32, 64\] but config\.json implies \[32, 48\]"):
        hf.load(path)


@pytest.mark.parametrize("changes,match", [
    (dict(architectures=["MistralForCausalLM"], model_type="mistral"),
     "unsupported architecture.*MistralForCausalLM"),
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
     r"rope_parameters\.rope_type='linear'"),
    (dict(rope_parameters=None, rope_scaling={"type": "dynamic", "factor": 2.0}),
     r"rope_scaling\.rope_type='dynamic'"),
    (dict(use_sliding_window=True, sliding_window=4, max_window_layers=0,
          layer_types=["sliding_attention", "sliding_attention"]), "use_sliding_window"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
])
def test_unsupported_config_keys(qwen_dir, tmp_path, changes, match):
    path = _copy(qwen_dir, tmp_path)
    hf_tiny.edit_config(path, **changes)
    with pytest.raises(ValueError, match=match):
        hf.load(path)


@pytest.mark.parametrize("changes,match", [
    (dict(projector_hidden_act="relu"), "projector_hidden_act='relu'"),
    (dict(vision_feature_select_strategy="cls"), "vision_feature_select_strategy='cls'"),
])
def test_unsupported_llava_keys(llava_dir, tmp_path, changes, match):
    path = _copy(llava_dir, tmp_path)
    hf_tiny.edit_config(path, **changes)
    with pytest.raises(ValueError, match=match):
        hf.load(path)


def test_vision_activation_must_match_family(llava_dir, tmp_path):
    path = _copy(llava_dir, tmp_path)
    with open(os.path.join(path, "config.json")) as f:
        vision = json.load(f)["vision_config"]
    hf_tiny.edit_config(path, vision_config=dict(vision, hidden_act="gelu"))
    with pytest.raises(ValueError, match=r"vision_config: hidden_act='gelu'"):
        hf.load(path)


def test_no_weights_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors.*pytorch_model\.bin"):
        hf.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.load(str(tmp_path / "nowhere"))


def test_index_naming_a_missing_shard(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path)
    names = load_file(os.path.join(path, "model.safetensors")).keys()
    index = {"metadata": {}, "weight_map": {n: "model-00001-of-00002.safetensors" for n in names}}
    os.remove(os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    with pytest.raises(FileNotFoundError, match=r"model-00001-of-00002\.safetensors"):
        hf.load(path)


def test_placeholder_count_must_equal_visual_tokens():
    cfg = models.presets.get("llava-tiny")
    params = models.init_params(cfg)
    module = models.build(cfg)
    v = cfg.num_visual_tokens
    images = jnp.zeros((2, cfg.vision.image_size, cfg.vision.image_size, 3))
    good = np.concatenate([np.full((2, v), cfg.image_token_id), np.ones((2, 4))], 1)
    good = good.astype(np.int32)
    assert module.apply({"params": params}, images=images, tokens=good).shape[:2] == (2, v + 4)
    bad = good.copy()
    bad[1, 0] = 1  # row 1 has V - 1 placeholders
    with pytest.raises(ValueError, match=rf"prompt 1 holds {v - 1} image placeholder.*{v} visual"):
        module.apply({"params": params}, images=images, tokens=bad)


def test_save_rejects_what_transformers_cannot_hold(tmp_path):
    cfg = models.presets.get("llava-tiny")
    params = models.init_params(cfg)
    with pytest.raises(ValueError, match="compressor.name='avgpool'"):
        hf.save(dataclasses.replace(cfg, compressor=dataclasses.replace(
            cfg.compressor, name="avgpool", num_tokens=4)), params, str(tmp_path / "a"))
    with pytest.raises(ValueError, match="image_token_id=129 is outside the vocabulary"):
        hf.save(dataclasses.replace(cfg, image_token_id=129), params, str(tmp_path / "b"))
    broken = {**params, "multi_modal_projector": {"linear_1": params["multi_modal_projector"]
                                                  ["linear_1"]}}
    with pytest.raises(ValueError, match=r"missing \['multi_modal_projector/linear_2/bias'"):
        hf.save(cfg, broken, str(tmp_path / "c"))
    wrong = jax_tree_set(params, ("language_model", "norm", "weight"), np.ones(31, np.float32))
    with pytest.raises(ValueError, match=r"'language_model/norm/weight' has shape \[31\]"):
        hf.save(cfg, wrong, str(tmp_path / "d"))
    llama = dataclasses.replace(models.presets.get("llama-tiny"), qkv_bias=True)
    with pytest.raises(ValueError, match="attention_bias sets q/k/v and o biases together"):
        hf.save(llama, models.init_params(llama), str(tmp_path / "e"))


def jax_tree_set(tree, path, value):
    if not path:
        return value
    return {**tree, path[0]: jax_tree_set(tree[path[0]], path[1:], value)}


def test_original_llava_unsupported_projector(tmp_path):
    config = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
              "mm_projector_type": "linear", "mm_vision_tower": "openai/clip"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    clip = hf_tiny.make(hf_tiny.clip_vision(), tf.CLIPVisionModel, str(tmp_path / "clip"))
    save_file({"model.norm.weight": np.ones(4, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="mm_projector_type='linear'"):
        hf.load(str(tmp_path), vision_path=clip)
    hf_tiny.edit_config(str(tmp_path), mm_projector_type="mlp2x_gelu",
                        image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad")
    with pytest.raises(ValueError, match="mm_patch_merge_type='spatial_unpad'"):
        hf.load(str(tmp_path), vision_path=clip)


def test_truncated_safetensors_names_file_and_tensor(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path)
    file = os.path.join(path, "model.safetensors")
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) - 100)
    with pytest.raises(ValueError, match=r"model\.safetensors is truncated: tensor '.*' ends at "
                                         r"byte \d+, the file has \d+"):
        hf.load(path)
    with open(file, "r+b") as f:
        f.truncate(5)
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated or not a safetensors"):
        hf.load(path)


def test_truncated_shard_names_the_shard(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path)
    cfg, params = hf.load(path)
    sharded = str(tmp_path / "sharded")
    hf.save(cfg, params, sharded, max_shard_bytes=20_000)
    shards = sorted(f for f in os.listdir(sharded) if f.startswith("model-"))
    assert len(shards) > 1
    last = os.path.join(sharded, shards[-1])
    with open(last, "r+b") as f:
        f.truncate(os.path.getsize(last) - 8)
    with pytest.raises(ValueError, match=re.escape(shards[-1]) + " is truncated"):
        hf.load(sharded)


def test_header_offsets_that_disagree_with_the_shape_name_the_tensor(qwen_dir, tmp_path):
    """A header whose data_offsets hold fewer bytes than the tensor's shape (before: the
    first tensor read was blamed, or numpy's 'cannot reshape array of size 14')."""
    path = _copy(qwen_dir, tmp_path)
    file = os.path.join(path, "model.safetensors")
    raw = open(file, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    name = "model.layers.1.input_layernorm.weight"
    header[name]["data_offsets"][1] -= 8
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    open(file, "wb").write(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor '" + re.escape(name)
                       + r"' is F32\[\d+\] \(\d+ bytes\) but its header's data_offsets span"):
        hf.load(path)


def test_bad_config_json_names_the_file(qwen_dir, tmp_path):
    path = _copy(qwen_dir, tmp_path)
    with open(os.path.join(path, "config.json"), "a") as f:
        f.write("}")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        hf.load(path)


@pytest.mark.parametrize("value, match", [
    (np.float32("nan"), r"non-finite value\(s\)"),
    (None, r"is I32: weights must be floating point")])
def test_nan_or_integer_weights_are_rejected(qwen_dir, tmp_path, value, match):
    path = _copy(qwen_dir, tmp_path)
    name = "model.layers.0.mlp.up_proj.weight"

    def edit(t):
        if value is None:
            t[name] = t[name].astype(np.int32)
        else:
            t[name][0, 0] = value
    _edit_tensors(path, edit)
    with pytest.raises(ValueError, match=re.escape(name) + ".*model\\.safetensors.*" + match):
        hf.load(path)
