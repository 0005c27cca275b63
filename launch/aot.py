"""Proves a training config fits a TPU topology: ahead-of-time compilation on a CPU host.

    python launch/aot.py --config=configs/flagship_llava7b.py:V=16 --topology=v5e:16x16 \\
        [--config.train.batch_size=256] [--batch_size=N] [--json_out=FILE]

Builds the Trainer's jitted train step for the config on a mesh of the topology's devices
(`jax.experimental.topologies`; needs libtpu, no TPU), lowers it with abstract state and batch
(`jax.ShapeDtypeStruct`s carrying the shardings: no parameter is materialised and no data is
read), compiles it, and prints per-chip memory (`compiled.memory_analysis()`) against the
chip's HBM, XLA's cost estimate (`compiled.cost_analysis()`: per-chip FLOPs and bytes), the
analytic model FLOPs (vlm_jax.models.flops) and roofline bounds, then one JSON line. Exits 1
when the step does not fit. Import `compile_train_step` / `report` to do the same in Python.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for TPU; run nothing
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes may hold libtpu
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

GiB = 1024**3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python launch/aot.py` from a checkout without `pip install -e .`
    sys.path.insert(0, REPO)


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_bytes: int  # per chip
    peak_bf16_flops: float  # per chip, per second
    hbm_bytes_per_s: float


# Public per-chip figures (cloud.google.com/tpu/docs/system-architecture-tpu-vm), keyed by
# `device.device_kind`.
CHIPS = {
    "TPU v4": Chip(32 * GiB, 275e12, 1228e9),
    "TPU v5 lite": Chip(16 * GiB, 197e12, 819e9),  # v5e
    "TPU v5": Chip(95 * GiB, 459e12, 2765e9),  # v5p
    "TPU v6 lite": Chip(32 * GiB, 918e12, 1640e9),  # v6e (Trillium)
}


def topology_devices(topology: str) -> list:
    """The devices of a TPU topology such as "v5e:2x2", "v5e:16x16", "v5p:4x4x4"."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise RuntimeError("AOT compilation for TPU needs libtpu on this host: pip install "
                           f"'jax[tpu]=={jax.__version__}' (or requirements-test.txt)") from e
    from jax.experimental import topologies
    try:
        return list(topologies.get_topology_desc(topology, "tpu").devices)
    except Exception as e:
        raise ValueError(f"bad TPU topology {topology!r} (expected e.g. v5e:2x2, v5e:16x16, "
                         f"v5p:4x4x4, v6e:8x8): {e}") from e


def _check_divisible(tree: Any, where: str) -> None:
    """Raises naming the first array (path, shape, spec) whose sharding does not divide it."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        mesh, spec = leaf.sharding.mesh.shape, leaf.sharding.spec
        for dim, (size, axes) in enumerate(zip(leaf.shape, tuple(spec))):
            axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
            n = math.prod(mesh[a] for a in axes)
            if size % n:
                raise ValueError(
                    f"{where}{jax.tree_util.keystr(path)}: shape {tuple(leaf.shape)} cannot be "
                    f"sharded as {spec} on mesh {dict(mesh)}: axis {dim} (size {size}) is not "
                    f"divisible by {' x '.join(f'{a}={mesh[a]}' for a in axes)}")


def abstract_batch(trainer, batch_size: int) -> dict:
    """`{key: ShapeDtypeStruct([B, ...], sharding)}` of the task's batch; nothing is allocated."""
    shapes = jax.eval_shape(lambda: trainer.task.init_batch(batch_size))
    return {k: jax.ShapeDtypeStruct(shapes[k].shape, shapes[k].dtype, sharding=trainer.batch_sh[k])
            for k in trainer.task.batch_keys}


def compile_train_step(config: ml_collections.ConfigDict, topology: str,
                       batch_size: int | None = None):
    """(trainer, compiled step, timings) of `config`'s train step on `topology`'s devices,
    lowered as `Trainer.step` runs it (`train.activation_constraints` as configured)."""
    from vlm_jax.train.trainer import Trainer

    devices = topology_devices(topology)
    trainer = Trainer(config, workdir="", devices=devices)
    batch = abstract_batch(trainer, batch_size or config.train.batch_size)
    _check_divisible(trainer.abstract_state["params"], "params")
    _check_divisible(trainer.abstract_state, "state")
    _check_divisible(batch, "batch")
    t0 = time.perf_counter()
    lowered = trainer.lower(trainer.abstract_state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return trainer, compiled, {"lower_s": t1 - t0, "compile_s": t2 - t1,
                               "compile_effort": float(trainer.config.train.get("compile_effort", 0.0))}


def _nbytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
               for x in jax.tree_util.tree_leaves(tree))


