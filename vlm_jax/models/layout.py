"""Parameter layouts of the layer stacks: per layer (`layers_0`, `layers_1`, ...) or scanned
(one `layers` subtree whose leaves carry a leading layer axis, what `nn.scan` makes).

`match_layout(params, like)` converts every layer stack of `params` to the layout it has in
`like` (a params tree or its `jax.eval_shape`); `unstack_layers` gives the per-layer layout
everywhere (what the Hugging Face mappings and prefix copies read). Checkpoints written with
one layout load into a model built with the other through these.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_LAYER = re.compile(r"layers_(\d+)$")


def _is_layer_dict(tree: Any) -> bool:
    return isinstance(tree, dict) and "layers_0" in tree


def _stack(per_layer: list[Any]) -> Any:
    def stack(*leaves):
        if all(isinstance(x, np.ndarray | np.generic) for x in leaves):
            return np.stack(leaves)
        return jnp.stack(leaves)
    return jax.tree_util.tree_map(stack, *per_layer)


def _unstack(stacked: Any) -> list[Any]:
    """Slices of the leading axis (ShapeDtypeStruct leaves lose it: abstract trees work too)."""
    n = jax.tree_util.tree_leaves(stacked)[0].shape[0]

    def take(a, i):
        if isinstance(a, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(a.shape[1:], a.dtype)
        return a[i]
    return [jax.tree_util.tree_map(lambda a, i=i: take(a, i), stacked) for i in range(n)]


def _split(tree: dict) -> tuple[list[Any], dict]:
    """A dict's `layers_i` children in order, and its other children."""
    found = {int(m.group(1)): v for k, v in tree.items() if (m := _LAYER.match(k))}
    if sorted(found) != list(range(len(found))):
        raise ValueError(f"layer stack has layers {sorted(found)}: not 0..{len(found) - 1}")
    return [found[i] for i in range(len(found))], {k: v for k, v in tree.items()
                                                    if not _LAYER.match(k)}


def unstack_layers(params: Any) -> Any:
    """Every scanned `layers` subtree as `layers_0 .. layers_{n-1}` (per-layer layout)."""
    if not isinstance(params, dict):
        return params
    out = {}
    for k, v in params.items():
        if k == "layers" and isinstance(v, dict):
            out.update({f"layers_{i}": unstack_layers(x) for i, x in enumerate(_unstack(v))})
        else:
            out[k] = unstack_layers(v)
    return out


def match_layout(params: Any, like: Any) -> Any:
    """`params` with each layer stack in the layout `like` has at the same place."""
    if not isinstance(params, dict) or not isinstance(like, dict):
        return params
    out = dict(params)
    if "layers" in like and _is_layer_dict(params):
        layers, rest = _split(params)
        out = {**rest, "layers": _stack([match_layout(x, like["layers"]) for x in layers])}
    elif "layers_0" in like and isinstance(params.get("layers"), dict):
        out = {k: v for k, v in params.items() if k != "layers"}
        out.update({f"layers_{i}": x for i, x in enumerate(_unstack(params["layers"]))})
    return {k: match_layout(v, like[k]) if k in like else v for k, v in out.items()}
