"""What the trainer reads: a grain loader for the stage, adapted to the task's batch keys.

Stages 1/2 read VLM batches (vlm_jax.data batch contract). Stage 0 reads the same pipeline
with no visual placeholders: the caption is the assistant reply, so `caption` = `tokens` and
`caption_valid` = `loss_mask > 0` (the prompt is not part of the caption).
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

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
            out = {"image": batch["image"], "caption": batch["tokens"],
                   "caption_valid": batch["loss_mask"] > 0}
            if "patch_labels" in batch:
                out["patch_labels"] = batch["patch_labels"]
            return out
        arrays, _ = data_lib.split_batch(batch)
        return arrays


def vision_of(config: ml_collections.ConfigDict):
    """The vision tower config the stage's images are made for."""
    if config.stage == 0:
        return models.from_dict(dict(config.pair.vision, kind="vision"))
    return models.from_dict(config.model).vision


def make(config: ml_collections.ConfigDict, split: str = "train", mode: str = "train",
         batch_size: int | None = None, num_visual_tokens: int | None = None) -> Feed:
    """The feed of `config` (per process: each host reads its own shard). num_visual_tokens:
    image placeholders per prompt when the LLM gets another count than the model config makes
    (token reduction before the LLM, `vlm_jax.pruning.prellm`)."""
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
    global_batch, hosts = batch_size or config.train.batch_size, jax.process_count()
    if global_batch % hosts:
        raise ValueError(f"config.train.batch_size={global_batch} (the global batch) does not "
                         f"divide by the {hosts} JAX processes: each would read a different "
                         f"share; use a multiple of {hosts}")
    loader = data_lib.make_loader(
        config.data, split=split, batch_size=global_batch // hosts, num_visual_tokens=num_visual,
        image_size=vision.image_size,
        normalization="clip" if vision.family == "clip" else "siglip",
        image_token_id=image_token_id, seed=config.train.seed, mode=mode, patch_grid=patch_grid)
    return Feed(loader, config.stage)
