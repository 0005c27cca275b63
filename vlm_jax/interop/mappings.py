"""Parameter-name tables between Hugging Face checkpoints and vlm_jax, one per family.

A `Rule` ties one HF tensor name to one or more vlm_jax parameter paths ("/"-joined, as in
`flax.traverse_util.flatten_dict(params, sep="/")`) through an invertible `Transform`; `{i}`
stands for a layer index. The SAME table drives loading and saving: `plan(parts, shapes)`
instantiates the rules for every parameter a config creates and returns the HF names with their
expected HF shapes; loading reads those names, saving writes them.

HF names are canonical, i.e. what transformers 5.x `save_pretrained` writes (LLaVA:
`language_model.model.*`, `language_model.lm_head.weight`, `vision_tower.*`,
`multi_modal_projector.*`; vision towers without a `vision_model.` infix). Other spellings of
the same checkpoint (transformers' runtime `model.language_model.*`, legacy llava-hf
`vision_tower.vision_model.*`) are renamed to canonical names by
`*_ALIASES` (regex, replacement) lists before the lookup. The original LLaVA repository
(and the QueCC fork) has its own tables, `original_llava_parts`, used both ways as well.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Transform:
    """HF tensor <-> vlm_jax arrays. `hf_shape` maps our shapes to the HF shape."""

    to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_hf: Callable[..., np.ndarray]
    hf_shape: Callable[..., Shape]


def _split3(w: np.ndarray, transpose: bool) -> tuple[np.ndarray, ...]:
    if w.shape[0] % 3:
        raise ValueError(f"a fused q/k/v tensor needs a leading dim divisible by 3, got {w.shape}")
    return tuple(p.T if transpose else p for p in np.split(w, 3, axis=0))


COPY = Transform(lambda a: (a,), lambda a: a, lambda s: s)
# nn.Linear weight [out, in] <-> Dense kernel [in, out].
LINEAR = Transform(lambda a: (a.T,), lambda k: k.T, lambda s: s[::-1])
# Conv2d weight [out, in, kh, kw] <-> flax Conv kernel [kh, kw, in, out].
CONV = Transform(lambda a: (a.transpose(2, 3, 1, 0),), lambda k: k.transpose(3, 2, 0, 1),
                 lambda s: (s[3], s[2], s[0], s[1]))
# nn.MultiheadAttention in_proj_weight [3C, C] <-> q, k, v kernels [C, C].
QKV_KERNELS = Transform(lambda a: _split3(a, True),
                        lambda q, k, v: np.concatenate([q.T, k.T, v.T], axis=0),
                        lambda q, k, v: (q[1] + k[1] + v[1], q[0]))
# nn.MultiheadAttention in_proj_bias [3C] <-> q, k, v biases [C].
QKV_BIASES = Transform(lambda a: _split3(a, False), lambda q, k, v: np.concatenate([q, k, v]),
                       lambda q, k, v: (q[0] + k[0] + v[0],))


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str  # HF name relative to its part, `{i}` = layer index
    ours: tuple[str, ...]  # vlm_jax paths relative to its part
    transform: Transform


def _linear(hf: str, ours: str) -> list[Rule]:
    return [Rule(f"{hf}.weight", (f"{ours}/kernel",), LINEAR),
            Rule(f"{hf}.bias", (f"{ours}/bias",), COPY)]


def _layer_norm(hf: str, ours: str) -> list[Rule]:
    return [Rule(f"{hf}.weight", (f"{ours}/scale",), COPY),
            Rule(f"{hf}.bias", (f"{ours}/bias",), COPY)]


def _decoder_table() -> tuple[Rule, ...]:
    """Llama / Qwen2 `*ForCausalLM` (both families use the same names)."""
    hl, ol = "model.layers.{i}.", "layers_{i}/"
    rules = [Rule("model.embed_tokens.weight", ("embed_tokens/embedding",), COPY),
             Rule("model.norm.weight", ("norm/weight",), COPY),
             Rule("lm_head.weight", ("lm_head/kernel",), LINEAR)]
    for norm in ("input_layernorm", "post_attention_layernorm"):
        rules.append(Rule(f"{hl}{norm}.weight", (f"{ol}{norm}/weight",), COPY))
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        rules += _linear(f"{hl}self_attn.{proj}", f"{ol}self_attn/{proj}")
    for proj in ("gate_proj", "up_proj", "down_proj"):
        rules += _linear(f"{hl}mlp.{proj}", f"{ol}mlp/{proj}")
    return tuple(rules)


def _vision_table(family: str) -> tuple[Rule, ...]:
    """CLIP / SigLIP vision transformer (names inside `vision_model`)."""
    he, oe = "encoder.layers.{i}.", "layers_{i}/"
    rules = [Rule("embeddings.patch_embedding.weight", ("patch_embedding/kernel",), CONV),
             Rule("embeddings.position_embedding.weight", ("position_embedding/embedding",), COPY)]
    rules += _layer_norm("post_layernorm", "post_layernorm")
    for norm in ("layer_norm1", "layer_norm2"):
        rules += _layer_norm(f"{he}{norm}", f"{oe}{norm}")
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        rules += _linear(f"{he}self_attn.{proj}", f"{oe}self_attn/{proj}")
    for fc in ("fc1", "fc2"):
        rules += _linear(f"{he}mlp.{fc}", f"{oe}mlp/{fc}")
    if family == "clip":
        rules.append(Rule("embeddings.class_embedding", ("class_embedding",), COPY))
        rules += _layer_norm("pre_layrnorm", "pre_layrnorm")
    else:  # SigLIP: patch bias and the attention-pooling head
        qkv = tuple(f"head/attention/{p}_proj" for p in "qkv")
        rules += [Rule("embeddings.patch_embedding.bias", ("patch_embedding/bias",), COPY),
                  Rule("head.probe", ("head/probe",), COPY),
                  Rule("head.attention.in_proj_weight", tuple(f"{p}/kernel" for p in qkv),
                       QKV_KERNELS),
                  Rule("head.attention.in_proj_bias", tuple(f"{p}/bias" for p in qkv), QKV_BIASES)]
        rules += _linear("head.attention.out_proj", "head/attention/out_proj")
        rules += _layer_norm("head.layernorm", "head/layernorm")
        rules += _linear("head.mlp.fc1", "head/mlp/fc1") + _linear("head.mlp.fc2", "head/mlp/fc2")
    return tuple(rules)


DECODER = _decoder_table()
CLIP = _vision_table("clip")
SIGLIP = _vision_table("siglip")
PROJECTOR = tuple(_linear("linear_1", "linear_1") + _linear("linear_2", "linear_2"))
VISION = {"clip": CLIP, "siglip": SIGLIP}


def _quecc_table() -> tuple[Rule, ...]:
    """QueCC / TokenPacker compressors in the reference PyTorch module's names.

    `text_projection.{0: Linear, 1: LayerNorm}`, `{q,k,v}_proj.{0: Linear, 2: Linear,
    3: LayerNorm}` (1 is the GELU), `q_downsample` (depthwise Conv2d, `[C, 1, k, k]`),
    `clip_attn` (`nn.MultiheadAttention`: fused `in_proj_*`, `out_proj`). Rules for parts a
    model lacks (no text query, no conv) are simply not instantiated by `plan`.
    """
    rules = _linear("text_projection.0", "text_projection/fc")
    rules += _layer_norm("text_projection.1", "text_projection/norm")
    for m in ("q_proj", "k_proj", "v_proj"):
        rules += _linear(f"{m}.0", f"{m}/fc1") + _linear(f"{m}.2", f"{m}/fc2")
        rules += _layer_norm(f"{m}.3", f"{m}/norm")
    qkv = tuple(f"clip_attn/{n}" for n in ("query", "key", "value"))
    rules += [Rule("q_downsample.weight", ("q_downsample/kernel",), CONV),
              Rule("q_downsample.bias", ("q_downsample/bias",), COPY),
              Rule("clip_attn.in_proj_weight", tuple(f"{p}/kernel" for p in qkv), QKV_KERNELS),
              Rule("clip_attn.in_proj_bias", tuple(f"{p}/bias" for p in qkv), QKV_BIASES)]
    return tuple(rules + _linear("clip_attn.out_proj", "clip_attn/out_proj"))


QUECC = _quecc_table()


@dataclasses.dataclass(frozen=True)
class Part:
    """A table placed under an HF name prefix and a vlm_jax path prefix."""

    hf_prefix: str
    our_prefix: str
    rules: tuple[Rule, ...]


def llava_parts(vision_family: str) -> tuple[Part, ...]:
    return (Part("vision_tower.", "vision_tower/", VISION[vision_family]),
            Part("multi_modal_projector.", "multi_modal_projector/", PROJECTOR),
            Part("language_model.", "language_model/", DECODER))


def original_llava_parts(vision_family: str, compressor: str) -> tuple[Part, ...]:
    """The original LLaVA repository's `LlavaLlamaForCausalLM` layout (and the QueCC fork's).

    LLM at the top level (`model.*`, `lm_head`), tower under
    `model.vision_tower.vision_tower.vision_model.`, projector `model.mm_projector`: an
    `nn.Sequential(Linear, GELU, Linear)` (`.0`, `.2`), or with a token compressor in front
    `nn.Sequential(QueCC, Linear, GELU, Linear)` (`.0` the compressor, `.1`, `.3`).
    """
    first, second = ("0", "2") if compressor == "identity" else ("1", "3")
    projector = tuple(_linear(first, "linear_1") + _linear(second, "linear_2"))
    parts = [Part("model.vision_tower.vision_tower.vision_model.", "vision_tower/",
                  VISION[vision_family]),
             Part("model.mm_projector.", "multi_modal_projector/", projector)]
    if compressor != "identity":
        parts.append(Part("model.mm_projector.0.", "compressor/", QUECC))
    return (*parts, Part("", "language_model/", DECODER))


# Load-time renames to canonical names, applied in order.
VISION_ALIASES = ((r"^vision_model\.", ""),)  # CLIPModel / SiglipModel / older vision models
LLAVA_ALIASES = (
    (r"^model\.language_model\.", "language_model.model."),  # transformers 5 runtime names
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^model\.vision_tower\.", "vision_tower."),
    (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
    (r"^vision_tower\.vision_model\.", "vision_tower."),  # llava-hf checkpoints on the Hub
)
# Buffers and unused towers that may sit in a checkpoint and are skipped on load.
ALWAYS_IGNORED = (r"(^|\.)position_ids$", r"\.rotary_emb\.inv_freq$")
FULL_MODEL_IGNORED = (r"^text_model\.", r"^text_projection\.", r"^visual_projection\.",
                      r"^logit_scale$", r"^logit_bias$")


def rename(name: str, aliases: Sequence[tuple[str, str]]) -> str:
    for pattern, repl in aliases:
        name = re.sub(pattern, repl, name)
    return name


@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor of a concrete model: its vlm_jax paths, rule and expected HF shape."""

    paths: tuple[str, ...]
    transform: Transform
    hf_shape: Shape


