"""Size presets for the families the research uses, plus tiny ones for tests and CPU runs.

`get(name)` returns a config dataclass; `NAMES` lists them. `from_dict` builds a config from
a dict, ConfigDict or preset name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vlm_jax.models.config import (
    CLASSES,
    KINDS,
    CompressorConfig,
    LLMConfig,
    TextTowerConfig,
    ViTConfig,
    VLMConfig,
    make,
)

_QWEN = dict(family="qwen2", qkv_bias=True, rope_theta=1e6, norm_eps=1e-6, max_len=32768)
_QWEN15 = dict(_QWEN, vocab_size=151936, scan_layers=True)  # >100M params: scanned layers
_LLAMA2 = dict(family="llama", vocab_size=32000, rope_theta=1e4, norm_eps=1e-5, max_len=4096,
               scan_layers=True)

VISION: dict[str, ViTConfig] = {
    "clip-l/14-336": ViTConfig("clip", 336, 14, 1024, 24, 16, 4096, 1e-5, scan_layers=True),
    "clip-b/16-224": ViTConfig("clip", 224, 16, 768, 12, 12, 3072, 1e-5),
    "siglip-so400m/14-384": ViTConfig("siglip", 384, 14, 1152, 27, 16, 4304, 1e-6, use_head=True,
                                      scan_layers=True),
    # Tiny towers: tests and CPU sweeps.
    "clip-tiny": ViTConfig("clip", 32, 8, 32, 2, 4, 64, 1e-5),
    "siglip-tiny": ViTConfig("siglip", 32, 8, 32, 2, 4, 64, 1e-6, use_head=True),
}

LLM: dict[str, LLMConfig] = {
    "qwen1.5-0.5b": LLMConfig(**_QWEN15, width=1024, depth=24, heads=16, kv_heads=16,
                              mlp_dim=2816, tie_embeddings=True),
    "qwen1.5-1.8b": LLMConfig(**_QWEN15, width=2048, depth=24, heads=16, kv_heads=16,
                              mlp_dim=5504),
    "qwen1.5-4b": LLMConfig(**dict(_QWEN15, rope_theta=5e6), width=2560, depth=40, heads=20,
                            kv_heads=20, mlp_dim=6912),
    "qwen1.5-7b": LLMConfig(**_QWEN15, width=4096, depth=32, heads=32, kv_heads=32,
                            mlp_dim=11008),
    "qwen1.5-14b": LLMConfig(**dict(_QWEN15, vocab_size=152064), width=5120, depth=40, heads=40,
                             kv_heads=40, mlp_dim=13696),
    "qwen2-0.5b": LLMConfig(**_QWEN15, width=896, depth=24, heads=14, kv_heads=2, mlp_dim=4864,
                            tie_embeddings=True),
    "qwen2-1.5b": LLMConfig(**_QWEN15, width=1536, depth=28, heads=12, kv_heads=2, mlp_dim=8960,
                            tie_embeddings=True),
    "qwen2-7b": LLMConfig(**dict(_QWEN15, vocab_size=152064), width=3584, depth=28, heads=28,
                          kv_heads=4, mlp_dim=18944),
    "llama2-7b": LLMConfig(**_LLAMA2, width=4096, depth=32, heads=32, kv_heads=32, mlp_dim=11008),
    "vicuna-7b": LLMConfig(**_LLAMA2, width=4096, depth=32, heads=32, kv_heads=32, mlp_dim=11008),
    # Tiny decoders: tests and CPU sweeps.
    "llama-tiny": LLMConfig(family="llama", vocab_size=128, width=32, depth=2, heads=4, kv_heads=2,
                            mlp_dim=64, max_len=512),
    "qwen2-tiny": LLMConfig(**dict(_QWEN, max_len=512), vocab_size=128, width=32, depth=2, heads=4,
                            kv_heads=2, mlp_dim=64, tie_embeddings=True),
}


def feature_layers_for(depth: int) -> tuple[int, ...]:
    """QueCC's multi-layer features: the reference's (12, 16, 22, 23) of a 24-layer tower,
    scaled to `depth` layers (hidden-state indices, so the deepest is depth - 1)."""
    return tuple(sorted({round(i * (depth - 1) / 23) for i in (12, 16, 22, 23)}))


def llava(vision: str, llm: str, num_tokens: int | None = None, compressor: str = "identity",
          **overrides) -> VLMConfig:
    """A LLaVA-1.5-style VLM from a vision preset and an LLM preset.

    The image placeholder id is the first id past the LLM vocabulary, as llava-hf does; the
    embedding table is grown by one row to hold it.
    """
    v, lm = VISION[vision], LLM[llm]
    lm = dataclasses.replace(lm, vocab_size=lm.vocab_size + 1)
    comp = CompressorConfig(name=compressor, num_tokens=num_tokens)
    if compressor != "identity":  # the multi-layer features must exist in this tower
        comp = dataclasses.replace(comp, feature_layers=feature_layers_for(v.depth))
    return VLMConfig(vision=v, llm=lm, compressor=comp, image_token_id=lm.vocab_size - 1,
                     **overrides)


VLM: dict[str, VLMConfig] = {
    "llava-1.5-7b": llava("clip-l/14-336", "vicuna-7b"),
    "llava-clip-qwen1.5-0.5b": llava("clip-l/14-336", "qwen1.5-0.5b"),
    "llava-tiny": llava("clip-tiny", "qwen2-tiny"),
}

NAMES = sorted([*VISION, *LLM, *VLM])


def get(name: str) -> ViTConfig | LLMConfig | VLMConfig:
    """The preset config called `name`."""
    for table in (VISION, LLM, VLM):
        if name in table:
            return table[name]
    raise ValueError(f"unknown model preset {name!r}; known: {NAMES}")


def from_dict(d: Any) -> ViTConfig | LLMConfig | TextTowerConfig | VLMConfig:
    """A config dataclass from a dict / ConfigDict / dataclass / preset name.

    A dict with `vision` and `llm` is a VLM; otherwise `kind` ('vision' | 'llm' | 'text') says
    which.
    """
    if dataclasses.is_dataclass(d):
        return d
    if isinstance(d, str):
        return get(d)
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    if "vision" in d and "llm" in d:
        sub = {}
        for key, cls in CLASSES.items():
            v = d.get(key, {})
            if isinstance(v, str):
                v = get(v)
            if not dataclasses.is_dataclass(v):
                v = dict(v)
                if v.pop("kind", key) != key:
                    raise ValueError(f"model.{key} has kind={d[key]['kind']!r}, expected {key!r}")
                v = make(cls, v, f"model.{key}")
            sub[key] = v
        cfg = make(VLMConfig, {k: x for k, x in d.items() if k not in CLASSES}, "model")
        return dataclasses.replace(cfg, **sub)
    kind = d.pop("kind", None)
    if kind not in KINDS:
        raise ValueError(f"model config needs `vision` and `llm`, or kind='vision'|'llm'|'text'; "
                         f"got keys {sorted(d)} with kind={kind!r}")
    return make(KINDS[kind], d, "model")


# The tiny sweep's LLM sizes (configs/sweep_tiny.py): name -> (width, depth, heads, kv_heads).
TINY_SWEEP_LLMS = {"s": (48, 2, 4, 2), "m": (96, 3, 4, 2), "l": (192, 4, 6, 2)}


def tiny_sweep_llm(size: str, vocab_size: int) -> LLMConfig:
    """A Qwen2-style tiny LLM of the CPU sweep (SwiGLU width ~8/3 of the model width)."""
    if size not in TINY_SWEEP_LLMS:
        raise ValueError(f"unknown tiny LLM size {size!r}; known: {sorted(TINY_SWEEP_LLMS)}")
    width, depth, heads, kv = TINY_SWEEP_LLMS[size]
    return LLMConfig(family="qwen2", vocab_size=vocab_size, width=width, depth=depth, heads=heads,
                     kv_heads=kv, mlp_dim=width * 8 // 3 // 8 * 8, rope_theta=1e4, qkv_bias=True,
                     tie_embeddings=True, max_len=512)


def tiny_sweep_vision(resolution: int) -> ViTConfig:
    """The CPU sweep's CLIP-style tower: an 8 x 8 patch grid at any resolution."""
    return ViTConfig("clip", resolution, resolution // 8, 64, 3, 4, 256, 1e-5)
