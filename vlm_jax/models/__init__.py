"""Model construction: `build(cfg) -> flax.linen.Module`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models import presets
from vlm_jax.models.config import (
    CompressorConfig,
    LLMConfig,
    ViTConfig,
    VLMConfig,
    from_dict,
    to_dict,
)
from vlm_jax.models.llm import Decoder
from vlm_jax.models.vit import ViT
from vlm_jax.models.vlm import VLM

__all__ = ["build", "init_params", "dummy_inputs", "from_dict", "to_dict", "presets",
           "ViTConfig", "LLMConfig", "CompressorConfig", "VLMConfig", "VLM", "ViT", "Decoder"]


def build(cfg: Any) -> nn.Module:
    """The module for a config dataclass, dict / ConfigDict, or preset name.

    VLM: `apply({"params": p}, images=..., tokens=...) -> logits [B, L, vocab]`;
    vision: `apply(..., images) -> ViTOutput`; LLM: `apply(..., embeds, positions, valid)`
    (or `method="embed"`).
    """
    cfg = from_dict(cfg)
    if isinstance(cfg, VLMConfig):
        return VLM(cfg)
    if isinstance(cfg, ViTConfig):
        return ViT(cfg)
    return Decoder(cfg)


def dummy_inputs(cfg: Any, batch: int = 1, text_len: int = 8) -> dict[str, jax.Array]:
    """Keyword inputs of the right shapes for `init` / `eval_shape`."""
    cfg = from_dict(cfg)
    if isinstance(cfg, ViTConfig):
        return {"images": jnp.zeros((batch, cfg.image_size, cfg.image_size, 3), jnp.float32)}
    if isinstance(cfg, LLMConfig):
        return {"embeds": jnp.zeros((batch, text_len, cfg.width), jnp.float32),
                "positions": jnp.zeros((batch, text_len), jnp.int32),
                "valid": jnp.ones((batch, text_len), bool)}
    v = cfg.num_visual_tokens
    tokens = jnp.concatenate([jnp.full((batch, v), cfg.image_token_id, jnp.int32),
                              jnp.ones((batch, text_len), jnp.int32)], axis=1)
    inputs = {"images": jnp.zeros((batch, cfg.vision.image_size, cfg.vision.image_size, 3)),
              "tokens": tokens}
    if cfg.compressor.name != "identity" and cfg.compressor.use_text_query:
        inputs["question"] = jnp.ones((batch, text_len), jnp.int32)
    return inputs


def init_params(cfg: Any, rng: jax.Array | int = 0) -> dict:
    """Random float32 parameters (a plain pytree, logical-axis boxes removed)."""
    module = build(cfg)
    rng = jax.random.key(rng) if isinstance(rng, int) else rng
    variables = jax.jit(lambda r: module.init(r, **dummy_inputs(module.cfg)))(rng)
    return nn.meta.unbox(variables["params"])
