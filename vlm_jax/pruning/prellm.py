"""Training-free visual-token reduction before the LLM: VisionZip and uniform pooling.

Both hand the LLM fewer visual tokens than the tower makes, so prompts hold the reduced count
of image placeholders (`vlm_jax.train.data_feed.make(..., num_visual_tokens=K)`) and the whole
prefill (every LLM layer, the KV cache, decoding) runs on `K` visual tokens.

- VisionZip (Yang et al., arXiv 2412.04467): at the tower layer the VLM reads its features
  from, the patches the class token attends to most (averaged over heads) are "dominant" and
  kept as they are; a tower without a class token ranks patches by the attention they receive
  from every patch instead. The remaining patches are folded into a few "contextual" tokens:
  evenly spaced ones among them are targets, every other one joins the target whose key is most
  cosine-similar, and each target becomes the mean of its group. Output: the dominant tokens in
  their original order, then the contextual ones. `VisionZipVLM` is a `VLM` doing this inside
  `encode_images`, with the same parameters.
- Uniform pooling (a control: Wen et al., arXiv 2502.11501, find such simple reductions often
  match importance-based ones): 2-D average pooling of the patch grid down to the budget, which
  is the `avgpool` compressor run on the trained weights (`pooling_config`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.models.config import CompressorConfig, VLMConfig
from vlm_jax.models.vlm import VLM


def visionzip_select(features: jax.Array, received: jax.Array, keys: jax.Array, dominant: int,
                     contextual: int) -> jax.Array:
    """VisionZip's token selection and merge.

    features `[B, N, C]` (patch features), received `[B, N]` (attention each patch receives:
    from the class token, head-averaged), keys `[B, N, Ck]` -> `[B, dominant + contextual, C]`:
    the top-`dominant` patches by `received` in original order, then `contextual` merged tokens
    (targets at every `(N - dominant) // contextual`-th remaining patch).
    """
    b, n, _ = features.shape
    if not 0 < dominant <= n or not 0 <= contextual <= n - dominant:
        raise ValueError(f"VisionZip needs 0 < dominant ({dominant}) <= N ({n}) and 0 <= "
                         f"contextual ({contextual}) <= N - dominant")
    rows = jnp.arange(b)[:, None]
    top = jnp.sort(jax.lax.top_k(received, dominant)[1], axis=1)
    is_dominant = jnp.zeros((b, n), bool).at[rows, top].set(True)
    out = jnp.take_along_axis(features, top[..., None], axis=1)
    if contextual == 0:
        return out
    rest = jnp.argsort(is_dominant, axis=1, stable=True)[:, :n - dominant]  # original order
    rest_x = jnp.take_along_axis(features, rest[..., None], axis=1)  # [B, R, C]
    rest_k = jnp.take_along_axis(keys, rest[..., None], axis=1).astype(jnp.float32)
    rest_k = rest_k / jnp.maximum(jnp.linalg.norm(rest_k, axis=-1, keepdims=True), 1e-12)
    targets = jnp.arange(contextual) * ((n - dominant) // contextual)  # [K_c] into the rest
    similarity = jnp.einsum("brc,btc->brt", rest_k, rest_k[:, targets])
    group = jnp.argmax(similarity, axis=-1)  # [B, R]
    group = group.at[:, targets].set(jnp.arange(contextual))  # a target is in its own group
    member = jax.nn.one_hot(group, contextual, dtype=jnp.float32)  # [B, R, K_c]
    sums = jnp.einsum("brt,brc->btc", member, rest_x.astype(jnp.float32))
    merged = sums / jnp.sum(member, axis=1)[..., None]
    return jnp.concatenate([out, merged.astype(features.dtype)], axis=1)


def _feature_index(cfg: VLMConfig) -> int:
    layer = cfg.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"VisionZip reads one tower layer; vision_feature_layer={layer!r}")
    index = layer % (cfg.vision.depth + 1)
    if index == 0:
        raise ValueError("VisionZip needs the features of a tower layer, not the embeddings "
                         "(vision_feature_layer selects hidden state 0)")
    return index


def tower_attention(cfg: VLMConfig, layer_params: dict, x: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    """The self-attention of one tower layer on its input `x` `[B, T, C]`, recomputed from
    that layer's parameters: (probabilities `[B, H, T, T]`, keys `[B, T, H, Dh]`)."""
    v = cfg.vision
    p = nn.meta.unbox(layer_params)
    y = nn.LayerNorm(epsilon=v.norm_eps, parent=None).apply({"params": p["layer_norm1"]}, x)
    proj = lambda name: nn.Dense(v.width, parent=None).apply(
        {"params": p["self_attn"][name]}, y).reshape(*x.shape[:2], v.heads, v.width // v.heads)
    q, k = proj("q_proj"), proj("k_proj")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
    return jax.nn.softmax(scores, axis=-1), k


class VisionZipVLM(VLM):
    """A VLM (same parameters) whose LLM sees `dominant + contextual` VisionZip tokens.

    Needs the identity compressor (VisionZip replaces compression). Prompts must hold
    `dominant + contextual` image placeholders.
    """

    dominant: int = 54
    contextual: int = 10

    @property
    def num_tokens(self) -> int:
        return self.dominant + self.contextual

    def encode_images(self, images, question=None, question_valid=None):
        cfg = self.cfg
        if cfg.compressor.name != "identity":
            raise ValueError(f"VisionZip runs on uncompressed features; this model has the "
                             f"{cfg.compressor.name!r} compressor")
        f = _feature_index(cfg)
        hidden = self.vision_tower(images).hidden_states
        layer = self.variables["params"]["vision_tower"][f"layers_{f - 1}"]
        probs, keys = tower_attention(cfg, layer, hidden[f - 1])
        x = hidden[f]
        if cfg.vision.class_token:
            received, keys = probs[:, :, 0, 1:].mean(axis=1), keys[:, 1:]
            if cfg.vision_feature_select == "default":
                x = x[:, 1:]
            else:
                raise ValueError("VisionZip on a CLIP tower selects patch features only; set "
                                 "vision_feature_select='default'")
        else:
            received = probs.mean(axis=(1, 2))
        x = visionzip_select(x, received, keys.mean(axis=2), self.dominant, self.contextual)
        return self.multi_modal_projector(x)


def pooling_config(cfg: VLMConfig, num_tokens: int) -> VLMConfig:
    """The same model with its `G x G` patch grid average-pooled to `num_tokens` (a square
    whose side divides G) before the projector: the uniform-pooling control."""
    if cfg.compressor.name != "identity":
        raise ValueError(f"uniform pooling replaces compression; this model has the "
                         f"{cfg.compressor.name!r} compressor")
    grid, side = cfg.vision.grid, round(num_tokens ** 0.5)
    if side * side != num_tokens or grid % side:
        ok = [(grid // d) ** 2 for d in range(1, grid + 1) if grid % d == 0]
        raise ValueError(f"uniform pooling of a {grid}x{grid} grid to {num_tokens} tokens: the "
                         f"budget must be a square whose side divides {grid}; possible: {ok}")
    return dataclasses.replace(cfg, compressor=CompressorConfig(name="avgpool",
                                                                num_tokens=num_tokens))
