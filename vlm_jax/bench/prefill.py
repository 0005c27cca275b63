"""Prefill and greedy generation: vlm_jax (jit, XLA CPU) vs transformers (torch CPU), same weights.

    python -m vlm_jax.bench.prefill [--models 209m,110m] [--threads 1,2,4] [--repeats 5]
                                    [--batch 4] [--text 64] [--new_tokens 32] [--rounds 1]

Each model is initialised in vlm_jax, written with `vlm_jax.interop.hf.save`, and both
frameworks run the same batch (one image + `--text` tokens per row) in separate worker
processes (each one's peak memory is its own), for every thread count:
- `209m`: CLIP-B/16-224 tower + a 12-layer Qwen2-style decoder (768 wide), ~209M parameters;
- `110m`: 6 layers of CLIP-B/16-224 + 6 layers of the Qwen2-0.5B decoder (896 wide).
A thread count N pins the worker to min(N, cores) cores and sets N intra-op threads in both
frameworks (torch.set_num_threads, XLA's intra_op_parallelism_threads).

Measured: prefill (logits at every position, as `LlavaForConditionalGeneration.forward`) and, with
`--new_tokens T > 0`, greedy generation of T tokens with the KV cache (`vlm_jax.eval.generate`
against `generate(do_sample=False)`; no early stop). Timings on a loaded machine are not
comparable, so every figure is printed with the load average measured around it, a load
above 1 is warned about, and the benchmark refuses to run where the load cannot be read. Before
each worker it waits (`--settle`, `--settle_s`) for the load left by the previous one to decay.
Prints tables, then one JSON line: per model and thread count `vlm_jax_ms`,
`transformers_ms`, `ratio` (vlm_jax / transformers) for prefill and generation, the logit and
token agreement, and the load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from vlm_jax.bench.load import load_average, settle, warn_if_loaded

MODELS = ("209m", "110m")


def bench_config(name: str = "209m"):
    """The benchmark's VLM config: `209m` or `110m` (module docstring)."""
    from vlm_jax.models import presets
    from vlm_jax.models.config import LLMConfig
    if name == "209m":
        llm = LLMConfig(family="qwen2", vocab_size=32001, width=768, depth=12, heads=12,
                        kv_heads=2, mlp_dim=2048, rope_theta=1e6, qkv_bias=True,
                        tie_embeddings=False)
        cfg = presets.llava("clip-b/16-224", "qwen2-0.5b")
        return dataclasses.replace(cfg, llm=llm, image_token_id=32000)
    if name == "110m":
        cfg = presets.llava("clip-b/16-224", "qwen2-0.5b")
        llm = dataclasses.replace(cfg.llm, depth=6, vocab_size=32001, tie_embeddings=False)
        vision = dataclasses.replace(cfg.vision, depth=6)
        return dataclasses.replace(cfg, llm=llm, vision=vision, image_token_id=32000)
    if name == "tiny":  # a smoke test of the benchmark itself
        cfg = presets.llava("clip-b/16-224", "qwen2-0.5b")
        llm = LLMConfig(family="qwen2", vocab_size=32001, width=64, depth=2, heads=4, kv_heads=2,
                        mlp_dim=128, rope_theta=1e6, qkv_bias=True, tie_embeddings=False)
        vision = dataclasses.replace(cfg.vision, image_size=32, width=64, depth=2, heads=4,
                                     mlp_dim=128)
        return dataclasses.replace(cfg, llm=llm, vision=vision, image_token_id=32000)
    raise ValueError(f"unknown benchmark model {name!r}; known: {(*MODELS, 'tiny')}")


