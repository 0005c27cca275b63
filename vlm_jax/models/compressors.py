"""Token compressors: `[B, G*G, C]` patch features -> `[B, V, C]`, registry by name.

Every compressor is called as `module(x, x_multi=None, text=None)` with
x `[B, G*G, C]` (selected layer), x_multi `[B, G*G, C_multi]` (several layers concatenated),
text `[B, D_llm]` (the question's query vector). What each one reads besides `x`:
`vlm_jax.models.config.COMPRESSOR_INPUTS` (`cfg.reads_multi`, `cfg.reads_text`).
V = (G / k)^2 for an integer k dividing G; the output is row-major over the `G/k x G/k` grid.

- `identity`: V = G*G.
- `avgpool`: mean over each `k x k` window (= torch `F.avg_pool2d(kernel=k, stride=k)`).
- `quecc`: docs/algorithms.md section 2 (parameter tree mirrors the reference PyTorch module, see
  vlm_jax/interop/quecc.py).
- `tokenpacker`: QueCC without the text query, the query grid made by bilinear downsampling of
  `x` to `G/k x G/k` (as TokenPacker does: resize first, then the query MLP); the resize is
  `jax.image.resize(..., "bilinear", antialias=False)`, numerically torch's
  `F.interpolate(mode="bilinear", align_corners=False, antialias=False)`.
- `resampler`: V learned global queries, one cross-attention over all G*G tokens; queries and
  keys/values each go through a LayerNorm first (Perceiver / Qwen-VL style), no residual, no
  MLP, no position embedding (the ViT features carry positions already).
"""

from __future__ import annotations

import math

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.config import CompressorConfig
from vlm_jax.models.layers import ACTIVATIONS, attention, dense, dtype_of, layer_norm

_OUT_AXES = ("batch", "vis_tokens", "vis_embed")


def window_size(num_tokens: int | None, grid: int, name: str = "compressor") -> int:
    """The pooling window k with `(grid / k)^2 == num_tokens` (None means no compression)."""
    if num_tokens is None:
        return 1
    side = math.isqrt(num_tokens) if num_tokens > 0 else 0
    if num_tokens <= 0 or side * side != num_tokens or grid % side:
        raise ValueError(
            f"{name}: num_tokens V={num_tokens} does not fit a {grid}x{grid} patch grid; V must "
            f"be a square (G/k)^2 with k dividing G={grid}, e.g. "
            f"{[(grid // d) ** 2 for d in range(1, grid + 1) if grid % d == 0]}")
    return grid // side


def _check_features(name: str, what: str, a: jax.Array | None, tokens: int, width: int | None):
    """Raises unless `a` is `[B, tokens, width]` (width None: any)."""
    if a is None:
        raise ValueError(f"{name}: `{what}` [B, {tokens}, C] is required")
    if a.ndim != 3 or a.shape[1] != tokens or (width is not None and a.shape[2] != width):
        raise ValueError(f"{name}: `{what}` must be [B, {tokens}, {width or 'C'}], got "
                         f"{tuple(a.shape)}")


class ProjectionMLP(nn.Module):
    """LayerNorm(Linear(C_in -> C) -> GELU(erf) -> Linear(C -> C)). `[..., C_in] -> [..., C]`."""

    width: int
    eps: float = 1e-6
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dt = dtype_of(self.dtype)
        x = dense(self.width, ("vis_embed", "mlp"), dtype=dt, name="fc1")(x)
        x = dense(self.width, ("mlp", "vis_embed"), dtype=dt, name="fc2")(ACTIVATIONS["gelu"](x))
        return layer_norm(self.eps, dt, "norm")(x)


class TextProjection(nn.Module):
    """LayerNorm(Linear(D_llm -> C)). `[B, D_llm] -> [B, C]`."""

    width: int
    eps: float = 1e-6
    dtype: str = "float32"

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        dt = dtype_of(self.dtype)
        t = dense(self.width, ("embed", "vis_embed"), dtype=dt, name="fc")(t)
        return layer_norm(self.eps, dt, "norm")(t)


