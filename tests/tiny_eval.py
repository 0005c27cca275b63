"""A tiny VLM run config with scaled random weights, for the evaluation tests."""

from __future__ import annotations

import os
import sys

import jax

from vlm_jax import models

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs"))
import tiny_vlm  # noqa: E402


def scaled_tiny_vlm(data_dir: str, num_validation: int, num_test: int, scale: float):
    """(config, VLMConfig, params) of `tiny_vlm` (s LLM, V = 4, 32 px) on a small suite in
    `data_dir`, its random init times `scale`: larger weights than the init's make greedy
    answers vary with the input."""
    c = tiny_vlm.get_config(f"llm=s,V=4,res=32,data_dir={data_dir}")
    c.data.synthetic.update(num_train=16, num_validation=num_validation, num_test=num_test)
    cfg = models.from_dict(c.model)
    params = jax.tree_util.tree_map(lambda x: scale * x, models.init_params(cfg, 0))
    return c, cfg, params