def make_inputs(cfg, batch: int, text: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = cfg.num_visual_tokens
    tokens = np.concatenate([np.full((batch, 1), 1), np.full((batch, v), cfg.image_token_id),
                             rng.integers(2, 32000, (batch, text - 1))], axis=1).astype(np.int32)
    size = cfg.vision.image_size
    images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    return {"tokens": tokens, "images": images}


def _timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def worker_jax(model_dir: str, inputs: dict, repeats: int, new_tokens: int) -> dict:
    import jax

    from vlm_jax import models
    from vlm_jax.eval.generate import Generator
    from vlm_jax.interop import hf
    cfg, params = hf.load(model_dir)
    module = models.build(cfg)
    params = jax.device_put(params)
    fwd = jax.jit(lambda p, im, tok: module.apply({"params": p}, im, tok))
    images, tokens = jax.device_put(inputs["images"]), jax.device_put(inputs["tokens"])
    out = {"times_ms": _timed(lambda: fwd(params, images, tokens).block_until_ready(), repeats),
           "last_logits": np.asarray(fwd(params, images, tokens)[:, -1]).tolist()}
    if new_tokens:
        gen = Generator(module, new_tokens)
        batch = {"images": images, "tokens": tokens}
        out["generate_ms"] = _timed(lambda: jax.block_until_ready(gen.tokens(params, batch)),
                                    repeats)
        out["generated"] = np.asarray(gen.tokens(params, batch)).tolist()
    return out


def worker_torch(model_dir: str, inputs: dict, repeats: int, new_tokens: int) -> dict:
    import torch
    from transformers import LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    pixel = torch.from_numpy(inputs["images"]).permute(0, 3, 1, 2).contiguous()
    ids = torch.from_numpy(inputs["tokens"]).long()

    def run():
        with torch.inference_mode():
            return model(input_ids=ids, pixel_values=pixel).logits

    out = {"times_ms": _timed(run, repeats), "last_logits": run()[:, -1].float().numpy().tolist()}
    if new_tokens:
        def generate():
            with torch.inference_mode():
                return model.generate(input_ids=ids, pixel_values=pixel, do_sample=False,
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      use_cache=True, eos_token_id=None, pad_token_id=0)

        out["generate_ms"] = _timed(generate, repeats)
        out["generated"] = generate()[:, ids.shape[1]:].numpy().tolist()
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _worker_env(worker: str, threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), JAX_PLATFORMS="cpu")
    if worker == "jax":
        flags = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} " \
                f"intra_op_parallelism_threads={threads}"
        env["XLA_FLAGS"] = flags
    return env


def _worker_main(args) -> None:
    cores = sorted(os.sched_getaffinity(0))[:max(1, min(args.threads, os.cpu_count() or 1))]
    os.sched_setaffinity(0, cores)
    if args.worker == "torch":
        import torch
        torch.set_num_threads(args.threads)
    inputs = dict(np.load(os.path.join(args.dir, "inputs.npz")))
    fn = worker_jax if args.worker == "jax" else worker_torch
    out = fn(args.dir, inputs, args.repeats, args.new_tokens)
    out.update(peak_rss_mb=peak_rss_mb(), cores=cores, threads=args.threads)
    with open(os.path.join(args.dir, f"result_{args.worker}.json"), "w") as f:
        json.dump(out, f)


def _run_worker(d: str, worker: str, threads: int, repeats: int, new_tokens: int,
                settle_load: float = 0.5, settle_s: float = 0.0) -> dict:
    load_before = settle(settle_load, settle_s)
    subprocess.run([sys.executable, "-m", "vlm_jax.bench.prefill", "--worker", worker,
                    "--dir", d, "--repeats", str(repeats), "--threads", str(threads),
                    "--new_tokens", str(new_tokens)], check=True, env=_worker_env(worker, threads))
    with open(os.path.join(d, f"result_{worker}.json")) as f:
        out = json.load(f)
    out["load_avg"] = [load_before, load_average()]
    return out


