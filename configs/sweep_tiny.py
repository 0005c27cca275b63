"""The main job: a tiny scaling sweep on the built-in synthetic suite, on CPU.

    python -m vlm_jax.main --config=configs/sweep_tiny.py --workdir=workdirs/sweep_tiny

Generates the suite (64 px scenes of at most 3 objects; OCR strings of 2-3 characters, one
per 8-px cell, so each character falls in one patch of the tower's 8 x 8 grid and a
compressor that merges patches merges characters), pretrains a tiny CLIP-style tower with
the SigLIP loss on scene and text captions (stage 0), then trains 3 LLM sizes x 4 visual-token
counts with QueCC (tower frozen, everything else trains: there is no pretrained LLM at this
size) on the five reasoning tasks, OCR and captions, evaluates 500 test questions per task
(OCR twice that), and fits Y = A N^-alpha V^-beta + D per family (reasoning, ocr).
arg: `smoke` (2 sizes x 2 token counts, a few steps: CI), `steps`, `pretrain_steps`,
`data_dir`, `per_task` (test questions per task).
"""

import os
import sys

import ml_collections

from vlm_jax.config_args import parse_arg
from vlm_jax.data.synthetic import DEFAULT_TASKS
from vlm_jax.models.config import TextTowerConfig, to_dict
from vlm_jax.models.presets import tiny_sweep_llm, tiny_sweep_vision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_vlm  # noqa: E402  (the point template: configs/tiny_vlm.py)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, smoke=False, steps=500, pretrain_steps=300, per_task=500,
                  patch_weight=0.0, data_dir="~/vlm_jax_data/tfds")
    sizes, tokens = (("s", "m"), (1, 16)) if a.smoke else (("s", "m", "l"), (1, 4, 16, 64))
    steps = 6 if a.smoke else a.steps
    c = ml_collections.ConfigDict()
    c.mode = "sweep"
    c.executor = "inprocess"

    point = tiny_vlm.get_config(f"llm=m,V=16,steps={steps},data_dir={a.data_dir}")
    syn = point.data.synthetic
    syn.tasks = DEFAULT_TASKS + ("caption",)  # reasoning and OCR families, captions
    syn.eval_tasks = DEFAULT_TASKS + ("ocr",)  # no captions; OCR has one task, so twice
    syn.update(ocr_cell=8, ocr_min_len=2, ocr_max_len=3)
    syn.num_test = len(syn.eval_tasks) * a.per_task
    point.data.max_text_len = 24  # a 3-object caption is at most 22 tokens with bos / eos
    point.optim.frozen = r"^vision_tower/"  # the stage-0 tower is loaded and kept
    point.train.ckpt_every = max(steps // 2, 1)
    point.eval.num_examples = 32 if a.smoke else -1
    point.eval.batch_size = 32 if a.smoke else 250
    point.eval.max_new_tokens = 4  # answers: one word, or 2-3 characters
    if a.smoke:
        syn.update(num_train=256, num_validation=32, num_test=32)
    c.point = point

    pre = ml_collections.ConfigDict()
    pre.mode, pre.stage = "train", 0
    vision = tiny_sweep_vision(point.data.synthetic.resolution)
    text = TextTowerConfig(family="clip", width=64, depth=2, heads=4, mlp_dim=256)
    pre.pair = dict(vision=to_dict(vision), text=to_dict(text), embed_dim=64,
                    patch_label_weight=a.patch_weight)
    pre.data = ml_collections.ConfigDict(point.data.to_dict())
    pre.data.synthetic.update(tasks=("caption", "ocr"), eval_tasks=(), num_test=100)
    pre.train = ml_collections.ConfigDict(point.train.to_dict())
    pre.train.update(steps=6 if a.smoke else a.pretrain_steps, batch_size=64,
                     ckpt_every=6 if a.smoke else a.pretrain_steps)
    pre.optim = ml_collections.ConfigDict(point.optim.to_dict())
    pre.optim.update(frozen="")
    pre.mesh, pre.sharding = point.mesh, point.sharding
    c.pretrain = pre

    grid = ml_collections.ConfigDict()
    vocab = point.model.llm.vocab_size
    grid.llm = {s: to_dict(tiny_sweep_llm(s, vocab)) for s in sizes}
    grid.num_tokens = tokens
    grid.compressor = ("quecc",)
    c.sweep = ml_collections.ConfigDict(dict(grid=grid, families=("reasoning", "ocr"),
                                             text_tokens=0))
    return c
