"""Prefill latency vs visual tokens V with the QueCC compressor (measured vs FLOPs-predicted).

    python -m vlm_jax.bench.tokens [--llm-depth 4] [--vision-depth 4] [--repeats 5]
        [--text-tokens 50] [--batch 1] [--tokens 1,4,16,36,64,144,576] [--quick]

Model: a CLIP-L/14-336-shaped tower (24 x 24 patches, width 1024) and a Qwen-1.5-0.5B-shaped
LLM (width 1024, 16 heads, MLP 2816, the real 151936-token vocabulary + the image token, tied
head), random weights, float32. Only the depths are shrunk (flags) so a CPU run takes minutes:
the LLM keeps `--llm-depth` identical layers; the tower has `--vision-depth` layers and the
QueCC feature layers (reference: hidden states 12, 16, 22, 23 of 24 layers, the selected layer
-2 = 23) are scaled to `round(l * (depth - 1) / 23)`, so the deepest one read is `depth - 1`,
as in the reference (the last tower layer is never run). V < G*G uses QueCC (with its text
query: a text-only LLM pass over the question); V = G*G = 576 is the identity, i.e. the paper's
baseline with no compressor. Prompt: BOS, V image tokens, Q - 1 text tokens (sequence Q + V);
the question for the text query is the same Q text tokens.

Timed (jit-compiled, warmed up, median of `--repeats` rounds, `block_until_ready`; the rounds
interleave every V and part so machine load drifts hit them alike):
- total: the whole prefill, images + tokens -> last position's logits (what generation needs);
- vision: the tower up to the deepest feature layer (same for every V);
- text query: the LLM's text-only pass over the question (QueCC only; same for every V);
- QueCC: the compressor alone on the tower's features;
- LLM: the decoder on the `[B, Q + V, D]` input embeddings, then the head at the last position.
Before timing, the pieces are chained and checked against the total prefill's logits.

Predicted FLOPs are `vlm_jax.models.flops.vlm_flops` (dense attention, last-position head);
the LLM part is its `llm_prefill + lm_head`. Targets: measured LLM speed-up against V = 576 at
least 0.8 x the FLOPs-predicted one, and QueCC's own cost at most 5% of the prefill at V = 1.
The share also gets a full-depth estimate (each timed part scaled by its FLOPs ratio between
the real depths and the run's), since shrinking depth shrinks everything but QueCC.

Prints a table, then one JSON line: `rows` (per V: `V`, `total_ms`, `vision_ms`,
`text_query_ms`, `compressor_ms`, `llm_ms`, GFLOPs, `speedup`, `predicted_speedup`,
`efficiency`, `total_speedup`, `predicted_total_speedup`, `compressor_share`),
`min_efficiency`, `quecc_share_at_1`, `quecc_share_at_1_full_depth_est`, the targets and the
run's settings (including the load average, as timings on a shared machine are noisy).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.bench.load import load_average, warn_if_loaded
from vlm_jax.models import presets
from vlm_jax.models.compressors import window_size
from vlm_jax.models.config import CompressorConfig, LLMConfig, ViTConfig, VLMConfig
from vlm_jax.models.flops import vlm_flops
from vlm_jax.models.layers import select_layers
from vlm_jax.models.llm import default_positions
from vlm_jax.models.vlm import VLM

TOKENS = (1, 4, 16, 36, 64, 144, 576)
REFERENCE_VISION_DEPTH = 24
REFERENCE_LLM_DEPTH = 24
REFERENCE_FEATURE_LAYERS = (12, 16, 22, 23)
TARGET_EFFICIENCY = 0.8
TARGET_QUECC_SHARE = 0.05
PARTS = ("total", "vision", "text_query", "compressor", "llm")


def scaled_feature_layers(depth: int) -> tuple[int, ...]:
    """QueCC's hidden-state indices for a `depth`-layer tower: the reference (12, 16, 22, 23)
    of 24 layers scaled by `(depth - 1) / 23`, so the deepest is `depth - 1` (= layer -2)."""
    if depth < 2:
        raise ValueError(f"--vision-depth must be >= 2 (QueCC reads layer depth - 1), got {depth}")
    top = REFERENCE_FEATURE_LAYERS[-1]
    return tuple(max(1, round(i * (depth - 1) / top)) for i in REFERENCE_FEATURE_LAYERS)


def bench_config(num_tokens: int, *, llm_depth: int, vision_depth: int,
                 quick: bool = False) -> VLMConfig:
    """The benchmark VLM at V = `num_tokens` (QueCC below G*G, identity at G*G).

    quick: tiny widths (tower width 32 on a 24 x 24 grid, LLM width 32, vocabulary 257) for
    smoke tests; the same token counts apply.
    """
    if llm_depth < 1:
        raise ValueError(f"--llm-depth must be >= 1, got {llm_depth}")
    layers = scaled_feature_layers(vision_depth)
    if quick:
        vision = ViTConfig("clip", 48, 2, 32, vision_depth, 4, 64)
        llm = LLMConfig(family="qwen2", vocab_size=257, width=32, depth=llm_depth, heads=4,
                        kv_heads=4, mlp_dim=64, qkv_bias=True, rope_theta=1e6,
                        tie_embeddings=True, max_len=2048)
        base = VLMConfig(vision=vision, llm=llm, image_token_id=llm.vocab_size - 1)
    else:
        base = presets.llava("clip-l/14-336", "qwen1.5-0.5b")
        base = dataclasses.replace(base, vision=dataclasses.replace(base.vision, depth=vision_depth),
                                   llm=dataclasses.replace(base.llm, depth=llm_depth))
    patches = base.vision.grid**2
    if num_tokens == patches:
        comp = CompressorConfig("identity", feature_layers=layers)
    else:
        window_size(num_tokens, base.vision.grid, "quecc")  # a clear error for a V off the grid
        comp = CompressorConfig("quecc", num_tokens, feature_layers=layers)
    return dataclasses.replace(base, compressor=comp)


# ----------------------------------------------------------------------------- module methods
# Each takes the bound VLM first (`module.apply(..., method=fn)`).


def _features(m: VLM, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images -> (x `[B, P, C]` selected layer, x_multi `[B, P, 4C]`), class token dropped."""
    hidden = m.vision_tower(images).hidden_states
    cfg = m.cfg
    x = select_layers(hidden, cfg.vision_feature_layer)[:, 1:]
    return x, select_layers(hidden, cfg.compressor.feature_layers)[:, 1:]


