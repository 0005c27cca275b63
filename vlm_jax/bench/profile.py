"""Where prefill time goes, per op category, in vlm_jax (XLA CPU) and transformers (torch CPU).

    python -m vlm_jax.bench.profile [--model 209m] [--batch 4] [--text 64] [--runs 3]
                                    [--threads 1]

The model and inputs are `vlm_jax.bench.prefill`'s (same weights in both frameworks). vlm_jax:
the jitted prefill runs `--runs` times under `jax.profiler.trace`; each executed HLO op's time is
read back from the trace (`jax.profiler.ProfileData`) and put in a category from the op's own
metadata (its primitive and the module path it was traced under). transformers: the same
forward under `torch.profiler`, self CPU time per aten op, categorised by op name. Categories:
matmuls, attention (scores, softmax, weighted values), norms, rotary, gathers, layout copies,
other (elementwise, reductions, the rest). Prints both tables (ms per prefill and share), the
load average around each, and one JSON line.

`--threads N` runs the profile in a child pinned to N cores with N intra-op threads in both
frameworks (as `bench.prefill`). On one thread the categories add up to the prefill; on more,
XLA runs independent ops at the same time and their times overlap. The table's last line is the
floor of the vlm_jax / transformers ratio while vlm_jax's matmuls run at transformers' speed:
transformers' matmul time over its total (every other op of vlm_jax taken as free).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import tempfile

import numpy as np

from vlm_jax.bench.load import load_average, warn_if_loaded
from vlm_jax.bench.prefill import bench_config, make_inputs

CATEGORIES = ("matmuls", "attention", "norms", "rotary", "gathers", "layout copies", "other")
_PROJ = re.compile(r"(q_proj|k_proj|v_proj|o_proj|out_proj|qkv|query|key|value)")


def categorize_hlo(op_name: str, opcode: str) -> str:
    """Category of one HLO instruction from its `op_name` metadata (module path / primitive)."""
    path, _, prim = op_name.rpartition("/")
    prim = re.sub(r"\W.*", "", prim)
    in_attn = "attn" in path or "attention" in path
    if prim in ("dot_general", "conv_general_dilated") or opcode == "dot":
        return "attention" if in_attn and not _PROJ.search(path) else "matmuls"
    if "norm" in path.rsplit("/", 2)[-1] or "layernorm" in path or "layer_norm" in path:
        return "norms"
    if "rotary" in path or "rope" in path or prim in ("sin", "cos"):
        return "rotary"
    if in_attn and prim in ("exp", "reduce_max", "reduce_sum", "div", "sub", "select_n",
                            "softmax"):
        return "attention"
    if prim in ("gather", "scatter", "scatter-add", "dynamic_slice", "dynamic_update_slice",
                "take", "take_along_axis") or opcode in ("gather", "scatter", "dynamic-slice"):
        return "gathers"
    if prim in ("transpose", "copy", "reshape", "concatenate", "pad", "broadcast_in_dim") \
            or opcode in ("copy", "transpose", "bitcast", "concatenate"):
        return "layout copies"
    return "other"


_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ (\w[\w\-]*)\(.*?op_name=\"([^\"]*)\"")


def hlo_categories(hlo_text: str) -> dict[str, str]:
    """Instruction name -> category, for the ops of a compiled HLO module."""
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if m:
            out[m.group(1)] = categorize_hlo(m.group(3), m.group(2))
    return out


def profile_jax(model_dir: str, inputs: dict, runs: int) -> dict[str, float]:
    """ms per prefill in each category (vlm_jax)."""
    import jax

    from vlm_jax import models
    from vlm_jax.interop import hf
    cfg, params = hf.load(model_dir)
    module = models.build(cfg)
    fwd = jax.jit(lambda p, im, tok: module.apply({"params": p}, im, tok))
    args = (jax.device_put(params), jax.device_put(inputs["images"]),
            jax.device_put(inputs["tokens"]))
    names = hlo_categories(fwd.lower(*args).compile().as_text())
    fwd(*args).block_until_ready()
    totals = collections.Counter()
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(runs):
                fwd(*args).block_until_ready()
        trace = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0]
        for plane in jax.profiler.ProfileData.from_file(trace).planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name in names:
                        totals[names[event.name]] += event.duration_ns
    return {c: totals[c] / 1e6 / runs for c in CATEGORIES}


def categorize_aten(name: str) -> str:
    """Category of one aten op (transformers' eager forward)."""
    op = name.removeprefix("aten::")
    if op in ("mm", "addmm", "bmm", "matmul", "linear", "convolution", "_convolution",
              "mkldnn_convolution", "conv2d"):
        return "matmuls"
    if "attention" in op or op in ("_softmax", "softmax", "baddbmm"):
        return "attention"
    if "norm" in op or op in ("rsqrt", "pow", "mean", "var_mean"):
        return "norms"
    if op in ("sin", "cos", "neg"):
        return "rotary"
    if op in ("embedding", "index_select", "gather", "index", "index_put_", "masked_scatter",
              "masked_scatter_", "nonzero", "scatter"):
        return "gathers"
    if op in ("copy_", "contiguous", "clone", "_to_copy", "to", "cat", "transpose", "permute",
              "reshape", "view", "expand", "flatten", "unsqueeze", "slice", "t"):
        return "layout copies"
    return "other"


def profile_torch(model_dir: str, inputs: dict, runs: int) -> dict[str, float]:
    """ms per prefill in each category (transformers, self CPU time per aten op)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    pixel = torch.from_numpy(inputs["images"]).permute(0, 3, 1, 2).contiguous()
    ids = torch.from_numpy(inputs["tokens"]).long()
    with torch.inference_mode():
        model(input_ids=ids, pixel_values=pixel)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(input_ids=ids, pixel_values=pixel)
    totals = collections.Counter()
    for ev in prof.key_averages():
        if ev.key.startswith("aten::"):
            totals[categorize_aten(ev.key)] += ev.self_cpu_time_total
    return {c: totals[c] / 1e3 / runs for c in CATEGORIES}


def print_tables(result: dict) -> None:
    print(f"{'category':14s} {'vlm_jax ms':>11s} {'share':>6s} {'torch ms':>9s} {'share':>6s}")
    tot = {k: sum(result[k].values()) or 1.0 for k in ("vlm_jax", "transformers")}
    for c in CATEGORIES:
        j, t = result["vlm_jax"][c], result["transformers"][c]
        print(f"{c:14s} {j:11.1f} {j / tot['vlm_jax']:6.1%} {t:9.1f} "
              f"{t / tot['transformers']:6.1%}")
    print(f"{'total':14s} {tot['vlm_jax']:11.1f} {'':6s} {tot['transformers']:9.1f}")
    print(f"ratio floor at matmul parity: {matmul_floor(result):.2f}")
    print(f"load average: {result['load_avg']}")


def matmul_floor(result: dict) -> float:
    """transformers' matmul time over its total: the lowest vlm_jax / transformers prefill ratio
    possible while vlm_jax's matmuls are no faster than transformers'."""
    torch_ms = result["transformers"]
    return torch_ms["matmuls"] / (sum(torch_ms.values()) or 1.0)


def _in_child(argv: list[str] | None, threads: int) -> dict:
    """This profile rerun in a child process pinned to `threads` cores (thread settings must
    be in place before either framework starts)."""
    import subprocess
    import sys

    from vlm_jax.bench.prefill import _worker_env
    env = dict(_worker_env("jax", threads), VLM_JAX_PROFILE_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "result.json")
        argv = sys.argv[1:] if argv is None else argv
        subprocess.run([sys.executable, "-m", "vlm_jax.bench.profile", *argv,
                        "--json_out", out], check=True, env=env)
        with open(out) as f:
            return json.load(f)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="209m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=0,
                   help="profile in a child on this many cores and threads (0: as started)")
    p.add_argument("--json_out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads and os.environ.get("VLM_JAX_PROFILE_THREADS") != str(args.threads):
        return _in_child(argv, args.threads)
    if args.threads:
        import torch
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:max(1, args.threads)])
        torch.set_num_threads(args.threads)
    import jax

    from vlm_jax import models
    from vlm_jax.interop import hf
    cfg = bench_config(args.model)
    loads = [load_average()]
    with tempfile.TemporaryDirectory() as d:
        hf.save(cfg, jax.device_get(models.init_params(cfg, 0)), d)
        inputs = make_inputs(cfg, args.batch, args.text)
        result = {"vlm_jax": profile_jax(d, inputs, args.runs)}
        loads.append(load_average())
        result["transformers"] = profile_torch(d, inputs, args.runs)
        loads.append(load_average())
    result.update(model=args.model, batch=args.batch, text_tokens=args.text, load_avg=loads,
                  cpu_count=os.cpu_count(), threads=args.threads or None,
                  ratio_floor_at_matmul_parity=matmul_floor(result))
    warn_if_loaded([max(x[0] for x in loads)], "bench.profile")
    print_tables(result)
    line = json.dumps(result, default=lambda x: float(np.asarray(x)))
    print(line)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(line)
    return result


if __name__ == "__main__":
    main()
