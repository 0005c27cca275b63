"""Original-LLaVA / QueCC-fork checkpoints: load, save in both formats, logits, round trips.

The fork (locuslab/llava-token-compression) cannot be installed here, so its checkpoints are
built the way its code writes them: `model.*` / `lm_head` for the LLM, `model.mm_projector`
an `nn.Sequential(QueCC, Linear, GELU, Linear)`, config.json with its `mm_*` keys, the tower
in its own transformers CLIP directory (`mm_vision_tower`). The reference forward pass is
transformers' Llama / Qwen2 + CLIPVisionModel and the torch QueCC of test_quecc_interop,
assembled as the fork's `prepare_inputs_labels_for_multimodal` does (image features spliced
at a -200 marker, text query = the LLM's last hidden state on the question).
"""

import dataclasses
import json
import math
import os

import hf_tiny
import jax
import numpy as np
import pytest
import torch
import transformers as tf
from safetensors.numpy import load_file, save_file
from test_quecc_interop import TorchQueCC
from torch import nn as tnn

from vlm_jax.interop import check_logits, hf

MARKER = -200  # the original LLaVA code's image position
GRID, KERNEL, C, DEPTH, LAYERS = 4, 2, 16, 24, (12, 16, 22, 23)


def _tower(path: str) -> str:
    cfg = hf_tiny.clip_vision(hidden_size=C, num_attention_heads=2, intermediate_size=32,
                              num_hidden_layers=DEPTH)
    return hf_tiny.make(cfg, tf.CLIPVisionModel, path, seed=1)


def _llm(family: str) -> tnn.Module:
    text = hf_tiny.llama_text() if family == "llama" else hf_tiny.qwen2_text()
    cls = tf.LlamaForCausalLM if family == "llama" else tf.Qwen2ForCausalLM
    return hf_tiny.randomize(cls(text), seed=2)


def _fork_config(llm_cfg, family: str, tower: str, **over) -> dict:
    """config.json as the fork's train.py writes it (transformers 4.x spelling)."""
    arch = {"llama": ("LlavaLlamaForCausalLM", "llava_llama"),
            "qwen2": ("LlavaQwenForCausalLM", "llava_qwen")}[family]
    d = {"architectures": [arch[0]], "model_type": arch[1], "vocab_size": llm_cfg.vocab_size,
         "hidden_size": llm_cfg.hidden_size, "intermediate_size": llm_cfg.intermediate_size,
         "num_hidden_layers": llm_cfg.num_hidden_layers,
         "num_attention_heads": llm_cfg.num_attention_heads,
         "num_key_value_heads": llm_cfg.num_key_value_heads, "rms_norm_eps": llm_cfg.rms_norm_eps,
         "max_position_embeddings": 4096, "hidden_act": "silu", "tie_word_embeddings": False,
         "rope_theta": llm_cfg.rope_parameters["rope_theta"], "rope_scaling": None,
         "torch_dtype": "float32", "use_cache": True,
         "mm_vision_tower": tower, "use_mm_proj": True, "mm_projector_type": "mlp2x_gelu",
         "mm_hidden_size": C, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
         "mm_patch_merge_type": "flat", "image_aspect_ratio": "pad",
         "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
         "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False,
         "tokenizer_padding_side": "right", "tokenizer_model_max_length": 2048,
         "mm_vision_token_compression_type": "quecc", "mm_vision_output_token_count": GRID ** 2,
         "mm_vision_output_text_embedding_size": llm_cfg.hidden_size,
         "mm_vision_output_combined_token_count": None,
         "mm_vision_token_compression_kernel_size": KERNEL,
         "mm_vision_token_compression_stride": KERNEL}
    d.update(over)
    return d


def make_fork_checkpoint(root: str, family: str) -> str:
    """A tiny random QueCC-fork checkpoint in `root/ckpt`, its tower in `root/clip`."""
    tower = _tower(os.path.join(root, "clip"))
    llm = _llm(family)
    width = llm.config.hidden_size
    torch.manual_seed(3)
    quecc = TorchQueCC(C, C * len(LAYERS), width, GRID, KERNEL, heads=8, text=True)
    projector = hf_tiny.randomize(
        tnn.Sequential(quecc, tnn.Linear(C, width), tnn.GELU(), tnn.Linear(width, width)), 4)
    with torch.no_grad():  # a text query as large as the (deep, random) tower's features
        quecc.text_projection[1].weight.mul_(30.0)
    state = {k: v.detach().numpy().copy() for k, v in llm.state_dict().items()}
    state.update({f"model.mm_projector.{k}": v.detach().numpy().copy()
                  for k, v in projector.state_dict().items()})
    path = os.path.join(root, "ckpt")
    os.makedirs(path)
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(_fork_config(llm.config, family, tower), f)
    return path


