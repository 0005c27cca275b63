"""What the trainer reads: a grain loader for the stage, its arrays keyed as `vlm_jax.batch`.

Stages 1/2 read VLM batches as the pipeline makes them. Stage 0 reads the same pipeline with
no visual placeholders: the caption is the assistant reply, so the pair model's `text_tokens`
are the pipeline's `tokens` and `text_valid` = `loss_mask > 0` (the prompt is not part of the
caption).
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from vlm_jax import batch as batch_lib
from vlm_jax import data as data_lib
from vlm_jax import models


@dataclasses.dataclass
class Feed:
    loader: data_lib.Loader
    stage: int

    @property
    def vocab_size(self) -> int:
        return self.loader.tokenizer.vocab_size

    def iterator(self):
        """A checkpointable grain iterator (get_state / set_state)."""
        return iter(self.loader)

    def arrays(self, batch: dict) -> dict[str, np.ndarray]:
        """The numpy arrays the stage's train step consumes."""
        if self.stage == 0:
            out = {"images": batch["images"], "text_tokens": batch["tokens"],
                   "text_valid": batch["loss_mask"] > 0}
            if batch_lib.PATCH_LABELS in batch:
                out[batch_lib.PATCH_LABELS] = batch[batch_lib.PATCH_LABELS]
            return out
        arrays, _ = data_lib.split_batch(batch)
        return arrays


def vision_of(config: ml_collections.ConfigDict):
    """The vision tower config the stage's images are made for."""
    if config.stage == 0:
        return models.from_dict(dict(config.pair.vision, kind="vision"))
    return models.from_dict(config.model).vision


def per_process_batch(global_batch: int, key: str) -> int:
    """global batch / `jax.process_count()`; raises (naming the config `key`) unless it divides."""
    hosts = jax.process_count()
    if global_batch < 1 or global_batch % hosts:
        raise ValueError(f"{key}={global_batch} (the global batch) does not divide by the "
                         f"{hosts} JAX processes (jax.process_count()): each process reads "
                         f"global / {hosts} examples; use a positive multiple of {hosts}")
    return global_batch // hosts


def make(config: ml_collections.ConfigDict, split: str = "train", mode: str = "train",
         batch_size: int | None = None, num_visual_tokens: int | None = None,
         batch_key: str = "train.batch_size") -> Feed:
    """The feed of `config` (per process: each host reads its own shard of the global batch).

    batch_size: the global batch (default `config.train.batch_size`); batch_key: the config
    key it comes from, named when it does not divide by the process count.
    num_visual_tokens: image placeholders per prompt when the LLM gets another count than the
    model config makes (token reduction before the LLM, `vlm_jax.pruning.prellm`)."""
    vision = vision_of(config)
    patch_grid = 0
    if config.stage == 0:
        num_visual, image_token_id = 0, None
        if config.pair.get("patch_label_weight", 0.0) > 0:
            patch_grid = vision.image_size // vision.patch_size
    else:
        cfg = models.from_dict(config.model)
        num_visual, image_token_id = cfg.num_visual_tokens, cfg.image_token_id
        num_visual = num_visual if num_visual_tokens is None else num_visual_tokens
    global_batch = config.train.batch_size if batch_size is None else batch_size
    local_batch = per_process_batch(global_batch, batch_key)
    loader = data_lib.make_loader(
        config.data, split=split, batch_size=local_batch, num_visual_tokens=num_visual,
        image_size=vision.image_size,
        normalization="clip" if vision.family == "clip" else "siglip",
        image_token_id=image_token_id, seed=config.train.seed, mode=mode, patch_grid=patch_grid)
    return Feed(loader, config.stage)