class CrossAttention(nn.Module):
    """Multi-head attention with biased in/out projections (torch `nn.MultiheadAttention`).

    q: `[N, Lq, C]`, kv: `[N, Lk, C]` (keys and values from separate inputs) -> `[N, Lq, C]`.
    """

    width: int
    heads: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        c, h, dt = self.width, self.heads, dtype_of(self.dtype)
        split = lambda t: t.reshape(*t.shape[:2], h, c // h)
        q = split(dense(c, ("vis_embed", "heads"), dtype=dt, name="query")(q))
        k = split(dense(c, ("vis_embed", "heads"), dtype=dt, name="key")(k))
        v = split(dense(c, ("vis_embed", "heads"), dtype=dt, name="value")(v))
        out = attention(q, k, v, None).reshape(*q.shape[:2], c)
        return dense(c, ("heads", "vis_embed"), dtype=dt, name="out_proj")(out)


class _Compressor(nn.Module):
    """Shared fields and checks. Build through `build()`."""

    cfg: CompressorConfig
    grid: int
    width: int
    text_width: int | None = None
    multi_width: int | None = None  # expected x_multi width (None: whatever comes)
    dtype: str = "float32"

    @property
    def kernel(self) -> int:
        return window_size(self.cfg.num_tokens, self.grid, self.cfg.name)

    def check_x(self, x: jax.Array) -> None:
        _check_features(self.cfg.name, "x", x, self.grid**2, self.width)


class AvgPool(_Compressor):
    """2-D average pooling of the G x G grid to `G/k x G/k`. No parameters."""

    @nn.compact
    def __call__(self, x: jax.Array, x_multi: jax.Array | None = None,
                 text: jax.Array | None = None) -> jax.Array:
        self.check_x(x)
        k, side = self.kernel, self.grid // self.kernel
        x = einops.rearrange(x, "b (i k j l) c -> b (i j) (k l) c", i=side, j=side, k=k, l=k)
        return nn.with_logical_constraint(jnp.mean(x, axis=2), _OUT_AXES)


def local_windows(t: jax.Array, side: int, k: int) -> jax.Array:
    """`[B, G*G, C]` row-major grid -> `[B*V, k*k, C]`: window (i, j) holds the k x k tokens
    under output cell (i, j); windows ordered (b, i, j)."""
    return einops.rearrange(t, "b (i k j l) c -> (b i j) (k l) c", i=side, j=side, k=k, l=k)


class _WindowCrossAttention(_Compressor):
    """One query per output cell attends to the k x k tokens of `x_multi` under it."""

    def keys_values_attend(self, q: jax.Array, x_multi: jax.Array) -> jax.Array:
        """q `[B, V, C]` -> `[B, V, C]`."""
        cfg, c = self.cfg, self.width
        _check_features(cfg.name, "x_multi", x_multi, self.grid**2, self.multi_width)
        k, side = self.kernel, self.grid // self.kernel
        keys = ProjectionMLP(c, cfg.norm_eps, self.dtype, name="k_proj")(x_multi)
        vals = ProjectionMLP(c, cfg.norm_eps, self.dtype, name="v_proj")(x_multi)
        b = q.shape[0]
        out = CrossAttention(c, cfg.heads, self.dtype, name="clip_attn")(
            q.reshape(b * side * side, 1, c), local_windows(keys, side, k),
            local_windows(vals, side, k))
        return nn.with_logical_constraint(out.reshape(b, side * side, c), _OUT_AXES)


class QueCC(_WindowCrossAttention):
    """Query-based convolutional cross-attention (docs/algorithms.md section 2). `-> [B, V, C]`."""

    @nn.compact
    def __call__(self, x: jax.Array, x_multi: jax.Array | None = None,
                 text: jax.Array | None = None) -> jax.Array:
        cfg, c, dt = self.cfg, self.width, dtype_of(self.dtype)
        self.check_x(x)
        if cfg.reads_text:
            if text is None or text.ndim != 2 or text.shape[0] != x.shape[0] or (
                    self.text_width is not None and text.shape[1] != self.text_width):
                got = None if text is None else tuple(text.shape)
                raise ValueError(f"quecc with use_text_query=True needs `text` [B={x.shape[0]}, "
                                 f"D_llm={self.text_width}] (the question's query vector), "
                                 f"got {got}")
            t = TextProjection(c, cfg.norm_eps, self.dtype, name="text_projection")(text)
            x = x + t[:, None, :]
        q = ProjectionMLP(c, cfg.norm_eps, self.dtype, name="q_proj")(x)
        side = self.grid
        q = q.reshape(q.shape[0], side, side, c)
        k = self.kernel
        q = nn.Conv(c, (k, k), strides=(k, k), padding="VALID", feature_group_count=c,
                    dtype=dt, param_dtype=jnp.float32, name="q_downsample",
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.lecun_normal(), (None, None, None, "vis_embed")),
                    bias_init=nn.with_logical_partitioning(
                        nn.initializers.zeros_init(), ("vis_embed",)))(q)
        return self.keys_values_attend(q.reshape(q.shape[0], -1, c), x_multi)


