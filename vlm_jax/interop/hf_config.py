"""Hugging Face `config.json` <-> vlm_jax config dataclasses, both ways.

Reads transformers 4.x and 5.x spellings (`rope_theta` / `rope_scaling` or `rope_parameters`,
`image_token_index` or `image_token_id`) and the original LLaVA repository's `mm_*` keys; keys
missing from a config.json take transformers' defaults for that model type. Anything vlm_jax
cannot reproduce (other RoPE types, sliding windows, other activations) is an error naming
the key. `to_hf` writes what transformers 5.x writes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from vlm_jax.models.config import CompressorConfig, LLMConfig, ViTConfig, VLMConfig

# transformers' defaults, used for keys a config.json leaves out.
_LLM_DEFAULTS = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                  num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=2048,
                  rms_norm_eps=1e-6, attention_bias=False, mlp_bias=False),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                  max_position_embeddings=32768, rms_norm_eps=1e-6, use_sliding_window=False,
                  max_window_layers=28),
}
_VISION_DEFAULTS = {
    "clip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, image_size=224, patch_size=32,
                              layer_norm_eps=1e-5, hidden_act="quick_gelu"),
    "siglip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, image_size=224, patch_size=16,
                                layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                                vision_use_head=True),
}
_LLAVA_VISION_DEFAULT = dict(model_type="clip_vision_model", hidden_size=1024, patch_size=14,
                             image_size=336, num_hidden_layers=24, num_attention_heads=16,
                             intermediate_size=4096)
_VISION_TYPES = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}
_VISION_ACT = {"clip": "quick_gelu", "siglip": "gelu_pytorch_tanh"}
_LLM_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_VISION_ARCH = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}

# architecture -> (kind, family)
ARCHITECTURES = {
    "LlavaForConditionalGeneration": ("llava", None),
    "LlamaForCausalLM": ("llm", "llama"),
    "Qwen2ForCausalLM": ("llm", "qwen2"),
    "CLIPVisionModel": ("vision", "clip"),
    "CLIPVisionModelWithProjection": ("vision", "clip"),
    "CLIPModel": ("vision", "clip"),
    "SiglipVisionModel": ("vision", "siglip"),
    "SiglipModel": ("vision", "siglip"),
    "LlavaLlamaForCausalLM": ("llava_original", "llama"),
    "LlavaQwenForCausalLM": ("llava_original", "qwen2"),
    "LlavaQwen2ForCausalLM": ("llava_original", "qwen2"),
}
_MODEL_TYPES = {"llava": "LlavaForConditionalGeneration", "llama": "LlamaForCausalLM",
                "qwen2": "Qwen2ForCausalLM", "clip_vision_model": "CLIPVisionModel",
                "clip": "CLIPModel", "siglip_vision_model": "SiglipVisionModel",
                "siglip": "SiglipModel", "llava_llama": "LlavaLlamaForCausalLM",
                "llava_qwen": "LlavaQwenForCausalLM", "llava_qwen2": "LlavaQwen2ForCausalLM"}


def architecture(d: dict, where: str) -> tuple[str, str, str | None]:
    """(architecture name, kind, family) of a config.json, or a clear error."""
    archs = d.get("architectures") or []
    name = archs[0] if archs else _MODEL_TYPES.get(d.get("model_type"))
    if name not in ARCHITECTURES:
        raise ValueError(f"{where}: unsupported architecture (architectures={archs}, "
                         f"model_type={d.get('model_type')!r}); supported: {sorted(ARCHITECTURES)}")
    return (name, *ARCHITECTURES[name])


def _require(d: dict, key: str, allowed, where: str, default=None):
    value = d.get(key, default)
    if value not in allowed:
        raise ValueError(f"{where}: {key}={value!r} is not supported; vlm_jax implements "
                         f"{sorted(map(repr, allowed))}")
    return value


def _rope_theta(d: dict, where: str) -> float:
    params = d.get("rope_parameters")
    if isinstance(params, dict) and params:
        key, rope = "rope_parameters", params
    else:
        key, rope = "rope_scaling", d.get("rope_scaling") or {}
        params = {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in (None, "default"):
        raise ValueError(f"{where}: {key}.rope_type={kind!r} is not supported; vlm_jax "
                         "implements the default RoPE only")
    return float(params.get("rope_theta", d.get("rope_theta", 10000.0)))


def llm_from_hf(d: dict, where: str = "config.json", family: str | None = None) -> LLMConfig:
    family = family or d.get("model_type")
    if family not in _LLM_DEFAULTS:
        raise ValueError(f"{where}: model_type={family!r} is not a supported LLM; "
                         f"supported: {sorted(_LLM_DEFAULTS)}")
    d = {**_LLM_DEFAULTS[family], **d}
    _require(d, "hidden_act", ("silu",), where, "silu")
    heads = d["num_attention_heads"]
    if family == "qwen2":
        if d.get("use_sliding_window"):
            slides = [t for t in d.get("layer_types") or [] if t == "sliding_attention"]
            if slides or d["max_window_layers"] < d["num_hidden_layers"]:
                raise ValueError(f"{where}: use_sliding_window=True (sliding-window attention "
                                 "layers) is not supported")
        bias = dict(qkv_bias=True, o_bias=False, mlp_bias=False)
    else:
        bias = dict(qkv_bias=bool(d["attention_bias"]), o_bias=bool(d["attention_bias"]),
                    mlp_bias=bool(d["mlp_bias"]))
    if any(t != "full_attention" for t in d.get("layer_types") or []):
        raise ValueError(f"{where}: layer_types={d['layer_types']} has non-full attention "
                         "layers; not supported")
    head_dim = d.get("head_dim")
    return LLMConfig(
        family=family, vocab_size=d["vocab_size"], width=d["hidden_size"],
        depth=d["num_hidden_layers"], heads=heads,
        kv_heads=d.get("num_key_value_heads") or heads, mlp_dim=d["intermediate_size"],
        head_dim=None if head_dim in (None, d["hidden_size"] // heads) else head_dim,
        rope_theta=_rope_theta(d, where), norm_eps=d["rms_norm_eps"],
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        max_len=d["max_position_embeddings"], **bias)


def vision_from_hf(d: dict, where: str = "config.json") -> ViTConfig:
    mtype = d.get("model_type", "clip_vision_model")
    if mtype not in _VISION_DEFAULTS:
        raise ValueError(f"{where}: model_type={mtype!r} is not a supported vision tower; "
                         f"supported: {sorted(_VISION_DEFAULTS)}")
    family = "clip" if mtype == "clip_vision_model" else "siglip"
    d = {**_VISION_DEFAULTS[mtype], **d}
    _require(d, "hidden_act", (_VISION_ACT[family],), where)
    _require(d, "num_channels", (3,), where, 3)
    return ViTConfig(
        family=family, image_size=d["image_size"], patch_size=d["patch_size"],
        width=d["hidden_size"], depth=d["num_hidden_layers"], heads=d["num_attention_heads"],
        mlp_dim=d["intermediate_size"], norm_eps=d["layer_norm_eps"],
        use_head=family == "siglip" and bool(d.get("vision_use_head", True)))


def vlm_from_hf(d: dict, where: str = "config.json") -> VLMConfig:
    """A `LlavaForConditionalGeneration` config.json -> VLMConfig (identity compressor)."""
    vision = vision_from_hf(dict(d.get("vision_config") or _LLAVA_VISION_DEFAULT),
                            f"{where}: vision_config")
    text = dict(d.get("text_config") or {"model_type": "llama"})
    text.setdefault("model_type", "llama")
    # transformers ties the LLaVA head when either level asks for it.
    text["tie_word_embeddings"] = bool(d.get("tie_word_embeddings")
                                       or text.get("tie_word_embeddings"))
    llm = llm_from_hf(text, f"{where}: text_config")
    _require(d, "projector_hidden_act", ("gelu",), where, "gelu")
    select = _require(d, "vision_feature_select_strategy", ("default", "full"), where, "default")
    layer = d.get("vision_feature_layer", -2)
    image_token = d.get("image_token_index", d.get("image_token_id", 32000))
    return VLMConfig(vision=vision, llm=llm, compressor=CompressorConfig(),
                     projector_bias=bool(d.get("multimodal_projector_bias", True)),
                     vision_feature_layer=layer if isinstance(layer, int) else tuple(layer),
                     vision_feature_select=select, image_token_id=int(image_token))


# The QueCC fork fixes these (its quecc.py / clip_encoder.py); a config.json may override the
# feature layers with this key, which vlm_jax writes when they differ (the fork ignores it).
FORK_QUECC_LAYERS = (12, 16, 22, 23)
FORK_QUECC_HEADS = 8
FORK_QUECC_EPS = 1e-6
_LAYERS_KEY = "mm_vision_token_compression_feature_layers"
_ORIGINAL_ARCH = {"llama": ("LlavaLlamaForCausalLM", "llava_llama"),
                  "qwen2": ("LlavaQwenForCausalLM", "llava_qwen")}


def _fork_compressor(d: dict, vision: ViTConfig, llm: LLMConfig, patches: int,
                     where: str) -> CompressorConfig:
    """The fork's `mm_vision_token_compression_*` keys -> CompressorConfig.

    The fork's `mm_vision_output_token_count` counts patches *into* QueCC (a square grid G*G);
    the tokens out are `(G / k)^2` for the conv kernel k (stride must equal k).
    """
    kind = d.get("mm_vision_token_compression_type")
    if kind is None:
        return CompressorConfig()
    if kind != "quecc":
        raise ValueError(f"{where}: mm_vision_token_compression_type={kind!r} is not supported; "
                         "vlm_jax reads null (no compression) and 'quecc'")
    if d.get("mm_vision_select_feature", "patch") != "patch":
        raise ValueError(f"{where}: mm_vision_select_feature="
                         f"{d['mm_vision_select_feature']!r} with QueCC; the fork's QueCC needs "
                         "'patch' (a square patch grid)")
    count = d.get("mm_vision_output_token_count")
    count = patches if count is None else count
    if count != patches:
        raise ValueError(f"{where}: mm_vision_output_token_count={count} but the vision tower "
                         f"gives {patches} patches ({vision.grid}x{vision.grid})")
    kernel = d.get("mm_vision_token_compression_kernel_size")
    kernel = 4 if kernel is None else int(kernel)
    stride = d.get("mm_vision_token_compression_stride")
    stride = 4 if stride is None else int(stride)
    if stride != kernel:
        raise ValueError(f"{where}: mm_vision_token_compression_stride={stride} differs from "
                         f"mm_vision_token_compression_kernel_size={kernel}; vlm_jax's QueCC "
                         "uses non-overlapping windows (stride = kernel)")
    if kernel < 1 or vision.grid % kernel:
        raise ValueError(f"{where}: mm_vision_token_compression_kernel_size={kernel} does not "
                         f"divide the {vision.grid}x{vision.grid} patch grid")
    text = d.get("mm_vision_output_text_embedding_size")
    text = 4096 if text is None else text
    if text != llm.width:
        raise ValueError(f"{where}: mm_vision_output_text_embedding_size={text} but the LLM's "
                         f"hidden_size is {llm.width} (QueCC's text query is the LLM's hidden "
                         "state)")
    layers = tuple(d.get(_LAYERS_KEY) or FORK_QUECC_LAYERS)
    if max(layers) > vision.depth:
        raise ValueError(f"{where}: QueCC reads the tower's hidden states {list(layers)} but the "
                         f"tower has {vision.depth} layers (hidden states 0..{vision.depth})")
    return CompressorConfig(name="quecc", num_tokens=(vision.grid // kernel) ** 2,
                            feature_layers=layers, use_text_query=True,
                            heads=FORK_QUECC_HEADS, norm_eps=FORK_QUECC_EPS)


def original_llava_from_hf(d: dict, family: str, vision: ViTConfig,
                           image_token_id: int | None = None,
                           where: str = "config.json") -> VLMConfig:
    """An original-LLaVA / QueCC-fork config.json (`mm_*` keys) + the tower's config -> VLMConfig.

    The original code puts the image features at a `-200` marker; here the placeholder id is
    `image_token_id`, else config.json's `image_token_index` (vlm_jax writes it when it is not
    the default), else `vocab_size` (one past the table; it is never looked up).
    """
    llm = llm_from_hf(dict(d, model_type=family), where, family)
    _require(d, "mm_projector_type", ("mlp2x_gelu",), where, "linear")
    feature = _require(d, "mm_vision_select_feature", ("patch", "cls_patch"), where, "patch")
    hidden = d.get("mm_hidden_size", vision.width)
    if hidden != vision.width:
        raise ValueError(f"{where}: mm_hidden_size={hidden} but the vision tower's width "
                         f"(hidden_size) is {vision.width}")
    patches = vision.grid ** 2 + (0 if feature == "patch" else 1)
    compressor = _fork_compressor(d, vision, llm, patches, where)
    if image_token_id is None:
        image_token_id = d.get("image_token_index", llm.vocab_size)
    return VLMConfig(vision=vision, llm=llm, compressor=compressor, projector_bias=True,
                     vision_feature_layer=int(d.get("mm_vision_select_layer", -2)),
                     vision_feature_select="default" if feature == "patch" else "full",
                     image_token_id=int(image_token_id))


def original_llava_to_hf(cfg: VLMConfig, vision_tower: str) -> dict[str, Any]:
    """The config.json the QueCC fork's train.py writes for this model (`mm_vision_tower` =
    `vision_tower`, a directory or Hub name the fork's `CLIPVisionModel.from_pretrained` opens).
    """
    comp = cfg.compressor
    if cfg.vision.family != "clip":
        raise ValueError(f"vision.family={cfg.vision.family!r}: the original LLaVA code opens "
                         "CLIP towers only")
    if not isinstance(cfg.vision_feature_layer, int):
        raise ValueError(f"vision_feature_layer={cfg.vision_feature_layer}: original LLaVA "
                         "selects one layer (mm_vision_select_layer)")
    if not cfg.projector_bias:
        raise ValueError("projector_bias=False: the original LLaVA projector has biases")
    arch, model_type = _ORIGINAL_ARCH[cfg.llm.family]
    # transformers 4.x (what the fork runs) reads `rope_theta`, not `rope_parameters`.
    d = {**llm_to_hf(cfg.llm), "architectures": [arch], "model_type": model_type,
         "rope_theta": cfg.llm.rope_theta, "rope_scaling": None, "torch_dtype": "float32"}
    d.update(mm_vision_tower=vision_tower, mm_projector_type=cfg.projector,
             mm_hidden_size=cfg.vision.width, mm_vision_select_layer=cfg.vision_feature_layer,
             mm_vision_select_feature="patch" if cfg.vision_feature_select == "default"
             else "cls_patch", mm_patch_merge_type="flat", image_aspect_ratio="pad",
             mm_use_im_start_end=False, mm_use_im_patch_token=False, use_mm_proj=True,
             tune_mm_mlp_adapter=False, mm_vision_token_compression_type=None,
             mm_vision_output_token_count=cfg.num_patches,
             mm_vision_output_text_embedding_size=None,
             mm_vision_output_combined_token_count=None,
             mm_vision_token_compression_kernel_size=None,
             mm_vision_token_compression_stride=None)
    if comp.name not in ("identity", "quecc"):
        raise ValueError(f"compressor.name={comp.name!r}: the QueCC fork has QueCC only")
    if comp.name == "quecc":
        fixed = {"use_text_query": (comp.use_text_query, True),
                 "heads": (comp.heads, FORK_QUECC_HEADS), "norm_eps": (comp.norm_eps,
                                                                      FORK_QUECC_EPS)}
        for key, (have, want) in fixed.items():
            if have != want:
                raise ValueError(f"compressor.{key}={have!r}: the QueCC fork fixes it to {want!r}")
        if cfg.vision_feature_select != "default":
            raise ValueError("vision_feature_select='full' with QueCC: the fork's QueCC needs a "
                             "square patch grid ('patch')")
        kernel = cfg.vision.grid // math.isqrt(cfg.num_visual_tokens)
        d.update(mm_vision_token_compression_type="quecc",
                 mm_vision_output_text_embedding_size=cfg.llm.width,
                 mm_vision_token_compression_kernel_size=kernel,
                 mm_vision_token_compression_stride=kernel)
        if tuple(comp.feature_layers) != FORK_QUECC_LAYERS:
            d[_LAYERS_KEY] = list(comp.feature_layers)
    if cfg.image_token_id != cfg.llm.vocab_size:
        d["image_token_index"] = cfg.image_token_id
    d["dtype"] = "float32"
    return d


def llm_to_hf(cfg: LLMConfig) -> dict[str, Any]:
    c = cfg
    if c.family == "qwen2" and (not c.qkv_bias or c.o_bias or c.mlp_bias):
        raise ValueError(f"Qwen2 has q/k/v biases only; LLMConfig has qkv_bias={c.qkv_bias}, "
                         f"o_bias={c.o_bias}, mlp_bias={c.mlp_bias}")
    if c.family == "llama" and c.qkv_bias != c.o_bias:
        raise ValueError(f"Llama's attention_bias sets q/k/v and o biases together; LLMConfig "
                         f"has qkv_bias={c.qkv_bias}, o_bias={c.o_bias} (use family='qwen2')")
    d = dict(model_type=c.family, vocab_size=c.vocab_size, hidden_size=c.width,
             intermediate_size=c.mlp_dim, num_hidden_layers=c.depth, num_attention_heads=c.heads,
             num_key_value_heads=c.kv_heads, head_dim=c.dim_per_head, hidden_act="silu",
             max_position_embeddings=c.max_len, rms_norm_eps=c.norm_eps,
             rope_parameters={"rope_theta": c.rope_theta, "rope_type": "default"},
             tie_word_embeddings=c.tie_embeddings)
    if c.family == "llama":
        d.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
    else:
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.depth)
    return d


def vision_to_hf(cfg: ViTConfig) -> dict[str, Any]:
    d = dict(model_type=_VISION_TYPES[cfg.family], hidden_size=cfg.width,
             intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.depth,
             num_attention_heads=cfg.heads, image_size=cfg.image_size,
             patch_size=cfg.patch_size, layer_norm_eps=cfg.norm_eps,
             hidden_act=_VISION_ACT[cfg.family], num_channels=3)
    if cfg.family == "siglip":
        d["vision_use_head"] = cfg.use_head
    return d


def to_hf(cfg: ViTConfig | LLMConfig | VLMConfig) -> dict[str, Any]:
    """The config.json transformers 5.x writes for this model."""
    if isinstance(cfg, LLMConfig):
        d = {"architectures": [_LLM_ARCH[cfg.family]], **llm_to_hf(cfg)}
    elif isinstance(cfg, ViTConfig):
        d = {"architectures": [_VISION_ARCH[cfg.family]], **vision_to_hf(cfg)}
    else:
        if cfg.compressor.name != "identity":
            raise ValueError(f"compressor.name={cfg.compressor.name!r}: transformers' LLaVA has "
                             "no token compressor; only 'identity' can be saved as HF LLaVA")
        if not 0 <= cfg.image_token_id < cfg.llm.vocab_size:
            raise ValueError(f"image_token_id={cfg.image_token_id} is outside the vocabulary "
                             f"(vocab_size={cfg.llm.vocab_size}); transformers looks it up in "
                             "the embedding table: grow the vocabulary first "
                             "(vlm_jax.interop.hf.add_image_token)")
        layer = cfg.vision_feature_layer
        d = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
             "vision_config": vision_to_hf(cfg.vision), "text_config": llm_to_hf(cfg.llm),
             "image_token_index": cfg.image_token_id,
             "image_seq_length": cfg.num_visual_tokens, "projector_hidden_act": "gelu",
             "vision_feature_select_strategy": cfg.vision_feature_select,
             "vision_feature_layer": layer if isinstance(layer, int) else list(layer),
             "multimodal_projector_bias": cfg.projector_bias,
             "tie_word_embeddings": cfg.llm.tie_embeddings}
    d["dtype"] = "float32"
    return d


def with_dtype(cfg, dtype: str):
    """`cfg` with every sub-config computing in `dtype`."""
    if isinstance(cfg, VLMConfig):
        return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, dtype=dtype),
                                   llm=dataclasses.replace(cfg.llm, dtype=dtype))
    return dataclasses.replace(cfg, dtype=dtype)
