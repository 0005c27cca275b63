"""Proof of fit and cost of a whole sweep: every LLM size x stage compiled ahead of time.

    python launch/aot_sweep.py --config=configs/sweep_paper.py --topology=v5e:16x16 \\
        [--llms=qwen-0_5b,qwen-1_8b] [--stages=align,tune] [--V=576] [--depths=1,2] \\
        [--json_out=FILE] [--markdown_out=FILE]

For each LLM of `sweep.grid.llm` and each stage of the point config, the stage's train step
at `--V` visual tokens (default: the grid's largest, the longest sequence) is compiled for the
topology with launch/aot.py on the point's own mesh, and one table row gives memory per chip,
XLA's FLOPs per chip, the estimated step time (XLA's own estimate when it gives a positive
one, else the larger of XLA FLOPs at peak and XLA bytes at HBM bandwidth: a lower bound), the
stage's steps, and chip-hours (steps x step time x chips).

Layers are compiled unrolled (`scan_layers` off in tower and LLM): XLA's `cost_analysis()`
counts a scanned loop's body once, which would make FLOPs and bytes one layer's. The memory is
therefore the unrolled program's; the scanned program the run uses measured less (launch/
README.md, `aot.py`).

V changes only the sequence length (and the compressor), so the step is compiled once per LLM
and stage, at `--V`; at every other V of the grid the step time is that one scaled by the
analytic training FLOPs (vlm_jax.models.flops) of the step at V over those at `--V`: an
estimate that assumes the step stays as compute-bound as at `--V`. The compiled V's figure
for every V is the upper bound, also printed. The point's chip-hours are its two stages' at
its V, the sweep's their sum over every point.

`--depths=D1,D2` (for a host too slow for the full program) compiles the step with D1 and D2
decoder layers instead of all and extrapolates memory, FLOPs, bytes and step time linearly in
depth to the LLM's full depth (the layers are identical, so FLOPs and per-layer state are
exactly linear, activation memory nearly; tests/test_launch_aot_sweep.py checks it against a
full compile); the table says which rows were extrapolated and from what.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aot  # noqa: E402  (sets JAX_PLATFORMS=cpu and the libtpu flags before jax loads)

from vlm_jax import models  # noqa: E402
from vlm_jax.scaling import sweep  # noqa: E402

GiB = 1024**3
LINEAR = ("mem_gib", "xla_tflops", "compute_s", "memory_s")  # extrapolated in depth


def unrolled(cfg) -> None:
    """Turns `scan_layers` off in the tower and the LLM of a train config, in place."""
    with cfg.unlocked():
        cfg.model.llm.scan_layers = False
        cfg.model.vision.scan_layers = False


def compile_row(cfg, topology: str) -> dict:
    """Memory, XLA FLOPs and time bounds per chip of one stage config's train step."""
    t0 = time.time()
    trainer, compiled, timings = aot.compile_train_step(cfg, topology)
    r = aot.report(cfg, topology, trainer, compiled, timings)
    rf = r["roofline"]
    return {"mesh": r["mesh"], "chips": r["devices"],
            "mem_gib": r["memory_per_device"]["total"] / GiB,
            "hbm_gib": (r["memory_per_device"]["hbm"] or 0) / GiB,  # 0: an unknown chip
            "xla_tflops": r["xla_cost_per_device"]["flops"] / 1e12,
            "compute_s": rf["compute_s"], "memory_s": rf["memory_s"],
            "xla_s": rf["xla_optimal_s"], "tower_trains": aot.vision_trains(trainer),
            "compile_s": timings["compile_s"], "wall_s": time.time() - t0}


def extrapolate(a: dict, b: dict, d1: int, d2: int, depth: int) -> dict:
    """Row `b` with its per-depth figures moved along the line through (d1, a) and (d2, b)."""
    lin = lambda k: a[k] + (b[k] - a[k]) * (depth - d1) / (d2 - d1)
    out = dict(b, **{k: lin(k) for k in LINEAR})
    out["xla_s"] = lin("xla_s") if a["xla_s"] and b["xla_s"] else None
    out["compile_s"] = a["compile_s"] + b["compile_s"]
    return out


