"""Meshes and the one table that maps logical axis names to mesh axes.

Every parameter and activation in vlm_jax carries logical axis names (`batch`, `length`,
`embed`, `mlp`, `heads`, `kv`, `vocab`, `vis_tokens`, ...). A preset below maps them onto the
mesh axes `data`, `fsdp` and `tensor`; a config may pass its own rules instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

_BATCH = ("batch", ("data", "fsdp"))
PRESETS: dict[str, Rules] = {
    # Pure data parallelism: parameters replicated.
    "dp": (_BATCH,),
    # ZeRO-3 style: parameters sharded over `fsdp` along their model width.
    "fsdp": (_BATCH, ("embed", "fsdp"), ("vis_embed", "fsdp")),
    # FSDP over width plus tensor parallelism over heads / MLP / vocab.
    "fsdp_tp": (
        _BATCH,
        ("embed", "fsdp"),
        ("vis_embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv", "tensor"),
        ("vocab", "tensor"),
    ),
}


def rules_for(preset_or_rules: str | Sequence) -> Rules:
    """Rules from a preset name or an explicit sequence of (logical, mesh) pairs."""
    if isinstance(preset_or_rules, str):
        if preset_or_rules not in PRESETS:
            raise ValueError(f"unknown sharding preset {preset_or_rules!r}; known: {sorted(PRESETS)}")
        return PRESETS[preset_or_rules]
    return tuple((name, tuple(m) if isinstance(m, list) else m) for name, m in preset_or_rules)


def make_mesh(shape: dict[str, int] | None = None, devices: Sequence | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor); one axis may be -1 (all remaining devices).

    Default: every device on `data`. Without -1 the mesh takes the first devices it needs.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = dict(shape or {"data": -1})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
    sizes = [shape.get(a, 1) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {shape}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide mesh {shape}")
        sizes[sizes.index(-1)] = len(devices) // known
    else:
        devices = devices[:known]
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_shardings(tree, mesh: Mesh, rules: Rules):
    """Maps a tree of logical PartitionSpecs (or boxed params) to NamedShardings."""
    specs = nn.get_partition_spec(tree)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
    """Sharding of a `[B, ...]` input batch array: batch axis split, the rest replicated."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), list(rules))
    return NamedSharding(mesh, PartitionSpec(*spec))