def _text_query(m: VLM, question: jax.Array) -> jax.Array:
    """question `[B, Q]` -> `[B, D]`."""
    return m.text_query(question, jnp.ones(question.shape, bool))


def _compress(m: VLM, x: jax.Array, x_multi: jax.Array, text: jax.Array) -> jax.Array:
    """QueCC alone: `[B, P, C]` -> `[B, V, C]`."""
    return m.compressor(x, x_multi=x_multi, text=text)


def _llm_inputs(m: VLM, visual: jax.Array, tokens: jax.Array) -> jax.Array:
    """Compressed features `[B, V, C]` + prompt `[B, 1 + V + Q - 1]` -> embeddings `[B, L, D]`
    (BOS, the projected visual tokens, then the text)."""
    lm = m.language_model
    v = visual.shape[1]
    vis = m.multi_modal_projector(visual)
    return jnp.concatenate([lm.embed(tokens[:, :1]), vis.astype(jnp.float32),
                            lm.embed(tokens[:, 1 + v:])], axis=1)


def _llm_last_logits(m: VLM, embeds: jax.Array) -> jax.Array:
    """The LLM prefill: embeddings `[B, L, D]` -> last position's logits `[B, vocab]`."""
    lm = m.language_model
    valid = jnp.ones(embeds.shape[:2], bool)
    out = lm(embeds, default_positions(valid), valid, logits=False)
    return lm.head(out.hidden[:, -1:])[:, 0]


def _prefill(m: VLM, images: jax.Array, tokens: jax.Array, question) -> jax.Array:
    """The whole prefill: images + prompt -> last position's logits `[B, vocab]`."""
    return _llm_last_logits(m, m.embed_inputs(images, tokens, question))


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Case:
    """One V: its config and the timed calls (name -> zero-argument function)."""

    v: int
    cfg: VLMConfig
    calls: dict[str, Callable[[], jax.Array]]
    max_diff: float  # |chained pieces - total prefill| on the last logits


