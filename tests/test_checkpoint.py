"""Checkpoint integrity: checksums verified on restore, fallback to the newest intact step
(the damaged one set aside, never deleted), read-only readers, errors naming step and file."""

import glob
import logging
import os
import re

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.train import checkpoint as ckpt_lib


def _loader():
    return grain.DataLoader(data_source=list(range(64)), worker_count=0,
                            sampler=grain.IndexSampler(64, grain.NoSharding(), shuffle=True,
                                                       seed=0),
                            operations=[grain.Batch(2)])


def _state(step: int) -> dict:
    rng = np.random.default_rng(step)  # random bits: incompressible, stored as raw bytes
    return {"step": jnp.int32(step),
            "params": {"w": jnp.asarray(rng.integers(-2**31, 2**31, (64, 64), np.int32)),
                       "b": jnp.asarray(rng.standard_normal(8), jnp.bfloat16)}}


def _abstract(state):
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev),
                                  state)


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with checkpoints at steps 1 and 2 (state, iterator, config, record)."""
    ckpts = ckpt_lib.Checkpoints(str(tmp_path), async_save=False)
    it = iter(_loader())
    for step in (1, 2):
        next(it)
        ckpts.save(step, _state(step), it, {"model": {"width": 4}}, record={"loss": 1.0 / step})
    ckpts.close()
    return str(tmp_path)


def _snapshot(path: str) -> dict:
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            out[p] = (os.path.getmtime(p), os.path.getsize(p) if os.path.isfile(p) else None)
    return out


def _restore(run_dir: str, read_only=False):
    it = iter(_loader())
    step, state, record = ckpt_lib.Checkpoints(run_dir, read_only=read_only).restore_latest(
        _abstract(_state(0)), it)
    return step, state, it


def _assert_fell_back(run_dir, caplog, culprit: str):
    with caplog.at_level(logging.WARNING, logger="vlm_jax"):
        step, state, it = _restore(run_dir)
    assert step == 1
    np.testing.assert_array_equal(state["params"]["w"], _state(1)["params"]["w"])
    ref = iter(_loader())
    next(ref)
    np.testing.assert_array_equal(next(it), next(ref))  # the iterator of step 1, too
    text = caplog.text
    assert "checkpoint step 2" in text and culprit in text and "2.corrupt" in text, text
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    assert sorted(os.listdir(ckpt_dir)) == ["1", "2.corrupt"]  # set aside, not deleted


def test_bit_flip_is_detected_and_restore_falls_back(run_dir, caplog):
    raw = np.asarray(_state(2)["params"]["w"]).tobytes()[8000:8032]
    hits = [f for f in glob.glob(os.path.join(run_dir, "checkpoints/2/state/**/d/*"),
                                 recursive=True) if raw in open(f, "rb").read()]
    assert len(hits) == 1, "the weights should be stored as raw bytes"
    data = bytearray(open(hits[0], "rb").read())
    data[data.find(raw) + 5] ^= 0x10  # one bit of one weight
    open(hits[0], "wb").write(bytes(data))
    _assert_fell_back(run_dir, caplog, "fails its checksum at params/w")


def test_truncated_data_file_falls_back(run_dir, caplog):
    files = glob.glob(os.path.join(run_dir, "checkpoints/2/state/**/d/*"), recursive=True)
    big = max(files, key=os.path.getsize)
    with open(big, "r+b") as f:
        f.truncate(os.path.getsize(big) // 2)
    _assert_fell_back(run_dir, caplog, os.path.join(run_dir, "checkpoints", "2", "state"))
    # the array whose bytes are missing is named; no tensorstore spec dump
    assert re.search(r'cannot read \S+: \w+: \w+: Error reading "params\.[wb]', caplog.text), \
        caplog.text
    assert "TensorStore(" not in caplog.text


def test_deleted_metadata_names_step_and_file(run_dir, caplog):
    os.remove(os.path.join(run_dir, "checkpoints/2/state/_METADATA"))
    _assert_fell_back(run_dir, caplog, os.path.join(run_dir, "checkpoints", "2", "state"))
    assert "absl" not in {r.name for r in caplog.records}, caplog.text  # no registry advice


def test_emptied_iterator_state_names_step_and_file(run_dir, caplog):
    (path,) = glob.glob(os.path.join(run_dir, "checkpoints/2/data/*.json"))
    open(path, "w").close()
    _assert_fell_back(run_dir, caplog, os.path.join(run_dir, "checkpoints", "2", "data"))


def test_edited_iterator_state_fails_its_checksum(run_dir, caplog):
    (path,) = glob.glob(os.path.join(run_dir, "checkpoints/2/data/*.json"))
    text = open(path).read()
    edited = re.sub(r'("last_seen_indices": \{\s*"0": )(\d+)', lambda m: m[1] + str(int(m[2]) + 2),
                    text)
    assert edited != text
    open(path, "w").write(edited)
    _assert_fell_back(run_dir, caplog, "iterator state")


def test_missing_record_is_restored_with_a_warning_naming_it(run_dir, caplog):
    """No record/ (a checkpoint of an older version, or removed): restored, and said so."""
    import shutil
    shutil.rmtree(os.path.join(run_dir, "checkpoints/2/record"))
    with caplog.at_level(logging.WARNING, logger="vlm_jax"):
        step, state, _ = _restore(run_dir)
    assert step == 2
    np.testing.assert_array_equal(state["params"]["w"], _state(2)["params"]["w"])
    record = os.path.join(run_dir, "checkpoints", "2", "record")
    assert f"checkpoint step 2 has no {record}" in caplog.text and "unverified" in caplog.text


def test_no_intact_checkpoint_is_an_error_listing_each(run_dir):
    for step in (1, 2):
        os.remove(os.path.join(run_dir, f"checkpoints/{step}/state/_METADATA"))
    with pytest.raises(ckpt_lib.CheckpointError, match="step 2.*step 1"):
        _restore(run_dir)
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["1.corrupt", "2.corrupt"]


def test_readers_change_nothing(run_dir, tmp_path, caplog):
    """load_run and read-only restores never create, delete or rename: not the in-progress
    temporary directory of a training run, not a damaged step, not a missing directory."""
    tmp_dir = os.path.join(run_dir, "checkpoints", "3.orbax-checkpoint-tmp-99")
    os.makedirs(os.path.join(tmp_dir, "state"))
    os.remove(os.path.join(run_dir, "checkpoints/2/state/_METADATA"))
    before = _snapshot(run_dir)
    with caplog.at_level(logging.WARNING):
        config, params = ckpt_lib.load_run(run_dir)
        step, _, _ = _restore(run_dir, read_only=True)
    # quiet: no orbax warnings that read-only means read-only (the demo printed two)
    assert "absl" not in {r.name for r in caplog.records}, caplog.text
    assert step == 1 and config.to_dict() == {"model": {"width": 4}}
    np.testing.assert_array_equal(params["w"], _state(1)["params"]["w"])
    assert "checkpoint step 2" in caplog.text and "left in place" in caplog.text
    assert _snapshot(run_dir) == before
    missing = str(tmp_path / "typo")
    with pytest.raises(FileNotFoundError, match="typo.*not a training run"):
        ckpt_lib.load_run(missing)
    assert not os.path.exists(missing)


def test_model_mismatch_names_the_first_differing_parameter(run_dir):
    other = _state(0)
    other["params"]["w"] = jnp.zeros((64, 32), jnp.int32)
    with pytest.raises(ValueError, match=r"params/w is int32\[64, 64\] in the "
                                         r"checkpoint, the model wants int32\[64, 32\]"):
        ckpt_lib.Checkpoints(run_dir).restore_latest(_abstract(other))
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["1", "2"]


def test_checksum_sees_every_bit_and_ignores_sharding():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 16), np.float32))
    base = ckpt_lib.state_checksums({"x": x})["x"]
    bits = np.asarray(x).view(np.uint32).copy()
    for i, bit in ((0, 0), (37, 31), (127, 16)):
        flipped = bits.copy()
        flipped.flat[i] ^= np.uint32(1 << bit)
        assert ckpt_lib.state_checksums({"x": jnp.asarray(flipped.view(np.float32))})["x"] != base
    swapped = np.asarray(x).copy()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]
    assert ckpt_lib.state_checksums({"x": jnp.asarray(swapped)})["x"] != base
    mesh = jax.make_mesh((len(jax.devices()),), ("d",))
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
    assert ckpt_lib.state_checksums({"x": sharded})["x"] == base


def test_pruning_suite_looks_at_a_run_without_changing_it(run_dir):
    """The pruning benchmark reads its model's run read-only: a training run's in-progress
    temporary directory survives its look (a writer's manager would delete it)."""
    from vlm_jax.bench import pruning_suite
    os.makedirs(os.path.join(run_dir, "checkpoints", "3.orbax-checkpoint-tmp-99", "state"))
    before = _snapshot(run_dir)
    pruning_suite.ensure_trained(run_dir, as_is=True)
    assert _snapshot(run_dir) == before
    assert pruning_suite.trained_step(run_dir) == 2
    assert _snapshot(run_dir) == before


def test_reader_looks_while_the_writer_removes_old_steps(tmp_path):
    """orbax lists the steps, then reads each one's metadata; a training run keeping one step
    removes them in between. Readers retry that look instead of failing with the
    FileNotFoundError / NotADirectoryError of a step that was just removed."""
    import threading
    writer = ckpt_lib.Checkpoints(str(tmp_path), keep=1, async_save=False)
    writer.save(0, {"params": {"x": jnp.zeros(4)}})
    stop = threading.Event()

    def train():
        step = 1
        while not stop.is_set():
            writer.save(step, {"params": {"x": jnp.full(4, step)}})
            step += 1

    thread = threading.Thread(target=train)
    thread.start()
    try:  # about 2% of these looks raced a removal before the retry
        for look in range(400):
            assert ckpt_lib.Checkpoints(str(tmp_path), read_only=True).latest_step() is not None
            if look % 20 == 0:  # what eval / demo / pruning read
                assert ckpt_lib.load_params(str(tmp_path))["x"].shape == (4,)
    finally:
        stop.set()
        thread.join()
    writer.close()
