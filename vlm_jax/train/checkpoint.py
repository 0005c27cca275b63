"""orbax checkpoints of a run: train state + grain iterator state + the config + a record.

`WORKDIR/checkpoints/<step>/{state,data,config,record}`. Saves are asynchronous and atomic
(orbax writes to a temporary directory and renames it when complete), so a write cut off by a
kill is never listed as a step. `record` holds the step's metrics and a content checksum of
every array of the state and of the iterator state; a restore verifies them, and a checkpoint
that fails (or cannot be read) is named by step and file, set aside as `<step>.corrupt` (never
deleted) and the next older one is tried. Readers (`load_run`, `read_only=True`) never create,
delete or rename anything, so they may look at a run while it trains.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import grain.python as grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or fails its checksum (names the step and file)."""


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):  # DictKey, SequenceKey / FlattenedIndexKey, GetAttrKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _flat(tree: Any) -> dict[str, Any]:
    """{"a/b/0/c": leaf}: the same names for a live state (optax named tuples) and for the
    nested dicts / lists orbax reads its metadata back as."""
    return {"/".join(_key_name(k) for k in path): x
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """uint32 sum of every element's bits times an odd weight of its position (mod 2**32):
    any single flipped bit changes it, and it does not depend on how `x` is sharded."""
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    elif x.dtype.itemsize == 8:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
    else:
        bits = jax.lax.bitcast_convert_type(
            x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(jnp.uint32)
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(bits.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * np.uint32(
            stride % 2**32)
        stride *= bits.shape[axis]
    weight = (index * np.uint32(0x9E3779B1)) ^ (index >> 15) | np.uint32(1)
    return jnp.sum(bits * weight, dtype=jnp.uint32)


_checksums = jax.jit(lambda tree: jax.tree_util.tree_map(_leaf_checksum, tree))


def state_checksums(tree: Any) -> dict[str, int]:
    """{leaf path: uint32 content checksum} of a pytree of (possibly sharded) arrays."""
    return {k: int(v) for k, v in _flat(jax.device_get(_checksums(tree))).items()}


def _iterator_digest(iterator) -> str:
    state = json.loads(iterator.get_state())
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def _all_processes(values: np.ndarray) -> np.ndarray:
    """`values` of every process, stacked [P, ...] (just [1, ...] on one process)."""
    if jax.process_count() == 1:
        return values[None]
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(values))


def _innermost(e: BaseException) -> str:
    """The error at the bottom of a chain, on one line: tensorstore's names the array and the
    byte range ('Error reading "params.w/0.0" ...'); orbax's wrapper above it dumps a spec."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"


def _first_mismatch(saved: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """The first parameter whose presence, shape or dtype differs, in words (None: they fit)."""
    for key in sorted(set(saved) | set(wanted)):
        if key not in saved:
            return f"{key} is in the model but not in the checkpoint"
        if key not in wanted:
            return f"{key} is in the checkpoint but not in the model"
        a, b = saved[key], wanted[key]
        if tuple(a.shape) != tuple(b.shape) or np.dtype(a.dtype) != np.dtype(b.dtype):
            return (f"{key} is {np.dtype(a.dtype)}{list(a.shape)} in the checkpoint, the model "
                    f"wants {np.dtype(b.dtype)}{list(b.shape)}")
    return None


def _listing(read: Callable[[], Any], attempts: int = 50) -> Any:
    """`read()` (orbax listing the steps, then reading each one's metadata), retried while a
    step vanishes between the two: the training run removed it (`keep`) as a reader looked."""
    for attempt in range(attempts):
        try:
            return read()
        except (FileNotFoundError, NotADirectoryError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.02)


@contextlib.contextmanager
def _quiet_orbax(quiet: bool = True):
    """orbax's absl warnings off (ERROR and above only) inside the block, when `quiet`."""
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR if quiet else level)
    try:
        yield
    finally:
        absl_log.setLevel(level)


class Checkpoints:
    """The checkpoints of one run directory; keeps the last `keep` steps. `read_only=True`
    (readers: eval, demo, pruning): the directory must exist and is never changed."""

    def __init__(self, workdir: str, keep: int = 2, async_save: bool = True,
                 read_only: bool = False):
        local = "://" not in workdir  # gs:// workdirs (pods) stay URLs
        self.directory = os.path.join(os.path.abspath(workdir) if local else workdir, "checkpoints")
        self.read_only = read_only
        if read_only and not epath.Path(self.directory).is_dir():
            raise FileNotFoundError(f"{workdir!r} is not a training run: it has no "
                                    f"checkpoints/ directory ({self.directory})")
        handlers = {"state": ocp.PyTreeCheckpointHandler(), "data": grain.PyGrainCheckpointHandler(),
                    "config": ocp.JsonCheckpointHandler(), "record": ocp.JsonCheckpointHandler()}
        with _quiet_orbax(read_only):  # orbax warns that read-only means read-only
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only,
                read_only=read_only, enable_async_checkpointing=async_save and not read_only)
            self.manager = _listing(lambda: ocp.CheckpointManager(
                self.directory, options=options, item_handlers=handlers))

    def reload(self) -> None:
        """Re-reads the list of steps (a writer may have saved or removed some meanwhile)."""
        _listing(self.manager.reload)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state: Any, data_iterator=None, config: dict | None = None,
             record: dict | None = None, force: bool = False) -> None:
        """Saves `state`, the iterator, `config` and `record` (metrics) with their checksums."""
        record = dict(record or {}, step=step, checksums={"state": state_checksums(state)})
        items = {"state": ocp.args.PyTreeSave(state)}
        if data_iterator is not None:
            items["data"] = grain.PyGrainCheckpointSave(data_iterator)
            digest = np.frombuffer(bytes.fromhex(_iterator_digest(data_iterator)), np.uint8)
            record["checksums"]["data"] = [bytes(d).hex() for d in _all_processes(digest)]
        if config is not None:
            items["config"] = ocp.args.JsonSave(config)
        items["record"] = ocp.args.JsonSave(record)
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def _read_json_item(self, step: int, name: str) -> dict | None:
        path = os.path.join(self.step_dir(step), name)
        if not epath.Path(path).exists():
            return None
        try:
            return self.manager.restore(step, args=ocp.args.Composite(
                **{name: ocp.args.JsonRestore()}))[name]
        except Exception as e:  # noqa: BLE001 - any failure to read is a damaged checkpoint
            raise CheckpointError(f"checkpoint step {step}: cannot read {path}: "
                                  f"{type(e).__name__}: {e}") from e

    def _saved_tree(self, step: int) -> Any:
        """The saved state's tree of array metadata (shapes, dtypes)."""
        path = os.path.join(self.step_dir(step), "state")
        try:
            with _quiet_orbax():  # a missing _METADATA: orbax's own warning asks for a registry
                meta = self.manager.item_metadata(step)["state"]
            return getattr(meta, "tree", meta)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint step {step}: cannot read the array metadata in "
                                  f"{path}: {type(e).__name__}: {e}") from e

    def _restore_verified(self, step: int, abstract_state: Any, data_iterator,
                          check_config: Callable[[dict], None] | None) -> tuple[Any, dict]:
        """(state, record) of `step`, checksums verified; CheckpointError if damaged."""
        record = self._read_json_item(step, "record")
        config = self._read_json_item(step, "config")
        if check_config is not None and config is not None:
            check_config(config)  # a changed config is the user's error, not a damaged step
        state_dir = os.path.join(self.step_dir(step), "state")
        saved_tree = self._saved_tree(step)
        saved = _flat(saved_tree)
        if record is not None and set(saved) != set(record["checksums"]["state"]):
            missing = sorted(set(record["checksums"]["state"]) - set(saved))
            raise CheckpointError(f"checkpoint step {step}: the array metadata in {state_dir} "
                                  f"(_METADATA) is damaged: it lists {len(saved)} of the "
                                  f"{len(record['checksums']['state'])} saved arrays (missing "
                                  f"{missing[:3]})")
        if abstract_state is not None:
            mismatch = _first_mismatch(saved, _flat(abstract_state))
            if mismatch:
                raise ValueError(f"checkpoint step {step} ({state_dir}) does not fit this "
                                 f"config: {mismatch}")
            restore = ocp.args.PyTreeRestore(
                abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(
                    abstract_state))
        else:  # numpy, whole on this host: any topology, any host count
            restore = ocp.args.PyTreeRestore(restore_args=jax.tree_util.tree_map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved_tree))
        try:
            state = self.manager.restore(step, args=ocp.args.Composite(state=restore))["state"]
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint step {step}: cannot read {state_dir}: "
                                  f"{_innermost(e)}") from e
        if record is None:
            log.warning("checkpoint step %d has no %s (the checksums and metrics: written by "
                        "an older version, or removed); restored unverified", step,
                        os.path.join(self.step_dir(step), "record"))
            record = {}
        else:
            got = state_checksums(state)
            for key, want in record["checksums"]["state"].items():
                if got.get(key) != want:
                    raise CheckpointError(
                        f"checkpoint step {step}: {state_dir} fails its checksum at {key} "
                        f"(saved {want}, read {got.get(key)}): the file changed after it was "
                        "written")
        if data_iterator is not None:
            data_dir = os.path.join(self.step_dir(step), "data")
            try:
                self.manager.restore(step, args=ocp.args.Composite(
                    data=grain.PyGrainCheckpointRestore(data_iterator)))
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(f"checkpoint step {step}: cannot read the iterator state "
                                      f"in {data_dir}: {type(e).__name__}: {e}") from e
            want = record.get("checksums", {}).get("data")
            ok = want is None or want[jax.process_index()] == _iterator_digest(data_iterator)
            if not _all_processes(np.asarray(ok)).all():
                raise CheckpointError(f"checkpoint step {step}: the iterator state in {data_dir} "
                                      "fails its checksum: the file changed after it was written")
        return state, dict(record, config=config)

    def restore_latest(self, abstract_state: Any, data_iterator=None,
                       check_config: Callable[[dict], None] | None = None
                       ) -> tuple[int, Any, dict] | None:
        """(step, state, record) of the newest checkpoint that reads and verifies, or None
        when there is none. `abstract_state` None: numpy arrays whole on this host; else the
        shapes/shardings to restore into (the iterator is restored in place). Damaged steps are
        reported and, unless read-only, set aside as `<step>.corrupt`. `check_config(saved)`
        may raise on a config that does not match."""
        failures = []
        tried: set[int] = set()
        while True:
            self.reload()  # a writer may have saved or removed steps meanwhile
            steps = [s for s in self.all_steps() if s not in tried]
            if not steps:
                break
            step = steps[-1]
            tried.add(step)
            try:
                state, record = self._restore_verified(step, abstract_state, data_iterator,
                                                       check_config)
            except CheckpointError as e:
                if self.read_only:
                    time.sleep(0.2)  # a writer may be removing it (max_to_keep) right now
                    self.reload()
                if step not in self.manager.all_steps():
                    continue  # removed by the training run while we read it: not damage
                failures.append(str(e))
                if self.read_only:
                    log.warning("%s; skipping it (read-only: left in place)", e)
                else:
                    aside = self.set_aside(step, "corrupt")
                    log.warning("%s; set aside as %s, falling back to an older checkpoint", e,
                                aside)
                continue
            if failures:
                log.warning("restored checkpoint step %d of %s instead", step, self.directory)
            return step, state, record
        if failures:
            raise CheckpointError(f"no checkpoint in {self.directory} reads back intact: "
                                  + "; ".join(failures))
        return None

    def set_aside(self, step: int, reason: str) -> str:
        """Renames `<step>` to `<step>.<reason>[.N]` (process 0; every process waits)."""
        src = epath.Path(self.step_dir(step))
        dst = epath.Path(f"{src}.{reason}")
        n = 0
        while dst.exists():
            n += 1
            dst = epath.Path(f"{src}.{reason}.{n}")
        if jax.process_index() == 0:
            src.rename(dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"set_aside_{step}")
        self.reload()
        return str(dst)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _latest(workdir: str) -> tuple[Checkpoints, tuple]:
    ckpts = Checkpoints(workdir, read_only=True)
    found = ckpts.restore_latest(None)
    if found is None:
        raise FileNotFoundError(f"no complete checkpoint in {ckpts.directory}")
    return ckpts, found


def load_params(workdir: str) -> Any:
    """Params (numpy) of the newest intact checkpoint of a run directory, read-only (safe
    while the run trains); the checkpoint need not hold a config (init_from's case)."""
    return _latest(workdir)[1][1]["params"]


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict, Any]:
    """(config, params as numpy) of the newest intact checkpoint of a training run directory,
    read-only (safe while the run trains)."""
    ckpts, (step, state, record) = _latest(workdir)
    if record.get("config") is None:
        raise CheckpointError(f"{ckpts.step_dir(step)} holds no config")
    return ml_collections.ConfigDict(record["config"]), state["params"]


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
