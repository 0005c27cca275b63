"""Tiny random transformers models for the interop tests (CPU torch, nothing downloaded)."""

from __future__ import annotations

import json
import math
import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on the Hub

import torch  # noqa: E402
import transformers as tf  # noqa: E402

from vlm_jax.interop import check_logits  # noqa: E402

VOCAB = 128


def clip_vision(**kw) -> tf.CLIPVisionConfig:
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                image_size=32, patch_size=8)
    return tf.CLIPVisionConfig(**{**base, **kw})


def siglip_vision(**kw) -> tf.SiglipVisionConfig:
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                image_size=32, patch_size=8)
    return tf.SiglipVisionConfig(**{**base, **kw})


def qwen2_text(**kw) -> tf.Qwen2Config:
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    return tf.Qwen2Config(**{**base, **kw})


def llama_text(**kw) -> tf.LlamaConfig:
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4)
    return tf.LlamaConfig(**{**base, **kw})


def llava(vision, text, **kw) -> tf.LlavaConfig:
    return tf.LlavaConfig(vision_config=vision, text_config=text,
                          image_token_index=text.vocab_size - 1, **kw)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights big enough that attention is peaked and every parameter shows in the output:
    matrices N(0, 1.5 / sqrt(fan_in)), norm scales 1 + N(0, 0.2), other vectors N(0, 0.2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2:
                p.copy_(noise * 1.5 / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)
    return model.eval()


def make(config, cls, path: str, seed: int = 0) -> str:
    """Builds `cls(config)` with random weights and saves it to `path`."""
    torch.manual_seed(seed)
    model = randomize(cls(config), seed)
    model.save_pretrained(path)
    return path


def parity(path: str, cfg, params, *, batch: int = 1, pad: int = 0, text_len: int = 7,
           atol: float = 1e-4, inputs: dict | None = None, ref_path: str | None = None) -> dict:
    """Runs vlm_jax (`cfg`, `params`) and transformers (`ref_path` or `path`) on the same
    inputs and asserts max|diff| <= atol * max(1, max|ref|) over valid positions."""
    inputs = inputs or check_logits.make_inputs(cfg, batch=batch, pad=pad, text_len=text_len)
    ours = check_logits.run_vlm_jax(cfg, params, inputs)
    ref = check_logits.run_transformers(ref_path or path, inputs)
    report = check_logits.compare(ours, ref, inputs.get("valid"))
    assert report["ref_max_abs"] > 0.5, report  # the reference output is not degenerate
    assert check_logits.within(report, atol, 1e-6), report
    return report


def edit_config(path: str, **changes) -> None:
    file = os.path.join(path, "config.json")
    with open(file) as f:
        d = json.load(f)
    d.update(changes)
    with open(file, "w") as f:
        json.dump(d, f)


def tree_equal(a, b) -> None:
    """Asserts two nested dicts of arrays are identical in structure and values."""
    assert set(a) == set(b), (sorted(a), sorted(b))
    for k in a:
        if isinstance(a[k], dict):
            tree_equal(a[k], b[k])
        else:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
