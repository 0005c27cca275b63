"""Benchmark: Pallas importance attention vs the materialised-softmax XLA path.

    python -m vlm_jax.bench.kernels [--lengths 2048,4096,8192] [--heads 32 --kv-heads 8 ...]

On a GPU or TPU: compiles both paths for every length, checks they agree, times them (median
of `--iters` runs after a warm-up) and reports the compiled temporary memory of each (XLA's
memory analysis) plus the device's peak bytes in use. Prints a table, then one JSON line.
On CPU the Pallas kernel cannot lower: it runs a tiny interpret-mode smoke version instead and
says so -- those numbers are NOT timings.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from vlm_jax.kernels.importance_attention import importance_attention, last_token_weights


def _inputs(key, b, length, heads, kv_heads, head_dim, dtype):
    kq, kk, kv = jax.random.split(key, 3)
    q = jax.random.normal(kq, (b, length, heads, head_dim), dtype)
    k = jax.random.normal(kk, (b, length, kv_heads, head_dim), dtype)
    v = jax.random.normal(kv, (b, length, kv_heads, head_dim), dtype)
    valid = jnp.ones((b, length), bool).at[:, : length // 16].set(False)  # some left padding
    return q, k, v, valid


def _measure(fn, args, iters: int) -> dict:
    """Compile `fn` for `args`; return compile stats and the median wall time in ms."""
    compiled = jax.jit(fn).lower(*args).compile()
    mem = compiled.memory_analysis()
    temp = None if mem is None else int(mem.temp_size_in_bytes)
    out = jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "temp_bytes": temp, "out": out}


def _peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def run(lengths, batch, heads, kv_heads, head_dim, dtype, iters, block, smoke) -> dict:
    rows = []
    common = dict(causal=True, block_q=block, block_k=block)
    pallas = functools.partial(importance_attention,
                               impl="pallas_interpret" if smoke else "pallas", **common)
    xla = functools.partial(importance_attention, impl="xla", **common)
    for length in lengths:
        q, k, v, valid = _inputs(jax.random.key(length), batch, length, heads, kv_heads,
                                 head_dim, dtype)
        w = last_token_weights(valid)
        row = {"tokens": length}
        results = {}
        for name, fn in (("pallas", pallas), ("xla", xla)):
            try:
                r = _measure(lambda q, k, v, w, valid, fn=fn: fn(q, k, v, w, key_valid=valid),
                             (q, k, v, w, valid), iters)
            except Exception as e:  # e.g. the materialised path running out of memory
                row[f"{name}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                continue
            results[name] = r["out"]
            row[f"{name}_ms"] = round(r["ms"], 3)
            row[f"{name}_temp_mib"] = None if r["temp_bytes"] is None else round(
                r["temp_bytes"] / 2**20, 1)
        if len(results) == 2:
            (o1, s1), (o2, s2) = results["pallas"], results["xla"]
            row["max_abs_diff_out"] = float(jnp.max(jnp.abs(o1.astype(jnp.float32) -
                                                            o2.astype(jnp.float32))))
            row["max_abs_diff_scores"] = float(jnp.max(jnp.abs(s1 - s2)))
            row["speedup"] = round(row["xla_ms"] / row["pallas_ms"], 2)
        row["device_peak_mib"] = None if _peak_bytes() is None else round(_peak_bytes() / 2**20)
        rows.append(row)
    return {"bench": "importance_attention", "device": jax.devices()[0].device_kind,
            "backend": jax.default_backend(), "smoke": smoke, "batch": batch, "heads": heads,
            "kv_heads": kv_heads, "head_dim": head_dim, "dtype": jnp.dtype(dtype).name,
            "block": block, "iters": iters, "rows": rows}


def _table(report: dict) -> str:
    cols = ["tokens", "pallas_ms", "xla_ms", "speedup", "pallas_temp_mib", "xla_temp_mib",
            "device_peak_mib", "max_abs_diff_out", "max_abs_diff_scores"]
    fmt = lambda x: f"{x:.3g}" if isinstance(x, float) else str(x)
    lines = ["  ".join(f"{c:>19}" for c in cols)]
    for row in report["rows"]:
        cells = [row.get(c, "error" if c.replace("_ms", "_error") in row else "-")
                 for c in cols]
        lines.append("  ".join(f"{fmt(c)[:19]:>19}" for c in cells))
        lines += [f"  {k}: {v}" for k, v in row.items() if k.endswith("_error")]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="2048,4096,8192")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--block", type=int, default=128)
    args = p.parse_args(argv)
    smoke = jax.default_backend() == "cpu"
    if smoke:
        print("CPU backend: Pallas cannot lower here; running a tiny interpret-mode smoke "
              "version. These numbers are NOT timings.", file=sys.stderr)
        report = run([64, 96], 1, 4, 2, 32, jnp.float32, 1, 32, smoke=True)
    else:
        lengths = [int(x) for x in args.lengths.split(",")]
        report = run(lengths, args.batch, args.heads, args.kv_heads, args.head_dim,
                     jnp.dtype(args.dtype), args.iters, args.block, smoke=False)
    print(f"importance attention on {report['device']} ({report['backend']}"
          f"{', interpret-mode smoke run: not a timing' if smoke else ''})")
    print(_table(report))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
