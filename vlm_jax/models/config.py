"""Model configs: small frozen dataclasses, one per module family.

Each module receives only its own config. `to_dict` gives a plain nested dict;
`vlm_jax.models.presets.from_dict` turns one (or a ConfigDict, or a preset name) back into the
right dataclass, so configs/*.py can stay plain ml_collections.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Plain attention: "xla" (einsum + softmax), "cudnn" (jax.nn.dot_product_attention's fused
# GPU kernel), "flash" (Pallas flash attention, GPU; never builds the [L, L] scores, see
# vlm_jax.models.layers.flash_causal_attention) or "flash_interpret" (the same kernel through
# the Pallas interpreter, any backend: for tests). The pruning kernels' own vocabulary is
# vlm_jax.kernels.dispatch.IMPLS.
FLASH_IMPLS = ("flash", "flash_interpret")
ATTENTION_IMPLS = ("xla", "cudnn") + FLASH_IMPLS
# What each compressor reads besides the selected layer's features `x` (the one table; the
# compressors, the FLOPs counts and `VLMConfig.uses_text_query` read it through
# `CompressorConfig.reads_multi` / `reads_text`): "multi", several encoder layers (`x_multi`);
# "text", the question's query vector (when `use_text_query` is on).
COMPRESSOR_INPUTS: dict[str, tuple[str, ...]] = {
    "identity": (), "avgpool": (), "resampler": (), "tokenpacker": ("multi",),
    "quecc": ("multi", "text")}
# Remat policies by name (jax.checkpoint_policies): what the backward pass may keep.
REMAT_POLICIES = ("nothing", "dots", "dots_no_batch", "everything")


def check_remat_policy(name: str) -> None:
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat_policy must be one of {list(REMAT_POLICIES)}, got {name!r}")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """A CLIP or SigLIP vision tower."""

    family: str = "clip"  # "clip": class token, pre-LN, quick-GELU; "siglip": no class token, tanh-GELU
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    norm_eps: float = 1e-5
    use_head: bool = False  # SigLIP's attention-pooling (MAP) head
    dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "nothing"  # what remat keeps: see layers.REMAT_POLICIES
    scan_layers: bool = False  # run the layers under nn.scan (one compiled layer, stacked params)

    def __post_init__(self):
        check_remat_policy(self.remat_policy)
        if self.family not in ("clip", "siglip"):
            raise ValueError(f"ViTConfig.family must be 'clip' or 'siglip', got {self.family!r}")
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size {self.image_size} < patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"ViT width {self.width} is not divisible by heads {self.heads}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def class_token(self) -> bool:
        return self.family == "clip"

    @property
    def num_positions(self) -> int:
        return self.grid**2 + int(self.class_token)


@dataclasses.dataclass(frozen=True)
class TextTowerConfig:
    """The caption encoder of the stage-0 image-text pair model (`models.pair.TextTower`): a
    bidirectional transformer of vision-encoder blocks over token embeddings."""

    family: str = "clip"  # the block, as ViTConfig.family: "clip" quick-GELU, "siglip" tanh-GELU
    width: int = 512
    depth: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    norm_eps: float = 1e-5
    max_len: int = 64  # caption tokens (learned position embeddings)
    dtype: str = "float32"

    def __post_init__(self):
        if self.family not in ("clip", "siglip"):
            raise ValueError(f"TextTowerConfig.family must be 'clip' or 'siglip', got "
                             f"{self.family!r}")
        if self.width % self.heads:
            raise ValueError(f"text tower width {self.width} is not divisible by heads "
                             f"{self.heads}")


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """A Llama / Qwen2-family decoder."""

    family: str = "llama"  # "llama" or "qwen2": only names the HF architecture
    vocab_size: int = 32000
    width: int = 4096
    depth: int = 32
    heads: int = 32
    kv_heads: int = 32
    mlp_dim: int = 11008
    head_dim: int | None = None  # default width // heads
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    max_len: int = 4096
    dtype: str = "float32"
    attention_impl: str = "xla"  # see ATTENTION_IMPLS
    remat: bool = False
    remat_policy: str = "nothing"  # what remat keeps: see layers.REMAT_POLICIES
    scan_layers: bool = False  # run the layers under nn.scan (one compiled layer, stacked params)

    def __post_init__(self):
        check_remat_policy(self.remat_policy)
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"LLMConfig.attention_impl must be one of {list(ATTENTION_IMPLS)}, "
                             f"got {self.attention_impl!r}")
        if self.family not in ("llama", "qwen2"):
            raise ValueError(f"LLMConfig.family must be 'llama' or 'qwen2', got {self.family!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.width // self.heads


@dataclasses.dataclass(frozen=True)
class CompressorConfig:
    """Which token compressor sits between the vision tower and the projector."""

    name: str = "identity"  # identity | avgpool | resampler | tokenpacker | quecc
    num_tokens: int | None = None  # V; None means every patch (no compression)
    feature_layers: tuple[int, ...] = (12, 16, 22, 23)  # hidden states for QueCC keys/values
    use_text_query: bool = True
    heads: int = 8
    norm_eps: float = 1e-6

    @property
    def reads_multi(self) -> bool:
        """Whether the compressor reads several encoder layers (`x_multi` `[B, G*G, C_multi]`)."""
        return "multi" in COMPRESSOR_INPUTS.get(self.name, ())

    @property
    def reads_text(self) -> bool:
        """Whether it reads the question's query vector (`text` `[B, D_llm]`): a compressor
        that can, with `use_text_query` on."""
        return "text" in COMPRESSOR_INPUTS.get(self.name, ()) and self.use_text_query


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    """A LLaVA-style VLM: vision tower -> compressor -> projector -> LLM."""

    vision: ViTConfig = dataclasses.field(default_factory=ViTConfig)
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)
    compressor: CompressorConfig = dataclasses.field(default_factory=CompressorConfig)
    projector: str = "mlp2x_gelu"
    projector_bias: bool = True
    vision_feature_layer: int | tuple[int, ...] = -2  # hidden_states index (or several, concat)
    vision_feature_select: str = "default"  # "default" drops the first token, "full" keeps it
    image_token_id: int = 32000

    def __post_init__(self):
        if self.vision_feature_select not in ("default", "full"):
            raise ValueError("vision_feature_select must be 'default' or 'full', got "
                             f"{self.vision_feature_select!r}")
        if self.projector != "mlp2x_gelu":
            raise ValueError(f"unknown projector {self.projector!r}; known: ['mlp2x_gelu']")

    @property
    def uses_text_query(self) -> bool:
        """Whether the compressor reads the question (`CompressorConfig.reads_text`): the one
        answer to "does this model take `question` / `question_valid` inputs"."""
        return self.compressor.reads_text

    @property
    def num_patches(self) -> int:
        """Tokens the selected vision features have, before compression."""
        n = self.vision.num_positions
        return n - 1 if self.vision_feature_select == "default" else n

    @property
    def num_visual_tokens(self) -> int:
        """V: visual tokens per image that reach the LLM."""
        return self.compressor.num_tokens or self.num_patches


CLASSES = {"vision": ViTConfig, "llm": LLMConfig, "compressor": CompressorConfig}
# Configs that stand alone, by their dict's `kind`.
KINDS = {"vision": ViTConfig, "llm": LLMConfig, "text": TextTowerConfig}


def make(cls, d: dict[str, Any], where: str):
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {where} ({cls.__name__}); "
                         f"known: {sorted(fields)}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**kw)


def to_dict(cfg) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (JSON-friendly); `from_dict` inverts it."""
    d = dataclasses.asdict(cfg)
    kind = {v: k for k, v in KINDS.items()}.get(type(cfg))
    return {"kind": kind, **d} if kind else d