class ForkReference:
    """The fork's forward pass on a checkpoint directory, in torch (float32, eager)."""

    def __init__(self, path: str):
        with open(os.path.join(path, "config.json")) as f:
            d = json.load(f)
        state = {k: torch.from_numpy(v) for k, v in
                 load_file(os.path.join(path, "model.safetensors")).items()}
        family = "qwen2" if "qwen" in d["model_type"] else "llama"
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta",
                "max_position_embeddings", "tie_word_embeddings")
        cfg_cls = tf.LlamaConfig if family == "llama" else tf.Qwen2Config
        model_cls = tf.LlamaForCausalLM if family == "llama" else tf.Qwen2ForCausalLM
        self.llm = model_cls(cfg_cls(**{k: d[k] for k in keys})).eval()
        self.llm.load_state_dict({k: v for k, v in state.items()
                                  if not k.startswith("model.mm_projector.")}, strict=True)
        self.tower = tf.CLIPVisionModel.from_pretrained(d["mm_vision_tower"]).eval()
        grid, k = int(math.isqrt(d["mm_vision_output_token_count"])), \
            d["mm_vision_token_compression_kernel_size"]
        c, width = d["mm_hidden_size"], d["hidden_size"]
        quecc = TorchQueCC(c, state["model.mm_projector.0.k_proj.0.weight"].shape[1],
                           d["mm_vision_output_text_embedding_size"], grid, k, heads=8)
        self.projector = tnn.Sequential(quecc, tnn.Linear(c, width), tnn.GELU(),
                                        tnn.Linear(width, width)).eval()
        self.projector.load_state_dict({k[len("model.mm_projector."):]: v for k, v in
                                        state.items() if k.startswith("model.mm_projector.")},
                                       strict=True)
        self.layers = d.get("mm_vision_token_compression_feature_layers") or LAYERS
        self.select = d["mm_vision_select_layer"]

    @torch.no_grad()
    def logits(self, images: np.ndarray, ids: list[int], question: list[int]) -> np.ndarray:
        """images [1, H, W, 3] NHWC; ids hold one MARKER; question: the query's token ids."""
        hs = self.tower(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                        output_hidden_states=True).hidden_states
        x = hs[self.select][:, 1:]
        x_multi = torch.cat([hs[i] for i in self.layers], dim=2)[:, 1:]
        q = torch.tensor([question])
        text = self.llm(input_ids=q, output_hidden_states=True).hidden_states[-1][:, -1]
        quecc, *mlp = self.projector
        feats = quecc(x, x_multi, text)
        for layer in mlp:
            feats = layer(feats)
        at = ids.index(MARKER)
        embed = self.llm.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor([ids[:at]])), feats,
                            embed(torch.tensor([ids[at + 1:]]))], dim=1)
        return self.llm(inputs_embeds=embeds).logits.numpy()


