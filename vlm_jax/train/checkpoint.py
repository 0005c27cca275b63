"""orbax checkpoints of a run: train state + grain iterator state + the config.

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames it when
complete), so a write cut off by a kill is never listed as a step and never restored.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import grain.python as grain
import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpoints:
    """`WORKDIR/checkpoints/<step>/{state,data,config}`; keeps the last `keep` steps."""

    def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
        local = "://" not in workdir  # gs:// workdirs (pods) stay URLs
        self.directory = os.path.join(os.path.abspath(workdir) if local else workdir, "checkpoints")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator=None, config: dict | None = None,
             force: bool = False) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.PyGrainCheckpointSave(data_iterator)
        if config is not None:
            items["config"] = ocp.args.JsonSave(config)
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state: Any, data_iterator=None) -> Any:
        """Restores into the shapes/shardings of `abstract_state` (and the iterator in place)."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.PyGrainCheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def restore_numpy(path: str) -> Any:
    """A saved pytree (e.g. `.../checkpoints/<step>/state`) as numpy arrays, whole on this host:
    readable on any topology and any number of hosts, unlike a restore into the saved
    shardings."""
    tree = ocp.StandardCheckpointer().metadata(path).item_metadata
    args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ocp.PyTreeCheckpointer().restore(path, restore_args=args)


def to_host(leaf: Any) -> np.ndarray:
    """The whole array on this host. An array spanning several hosts is all-gathered, so every
    process must call this for it, in the same order."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(jax.device_get(leaf))


def fingerprint(tree: Any) -> str:
    """sha256 over every leaf's bytes, in tree order (`to_host` gathers sharded arrays; on
    several hosts every process must call it)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        arr = to_host(leaf)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file (on gs://,
    one object write is atomic already)."""
    if "://" in path:
        from etils import epath
        epath.Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
