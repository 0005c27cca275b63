"""Initialise some parameters from another run (`workdir`) or a Hugging Face dir (`hf`).

config.init_from = {"workdir": DIR or "hf": DIR, "map": ((dst_prefix, src_prefix), ...)}
copies every source leaf `src_prefix/rest` into `dst_prefix/rest` (e.g. a stage-0 run's
`image_tower` into the VLM's `vision_tower`). A list of such specs is applied in order (e.g. a
Hugging Face LLM into `language_model`, then a CLIP tower into `vision_tower`). A shape
mismatch or a mapping that copies nothing is an error naming the parameter.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from vlm_jax import models
from vlm_jax.train.checkpoint import load_params


def source_params(spec) -> dict:
    """Params of the newest intact checkpoint in `spec.workdir`, or of `spec.hf`."""
    if spec.get("hf"):
        from vlm_jax.interop import hf
        return hf.load(spec.hf)[1]
    return load_params(spec.workdir)  # read-only; any source topology, on every host


def copy_prefixes(dst: dict, src: dict, mapping) -> tuple[dict, int]:
    """Returns (dst with mapped leaves replaced, number of leaves copied)."""
    flat_dst = traverse_util.flatten_dict(dst, sep="/")
    flat_src = traverse_util.flatten_dict(src, sep="/")
    copied = 0
    for dst_prefix, src_prefix in mapping:
        for name in list(flat_dst):
            if dst_prefix and not (name == dst_prefix or name.startswith(dst_prefix + "/")):
                continue
            rest = name[len(dst_prefix):].lstrip("/")
            src_name = "/".join(p for p in (src_prefix, rest) if p)
            if src_name not in flat_src:
                continue
            value = np.asarray(flat_src[src_name])
            if value.shape != tuple(flat_dst[name].shape):
                raise ValueError(f"init_from: source {src_name!r} has shape {value.shape}, "
                                 f"target {name!r} needs {tuple(flat_dst[name].shape)}")
            flat_dst[name] = value.astype(flat_dst[name].dtype)
            copied += 1
    return traverse_util.unflatten_dict(flat_dst, sep="/"), copied


def apply(spec, params: Any) -> Any:
    """`params` with the mapped source leaves copied in. Either side may have scanned or
    per-layer layer stacks: prefixes are matched per layer, the result has `params`' layout."""
    if isinstance(spec, (list, tuple)):
        for one in spec:
            params = apply(ml_collections.ConfigDict(dict(one)), params)
        return params
    mapping = [tuple(m) for m in spec.get("map", (("", ""),))]
    src = models.unstack_layers(jax.device_get(source_params(spec)))
    out, copied = copy_prefixes(models.unstack_layers(params), src, mapping)
    if copied == 0:
        raise ValueError(f"init_from {dict(spec)} copied no parameter; check `map` prefixes")
    return models.match_layout(out, params)
