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
    batch_keys: tuple[str, ...]  # arrays the step consumes
    init_batch: Callable[[int], dict]  # batch_size -> dummy batch of the right shapes
    loss: Callable  # (params, batch) -> (loss, metrics)
    model_cfg: object


def vlm_task(cfg: VLMConfig, seq_len: int, question_len: int) -> Task:
    module = models.VLM(cfg)
    uses_text = cfg.uses_text_query
    keys = ("image", "tokens", "valid", "loss_mask") + (
        ("question", "question_valid") if uses_text else ())
    v, size = cfg.num_visual_tokens, cfg.vision.image_size

    def init_batch(b: int) -> dict:
        tokens = jnp.ones((b, seq_len), jnp.int32).at[:, :v].set(cfg.image_token_id)
        batch = {"image": jnp.zeros((b, size, size, 3)), "tokens": tokens,
                 "valid": jnp.ones((b, seq_len), bool), "loss_mask": jnp.ones((b, seq_len))}
        if uses_text:
            batch.update(question=jnp.ones((b, question_len), jnp.int32),
                         question_valid=jnp.ones((b, question_len), bool))
        return batch

    def loss(params, batch):
        logits = module.apply({"params": params}, batch["image"], batch["tokens"],
                              valid=batch["valid"], question=batch.get("question"),
                              question_valid=batch.get("question_valid"))
        return next_token_loss(logits, batch["tokens"], batch["loss_mask"])

    return Task(module, keys, init_batch, loss, cfg)


def pair_task(vision: ViTConfig, text: TextTowerConfig, vocab_size: int, embed_dim: int,
              caption_len: int, patch_label_weight: float = 0.0) -> Task:
    """SigLIP on (image, caption) pairs; with `patch_label_weight` > 0 also a linear probe of
    the tower's patch tokens on `patch_labels` (`vlm_jax.data.synthetic.PATCH_HEADS`)."""
    classes = tuple(PATCH_HEADS.values()) if patch_label_weight > 0 else ()
    module = ImageTextPair(vision, text, vocab_size, embed_dim, classes)
    size, grid = vision.image_size, vision.image_size // vision.patch_size
    keys = ("image", "caption", "caption_valid") + (("patch_labels",) if classes else ())

    def init_batch(b: int) -> dict:
        batch = {"image": jnp.zeros((b, size, size, 3)),
                 "caption": jnp.ones((b, caption_len), jnp.int32),
                 "caption_valid": jnp.ones((b, caption_len), bool)}
        if classes:
            batch["patch_labels"] = jnp.zeros((b, grid * grid, len(classes)), jnp.int32)
        return batch

    def loss(params, batch):
        out = module.apply({"params": params}, batch["image"], batch["caption"],
                           batch["caption_valid"])
        value, metrics = sigmoid_pair_loss(out.image, out.text, out.scale, out.bias)
        if classes:
            probe, probe_metrics = patch_label_loss(out.patch_logits, batch["patch_labels"],
                                                    tuple(PATCH_HEADS))
            value = value + patch_label_weight * probe
            metrics = {**metrics, "siglip_loss": metrics["loss"], **probe_metrics,
                       "loss": value}
        return value, metrics

    return Task(module, keys, init_batch, loss, vision)


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
    return jax.eval_shape(lambda: task.module.init(jax.random.key(0),
                                                   **_as_kwargs(task, task.init_batch(batch_size))))


def init_params(task: Task, rng: jax.Array):
    return task.module.init(rng, **_as_kwargs(task, task.init_batch(1)))


def _as_kwargs(task: Task, batch: dict) -> dict:
    if isinstance(task.module, ImageTextPair):
        return dict(images=batch["image"], text_tokens=batch["caption"],
                    text_valid=batch["caption_valid"])
    kw = dict(images=batch["image"], tokens=batch["tokens"], valid=batch["valid"])
    if "question" in batch:
        kw.update(question=batch["question"], question_valid=batch["question_valid"])
    return kw
