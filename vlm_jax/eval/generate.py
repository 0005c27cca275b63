"""Batched greedy generation with the KV cache and stop tokens.

Prompts are left-padded (`[B, L]`, `valid` False on padding) so every row ends at the same
slot; each row keeps its own positions, so padding never changes a row's answer.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.models.llm import default_positions, init_cache
from vlm_jax.models.vlm import VLM


@dataclasses.dataclass
class Generation:
    tokens: np.ndarray  # [B, T] generated ids, `pad_id` after the stop token
    lengths: np.ndarray  # [B] tokens before (and excluding) the stop token
    prefill_s: float  # time to first token (prefill + first argmax), seconds
    decode_s_per_token: float  # mean time of one decode step, seconds


class Generator:
    """Compiles prefill and the decode loop once per (batch shape, max_new_tokens, prune)."""

    def __init__(self, module: VLM, max_new_tokens: int, stop_ids: tuple[int, ...],
                 pad_id: int = 0, prune=None):
        self.module, self.max_new, self.pad_id, self.prune = module, max_new_tokens, pad_id, prune
        self.stop_ids = jnp.asarray(stop_ids or (-1,), jnp.int32)
        self._prefill = jax.jit(self._prefill_fn)
        self._decode = jax.jit(self._decode_fn)

    def _prefill_fn(self, params, inputs):
        b, n = inputs["tokens"].shape
        valid = inputs["valid"]
        positions = default_positions(valid)
        if self.prune is None:
            cache, extra = init_cache(self.module.cfg.llm, b, n + self.max_new), {}
        else:  # every layer's cache holds the tokens present at that layer (pruned prefill)
            from vlm_jax.pruning.forward import cache_sizes
            sizes = cache_sizes(self.prune, n, self.max_new, self.module.cfg.llm.depth)
            cache, extra = init_cache(self.module.cfg.llm, b, sizes), {"prune": self.prune}
        out = self.module.apply({"params": params}, inputs["image"], inputs["tokens"], valid,
                                positions, inputs.get("question"), inputs.get("question_valid"),
                                cache=cache, method="forward", **extra)
        first = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
        return first, positions[:, -1], out.cache

    def _decode_fn(self, params, first, last_pos, cache):
        def step(carry, _):  # everything after a row's first stop token is masked afterwards
            tok, pos, cache = carry
            out = self.module.apply({"params": params}, tok[:, None], pos[:, None] + 1, cache,
                                    method="decode")
            nxt = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
            return (nxt, pos + 1, out.cache), nxt

        _, rest = jax.lax.scan(step, (first, last_pos, cache), None, length=self.max_new - 1)
        return jnp.concatenate([first[:, None], rest.T], axis=1)

    def __call__(self, params, inputs: dict) -> Generation:
        """inputs: `image`, `tokens`, `valid` (+ `question`, `question_valid`)."""
        t0 = time.perf_counter()
        first, last_pos, cache = jax.block_until_ready(self._prefill(params, inputs))
        t1 = time.perf_counter()
        out = np.asarray(jax.block_until_ready(self._decode(params, first, last_pos, cache)))
        t2 = time.perf_counter()
        is_stop = np.isin(out, np.asarray(self.stop_ids))
        lengths = np.where(is_stop.any(1), is_stop.argmax(1), out.shape[1])
        out = np.where(np.arange(out.shape[1])[None] >= lengths[:, None], self.pad_id, out)
        return Generation(out, lengths, t1 - t0, (t2 - t1) / max(self.max_new - 1, 1))


@partial(jax.jit, static_argnums=0)
def prefill_logits(module: VLM, params, inputs: dict) -> jax.Array:
    """Last-position logits `[B, vocab]` of a prompt batch (for scoring / timing)."""
    positions = default_positions(inputs["valid"])
    out = module.apply({"params": params}, inputs["image"], inputs["tokens"], inputs["valid"],
                       positions, inputs.get("question"), inputs.get("question_valid"),
                       method="forward")
    return out.logits[:, -1]
