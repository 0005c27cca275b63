"""Batched greedy generation with the KV cache, stop tokens and an optional pruning schedule.

Prompts `[B, L]` may be left- or right-padded (`valid` False on padding): each row keeps its own
positions and its first token comes from its last real token, so padding never changes a row's
answer. With `prune` (a static, hashable pruning request such as `vlm_jax.pruning.PruneSpec`:
its `hook` goes to `VLM.forward`, its `cache_sizes(seq_len, extra)` sizes the per-layer cache;
None = unpruned) the prefill drops visual tokens inside the LLM and layer l's cache holds the
tokens present at layer l.

`prefill` and `decode` are jitted once per (module, max_new_tokens, prune, shapes) and shared
by every `Generator`; `prefill(module, 1, prune, params, inputs)` is time to first token.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.models.cache import LayerCache, init_cache
from vlm_jax.models.llm import default_positions
from vlm_jax.models.vlm import VLM, last_valid_index

PruneRequest = Any  # a pruning request: `.hook(...)` for VLM.forward, `.cache_sizes(n, extra)`


@dataclasses.dataclass
class Generation:
    tokens: np.ndarray  # [B, T] generated ids, `pad_id` after the stop token
    lengths: np.ndarray  # [B] tokens before (and excluding) the stop token
    prefill_s: float  # time to first token (prefill + first argmax), seconds
    decode_s_per_token: float  # mean time of one decode step, seconds


def _head(module: VLM, hidden: jax.Array) -> jax.Array:
    return module.language_model.head(hidden)


@partial(jax.jit, static_argnums=(0, 1, 2))
def prefill(module: VLM, max_new_tokens: int, prune: PruneRequest | None, params, inputs: dict
            ) -> tuple[jax.Array, jax.Array, list[LayerCache] | LayerCache]:
    """(first token `[B]` int32, last position `[B]`, cache sized for `max_new_tokens` more).

    inputs: a batch keyed as `vlm_jax.batch`: `images [B, H, W, 3]`, `tokens [B, L]`, `valid
    [B, L]` bool (all True if absent), optional `question`, `question_valid [B, Lq]` (models
    whose `cfg.uses_text_query`).
    """
    tokens = inputs["tokens"]
    b, n = tokens.shape
    valid = inputs.get("valid")
    valid = jnp.ones(tokens.shape, bool) if valid is None else valid.astype(bool)
    positions = default_positions(valid)
    sizes = n + max_new_tokens if prune is None else prune.cache_sizes(n, max_new_tokens)
    cache = init_cache(module.cfg.llm, b, sizes)
    variables = {"params": params}
    out = module.apply(variables, inputs["images"], tokens, valid, positions, inputs.get("question"),
                       inputs.get("question_valid"), cache=cache, logits=False, prune=prune,
                       method="forward")
    kept_valid = valid if prune is None else jnp.take_along_axis(valid, out.index, axis=1)
    last_hidden = out.hidden[jnp.arange(b), last_valid_index(kept_valid)][:, None]
    first = jnp.argmax(module.apply(variables, last_hidden, method=_head)[:, 0], axis=-1)
    return first.astype(jnp.int32), jnp.max(positions, axis=1), out.cache


@partial(jax.jit, static_argnums=(0, 1))
def decode(module: VLM, max_new_tokens: int, params, first: jax.Array, last_pos: jax.Array,
           cache: list[LayerCache] | LayerCache) -> jax.Array:
    """Greedy tokens `[B, max_new_tokens]`: `first`, then `max_new_tokens - 1` decode steps."""
    def step(carry, _):  # everything after a row's first stop token is masked afterwards
        tok, pos, cache = carry
        out = module.apply({"params": params}, tok[:, None], pos[:, None] + 1, cache,
                           method="decode")
        nxt = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
        return (nxt, pos + 1, out.cache), nxt

    _, rest = jax.lax.scan(step, (first, last_pos, cache), None, length=max_new_tokens - 1)
    return jnp.concatenate([first[:, None], rest.T], axis=1)


class Generator:
    """Greedy decoding of `max_new_tokens` tokens, cut at the first of `stop_ids`."""

    def __init__(self, module: VLM, max_new_tokens: int, stop_ids: tuple[int, ...] = (),
                 pad_id: int = 0, prune: PruneRequest | None = None):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.module, self.max_new, self.pad_id, self.prune = module, max_new_tokens, pad_id, prune
        self.stop_ids = np.asarray(stop_ids or (-1,), np.int32)

    def tokens(self, params, inputs: dict) -> jax.Array:
        """Raw greedy tokens `[B, max_new_tokens]` (no stop-token handling, not timed)."""
        return decode(self.module, self.max_new, params,
                      *prefill(self.module, self.max_new, self.prune, params, inputs))

    def __call__(self, params, inputs: dict) -> Generation:
        """inputs: see `prefill`. Timed: the first call of a shape also compiles."""
        t0 = time.perf_counter()
        state = jax.block_until_ready(prefill(self.module, self.max_new, self.prune, params,
                                              inputs))
        t1 = time.perf_counter()
        out = np.asarray(jax.block_until_ready(decode(self.module, self.max_new, params, *state)))
        t2 = time.perf_counter()
        is_stop = np.isin(out, self.stop_ids)
        lengths = np.where(is_stop.any(1), is_stop.argmax(1), out.shape[1])
        out = np.where(np.arange(out.shape[1])[None] >= lengths[:, None], self.pad_id, out)
        return Generation(out, lengths, t1 - t0, (t2 - t1) / max(self.max_new - 1, 1))
