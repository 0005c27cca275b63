"""In-LLM visual-token pruning: accuracy vs measured prefill speed-up, one table for all methods.

    python -m vlm_jax.bench.pruning

With no arguments: every method and control on the pruning benchmark model, trained first if
absent (`vlm_jax.bench.pruning_suite`). With arguments:

    python -m vlm_jax.bench.pruning [--model bench-100m] [--checkpoint DIR] [--n 4] [--runs 5]
        [--source random|eval] [--calib_split test] [--score_split ''] [--timing_batch 1]
        [--max_drop 1]

Model: `--checkpoint` (a training run directory or a Hugging Face directory) or `--model`: a
preset name, or `bench-100m` (default: a ~100M-parameter Llama-style decoder, width 768, 12
layers, fed 576 visual tokens by a negligible tiny vision tower, so CPU timings measure the
LLM prefill). Calibration: `--source random` (accuracy = agreement of greedy answers with the
unpruned model) or `eval` (a training run's eval split, task score). Methods: unpruned, FastV
(K, R) settings, P-Sigmoid by Bayesian optimisation under an average-token budget, G-Search.

Prints the cost table (`vlm_jax.pruning.report`), then one JSON line: `best` (`method`,
`speedup`, `accuracy_drop` in points (1 = 0.01 accuracy): the fastest measured time to first
token whose drop is at most `--max_drop` points, else the smallest drop) and
`min_efficiency` (the smallest measured /
FLOPs-predicted prefill speed-up over the pruned rows), and `rows`: every method's cost report
(`CostReport.to_dict`: schedule, FLOPs, time to first token, metric and the ratios).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import ml_collections
import numpy as np

from vlm_jax.models.config import CompressorConfig, LLMConfig, ViTConfig, VLMConfig, to_dict
from vlm_jax.pruning import report, runner
from vlm_jax.pruning.forward import PruneSpec
from vlm_jax.pruning.gsearch import EvalCache

FASTV = "2:0.5,2:0.75,2:0.875,3:0.5"  # K:R settings (FastV paper: K = 2 or 3)


def bench_100m() -> VLMConfig:
    """~100M decoder parameters (plus embeddings) at 576 visual tokens; the vision tower and
    projector are a rounding error of the prefill cost."""
    llm = LLMConfig(family="llama", vocab_size=32001, width=768, depth=12, heads=12, kv_heads=12,
                    mlp_dim=2048, max_len=2048)
    vision = ViTConfig("clip", 96, 4, 32, 2, 4, 64)  # 24 x 24 = 576 patches
    return VLMConfig(vision=vision, llm=llm, compressor=CompressorConfig(),
                     image_token_id=32000)


def _config(args) -> ml_collections.ConfigDict:
    d = runner.default_config().to_dict()
    d["model"] = to_dict(bench_100m()) if args.model == "bench-100m" else args.model
    c = ml_collections.ConfigDict(d)
    c.checkpoint, c.init_seed = args.checkpoint, args.seed
    c.calib.update(source=args.source, num_examples=args.n, batch_size=args.n, split=args.calib_split,
                   prompt_len=args.text, answer_len=args.answer_len, max_pad=0)
    c.prune.update(metric="accuracy", query=args.query, impl=args.impl)
    return c


def main(argv=None) -> dict:
    if not argv:  # the benchmark of every method on the benchmark model
        from vlm_jax.bench import pruning_suite
        return pruning_suite.main([])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bench-100m")
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--source", default="random", choices=("random", "eval"))
    ap.add_argument("--n", type=int, default=4, help="calibration examples")
    ap.add_argument("--text", type=int, default=62, help="prompt text tokens (random source)")
    ap.add_argument("--answer_len", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5,
                    help="timed rounds, round-robin over the methods (median per method)")
    ap.add_argument("--timing_batch", type=int, default=1,
                    help="prompts per timed prefill (the first of the calibration set)")
    ap.add_argument("--calib_split", default="test",
                    help="eval source: the split G-Search / P-Sigmoid calibrate on")
    ap.add_argument("--score_split", default="",
                    help="eval source: a held-out split every method is scored on ('' = the "
                         "calibration split)")
    ap.add_argument("--cache", default="", help="JSON file memoising metric values (reruns)")
    ap.add_argument("--query", default="last", choices=("last", "text"))
    ap.add_argument("--impl", default="xla")
    ap.add_argument("--fastv", default=FASTV, help="FastV K:R settings, comma-separated")
    ap.add_argument("--budget", type=float, default=0.5, help="P-Sigmoid avg-token fraction")
    ap.add_argument("--trials", type=int, default=8, help="P-Sigmoid BO trials (0: skip)")
    ap.add_argument("--gsearch", type=int, default=1, help="run G-Search (0: skip)")
    ap.add_argument("--grid", default="0,0.125,0.25,0.5,0.75,1", help="G-Search fractions")
    ap.add_argument("--eps", type=float, default=0.0)
    ap.add_argument("--max_drop", type=float, default=1.0,
                    help="allowed accuracy loss in points (1 point = 0.01 accuracy)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    c = runner.checked_config(_config(args))
    cfg, params, train_cfg = runner.load_model(c)
    params = jax.device_put(params)
    depth, v = cfg.llm.depth, cfg.num_visual_tokens
    calib, metric_fn = runner.calibration(cfg, params, train_cfg, c)
    metric = EvalCache(metric_fn, args.cache or None)
    score = metric
    if args.score_split and args.score_split != args.calib_split:
        if args.source != "eval":
            raise ValueError("--score_split needs --source eval")
        held_out = ml_collections.ConfigDict(c.to_dict())
        held_out.calib.split = args.score_split
        score = EvalCache(runner.calibration(cfg, params, train_cfg, held_out)[1])
    text = int(np.median(np.asarray(calib["valid"]).sum(1))) - v
    timing = {k: np.asarray(x[:args.timing_batch]) for k, x in calib.items() if k != "answers"}

    methods = [("unpruned", dict(method="full"))]
    for item in filter(None, args.fastv.split(",")):
        k, r = int(item.split(":")[0]), float(item.split(":")[1])
        if k < depth:
            methods.append((f"fastv K={k} R={r:g}", dict(method="fastv", fastv_k=k, fastv_r=r)))
    if args.trials:
        methods.append((f"psigmoid avg<={args.budget:g}V", dict(
            method="psigmoid", budget=args.budget, budget_kind="tokens", n_trials=args.trials,
            seed=args.seed)))
    if args.gsearch:
        methods.append((f"gsearch eps={args.eps:g}", dict(
            method="gsearch", grid=(), eps=args.eps,
            grid_fractions=tuple(float(f) for f in args.grid.split(",")))))
    candidates = []
    for name, overrides in methods:  # the pruning runner's own search / schedule per method
        p = ml_collections.ConfigDict(dict(c.prune.to_dict(), **overrides))
        candidates.append((name, runner.find_schedule(p, metric, depth, v, text, cfg.llm)[0]))
    specs = {name: None if name == "unpruned" else PruneSpec(keep, args.query, args.impl)
             for name, keep in candidates}
    times = runner.ttft(cfg, params, timing, specs, args.runs)
    rows, base = [], None
    for name, keep in candidates:
        rows.append(report.make_report(name, cfg.llm, keep, text, v, "accuracy", score(keep),
                                       times[name], baseline=base))
        base = base or rows[0]
    print(report.format_table(rows), flush=True)
    pruned = [r for r in rows[1:] if r.keep != rows[0].keep]
    ok = [r for r in pruned if 100 * r.metric_drop <= args.max_drop + 1e-9]
    best = (max(ok, key=lambda r: r.ttft_speedup) if ok
            else min(pruned, key=lambda r: r.metric_drop)) if pruned else rows[0]
    out = {"best": {"method": best.method, "speedup": best.ttft_speedup,
                    "accuracy_drop": 100 * best.metric_drop},  # points
           "min_efficiency": min((r.efficiency for r in pruned), default=None),
           "model": args.checkpoint or args.model, "visual_tokens": v, "text_tokens": text,
           "timing_batch": int(next(iter(timing.values())).shape[0]),
           "calib_split": args.calib_split, "score_split": args.score_split or args.calib_split,
           "backend": jax.default_backend(), "rows": [r.to_dict() for r in rows]}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
