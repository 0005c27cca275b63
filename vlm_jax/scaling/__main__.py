"""Command line: fit the law, list the frontier, count FLOPs. Each prints one JSON object.

    python -m vlm_jax.scaling fit FILE.csv --text-tokens Q [--budget C] [--plot-dir DIR]
        [--bounds paper|wide] [--mode lsq|huber] [--family F] [--bootstrap N] [--seed S]
        [--n-unit U] [--v-range LO HI]

`fit` warns on stderr and lists in the JSON (`unidentified`, `warnings`) an exponent the table
cannot identify (a single N: alpha; a single V: beta) and parameters on a bound.
    python -m vlm_jax.scaling frontier FILE.csv --text-tokens Q [--n-unit U]
    python -m vlm_jax.scaling flops PRESET --text-tokens Q [--compressor NAME --num-tokens V]
        [--question-tokens Q'] [--decode-tokens T] [--causal]

A malformed table or bad argument prints `error: ...` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings

from vlm_jax.models import flops as flops_lib
from vlm_jax.scaling.frontier import pareto_frontier
from vlm_jax.scaling.law import MODES, fit
from vlm_jax.scaling.report import verdict
from vlm_jax.scaling.table import TableError


def _fit(args: argparse.Namespace) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        law = fit(args.table, bounds=args.bounds, mode=args.mode, n_bootstrap=args.bootstrap,
                  seed=args.seed)
    messages = sorted({str(w.message) for w in caught})
    for m in messages:  # e.g. a single-V table: beta is not identified
        print(f"warning: {m}", file=sys.stderr)
    out = law.to_dict()
    out.update(warnings=messages, verdict=verdict(law, args.family))
    q, v_range = args.text_tokens, tuple(args.v_range)
    out.update(text_tokens=q, tokens_matter_more=law.tokens_matter_more,
               optimal_V=law.optimal_tokens(q, v_range=v_range))
    if args.budget is not None:  # FLOPs = 2 N n_unit (Q + V): the law's N is in table units
        alloc = law.optimal_allocation(q, args.budget / args.n_unit, v_range)
        out.update(budget=args.budget, optimal_V_numeric=alloc["V"], optimal_N=alloc["N"],
                   predicted_error=alloc["error"])
    if args.plot_dir:
        from vlm_jax.scaling import plots
        out["plots"] = [
            plots.plot_error_vs_flops(args.table, law, os.path.join(args.plot_dir,
                                                                    "error_vs_flops.png"),
                                      text_tokens=q, n_unit=args.n_unit),
            plots.plot_optimal_tokens(law, os.path.join(args.plot_dir, "optimal_tokens.png"),
                                      q_max=max(4 * q, 100), v_range=v_range)]
    return out


def _frontier(args: argparse.Namespace) -> dict:
    rows = pareto_frontier(args.table, text_tokens=args.text_tokens, n_unit=args.n_unit)
    return {"text_tokens": args.text_tokens, "n_unit": args.n_unit, "frontier": rows}


def _flops(args: argparse.Namespace) -> dict:
    from vlm_jax.models import presets
    from vlm_jax.models.config import CompressorConfig, LLMConfig, ViTConfig
    cfg = presets.get(args.preset)
    if isinstance(cfg, ViTConfig):
        return {"preset": args.preset, "params": flops_lib.param_count(cfg),
                "flops": flops_lib.vision_flops(cfg)}
    if isinstance(cfg, LLMConfig):
        v = args.num_tokens or 0
        return {"preset": args.preset, "params": flops_lib.param_count(cfg),
                "flops": flops_lib.llm_prefill_flops(cfg, args.text_tokens, v,
                                                     causal=args.causal),
                "simple_flops": flops_lib.simple_flops(cfg, args.text_tokens, v)}
    if args.compressor or args.num_tokens:
        comp = dataclasses.replace(cfg.compressor, name=args.compressor or cfg.compressor.name,
                                   num_tokens=args.num_tokens)
        cfg = dataclasses.replace(cfg, compressor=CompressorConfig(**dataclasses.asdict(comp)))
    return {"preset": args.preset, "params": flops_lib.param_count(cfg),
            "visual_tokens": cfg.num_visual_tokens,
            "flops": flops_lib.vlm_flops(cfg, args.text_tokens,
                                         question_tokens=args.question_tokens,
                                         decode_tokens=args.decode_tokens, causal=args.causal),
            "simple_flops": flops_lib.simple_flops(cfg, args.text_tokens)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlm_jax.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit Y = A N^-alpha V^-beta + D to a CSV of N,V,score")
    f.add_argument("table", help="CSV with columns N, V, score (any order, extra ignored)")
    f.add_argument("--text-tokens", type=float, required=True, help="Q, text tokens per query")
    f.add_argument("--budget", type=float, help="FLOPs per query C = 2 N n_unit (Q + V)")
    f.add_argument("--plot-dir", help="write error_vs_flops.png and optimal_tokens.png here")
    f.add_argument("--bounds", choices=["wide", "paper"], default="wide")
    f.add_argument("--mode", choices=MODES, default="lsq",
                   help="lsq: least squares on Y; huber: Huber loss (delta 1e-3) on log Y")
    f.add_argument("--family", help="task family (reasoning | ocr): compare with the paper")
    f.add_argument("--bootstrap", type=int, default=200, help="resamples for 95%% intervals")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--n-unit", type=float, default=1.0,
                   help="parameters per unit of N (1e9 when N is in billions)")
    f.add_argument("--v-range", type=float, nargs=2, default=(1, 4096), metavar=("LO", "HI"))
    f.set_defaults(run=_fit)
    fr = sub.add_parser("frontier", help="Pareto-optimal rows of a results CSV")
    fr.add_argument("table")
    fr.add_argument("--text-tokens", type=float, help="Q (unless the CSV has flops or Q)")
    fr.add_argument("--n-unit", type=float, default=1.0)
    fr.set_defaults(run=_frontier)
    fl = sub.add_parser("flops", help="FLOPs per component of a model preset")
    fl.add_argument("preset")
    fl.add_argument("--text-tokens", type=int, required=True)
    fl.add_argument("--compressor", help="replace the VLM's compressor (name)")
    fl.add_argument("--num-tokens", type=int, help="V (VLM compressor) or visual tokens (LLM)")
    fl.add_argument("--question-tokens", type=int, help="text-query pass length (default Q)")
    fl.add_argument("--decode-tokens", type=int, default=0)
    fl.add_argument("--causal", action="store_true", help="count causal attention pairs only")
    fl.set_defaults(run=_flops)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        out = args.run(args)
    except (TableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
