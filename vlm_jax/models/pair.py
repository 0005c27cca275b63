"""Image-text pair model for stage-0 pretraining of a vision tower with the SigLIP loss.

`ImageTextPair(vision, text, vocab_size, embed_dim)(images, text_tokens, text_valid)`
-> (image embeddings `[B, E]`, text embeddings `[B, E]`, logit scale, logit bias), embeddings
L2-normalised. The image tower is an ordinary `ViT`, so its params drop into a VLM.
"""

from __future__ import annotations

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


class ImageTextPair(nn.Module):
    """SigLIP-style two-tower model (see module docstring)."""

    vision: ViTConfig
    text: TextTowerConfig
    vocab_size: int
    embed_dim: int = 64

    @nn.compact
    def __call__(self, images: jax.Array, text_tokens: jax.Array, text_valid: jax.Array):
        dt = dtype_of(self.vision.dtype)
        img = ViT(self.vision, name="image_tower")(images).pooled
        txt = TextTower(self.text, self.vocab_size, name="text_tower")(text_tokens, text_valid)
        img = dense(self.embed_dim, ("vis_embed", None), dtype=dt, name="image_proj")(img)
        txt = dense(self.embed_dim, ("vis_embed", None), dtype=dt, name="text_proj")(txt)
        norm = lambda z: z / jnp.linalg.norm(z.astype(jnp.float32), axis=-1, keepdims=True)
        t = self.param("logit_scale", nn.initializers.constant(jnp.log(10.0)), (), jnp.float32)
        b = self.param("logit_bias", nn.initializers.constant(-10.0), (), jnp.float32)
        return norm(img), norm(txt), jnp.exp(t), b