def _inputs(cfg, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((1, cfg.vision.image_size, cfg.vision.image_size, 3))
    text = rng.integers(3, cfg.llm.vocab_size - 1, 9).tolist()
    ids = [1, *text[:2], MARKER, *text[2:]]
    question = [1, *text[4:8]]
    return images.astype(np.float32), ids, question


def ours_logits(cfg, params, images, ids, question) -> np.ndarray:
    v = cfg.num_visual_tokens
    at = ids.index(MARKER)
    tokens = np.asarray([ids[:at] + [cfg.image_token_id] * v + ids[at + 1:]], np.int32)
    inputs = {"images": images, "tokens": tokens, "valid": np.ones(tokens.shape, bool),
              "positions": np.arange(tokens.shape[1], dtype=np.int32)[None],
              "question": np.asarray([question], np.int32),
              "question_valid": np.ones((1, len(question)), bool)}
    return check_logits.run_vlm_jax(cfg, params, inputs)["logits"]


def _max_diff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(b).max() > 0.5  # the reference is not degenerate
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def fork(request, tmp_path_factory):
    root = str(tmp_path_factory.mktemp(f"fork_{request.param}"))
    return request.param, make_fork_checkpoint(root, request.param)


def test_fork_checkpoint_loads_as_quecc_with_the_fork_logits(fork):
    family, path = fork
    cfg, params = hf.load(path)  # the tower comes from mm_vision_tower (a local directory)
    comp = cfg.compressor
    assert (comp.name, comp.num_tokens, comp.feature_layers, comp.heads, comp.norm_eps,
            comp.use_text_query) == ("quecc", (GRID // KERNEL) ** 2, LAYERS, 8, 1e-6, True)
    assert cfg.llm.family == family and cfg.vision.width == C
    images, ids, question = _inputs(cfg)
    ref = ForkReference(path).logits(images, ids, question)
    diff = _max_diff(ours_logits(cfg, params, images, ids, question), ref)
    print(f"\n[{family}] max|diff| logits after import: {diff:.2e}")
    assert diff < 1e-4
    # The text query matters: another question moves the logits far beyond that difference.
    other = ours_logits(cfg, params, images, ids, [1, 5, 6])
    assert np.abs(other - ref).max() > max(50 * diff, 1e-4)


def test_fork_checkpoint_save_both_formats_and_round_trip(fork, tmp_path):
    family, path = fork
    cfg, params = hf.load(path)
    out = str(tmp_path / "export")
    hf.save(cfg, params, out, format="llava_original")
    with open(os.path.join(path, "config.json")) as f:
        want = json.load(f)
    with open(os.path.join(out, "config.json")) as f:
        got = json.load(f)
    fork_keys = [k for k in want if k.startswith("mm_")] + ["architectures", "model_type",
                                                            "rope_theta", "hidden_size"]
    assert {k: got.get(k) for k in fork_keys} == {k: want[k] for k in fork_keys}
    stored, written = load_file(os.path.join(path, "model.safetensors")), \
        load_file(os.path.join(out, "model.safetensors"))
    assert sorted(written) == sorted(stored)  # exactly the fork's tensor names, no tower
    for key in stored:
        np.testing.assert_array_equal(written[key], stored[key], err_msg=key)
    cfg2, params2 = hf.load(out)
    assert cfg2 == cfg
    hf_tiny.tree_equal(params2, params)
    images, ids, question = _inputs(cfg, seed=1)
    diff = _max_diff(ours_logits(cfg, params, images, ids, question),
                     ForkReference(out).logits(images, ids, question))
    print(f"\n[{family}] max|diff| logits after export: {diff:.2e}")
    assert diff < 1e-4
    # transformers' LLaVA has no compressor: format="hf" refuses, naming it.
    with pytest.raises(ValueError, match="compressor.name='quecc'"):
        hf.save(cfg, params, str(tmp_path / "hf"), format="hf")


def test_export_writes_the_tower_beside_it_on_request(fork, tmp_path):
    family, path = fork
    cfg, params = hf.load(path)
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text("{}")
    (tok_dir / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    out = str(tmp_path / "export")
    hf.save(cfg, params, out, format="llava_original", write_tower=True, tokenizer=str(tok_dir))
    with open(os.path.join(out, "config.json")) as f:
        tower = json.load(f)["mm_vision_tower"]
    assert tower == os.path.abspath(os.path.join(out, "vision_tower"))
    assert os.path.isfile(os.path.join(tower, "preprocessor_config.json"))
    tf.CLIPImageProcessor.from_pretrained(tower)  # what the fork opens next to the weights
    assert sorted(n for n in os.listdir(out) if n.startswith("tokenizer")) == [
        "tokenizer.json", "tokenizer_config.json"]
    cfg2, params2 = hf.load(out)
    assert cfg2 == cfg
    hf_tiny.tree_equal(params2, params)
    images, ids, question = _inputs(cfg, seed=2)
    diff = _max_diff(ours_logits(cfg, params, images, ids, question),
                     ForkReference(out).logits(images, ids, question))
    assert diff < 1e-4
    # A tower whose origin is unknown (e.g. new arrays) needs one of the two options.
    fresh = {**params, "vision_tower": jax.tree.map(np.copy, params["vision_tower"])}
    with pytest.raises(ValueError, match="vision_tower=DIR_OR_HUB_NAME or write_tower=True"):
        hf.save(cfg, fresh, str(tmp_path / "x"), format="llava_original")
    with pytest.raises(ValueError, match="format='torch'"):
        hf.save(cfg, params, str(tmp_path / "y"), format="torch")


@pytest.mark.parametrize("change,match", [
    (dict(mm_vision_token_compression_type="tokenpacker"),
     "mm_vision_token_compression_type='tokenpacker' is not supported"),
    (dict(mm_vision_token_compression_stride=1),
     "mm_vision_token_compression_stride=1 differs from "
     "mm_vision_token_compression_kernel_size=2"),
    (dict(mm_hidden_size=24), r"mm_hidden_size=24 but the vision tower's width \(hidden_size\) "
                              "is 16"),
    (dict(mm_vision_output_text_embedding_size=4096),
     "mm_vision_output_text_embedding_size=4096 but the LLM's hidden_size is 32"),
    (dict(mm_vision_output_token_count=576),
     "mm_vision_output_token_count=576 but the vision tower gives 16 patches"),
    (dict(mm_vision_token_compression_kernel_size=3, mm_vision_token_compression_stride=3),
     "mm_vision_token_compression_kernel_size=3 does not divide the 4x4 patch grid"),
])
def test_fork_config_errors_name_the_key(tmp_path, change, match):
    path = make_fork_checkpoint(str(tmp_path), "llama")
    hf_tiny.edit_config(path, **change)
    with pytest.raises(ValueError, match=match):
        hf.load(path)


def test_llava_hf_checkpoint_both_formats(tmp_path):
    """A transformers LLaVA loads, saves as HF and as original LLaVA, and reads back equal."""
    src = str(tmp_path / "llava")
    hf_tiny.make(hf_tiny.llava(hf_tiny.clip_vision(), hf_tiny.llama_text()),
                 tf.LlavaForConditionalGeneration, src)
    cfg, params = hf.load(src)
    as_hf = str(tmp_path / "as_hf")
    hf.save(cfg, params, as_hf)  # format="hf" is the default
    cfg_hf, params_hf = hf.load(as_hf)
    assert cfg_hf == cfg
    hf_tiny.tree_equal(params_hf, params)
    as_orig = str(tmp_path / "as_original")
    hf.save(cfg, params, as_orig, format="llava_original", write_tower=True)
    with open(os.path.join(as_orig, "config.json")) as f:
        d = json.load(f)
    assert d["mm_vision_token_compression_type"] is None
    assert d["image_token_index"] == cfg.image_token_id
    assert not any("vision_tower" in k for k in load_file(os.path.join(as_orig,
                                                                       "model.safetensors")))
    cfg_o, params_o = hf.load(as_orig)
    assert cfg_o == cfg
    hf_tiny.tree_equal(params_o, params)
    inputs = check_logits.make_inputs(cfg, batch=2, pad=2)
    report = check_logits.compare(check_logits.run_vlm_jax(cfg_o, params_o, inputs),
                                  check_logits.run_transformers(src, inputs), inputs["valid"])
    print(f"\nllava-hf -> original -> vlm_jax vs transformers: {report}")
    assert check_logits.within(report, 1e-4, 1e-6), report
    # ...and back to HF from the original layout, identical to the first HF export.
    back = str(tmp_path / "back")
    hf.save(cfg_o, params_o, back)
    a, b = load_file(os.path.join(as_hf, "model.safetensors")), \
        load_file(os.path.join(back, "model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_identity_original_export_keeps_a_hub_tower_in_the_checkpoint(tmp_path):
    """A tower recorded by Hub name is written into the checkpoint, so the export reads back
    offline; the placeholder id one past the vocabulary is not recorded (it is the default)."""
    src = str(tmp_path / "llava")
    hf_tiny.make(hf_tiny.llava(hf_tiny.clip_vision(), hf_tiny.qwen2_text()),
                 tf.LlavaForConditionalGeneration, src)
    cfg, params = hf.load(src)
    cfg = dataclasses.replace(cfg, image_token_id=cfg.llm.vocab_size)
    out = str(tmp_path / "orig")
    hf.save(cfg, params, out, format="llava_original",
            vision_tower="openai/clip-vit-large-patch14-336")
    with open(os.path.join(out, "config.json")) as f:
        d = json.load(f)
    assert "image_token_index" not in d and d["architectures"] == ["LlavaQwenForCausalLM"]
    names = load_file(os.path.join(out, "model.safetensors"))
    assert "model.vision_tower.vision_tower.vision_model.post_layernorm.weight" in names
    assert "model.mm_projector.2.weight" in names and "model.mm_projector.3.weight" not in names
    vision_dir = str(tmp_path / "clip")
    hf.save(cfg.vision, params["vision_tower"], vision_dir)
    cfg2, params2 = hf.load(out, vision_path=vision_dir)
    assert cfg2 == cfg
    hf_tiny.tree_equal(params2, params)


def test_original_export_refuses_what_the_fork_cannot_hold(fork, tmp_path):
    _, path = fork
    cfg, params = hf.load(path)
    for change, match in ((dict(heads=4), "compressor.heads=4: the QueCC fork fixes it to 8"),
                          (dict(norm_eps=1e-5), "compressor.norm_eps=1e-05")):
        bad = dataclasses.replace(cfg, compressor=dataclasses.replace(cfg.compressor, **change))
        with pytest.raises(ValueError, match=match):
            hf.save(bad, params, str(tmp_path / "x"), format="llava_original")
    with pytest.raises(ValueError, match="format='llava_original' saves VLMs"):
        hf.save(cfg.llm, params["language_model"], str(tmp_path / "y"), format="llava_original")
