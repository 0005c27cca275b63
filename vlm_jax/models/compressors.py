"""Token compressors: `[B, N, C]` patch features -> `[B, V, C]`, registry by name.

Every compressor is called as `module(x, x_multi=None, text=None)` with
x `[B, G*G, C]` (selected layer), x_multi `[B, G*G, C_multi]` (several layers concatenated),
text `[B, D_llm]` (the question's query vector). Class attributes say what each one needs.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from vlm_jax.models.config import CompressorConfig


class Identity(nn.Module):
    """No compression: V = N."""

    needs_multi = False
    needs_text = False

    @nn.compact
    def __call__(self, x: jax.Array, x_multi: jax.Array | None = None,
                 text: jax.Array | None = None) -> jax.Array:
        return x


REGISTRY: dict[str, type[nn.Module]] = {"identity": Identity}


def build(cfg: CompressorConfig, *, grid: int, width: int, text_width: int) -> nn.Module:
    """The compressor `cfg.name` for a `grid x grid` map of `width` channels."""
    if cfg.name not in REGISTRY:
        raise ValueError(f"unknown compressor {cfg.name!r}; known: {sorted(REGISTRY)}")
    if cfg.name == "identity":
        return Identity()
    return REGISTRY[cfg.name](cfg=cfg, grid=grid, width=width, text_width=text_width)
