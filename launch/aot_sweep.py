"""Proof of fit and cost of a whole sweep: every LLM size x stage compiled ahead of time.

    python launch/aot_sweep.py --config=configs/sweep_paper.py --topology=v5e:16x16 \\
        [--llms=Qwen1.5-0.5B,Qwen1.5-1.8B] [--V=576] [--depth=N] [--json_out=FILE] \\
        [--markdown_out=FILE]

For each LLM of `sweep.grid.llm` and each stage of the point config, the stage's train step at
`--V` visual tokens (default: the grid's largest, whose sequence is the longest, so its step
is an upper bound for every V) is compiled for the topology with launch/aot.py, and one table
row gives memory per chip, XLA's FLOPs per chip, the estimated step time (XLA's own estimate
when it gives one, else the larger of XLA FLOPs at peak and XLA bytes at HBM bandwidth: a
lower bound) and the chip-hours of that stage for all the grid's token counts
(steps x step time x chips, at the compiled V). `--depth=N` compiles N decoder layers instead of
all (for a host too slow for the full program) and says so in the table; memory and FLOPs then
cover N layers only.
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


def stage_rows(config, topology: str, llms: list[str], num_tokens: int, depth: int | None,
               echo=print) -> list[dict]:
    grid = config.sweep.grid
    rows = []
    for name, point in sweep.make_points(config, "/aot"):
        if point.llm_name not in llms or point.model.compressor.num_tokens != num_tokens:
            continue
        for stage, cfg, _ in sweep.stage_configs(point, "/aot/p"):
            with cfg.unlocked():
                if "init_from" in cfg:
                    del cfg["init_from"]  # weights are abstract here
                if depth:
                    cfg.model.llm.depth = depth
            t0 = time.time()
            trainer, compiled, timings = aot.compile_train_step(cfg, topology)
            r = aot.report(cfg, topology, trainer, compiled, timings)
            rf = r.get("roofline", {})
            est = rf.get("xla_optimal_s") or max(rf.get("compute_s", 0), rf.get("memory_s", 0))
            chips = r["devices"]
            steps_all_v = cfg.train.steps * len(grid.num_tokens)
            row = {"llm": point.llm_name, "stage": stage, "point": name, "V": num_tokens,
                   "depth": depth or point.model.llm.depth, "mesh": r["mesh"],
                   "batch": cfg.train.batch_size, "steps": cfg.train.steps,
                   "mem_gib": r["memory_per_device"]["total"] / GiB,
                   "hbm_gib": (r["memory_per_device"]["hbm"] or 0) / GiB, "fits": r["fits"],
                   "xla_tflops": r["xla_cost_per_device"]["flops"] / 1e12,
                   "step_s": est, "step_from": "xla" if rf.get("xla_optimal_s") else "roofline",
                   "chip_hours": steps_all_v * est * chips / 3600, "chips": chips,
                   "compile_s": timings["compile_s"], "wall_s": time.time() - t0}
            echo(json.dumps(row))
            rows.append(row)
    return rows


def markdown(rows: list[dict], topology: str, command: str) -> str:
    lines = [f"`{command}`", "",
             "| LLM | stage | layers compiled | mesh | batch | steps | memory / HBM per chip "
             "(GiB) | XLA TFLOPs per chip | est. step (s) | chip-hours (all V) | compile (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items() if v > 1)
        lines.append(f"| {r['llm']} | {r['stage']} | {r['depth']} | {mesh} | {r['batch']} | "
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
    p.add_argument("--depth", type=int, default=None, help="compile this many decoder layers")
    p.add_argument("--json_out", default=None)
    p.add_argument("--markdown_out", default=None)
    args, rest = p.parse_known_args(argv)
    config = aot.load_config(args.config, rest)
    llms = args.llms.split(",") if args.llms else list(config.sweep.grid.llm)
    v = args.V or max(config.sweep.grid.num_tokens)
    rows = stage_rows(config, args.topology, llms, v, args.depth)
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
