"""The one trainer: any stage, any token count, one CPU or a pod slice.

`train(config, workdir)` resumes from the latest complete checkpoint in `workdir`, runs to
`config.train.steps`, and writes `workdir/run_summary.json` (config, final step, final
metrics, parameter fingerprint).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metric_writers

from vlm_jax import sharding
from vlm_jax.config_args import check_keys
from vlm_jax.train import checkpoint as ckpt_lib
from vlm_jax.train import data_feed, init_from, tasks
from vlm_jax.train.optimizer import make_optimizer, path_str, trainable_mask

log = logging.getLogger(__name__)

TRAIN_KEYS = {"steps", "batch_size", "log_every", "ckpt_every", "keep_ckpts", "async_ckpt",
              "seed", "activation_constraints"}


def default_config() -> ml_collections.ConfigDict:
    """`activation_constraints`: "on" traces the step under the mesh, so the models' logical
    activation constraints apply; "off" leaves the activations' layout to XLA; "auto" is "on"
    when the mesh has tensor parallelism (measured on a 7B step, launch/README.md: 3.3x less
    memory per chip with tp 4, 1.9x more with fsdp alone)."""
    return ml_collections.ConfigDict(dict(
        steps=100, batch_size=8, log_every=10, ckpt_every=50, keep_ckpts=2, async_ckpt=True,
        seed=0, activation_constraints="auto"))


class NonFiniteLossError(FloatingPointError):
    pass


def _match_suffix(tree, param_shardings: dict[str, Any], replicated):
    """Sharding for optimiser-state leaves: that of the parameter whose path ends theirs."""
    def pick(path, _):
        p = path_str(path)
        for name, s in param_shardings.items():
            if p == name or p.endswith("/" + name):
                return s
        return replicated
    return jax.tree_util.tree_map_with_path(pick, tree)


class Trainer:
    """Holds the compiled step, shardings and state for one run (see module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, vocab_size: int | None = None,
                 devices=None):
        """`devices`: the mesh's devices (default `jax.devices()`; launch/aot.py passes a TPU
        topology's devices to compile ahead of time)."""
        check_keys(config.train, TRAIN_KEYS, "train")
        self.config, self.workdir = config, workdir
        self.task = tasks.make_task(config, vocab_size)
        self.mesh = sharding.make_mesh(dict(config.mesh), devices=devices)
        constraints = config.train.get("activation_constraints", "auto")
        if constraints not in ("on", "off", "auto"):
            raise ValueError("train.activation_constraints must be 'on', 'off' or 'auto', got "
                             f"{constraints!r}")
        self.constrain_activations = constraints == "on" or (
            constraints == "auto" and self.mesh.shape["tensor"] > 1)
        self.rules = sharding.rules_for(config.sharding)
        boxed = tasks.abstract_params(self.task)["params"]
        abstract = nn.meta.unbox(boxed)
        param_sh = sharding.logical_shardings(boxed, self.mesh, self.rules)
        frozen = config.optim.frozen
        if frozen is None:
            frozen = tasks.FROZEN_BY_STAGE[config.stage]
        self.optim_cfg = ml_collections.ConfigDict(dict(config.optim, frozen=frozen))
        self.trainable = trainable_mask(abstract, frozen)
        self.tx = make_optimizer(self.optim_cfg, abstract, config.train.steps)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        by_path = {path_str(p): s for p, s in jax.tree_util.tree_leaves_with_path(param_sh)}
        opt_abstract = jax.eval_shape(self.tx.init, abstract)
        self.state_shardings = {"step": replicated, "params": param_sh,
                                "opt_state": _match_suffix(opt_abstract, by_path, replicated)}
        self.abstract_state = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract,
             "opt_state": opt_abstract}, self.state_shardings)
        self.batch_sh = {k: sharding.batch_sharding(self.mesh, self.rules, x.ndim)
                         for k, x in self.task.init_batch(1).items()}
        self._step = jax.jit(self._train_step, in_shardings=(self.state_shardings, self.batch_sh),
                             out_shardings=(self.state_shardings, None), donate_argnums=0)

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
        params = jax.jit(lambda r: nn.meta.unbox(tasks.init_params(self.task, r)["params"]),
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


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) a training run; returns the run summary."""
    if "://" not in workdir:  # gs:// (pods): orbax and the writers make what they need
        os.makedirs(workdir, exist_ok=True)
    feed = data_feed.make(config)
    trainer = Trainer(config, workdir, vocab_size=feed.vocab_size)
    tcfg = config.train
    ckpts = ckpt_lib.Checkpoints(workdir, keep=tcfg.keep_ckpts, async_save=tcfg.async_ckpt)
    it = feed.iterator()
    start = ckpts.latest_step()
    if start is None:
        state = trainer.init_state()
        start = 0
    else:
        log.info("resuming from step %d in %s", start, ckpts.directory)
        state = ckpts.restore(start, trainer.abstract_state, it)
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False)
    if start == 0:
        writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})
    config_json = config.to_dict()
    metrics: dict[str, float] = {}
    t0, first = time.time(), start + 1

    def finish(step: int, m: dict) -> None:
        """Checks, logs and checkpoints a dispatched step (blocks until it is done)."""
        nonlocal metrics
        loss = float(m["loss"])
        if not np.isfinite(loss):
            ckpts.wait()
            raise NonFiniteLossError(
                f"loss is {loss} at step {step}; stopped without saving. Last good checkpoint: "
                f"step {ckpts.latest_step()} in {ckpts.directory}")
        if step % tcfg.log_every == 0 or step == tcfg.steps:
            metrics = {k: float(v) for k, v in m.items()}
            dt = time.time() - t0
            rate = (step - first + 1) / dt
            metrics.update(steps_per_sec=rate, examples_per_sec=rate * tcfg.batch_size)
            writer.write_scalars(step, metrics)
            log.info("step %d/%d loss %.4f  %.2f steps/s  %.1f ex/s  ETA %.0fs", step, tcfg.steps,
                     loss, rate, rate * tcfg.batch_size, (tcfg.steps - step) / max(rate, 1e-9))
        if step % tcfg.ckpt_every == 0 or step == tcfg.steps:
            ckpts.save(step, state, it, config_json)

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
        ckpt_lib.write_json_atomic(os.path.join(workdir, "run_summary.json"), summary)
    ckpts.close()
    return summary
