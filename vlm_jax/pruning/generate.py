"""Pruned prefill + greedy decoding from the per-layer caches, jitted once per (model, schedule,
steps, shapes).

`generate(cfg, params, batch, spec, steps) -> [B, steps]` int32: the prompt (left- or
right-padded, exactly V image placeholders per row) is prefilled with pruning, the first token
comes from the prefill, the others from `VLM.decode` on the pruned caches. `steps=1` is time to
first token.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from vlm_jax.models.config import VLMConfig
from vlm_jax.models.llm import default_positions, init_cache
from vlm_jax.models.vlm import VLM, last_valid_index
from vlm_jax.pruning.forward import PruneSpec, cache_sizes


def _head(module: VLM, hidden: jax.Array) -> jax.Array:
    return module.language_model.head(hidden)


@functools.lru_cache(maxsize=64)
def generate_fn(cfg: VLMConfig, spec: PruneSpec | None, steps: int):
    """A jitted `(params, images, tokens, valid, question, question_valid) -> [B, steps]`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    module = VLM(cfg)

    def fn(params, images, tokens, valid, question=None, question_valid=None):
        b, n = tokens.shape
        variables = {"params": params}
        cache = init_cache(cfg.llm, b, cache_sizes(spec, n, steps, cfg.llm.depth))
        positions = default_positions(valid)
        out = module.apply(variables, images, tokens, valid, positions, question,
                           question_valid, cache, False, spec, method="forward")
        if spec is None:
            kept_valid = valid
        else:
            kept_valid = jnp.take_along_axis(valid, out.index, axis=1)
        last = last_valid_index(kept_valid)
        h_last = out.hidden[jnp.arange(b), last][:, None]
        first = jnp.argmax(module.apply(variables, h_last, method=_head)[:, 0], -1)
        next_pos = jnp.max(positions, axis=1) + 1

        def step(carry, _):
            cache, tok, pos = carry
            dec = module.apply(variables, tok[:, None], pos[:, None], cache, method="decode")
            new = jnp.argmax(dec.logits[:, 0], -1).astype(jnp.int32)
            return (dec.cache, new, pos + 1), new

        first = first.astype(jnp.int32)
        if steps == 1:
            return first[:, None]
        _, rest = jax.lax.scan(step, (out.cache, first, next_pos), None, length=steps - 1)
        return jnp.concatenate([first[:, None], rest.T], axis=1)

    return jax.jit(fn)


def generate(cfg: VLMConfig, params, batch: dict, spec: PruneSpec | None, steps: int
             ) -> jax.Array:
    """Greedy tokens `[B, steps]` for `batch` = {images, tokens, valid?, question?,
    question_valid?}."""
    tokens = batch["tokens"]
    valid = batch.get("valid")
    valid = jnp.ones(tokens.shape, bool) if valid is None else valid
    return generate_fn(cfg, spec, steps)(params, batch["images"], tokens, valid,
                                         batch.get("question"), batch.get("question_valid"))