def vision_trains(trainer) -> bool:
    """Whether any vision-tower parameter is trainable in `trainer`'s step."""
    return any(t for p, t in jax.tree_util.tree_leaves_with_path(trainer.trainable)
               if jax.tree_util.keystr(p).startswith("['vision_tower']"))


def model_flops_per_step(config: ml_collections.ConfigDict, model_cfg, tower_trains: bool,
                         batch_size: int) -> float:
    """Analytic training FLOPs of one step of `model_cfg` (a VLMConfig) at `config.data`'s text
    lengths (forward + backward; the vision tower forward only unless `tower_trains`), from
    vlm_jax.models.flops with logits at every position."""
    from vlm_jax.models.flops import vlm_flops
    cfg = model_cfg
    seq = cfg.num_visual_tokens + config.data.max_text_len
    fwd = vlm_flops(cfg, config.data.max_text_len, question_tokens=config.data.max_question_len)
    fwd["lm_head"] = 2.0 * seq * cfg.llm.width * cfg.llm.vocab_size  # every position's logits
    rest = sum(v for k, v in fwd.items() if k not in ("vision", "total", "decode"))
    return batch_size * (3.0 * rest + (3.0 if tower_trains else 1.0) * fwd["vision"])


def _cost(compiled) -> dict:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, list | tuple) else ca  # older jax: one dict per program
    out = {k: float(ca.get(k, 0.0)) for k in ("flops", "bytes accessed", "transcendentals")}
    if ca.get("optimal_seconds", 0) > 0:  # the TPU compiler's step-time estimate (it reports
        out["optimal_seconds"] = float(ca["optimal_seconds"])  # nonsense <= 0 on big programs)
    return out


def report(config: ml_collections.ConfigDict, topology: str, trainer, compiled,
           timings: dict | None = None, batch_size: int | None = None) -> dict:
    """Per-chip memory, XLA cost, analytic FLOPs and roofline bounds as one JSON-able dict."""
    batch_size = batch_size or config.train.batch_size
    devices = trainer.mesh.devices.flat
    kind = devices[0].device_kind
    chip = CHIPS.get(kind)
    coords = {tuple(getattr(d, "coords", (d.id,))) for d in devices}
    per_chip = len(trainer.mesh.devices.flat) // max(len(coords), 1)  # devices sharing a chip
    m = compiled.memory_analysis()
    mem = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
           "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes,
           "generated_code": m.generated_code_size_in_bytes}
    mem["total"] = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"] + \
        mem["generated_code"]
    mem["state"] = _nbytes(trainer.abstract_state)
    mem["hbm"] = chip.hbm_bytes // per_chip if chip else None
    cost = _cost(compiled)
    n_dev = trainer.mesh.devices.size
    model = None if config.stage == 0 else model_flops_per_step(  # stage 0: no VLM
        config, trainer.task.model_cfg, vision_trains(trainer), batch_size)
    out = {
        "topology": topology, "device_kind": kind, "devices": n_dev,
        "mesh": dict(trainer.mesh.shape), "sharding": config.sharding,
        "batch_size": batch_size, "memory_per_device": mem,
        "fits": None if mem["hbm"] is None else mem["total"] <= mem["hbm"],
        "hbm_fraction": None if mem["hbm"] is None else mem["total"] / mem["hbm"],
        "xla_cost_per_device": cost,
        "model_flops_per_step": model,
        "model_flops_per_device": None if model is None else model / n_dev,
        "params": int(sum(math.prod(x.shape) for x in
                          jax.tree_util.tree_leaves(trainer.abstract_state["params"]))),
        "trainable_params": int(sum(
            math.prod(x.shape) for x, t in zip(
                jax.tree_util.tree_leaves(trainer.abstract_state["params"]),
                jax.tree_util.tree_leaves(trainer.trainable)) if t)),
    }
    if chip:
        flops_dev = cost["flops"] * per_chip  # cost_analysis is per device
        t_compute = flops_dev / chip.peak_bf16_flops
        t_memory = cost["bytes accessed"] * per_chip / chip.hbm_bytes_per_s
        mfu = lambda t: None if model is None or not t else \
            model / n_dev * per_chip / (t * chip.peak_bf16_flops)
        out["roofline"] = {
            # XLA's FLOPs at peak and its bytes accessed at HBM bandwidth (lower bounds), XLA's
            # own step-time estimate; MFU there = model FLOPs / (time x peak).
            "compute_s": t_compute, "memory_s": t_memory,
            "xla_optimal_s": cost.get("optimal_seconds"),
            "mfu_at_xla_optimal_s": mfu(cost.get("optimal_seconds"))}
    if timings:
        out.update(timings)
    return out


