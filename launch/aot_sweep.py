"""Proof of fit and cost of a whole sweep: every LLM size x stage compiled ahead of time.

    python launch/aot_sweep.py --config=configs/sweep_paper.py --topology=v5e:16x16 \\
        [--llms=qwen-0_5b,qwen-1_8b] [--V=576] [--depths=1,2] [--json_out=FILE] \\
        [--markdown_out=FILE]

For each LLM of `sweep.grid.llm` and each stage of the point config, the stage's train step at
`--V` visual tokens (default: the grid's largest, whose sequence is the longest, so its step
is an upper bound for every V) is compiled for the topology with launch/aot.py, and one table
row gives memory per chip, XLA's FLOPs per chip, the estimated step time (XLA's own estimate
when it gives one, else the larger of XLA FLOPs at peak and XLA bytes at HBM bandwidth: a
lower bound) and the chip-hours of that stage for all the grid's token counts
(steps x step time x chips, at the compiled V). `--depths=D1,D2` (for a host too slow for
the full program) compiles the step with D1 and with D2 decoder layers instead of all and
extrapolates memory, FLOPs and step time linearly in depth to the LLM's full depth (the layers
are identical, so FLOPs and per-layer state are exactly linear; activation memory under remat
nearly so); the table says which rows were extrapolated and from what.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aot  # noqa: E402  (sets JAX_PLATFORMS=cpu and the libtpu flags before jax loads)

from vlm_jax.scaling import sweep  # noqa: E402

GiB = 1024**3


def compile_row(cfg, topology: str) -> dict:
    """Memory, FLOPs and step time per chip of one stage config's train step."""
    t0 = time.time()
    trainer, compiled, timings = aot.compile_train_step(cfg, topology)
    r = aot.report(cfg, topology, trainer, compiled, timings)
    rf = r.get("roofline", {})
    est = rf.get("xla_optimal_s") or max(rf.get("compute_s", 0), rf.get("memory_s", 0))
    return {"mesh": r["mesh"], "chips": r["devices"],
            "mem_gib": r["memory_per_device"]["total"] / GiB,
            "hbm_gib": (r["memory_per_device"]["hbm"] or 0) / GiB,
            "xla_tflops": r["xla_cost_per_device"]["flops"] / 1e12, "step_s": est,
            "step_from": "xla" if rf.get("xla_optimal_s") else "roofline",
            "compile_s": timings["compile_s"], "wall_s": time.time() - t0}


def stage_rows(config, topology: str, llms: list[str], num_tokens: int,
               depths: tuple[int, int] | None, echo=print) -> list[dict]:
    grid = config.sweep.grid
    rows = []
    for name, point in sweep.make_points(config, "/aot"):
        if point.llm_name not in llms or point.model.compressor.num_tokens != num_tokens:
            continue
        full = point.model.llm.depth
        for stage, cfg, _ in sweep.stage_configs(point, "/aot/p"):
            with cfg.unlocked():
                if "init_from" in cfg:
                    del cfg["init_from"]  # weights are abstract here
            if depths:
                parts = []
                for d in depths:
                    with cfg.unlocked():
                        cfg.model.llm.depth = d
                    parts.append(compile_row(cfg, topology))
                    echo(json.dumps({"llm": point.llm_name, "stage": stage, "depth": d,
                                     **parts[-1]}))
                (d1, d2), (a, b) = depths, parts
                line = {k: a[k] + (b[k] - a[k]) * (full - d1) / (d2 - d1)
                        for k in ("mem_gib", "xla_tflops", "step_s")}
                row = dict(b, **line, compile_s=a["compile_s"] + b["compile_s"],
                           method=f"extrapolated from {d1} and {d2} layers")
            else:
                row = dict(compile_row(cfg, topology), method="compiled")
            row.update(llm=point.llm_name, stage=stage, point=name, V=num_tokens, depth=full,
                       batch=cfg.train.batch_size, steps=cfg.train.steps)
            row["fits"] = row["mem_gib"] <= row["hbm_gib"] if row["hbm_gib"] else None
            row["chip_hours"] = (cfg.train.steps * len(grid.num_tokens) * row["step_s"]
                                 * row["chips"] / 3600)
            echo(json.dumps(row))
            rows.append(row)
    return rows


def markdown(rows: list[dict], topology: str, command: str) -> str:
    lines = [f"`{command}`", "",
             "| LLM | stage | layers | how | mesh | batch | steps | memory / HBM per chip "
             "(GiB) | XLA TFLOPs per chip | est. step (s) | chip-hours (all V) | compile (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items() if v > 1)
        lines.append(f"| {r['llm']} | {r['stage']} | {r['depth']} | {r['method']} | {mesh} | "
                     f"{r['batch']} | "
                     f"{r['steps']} | {r['mem_gib']:.2f} / {r['hbm_gib']:.0f}"
                     f"{'' if r['fits'] else ' (does not fit)'} | {r['xla_tflops']:.1f} | "
                     f"{r['step_s']:.3f} ({r['step_from']}) | {r['chip_hours']:,.0f} | "
                     f"{r['compile_s']:.0f} |")
    total = sum(r["chip_hours"] for r in rows)
    lines += ["", f"Total over these rows ({topology}, {rows[0]['chips'] if rows else 0} chips): "
              f"{total:,.0f} chip-hours."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="a sweep config, configs/FILE.py[:ARG]")
    p.add_argument("--topology", required=True, help="e.g. v5e:16x16 (v5e-256), v5p:4x4x8")
    p.add_argument("--llms", default="", help="comma-separated grid LLM names (default: all)")
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
    rows = stage_rows(config, args.topology, llms, v, depths)
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
