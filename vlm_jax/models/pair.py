"""Image-text pair model for stage-0 pretraining of a vision tower with the SigLIP loss.

`ImageTextPair(vision, text, vocab_size, embed_dim, patch_classes)(images, text_tokens,
text_valid)` -> `PairOutput`: image and text embeddings `[B, E]` (L2-normalised), the logit
scale and bias, and per head of `patch_classes` the patch-token logits `[B, P, classes]` of a
linear probe on the tower's last layer (dense supervision of what each patch shows; empty
when `patch_classes` is). The image tower is an ordinary `ViT`, so its params drop into a VLM.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.config import TextTowerConfig, ViTConfig
from vlm_jax.models.layers import dense, dtype_of, layer_norm
from vlm_jax.models.vit import EncoderLayer, ViT


class TextTower(nn.Module):
    """Bidirectional transformer over caption tokens, mean-pooled over valid tokens.

    tokens, valid: `[B, L]` -> `[B, C]` (L <= `cfg.max_len`), built of the vision encoder's
    block.
    """

    cfg: TextTowerConfig
    vocab_size: int

    @nn.compact
    def __call__(self, tokens: jax.Array, valid: jax.Array) -> jax.Array:
        cfg, dt = self.cfg, dtype_of(self.cfg.dtype)
        if tokens.shape[1] > cfg.max_len:
            raise ValueError(f"caption length {tokens.shape[1]} > text tower max_len {cfg.max_len}")
        emb = nn.Embed(self.vocab_size, cfg.width, dtype=dt, param_dtype=jnp.float32,
                       name="token_embedding", embedding_init=nn.with_logical_partitioning(
                           nn.initializers.normal(0.02), ("vocab", "vis_embed")))
        pos = self.param("position_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, "vis_embed")), (cfg.max_len, cfg.width),
            jnp.float32)
        x = emb(tokens) + pos[None, : tokens.shape[1]].astype(dt)
        for i in range(cfg.depth):
            x = EncoderLayer(cfg, name=f"layers_{i}")(x, key_valid=valid)
        x = layer_norm(cfg.norm_eps, dt, "final_layer_norm")(x)
        w = valid.astype(x.dtype)[..., None]
        return (x * w).sum(1) / jnp.maximum(w.sum(1), 1.0)


class PairOutput(NamedTuple):
    image: jax.Array  # [B, E]
    text: jax.Array  # [B, E]
    scale: jax.Array  # []
    bias: jax.Array  # []
    patch_logits: tuple[jax.Array, ...]  # per head [B, P, classes]


class ImageTextPair(nn.Module):
    """SigLIP-style two-tower model (see module docstring)."""

    vision: ViTConfig
    text: TextTowerConfig
    vocab_size: int
    embed_dim: int = 64
    patch_classes: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, images: jax.Array, text_tokens: jax.Array, text_valid: jax.Array):
        dt = dtype_of(self.vision.dtype)
        out = ViT(self.vision, name="image_tower")(images)
        img = out.pooled
        patches = out.hidden_states[-1][:, 1:] if self.vision.class_token else \
            out.hidden_states[-1]
        patches = layer_norm(self.vision.norm_eps, dt, "patch_probe_norm")(patches) \
            if self.patch_classes else patches
        patch_logits = tuple(
            dense(n, ("vis_embed", None), dtype=dt, name=f"patch_probe_{i}")(patches)
            for i, n in enumerate(self.patch_classes))
        txt = TextTower(self.text, self.vocab_size, name="text_tower")(text_tokens, text_valid)
        img = dense(self.embed_dim, ("vis_embed", None), dtype=dt, name="image_proj")(img)
        txt = dense(self.embed_dim, ("vis_embed", None), dtype=dt, name="text_proj")(txt)
        norm = lambda z: z / jnp.linalg.norm(z.astype(jnp.float32), axis=-1, keepdims=True)
        t = self.param("logit_scale", nn.initializers.constant(jnp.log(10.0)), (), jnp.float32)
        b = self.param("logit_bias", nn.initializers.constant(-10.0), (), jnp.float32)
        return PairOutput(norm(img), norm(txt), jnp.exp(t), b, patch_logits)
