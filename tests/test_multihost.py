"""Several hosts simulated by local processes (as on a multi-host pod): 2 JAX processes x 2 CPU
devices each, joined by `jax.distributed.initialize` on a loopback port (gloo collectives),
each running `vlm_jax.train.trainer.train` on a tiny VLM, as `python -m vlm_jax.main
--multihost` does on every worker of a pod.

Checked: both processes end with the same parameter fingerprint, the shared checkpoint holds
the same parameters, and they equal (float tolerance) a single-process run on 4 devices fed the
same global batches. A single process reading the data itself would NOT see the same batches:
grain's `ShardByJaxProcess` gives process i the i-th contiguous half of the records and each
process shuffles and batches its half (batch B/2), so a global batch is [B/2 rows of shard 0;
B/2 rows of shard 1], which one unsharded loader of batch B never yields. The reference
therefore reads the two shards itself (`shard_index`/`shard_count`) and concatenates them.

This file is also the worker: `python tests/test_multihost.py train CONFIG_JSON WORKDIR OUT_JSON`
(or `collective OUT_JSON`), with the environment `_run_processes` sets.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, BATCH = 4, 8


def _worker(config_json: str, workdir: str, out_json: str) -> None:
    """One simulated host: join the others (vlm_jax.main's --multihost path), train, report."""
    import jax
    import ml_collections

    from vlm_jax.main import init_distributed
    from vlm_jax.train import trainer

    init_distributed()
    with open(config_json) as f:
        config = ml_collections.ConfigDict(json.load(f))
    summary = trainer.train(config, workdir)
    with open(out_json, "w") as f:
        json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
                   "devices": jax.device_count(), "local_devices": jax.local_device_count(),
                   "fingerprint": summary["param_fingerprint"],
                   "loss": summary["final_metrics"]["loss"]}, f)


def _collective_worker(out_json: str) -> None:
    """One simulated host: join, build a global fsdp-sharded array from this host's rows, sum it
    and fingerprint it (an all-gather across hosts)."""
    import jax
    import jax.numpy as jnp

    from vlm_jax import sharding
    from vlm_jax.main import init_distributed
    from vlm_jax.train.checkpoint import fingerprint

    init_distributed()
    mesh = sharding.make_mesh({"fsdp": -1})
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    rows = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    local = rows[4 * jax.process_index():4 * (jax.process_index() + 1)]
    x = jax.make_array_from_process_local_data(spec, local)
    total = jax.jit(jnp.sum, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))(x)
    with open(out_json, "w") as f:
        json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
                   "devices": jax.device_count(), "addressable": x.is_fully_addressable,
                   "sum": float(total), "fingerprint": fingerprint({"x": x})}, f)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_config(data_dir: str, sharding: str):
    sys.path.insert(0, os.path.join(REPO, "configs"))
    import tiny_vlm

    c = tiny_vlm.get_config(f"llm=s,V=4,res=32,batch={BATCH},steps={STEPS},compressor=avgpool,"
                            f"data_dir={data_dir}")
    c.model.vision.depth = c.model.llm.depth = 1  # compile time is most of this test
    c.model.compressor.feature_layers = (1,)
    c.data.synthetic.num_train = 64
    c.data.synthetic.num_validation = 8
    c.data.synthetic.num_test = 8
    c.train.log_every = 1
    c.train.ckpt_every = 2
    c.train.async_ckpt = False
    c.mesh = {"data": 4} if sharding == "dp" else {"fsdp": 4}
    c.sharding = sharding
    return c


def _run_processes(args: list[str], tmp, n: int = 2, timeout: float = 240) -> list[dict]:
    """Runs this file as `n` simulated hosts (`args` + an output path each); their outputs."""
    port = _free_port()
    procs, outs = [], []
    for i in range(n):
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                   XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
                   VLM_JAX_NUM_PROCESSES=str(n), VLM_JAX_PROCESS_ID=str(i),
                   JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
        outs.append(str(tmp / f"out{i}.json"))
        log = open(tmp / f"log{i}.txt", "w")
        procs.append((subprocess.Popen([sys.executable, __file__, *args, outs[-1]],
                                       cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT),
                      log))
    deadline = time.time() + timeout
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
        pytest.fail(f"simulated hosts did not finish in {timeout} s; logs in {tmp}")
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    for i, (proc, _) in enumerate(procs):
        assert proc.returncode == 0, (tmp / f"log{i}.txt").read_text()[-3000:]
    result = []
    for p in outs:
        with open(p) as f:
            result.append(json.load(f))
    return result


