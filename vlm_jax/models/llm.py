"""Llama / Qwen2-family decoder with an explicit, functional KV cache.

Positions are passed explicitly (`[B, L]`), so pruning can drop tokens and keep the survivors'
rotary positions. A cache is a list (one per layer) of `{"k", "v": [B, S, KV, Dh],
"valid": [B, S] bool, "end": int32}`; layers may have different S (pruned prefill).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.config import LLMConfig
from vlm_jax.models.layers import RMSNorm, attention, causal_mask, dense, dtype_of, rotary

LayerCache = dict  # {"k", "v", "valid", "end"}


class DecoderOutput(NamedTuple):
    logits: jax.Array | None  # [B, L, vocab] (None when not asked for)
    hidden: jax.Array  # [B, L, D], after the final norm
    cache: list[LayerCache] | None


def init_cache(cfg: LLMConfig, batch: int, sizes: int | list[int], dtype=None) -> list[LayerCache]:
    """An empty cache; `sizes` is the slot count of every layer (or one per layer)."""
    sizes = [sizes] * cfg.depth if isinstance(sizes, int) else list(sizes)
    if len(sizes) != cfg.depth:
        raise ValueError(f"cache sizes has {len(sizes)} entries for {cfg.depth} layers")
    dt = dtype or dtype_of(cfg.dtype)
    shape = lambda s: (batch, s, cfg.kv_heads, cfg.dim_per_head)
    return [{"k": jnp.zeros(shape(s), dt), "v": jnp.zeros(shape(s), dt),
             "valid": jnp.zeros((batch, s), bool), "end": jnp.zeros((), jnp.int32)}
            for s in sizes]


class Attention(nn.Module):
    """Rotary grouped-query self-attention, optionally reading/writing a layer cache.

    x: `[B, L, D]`, positions, valid: `[B, L]` -> (`[B, L, D]`, new cache or None). With
    `importance` (pruning: a `vlm_jax.pruning.ops.ImportanceRequest`) it also returns the
    attention mass each key slot receives, `[B, S]`, as a third element.
    """

    cfg: LLMConfig

    @nn.compact
    def __call__(self, x, positions, valid, cache: LayerCache | None = None, importance=None):
        cfg = self.cfg
        dt = dtype_of(cfg.dtype)
        h, kv, dh = cfg.heads, cfg.kv_heads, cfg.dim_per_head
        b, n, _ = x.shape
        q = dense(h * dh, ("embed", "heads"), use_bias=cfg.qkv_bias, dtype=dt, name="q_proj")(x)
        k = dense(kv * dh, ("embed", "kv"), use_bias=cfg.qkv_bias, dtype=dt, name="k_proj")(x)
        v = dense(kv * dh, ("embed", "kv"), use_bias=cfg.qkv_bias, dtype=dt, name="v_proj")(x)
        q = rotary(q.reshape(b, n, h, dh), positions, cfg.rope_theta)
        k = rotary(k.reshape(b, n, kv, dh), positions, cfg.rope_theta)
        v = v.reshape(b, n, kv, dh)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", None))
        if cache is None:
            if importance is None:
                out = attention(q, k, v, causal_mask(valid), cfg.attention_impl)
            else:
                out, scores = importance(q, k, v, causal_mask(valid))
            new_cache = None
        else:
            end = cache["end"]
            k_all = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, end, 0, 0))
            v_all = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, end, 0, 0))
            valid_all = jax.lax.dynamic_update_slice(cache["valid"], valid, (0, end))
            slots = jnp.arange(k_all.shape[1])
            upto = end + jnp.arange(n)  # query i sees slots <= end + i
            mask = valid_all[:, None, :] & (slots[None, None, :] <= upto[None, :, None])
            if importance is None:
                out = attention(q, k_all.astype(dt), v_all.astype(dt), mask, cfg.attention_impl)
            else:
                out, scores = importance(q, k_all.astype(dt), v_all.astype(dt), mask)
            new_cache = {"k": k_all, "v": v_all, "valid": valid_all, "end": end + n}
        out = out.reshape(b, n, h * dh)
        out = dense(cfg.width, ("heads", "embed"), use_bias=cfg.o_bias, dtype=dt,
                    name="o_proj")(out)
        return (out, new_cache) if importance is None else (out, new_cache, scores)


class MLP(nn.Module):
    """SwiGLU. `[B, L, D] -> [B, L, D]`."""

    cfg: LLMConfig

    @nn.compact
    def __call__(self, x):
        cfg, dt = self.cfg, dtype_of(self.cfg.dtype)
        gate = dense(cfg.mlp_dim, ("embed", "mlp"), use_bias=cfg.mlp_bias, dtype=dt, name="gate_proj")
        up = dense(cfg.mlp_dim, ("embed", "mlp"), use_bias=cfg.mlp_bias, dtype=dt, name="up_proj")
        down = dense(cfg.width, ("mlp", "embed"), use_bias=cfg.mlp_bias, dtype=dt, name="down_proj")
        y = jax.nn.silu(gate(x)) * up(x)
        y = nn.with_logical_constraint(y, ("batch", "length", "mlp"))
        return down(y)


class DecoderLayer(nn.Module):
    """Pre-norm block. Returns (`[B, L, D]`, new layer cache or None[, importance `[B, S]` when
    `importance` is given, see Attention])."""

    cfg: LLMConfig

    @nn.compact
    def __call__(self, x, positions, valid, cache: LayerCache | None = None, importance=None):
        cfg, dt = self.cfg, dtype_of(self.cfg.dtype)
        y, cache, *scores = Attention(cfg, name="self_attn")(
            RMSNorm(cfg.norm_eps, dt, name="input_layernorm")(x), positions, valid, cache,
            importance)
        x = x + y
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.norm_eps, dt, name="post_attention_layernorm")(x))
        return (nn.with_logical_constraint(x, ("batch", "length", "embed")), cache, *scores)


class Decoder(nn.Module):
    """The LLM. `embed(tokens [B, L]) -> [B, L, D]`;
    `__call__(embeds, positions, valid, cache=None) -> DecoderOutput`; with `prune` (a static
    `vlm_jax.pruning.PruneSpec`) and `visual` (`[B, L]` bool) it prunes visual tokens inside the
    forward and returns a `vlm_jax.pruning.PrunedOutput`."""

    cfg: LLMConfig

    def setup(self):
        cfg = self.cfg
        dt = dtype_of(cfg.dtype)
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.width, dtype=dt, param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                        ("vocab", "embed")))
        block = nn.remat(DecoderLayer) if cfg.remat else DecoderLayer
        self.layers = [block(cfg) for _ in range(cfg.depth)]
        self.norm = RMSNorm(cfg.norm_eps, dt)
        if not cfg.tie_embeddings:
            self.lm_head = dense(cfg.vocab_size, ("embed", "vocab"), use_bias=False, dtype=dt)

    def embed(self, tokens: jax.Array) -> jax.Array:
        """`[B, L]` int -> `[B, L, D]`."""
        return self.embed_tokens(tokens)

    def head(self, hidden: jax.Array) -> jax.Array:
        """Final-normed hidden `[B, L, D]` -> logits `[B, L, vocab]` (float32)."""
        if self.cfg.tie_embeddings:
            logits = self.embed_tokens.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    def __call__(self, embeds: jax.Array, positions: jax.Array, valid: jax.Array,
                 cache: list[LayerCache] | None = None, logits: bool = True,
                 prune=None, visual: jax.Array | None = None,
                 query: jax.Array | None = None) -> DecoderOutput:
        """embeds `[B, L, D]`, positions `[B, L]` int, valid `[B, L]` bool (False = padding)."""
        if prune is not None:  # in-LLM visual-token pruning; query: optional [B, L] query set
            from vlm_jax.pruning.forward import pruned_decoder
            return pruned_decoder(self, embeds, positions, valid, visual, prune, query, cache,
                                  logits)
        if self.is_initializing():  # create the table even when only embeddings come in
            self.embed(jnp.zeros((1, 1), jnp.int32))
        x = nn.with_logical_constraint(embeds, ("batch", "length", "embed"))
        new_cache = [] if cache is not None else None
        for i, layer in enumerate(self.layers):
            x, c = layer(x, positions, valid, None if cache is None else cache[i])
            if cache is not None:
                new_cache.append(c)
        hidden = self.norm(x)
        return DecoderOutput(self.head(hidden) if logits else None, hidden, new_cache)


def default_positions(valid: jax.Array) -> jax.Array:
    """Positions that skip padding: `[B, L]` bool -> `[B, L]` int32 (0 on leading pads)."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)
