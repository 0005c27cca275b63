"""Prefill latency: vlm_jax (jit, XLA CPU) vs transformers (torch CPU), same weights.

    python -m vlm_jax.bench.prefill [--repeats 10] [--batch 4] [--text 64]

A LLaVA-shaped model (CLIP-B/16-224-like tower, Qwen2-like decoder, ~200M parameters) is
initialised in vlm_jax, written with `vlm_jax.interop.hf.save`, and both frameworks run the
same batch (one image + `--text` tokens each) in separate worker processes, so each one's peak
memory is its own. Prints a table, then one JSON line with `vlm_jax_ms`, `transformers_ms` and
`ratio` (vlm_jax / transformers).
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


def bench_config():
    from vlm_jax.models import presets
    from vlm_jax.models.config import LLMConfig
    llm = LLMConfig(family="qwen2", vocab_size=32001, width=768, depth=12, heads=12, kv_heads=2,
                    mlp_dim=2048, rope_theta=1e6, qkv_bias=True, tie_embeddings=False)
    cfg = presets.llava("clip-b/16-224", "qwen2-0.5b")
    return dataclasses.replace(cfg, llm=llm, image_token_id=32000)


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


def worker_jax(model_dir: str, inputs: dict, repeats: int) -> dict:
    import jax

    from vlm_jax import models
    from vlm_jax.interop import hf
    cfg, params = hf.load(model_dir)
    module = models.build(cfg)
    params = jax.device_put(params)
    fwd = jax.jit(lambda p, im, tok: module.apply({"params": p}, im, tok))
    images, tokens = jax.device_put(inputs["images"]), jax.device_put(inputs["tokens"])
    times = _timed(lambda: fwd(params, images, tokens).block_until_ready(), repeats)
    logits = np.asarray(fwd(params, images, tokens)[:, -1])
    return {"times_ms": times, "last_logits": logits.tolist()}


def worker_torch(model_dir: str, inputs: dict, repeats: int) -> dict:
    import torch
    from transformers import LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    pixel = torch.from_numpy(inputs["images"]).permute(0, 3, 1, 2).contiguous()
    ids = torch.from_numpy(inputs["tokens"]).long()

    def run():
        with torch.inference_mode():
            return model(input_ids=ids, pixel_values=pixel).logits

    times = _timed(run, repeats)
    return {"times_ms": times, "last_logits": run()[:, -1].float().numpy().tolist()}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _worker_main(args) -> None:
    inputs = dict(np.load(os.path.join(args.dir, "inputs.npz")))
    fn = worker_jax if args.worker == "jax" else worker_torch
    out = fn(args.dir, inputs, args.repeats)
    out["peak_rss_mb"] = peak_rss_mb()
    with open(os.path.join(args.dir, f"result_{args.worker}.json"), "w") as f:
        json.dump(out, f)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text", type=int, default=64)
    p.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker_main(args)

    import jax

    from vlm_jax import models
    from vlm_jax.interop import hf
    from vlm_jax.models.flops import param_count
    cfg = bench_config()
    with tempfile.TemporaryDirectory() as d:
        hf.save(cfg, jax.device_get(models.init_params(cfg, 0)), d)
        np.savez(os.path.join(d, "inputs.npz"), **make_inputs(cfg, args.batch, args.text))
        results = {}
        for worker in ("jax", "torch"):
            subprocess.run([sys.executable, "-m", "vlm_jax.bench.prefill", "--worker", worker,
                            "--dir", d, "--repeats", str(args.repeats)], check=True)
            with open(os.path.join(d, f"result_{worker}.json")) as f:
                results[worker] = json.load(f)
    med = {w: float(np.median(r["times_ms"])) for w, r in results.items()}
    diff = float(np.max(np.abs(np.asarray(results["jax"]["last_logits"])
                               - np.asarray(results["torch"]["last_logits"]))))
    n_params = param_count(cfg)
    seq = cfg.num_visual_tokens + args.text
    print(f"LLaVA-shaped model: {n_params / 1e6:.0f}M parameters, batch {args.batch}, "
          f"{cfg.num_visual_tokens} visual + {args.text} text tokens (sequence {seq}), "
          f"{os.cpu_count()} CPU cores")
    print(f"{'framework':14s} {'median ms':>10s} {'min ms':>8s} {'peak RSS MB':>12s}")
    for w, name in (("jax", "vlm_jax"), ("torch", "transformers")):
        r = results[w]
        print(f"{name:14s} {med[w]:10.1f} {min(r['times_ms']):8.1f} {r['peak_rss_mb']:12.0f}")
    print(f"max |logit diff| at the last position: {diff:.2e}")
    summary = {"vlm_jax_ms": med["jax"], "transformers_ms": med["torch"],
               "ratio": med["jax"] / med["torch"], "vlm_jax_peak_rss_mb": results["jax"]["peak_rss_mb"],
               "transformers_peak_rss_mb": results["torch"]["peak_rss_mb"], "params": n_params,
               "max_logit_diff": diff}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
