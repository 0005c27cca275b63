"""What a training stage optimises: the module, its init inputs and its loss.

Stage 0 trains an `ImageTextPair` with the SigLIP loss on caption pairs (plus, with
`pair.patch_label_weight` > 0, the synthetic suite's per-patch labels); stages 1 and 2 train
the VLM with next-token loss on assistant tokens (which parameters move is `optim.frozen`).
The trainer is the same for all; a task only says what differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlm_jax import batch as batch_lib
from vlm_jax import models
from vlm_jax.data.synthetic import PATCH_HEADS
from vlm_jax.models.config import TextTowerConfig, ViTConfig, VLMConfig
from vlm_jax.models.pair import ImageTextPair
from vlm_jax.train.losses import next_token_loss, patch_label_loss, sigmoid_pair_loss

# Stage -> default regex of frozen parameter paths.
FROZEN_BY_STAGE = {
    0: "",
    1: r"^(vision_tower|language_model)/",  # compressor + projector train
    2: r"^vision_tower/",  # + LLM
}


@dataclasses.dataclass(frozen=True)
class Task:
    module: nn.Module
    batch_keys: tuple[str, ...]  # the arrays the step consumes (`vlm_jax.batch` names)
    init_batch: Callable[[int], dict]  # batch_size -> dummy batch of the right shapes
    loss: Callable  # (params, batch) -> (loss, metrics)
    model_cfg: object
    model_keys: tuple[str, ...]  # the batch keys that are the module call's arguments

    def model_inputs(self, batch: dict) -> dict:
        """The module call's keyword arguments: `batch`'s `model_keys` entries, as named."""
        return batch_lib.model_inputs(batch, self.model_keys)


def vlm_task(cfg: VLMConfig, seq_len: int, question_len: int) -> Task:
    module = models.VLM(cfg)
    model_keys = batch_lib.vlm_keys(cfg.uses_text_query)  # the stage's inputs, decided here
    keys = model_keys + (batch_lib.LOSS_MASK,)
    v, size = cfg.num_visual_tokens, cfg.vision.image_size

    def init_batch(b: int) -> dict:
        tokens = jnp.ones((b, seq_len), jnp.int32).at[:, :v].set(cfg.image_token_id)
        batch = {"images": jnp.zeros((b, size, size, 3)), "tokens": tokens,
                 "valid": jnp.ones((b, seq_len), bool), batch_lib.LOSS_MASK: jnp.ones((b, seq_len)),
                 "question": jnp.ones((b, question_len), jnp.int32),
                 "question_valid": jnp.ones((b, question_len), bool)}
        return {k: batch[k] for k in keys}

    def loss(params, batch):
        logits = module.apply({"params": params}, **batch_lib.model_inputs(batch, model_keys))
        return next_token_loss(logits, batch["tokens"], batch[batch_lib.LOSS_MASK])

    return Task(module, keys, init_batch, loss, cfg, model_keys)


def pair_task(vision: ViTConfig, text: TextTowerConfig, vocab_size: int, embed_dim: int,
              caption_len: int, patch_label_weight: float = 0.0) -> Task:
    """SigLIP on (image, caption) pairs; with `patch_label_weight` > 0 also a linear probe of
    the tower's patch tokens on `patch_labels` (`vlm_jax.data.synthetic.PATCH_HEADS`)."""
    classes = tuple(PATCH_HEADS.values()) if patch_label_weight > 0 else ()
    module = ImageTextPair(vision, text, vocab_size, embed_dim, classes)
    size, grid = vision.image_size, vision.image_size // vision.patch_size
    keys = batch_lib.PAIR_KEYS + ((batch_lib.PATCH_LABELS,) if classes else ())

    def init_batch(b: int) -> dict:
        batch = {"images": jnp.zeros((b, size, size, 3)),
                 "text_tokens": jnp.ones((b, caption_len), jnp.int32),
                 "text_valid": jnp.ones((b, caption_len), bool)}
        if classes:
            batch[batch_lib.PATCH_LABELS] = jnp.zeros((b, grid * grid, len(classes)), jnp.int32)
        return batch

    def loss(params, batch):
        out = module.apply({"params": params},
                           **batch_lib.model_inputs(batch, batch_lib.PAIR_KEYS))
        value, metrics = sigmoid_pair_loss(out.image, out.text, out.scale, out.bias)
        if classes:
            probe, probe_metrics = patch_label_loss(
                out.patch_logits, batch[batch_lib.PATCH_LABELS], tuple(PATCH_HEADS))
            value = value + patch_label_weight * probe
            metrics = {**metrics, "siglip_loss": metrics["loss"], **probe_metrics,
                       "loss": value}
        return value, metrics

    return Task(module, keys, init_batch, loss, vision, batch_lib.PAIR_KEYS)


def make_task(config: ml_collections.ConfigDict, vocab_size: int | None = None) -> Task:
    """The task of `config.stage` (0, 1 or 2). Stage 0 reads `config.pair`: `vision`, `text`
    (tower dicts), `embed_dim`; stages 1/2 read `config.model`."""
    if config.stage == 0:
        vision = models.from_dict(dict(config.pair.vision, kind="vision"))
        text = models.from_dict(dict(config.pair.text, kind="text"))
        return pair_task(vision, text, vocab_size or config.pair.vocab_size,
                         config.pair.embed_dim, config.data.max_text_len,
                         config.pair.get("patch_label_weight", 0.0))
    if config.stage in (1, 2):
        cfg = models.from_dict(config.model)
        return vlm_task(cfg, cfg.num_visual_tokens + config.data.max_text_len,
                        config.data.max_question_len)
    raise ValueError(f"config.stage must be 0, 1 or 2, got {config.stage!r}")


def abstract_params(task: Task, batch_size: int = 1):
    """Boxed abstract params (ShapeDtypeStructs with logical axis names)."""
    return jax.eval_shape(lambda: task.module.init(
        jax.random.key(0), **task.model_inputs(task.init_batch(batch_size))))


def init_params(task: Task, rng: jax.Array):
    return task.module.init(rng, **task.model_inputs(task.init_batch(1)))
