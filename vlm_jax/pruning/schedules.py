"""Pruning schedules: `keep[l]`, the visual tokens present at decoder layer l (docs/algorithms.md section 4).

A schedule is a plain tuple of ints, one per decoder layer, non-increasing, `keep[0] == V`
(pruning before layer l ranks tokens by the attention of layer l-1, so layer 0 has nothing to
rank by). Everything here is host-side Python: a bad schedule fails before anything is traced
or compiled, with the layer at fault named.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from vlm_jax.io import write_json_atomic


class ScheduleError(ValueError):
    """A schedule that cannot be run on this model."""


def validate(keep: Sequence[int], depth: int, num_visual: int | None = None,
             where: str = "schedule") -> tuple[int, ...]:
    """The schedule as a tuple of ints, or a ScheduleError naming the first bad layer.

    Checks: one entry per decoder layer; integer, non-negative counts; non-increasing with depth;
    no layer keeps more than the `num_visual` (V) tokens that exist; `keep[0] == V`.
    """
    if isinstance(keep, (str, bytes)) or not isinstance(keep, Sequence | np.ndarray):
        raise ScheduleError(f"{where}: expected a sequence of per-layer counts, got {keep!r}")
    keep = list(keep)
    if len(keep) != depth:
        raise ScheduleError(f"{where} has {len(keep)} layers but the LLM has {depth} decoder "
                            f"layers; give one kept-token count per layer")
    out = []
    for layer, k in enumerate(keep):
        if isinstance(k, bool) or not float(k).is_integer():
            raise ScheduleError(f"{where}: layer {layer} keeps {k!r} tokens; counts must be "
                                "integers")
        k = int(k)
        if k < 0:
            raise ScheduleError(f"{where}: layer {layer} keeps a negative count ({k})")
        if num_visual is not None and k > num_visual:
            raise ScheduleError(f"{where}: layer {layer} keeps {k} visual tokens but only "
                                f"{num_visual} exist")
        if out and k > out[-1]:
            raise ScheduleError(f"{where}: layer {layer} keeps {k} tokens, more than layer "
                                f"{layer - 1} ({out[-1]}); removed tokens cannot come back, "
                                "so a schedule must be non-increasing with depth")
        out.append(k)
    if num_visual is not None and out and out[0] != num_visual:
        raise ScheduleError(f"{where}: layer 0 keeps {out[0]} of {num_visual} visual tokens; "
                            "layer 0 must keep all of them (pruning before layer l ranks tokens "
                            "by the attention of layer l-1)")
    return tuple(out)


def full(depth: int, num_visual: int) -> tuple[int, ...]:
    """No pruning: every layer keeps all V tokens."""
    return (num_visual,) * depth


def fastv(depth: int, num_visual: int, k: int, ratio: float) -> tuple[int, ...]:
    """FastV(K, R): `keep[l] = V` for `l < K`, `round((1 - R) V)` from layer K on."""
    if not 1 <= k <= depth:
        raise ScheduleError(f"FastV K={k} must be in [1, depth={depth}] (layer 0 keeps all)")
    if not 0.0 <= ratio <= 1.0:
        raise ScheduleError(f"FastV ratio R={ratio} must be in [0, 1]")
    pruned = int(round((1.0 - ratio) * num_visual))
    return validate([num_visual] * k + [pruned] * (depth - k), depth, num_visual, "FastV")


def psigmoid(depth: int, num_visual: int, k: float, l0: float, b: float) -> tuple[int, ...]:
    """P-Sigmoid: `round(V (b + (1 - b) / (1 + exp(k (l - l0)))))`, made non-increasing,
    `keep[0] = V`."""
    if not 0.0 <= b <= 1.0:
        raise ScheduleError(f"P-Sigmoid floor b={b} must be in [0, 1]")
    keep = [num_visual]
    for layer in range(1, depth):
        z = float(np.clip(k * (layer - l0), -500.0, 500.0))
        frac = b + (1.0 - b) / (1.0 + math.exp(z))
        keep.append(min(keep[-1], int(round(num_visual * frac))))
    return validate(keep, depth, num_visual, "P-Sigmoid")


def pyramiddrop(depth: int, num_visual: int, stages: int = 4, ratio: float = 0.5
                ) -> tuple[int, ...]:
    """PyramidDrop (Xing et al., arXiv 2410.17247) as a schedule.

    The decoder is cut into `stages` runs of equal depth; at the end of every run but the last,
    the visual tokens still present are ranked (by the attention the last instruction token pays
    them) and only a fraction `ratio` of them goes on, so the count shrinks geometrically from
    stage to stage: `keep[l] = round(V * ratio ** floor(l * stages / depth))`.
    """
    if not 1 <= stages <= depth:
        raise ScheduleError(f"PyramidDrop stages={stages} must be in [1, depth={depth}]")
    if not 0.0 < ratio <= 1.0:
        raise ScheduleError(f"PyramidDrop ratio={ratio} must be in (0, 1]")
    keep = [int(round(num_visual * ratio ** (layer * stages // depth))) for layer in range(depth)]
    return validate(keep, depth, num_visual, "PyramidDrop")


def average_kept(keep: Sequence[int]) -> float:
    """Average visual tokens present over the decoder layers."""
    return float(np.mean(keep))


def from_config(cfg, depth: int, num_visual: int) -> tuple[int, ...]:
    """A schedule from a config section: `method` in {'full', 'explicit', 'fastv', 'psigmoid',
    'pyramiddrop', 'file'} with keys `keep`, `fastv_k`/`fastv_r`, `psigmoid_k`/`_l0`/`_b`,
    `pyramiddrop_stages`/`_ratio`, `schedule_file`."""
    method = cfg.get("method", "full")
    if method == "full":
        return full(depth, num_visual)
    if method == "explicit":
        return validate(tuple(cfg.keep), depth, num_visual, "prune.keep")
    if method == "fastv":
        return fastv(depth, num_visual, int(cfg.fastv_k), float(cfg.fastv_r))
    if method == "psigmoid":
        return psigmoid(depth, num_visual, float(cfg.psigmoid_k), float(cfg.psigmoid_l0),
                        float(cfg.psigmoid_b))
    if method == "pyramiddrop":
        return pyramiddrop(depth, num_visual, int(cfg.get("pyramiddrop_stages", 4)),
                           float(cfg.get("pyramiddrop_ratio", 0.5)))
    if method == "file":
        return load(cfg.schedule_file, depth, num_visual)
    raise ScheduleError(f"unknown schedule method {method!r}; known: full, explicit, fastv, "
                        "psigmoid, pyramiddrop, file")


def save(path: str, keep: Sequence[int], **info) -> None:
    """Writes `{"keep": [...], "avg_kept": ..., **info}` as JSON (atomically)."""
    obj = {"keep": [int(k) for k in keep], "avg_kept": average_kept(keep), **info}
    write_json_atomic(path, obj, indent=1)


def load(path: str, depth: int, num_visual: int) -> tuple[int, ...]:
    """A schedule JSON file (`{"keep": [...]}`) checked against the model."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ScheduleError(f"cannot read schedule file {path}: {e}") from e
    if not isinstance(obj, dict) or "keep" not in obj:
        raise ScheduleError(f"schedule file {path} has no 'keep' list")
    return validate(obj["keep"], depth, num_visual, f"schedule file {path}")