def step_time(row: dict) -> tuple[float, str]:
    """(seconds, source): XLA's estimate when positive, else the larger roofline bound."""
    if row["xla_s"] and row["xla_s"] > 0:
        return row["xla_s"], "xla"
    return max(row["compute_s"], row["memory_s"]), "roofline"


def chip_hours(steps: int, step_s: float, chips: int) -> float:
    """steps x step time x chips, in hours."""
    return steps * step_s * chips / 3600


def _analytic(cfg, tower_trains: bool) -> float:
    return aot.model_flops_per_step(cfg, models.from_dict(cfg.model), tower_trains,
                                    cfg.train.batch_size)


def stage_rows(config, topology: str, llms: list[str], num_tokens: int,
               depths: tuple[int, int] | None, stages: list[str] | None = None,
               echo=print) -> list[dict]:
    """One row per LLM x stage: the step compiled at `num_tokens` (or extrapolated from
    `depths`), its step time at every V of the grid (`step_s_by_V`) and chip-hours."""
    by_llm: dict[str, dict[int, list]] = {}
    for _, point in sweep.make_points(config, "/aot"):
        by_llm.setdefault(point.llm_name, {})[point.model.compressor.num_tokens] = \
            sweep.stage_configs(point, "/aot/p")
    rows = []
    for llm in llms:
        if llm not in by_llm:
            raise ValueError(f"--llms: {llm!r} is not in sweep.grid.llm {sorted(by_llm)}")
        per_v = by_llm[llm]
        if num_tokens not in per_v:
            raise ValueError(f"--V={num_tokens} is not in sweep.grid.num_tokens {sorted(per_v)}")
        for k, (stage, cfg, _) in enumerate(per_v[num_tokens]):
            if stages and stage not in stages:
                continue
            with cfg.unlocked():
                if "init_from" in cfg:
                    del cfg["init_from"]  # weights are abstract here
            unrolled(cfg)
            full = cfg.model.llm.depth
            if depths:
                parts = []
                for d in depths:
                    with cfg.unlocked():
                        cfg.model.llm.depth = d
                    parts.append(compile_row(cfg, topology))
                    echo(json.dumps({"llm": llm, "stage": stage, "depth": d, **parts[-1]}))
                with cfg.unlocked():
                    cfg.model.llm.depth = full
                row = dict(extrapolate(*parts, *depths, full),
                           method=f"extrapolated from {depths[0]} and {depths[1]} layers")
            else:
                row = dict(compile_row(cfg, topology), method="compiled")
            row["step_s"], row["step_from"] = step_time(row)
            flops_at = _analytic(cfg, row["tower_trains"])
            row["step_s_by_V"] = {v: row["step_s"] * _analytic(s[k][1], row["tower_trains"])
                                  / flops_at for v, s in sorted(per_v.items())}
            row.update(llm=llm, stage=stage, V=num_tokens, depth=full,
                       batch=cfg.train.batch_size, steps=cfg.train.steps,
                       fits=row["mem_gib"] <= row["hbm_gib"] if row["hbm_gib"] else None)
            row["chip_hours_at_V"] = chip_hours(row["steps"], row["step_s"], row["chips"])
            row["chip_hours"] = sum(chip_hours(row["steps"], s, row["chips"])
                                    for s in row["step_s_by_V"].values())
            row["chip_hours_bound"] = row["chip_hours_at_V"] * len(per_v)
            echo(json.dumps(row))
            rows.append(row)
    return rows


def point_hours(rows: list[dict]) -> dict[str, dict[int, float]]:
    """LLM -> V -> chip-hours of that point: its rows' (stages') hours at V, summed."""
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        for v, s in r["step_s_by_V"].items():
            by_v = out.setdefault(r["llm"], {})
            by_v[int(v)] = by_v.get(int(v), 0.0) + chip_hours(r["steps"], s, r["chips"])
    return out


