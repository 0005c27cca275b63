"""Every pruning method and control on the benchmark model, one cost table per run.

    python -m vlm_jax.bench.pruning          (no arguments: this benchmark)

Model: configs/prune_bench.py, trained into `workdirs/prune_bench` the first time (the trainer
logs step, rate and ETA every 50 steps) and reused after. Searches (G-Search, P-Sigmoid)
calibrate on the validation split; every method is scored on the test split (the reasoning
questions; per task, the spatial one apart since attention-based pruning is known to lose the
top of the image). Methods, at equal budgets where they compete:

- in-LLM schedules ranked by attention: FastV, PyramidDrop, P-Sigmoid (Bayesian optimisation
  under an average-token budget), G-Search;
- in-LLM, at FastV's schedule (same layer, same budget) but ranked without attention: DART
  (duplication of the hidden states) and the random-keep control (`PruneSpec.score`);
- before the LLM, at the same token count: VisionZip and uniform pooling.

Cost of each row: per-layer visual tokens, equivalent tokens (their mean over layers),
prefill FLOPs (tower + projector + LLM, `vlm_jax.models.flops`), measured time to first token
and decode time per token with the KV cache (medians of interleaved rounds, beside the load
average), score and drop per task, and the score without the spatial task beside it.
Writes `DIR/pruning_table.json` and
`DIR/pruning_speedup_vs_drop.png`; prints the table, then one JSON line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
from collections.abc import Callable

import jax
import ml_collections

from vlm_jax import batch as batch_lib
from vlm_jax import models
from vlm_jax.bench.load import load_average
from vlm_jax.eval import generate
from vlm_jax.eval.evaluator import SYNTHETIC_TASKS, evaluate
from vlm_jax.models import flops as flops_lib
from vlm_jax.models.vlm import VLM
from vlm_jax.pruning import prellm, report, schedules
from vlm_jax.pruning.forward import PruneSpec
from vlm_jax.pruning.gsearch import EvalCache, default_grid, g_search
from vlm_jax.pruning.psigmoid import psigmoid_search
from vlm_jax.train import data_feed
from vlm_jax.train.checkpoint import load_run

log = logging.getLogger(__name__)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKDIR = os.path.join("workdirs", "prune_bench")
SCORE = "reasoning"  # the eval family the table scores (the questions; captions apart)
APART = "spatial"  # the task also scored apart (attention-based pruning loses the image's top)


@dataclasses.dataclass
class Method:
    """One row: how to run it (module, prune request, placeholders per prompt) and its shape."""

    name: str
    family: str  # unpruned | schedule | selection | before-LLM
    keep: tuple[int, ...]  # visual tokens present at each LLM layer
    module: VLM
    prune: object | None = None  # what generate / evaluate take as `prune`
    tokens: int = 0  # image placeholders per prompt (V, or fewer before the LLM)


def bench_config() -> ml_collections.ConfigDict:
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import prune_bench
    return prune_bench.get_config()


def trained_step(workdir: str) -> int | None:
    """The newest committed checkpoint step of a run, looked at read-only (a run that is
    training meanwhile is left as it is)."""
    from vlm_jax.train.checkpoint import Checkpoints
    return Checkpoints(workdir, read_only=True).latest_step()


def ensure_trained(workdir: str, as_is: bool = False) -> None:
    """Trains (or resumes) configs/prune_bench.py in `workdir` unless a finished run is there
    (or, with `as_is`, any checkpoint)."""
    from vlm_jax.train.trainer import show_progress_notes, train
    config = bench_config()
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        done = trained_step(workdir)
        if done is not None and (as_is or done >= config.train.steps):
            return
    logging.getLogger("vlm_jax").setLevel(logging.INFO)
    show_progress_notes()
    print(f"training the pruning benchmark model into {workdir} "
          f"({config.train.steps} steps; progress every {config.train.log_every})", flush=True)
    config.mode = "train"
    train(config, workdir)


def whole_prefill_flops(cfg, text: int, keep, tokens: int) -> float:
    """Tower + projector + LLM prefill FLOPs of one prompt whose LLM sees `tokens` visual
    tokens at layer 0 and `keep[l]` at layer l."""
    parts = flops_lib.vlm_flops(cfg, text)
    llm = flops_lib.llm_prefill_flops(cfg.llm, text, tokens, schedule=keep)["total"]
    return parts["vision"] + parts["compressor"] + parts["projector"] * tokens / \
        cfg.num_visual_tokens + llm


def measure(methods: list[Method], params, inputs_of: Callable[[int], dict], steps: int,
            runs: int) -> dict[str, tuple[float, float]]:
    """(TTFT s, decode s per token) per method, timed round-robin."""
    fns = {}
    for m in methods:
        inputs = inputs_of(m.tokens)
        fns[f"ttft:{m.name}"] = functools.partial(generate.prefill, m.module, 1, m.prune, params,
                                                  inputs)
        state = generate.prefill(m.module, steps, m.prune, params, inputs)
        fns[f"decode:{m.name}"] = functools.partial(generate.decode, m.module, steps, params,
                                                    *state)
    t = report.measure_interleaved(fns, runs)
    return {m.name: (t[f"ttft:{m.name}"], t[f"decode:{m.name}"] / (steps - 1)) for m in methods}


def score_without(tasks: dict[str, float], family: str = SCORE, left_out: str = APART
                  ) -> float | None:
    """The family's score (the mean of its task means, as `evaluate` computes it) without the
    task `left_out`; None when no other task of the family was scored."""
    means = [s for t, s in tasks.items()
             if SYNTHETIC_TASKS.get(t, ("", ""))[1] == family and t != left_out]
    return sum(means) / len(means) if means else None


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows[1:]:
        ax.scatter(r["ttft_speedup"], r["drop_points"], s=30)
        ax.annotate(r["method"], (r["ttft_speedup"], r["drop_points"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axvline(2.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("measured TTFT speed-up vs unpruned")
    ax.set_ylabel(f"{SCORE} score drop (points, test split)")
    ax.set_title("visual-token pruning on the benchmark VLM (144 visual tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_rows(rows: list[dict], tasks: list[str]) -> str:
    head = (f"{'method':<26} {'eq_tok':>6} {'GFLOPs':>7} {'flops_x':>7} {'ttft_ms':>8} "
            f"{'ttft_x':>6} {'eff':>5} {'dec_ms':>6} {'score':>6} {'drop':>6} "
            f"{'no_' + APART[:4]:>8} {'drop':>6}  "
            + " ".join(f"{t[:8]:>8}" for t in tasks))
    lines = [head, "-" * len(head)]
    f = lambda x, s: "-" if x is None else format(x, s)
    for r in rows:
        lines.append(
            f"{r['method']:<26} {r['equivalent_tokens']:>6.1f} {r['prefill_flops'] / 1e9:>7.3f} "
            f"{f(r['flops_speedup'], '.2f'):>7} {r['ttft_ms']:>8.1f} "
            f"{f(r['ttft_speedup'], '.2f'):>6} {f(r['efficiency'], '.2f'):>5} "
            f"{r['decode_ms_per_token']:>6.2f} {r['score']:>6.3f} {f(r['drop_points'], '.2f'):>6} "
            f"{f(r[f'score_without_{APART}'], '.3f'):>8} "
            f"{f(r[f'drop_points_without_{APART}'], '.2f'):>6}  "
            + " ".join(f"{r['tasks'].get(t, float('nan')):>8.3f}" for t in tasks))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=WORKDIR, help="the benchmark model's training run")
    ap.add_argument("--n_calib", type=int, default=320, help="validation questions (searches)")
    ap.add_argument("--n_score", type=int, default=-1, help="test questions (-1: all)")
    ap.add_argument("--budget", type=int, default=36, help="visual tokens kept by the "
                    "equal-budget methods (VisionZip, pooling, FastV)")
    ap.add_argument("--layer", type=int, default=1, help="layer K where FastV prunes")
    ap.add_argument("--pivots", type=int, default=4, help="DART pivot tokens")
    ap.add_argument("--seed", type=int, default=0, help="random keep's seed")
    ap.add_argument("--psigmoid_budget", type=float, default=0.3, help="P-Sigmoid average "
                    "kept fraction")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--grid", default="0,0.0625,0.125,0.25,0.5,1", help="G-Search fractions")
    ap.add_argument("--eps", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=32, help="eval batch size")
    ap.add_argument("--timing_batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max_new_tokens", type=int, default=6)
    ap.add_argument("--max_drop", type=float, default=1.0, help="points")
    ap.add_argument("--as_is", action="store_true", help="use the latest checkpoint in "
                    "--workdir even if its training has not finished")
    args = ap.parse_args(argv)
    if args.max_new_tokens < 2:
        raise ValueError(f"--max_new_tokens={args.max_new_tokens}: decode time per token needs "
                         "at least 2 new tokens (one decode step)")

    ensure_trained(args.workdir, args.as_is)
    train_cfg, params = load_run(args.workdir)
    trained_steps = trained_step(args.workdir)
    params = jax.device_put(params)
    cfg = models.from_dict(train_cfg.model)
    depth, v = cfg.llm.depth, cfg.num_visual_tokens
    if not 0 < args.budget < v:
        raise ValueError(f"--budget={args.budget}: the equal-budget methods keep between 1 and "
                         f"{v - 1} of the model's {v} visual tokens")
    if not 0 < args.psigmoid_budget < 1:
        raise ValueError(f"--psigmoid_budget={args.psigmoid_budget}: a fraction of V in (0, 1)")
    bs = args.batch
    loaders: dict = {}

    def loader(split: str, tokens: int):
        if (split, tokens) not in loaders:
            loaders[split, tokens] = data_feed.make(train_cfg, split=split, mode="eval",
                                                    batch_size=bs,
                                                    num_visual_tokens=tokens).loader
        return loaders[split, tokens]

    def scores(m: Method, split: str, n: int) -> dict:
        out = evaluate(m.module, params, loader(split, m.tokens), prune=m.prune,
                       max_new_tokens=args.max_new_tokens, num_examples=n)
        return {"families": out["families"], "tasks": out["tasks"],
                "text_tokens": out["cost"]["text_tokens"]}

    plain = VLM(cfg)
    spec = lambda keep: PruneSpec(tuple(keep), "last", "xla")
    calib = EvalCache(lambda keep: scores(Method("calib", "schedule", keep, plain, spec(keep), v),
                                          "validation", args.n_calib)["families"][SCORE],
                      os.path.join(args.workdir, "bench_calibration_cache.json"))

    methods = [Method("unpruned", "unpruned", schedules.full(depth, v), plain, None, v)]
    add_schedule = lambda name, keep: methods.append(Method(name, "schedule", keep, plain,
                                                            spec(keep), v))
    r = 1 - args.budget / v
    fastv = schedules.fastv(depth, v, args.layer, r)
    add_schedule(f"fastv K={args.layer} R={r:.3f}", fastv)
    methods.append(Method(f"dart K={args.layer} R={r:.3f} P={args.pivots}", "selection", fastv,
                          plain, PruneSpec(fastv, score="dart", pivots=args.pivots), v))
    methods.append(Method(f"random K={args.layer} R={r:.3f}", "selection", fastv, plain,
                          PruneSpec(fastv, score="random", seed=args.seed), v))
    add_schedule("pyramiddrop S=4 l=0.5", schedules.pyramiddrop(depth, v, min(4, depth), 0.5))
    ps = psigmoid_search(calib, depth, v, args.psigmoid_budget * v, n_trials=args.trials)
    add_schedule(f"psigmoid avg<={args.psigmoid_budget:g}V", ps.keep)
    grid = default_grid(v, tuple(float(x) for x in args.grid.split(",")))
    gs = g_search(calib, depth, v, grid, args.eps)
    add_schedule(f"gsearch eps={args.eps:g}", gs.keep)
    vz = (round(args.budget * 54 / 64), args.budget - round(args.budget * 54 / 64))
    methods.append(Method(f"visionzip {vz[0]}+{vz[1]}", "before-LLM", (args.budget,) * depth,
                          prellm.VisionZipVLM(cfg, dominant=vz[0], contextual=vz[1]), None,
                          args.budget))
    methods.append(Method(f"pooling {args.budget}", "before-LLM", (args.budget,) * depth,
                          VLM(prellm.pooling_config(cfg, args.budget)), None, args.budget))

    first_batch: dict = {}

    def inputs_of(tokens: int) -> dict:
        if tokens not in first_batch:
            first = batch_lib.model_inputs(next(iter(loader("test", tokens))), batch_lib.VLM_KEYS)
            first_batch[tokens] = {k: v[:args.timing_batch] for k, v in first.items()}
        return first_batch[tokens]

    results = {m.name: scores(m, "test", args.n_score) for m in methods}
    load_before = load_average()
    times = measure(methods, params, inputs_of, args.max_new_tokens, args.runs)
    load_after = load_average()
    text = int(round(results["unpruned"]["text_tokens"]))
    rows = []
    for m in methods:
        res = results[m.name]
        fl = whole_prefill_flops(cfg, text, m.keep, m.tokens)
        ttft, dec = times[m.name]
        row = {"method": m.name, "family": m.family, "keep": list(m.keep),
               "equivalent_tokens": schedules.average_kept(m.keep), "prefill_flops": fl,
               "ttft_ms": 1e3 * ttft, "decode_ms_per_token": 1e3 * dec,
               "score": res["families"][SCORE], "tasks": res["tasks"],
               f"score_without_{APART}": score_without(res["tasks"])}
        if rows:
            base = rows[0]
            row.update(flops_speedup=base["prefill_flops"] / fl,
                       ttft_speedup=base["ttft_ms"] / row["ttft_ms"],
                       drop_points=100 * (base["score"] - row["score"]),
                       task_drop_points={t: 100 * (base["tasks"][t] - s)
                                         for t, s in res["tasks"].items()})
            apart = (base[f"score_without_{APART}"], row[f"score_without_{APART}"])
            row[f"drop_points_without_{APART}"] = None if None in apart else \
                100 * (apart[0] - apart[1])
            row["efficiency"] = row["ttft_speedup"] / row["flops_speedup"]
        else:
            row.update(flops_speedup=None, ttft_speedup=None, drop_points=None,
                       efficiency=None, task_drop_points=None,
                       **{f"drop_points_without_{APART}": None})
        rows.append(row)
    tasks = sorted(rows[0]["tasks"])
    print(format_rows(rows, tasks), flush=True)
    pruned = rows[1:]
    ok = [r for r in pruned if r["drop_points"] <= args.max_drop + 1e-9]
    best = max(ok, key=lambda r: r["ttft_speedup"]) if ok else min(
        pruned, key=lambda r: r["drop_points"])
    searched = [r for r in ok if r["method"].startswith(("gsearch", "psigmoid"))]
    best_searched = max(searched, key=lambda r: r["ttft_speedup"]) if searched else None
    out = {"best": {"method": best["method"], "speedup": best["ttft_speedup"],
                    "accuracy_drop": best["drop_points"]},
           "best_searched": None if best_searched is None else {
               "method": best_searched["method"], "speedup": best_searched["ttft_speedup"],
               "accuracy_drop": best_searched["drop_points"]},
           "min_efficiency": min(r["efficiency"] for r in pruned),
           "methods": [m.name for m in methods], "model": args.workdir,
           "trained_steps": trained_steps, "visual_tokens": v,
           "text_tokens": text, "timing_batch": args.timing_batch,
           "calib_split": "validation", "score_split": "test", "score": SCORE,
           "load_average": {"before_timing": load_before, "after_timing": load_after},
           "backend": jax.default_backend()}
    table = os.path.join(args.workdir, "pruning_table.json")
    with open(table, "w") as f:
        json.dump({"rows": rows, "summary": out,
                   "searches": {"psigmoid": ps.params, "gsearch": gs.params}}, f, indent=1)
    plot(rows, os.path.join(args.workdir, "pruning_speedup_vs_drop.png"))
    out["table"] = table
    print(json.dumps(out), flush=True)
    return out