class TokenPacker(_WindowCrossAttention):
    """QueCC without the text query; bilinear resize of `x` replaces the conv. `-> [B, V, C]`."""

    @nn.compact
    def __call__(self, x: jax.Array, x_multi: jax.Array | None = None,
                 text: jax.Array | None = None) -> jax.Array:
        self.check_x(x)
        side = self.grid // self.kernel
        grid = x.reshape(x.shape[0], self.grid, self.grid, x.shape[-1])
        small = jax.image.resize(grid, (x.shape[0], side, side, x.shape[-1]), "bilinear",
                                 antialias=False)
        q = ProjectionMLP(self.width, self.cfg.norm_eps, self.dtype, name="q_proj")(
            small.reshape(x.shape[0], side * side, x.shape[-1]))
        return self.keys_values_attend(q, x_multi)


class Resampler(_Compressor):
    """V learned queries, one cross-attention over all G*G tokens. `-> [B, V, C]`."""

    @nn.compact
    def __call__(self, x: jax.Array, x_multi: jax.Array | None = None,
                 text: jax.Array | None = None) -> jax.Array:
        cfg, c, dt = self.cfg, self.width, dtype_of(self.dtype)
        self.check_x(x)
        v = (self.grid // self.kernel) ** 2
        queries = self.param("queries", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("vis_tokens", "vis_embed")), (v, c), jnp.float32)
        q = layer_norm(cfg.norm_eps, dt, "ln_q")(queries.astype(dt))
        q = jnp.broadcast_to(q, (x.shape[0], v, c))
        kv = layer_norm(cfg.norm_eps, dt, "ln_kv")(x)
        out = CrossAttention(c, cfg.heads, self.dtype, name="attn")(q, kv, kv)
        return nn.with_logical_constraint(out, _OUT_AXES)


class Identity(nn.Module):
    """No compression: V = N."""

    @nn.compact
    def __call__(self, x: jax.Array, x_multi: jax.Array | None = None,
                 text: jax.Array | None = None) -> jax.Array:
        return x


REGISTRY: dict[str, type[nn.Module]] = {
    "identity": Identity,
    "avgpool": AvgPool,
    "resampler": Resampler,
    "tokenpacker": TokenPacker,
    "quecc": QueCC,
}
_ATTENTION = ("resampler", "tokenpacker", "quecc")


def build(cfg: CompressorConfig, *, grid: int, width: int, text_width: int | None = None,
          multi_width: int | None = None, dtype: str = "float32") -> nn.Module:
    """The compressor `cfg.name` for a `grid x grid` map of `width` channels.

    text_width: D_llm of the text query (quecc); multi_width: C_multi of `x_multi`, checked at
    call time when given. Raises ValueError for a V that does not fit the grid, a width the
    heads do not divide, or a text query without a text width.
    """
    if cfg.name not in REGISTRY:
        raise ValueError(f"unknown compressor {cfg.name!r}; known: {sorted(REGISTRY)}")
    if cfg.name == "identity":
        if cfg.num_tokens not in (None, grid * grid, grid * grid + 1):
            raise ValueError(f"identity compressor keeps all {grid * grid} patches but "
                             f"num_tokens={cfg.num_tokens}; leave it None or pick a compressor")
        return Identity()
    window_size(cfg.num_tokens, grid, cfg.name)
    if cfg.name in _ATTENTION and (cfg.heads <= 0 or width % cfg.heads):
        raise ValueError(f"{cfg.name}: feature width C={width} is not divisible by "
                         f"heads={cfg.heads}")
    if cfg.reads_text and not text_width:
        raise ValueError("quecc with use_text_query=True needs text_width (D_llm) > 0")
    return REGISTRY[cfg.name](cfg=cfg, grid=grid, width=width, text_width=text_width,
                              multi_width=multi_width, dtype=dtype)
