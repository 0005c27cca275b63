"""Building blocks shared by the vision tower, the LLM and the compressors.

Parameters are created float32 and carry logical axis names; compute runs in the module's
dtype. Names of submodules follow Hugging Face so the interop tables stay one-to-one.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.config import FLASH_IMPLS

Axes = tuple[str | None, ...]

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": jax.nn.silu,
}


REMAT_POLICIES = {
    "nothing": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
}


def remat_block(block: type[nn.Module], remat: bool, policy: str, scanned: bool):
    """`block` under `nn.remat` with the named policy (config.REMAT_POLICIES), or as is."""
    if not remat:
        return block
    return nn.remat(block, policy=REMAT_POLICIES[policy], prevent_cse=not scanned)


def scan_layers(body: type[nn.Module], depth: int, in_axes) -> type[nn.Module]:
    """`body` (`(carry, *args) -> (carry, out)`) scanned over `depth` layers: params gain a
    leading layer axis (logical name "layers", replicated), outputs are stacked on axis 0."""
    return nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=in_axes, length=depth, metadata_params={nn.PARTITION_NAME: "layers"})


def dtype_of(name: str) -> jnp.dtype:
    """`"float32"` / `"bfloat16"` -> a jnp dtype, with a clear error otherwise."""
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unsupported compute dtype {name!r}; use float32, bfloat16 or float16")
    return jnp.dtype(name)


def dense(features: int, axes: Axes, *, use_bias: bool = True, dtype=jnp.float32,
          name: str | None = None) -> nn.Dense:
    """A Dense layer whose kernel `[in, out]` carries logical `axes` (its bias, `axes[-1]`).

    Kernels start at std 1/sqrt(fan_in) (LeCun normal), not HF's fixed 0.02: at the widths of
    the tiny CPU models (48-192) a 0.02 start leaves attention flat and the image unused for
    hundreds of steps; at LLM widths (~2500) the two agree.
    """
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_in", "normal"), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)))


def layer_norm(eps: float, dtype=jnp.float32, name: str | None = None,
               axis_name: str = "norm") -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis_name,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axis_name,)))


class RMSNorm(nn.Module):
    """Llama RMSNorm: statistics in float32, result cast back. `[..., D] -> [..., D]`."""

    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.with_logical_partitioning(
            nn.initializers.ones_init(), ("norm",)), (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return weight.astype(self.dtype) * x32.astype(self.dtype)


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, half-split layout (HF `rotate_half`).

    x: `[B, L, H, Dh]`, positions: `[B, L]` int (kept through pruning) -> `[B, L, H, Dh]`.
    """
    dh = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, Dh/2]
    cos = jnp.cos(freqs)[:, :, None, :]
    sin = jnp.sin(freqs)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def _heads_major(q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """q `[B, Lq, H, Dh]`, k `[B, Lk, KV, Dh]` -> `[B, KV, G*Lq, Dh]`, `[B, KV, Lk, Dh]`.

    With heads (and each KV group's queries) outermost, both attention products are plain
    batched matmuls over `[B, KV]`: no layout copy inside them, on any backend.
    """
    b, lq, h, dh = q.shape
    kv = k.shape[2]
    qh = q.reshape(b, lq, kv, h // kv, dh).transpose(0, 2, 3, 1, 4).reshape(b, kv, -1, dh)
    return qh, k.transpose(0, 2, 1, 3)


def _masked_scores(q: jax.Array, k: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Scaled, masked scores `[B, KV, G, Lq, Lk]` float32 (masked: float32 min, so a row with
    no key attends uniformly instead of producing NaN)."""
    b, lq, h, dh = q.shape
    kv, lk = k.shape[2], k.shape[1]
    qh, kh = _heads_major(q, k)
    scores = jnp.einsum("bkqd,bksd->bkqs", qh, kh, preferred_element_type=jnp.float32)
    scores = (scores / jnp.sqrt(jnp.float32(dh))).reshape(b, kv, h // kv, lq, lk)
    if mask is not None:
        scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    return scores


def attention_weights(q: jax.Array, k: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Softmax attention probabilities with grouped heads.

    q: `[B, Lq, KV, G, Dh]`, k: `[B, Lk, KV, Dh]`, mask: `[B, Lq, Lk]` bool (True = attend)
    -> `[B, KV, G, Lq, Lk]` float32.
    """
    b, lq, kv, g, dh = q.shape
    return jax.nn.softmax(_masked_scores(q.reshape(b, lq, kv * g, dh), k, mask), axis=-1)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
              impl: str = "xla") -> jax.Array:
    """Multi-head / grouped-query attention.

    q: `[B, Lq, H, Dh]`, k, v: `[B, Lk, KV, Dh]`, mask: `[B, Lq, Lk]` bool -> `[B, Lq, H, Dh]`.
    `impl="xla"`: heads-major batched matmuls, the softmax normalised after the value product
    (`exp(s - max) @ v / sum`: the `[Lq, Lk]` probabilities are never divided, one pass less
    over the largest array; equal to softmax-then-product up to float32 rounding). Other values
    go to `jax.nn.dot_product_attention` (e.g. "cudnn" on GPU).
    """
    b, lq, h, dh = q.shape
    kv, lk = k.shape[2], k.shape[1]
    if impl != "xla":
        m = None if mask is None else mask[:, None]
        return jax.nn.dot_product_attention(q, k, v, mask=m, implementation=impl)
    scores = _masked_scores(q, k, mask)
    # The shift cancels exactly in out / total, so no gradient flows through it (as in
    # jax.nn.softmax): differentiating the max would add a compare/select/reduce pass over the
    # [B, KV, G, Lq, Lk] scores to the backward for a term that is zero.
    shift = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    unnorm = jnp.exp(scores - shift)
    total = jnp.sum(unnorm, axis=-1, keepdims=True)  # [B, KV, G, Lq, 1]
    _, vh = _heads_major(q, v)
    out = jnp.einsum("bkqs,bksd->bkqd", unnorm.reshape(b, kv, -1, lk).astype(v.dtype), vh,
                     preferred_element_type=jnp.float32).reshape(b, kv, h // kv, lq, dh)
    out = (out / total).astype(v.dtype)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, lq, h, dh)


FLASH_BLOCK = 128  # Pallas flash attention's query and key tile (shorter calls: one tile)


def flash_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array,
                           impl: str = "flash") -> jax.Array:
    """Causal self-attention of a call's own tokens by Pallas flash attention (jax's
    `pallas.ops.gpu.attention.mha`): neither the `[L, L]` scores nor an `[L, L]` mask exist.

    q: `[B, L, H, Dh]`, k, v: `[B, L, KV, Dh]` (KV heads repeated to H), valid: `[B, L]` bool
    -> `[B, L, H, Dh]`. Padding is a segment of its own, so a real token attends exactly the
    real tokens up to it (`causal_mask(valid)`); outputs at padded rows are unspecified.
    impl: "flash" (Triton; GPU only, raises elsewhere) or "flash_interpret" (any backend).
    """
    from jax.experimental.pallas.ops.gpu.attention import BlockSizes, mha

    from vlm_jax.kernels.dispatch import resolve, round_up
    if impl not in FLASH_IMPLS:
        raise ValueError(f"flash_causal_attention: impl={impl!r} is not 'flash' or "
                         "'flash_interpret'")
    plan = resolve("flash attention", "pallas" if impl == "flash" else "pallas_interpret",
                   None, ("gpu",))
    b, n, h, dh = q.shape
    kv = k.shape[2]
    block = FLASH_BLOCK if n > FLASH_BLOCK else round_up(n, 16)
    pad = round_up(n, block) - n
    seg = jnp.pad(valid.astype(jnp.int32), ((0, 0), (0, pad)), constant_values=2)
    grow = lambda x: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
    k, v = jnp.repeat(k, h // kv, axis=2), jnp.repeat(v, h // kv, axis=2)
    out = mha(grow(q), grow(k), grow(v), seg, sm_scale=float(dh) ** -0.5, causal=True,
              block_sizes=BlockSizes(block_q=block, block_k=block), interpret=plan.interpret)
    return out[:, :n].astype(q.dtype)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array,
                     impl: str = "xla") -> jax.Array:
    """Causal self-attention of a call's own tokens, padded keys hidden: q `[B, L, H, Dh]`,
    k, v `[B, L, KV, Dh]`, valid `[B, L]` -> `[B, L, H, Dh]`, on `LLMConfig.attention_impl`
    (the flash impls build no `[L, L]` array; the others go through `attention`)."""
    if impl in FLASH_IMPLS:
        return flash_causal_attention(q, k, v, valid, impl)
    return attention(q, k, v, causal_mask(valid), impl)


def causal_mask(valid: jax.Array) -> jax.Array:
    """`[B, L]` bool valid tokens -> `[B, L, L]` causal mask that also hides padded keys."""
    n = valid.shape[1]
    causal = jnp.tril(jnp.ones((n, n), dtype=bool))
    return causal[None] & valid[:, None, :]


def select_layers(hidden_states: Sequence[jax.Array], layers: int | Sequence[int]) -> jax.Array:
    """Hidden states at HF-style indices (negative counts from the end), concatenated on channels."""
    if isinstance(layers, int):
        return hidden_states[layers]
    n = len(hidden_states)
    for i in layers:
        if not -n <= i < n:
            raise ValueError(f"feature layer {i} out of range for {n} hidden states")
    return jnp.concatenate([hidden_states[i] for i in layers], axis=-1)
