"""Training throughput: step time, examples/s and model FLOPs utilisation on this machine.

    python -m vlm_jax.bench.train [--arg llm=l,V=16] [--steps 20]

The model is configs/tiny_vlm.py at the given arg (default: the tiny sweep's largest LLM).
MFU = analytic model FLOPs per second / the CPU's f32 matmul peak measured in the same run
with a large jitted matmul. Model FLOPs (vlm_jax.models.flops): forward x 3 for what trains,
the LM head over every position, the no-gradient text query once. The same steps are timed
fed from an in-memory batch and from the real grain pipeline (as the trainer's loop: the next
batch is read while a step runs). The pipeline's own CPU per batch is measured twice: on the
main thread during the timed grain steps (`time.thread_time`: the loader reads on that thread)
and alone, with no step running (`time.process_time`, all threads). CPU time is robust to other
jobs on a shared machine; the step times (wall clock) are not. Prints a table, then one JSON
line with `mfu` and `pipeline_overhead` as fractions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


PEAK_SIZES = (1024, 2048, 3072)


def matmul_peak(sizes: tuple[int, ...] = PEAK_SIZES, repeats: int = 7) -> dict:
    """The CPU's f32 matmul peak: the best FLOP/s over `repeats` timings of a jitted n x n x n
    matmul at each size in `sizes`. One timing on a shared machine can read half the peak (other
    jobs take the cores), so the best of many is the denominator; every reading is kept.

    -> {"peak": best FLOP/s, "by_size": {n: best FLOP/s at n}, "readings": all FLOP/s}.
    """
    by_size, readings = {}, []
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        rates = [2 * n**3 / _timed(lambda f=f, a=a: f(a).block_until_ready())
                 for _ in range(repeats)]
        by_size[n], readings = max(rates), readings + rates
    return {"peak": max(readings), "by_size": by_size, "readings": readings}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arg", default="llm=l,V=16", help="configs/tiny_vlm.py argument")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.join(REPO, "configs"))
    import tiny_vlm

    from vlm_jax import models
    from vlm_jax.models import flops as flops_lib
    from vlm_jax.train import data_feed
    from vlm_jax.train.trainer import Trainer

    config = tiny_vlm.get_config(f"{args.arg},batch={args.batch}")
    config.data.synthetic.num_train = max(4000, args.batch * (2 * args.steps + 4))
    feed = data_feed.make(config)
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(config, d, vocab_size=feed.vocab_size)
    it = feed.iterator()
    state = trainer.init_state()
    fixed = feed.arrays(next(it))
    for _ in range(2):  # compile + warm-up
        state, m = trainer.step(state, fixed)
    jax.block_until_ready(m)

    t = time.perf_counter()
    for _ in range(args.steps):
        state, m = trainer.step(state, fixed)
    jax.block_until_ready(m)
    mem_s = (time.perf_counter() - t) / args.steps

    t = time.perf_counter()
    pending, data_cpu = None, 0.0
    for _ in range(args.steps):  # as the trainer's loop: read the next batch while a step runs
        c = time.thread_time()
        arrays = feed.arrays(next(it))
        data_cpu += time.thread_time() - c
        if pending is not None:
            float(pending["loss"])
        state, pending = trainer.step(state, arrays)
    float(pending["loss"])
    pipe_s = (time.perf_counter() - t) / args.steps
    data_cpu /= args.steps
    c = time.process_time()
    for _ in range(args.steps):
        feed.arrays(next(it))
    data_cpu_alone = (time.process_time() - c) / args.steps

    cfg = models.from_dict(config.model)
    text = config.data.max_text_len
    fwd = flops_lib.vlm_flops(cfg, text_tokens=text, question_tokens=config.data.max_question_len)
    seq = cfg.num_visual_tokens + text
    lm_head_all = 2 * cfg.llm.width * cfg.llm.vocab_size * seq  # training scores every position
    # Forward + backward (2x) for everything that trains; the text query runs without gradient.
    step_flops = args.batch * (3 * (fwd["total"] - fwd["text_query"] - fwd["lm_head"] + lm_head_all)
                               + fwd["text_query"])
    probe = matmul_peak()
    peak = probe["peak"]
    mfu = step_flops / mem_s / peak
    overhead = pipe_s / mem_s - 1
    n_params = flops_lib.param_count(cfg)
    print(f"tiny VLM {args.arg}: {n_params / 1e6:.2f}M parameters, batch {args.batch}, "
          f"sequence {cfg.num_visual_tokens + text}, {os.cpu_count()} CPU cores, "
          f"{len(jax.devices())} device(s)")
    print(f"{'feed':12s} {'step ms':>8s} {'examples/s':>11s} {'model GFLOP/s':>14s}")
    for name, s in (("in-memory", mem_s), ("grain", pipe_s)):
        print(f"{name:12s} {s * 1e3:8.1f} {args.batch / s:11.1f} {step_flops / s / 1e9:14.2f}")
    print(f"pipeline CPU per batch: {data_cpu * 1e3:.1f} ms on the main thread during the grain "
          f"steps, {data_cpu_alone * 1e3:.1f} ms alone (all threads, no step running)")
    lo, mid = min(probe["readings"]), sorted(probe["readings"])[len(probe["readings"]) // 2]
    sizes = ", ".join(f"{n}^3 {r / 1e9:.1f}" for n, r in probe["by_size"].items())
    print(f"CPU f32 matmul peak (same run, best of {len(probe['readings'])}): {peak / 1e9:.1f} "
          f"GFLOP/s; best by size: {sizes}; all readings min {lo / 1e9:.1f} / median "
          f"{mid / 1e9:.1f} / max {peak / 1e9:.1f}; load average {os.getloadavg()[0]:.1f}")
    print(f"MFU {100 * mfu:.1f}% (target >= 30%)   pipeline overhead {100 * overhead:.1f}% "
          f"(target <= 5%)")
    summary = {"mfu": mfu, "pipeline_overhead": overhead, "step_ms": mem_s * 1e3,
               "pipeline_step_ms": pipe_s * 1e3, "pipeline_cpu_ms": data_cpu * 1e3,
               "pipeline_cpu_ms_alone": data_cpu_alone * 1e3, "examples_per_s": args.batch / mem_s,
               "peak_gflops": peak / 1e9, "peak_gflops_min": lo / 1e9,
               "peak_gflops_median": mid / 1e9, "load_average": os.getloadavg()[0],
               "model_gflop_per_step": step_flops / 1e9,
               "params": n_params}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
