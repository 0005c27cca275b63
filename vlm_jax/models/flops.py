"""FLOPs and parameter counts from configs (docs/algorithms.md section 3 FLOPs model, **ours**).

Every `*_flops` function returns a `Flops` dict: component name -> FLOPs (float), plus
`"total"`, the sum of the other entries (components are disjoint). `format_flops` prints one.

Conventions:
- a matmul `[n, a] @ [a, b]` is `2 n a b` FLOPs; a depthwise `k x k` conv is `2 k^2` per output
  element. Norms, activations, softmax, rotary, biases, residual adds and embedding lookups are
  not counted (O(n d), well under 1% at real widths). The average-pool compressor, which has no
  matmul, counts one add per input element.
- attention is `4 n n_ctx (H Dh)` per layer (scores and weighted values). Prefill uses
  `n_ctx = n`: the full `n x n` score matrix, as the dense masked attention here computes it;
  `causal=True` counts only the `n (n + 1) / 2` (query, key) pairs a causal kernel visits.
- the LM head: at prefill only the last position's logits (what generation needs;
  `lm_head="all"` for every position, `"none"` for hidden states only); one per decoded token.
- the vision tower of a VLM counts the layers up to the deepest hidden state the VLM reads
  (`jit` drops the rest, including the post-LN and SigLIP's MAP head); a `ViTConfig` alone
  counts every layer and the head.
- compressors follow docs/algorithms.md section 2 with `G x G` patches of width `C` in and `V` tokens out
  (`k = G / sqrt(V)`); see `compressor_flops`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from vlm_jax.models.config import LLMConfig, ViTConfig, VLMConfig

Flops = dict[str, float]


def _with_total(d: dict[str, float]) -> Flops:
    out = {k: float(v) for k, v in d.items()}
    out["total"] = float(sum(out.values()))
    return out


def format_flops(flops: Flops, unit: float = 1e9, name: str = "GFLOPs") -> str:
    """One line per component, e.g. `vision        1.234 GFLOPs  (12.3%)`."""
    total = flops.get("total") or 1.0
    w = max(map(len, flops))
    return "\n".join(f"{k:<{w}}  {v / unit:12.4f} {name}  ({100 * v / total:5.1f}%)"
                     for k, v in flops.items())


# ----------------------------------------------------------------------------- LLM


def llm_layer_flops(cfg: LLMConfig, tokens: float, context: float | None = None) -> Flops:
    """One decoder layer: `tokens` queries, each attending to `context` keys (default tokens).

    Projections `2n(d dq + 2 d kv + dq d)`, SwiGLU MLP `2n 3 d m`, attention `4 n ctx dq` with
    `dq = heads * head_dim`, `kv = kv_heads * head_dim` (docs/algorithms.md section 3; dq = d normally).
    """
    n = float(tokens)
    ctx = n if context is None else float(context)
    d, dh, m = cfg.width, cfg.dim_per_head, cfg.mlp_dim
    dq, kv = cfg.heads * dh, cfg.kv_heads * dh
    return _with_total({"projections": 2 * n * (d * dq + 2 * d * kv + dq * d),
                        "mlp": 2 * n * 3 * d * m,
                        "attention": 4 * n * ctx * dq})


def check_schedule(schedule: Sequence[int], depth: int, visual_tokens: int) -> tuple[int, ...]:
    """A per-layer visual-token schedule `keep[l]`: `depth` ints in [0, visual_tokens]."""
    keep = tuple(int(k) for k in schedule)
    if len(keep) != depth:
        raise ValueError(f"schedule has {len(keep)} entries for an LLM with {depth} layers")
    bad = [i for i, k in enumerate(keep) if not 0 <= k <= visual_tokens]
    if bad:
        raise ValueError(f"schedule keep[{bad[0]}] = {keep[bad[0]]} is outside [0, "
                         f"{visual_tokens}] (the visual tokens entering the LLM)")
    return keep


def llm_prefill_flops(cfg: LLMConfig, text_tokens: int, visual_tokens: int = 0,
                      schedule: Sequence[int] | None = None, *, lm_head: str = "last",
                      causal: bool = False) -> Flops:
    """Prefill of `text_tokens + visual_tokens` tokens through every decoder layer.

    schedule: `keep[l]`, visual tokens present at layer l (pruning); None keeps all.
    lm_head: 'last' (one position's logits), 'all' (every position) or 'none'.
    Returns {'projections', 'mlp', 'attention', 'lm_head', 'total'}.
    """
    if lm_head not in ("last", "all", "none"):
        raise ValueError(f"lm_head must be 'last', 'all' or 'none', got {lm_head!r}")
    if text_tokens < 0 or visual_tokens < 0:
        raise ValueError(f"token counts must be >= 0, got text {text_tokens}, "
                         f"visual {visual_tokens}")
    keep = ((visual_tokens,) * cfg.depth if schedule is None
            else check_schedule(schedule, cfg.depth, visual_tokens))
    parts = {"projections": 0.0, "mlp": 0.0, "attention": 0.0}
    for k in keep:
        n = text_tokens + k
        layer = llm_layer_flops(cfg, n, (n + 1) / 2 if causal else n)
        for key in parts:
            parts[key] += layer[key]
    n_out = {"last": min(1, text_tokens + keep[-1]), "all": text_tokens + keep[-1], "none": 0}
    parts["lm_head"] = 2.0 * n_out[lm_head] * cfg.width * cfg.vocab_size
    return _with_total(parts)


def llm_decode_flops(cfg: LLMConfig, cached: int | Sequence[int], steps: int = 1) -> Flops:
    """`steps` decode steps of one token each on top of a cache holding `cached` tokens
    (one int, or one per layer for a pruned cache). Step t attends to `cached + t + 1` keys.
    Returns {'projections', 'mlp', 'attention', 'lm_head', 'total'}.
    """
    per_layer = [cached] * cfg.depth if isinstance(cached, (int, float)) else list(cached)
    if len(per_layer) != cfg.depth:
        raise ValueError(f"cached has {len(per_layer)} entries for {cfg.depth} layers")
    parts = {"projections": 0.0, "mlp": 0.0, "attention": 0.0}
    for c in per_layer:  # sum over t of (c + t + 1) keys = steps * c + steps (steps + 1) / 2
        layer = llm_layer_flops(cfg, steps, c + (steps + 1) / 2)
        for key in parts:
            parts[key] += layer[key]
    parts["lm_head"] = 2.0 * steps * cfg.width * cfg.vocab_size
    return _with_total(parts)


# ----------------------------------------------------------------------------- vision


def vision_flops(cfg: ViTConfig, layers: int | None = None, head: bool | None = None) -> Flops:
    """The tower on one image at its `num_positions` tokens.

    layers: encoder layers run (default all); head: count SigLIP's MAP head (default: when the
    config has one and all layers run). Returns {'patch_embed', 'projections', 'attention',
    'mlp', 'head', 'total'}.
    """
    t, c, m, p = cfg.num_positions, cfg.width, cfg.mlp_dim, cfg.patch_size
    depth = cfg.depth if layers is None else int(layers)
    if not 0 <= depth <= cfg.depth:
        raise ValueError(f"layers={layers} outside [0, {cfg.depth}] for this tower")
    head = (cfg.use_head and layers is None) if head is None else head
    head_flops = 0.0
    if head:  # one probe query: q/out projections of 1 token, k/v over t, attention, MLP
        head_flops = 2 * 2 * c * c + 2 * t * 2 * c * c + 4 * t * c + 2 * 2 * c * m
    return _with_total({"patch_embed": 2 * cfg.grid**2 * (p * p * 3) * c,
                        "projections": depth * 2 * t * 4 * c * c,
                        "attention": depth * 4 * t * t * c,
                        "mlp": depth * 2 * t * 2 * c * m,
                        "head": head_flops})


def _hidden_index(i: int, depth: int, what: str) -> int:
    j = i + depth + 1 if i < 0 else i
    if not 0 <= j <= depth:
        raise ValueError(f"{what}: feature layer {i} out of range for the {depth + 1} hidden "
                         f"states of a {depth}-layer vision tower")
    return j


def vision_layers_needed(cfg: VLMConfig) -> int:
    """Encoder layers the VLM needs: up to the deepest hidden state it reads."""
    sel = cfg.vision_feature_layer
    idx = [(i, "vision_feature_layer") for i in ([sel] if isinstance(sel, int) else sel)]
    if cfg.compressor.reads_multi:
        idx += [(i, "compressor.feature_layers") for i in cfg.compressor.feature_layers]
    return max(_hidden_index(i, cfg.vision.depth, what) for i, what in idx)


# ----------------------------------------------------------------------------- compressor


def _feature_width(cfg: VLMConfig) -> int:
    sel = cfg.vision_feature_layer
    return cfg.vision.width * (1 if isinstance(sel, int) else len(sel))


def _window(cfg: VLMConfig) -> tuple[int, int]:
    """(G, k): the patch grid and the window side so that (G / k)^2 = V."""
    g, v = cfg.vision.grid, cfg.num_visual_tokens
    h = math.isqrt(v)
    if h * h != v or g % h:
        raise ValueError(f"compressor {cfg.compressor.name!r} makes a square grid of tokens: "
                         f"num_tokens={v} must be h*h with h dividing the {g}x{g} patch grid")
    return g, g // h


def compressor_flops(cfg: VLMConfig) -> Flops:
    """The token compressor on one image (docs/algorithms.md section 2), `C` = selected feature width,
    `Cm` = width of the multi-layer features, `P = G*G` patches in, `V` tokens out:

    - identity: 0. avgpool: one add per input element, `P C`.
    - resampler: V learned queries; q/out projections over V, k/v over P, attention `4 V P C`.
    - quecc: text projection `2 D_llm C` (with the text query); query MLP `2 P 2 C^2`;
      depthwise conv `2 V k^2 C`; key and value MLPs `2 * 2 P (Cm C + C^2)`; attention
      projections q/out over V, k/v over P; windowed attention `4 V k^2 C`.
    - tokenpacker: as quecc without the text query, the conv replaced by a bilinear resize of
      `x` to the V-token grid (4 taps per output, `8 V C`), the query MLP run on those V tokens.
    The text query's own LLM pass is counted by `vlm_flops` ('text_query').
    """
    name = cfg.compressor.name
    c, p, v = _feature_width(cfg), cfg.vision.grid**2, cfg.num_visual_tokens
    cm = cfg.vision.width * len(cfg.compressor.feature_layers)
    if name == "identity":
        return _with_total({})
    if name == "avgpool":
        _window(cfg)
        return _with_total({"pool": p * c})
    attn_proj = 2 * 2 * v * c * c + 2 * 2 * p * c * c
    if name == "resampler":
        return _with_total({"attn_proj": attn_proj, "attention": 4 * v * p * c})
    if name not in ("quecc", "tokenpacker"):
        raise ValueError(f"no FLOPs formula for compressor {name!r}; known: identity, avgpool, "
                         "resampler, quecc, tokenpacker")
    g, k = _window(cfg)
    parts = {}
    if name == "quecc":
        parts["text_proj"] = 2 * cfg.llm.width * c if cfg.uses_text_query else 0.0
        parts["query_mlp"] = 2 * p * 2 * c * c
        parts["conv"] = 2 * v * k * k * c
    else:
        parts["downsample"] = 2 * 4 * v * c
        parts["query_mlp"] = 2 * v * 2 * c * c
    parts["kv_mlp"] = 2 * 2 * p * (cm * c + c * c)
    parts["attn_proj"] = attn_proj
    parts["attention"] = 4 * v * k * k * c
    return _with_total(parts)


def uses_text_query(cfg: VLMConfig) -> bool:
    """Whether the compressor runs the LLM over the question (QueCC with `use_text_query`)."""
    return cfg.uses_text_query


def projector_flops(cfg: VLMConfig) -> float:
    """`mlp2x_gelu` over V tokens: `2 V (C D + D D)`."""
    d = cfg.llm.width
    return 2.0 * cfg.num_visual_tokens * (_feature_width(cfg) * d + d * d)


# ----------------------------------------------------------------------------- whole VLM


def vlm_flops(cfg: VLMConfig, text_tokens: int, *, question_tokens: int | None = None,
              schedule: Sequence[int] | None = None, decode_tokens: int = 0,
              causal: bool = False) -> Flops:
    """One query: image + `text_tokens` (Q) prompt tokens, then `decode_tokens` decode steps.

    question_tokens: tokens of the text-only LLM pass of a text-query compressor (default Q).
    schedule: per-layer visual tokens kept in the LLM (pruning). Returns {'vision',
    'compressor', 'text_query', 'projector', 'llm_prefill', 'lm_head', 'decode', 'total'}
    ('llm_prefill' is the decoder layers; 'lm_head' the prefill's last-position logits).
    """
    v = cfg.num_visual_tokens
    keep = (v,) * cfg.llm.depth if schedule is None else check_schedule(schedule,
                                                                         cfg.llm.depth, v)
    prefill = llm_prefill_flops(cfg.llm, text_tokens, v, keep, causal=causal)
    text_query = 0.0
    if uses_text_query(cfg):
        q = text_tokens if question_tokens is None else question_tokens
        text_query = llm_prefill_flops(cfg.llm, q, 0, lm_head="none", causal=causal)["total"]
    decode = 0.0
    if decode_tokens:
        decode = llm_decode_flops(cfg.llm, [text_tokens + k for k in keep],
                                  decode_tokens)["total"]
    return _with_total({
        "vision": vision_flops(cfg.vision, layers=vision_layers_needed(cfg), head=False)["total"],
        "compressor": compressor_flops(cfg)["total"],
        "text_query": text_query,
        "projector": projector_flops(cfg),
        "llm_prefill": prefill["total"] - prefill["lm_head"],
        "lm_head": prefill["lm_head"],
        "decode": decode,
    })


def simple_flops(cfg: LLMConfig | VLMConfig, text_tokens: int,
                 visual_tokens: int | None = None) -> float:
    """The inference cost `C = 2 N (Q + V)` (docs/algorithms.md section 3), N = `param_count`
    of the LLM (all its parameters, as model sizes are quoted). V defaults to the VLM's
    `num_visual_tokens`."""
    llm = cfg.llm if isinstance(cfg, VLMConfig) else cfg
    if visual_tokens is None:
        if not isinstance(cfg, VLMConfig):
            raise ValueError("visual_tokens is required for an LLMConfig")
        visual_tokens = cfg.num_visual_tokens
    return 2.0 * param_count(llm) * (text_tokens + visual_tokens)


# ----------------------------------------------------------------------------- parameters


def _llm_params(cfg: LLMConfig) -> int:
    d, dh, m, vocab = cfg.width, cfg.dim_per_head, cfg.mlp_dim, cfg.vocab_size
    dq, kv = cfg.heads * dh, cfg.kv_heads * dh
    attn = d * dq + 2 * d * kv + dq * d + (dq + 2 * kv) * cfg.qkv_bias + d * cfg.o_bias
    mlp = 3 * d * m + (2 * m + d) * cfg.mlp_bias
    layer = attn + mlp + 2 * d  # + input / post-attention RMSNorm
    head = 0 if cfg.tie_embeddings else d * vocab
    return vocab * d + cfg.depth * layer + d + head


def _vit_params(cfg: ViTConfig) -> int:
    c, m, p = cfg.width, cfg.mlp_dim, cfg.patch_size
    attn = 4 * (c * c + c)
    mlp = c * m + m + m * c + c
    layer = attn + mlp + 2 * 2 * c  # two LayerNorms
    n = p * p * 3 * c + c * (cfg.family == "siglip")  # patch conv (+ bias)
    n += cfg.num_positions * c + c * cfg.class_token + 2 * c * (cfg.family == "clip")
    n += cfg.depth * layer + 2 * c  # layers, post-LN
    if cfg.use_head:
        n += c + attn + 2 * c + mlp  # probe, attention, LayerNorm, MLP
    return n


def _compressor_params(cfg: VLMConfig) -> int:
    """Counted from the registered module's shapes (`jax.eval_shape`; nothing is computed)."""
    if cfg.compressor.name == "identity":
        return 0
    import jax
    import jax.numpy as jnp

    from vlm_jax.models import compressors
    g, c = cfg.vision.grid, _feature_width(cfg)
    module = compressors.build(cfg.compressor, grid=g, width=c, text_width=cfg.llm.width)
    kw = {"x_multi": jnp.zeros((1, g * g, cfg.vision.width * len(cfg.compressor.feature_layers)))
          if cfg.compressor.reads_multi else None,
          "text": jnp.zeros((1, cfg.llm.width)) if cfg.uses_text_query else None}
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, g * g, c)),
                                                **kw))
    return sum(math.prod(s.shape) for s in jax.tree.leaves(shapes.get("params", {})))


def param_count(cfg: LLMConfig | ViTConfig | VLMConfig) -> int:
    """Parameters of a model, from its config alone (the LLM and ViT counted analytically;
    a non-identity compressor from its module's parameter shapes)."""
    if isinstance(cfg, LLMConfig):
        return _llm_params(cfg)
    if isinstance(cfg, ViTConfig):
        return _vit_params(cfg)
    if isinstance(cfg, VLMConfig):
        d, c = cfg.llm.width, _feature_width(cfg)
        projector = c * d + d * d + 2 * d * cfg.projector_bias
        return (_vit_params(cfg.vision) + _compressor_params(cfg) + projector
                + _llm_params(cfg.llm))
    raise TypeError(f"param_count takes an LLMConfig, ViTConfig or VLMConfig, got "
                    f"{type(cfg).__name__}")
