"""The decoder's KV cache: one `LayerCache` per layer, or one stacked over layers.

A cache is a list of `LayerCache` (one per layer; layers may hold different slot counts S, as a
pruned prefill leaves them) or, for a decoder with `scan_layers`, one `LayerCache` whose arrays
carry a leading layer axis (`k`, `v`: `[depth, B, S, KV, Dh]`, `valid`: `[depth, B, S]`,
`end`: `[depth]`), which the scanned layers read and write in one go.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from vlm_jax.models.config import LLMConfig
from vlm_jax.models.layers import dtype_of


@struct.dataclass
class LayerCache:
    """Keys/values of the tokens a layer has seen so far.

    k, v: `[B, S, KV, Dh]`; valid: `[B, S]` bool (False = empty slot or padding);
    end: int32 scalar, the first free slot (a stacked cache adds a leading layer axis to all).
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    end: jax.Array

    @property
    def slots(self) -> int:
        """S: how many tokens this cache can hold."""
        return self.valid.shape[-1]


def empty_layer_cache(cfg: LLMConfig, batch: int, slots: int, dtype=None) -> LayerCache:
    """An empty cache of `slots` tokens for one layer."""
    dt = dtype or dtype_of(cfg.dtype)
    shape = (batch, slots, cfg.kv_heads, cfg.dim_per_head)
    return LayerCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt), jnp.zeros((batch, slots), bool),
                      jnp.zeros((), jnp.int32))


def init_cache(cfg: LLMConfig, batch: int, sizes: int | list[int], dtype=None
               ) -> list[LayerCache] | LayerCache:
    """An empty cache; `sizes` is the slot count of every layer (an int) or one per layer.

    One int for a decoder with `cfg.scan_layers` gives the stacked cache its scanned layers
    run on; per-layer sizes (or an unscanned decoder) give a list.
    """
    if isinstance(sizes, int):
        if cfg.scan_layers:
            one = empty_layer_cache(cfg, batch, sizes, dtype)
            return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (cfg.depth, *a.shape)),
                                          one)
        sizes = [sizes] * cfg.depth
    sizes = list(sizes)
    if len(sizes) != cfg.depth:
        raise ValueError(f"cache sizes has {len(sizes)} entries for {cfg.depth} layers")
    return [empty_layer_cache(cfg, batch, s, dtype) for s in sizes]
