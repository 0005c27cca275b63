"""optax optimiser from the config: AdamW, warmup-cosine, clipping, accumulation, freezing and
learning-rate groups by regex over parameter paths ("language_model/layers_3/mlp/up_proj/kernel").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import ml_collections
import optax

from vlm_jax.config_args import merge_defaults


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        lr=1e-3,
        warmup_frac=0.03,
        schedule="cosine",  # cosine | constant | linear
        end_lr_frac=0.0,
        weight_decay=0.0,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        clip_norm=1.0,  # 0 disables
        grad_accum=1,
        frozen="",  # regex of parameter paths that do not train ("" = none)
        lr_groups=(),  # ((regex, lr multiplier), ...) first match wins
        no_decay=r"(bias|scale|weight|embedding|class_embedding|probe)$",  # norms etc.
    ))


def path_str(path) -> str:
    """'a/b/c' for a jax tree path (the form parameter regexes match)."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def label_params(params, frozen: str, lr_groups: Sequence) -> dict:
    """Tree of labels: "frozen", "group_i" (first matching lr group) or "default"."""
    frozen_re = re.compile(frozen) if frozen else None
    groups = [(re.compile(rx), i) for i, (rx, _) in enumerate(lr_groups)]

    def label(path, _):
        p = path_str(path)
        if frozen_re is not None and frozen_re.search(p):
            return "frozen"
        for rx, i in groups:
            if rx.search(p):
                return f"group_{i}"
        return "default"

    return jax.tree_util.tree_map_with_path(label, params)


def schedule(cfg: ml_collections.ConfigDict, total_steps: int, lr: float) -> optax.Schedule:
    warmup = int(round(cfg.warmup_frac * total_steps))
    end = lr * cfg.end_lr_frac
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(total_steps, 2),
                                                  end_value=end)
    if cfg.schedule == "linear":
        return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)),
                                     optax.linear_schedule(lr, end, max(total_steps - warmup, 1))],
                                    [warmup])
    if cfg.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)),
                                     optax.constant_schedule(lr)], [warmup])
    raise ValueError(f"optim.schedule must be cosine, linear or constant, got {cfg.schedule!r}")


def make_optimizer(cfg: ml_collections.ConfigDict, params, total_steps: int
                   ) -> optax.GradientTransformation:
    """The optimiser for `params` (used only for their tree structure and paths)."""
    cfg = merge_defaults(cfg, default_config(), "optim")  # an unknown key is an error
    no_decay = re.compile(cfg.no_decay) if cfg.no_decay else None
    decay_mask = jax.tree_util.tree_map_with_path(
        lambda p, _: not (no_decay and no_decay.search(path_str(p))), params)

    def adamw(lr_mult: float) -> optax.GradientTransformation:
        return optax.adamw(schedule(cfg, total_steps, cfg.lr * lr_mult), b1=cfg.b1, b2=cfg.b2,
                           eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)

    transforms = {"default": adamw(1.0), "frozen": optax.set_to_zero()}
    for i, (_, mult) in enumerate(cfg.lr_groups):
        transforms[f"group_{i}"] = adamw(float(mult))
    labels = label_params(params, cfg.frozen, cfg.lr_groups)
    if not any(lbl != "frozen" for lbl in jax.tree_util.tree_leaves(labels)):
        raise ValueError(f"optim.frozen={cfg.frozen!r} freezes every parameter")
    chain = [optax.multi_transform(transforms, labels)]
    if cfg.clip_norm:
        chain.insert(0, optax.clip_by_global_norm(cfg.clip_norm))
    tx = optax.chain(*chain)
    if cfg.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum)
    return tx


def trainable_mask(params, frozen: str) -> dict:
    """Tree of bools: True where the parameter trains."""
    labels = label_params(params, frozen, ())
    return jax.tree_util.tree_map(lambda lbl: lbl != "frozen", labels)
