"""LLaVA-style composition: vision tower -> compressor -> projector -> LLM.

A prompt holds exactly V image-placeholder ids (`cfg.image_token_id`) where the V visual
embeddings go, so sequence lengths are static for a given V.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.models import compressors
from vlm_jax.models.cache import LayerCache
from vlm_jax.models.config import VLMConfig
from vlm_jax.models.layers import ACTIVATIONS, dense, dtype_of, select_layers
from vlm_jax.models.llm import Decoder, DecoderOutput, default_positions
from vlm_jax.models.vit import ViT


class Projector(nn.Module):
    """`mlp2x_gelu`: Linear, GELU, Linear. `[B, V, C_in] -> [B, V, D]`."""

    width: int
    use_bias: bool = True
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dt = dtype_of(self.dtype)
        x = dense(self.width, ("vis_embed", "embed"), use_bias=self.use_bias, dtype=dt,
                  name="linear_1")(x)
        return dense(self.width, ("mlp", "embed"), use_bias=self.use_bias, dtype=dt,
                     name="linear_2")(ACTIVATIONS["gelu"](x))


def check_placeholders(tokens, image_token_id: int, num_visual_tokens: int) -> None:
    """Raises if any prompt's placeholder count differs from V (concrete inputs only)."""
    if isinstance(tokens, jax.core.Tracer):
        return
    counts = (np.asarray(tokens) == image_token_id).sum(axis=1)
    bad = np.flatnonzero(counts != num_visual_tokens)
    if bad.size:
        raise ValueError(
            f"prompt {int(bad[0])} holds {int(counts[bad[0]])} image placeholder tokens "
            f"(id {image_token_id}) but the model makes {num_visual_tokens} visual tokens per "
            f"image; rows with a wrong count: {bad.tolist()[:8]}")


def last_valid_index(valid: jax.Array) -> jax.Array:
    """`[B, L]` bool -> `[B]` index of the last True (works for left or right padding)."""
    idx = jnp.arange(valid.shape[1])[None]
    return jnp.max(jnp.where(valid, idx, -1), axis=1).clip(0)


class VLM(nn.Module):
    """`apply({"params": p}, images=[B, H, W, 3], tokens=[B, L]) -> logits [B, L, vocab]`."""

    cfg: VLMConfig

    def setup(self):
        cfg = self.cfg
        self.vision_tower = ViT(cfg.vision)
        feat_layers = cfg.vision_feature_layer
        n_sel = 1 if isinstance(feat_layers, int) else len(feat_layers)
        self.compressor = compressors.build(
            cfg.compressor, grid=cfg.vision.grid, width=cfg.vision.width * n_sel,
            text_width=cfg.llm.width,
            multi_width=cfg.vision.width * len(cfg.compressor.feature_layers),
            dtype=cfg.vision.dtype)
        self.multi_modal_projector = Projector(cfg.llm.width, cfg.projector_bias, cfg.llm.dtype)
        self.language_model = Decoder(cfg.llm)

    def text_query(self, question: jax.Array, question_valid: jax.Array) -> jax.Array:
        """The LLM's final hidden state at the question's last real token, no gradient.

        question, question_valid: `[B, Lq]` -> `[B, D]`.
        """
        lm = self.language_model
        out = lm(lm.embed(question), default_positions(question_valid), question_valid,
                 logits=False)
        last = last_valid_index(question_valid)
        return jax.lax.stop_gradient(out.hidden[jnp.arange(question.shape[0]), last])

    def encode_images(self, images: jax.Array, question: jax.Array | None = None,
                      question_valid: jax.Array | None = None) -> jax.Array:
        """images `[B, H, W, 3]` -> visual embeddings `[B, V, D]` in LLM space."""
        cfg = self.cfg
        hidden = self.vision_tower(images).hidden_states
        x = select_layers(hidden, cfg.vision_feature_layer)
        drop = 1 if cfg.vision_feature_select == "default" else 0
        x = x[:, drop:]
        comp = self.compressor
        x_multi = text = None
        if cfg.compressor.name != "identity":
            if x.shape[1] != cfg.vision.grid**2:
                raise ValueError(
                    f"compressor {cfg.compressor.name!r} needs a {cfg.vision.grid}x"
                    f"{cfg.vision.grid} patch grid but the selected features have {x.shape[1]} "
                    f"tokens; set vision_feature_select to drop the class token ('default' for "
                    f"CLIP, 'full' for SigLIP)")
            if cfg.compressor.reads_multi:
                x_multi = select_layers(hidden, cfg.compressor.feature_layers)[:, -x.shape[1]:]
            if cfg.uses_text_query:
                if question is None:
                    raise ValueError(f"compressor {cfg.compressor.name!r} uses a text query: pass "
                                     "`question` [B, Lq] and `question_valid`")
                if question_valid is None:
                    question_valid = jnp.ones(question.shape, bool)
                text = self.text_query(question, question_valid)
        x = comp(x, x_multi=x_multi, text=text)
        return self.multi_modal_projector(x)

    def embed_inputs(self, images, tokens, question=None, question_valid=None) -> jax.Array:
        """Token embeddings `[B, L, D]` with the visual embeddings at the placeholders."""
        cfg = self.cfg
        vis = self.encode_images(images, question, question_valid)
        check_placeholders(tokens, cfg.image_token_id, vis.shape[1])
        is_img = tokens == cfg.image_token_id
        lm = self.language_model
        embeds = lm.embed(jnp.where(is_img, 0, tokens))
        order = jnp.clip(jnp.cumsum(is_img, axis=1) - 1, 0, vis.shape[1] - 1)  # [B, L]
        spliced = jnp.take_along_axis(vis, order[..., None], axis=1).astype(embeds.dtype)
        return jnp.where(is_img[..., None], spliced, embeds)

    def forward(self, images, tokens, valid=None, positions=None, question=None,
                question_valid=None, cache: list[LayerCache] | LayerCache | None = None,
                logits: bool = True, prune=None, query=None) -> DecoderOutput:
        """Full forward returning logits, final hidden states and the (updated) cache.

        prune: in-LLM visual-token pruning, an object whose `hook(visual, valid, query)` gives
        the decoder's LayerHook (a static `vlm_jax.pruning.PruneSpec`; the forward then returns
        what its hook's `finish` does, a `PrunedOutput`); query: an optional `[B, L]` query set.
        """
        valid = jnp.ones(tokens.shape, bool) if valid is None else valid
        positions = default_positions(valid) if positions is None else positions
        hook = None
        if prune is not None:  # built first: a schedule that does not fit fails before tracing
            hook = prune.hook(tokens == self.cfg.image_token_id, valid, query,
                              depth=self.cfg.llm.depth, num_visual=self.cfg.num_visual_tokens)
        embeds = self.embed_inputs(images, tokens, question, question_valid)
        return self.language_model(embeds, positions, valid, cache=cache, logits=logits,
                                   hook=hook)

    def __call__(self, images, tokens, valid=None, positions=None, question=None,
                 question_valid=None) -> jax.Array:
        """images `[B, H, W, 3]`, tokens `[B, L]` -> logits `[B, L, vocab]`."""
        return self.forward(images, tokens, valid, positions, question, question_valid).logits

    def decode(self, tokens, positions, cache: list[LayerCache] | LayerCache) -> DecoderOutput:
        """One (or a few) text tokens `[B, T]` through the LLM on top of `cache`."""
        lm = self.language_model
        valid = jnp.ones(tokens.shape, bool)
        return lm(lm.embed(tokens), positions, valid, cache=cache)
