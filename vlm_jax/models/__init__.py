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
    TextTowerConfig,
    ViTConfig,
    VLMConfig,
    to_dict,
)
from vlm_jax.models.layout import match_layout, unstack_layers
from vlm_jax.models.llm import Decoder
from vlm_jax.models.presets import from_dict
from vlm_jax.models.vit import ViT
from vlm_jax.models.vlm import VLM

__all__ = ["build", "init_params", "abstract_params", "to_layout", "match_layout", "unstack_layers",
           "dummy_inputs", "from_dict", "to_dict", "presets", "ViTConfig", "LLMConfig",
           "TextTowerConfig", "CompressorConfig", "VLMConfig", "VLM", "ViT", "Decoder"]


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
    if cfg.uses_text_query:
        inputs["question"] = jnp.ones((batch, text_len), jnp.int32)
    return inputs


def init_params(cfg: Any, rng: jax.Array | int = 0) -> dict:
    """Random float32 parameters (a plain pytree, logical-axis boxes removed)."""
    module = build(cfg)
    rng = jax.random.key(rng) if isinstance(rng, int) else rng
    variables = jax.jit(lambda r: module.init(r, **dummy_inputs(module.cfg)))(rng)
    return nn.meta.unbox(variables["params"])


def abstract_params(cfg: Any) -> dict:
    """The parameters' shapes and dtypes (`jax.ShapeDtypeStruct` leaves); nothing computed."""
    module = build(cfg)
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), **dummy_inputs(module.cfg)))
    return nn.meta.unbox(variables["params"])


def to_layout(cfg: Any, params: dict) -> dict:
    """`params` (either layer layout: per layer or scanned) in the layout `cfg` builds."""
    return match_layout(params, abstract_params(cfg))
