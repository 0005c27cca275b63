"""The stand-in inputs of a CPU rehearsal of a sweep: the real layout, made locally at tiny size.

`config.assets` (see configs/sweep_paper.py `tiny`) says what to make under `assets.root`
(normally inside the sweep's workdir): the synthetic suite exported in the real data's formats
(vlm_jax.data.export: LLaVA-Pretrain / 665k-style json + images, every benchmark's files),
and the Hugging Face checkpoints the stages start from: one tiny LLM per `assets.llms` entry
(seeded random weights) and the vision tower (`assets.vision`), written by
`vlm_jax.interop.hf.save` exactly as a downloaded checkpoint is laid out. Made once (a marker
file says so), so a resumed rehearsal reuses them.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
import numpy as np

from vlm_jax import models
from vlm_jax.data.export import export_suite
from vlm_jax.data.synthetic import SyntheticConfig
from vlm_jax.interop import hf
from vlm_jax.io import write_json_atomic

log = logging.getLogger(__name__)
DONE = "assets_done.json"


def save_random(cfg, path: str, seed: int) -> str:
    """A seeded random init of `cfg` written as a Hugging Face checkpoint directory."""
    params = jax.device_get(models.init_params(cfg, jax.random.key(seed)))
    hf.save(cfg, jax.tree_util.tree_map(np.asarray, params), path)
    return path


def build(assets: ml_collections.ConfigDict) -> None:
    """Makes everything `assets` names under `assets.root` unless it is there already."""
    root = os.path.expanduser(assets.root)
    if os.path.exists(os.path.join(root, DONE)):
        return
    log.info("rehearsal: writing the stand-in data and checkpoints under %s", root)
    os.makedirs(root, exist_ok=True)
    export_suite(SyntheticConfig(**assets.synthetic.to_dict()), root, assets.num_pretrain,
                 assets.num_mix, assets.per_benchmark)
    made = {}
    for k, (name, llm) in enumerate(dict(assets.llms).items()):
        made[name] = save_random(models.from_dict(dict(llm)), os.path.join(root, name), k)
    made["vision"] = save_random(models.from_dict(dict(assets.vision.config)),
                                 os.path.join(root, assets.vision.name), 100)
    write_json_atomic(os.path.join(root, DONE), made)
