"""Llama / Qwen2-family decoder with an explicit, functional KV cache.

Positions are passed explicitly (`[B, L]`), so pruning can drop tokens and keep the survivors'
rotary positions. The cache is `vlm_jax.models.cache`: a list of `LayerCache` (layers may hold
different slot counts, as a pruned prefill leaves them) or one stacked over layers.

The decoder owns the only loop over its layers. With `cfg.scan_layers` the layers run under
`nn.scan` (parameters stacked on a leading layer axis) wherever every layer has one shape;
a `hook` (in-LLM token pruning: see `LayerHook`) or a per-layer cache runs the same parameters
layer by layer, so shapes may change between layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.cache import LayerCache
from vlm_jax.models.config import FLASH_IMPLS, LLMConfig
from vlm_jax.models.layers import (
    RMSNorm,
    attention,
    causal_attention,
    dense,
    dtype_of,
    remat_block,
    rotary,
    scan_layers,
)

# (q [B, L, H, Dh], k, v [B, L, KV, Dh], valid [B, L]) -> (out [B, L, H, Dh], importance [B, L]):
# causal self-attention over this call's own L tokens that also returns the attention mass each
# token receives as a key (what pruning ranks tokens by).
ImportanceFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


class LayerOutput(NamedTuple):
    hidden: jax.Array  # [B, L, D]
    cache: LayerCache | None  # the layer's updated cache (None without one)
    importance: jax.Array | None  # [B, L] float32 when an ImportanceFn was given, else None


class DecoderOutput(NamedTuple):
    logits: jax.Array | None  # [B, L, vocab] (None when not asked for)
    hidden: jax.Array  # [B, L, D], after the final norm
    cache: list[LayerCache] | LayerCache | None


class LayerHook(Protocol):
    """What the decoder's layer loop asks of in-LLM token pruning (vlm_jax.pruning supplies
    one). `state` is the hook's own pytree, threaded through the loop."""

    def start(self, seq_len: int, valid: jax.Array, cache: list[LayerCache] | None) -> Any:
        """Checks the inputs; returns the initial state."""

    def request(self, layer: int, state: Any) -> ImportanceFn | None:
        """The importance this layer's attention should also compute, or None."""

    def between(self, layer: int, x: jax.Array, positions: jax.Array, valid: jax.Array,
                state: Any, importance: jax.Array | None) -> tuple[jax.Array, ...]:
        """After layer `layer`: (x, positions, valid, state), tokens possibly removed."""

    def finish(self, out: DecoderOutput, state: Any) -> Any:
        """What the decoder returns."""


class Attention(nn.Module):
    """Rotary grouped-query self-attention, optionally reading/writing a layer cache.

    x: `[B, L, D]`, positions, valid: `[B, L]` -> LayerOutput(`[B, L, D]`, new cache or None,
    importance `[B, L]` or None). `importance` (an ImportanceFn) computes the attention of a
    prefill over its own tokens, so with a cache it assumes a fresh one (the queries are the
    first L slots), as a pruned prefill guarantees. So do the flash impls for a call of more
    than one token with a cache (their output is NaN on a cache that already holds tokens);
    one-token decode steps attend the cache with the "xla" path.
    """

    cfg: LLMConfig

    @nn.compact
    def __call__(self, x, positions, valid, cache: LayerCache | None = None,
                 importance: ImportanceFn | None = None) -> LayerOutput:
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
        scores = out = None
        if importance is not None:
            out, scores = importance(q, k, v, valid)
        new_cache = None
        flash = cfg.attention_impl in FLASH_IMPLS
        if cache is None:
            if out is None:
                out = causal_attention(q, k, v, valid, cfg.attention_impl)
        else:
            end = cache.end
            k_all = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, end, 0, 0))
            v_all = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, end, 0, 0))
            valid_all = jax.lax.dynamic_update_slice(cache.valid, valid, (0, end))
            if out is None and flash and n > 1:  # a prefill: into a fresh cache, else NaN
                out = causal_attention(q, k, v, valid, cfg.attention_impl)
                out = jnp.where(end == 0, out, jnp.nan).astype(out.dtype)
            if out is None:
                slots = jnp.arange(k_all.shape[1])
                upto = end + jnp.arange(n)  # query i sees slots <= end + i
                mask = valid_all[:, None, :] & (slots[None, None, :] <= upto[None, :, None])
                out = attention(q, k_all.astype(dt), v_all.astype(dt), mask,
                                "xla" if flash else cfg.attention_impl)
            new_cache = LayerCache(k_all, v_all, valid_all, end + n)
        out = out.reshape(b, n, h * dh)
        out = dense(cfg.width, ("heads", "embed"), use_bias=cfg.o_bias, dtype=dt,
                    name="o_proj")(out)
        return LayerOutput(out, new_cache, scores)


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
    """Pre-norm block: `(x [B, L, D], positions, valid [B, L], cache, importance)` ->
    LayerOutput (see Attention)."""

    cfg: LLMConfig

    @nn.compact
    def __call__(self, x, positions, valid, cache: LayerCache | None = None,
                 importance: ImportanceFn | None = None) -> LayerOutput:
        cfg, dt = self.cfg, dtype_of(self.cfg.dtype)
        y, cache, scores = Attention(cfg, name="self_attn")(
            RMSNorm(cfg.norm_eps, dt, name="input_layernorm")(x), positions, valid, cache,
            importance)
        x = x + y
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.norm_eps, dt, name="post_attention_layernorm")(x))
        return LayerOutput(nn.with_logical_constraint(x, ("batch", "length", "embed")), cache,
                           scores)