def markdown(rows: list[dict], topology: str, command: str) -> str:
    """The per-stage table, the per-point chip-hours table and the sweep's totals."""
    lines = [f"`{command}`", "",
             "| LLM | stage | layers | how | mesh | batch | steps | memory / HBM per chip "
             "(GiB) | XLA TFLOPs per chip | est. step (s) | chip-hours at V | chip-hours, "
             "all V (FLOPs-scaled) | compile (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items() if v > 1)
        lines.append(f"| {r['llm']} | {r['stage']} | {r['depth']} | {r['method']} | {mesh} | "
                     f"{r['batch']} | {r['steps']} | {r['mem_gib']:.2f} / {r['hbm_gib']:.0f}"
                     f"{'' if r['fits'] else ' (does not fit)'} | {r['xla_tflops']:.1f} | "
                     f"{r['step_s']:.3f} ({r['step_from']}) | {r['chip_hours_at_V']:,.0f} | "
                     f"{r['chip_hours']:,.0f} | {r['compile_s']:.0f} |")
    hours = point_hours(rows)
    vs = sorted({v for h in hours.values() for v in h})
    stages = sorted({r["stage"] for r in rows})
    lines += ["", f"Chip-hours per point ({' + '.join(stages)}; V = "
              f"{rows[0]['V'] if rows else '?'} compiled, the other V scaled by analytic FLOPs):",
              "", "| LLM | " + " | ".join(f"V={v}" for v in vs) + " | all V |",
              "|---|" + "---|" * (len(vs) + 1)]
    for llm, by_v in hours.items():
        lines.append(f"| {llm} | " + " | ".join(f"{by_v.get(v, 0):,.0f}" for v in vs)
                     + f" | {sum(by_v.values()):,.0f} |")
    total = sum(r["chip_hours"] for r in rows)
    bound = sum(r["chip_hours_bound"] for r in rows)
    n_points = sum(len(h) for h in hours.values())
    chips = rows[0]["chips"] if rows else 0
    lines += ["", f"Total over {n_points} points x {len(stages)} stage(s) ({topology}, {chips} "
              f"chips): {total:,.0f} chip-hours ({total / max(chips, 1):,.1f} h of the slice); "
              f"upper bound with every point at V={rows[0]['V'] if rows else '?'}: "
              f"{bound:,.0f} chip-hours."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="a sweep config, configs/FILE.py[:ARG]")
    p.add_argument("--topology", required=True, help="e.g. v5e:16x16 (v5e-256), v5p:4x4x8")
    p.add_argument("--llms", default="", help="comma-separated grid LLM names (default: all)")
    p.add_argument("--stages", default="", help="comma-separated stage names (default: all)")
    p.add_argument("--V", type=int, default=None, help="visual tokens (default: the largest)")
    p.add_argument("--depths", default="", help="D1,D2: compile these depths, extrapolate")
    p.add_argument("--json_out", default=None)
    p.add_argument("--markdown_out", default=None)
    args, rest = p.parse_known_args(argv)
    config = aot.load_config(args.config, rest)
    llms = args.llms.split(",") if args.llms else list(config.sweep.grid.llm)
    v = args.V or max(config.sweep.grid.num_tokens)
    depths = tuple(int(d) for d in args.depths.split(",")) if args.depths else None
    if depths is not None and (len(depths) != 2 or depths[0] == depths[1]):
        p.error(f"--depths needs two different layer counts, got {args.depths!r}")
    stages = args.stages.split(",") if args.stages else None
    rows = stage_rows(config, args.topology, llms, v, depths, stages)
    text = markdown(rows, args.topology, "python launch/aot_sweep.py " + " ".join(argv))
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=2)
    if args.markdown_out:
        with open(args.markdown_out, "w") as f:
            f.write(text + "\n")
    return 0 if all(r["fits"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
