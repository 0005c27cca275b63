"""The one trainer: any stage, any token count, one CPU or a pod slice.

`train(config, workdir)` resumes from the newest intact checkpoint in `workdir` (its saved
config must match, see `config_changes`), runs to `config.train.steps`, and writes
`workdir/run_summary.json` (config, final step, final metrics, parameter fingerprint). The loss
guard stops a run whose loss is not finite or has diverged: above `train.max_loss_ratio` times
its running minimum (floored at 1 nat).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metric_writers, periodic_actions
from etils import epath
from flax import traverse_util

from vlm_jax import io, sharding
from vlm_jax.config_args import merge_defaults
from vlm_jax.train import checkpoint as ckpt_lib
from vlm_jax.train import data_feed, init_from, objectives
from vlm_jax.train.optimizer import make_optimizer, trainable_mask

log = logging.getLogger(__name__)

# Config keys a resumed run may change: they do not alter the trained parameters.
RESUME_NEUTRAL = ("mode", "eval", "mesh", "sharding", "llm_name", "executor", "data.data_dir",
                  "train.log_every", "train.ckpt_every", "train.keep_ckpts", "train.async_ckpt",
                  "train.activation_constraints", "train.allow_config_change",
                  "train.compile_effort")


def default_config() -> ml_collections.ConfigDict:
    """`activation_constraints`: "on" traces the step under the mesh, so the models' logical
    activation constraints apply; "off" leaves the activations' layout to XLA; "auto" is "on"
    when the mesh has tensor parallelism (measured on a 7B step, launch/README.md: 3.3x less
    memory per chip with tp 4, 1.9x more with fsdp alone). `compile_effort`: XLA's
    `exec_time_optimization_effort` for the step, in [-1, 1] (0: XLA's default); -1 compiled
    the 7B step with 4x less CPU time and 3% more memory per chip (launch/README.md)."""
    return ml_collections.ConfigDict(dict(
        steps=100, batch_size=8, log_every=10, ckpt_every=50, keep_ckpts=2, async_ckpt=True,
        seed=0, activation_constraints="auto", compile_effort=0.0,
        max_loss_ratio=10.0,  # loss guard: diverged above this x the running minimum (0: off)
        allow_config_change=False))  # resume despite result-altering config changes


_PROGRESS_NOTE = "Setting work unit notes: %s"  # how clu's local work unit logs its notes


def _progress_or_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.msg == _PROGRESS_NOTE


def show_progress_notes() -> None:
    """Shows the trainer's progress notes (clu logs them through absl at INFO) and, of absl's
    other records (orbax, grain), only warnings and errors."""
    absl_logger = logging.getLogger("absl")
    absl_logger.setLevel(logging.INFO)
    absl_logger.addFilter(_progress_or_warning)  # once: the same filter is not added twice


class LossDivergedError(FloatingPointError):
    """The loss guard stopped the run (names the step and the last good checkpoint)."""


class NonFiniteLossError(LossDivergedError):
    pass


def check_train_config(train: Any) -> ml_collections.ConfigDict:
    """`config.train` over the defaults (an unknown key is an error naming it), with positive
    integer step counts, checked up front (not a ZeroDivisionError after step 1)."""
    tcfg = merge_defaults(train, default_config(), "train")
    hints = {"steps": " (0 would write the summary of an untrained model)",
             "ckpt_every": " (set it to train.steps to save only at the end)"}
    for key in ("steps", "batch_size", "log_every", "ckpt_every", "keep_ckpts"):
        value = tcfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.train.{key} must be a positive integer, got {value!r}"
                             + hints.get(key, ""))
    return tcfg


def config_changes(saved: dict, new: dict) -> list[str]:
    """'key: saved -> new' for every result-altering key that differs (RESUME_NEUTRAL keys
    excluded; values compared as JSON stores them)."""
    flat_saved = traverse_util.flatten_dict(saved, sep=".")
    flat_new = traverse_util.flatten_dict(json.loads(json.dumps(new, default=str)), sep=".")
    changes = []
    for key in sorted(set(flat_saved) | set(flat_new)):
        if any(key == n or key.startswith(n + ".") for n in RESUME_NEUTRAL):
            continue
        a, b = flat_saved.get(key, "(absent)"), flat_new.get(key, "(absent)")
        if a != b:
            changes.append(f"{key}: {a!r} -> {b!r}")
    return changes


class Trainer:
    """Holds the compiled step, shardings and state for one run (see module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, vocab_size: int | None = None,
                 devices=None):
        """`devices`: the mesh's devices (default `jax.devices()`; launch/aot.py passes a TPU
        topology's devices to compile ahead of time)."""
        tcfg = check_train_config(config.train)
        self.config, self.workdir = config, workdir
        self.task = objectives.make_task(config, vocab_size)
        self.mesh = sharding.make_mesh(dict(config.mesh), devices=devices)
        constraints = tcfg.activation_constraints
        if constraints not in ("on", "off", "auto"):
            raise ValueError("train.activation_constraints must be 'on', 'off' or 'auto', got "
                             f"{constraints!r}")
        self.constrain_activations = constraints == "on" or (
            constraints == "auto" and self.mesh.shape["tensor"] > 1)
        self.rules = sharding.rules_for(config.sharding)
        boxed = objectives.abstract_params(self.task)["params"]
        abstract = nn.meta.unbox(boxed)
        param_sh = sharding.logical_shardings(boxed, self.mesh, self.rules)
        frozen = config.optim.frozen
        if frozen is None:
            frozen = objectives.FROZEN_BY_STAGE[config.stage]
        self.optim_cfg = ml_collections.ConfigDict(dict(config.optim, frozen=frozen))
        self.trainable = trainable_mask(abstract, frozen)
        self.tx = make_optimizer(self.optim_cfg, abstract, tcfg.steps)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        # optax maps over the boxed params, so every param-shaped state leaf (Adam mu / nu,
        # accumulated gradients) keeps its param's logical axes; counts are replicated.
        opt_boxed = jax.eval_shape(self.tx.init, boxed)
        opt_abstract = nn.meta.unbox(opt_boxed)
        self.state_shardings = {"step": replicated, "params": param_sh,
                                "opt_state": sharding.logical_shardings(opt_boxed, self.mesh,
                                                                        self.rules)}
        self.abstract_state = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract,
             "opt_state": opt_abstract}, self.state_shardings)
        self.batch_sh = {k: sharding.batch_sharding(self.mesh, self.rules, x.ndim)
                         for k, x in self.task.init_batch(1).items()}
        effort = float(tcfg.compile_effort)
        if not -1.0 <= effort <= 1.0:
            raise ValueError(f"config.train.compile_effort must be in [-1, 1], got {effort!r}")
        self._step = jax.jit(self._train_step, in_shardings=(self.state_shardings, self.batch_sh),
                             out_shardings=(self.state_shardings, None), donate_argnums=0,
                             compiler_options={"exec_time_optimization_effort": effort}
                             if effort else None)

    def _train_step(self, state, batch):
        """Traced under `jax.set_mesh(self.mesh)` (see `_mesh_context`), so the models'
        activation constraints (`nn.with_logical_constraint`) follow the rules table."""
        def loss_fn(params):
            params = jax.tree_util.tree_map(
                lambda p, t: p if t else jax.lax.stop_gradient(p), params, self.trainable)
            with nn.logical_axis_rules(self.rules):
                return self.task.loss(params, batch)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = dict(metrics, grad_norm=optax.global_norm(grads))
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    def init_state(self) -> dict:
        """Fresh state: random init (then `config.init_from` if set), sharded on the mesh."""
        rng = jax.random.key(self.config.train.seed)
        params = jax.jit(lambda r: nn.meta.unbox(objectives.init_params(self.task, r)["params"]),
                         out_shardings=self.state_shardings["params"])(rng)
        if self.config.get("init_from"):
            host = init_from.apply(self.config.init_from,
                                   jax.tree_util.tree_map(ckpt_lib.to_host, params))
            params = jax.tree_util.tree_map(  # numpy, whole on every host -> global arrays
                lambda a, s: jax.make_array_from_callback(a.shape, s, lambda i: a[i]),
                host, self.state_shardings["params"])
        return jax.jit(lambda p: {"step": jnp.zeros((), jnp.int32), "params": p,
                                  "opt_state": self.tx.init(p)},
                       in_shardings=(self.state_shardings["params"],),
                       out_shardings=self.state_shardings)(params)

    def step(self, state: dict, arrays: dict) -> tuple[dict, dict]:
        """One optimiser step on this process's part of the batch (numpy arrays)."""
        arrays = {k: jax.make_array_from_process_local_data(self.batch_sh[k], np.asarray(arrays[k]))
                  for k in self.task.batch_keys}
        with self._mesh_context():
            return self._step(state, arrays)

    def lower(self, state, batch) -> jax.stages.Lowered:
        """The step lowered as `step` runs it; abstract inputs are fine (launch/aot.py
        compiles it for a TPU topology)."""
        with self._mesh_context():
            return self._step.lower(state, batch)

    def _mesh_context(self):
        if self.constrain_activations:
            return jax.set_mesh(self.mesh)
        return contextlib.nullcontext()  # constraints are no-ops outside a mesh