class ScannedDecoderLayer(DecoderLayer):
    """DecoderLayer as an `nn.scan` body: `(x, positions, valid, cache) -> (x, cache)`."""

    def __call__(self, x, positions, valid, cache=None):
        out = super().__call__(x, positions, valid, cache)
        return out.hidden, out.cache


class Decoder(nn.Module):
    """The LLM. `embed(tokens [B, L]) -> [B, L, D]`;
    `__call__(embeds, positions, valid, cache=None, logits=True, hook=None) -> DecoderOutput`
    (with a `hook`, whatever `hook.finish` returns)."""

    cfg: LLMConfig

    def setup(self):
        cfg = self.cfg
        dt = dtype_of(cfg.dtype)
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.width, dtype=dt, param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                        ("vocab", "embed")))
        if cfg.scan_layers:
            body = remat_block(ScannedDecoderLayer, cfg.remat, cfg.remat_policy, scanned=True)
            self.layers = scan_layers(body, cfg.depth, (nn.broadcast, nn.broadcast, 0))(cfg)
        else:
            block = remat_block(DecoderLayer, cfg.remat, cfg.remat_policy, scanned=False)
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

    def layer(self, i: int) -> Callable[..., LayerOutput]:
        """Layer `i` as a callable `(x, positions, valid, cache, importance) -> LayerOutput`
        (with scanned layers: the same block applied to slice `i` of the stacked params)."""
        if not self.cfg.scan_layers:
            return self.layers[i]
        if self.is_initializing():
            raise ValueError("a decoder with scan_layers initialises through its scanned path: "
                             "init without a pruning hook or a per-layer cache")
        stacked = nn.meta.unbox(self.variables["params"]["layers"])
        params = jax.tree_util.tree_map(lambda a: a[i], stacked)
        return lambda *args: DecoderLayer(self.cfg, parent=None).apply({"params": params}, *args)

    def __call__(self, embeds: jax.Array, positions: jax.Array, valid: jax.Array,
                 cache: list[LayerCache] | LayerCache | None = None, logits: bool = True,
                 hook: LayerHook | None = None) -> DecoderOutput | Any:
        """embeds `[B, L, D]`, positions `[B, L]` int, valid `[B, L]` bool (False = padding);
        cache: see vlm_jax.models.cache; hook: in-LLM token pruning (see LayerHook)."""
        cfg = self.cfg
        if self.is_initializing():  # create the table even when only embeddings come in
            self.embed(jnp.zeros((1, 1), jnp.int32))
        x = nn.with_logical_constraint(embeds, ("batch", "length", "embed"))
        state = None
        if isinstance(cache, LayerCache) and not cfg.scan_layers:
            raise ValueError("a stacked cache needs a decoder with scan_layers; give this one a "
                             "list of per-layer caches (vlm_jax.models.cache.init_cache)")
        if cfg.scan_layers and hook is None and not isinstance(cache, list):
            x, cache = self.layers(x, positions, valid, cache)
        else:
            if cache is not None and len(cache) != cfg.depth:
                raise ValueError(f"cache has {len(cache)} layers, the LLM {cfg.depth}")
            state = None if hook is None else hook.start(x.shape[1], valid, cache)
            new_cache = None if cache is None else []
            for i in range(cfg.depth):
                request = None if hook is None else hook.request(i, state)
                x, c, scores = self.layer(i)(x, positions, valid,
                                             None if cache is None else cache[i], request)
                if new_cache is not None:
                    new_cache.append(c)
                if hook is not None:
                    x, positions, valid, state = hook.between(i, x, positions, valid, state,
                                                              scores)
            cache = new_cache
        hidden = self.norm(x)
        out = DecoderOutput(self.head(hidden) if logits else None, hidden, cache)
        return out if hook is None else hook.finish(out, state)


def default_positions(valid: jax.Array) -> jax.Array:
    """Positions that skip padding: `[B, L]` bool -> `[B, L]` int32 (0 on leading pads)."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)
