"""Visual-token pruning inside the LLM forward (docs/algorithms.md section 4).

`VLM.forward(..., prune=spec)` passes the decoder the `LayerHook` that `spec.hook(...)` builds;
the decoder runs its one layer loop and calls the hook between layers. Before layer l, if
`keep[l] < keep[l-1]`, the top-`keep[l]` visual tokens by the spec's score (the importance
computed in layer l-1, or DART's duplication, or the random control: `SCORES`) survive, in
original order and with their original rotary positions; the others leave the
sequence (shapes shrink). Text and padding tokens are never removed, so every example keeps the
same number of tokens and shapes stay static: one compile per schedule. With a cache (fresh,
prefill), layer l's cache receives the `L - V + keep[l]` tokens present at layer l; see
`cache_sizes`. This module imports no model code: the decoder only calls the hook.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.kernels.importance_attention import last_token_weights, text_after_weights
from vlm_jax.pruning import ops
from vlm_jax.pruning.schedules import ScheduleError, validate
from vlm_jax.pruning.selection import dart_scores, random_scores

QUERY_SETS = ("last", "text")
# What ranks the visual tokens at a drop: "attention" (the mass the query set pays them in the
# layer before, from the importance kernel), "dart" (duplication of the hidden states: no
# attention map) or "random" (the seeded control); see vlm_jax.pruning.selection.
SCORES = ("attention", "dart", "random")


@dataclasses.dataclass(frozen=True)
class PruneSpec:
    """Static pruning settings (hashable: a jit static argument).

    keep: visual tokens present at each decoder layer. query: the query set whose attention
    ranks visual tokens: "last" (the last real token, FastV code) or "text" (all text tokens
    after the image, prompt-aware). impl: one of `ops.IMPLS` for importance and compaction.
    record: also return every layer's importance (diagnostics). score: one of `SCORES`; with
    "dart" or "random" no layer computes importance (unless `record`), so every layer runs
    plain attention, and `query` is unused. pivots: DART's pivot count; seed: random keep's.
    """

    keep: tuple[int, ...]
    query: str = "last"
    impl: str = "xla"
    record: bool = False
    score: str = "attention"
    pivots: int = 4
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "keep", validate(self.keep, len(self.keep)))
        if self.query not in QUERY_SETS:
            raise ValueError(f"PruneSpec.query must be one of {list(QUERY_SETS)}, got "
                             f"{self.query!r}")
        if self.impl not in ops.IMPLS:
            raise ValueError(f"unknown pruning impl {self.impl!r}; known: {list(ops.IMPLS)}")
        if self.score not in SCORES:
            raise ValueError(f"PruneSpec.score must be one of {list(SCORES)}, got "
                             f"{self.score!r}")
        if self.score == "dart" and self.pivots < 1:
            raise ValueError(f"PruneSpec.pivots must be >= 1 for DART, got {self.pivots}")

    @property
    def num_visual(self) -> int:
        return self.keep[0] if self.keep else 0

    def check(self, depth: int, num_visual: int) -> None:
        """Raises a ScheduleError (naming the layer) if the schedule does not fit the model."""
        validate(self.keep, depth, num_visual)

    def tokens_at(self, seq_len: int) -> list[int]:
        """Sequence length present at each layer for prompts of `seq_len` tokens."""
        return [seq_len - self.num_visual + k for k in self.keep]

    def cache_sizes(self, seq_len: int, extra: int) -> list[int]:
        """Per-layer cache slots for a pruned prefill of `seq_len` tokens plus `extra` steps."""
        return [n + extra for n in self.tokens_at(seq_len)]

    def hook(self, visual: jax.Array, valid: jax.Array, query: jax.Array | None = None, *,
             depth: int, num_visual: int) -> Pruner:
        """The decoder's LayerHook for this schedule. visual, valid `[B, L]` bool (exactly V
        visual tokens per row, in one span); query: optional `[B, L]` bool query set overriding
        `self.query` (e.g. the prompt's rows when answer tokens follow it)."""
        self.check(depth, num_visual)
        if visual.shape != valid.shape:
            raise ValueError(f"visual mask {visual.shape} != valid {valid.shape}")
        _check_visual(visual, self.num_visual)
        rows = query_rows(self.query, visual, valid) if query is None else query
        return Pruner(self, visual, rows)


class PrunedOutput(NamedTuple):
    logits: jax.Array | None  # [B, L', vocab], L' = L - V + keep[-1]
    hidden: jax.Array  # [B, L', D] after the final norm
    cache: list | None  # per-layer caches, layer l holding L - V + keep[l] tokens
    index: jax.Array  # [B, L'] int32: original index of each surviving token
    importance: tuple[jax.Array, ...] | None  # record=True: per layer [B, L_l] importance


def cache_sizes(spec: PruneSpec | None, seq_len: int, extra: int, depth: int) -> list[int]:
    """Per-layer cache slots for a (pruned, unless `spec` is None) prefill plus `extra` steps."""
    return [seq_len + extra] * depth if spec is None else spec.cache_sizes(seq_len, extra)


def query_rows(mode: str, visual: jax.Array, valid: jax.Array) -> jax.Array:
    """The query set as a `[B, L]` bool mask (the kernels' query weights): "last" = the last
    real token; "text" = the real tokens after the last visual token."""
    if mode == "last":
        return last_token_weights(valid) > 0
    if mode == "text":
        idx = jnp.arange(valid.shape[1])[None]
        after = jnp.max(jnp.where(visual, idx, -1), axis=1) + 1
        return text_after_weights(valid, after) > 0
    raise ValueError(f"unknown query set {mode!r}; known: {list(QUERY_SETS)}")


def _check_visual(visual: jax.Array, num_visual: int) -> None:
    """Concrete masks only: every row holds `num_visual` visual tokens, in one span."""
    if isinstance(visual, jax.core.Tracer):
        return
    visual = np.asarray(visual)
    counts = visual.sum(axis=1)
    bad = np.flatnonzero(counts != num_visual)
    if bad.size:
        raise ScheduleError(f"schedule keeps {num_visual} visual tokens at layer 0 but example "
                            f"{int(bad[0])} has {int(counts[bad[0]])} visual tokens")
    for b, row in enumerate(visual):
        idx = np.flatnonzero(row)
        if idx.size and idx[-1] - idx[0] + 1 != idx.size:
            raise ValueError(f"pruning needs one contiguous visual span per example; example "
                             f"{b} has visual tokens at {idx.tolist()[:8]}...")


class PruneState(NamedTuple):
    visual: jax.Array  # [B, L_l] bool: which present tokens are visual
    rows: jax.Array  # [B, L_l] bool: the query set among them
    index: jax.Array  # [B, L_l] int32: their original slots
    recorded: tuple[jax.Array, ...]  # record=True: the importance of each layer so far


class Pruner:
    """The LayerHook (vlm_jax.models.llm) of one schedule on one batch."""

    def __init__(self, spec: PruneSpec, visual: jax.Array, rows: jax.Array):
        self.spec, self.visual, self.rows = spec, visual, rows

    def _drops_after(self, layer: int) -> bool:
        keep = self.spec.keep
        return layer + 1 < len(keep) and keep[layer + 1] < keep[layer]

    def start(self, seq_len: int, valid: jax.Array, cache: list | None) -> PruneState:
        if seq_len < self.spec.num_visual:
            raise ScheduleError(f"schedule has V={self.spec.num_visual} but the sequence has "
                                f"{seq_len} tokens")
        if cache is not None:
            for layer, (c, need) in enumerate(zip(cache, self.spec.tokens_at(seq_len))):
                if c.slots < need:
                    raise ValueError(f"cache of layer {layer} has {c.slots} slots but the "
                                     f"pruned prefill puts {need} tokens there; size it with "
                                     "vlm_jax.pruning.cache_sizes")
        index = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32)[None], valid.shape)
        return PruneState(self.visual, self.rows, index, ())

    def request(self, layer: int, state: PruneState) -> ops.ImportanceRequest | None:
        scores_here = self.spec.score == "attention" and self._drops_after(layer)
        if self.spec.record or scores_here:
            return ops.ImportanceRequest(state.rows, self.spec.impl)
        return None

    def _scores(self, layer: int, x: jax.Array, state: PruneState,
                importance: jax.Array | None) -> jax.Array:
        """`[B, L_l]` ranking of the tokens present after `layer` (higher = kept)."""
        spec = self.spec
        if spec.score == "dart":
            return dart_scores(x, state.visual, min(spec.pivots, spec.keep[layer + 1]) or 1)
        if spec.score == "random":
            return random_scores(state.visual, spec.keep[layer], spec.seed + layer)
        return importance

    def between(self, layer: int, x, positions, valid, state: PruneState,
                importance: jax.Array | None) -> tuple[Any, ...]:
        recorded = state.recorded + ((importance,) if self.spec.record else ())
        state = state._replace(recorded=recorded)
        if not self._drops_after(layer):
            return x, positions, valid, state
        keep = self.spec.keep
        _, (x, positions, valid, visual, rows, index) = ops.select_and_compact(
            self._scores(layer, x, state, importance), state.visual, keep[layer], keep[layer + 1],
            (x, positions, valid, state.visual, state.rows, state.index), self.spec.impl)
        return x, positions, valid, PruneState(visual, rows, index, recorded)

    def finish(self, out, state: PruneState) -> PrunedOutput:
        return PrunedOutput(out.logits, out.hidden, out.cache, state.index,
                            state.recorded if self.spec.record else None)
