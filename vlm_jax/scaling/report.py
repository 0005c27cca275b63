"""A sweep's results: the table, the law per task family, the verdict, the plots, the summary.

    WORKDIR/results.{csv,json}   one row per point: N, V, score_<family>, stderr_<family>,
                                 blind_<family> (the best image-blind score), costs
    WORKDIR/fit.json             per family: the least-squares law (on_bound, 95% bootstrap
                                 intervals, leave-one-point-out check), the robust (Huber on
                                 log error) law beside it, and the verdict
    WORKDIR/plots/<family>_*.png error vs inference FLOPs; optimal V against Q

The verdict says which matters more at fixed compute, judged on the bootstrap interval of
beta / alpha, and whether that matches the contrast Li et al. report (arXiv 2411.03312).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

from vlm_jax.io import write_json_atomic
from vlm_jax.scaling.law import Law, _finite_or_none, fit

# Li et al. 2024 (arXiv 2411.03312): for visual reasoning the error falls ~5x faster with LLM
# size than with visual tokens (alpha ~0.077, beta ~0.015); for OCR-like tasks the reverse.
PAPER_FINDINGS = {"reasoning": "parameters", "ocr": "tokens"}


def verdict(law: Law, family: str | None = None) -> dict[str, Any]:
    """Which matters more at fixed compute, judged on the 95% interval of beta / alpha.

    'parameters' when the whole interval lies below 1, 'tokens' when above 1, 'undetermined'
    when it holds 1 (or there is no interval, or an exponent is unidentified). Returns
    {"matters_more", "beta/alpha", "beta/alpha_interval", "paper", "matches_paper", "line"};
    `paper` is PAPER_FINDINGS[family] (None for other families) and `matches_paper` is
    True / False, or None when undetermined or the paper says nothing.
    """
    lo, hi = law.ratio_interval or (math.nan, math.nan)
    if law.unidentified or not law.ratio_interval:
        more = "undetermined"
    else:
        more = "parameters" if hi < 1 else "tokens" if lo > 1 else "undetermined"
    paper = PAPER_FINDINGS.get(family or "")
    matches = None if paper is None or more == "undetermined" else more == paper
    name = f"{family}: " if family else ""
    what = {"parameters": "parameters matter more than visual tokens at fixed compute",
            "tokens": "visual tokens matter more than parameters at fixed compute",
            "undetermined": "undetermined which matters more at fixed compute"}[more]
    interval = (f" [{lo:.3g}, {hi:.3g}]" if law.ratio_interval else " (no interval)")
    why = f"; {'; '.join(law.unidentified.values())}" if law.unidentified else ""
    if paper is None:
        judged = "the paper reports no contrast for this family"
    elif matches is None:
        judged = f"cannot say whether this matches the paper ({paper} matter more)"
    else:
        judged = (f"{'matches' if matches else 'contradicts'} the paper ({paper} matter more)")
    line = (f"{name}{what}: beta/alpha = {law.ratio:.3g}{interval} (95%), alpha = "
            f"{law.alpha:.3g}, beta = {law.beta:.3g}; {judged}{why}")
    return {"matters_more": more, "beta/alpha": _finite_or_none(law.ratio),
            "beta/alpha_interval": [_finite_or_none(r) for r in law.ratio_interval],
            "paper": paper, "matches_paper": matches, "line": line}


FLAT_KEYS = ("name", "llm", "N", "V", "compressor", "text_tokens", "score", "ttft_ms",
             "decode_ms_per_token", "prefill_gflops", "train_loss")
FAMILY_STATS = ("score", "stderr", "blind", "n")


def family_columns(families: Sequence[str]) -> list[str]:
    return [f"{stat}_{fam}" for fam in families for stat in FAMILY_STATS]


def fit_family(rows: list[dict], family: str, *, n_bootstrap: int = 200, seed: int = 0) -> dict:
    """fit.json's entry for `family`: the law, its robust twin, warnings and the verdict."""
    table = [(r["N"], r["V"], r[f"score_{family}"]) for r in rows
             if r.get(f"score_{family}") is not None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        law = fit(table, n_bootstrap=n_bootstrap, seed=seed)
        robust = fit(table, mode="huber", n_bootstrap=n_bootstrap, seed=seed)
    out = dict(law.to_dict(), robust=robust.to_dict(), verdict=verdict(law, family),
               robust_verdict=verdict(robust, family),
               warnings=sorted({str(c.message) for c in caught}))
    return out


def _csv(path: str, rows: list[dict], fields: list[str]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def tabulate_and_fit(workdir: str, rows: list[dict], families: Sequence[str],
                     text_tokens: float, n_bootstrap: int = 200) -> dict:
    """Writes results.{csv,json}, fit.json and the plots; returns the sweep summary."""
    from vlm_jax.scaling import plots

    write_json_atomic(os.path.join(workdir, "results.json"), rows)
    _csv(os.path.join(workdir, "results.csv"), rows, list(FLAT_KEYS) + family_columns(families))
    fits = {}
    for fam in families:
        try:
            fits[fam] = fit_family(rows, fam, n_bootstrap=n_bootstrap)
        except ValueError as e:  # e.g. too few points for a family: report, do not hide
            fits[fam] = {"error": str(e)}
            continue
        law = Law(*(fits[fam][k] for k in ("A", "alpha", "beta", "D")))
        fam_rows = [r for r in rows if r.get(f"score_{fam}") is not None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits[fam]["optimal_V"] = float(law.optimal_tokens(text_tokens=text_tokens))
        plots.plot_error_vs_flops(
            [(r["N"], r["V"], r[f"score_{fam}"]) for r in fam_rows], law,
            os.path.join(workdir, "plots", f"{fam}_error_vs_flops.png"), text_tokens=text_tokens,
            stderr=[r.get(f"stderr_{fam}") or 0.0 for r in fam_rows],
            blind=[r.get(f"blind_{fam}") for r in fam_rows], intervals=fits[fam]["intervals"],
            title=f"{fam}: Y = A N^-alpha V^-beta + D (least squares)")
        plots.plot_optimal_tokens(law, os.path.join(workdir, "plots", f"{fam}_optimal_tokens.png"))
    write_json_atomic(os.path.join(workdir, "fit.json"), fits)
    table = [{k: r.get(k) for k in FLAT_KEYS} | {c: r.get(c) for c in family_columns(families)}
             for r in rows]
    return {"points": len(rows), "text_tokens": text_tokens, "families": list(families),
            "fits": fits, "table": table}


def _cell(r: dict, fam: str) -> str:
    s, e, b = (r.get(f"{k}_{fam}") for k in ("score", "stderr", "blind"))
    if s is None:
        return f"{'-':>22s}"
    e = math.nan if e is None else e
    b = math.nan if b is None else b
    return f"{s:6.3f}+-{e:5.3f} (b {b:5.3f})"


def format_summary(summary: dict) -> str:
    """The points (score +- stderr, blind prior), then one fit line and one verdict per family."""
    fams = summary["families"]
    head = f"{'point':24s} {'N':>9s} {'V':>4s} " + " ".join(f"{f:>22s}" for f in fams) + \
        f" {'ttft_ms':>8s} {'GFLOPs':>8s}"
    lines = [head, "-" * len(head)]
    for r in summary["table"]:
        lines.append(f"{r['name']:24s} {r['N']:>9.3g} {int(r['V']):>4d} "
                     + " ".join(_cell(r, f) for f in fams)
                     + f" {r['ttft_ms']:8.2f} {r['prefill_gflops']:8.4f}")
    lines.append("")
    for fam, f in summary["fits"].items():
        if "error" in f:
            lines.append(f"{fam}: fit failed: {f['error']}")
            continue
        iv = f["intervals"]
        lines.append(f"{fam} fit ({f['mode']}, converged={f['converged']}): "
                     + " ".join(f"{k}={f[k]:.4g} [{iv[k][0]:.3g}, {iv[k][1]:.3g}]"
                                for k in ("A", "alpha", "beta", "D") if k in iv)
                     + f" on_bound={f['on_bound']} rmse={f['rmse']:.3g} "
                     f"loo_rms={f['loo_rms']:.3g}")
        lines.append(f"  {f['verdict']['line']}")
        lines.append(f"  robust (huber): alpha={f['robust']['alpha']:.4g} "
                     f"beta={f['robust']['beta']:.4g}; {f['robust_verdict']['matters_more']}")
    if "wall_time_s" in summary:
        lines.append(f"wall time: {summary['wall_time_s']:.0f} s")
    return "\n".join(lines)