def compare(results: dict, new_tokens: int) -> dict:
    """Medians, ratios and agreement of one (model, threads) pair: `results` maps "jax" and
    "torch" to their workers' results, one per round (times pooled over the rounds; each
    round's own ratio kept, as machine speed drifts between rounds)."""
    jx, pt = results["jax"], results["torch"]
    pooled = lambda runs, key: float(np.median([t for r in runs for t in r[key]]))
    ratios = lambda key: [float(np.median(a[key]) / np.median(b[key])) for a, b in zip(jx, pt)]
    out = {"vlm_jax_ms": pooled(jx, "times_ms"), "transformers_ms": pooled(pt, "times_ms"),
           "max_logit_diff": float(np.max(np.abs(np.asarray(jx[0]["last_logits"])
                                                 - np.asarray(pt[0]["last_logits"])))),
           "vlm_jax_peak_rss_mb": jx[0]["peak_rss_mb"],
           "transformers_peak_rss_mb": pt[0]["peak_rss_mb"],
           "load_avg": {"vlm_jax": [x for r in jx for x in r["load_avg"]],
                        "transformers": [x for r in pt for x in r["load_avg"]]},
           "round_ratios": ratios("times_ms")}
    out["ratio"] = out["vlm_jax_ms"] / out["transformers_ms"]
    if new_tokens:
        out["generate"] = {
            "vlm_jax_ms": pooled(jx, "generate_ms"), "transformers_ms": pooled(pt, "generate_ms"),
            "token_agreement": float(np.mean(np.asarray(jx[0]["generated"])
                                             == np.asarray(pt[0]["generated"]))),
            "round_ratios": ratios("generate_ms")}
        g = out["generate"]
        g["ratio"] = g["vlm_jax_ms"] / g["transformers_ms"]
    return out


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", default="1,2,4", help="comma-separated thread counts")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=32, help="0: prefill only")
    p.add_argument("--rounds", type=int, default=1,
                   help="worker pairs per (model, threads), in alternating order")
    p.add_argument("--settle", type=float, default=0.5,
                   help="before each worker, wait for the 1-minute load to fall to this")
    p.add_argument("--settle_s", type=float, default=240.0,
                   help="... but at most this many seconds (0: do not wait)")
    p.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.threads = int(args.threads)
        return _worker_main(args)
    names = [m for m in args.models.split(",") if m]
    threads = [int(t) for t in args.threads.split(",") if t]
    if not names or not threads or min(threads) < 1 or args.repeats < 1 or args.rounds < 1:
        raise ValueError(f"need models, thread counts >= 1, --repeats >= 1 and --rounds >= 1; "
                         f"got --models={args.models!r} --threads={args.threads!r} "
                         f"--repeats={args.repeats} --rounds={args.rounds}")
    warn_if_loaded(load_average(), "bench.prefill start")

    import jax

    from vlm_jax import models
    from vlm_jax.interop import hf
    from vlm_jax.models.flops import param_count
    summary = {"batch": args.batch, "text_tokens": args.text, "new_tokens": args.new_tokens,
               "cpu_count": os.cpu_count(), "models": {}}
    for name in names:
        cfg = bench_config(name)
        n_params = param_count(cfg)
        entry = {"params": n_params, "visual_tokens": cfg.num_visual_tokens, "threads": {}}
        with tempfile.TemporaryDirectory() as d:
            hf.save(cfg, jax.device_get(models.init_params(cfg, 0)), d)
            np.savez(os.path.join(d, "inputs.npz"), **make_inputs(cfg, args.batch, args.text))
            for i, n in enumerate(threads):
                res = {"jax": [], "torch": []}
                for r in range(args.rounds):  # ABBA: drift hits both frameworks alike
                    order = ("jax", "torch") if (i + r) % 2 == 0 else ("torch", "jax")
                    for w in order:
                        res[w].append(_run_worker(d, w, n, args.repeats, args.new_tokens,
                                                  args.settle, args.settle_s))
                entry["threads"][str(n)] = compare(res, args.new_tokens)
        summary["models"][name] = entry
        print_table(name, entry, args)
    loads = [load for e in summary["models"].values() for t in e["threads"].values()
             for pair in t["load_avg"].values() for load in pair]
    summary["load_avg_max"] = max(load[0] for load in loads)
    warn_if_loaded([summary["load_avg_max"]], "bench.prefill (max over the runs)")
    print(json.dumps(summary))
    return summary


def print_table(name: str, entry: dict, args) -> None:
    """One row per thread count; `load` is the 1-minute load average at each worker's start
    (max over workers) and at its end (the benchmark's own load)."""
    print(f"\nmodel {name}: {entry['params'] / 1e6:.0f}M parameters, batch {args.batch}, "
          f"{entry['visual_tokens']} visual + {args.text} text tokens, {os.cpu_count()} cores")
    print(f"{'threads':>7s} {'prefill jax ms':>15s} {'torch ms':>9s} {'ratio':>6s} "
          f"{'gen jax ms':>11s} {'torch ms':>9s} {'ratio':>6s} {'|dlogit|':>9s} "
          f"{'load start/end':>15s}  round ratios")
    for n, r in entry["threads"].items():
        g = r.get("generate", {})
        loads = [x for pair in r["load_avg"].values() for x in pair]
        start, end = max(x[0] for x in loads[0::2]), max(x[0] for x in loads[1::2])
        rounds = " ".join(f"{x:.2f}" for x in r["round_ratios"])
        if g:
            rounds += " | gen " + " ".join(f"{x:.2f}" for x in g["round_ratios"])
        print(f"{n:>7s} {r['vlm_jax_ms']:15.1f} {r['transformers_ms']:9.1f} {r['ratio']:6.2f} "
              f"{g.get('vlm_jax_ms', float('nan')):11.1f} "
              f"{g.get('transformers_ms', float('nan')):9.1f} {g.get('ratio', float('nan')):6.2f} "
              f"{r['max_logit_diff']:9.1e} {start:7.2f}/{end:<7.2f}  {rounds}")


if __name__ == "__main__":
    main()