def _reference_run(config, workdir: str, shards: int = 2):
    """(trainer, initial params, final params) of one process on 4 devices whose global batch
    is the `shards` process-local batches stacked."""
    from vlm_jax import data as data_lib
    from vlm_jax import models
    from vlm_jax.train import data_feed
    from vlm_jax.train.trainer import Trainer

    cfg = models.from_dict(config.model)
    feeds = [data_feed.Feed(data_lib.make_loader(
        config.data, split="train", batch_size=BATCH // shards,
        num_visual_tokens=cfg.num_visual_tokens, image_size=cfg.vision.image_size,
        normalization="clip", image_token_id=cfg.image_token_id, seed=config.train.seed,
        shard_index=i, shard_count=shards), config.stage) for i in range(shards)]
    trainer = Trainer(config, workdir, vocab_size=feeds[0].vocab_size)
    state, its = trainer.init_state(), [f.iterator() for f in feeds]
    import jax
    init = jax.device_get(state["params"])
    for _ in range(STEPS):
        parts = [f.arrays(next(it)) for f, it in zip(feeds, its)]
        state, _ = trainer.step(state, {k: np.concatenate([p[k] for p in parts])
                                        for k in trainer.task.batch_keys})
    return trainer, init, jax.device_get(state["params"])


def test_two_hosts_share_a_sharded_array(tmp_path):
    """`--multihost` init from the environment, a cross-host reduction, and the fingerprint of an
    array spanning both hosts (all-gathered) equal to that of the whole array."""
    from vlm_jax.train.checkpoint import fingerprint

    outs = _run_processes(["collective"], tmp_path, timeout=120)
    rows = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    assert sorted(o["process_index"] for o in outs) == [0, 1]
    for o in outs:
        assert o["process_count"] == 2 and o["devices"] == 4 and not o["addressable"]
        assert o["sum"] == rows.sum()
        assert o["fingerprint"] == fingerprint({"x": rows})


@pytest.mark.slow  # ~60-90 s: two hosts and a reference each compile the train step
@pytest.mark.parametrize("sharding,init_from", [("dp", False), ("fsdp", False), ("fsdp", True)])
def test_two_hosts_agree_with_each_other_and_one_host(tmp_path, sharding, init_from):
    """init_from: the hosts start from a 1-device run's checkpoint (read whole on every host,
    then sharded), as a stage-2 run starts from stage 1."""
    import jax
    import ml_collections

    from vlm_jax import data as data_lib
    from vlm_jax.train import checkpoint as ckpt_lib
    from vlm_jax.train.trainer import train

    config = _tiny_config(str(tmp_path / "tfds"), sharding)
    data_lib.prepare_synthetic(config.data)  # once, before the hosts start reading it
    if init_from:
        src = ml_collections.ConfigDict(config.to_dict())
        src.train.steps, src.mesh, src.sharding = 1, {"data": 1}, "dp"
        train(src, str(tmp_path / "src"))
        config.init_from = ml_collections.ConfigDict(dict(workdir=str(tmp_path / "src"),
                                                          map=(("", ""),)))
    workdir, path = str(tmp_path / "run"), str(tmp_path / "config.json")
    with open(path, "w") as f:
        f.write(config.to_json())
    outs = _run_processes(["train", path, workdir], tmp_path)
    assert sorted(o["process_index"] for o in outs) == [0, 1]
    assert all(o["process_count"] == 2 and o["devices"] == 4 and o["local_devices"] == 2
               for o in outs)
    assert outs[0]["fingerprint"] == outs[1]["fingerprint"]
    assert np.isfinite(outs[0]["loss"])
    with open(os.path.join(workdir, "run_summary.json")) as f:
        summary = json.load(f)  # written by process 0 only
    assert summary["final_step"] == STEPS
    assert summary["param_fingerprint"] == outs[0]["fingerprint"]

    trainer, init, ref = _reference_run(config, str(tmp_path / "ref"))
    # The checkpoint both hosts wrote their parts of, restored on this one process's 4 devices.
    step, state, _ = ckpt_lib.Checkpoints(workdir, read_only=True).restore_latest(
        trainer.abstract_state)
    assert step == STEPS
    saved = state["params"]
    assert ckpt_lib.fingerprint(saved) == outs[0]["fingerprint"]
    flat_ref = dict(jax.tree_util.tree_leaves_with_path(ref))
    flat_init = dict(jax.tree_util.tree_leaves_with_path(init))
    flat = jax.tree_util.tree_leaves_with_path(jax.device_get(saved))
    assert len(flat) == len(flat_ref)
    for path, a in flat:
        np.testing.assert_allclose(a, flat_ref[path], rtol=2e-4, atol=2e-5,
                                   err_msg=jax.tree_util.keystr(path))
    # ... and training moved them (the comparison above is not init == init).
    moved = sum(not np.allclose(flat_init[p], a) for p, a in flat)
    assert moved > len(flat) // 2, (moved, len(flat))


if __name__ == "__main__":
    {"train": _worker, "collective": _collective_worker}[sys.argv[1]](*sys.argv[2:])
