"""Scaling-law figures (matplotlib, Agg canvas; no pyplot state, no display needed).

- `plot_error_vs_flops`: measured error (with standard-error bars) vs inference FLOPs, one colour
  per LLM size, one marker per token count V (also written beside each point), the fitted law
  along V for every LLM size with its exponents in the legend, the image-blind prior, and the
  Pareto-optimal line.
- `plot_optimal_tokens`: the compute-optimal V* against the text tokens Q of a fitted law.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vlm_jax.scaling.frontier import inference_flops, pareto_frontier
from vlm_jax.scaling.law import Law
from vlm_jax.scaling.table import check_law_table, read_table

_MARKERS = "osD^v<>ph*P"


def _save(fig: Figure, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_error_vs_flops(table: Any, law: Law | None, path: str | os.PathLike, *,
                        text_tokens: float, n_unit: float = 1.0, title: str | None = None,
                        stderr: Sequence[float] | None = None,
                        blind: Sequence[float | None] | None = None,
                        intervals: Mapping[str, Sequence[float]] | None = None) -> str:
    """Writes the error-vs-FLOPs figure of `table` (rows N, V, score) to `path` (PNG).

    FLOPs per query are `2 N n_unit (Q + V)`; `law` (fitted on the table's N) draws one curve
    per LLM size and puts its exponents (with `intervals`, {name: (lo, hi)}) in the legend
    (None: points and frontier only). `stderr` (per row) draws error bars; `blind` (per row,
    the image-blind error prior's score) a dotted line at 1 - its mean. Returns the path.
    """
    t = read_table(table)
    check_law_table(t, min_points=1)
    n_, v_, err = t["N"], t["V"], 1.0 - t["score"]
    cost = inference_flops(n_, v_, text_tokens, n_unit)
    sizes, tokens = np.unique(n_), np.unique(v_)
    cmap = colormaps["viridis"]
    colours = [cmap(i / max(1, len(sizes) - 1)) for i in range(len(sizes))]
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    for ci, n in enumerate(sizes):
        rows = n_ == n
        label = f"N={n:g}"
        for vi, v in enumerate(tokens):
            sel = rows & (v_ == v)
            if sel.any():
                ax.errorbar(cost[sel], err[sel], yerr=None if stderr is None else
                            np.asarray(stderr, float)[sel], color=colours[ci], ls="none",
                            marker=_MARKERS[vi % len(_MARKERS)], capsize=3, zorder=3,
                            label=label)
                label = None
        for x, y, v in zip(cost[rows], err[rows], v_[rows]):
            ax.annotate(f"{v:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        if law is not None:
            vs = np.geomspace(v_.min(), v_.max(), 100)
            ax.plot(inference_flops(n, vs, text_tokens, n_unit), law.predict(n, vs),
                    color=colours[ci], lw=1, alpha=0.8)
    known = [b for b in (blind or ()) if b is not None]
    if known:
        ax.axhline(1.0 - float(np.mean(known)), color="grey", ls=":", lw=1.2,
                   label=f"image-blind prior ({1.0 - float(np.mean(known)):.3f})")
    if law is not None:
        iv = dict(intervals or {})
        fmt = lambda k: f"{k}={getattr(law, k):.3g}" + (
            f" [{iv[k][0]:.2g}, {iv[k][1]:.2g}]" if k in iv else "")
        ax.plot([], [], color="grey", lw=1, label=f"fit: {fmt('alpha')}, {fmt('beta')}")
    front = pareto_frontier(t, text_tokens=text_tokens, n_unit=n_unit)
    ax.step([r["flops"] for r in front], [r["error"] for r in front], where="post", color="k",
            ls="--", lw=1.2, label="Pareto frontier", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel(f"inference FLOPs per query, 2N(Q+V), Q={text_tokens:g}")
    ax.set_ylabel("error (1 - score)")
    if law is not None:
        title = title or (f"Y = {law.A:.3g} N^-{law.alpha:.3g} V^-{law.beta:.3g} + {law.D:.3g}")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_optimal_tokens(law: Law, path: str | os.PathLike, *, q_max: float = 200,
                        v_range: tuple[float, float] = (1, 4096)) -> str:
    """Writes V*(Q) for Q in [0, q_max] of `law` to `path` (PNG); returns the path."""
    qs = np.linspace(0, q_max, 201)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vs = np.array([law.optimal_tokens(q, v_range=v_range) for q in qs])
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(qs, vs, color="C0")
    ax.set_yscale("log")
    ax.set_xlabel("text tokens per query, Q")
    ax.set_ylabel("compute-optimal visual tokens, V*")
    regime = ("beta >= alpha: tokens matter more" if law.tokens_matter_more else
              f"V* = beta Q / (alpha - beta), alpha={law.alpha:.3g}, beta={law.beta:.3g}")
    ax.set_title(regime, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)