def _resume_check(config: ml_collections.ConfigDict, workdir: str):
    """`check_config(saved)` for `Checkpoints.restore_latest`: raises on result-altering
    changes unless `train.allow_config_change`."""
    def check(saved: dict) -> None:
        changes = config_changes(saved, config.to_dict())
        if not changes:
            return
        if config.train.get("allow_config_change", False):
            log.warning("resuming %s with a changed config (allowed): %s", workdir, changes)
            return
        raise ValueError(f"{workdir} was trained with a different config; resuming would mix "
                         f"two runs. Changed: {'; '.join(changes)}. Use a new --workdir, or "
                         "pass --config.train.allow_config_change=True to resume anyway")
    return check


def _stop(ckpts: ckpt_lib.Checkpoints, step: int, loss: float, loss_min: float,
          ratio: float) -> None:
    """Raises the loss guard's error. The checkpoint of step-1 holds the parameters that gave
    this loss, so it and any later one are set aside as `<step>.diverged`."""
    ckpts.wait()
    aside = [ckpts.set_aside(s, "diverged") for s in ckpts.all_steps() if s >= step - 1]
    last = ckpts.latest_step()
    why = ("not finite" if not np.isfinite(loss) else
           f"diverged: above {ratio:g} x the running minimum {loss_min:.4g}")
    error = NonFiniteLossError if not np.isfinite(loss) else LossDivergedError
    raise error(
        f"loss is {loss} at step {step} ({why}); stopped without saving. "
        + (f"Set aside the checkpoints saved since the last good loss: {aside}. " if aside else "")
        + "Last good checkpoint: " + (f"step {last}" if last is not None else "none")
        + f" in {ckpts.directory}. Lower optim.lr (or raise optim.warmup_frac) and rerun with "
        "--config.train.allow_config_change=True to resume from it")


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) a training run; returns the run summary. A finished run is not
    rerun: its summary (and metrics) stay as they were."""
    tcfg = check_train_config(config.train)
    if "://" not in workdir:  # gs:// (pods): orbax and the writers make what they need
        os.makedirs(workdir, exist_ok=True)
    feed = data_feed.make(config)
    trainer = Trainer(config, workdir, vocab_size=feed.vocab_size)
    ratio = float(tcfg.max_loss_ratio)
    ckpts = ckpt_lib.Checkpoints(workdir, keep=tcfg.keep_ckpts, async_save=tcfg.async_ckpt)
    it = feed.iterator()
    found = ckpts.restore_latest(trainer.abstract_state, it, _resume_check(config, workdir))
    if found is None:
        state, start, record = trainer.init_state(), 0, {}
    else:
        start, state, record = found
        log.info("resuming from step %d in %s", start, ckpts.directory)
    summary_path = os.path.join(workdir, "run_summary.json")
    if start >= tcfg.steps and epath.Path(summary_path).exists():
        ckpts.close()
        return io.read_json(summary_path)  # finished: results are facts, not rewritten
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False)
    if start == 0:
        writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})
    config_json = config.to_dict()
    metrics: dict[str, float] = dict(record.get("metrics", {}))
    loss_min = float(record.get("loss_min", np.inf))
    # steps/s, % done and ETA every log_every steps: logged as the work unit's notes and
    # written (steps_per_sec, uptime) beside the metrics.
    progress = periodic_actions.ReportProgress(num_train_steps=tcfg.steps, writer=writer,
                                               every_steps=tcfg.log_every, every_secs=None)
    progress(start)  # the first call only starts the clock

    def finish(step: int, m: dict) -> None:
        """Checks, logs and checkpoints a dispatched step (blocks until it is done)."""
        nonlocal metrics, loss_min
        loss = float(m["loss"])
        if not np.isfinite(loss) or (ratio > 0 and loss > ratio * max(loss_min, 1.0)):
            _stop(ckpts, step, loss, loss_min, ratio)
        loss_min = min(loss_min, loss)
        logged = step % tcfg.log_every == 0 or step == tcfg.steps
        if logged or step % tcfg.ckpt_every == 0:
            metrics = {k: float(v) for k, v in m.items()}
        if logged:
            writer.write_scalars(step, metrics)
            log.info("step %d/%d loss %.4f", step, tcfg.steps, loss)
        progress(step)
        if step % tcfg.ckpt_every == 0 or step == tcfg.steps:
            ckpts.save(step, state, it, config_json,
                       record={"loss": loss, "loss_min": loss_min, "metrics": metrics})

    # The next batch is read while the dispatched step runs; a checkpoint step is finished
    # first so the saved iterator state matches the saved parameters.
    pending = None
    for step in range(start + 1, tcfg.steps + 1):
        if pending and pending[0] % tcfg.ckpt_every == 0:
            finish(*pending)
            pending = None
        arrays = feed.arrays(next(it))
        if pending:
            finish(*pending)
        state, m = trainer.step(state, arrays)
        pending = (step, m)
    if pending:
        finish(*pending)
    ckpts.wait()
    writer.flush()
    final_step = int(jax.device_get(state["step"]))
    summary = {"config": config_json, "final_step": final_step, "final_metrics": metrics,
               "param_fingerprint": ckpt_lib.fingerprint(state["params"])}
    if jax.process_index() == 0:
        io.write_json_atomic(summary_path, summary)
    ckpts.close()
    return summary
