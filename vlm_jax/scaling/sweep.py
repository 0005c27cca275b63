"""Sweeps over LLM size x visual tokens x compressor: train and evaluate every point, then fit.

A sweep config (see configs/sweep_tiny.py) holds `point` (the train+eval config every point
starts from), `sweep.grid` (llm presets, token counts, compressors), optionally `pretrain` (a
stage-0 run shared by all points, wired in through `init_from`) and `executor`. Layout:

    WORKDIR/pretrain/                 the shared stage-0 run
    WORKDIR/points/<name>/result.json one finished point (its presence means done)
    WORKDIR/results.{csv,json}        the table; WORKDIR/fit.json, WORKDIR/plots/*.png

Points already done are skipped, so a killed sweep resumes where it stopped.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import logging
import os
import time
import warnings

import ml_collections

from vlm_jax.config_args import check_keys
from vlm_jax.scaling import executors
from vlm_jax.train.checkpoint import write_json_atomic

log = logging.getLogger(__name__)

SWEEP_KEYS = {"grid", "families", "text_tokens", "n_unit"}


def point_name(llm: str, num_tokens: int, compressor: str) -> str:
    return f"{llm}_V{num_tokens}_{compressor}".replace("/", "-")


def make_points(config: ml_collections.ConfigDict, workdir: str
                ) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, full point config) for every grid point, in grid order."""
    check_keys(config.sweep, SWEEP_KEYS, "sweep")
    grid = config.sweep.grid
    llms = dict(grid.llm)  # name -> LLM config dict
    points = []
    for (llm, llm_cfg), v, comp in itertools.product(llms.items(), grid.num_tokens, grid.compressor):
        cfg = copy.deepcopy(config.point)
        with cfg.unlocked():
            cfg.mode = "train_eval"
            cfg.llm_name = llm
            cfg.model.llm = dict(llm_cfg)
            cfg.model.compressor.num_tokens = int(v)
            cfg.model.compressor.name = comp
            if config.get("pretrain") is not None:
                cfg.init_from = ml_collections.ConfigDict(dict(
                    workdir=os.path.join(workdir, "pretrain"),
                    map=(("vision_tower", "image_tower"),)))
        points.append((point_name(llm, int(v), comp), cfg))
    return points


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs every missing point with the configured executor, then tabulates and fits."""
    os.makedirs(os.path.join(workdir, "points"), exist_ok=True)
    t0 = time.time()
    executor = executors.make(config.get("executor", "inprocess"))
    if config.get("pretrain") is not None:
        pre_dir = os.path.join(workdir, "pretrain")
        if not os.path.exists(os.path.join(pre_dir, "run_summary.json")):
            log.info("sweep: stage-0 pretraining in %s", pre_dir)
            executor.run("pretrain", config.pretrain, pre_dir)
    points = make_points(config, workdir)
    for name, cfg in points:
        point_dir = os.path.join(workdir, "points", name)
        if os.path.exists(os.path.join(point_dir, "result.json")):
            log.info("sweep: %s done, skipping", name)
            continue
        log.info("sweep: running %s", name)
        executor.run(name, cfg, point_dir)
    executor.wait()
    rows = collect(workdir, [n for n, _ in points])
    summary = tabulate_and_fit(config, workdir, rows)
    summary["wall_time_s"] = time.time() - t0
    write_json_atomic(os.path.join(workdir, "sweep_summary.json"), summary)
    print(format_summary(summary))
    return summary


def run_point(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """mode=train_eval: train (resuming), evaluate, write `result.json` (one table row)."""
    from vlm_jax import models
    from vlm_jax.eval.evaluator import evaluate_config, load_run
    from vlm_jax.models.flops import param_count
    from vlm_jax.train.trainer import train

    summary = train(config, workdir)
    _, params = load_run(workdir)
    result = evaluate_config(config, params)
    cfg = models.from_dict(config.model)
    cost = result["cost"]
    row = {"name": os.path.basename(os.path.normpath(workdir)), "llm": config.get("llm_name", ""),
           "N": param_count(cfg.llm), "V": cfg.num_visual_tokens, "compressor": cfg.compressor.name,
           "text_tokens": cost["text_tokens"], "score": result["overall"],
           "families": result["families"], "tasks": result["tasks"], "ttft_ms": cost["ttft_ms"],
           "decode_ms_per_token": cost["decode_ms_per_token"],
           "prefill_gflops": cost["flops"]["total"] / 1e9, "flops": cost["flops"],
           "train_loss": summary["final_metrics"].get("loss"), "train_steps": summary["final_step"],
           "param_fingerprint": summary["param_fingerprint"]}
    write_json_atomic(os.path.join(workdir, "eval.json"), result)
    write_json_atomic(os.path.join(workdir, "result.json"), row)
    return row


def collect(workdir: str, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        path = os.path.join(workdir, "points", name, "result.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"sweep point {name} has no result ({path}); did it fail?")
        with open(path) as f:
            rows.append(json.load(f))
    return rows


FLAT_KEYS = ("name", "llm", "N", "V", "compressor", "text_tokens", "score", "ttft_ms",
             "decode_ms_per_token", "prefill_gflops", "train_loss")


def tabulate_and_fit(config, workdir: str, rows: list[dict]) -> dict:
    """Writes results.{csv,json}, fits the law per task family, writes the plots."""
    from vlm_jax import scaling
    from vlm_jax.scaling import plots

    families = list(config.sweep.get("families", ("reasoning", "ocr")))
    write_json_atomic(os.path.join(workdir, "results.json"), rows)
    fields = list(FLAT_KEYS) + [f"score_{fam}" for fam in families]
    tmp = os.path.join(workdir, "results.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{f"score_{fam}": r["families"].get(fam) for fam in families}})
    os.replace(tmp, os.path.join(workdir, "results.csv"))
    q = float(config.sweep.get("text_tokens", 0) or sum(r["text_tokens"] for r in rows) / len(rows))
    fits = {}
    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    for fam in families:
        table = [(r["N"], r["V"], r["families"][fam]) for r in rows if fam in r["families"]]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                law = scaling.fit(table)
            fits[fam] = dict(law.to_dict(), optimal_V=float(law.optimal_tokens(text_tokens=q)),
                             warnings=[str(c.message) for c in caught])
            plots.plot_error_vs_flops(table, law, os.path.join(workdir, "plots", f"{fam}_error_vs_flops.png"),
                                      text_tokens=q)
            plots.plot_optimal_tokens(law, os.path.join(workdir, "plots", f"{fam}_optimal_tokens.png"))
        except ValueError as e:  # e.g. too few points for a family: report, do not hide
            fits[fam] = {"error": str(e)}
    write_json_atomic(os.path.join(workdir, "fit.json"), fits)
    return {"points": len(rows), "text_tokens": q, "fits": fits,
            "table": [{k: r.get(k) for k in FLAT_KEYS} | {fam: r["families"].get(fam) for fam in families}
                      for r in rows]}


def format_summary(summary: dict) -> str:
    """A plain-text table of the points and the fitted laws."""
    table = summary["table"]
    fams = [k for k in summary["fits"]]
    head = f"{'point':32s} {'N':>10s} {'V':>4s} " + " ".join(f"{f:>9s}" for f in fams) + \
        f" {'ttft_ms':>8s} {'GFLOPs':>8s}"
    lines = [head, "-" * len(head)]
    for r in table:
        lines.append(f"{r['name']:32s} {r['N']:>10.3g} {r['V']:>4d} "
                     + " ".join(f"{(r.get(f) or 0):9.3f}" for f in fams)
                     + f" {r['ttft_ms']:8.2f} {r['prefill_gflops']:8.4f}")
    lines.append("")
    for fam, fit in summary["fits"].items():
        if "error" in fit:
            lines.append(f"{fam}: fit failed: {fit['error']}")
            continue
        lines.append(f"{fam}: alpha={fit['alpha']:.4f} beta={fit['beta']:.4f} A={fit['A']:.4f} "
                     f"D={fit['D']:.4f} loss={fit['loss']:.2e}  optimal V at Q="
                     f"{summary['text_tokens']:.0f}: {fit['optimal_V']:.1f}")
    if "wall_time_s" in summary:
        lines.append(f"wall time: {summary['wall_time_s']:.0f} s")
    return "\n".join(lines)