def format_report(r: dict) -> str:
    """A human-readable block for `report`'s dict."""
    mem, cost = r["memory_per_device"], r["xla_cost_per_device"]
    g = lambda b: f"{b / GiB:9.3f} GiB" if b >= GiB / 10 else f"{b / 2**20:9.3f} MiB"
    lines = [f"AOT train step: {r['device_kind']} x {r['devices']} ({r['topology']}), mesh "
             f"{r['mesh']}, {r['sharding']}, global batch {r['batch_size']}",
             f"params {r['params'] / 1e6:,.1f} M ({r['trainable_params'] / 1e6:,.1f} M trainable)",
             "memory per device (memory_analysis):"]
    for k in ("argument", "output", "alias", "temp", "generated_code", "total", "state"):
        lines.append(f"  {k:15s}{g(mem[k])}")
    if mem["hbm"]:
        lines.append(f"  {'HBM':15s}{g(mem['hbm'])}   -> {100 * r['hbm_fraction']:.1f}% "
                     f"{'fits' if r['fits'] else 'DOES NOT FIT'}")
    lines.append(f"XLA cost per device: {cost['flops'] / 1e9:,.3f} GFLOPs, "
                 f"{cost['bytes accessed'] / GiB:,.3f} GiB accessed")
    if r["model_flops_per_device"]:
        lines.append(f"model FLOPs per device (analytic, no remat): "
                     f"{r['model_flops_per_device'] / 1e9:,.3f} GFLOPs "
                     f"(XLA / model = {cost['flops'] / r['model_flops_per_device']:.2f})")
    if "roofline" in r:
        rf = r["roofline"]
        pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"
        lines.append(f"step time bounds: XLA FLOPs at peak {rf['compute_s'] * 1e3:.1f} ms, XLA "
                     f"bytes at HBM bandwidth {rf['memory_s'] * 1e3:.1f} ms")
        if rf["xla_optimal_s"]:
            lines.append(f"XLA's optimal step time {rf['xla_optimal_s'] * 1e3:.1f} ms -> MFU "
                         f"{pct(rf['mfu_at_xla_optimal_s'])} (an estimate, not a measurement)")
    if "compile_s" in r:
        lines.append(f"lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s (XLA "
                     f"exec_time_optimization_effort {r.get('compile_effort', 0.0):g})")
    return "\n".join(lines)


def load_config(spec: str, overrides: list[str]) -> ml_collections.ConfigDict:
    """`configs/FILE.py[:ARG]` plus `--config.KEY=VALUE` overrides, as vlm_jax.main reads them."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "config", flag_values=fv)
    fv([sys.argv[0], f"--config={spec}", *overrides])
    return holder.value


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="configs/FILE.py[:ARG]")
    p.add_argument("--topology", required=True, help="e.g. v5e:2x2, v5e:16x16, v5p:4x4x4")
    p.add_argument("--batch_size", type=int, default=None, help="global batch (default: config)")
    p.add_argument("--json_out", default=None, help="also write the report JSON here")
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not re.match(r"^--config\.[\w.]+=", a)]
    if bad:
        p.error(f"unknown arguments {bad} (overrides look like --config.KEY=VALUE)")
    config = load_config(args.config, rest)
    trainer, compiled, timings = compile_train_step(config, args.topology, args.batch_size)
    r = report(config, args.topology, trainer, compiled, timings, args.batch_size)
    r.update(config=args.config)
    print(format_report(r))
    print(json.dumps(r, sort_keys=True))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(r, f, indent=2, sort_keys=True)
    return 0 if r["fits"] is not False else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