def _pattern(ours: str) -> re.Pattern:
    return re.compile(re.escape(ours).replace(r"\{i\}", r"(\d+)") + "$")


def plan(parts: Sequence[Part], shapes: Mapping[str, Shape]) -> dict[str, Entry]:
    """HF name -> Entry for every parameter path in `shapes` (flattened, "/"-joined).

    Raises if a parameter has no rule (the tables do not cover this model) or a multi-tensor
    rule is only partly present.
    """
    out: dict[str, Entry] = {}
    covered: set[str] = set()
    compiled = [(part, rule, _pattern(part.our_prefix + ours))
                for part in parts for rule in part.rules for ours in rule.ours]
    for path in sorted(shapes):
        if path in covered:
            continue
        for part, rule, pat in compiled:
            m = pat.match(path)
            if m is None:
                continue
            layer = m.group(1) if pat.groups else ""
            fill = lambda s, layer=layer: s.replace("{i}", layer)
            paths = tuple(part.our_prefix + fill(p) for p in rule.ours)
            absent = [p for p in paths if p not in shapes]
            if absent:
                raise ValueError(f"parameters {absent} are missing next to {path!r}; "
                                 f"the HF tensor {part.hf_prefix + fill(rule.hf)!r} needs all of "
                                 f"{list(paths)}")
            hf_shape = tuple(rule.transform.hf_shape(*[tuple(shapes[p]) for p in paths]))
            out[part.hf_prefix + fill(rule.hf)] = Entry(paths, rule.transform, hf_shape)
            covered.update(paths)
            break
        else:
            raise ValueError(f"no Hugging Face name for vlm_jax parameter {path!r}: this model "
                             "has parts the HF architecture does not (e.g. a compressor)")
    return out
