"""Visual-token pruning inside the LLM forward (docs/algorithms.md section 4).

`Decoder.__call__(..., prune=spec, visual=mask)` (and `VLM.forward(..., prune=spec)`) hand over
to `pruned_decoder` here. Before layer l, if `keep[l] < keep[l-1]`, the top-`keep[l]` visual
tokens by the importance computed in layer l-1 survive, in original order and with their
original rotary positions; the others leave the sequence (shapes shrink). Text and padding
tokens are never removed, so every example keeps the same number of tokens and shapes stay
static: one compile per schedule. With a cache (fresh, prefill), layer l's cache receives the
`L - V + keep[l]` tokens present at layer l; see `cache_sizes`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.pruning import ops
from vlm_jax.pruning.schedules import ScheduleError, validate

QUERY_SETS = ("last", "text")


@dataclasses.dataclass(frozen=True)
class PruneSpec:
    """Static pruning settings (hashable: a jit static argument).

    keep: visual tokens present at each decoder layer. query: the query set whose attention
    ranks visual tokens: "last" (the last real token, FastV code) or "text" (all text tokens
    after the image, prompt-aware). impl: "xla" | "pallas" | "pallas_interpret" for importance
    and compaction (see `ops`).
    record: also return every layer's importance (diagnostics).
    """

    keep: tuple[int, ...]
    query: str = "last"
    impl: str = "xla"
    record: bool = False

    def __post_init__(self):
        object.__setattr__(self, "keep", validate(self.keep, len(self.keep)))
        if self.query not in QUERY_SETS:
            raise ValueError(f"PruneSpec.query must be one of {list(QUERY_SETS)}, got "
                             f"{self.query!r}")
        ops.check_impl(self.impl)

    @property
    def num_visual(self) -> int:
        return self.keep[0] if self.keep else 0

    def check(self, depth: int, num_visual: int) -> None:
        """Raises a ScheduleError (naming the layer) if the schedule does not fit the model."""
        validate(self.keep, depth, num_visual)

    def tokens_at(self, seq_len: int) -> list[int]:
        """Sequence length present at each layer for prompts of `seq_len` tokens."""
        return [seq_len - self.num_visual + k for k in self.keep]


class PrunedOutput(NamedTuple):
    logits: jax.Array | None  # [B, L', vocab], L' = L - V + keep[-1]
    hidden: jax.Array  # [B, L', D] after the final norm
    cache: list | None  # per-layer caches, layer l holding L - V + keep[l] tokens
    index: jax.Array  # [B, L'] int32: original index of each surviving token
    importance: tuple[jax.Array, ...] | None  # record=True: per layer [B, L_l] importance


def cache_sizes(spec: PruneSpec | None, seq_len: int, extra: int, depth: int) -> list[int]:
    """Per-layer cache slots for a pruned prefill of `seq_len` tokens plus `extra` decode steps."""
    if spec is None:
        return [seq_len + extra] * depth
    return [n + extra for n in spec.tokens_at(seq_len)]


def query_rows(mode: str, visual: jax.Array, valid: jax.Array) -> jax.Array:
    """The query set as a `[B, L]` bool mask: "last" = the last real token; "text" = the real,
    non-visual tokens after the last visual token."""
    idx = jnp.arange(valid.shape[1])[None]
    if mode == "last":
        last = jnp.max(jnp.where(valid, idx, -1), axis=1, keepdims=True)
        return idx == last
    if mode == "text":
        last_vis = jnp.max(jnp.where(visual, idx, -1), axis=1, keepdims=True)
        return valid & ~visual & (idx > last_vis)
    raise ValueError(f"unknown query set {mode!r}; known: {list(QUERY_SETS)}")


def _check_visual(visual: jax.Array, num_visual: int, contiguous: bool) -> None:
    """Concrete masks only: every row holds `num_visual` visual tokens (in one span if asked)."""
    if isinstance(visual, jax.core.Tracer):
        return
    visual = np.asarray(visual)
    counts = visual.sum(axis=1)
    bad = np.flatnonzero(counts != num_visual)
    if bad.size:
        raise ScheduleError(f"schedule keeps {num_visual} visual tokens at layer 0 but example "
                            f"{int(bad[0])} has {int(counts[bad[0]])} visual tokens")
    if contiguous:
        for b, row in enumerate(visual):
            idx = np.flatnonzero(row)
            if idx.size and idx[-1] - idx[0] + 1 != idx.size:
                raise ValueError(f"impl 'pallas' needs one contiguous visual span per example; "
                                 f"example {b} has visual tokens at {idx.tolist()[:8]}...")


def pruned_decoder(decoder, embeds: jax.Array, positions: jax.Array, valid: jax.Array,
                   visual: jax.Array, spec: PruneSpec, query: jax.Array | None = None,
                   cache: list | None = None, logits: bool = True) -> PrunedOutput:
    """The decoder forward with pruning; `decoder` is the bound `Decoder` module.

    embeds `[B, L, D]`; positions `[B, L]` int; valid, visual `[B, L]` bool (exactly V visual
    tokens per row, at any offset); query: optional `[B, L]` bool query set overriding
    `spec.query` (e.g. the prompt's rows when answer tokens follow it).
    """
    cfg = decoder.cfg
    spec.check(cfg.depth, spec.num_visual)
    if visual is None:
        raise ValueError("pruning needs `visual` [B, L] bool marking the visual tokens")
    if visual.shape != valid.shape:
        raise ValueError(f"visual mask {visual.shape} != valid {valid.shape}")
    _check_visual(visual, spec.num_visual, contiguous=spec.impl != "xla")
    n = embeds.shape[1]
    if n < spec.num_visual:
        raise ScheduleError(f"schedule has V={spec.num_visual} but the sequence has {n} tokens")
    if cache is not None:
        if len(cache) != cfg.depth:
            raise ValueError(f"cache has {len(cache)} layers, the LLM {cfg.depth}")
        for layer, (c, need) in enumerate(zip(cache, spec.tokens_at(n))):
            if c["k"].shape[1] < need:
                raise ValueError(f"cache of layer {layer} has {c['k'].shape[1]} slots but the "
                                 f"pruned prefill puts {need} tokens there; size it with "
                                 "vlm_jax.pruning.cache_sizes")
    rows = query_rows(spec.query, visual, valid) if query is None else query
    index = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None], valid.shape)
    x, keep = embeds, spec.keep
    new_cache = None if cache is None else []
    recorded = [] if spec.record else None
    scores = None
    for layer_id, layer in enumerate(decoder.layers):
        if layer_id > 0 and keep[layer_id] < keep[layer_id - 1]:
            _, (x, positions, valid, visual, rows, index) = ops.select_and_compact(
                scores, visual, keep[layer_id - 1], keep[layer_id],
                (x, positions, valid, visual, rows, index), spec.impl)
        wants = spec.record or (layer_id + 1 < cfg.depth
                                and keep[layer_id + 1] < keep[layer_id])
        layer_cache = None if cache is None else cache[layer_id]
        if wants:
            x, c, scores = layer(x, positions, valid, layer_cache,
                                 ops.ImportanceRequest(rows, valid, spec.impl))
            scores = scores[:, :x.shape[1]]  # key slots of this prefill (fresh cache)
            if recorded is not None:
                recorded.append(scores)
        else:
            x, c = layer(x, positions, valid, layer_cache)
        if new_cache is not None:
            new_cache.append(c)
    hidden = decoder.norm(x)
    return PrunedOutput(decoder.head(hidden) if logits else None, hidden, new_cache, index,
                        None if recorded is None else tuple(recorded))
