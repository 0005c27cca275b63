"""CLIP and SigLIP vision towers (HF-compatible parameter layout).

`ViT(cfg)(images [B, H, W, 3]) -> ViTOutput`: `hidden_states` is a tuple of depth + 1 arrays
`[B, T, C]` (embeddings, then every layer's output, as HF returns them), `pooled` `[B, C]`.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.config import ViTConfig
from vlm_jax.models.layers import (
    ACTIVATIONS,
    attention,
    dense,
    dtype_of,
    layer_norm,
    remat_block,
    scan_layers,
)


class ViTOutput(NamedTuple):
    hidden_states: tuple[jax.Array, ...]  # depth + 1 of [B, T, C]
    pooled: jax.Array  # [B, C]: CLS after post-LN (CLIP), MAP head (SigLIP) or mean


class VisionAttention(nn.Module):
    """Bidirectional multi-head attention, self (`kv=None`) or cross.

    x: `[B, T, C]`, kv: `[B, S, C]` or None, key_valid: `[B, S]` bool or None -> `[B, T, C]`.
    """

    cfg: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array, kv: jax.Array | None = None,
                 key_valid: jax.Array | None = None) -> jax.Array:
        c, h = self.cfg.width, self.cfg.heads
        dt = dtype_of(self.cfg.dtype)
        kv = x if kv is None else kv
        split = lambda t: t.reshape(*t.shape[:2], h, c // h)
        q = split(dense(c, ("vis_embed", "heads"), dtype=dt, name="q_proj")(x))
        k = split(dense(c, ("vis_embed", "heads"), dtype=dt, name="k_proj")(kv))
        v = split(dense(c, ("vis_embed", "heads"), dtype=dt, name="v_proj")(kv))
        mask = None if key_valid is None else jnp.broadcast_to(
            key_valid[:, None, :], (x.shape[0], x.shape[1], key_valid.shape[1]))
        out = attention(q, k, v, mask).reshape(x.shape)
        return dense(c, ("heads", "vis_embed"), dtype=dt, name="out_proj")(out)


class VisionMLP(nn.Module):
    cfg: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dt = dtype_of(self.cfg.dtype)
        act = ACTIVATIONS["quick_gelu" if self.cfg.family == "clip" else "gelu_tanh"]
        x = act(dense(self.cfg.mlp_dim, ("vis_embed", "mlp"), dtype=dt, name="fc1")(x))
        return dense(self.cfg.width, ("mlp", "vis_embed"), dtype=dt, name="fc2")(x)


class EncoderLayer(nn.Module):
    """Pre-LN transformer block. `[B, T, C] -> [B, T, C]`."""

    cfg: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array, key_valid: jax.Array | None = None) -> jax.Array:
        dt, eps = dtype_of(self.cfg.dtype), self.cfg.norm_eps
        y = layer_norm(eps, dt, "layer_norm1")(x)
        x = x + VisionAttention(self.cfg, name="self_attn")(y, key_valid=key_valid)
        x = x + VisionMLP(self.cfg, name="mlp")(layer_norm(eps, dt, "layer_norm2")(x))
        return nn.with_logical_constraint(x, ("batch", "vis_tokens", "vis_embed"))


class ScannedEncoderLayer(EncoderLayer):
    """EncoderLayer as an `nn.scan` body: `x -> (x, x)` (each layer's output is stacked)."""

    def __call__(self, x):
        x = super().__call__(x)
        return x, x


class MAPHead(nn.Module):
    """SigLIP multihead attention pooling: one learned probe. `[B, T, C] -> [B, C]`."""

    cfg: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, dt = self.cfg.width, dtype_of(self.cfg.dtype)
        probe = self.param("probe", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, None, "vis_embed")), (1, 1, c), jnp.float32)
        q = jnp.broadcast_to(probe.astype(dt), (x.shape[0], 1, c))
        hidden = VisionAttention(self.cfg, name="attention")(q, x)
        y = layer_norm(self.cfg.norm_eps, dt, "layernorm")(hidden)
        hidden = hidden + VisionMLP(self.cfg, name="mlp")(y)
        return hidden[:, 0]


class ViT(nn.Module):
    """CLIP / SigLIP vision transformer on normalised NHWC images."""

    cfg: ViTConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> ViTOutput:
        cfg = self.cfg
        dt = dtype_of(cfg.dtype)
        if images.ndim != 4 or images.shape[1:] != (cfg.image_size, cfg.image_size, 3):
            raise ValueError(f"images must be [B, {cfg.image_size}, {cfg.image_size}, 3] for this "
                             f"tower, got {images.shape}")
        x = nn.Conv(cfg.width, (cfg.patch_size,) * 2, strides=(cfg.patch_size,) * 2,
                    padding="VALID", use_bias=cfg.family == "siglip", dtype=dt,
                    param_dtype=jnp.float32, name="patch_embedding",
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.lecun_normal(), (None, None, None, "vis_embed")),
                    bias_init=nn.with_logical_partitioning(
                        nn.initializers.zeros_init(), ("vis_embed",)))(images.astype(dt))
        x = x.reshape(x.shape[0], -1, cfg.width)
        if cfg.class_token:
            cls = self.param("class_embedding", nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("vis_embed",)), (cfg.width,), jnp.float32)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(dt), (x.shape[0], 1, cfg.width)), x], 1)
        pos = nn.Embed(cfg.num_positions, cfg.width, dtype=dt, param_dtype=jnp.float32,
                       name="position_embedding", embedding_init=nn.with_logical_partitioning(
                           nn.initializers.normal(0.02), (None, "vis_embed")))
        x = x + pos(jnp.arange(cfg.num_positions))[None]
        if cfg.family == "clip":
            x = layer_norm(cfg.norm_eps, dt, "pre_layrnorm")(x)
        hidden = [x]
        if cfg.scan_layers:  # one compiled layer; params stacked on a leading layer axis
            body = remat_block(ScannedEncoderLayer, cfg.remat, cfg.remat_policy, scanned=True)
            x, stacked = scan_layers(body, cfg.depth, ())(cfg, name="layers")(x)
            hidden += [stacked[i] for i in range(cfg.depth)]
        else:
            block = remat_block(EncoderLayer, cfg.remat, cfg.remat_policy, scanned=False)
            for i in range(cfg.depth):
                x = block(cfg, name=f"layers_{i}")(x)
                hidden.append(x)
        post = layer_norm(cfg.norm_eps, dt, "post_layernorm")
        if cfg.family == "clip":
            pooled = post(x[:, 0])
        elif cfg.use_head:
            pooled = MAPHead(cfg, name="head")(post(x))
        else:
            pooled = jnp.mean(post(x), axis=1)
        return ViTOutput(tuple(hidden), pooled)