def _jit(module: VLM, fn) -> Callable:
    return jax.jit(lambda p, *a: module.apply({"params": p}, *a, method=fn))


def make_inputs(cfg: VLMConfig, v: int, batch: int, text: int, seed: int = 0):
    """(images `[B, H, W, 3]`, tokens `[B, 1 + V + text - 1]`, question `[B, text]`)."""
    if text < 2:
        raise ValueError(f"--text-tokens must be >= 2 (BOS + question), got {text}")
    rng = np.random.default_rng(seed)
    words = rng.integers(2, cfg.image_token_id, (batch, text - 1))
    bos = np.ones((batch, 1), np.int64)
    tokens = np.concatenate([bos, np.full((batch, v), cfg.image_token_id), words], axis=1)
    size = cfg.vision.image_size
    images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    question = np.concatenate([bos, words], axis=1)
    return (jnp.asarray(images), jnp.asarray(tokens, jnp.int32),
            jnp.asarray(question, jnp.int32))


def random_params(module: VLM, *inputs, seed: int = 0) -> dict:
    """Random float32 weights for everything `_prefill(module, *inputs)` touches, drawn with
    numpy from the shapes alone (`jax.eval_shape`): compiling `module.init` costs far more
    than the benchmark's own calls on a loaded CPU. Norm scales ('scale', 'weight') are ones,
    every other leaf is N(0, 0.02) (HF's initializer_range), so activations stay O(1)."""
    shapes = jax.eval_shape(lambda r: module.init(r, *inputs, method=_prefill),
                            jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key in ("scale", "weight"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(0.02 * rng.standard_normal(leaf.shape, np.float32), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes["params"]))


def build_cases(tokens: Sequence[int], *, llm_depth: int, vision_depth: int, batch: int,
                text: int, quick: bool, seed: int = 0) -> tuple[list[Case], dict]:
    """Every V's calls, sharing one set of tower / projector / LLM weights; plus the shared
    calls {'vision', 'text_query'} (the latter only when some V uses QueCC)."""
    cfgs = {v: bench_config(v, llm_depth=llm_depth, vision_depth=vision_depth, quick=quick)
            for v in tokens}
    patches = next(iter(cfgs.values())).num_patches
    if patches not in cfgs:
        raise ValueError(f"--tokens {list(tokens)} must include V = {patches} (no compression), "
                         "the baseline of every speed-up")
    base = VLM(cfgs[patches])
    images, base_tokens, question = make_inputs(base.cfg, patches, batch, text, seed)
    params = random_params(base, images, base_tokens, None, seed=seed)
    features = _jit(base, _features)
    x, x_multi = features(params, images)
    shared = {"vision": lambda: features(params, images)}
    quecc_v = [v for v in cfgs if v != patches]
    if quecc_v:
        text_q = _jit(VLM(cfgs[quecc_v[0]]), _text_query)
        text_vec = text_q(params, question)
        shared["text_query"] = lambda: text_q(params, question)
    cases = []
    for i, (v, cfg) in enumerate(sorted(cfgs.items())):
        module = VLM(cfg)
        _, tok, _ = make_inputs(cfg, v, batch, text, seed)
        p, calls = params, {}
        if v == patches:
            visual, q = x, None
        else:
            comp = random_params(module, images, tok, question, seed=seed + 1 + i)["compressor"]
            p = {**params, "compressor": comp}
            compress = _jit(module, _compress)
            visual, q = compress(p, x, x_multi, text_vec), question
            calls["compressor"] = lambda f=compress, p=p: f(p, x, x_multi, text_vec)
        embeds = _jit(module, _llm_inputs)(p, visual, tok)
        llm, prefill = _jit(module, _llm_last_logits), _jit(module, _prefill)
        calls["llm"] = lambda f=llm, p=p, e=embeds: f(p, e)
        calls["total"] = lambda f=prefill, p=p, t=tok, q=q: f(p, images, t, q)
        diff = float(jnp.max(jnp.abs(calls["llm"]() - calls["total"]())))
        cases.append(Case(v, cfg, calls, diff))
    return cases, shared


def _ms(fn: Callable[[], jax.Array]) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return (time.perf_counter() - t) * 1e3


def measure(cases: list[Case], shared: dict, repeats: int, warmup: int = 1) -> dict:
    """Median ms per (V, part): `{V: {part: ms}}`, shared parts copied into every row (0 where
    a part does not exist, e.g. QueCC at V = 576). Rounds interleave all calls."""
    times: dict = {c.v: {k: [] for k in c.calls} for c in cases}
    times["shared"] = {k: [] for k in shared}
    for r in range(warmup + repeats):
        for name, fn in shared.items():
            t = _ms(fn)
            if r >= warmup:
                times["shared"][name].append(t)
        for case in cases:
            for name, fn in case.calls.items():
                t = _ms(fn)
                if r >= warmup:
                    times[case.v][name].append(t)
    med = {k: float(np.median(t)) for k, t in times.pop("shared").items()}
    out = {}
    for case in cases:
        row = {k: float(np.median(t)) for k, t in times[case.v].items()}
        row["vision"] = med["vision"]
        row["text_query"] = med.get("text_query", 0.0) if "compressor" in row else 0.0
        out[case.v] = {k: row.get(k, 0.0) for k in PARTS}
    return out


# ----------------------------------------------------------------------------- report


def _llm_flops(f: dict) -> float:
    return f["llm_prefill"] + f["lm_head"]


def summarize(cases: list[Case], ms: dict, *, text: int, batch: int, llm_depth: int,
              vision_depth: int, quick: bool) -> dict:
    """Rows with FLOPs, speed-ups and shares; the targets; a full-depth share estimate."""
    flops = {c.v: vlm_flops(c.cfg, text) for c in cases}
    ref = max(flops)
    rows = []
    for c in cases:
        f, t = flops[c.v], ms[c.v]
        pred = _llm_flops(flops[ref]) / _llm_flops(f)
        speed = ms[ref]["llm"] / t["llm"]
        rows.append({
            "V": c.v, **{f"{k}_ms": round(t[k], 3) for k in PARTS},
            "llm_gflops": batch * _llm_flops(f) / 1e9, "total_gflops": batch * f["total"] / 1e9,
            "speedup": speed, "predicted_speedup": pred, "efficiency": speed / pred,
            "total_speedup": ms[ref]["total"] / t["total"],
            "predicted_total_speedup": flops[ref]["total"] / f["total"],
            "compressor_share": t["compressor"] / t["total"],
            "max_abs_diff_pieces_vs_total": c.max_diff,
        })
    effs = [r["efficiency"] for r in rows if r["V"] != ref]
    at1 = next((r for r in rows if r["V"] == 1), None)
    share_full = None
    if at1 is not None and not quick:  # scale each timed part by its FLOPs at the real depths
        full = vlm_flops(bench_config(1, llm_depth=REFERENCE_LLM_DEPTH,
                                      vision_depth=REFERENCE_VISION_DEPTH), text)
        f1, t1 = flops[1], ms[1]
        est = t1["total"] + sum(t1[part] * (full[key] / f1[key] - 1) for part, key in
                                (("vision", "vision"), ("text_query", "text_query")))
        est += t1["llm"] * (_llm_flops(full) / _llm_flops(f1) - 1)
        share_full = t1["compressor"] / est
    min_eff = min(effs) if effs else None
    share = at1["compressor_share"] if at1 else None
    return {
        "rows": rows, "min_efficiency": min_eff, "quecc_share_at_1": share,
        "quecc_share_at_1_full_depth_est": share_full,
        "targets": {"min_efficiency": TARGET_EFFICIENCY, "quecc_share_at_1": TARGET_QUECC_SHARE},
        "targets_met": {
            "min_efficiency": None if min_eff is None else min_eff >= TARGET_EFFICIENCY,
            "quecc_share_at_1": None if share is None else share <= TARGET_QUECC_SHARE},
        "settings": {"llm_depth": llm_depth, "vision_depth": vision_depth,
                     "feature_layers": list(scaled_feature_layers(vision_depth)),
                     "text_tokens": text, "batch": batch, "quick": quick,
                     "vocab_size": cases[0].cfg.llm.vocab_size, "device": str(jax.devices()[0]),
                     "cpu_count": os.cpu_count()},
    }


def print_table(s: dict) -> None:
    st = s["settings"]
    print(f"QueCC prefill vs V: Q = {st['text_tokens']} text tokens, batch {st['batch']}, LLM "
          f"depth {st['llm_depth']}, tower depth {st['vision_depth']} (feature layers "
          f"{st['feature_layers']}), vocab {st['vocab_size']}, {st['device']}, "
          f"{st['cpu_count']} CPUs, load avg {st.get('load_avg_start')} -> "
          f"{st.get('load_avg_end')}, median of {st.get('repeats')} rounds")
    head = (f"{'V':>4} {'total ms':>9} {'vision':>8} {'query':>7} {'QueCC':>7} {'LLM ms':>8} "
            f"{'LLM GF':>8} {'speed-up':>8} {'pred.':>7} {'eff.':>5} {'tot.sp':>6} "
            f"{'pred.':>6} {'QueCC %':>7}")
    print(head)
    for r in s["rows"]:
        print(f"{r['V']:4d} {r['total_ms']:9.1f} {r['vision_ms']:8.1f} {r['text_query_ms']:7.1f} "
              f"{r['compressor_ms']:7.1f} {r['llm_ms']:8.1f} {r['llm_gflops']:8.2f} "
              f"{r['speedup']:8.2f} {r['predicted_speedup']:7.2f} {r['efficiency']:5.2f} "
              f"{r['total_speedup']:6.2f} {r['predicted_total_speedup']:6.2f} "
              f"{100 * r['compressor_share']:7.2f}")
    diff = max(r["max_abs_diff_pieces_vs_total"] for r in s["rows"])
    print(f"chained pieces vs total prefill: max |logit diff| {diff:.2e}")
    met = s["targets_met"]
    if s["min_efficiency"] is not None:
        print(f"target: LLM speed-up >= {TARGET_EFFICIENCY} x FLOPs-predicted for every V < "
              f"{max(r['V'] for r in s['rows'])}: min efficiency {s['min_efficiency']:.2f} -> "
              f"{'met' if met['min_efficiency'] else 'NOT met'}")
    if s["quecc_share_at_1"] is not None:
        full = s["quecc_share_at_1_full_depth_est"]
        extra = "" if full is None else f" (full-depth estimate {100 * full:.2f}%)"
        print(f"target: QueCC <= {100 * TARGET_QUECC_SHARE:.0f}% of the prefill at V = 1: "
              f"{100 * s['quecc_share_at_1']:.2f}%{extra} -> "
              f"{'met' if met['quecc_share_at_1'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llm-depth", type=int, default=None, help="default 4 (quick: 2)")
    p.add_argument("--vision-depth", type=int, default=None, help="default 4 (quick: 2)")
    p.add_argument("--repeats", type=int, default=None, help="default 5 (quick: 2)")
    p.add_argument("--text-tokens", type=int, default=50)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)),
                   help="comma-separated V values; must include 576")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny widths: a smoke test")
    args = p.parse_args(argv)
    small = 2 if args.quick else None
    llm_depth = args.llm_depth or small or 4
    vision_depth = args.vision_depth or small or 4
    repeats = args.repeats or small or 5
    if repeats < 1 or args.batch < 1:
        raise ValueError(f"--repeats and --batch must be >= 1, got {repeats}, {args.batch}")
    try:
        tokens = sorted({int(t) for t in args.tokens.split(",")})
    except ValueError as err:
        raise ValueError(f"--tokens must be comma-separated integers, got {args.tokens!r}") from err
    load_start = load_average()
    warn_if_loaded(load_start, "bench.tokens start")
    cases, shared = build_cases(tokens, llm_depth=llm_depth, vision_depth=vision_depth,
                                batch=args.batch, text=args.text_tokens, quick=args.quick,
                                seed=args.seed)
    ms = measure(cases, shared, repeats)
    s = summarize(cases, ms, text=args.text_tokens, batch=args.batch, llm_depth=llm_depth,
                  vision_depth=vision_depth, quick=args.quick)
    s["settings"].update(repeats=repeats, load_avg_start=load_start,
                         load_avg_end=load_average())
    warn_if_loaded(s["settings"]["load_avg_end"], "bench.tokens end")
    print_table(s)
    print(json.dumps(s))
    return s


if __name__ == "__main__":
    main()
