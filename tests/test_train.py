"""The trainer: resume after SIGKILL, device-count invariance, NaN stop, config errors."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from vlm_jax.train import checkpoint as ckpt_lib
from vlm_jax.train import trainer as trainer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import tiny_vlm  # noqa: E402

ARG = "llm=s,V=4,res=32,batch=8,steps=12,compressor=quecc"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(data_dir: str, **train) -> ml_collections.ConfigDict:
    c = tiny_vlm.get_config(ARG + f",data_dir={data_dir}")
    c.data.synthetic.num_train = 96
    c.data.synthetic.num_validation = 16
    c.data.synthetic.num_test = 16
    c.train.log_every = 1
    c.train.ckpt_every = 3
    c.train.async_ckpt = False
    c.train.update(train)
    return c


def _overrides(c: ml_collections.ConfigDict, data_dir: str) -> list[str]:
    return [f"--config.data.data_dir={data_dir}", "--config.data.synthetic.num_train=96",
            "--config.data.synthetic.num_validation=16", "--config.data.synthetic.num_test=16",
            "--config.train.log_every=1", "--config.train.ckpt_every=3", "--config.mode=train"]


def _main_cmd(workdir: str, data_dir: str) -> list[str]:
    return [sys.executable, "-m", "vlm_jax.main", f"--config=configs/tiny_vlm.py:{ARG}",
            f"--workdir={workdir}"] + _overrides(None, data_dir)


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)  # one device, as a user would run it
    return env


def _fingerprint(workdir: str) -> str:
    with open(os.path.join(workdir, "run_summary.json")) as f:
        return json.load(f)["param_fingerprint"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir):
    """An uninterrupted run of `_main_cmd` (12 steps, checkpoints every 3)."""
    ref_dir = str(tmp_path_factory.mktemp("ref") / "run")
    proc = subprocess.run(_main_cmd(ref_dir, data_dir), check=True, cwd=REPO, env=_env(),
                          capture_output=True, text=True)
    with open(os.path.join(os.path.dirname(ref_dir), "main.log"), "w") as f:
        f.write(proc.stderr)
    return ref_dir


def test_main_logs_loss_progress_and_eta(reference_run):
    """Every log_every (1) steps: the loss, and clu's progress note (rate, share done, ETA)."""
    with open(os.path.join(os.path.dirname(reference_run), "main.log")) as f:
        log = f.read()
    assert len(re.findall(r"step \d+/12 loss \d+\.\d+", log)) == 12, log[-2000:]
    notes = re.findall(r"work unit notes: [\d.]+ steps/s, [\d.]+% \((\d+)/12\), ETA", log)
    assert [int(n) for n in notes] == list(range(1, 13)), log[-2000:]


def test_sigkill_resume_matches_uninterrupted_run(tmp_path, data_dir, reference_run):
    ref_dir, cut_dir = reference_run, str(tmp_path / "cut")
    # Start the same run, SIGKILL it once a checkpoint exists and training has moved on.
    proc = subprocess.Popen(_main_cmd(cut_dir, data_dir), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = os.path.join(cut_dir, "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline:
        steps = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
        if any(int(s) >= 6 for s in steps) or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(cut_dir, "run_summary.json")), "killed too late"
    # A half-written checkpoint left by a kill is never taken for a good one.
    os.makedirs(os.path.join(ckpt_dir, "99.orbax-checkpoint-tmp-1234", "state"), exist_ok=True)
    assert ckpt_lib.Checkpoints(cut_dir).latest_step() < 12
    subprocess.run(_main_cmd(cut_dir, data_dir), check=True, cwd=REPO, env=_env(),
                   capture_output=True)
    assert _fingerprint(cut_dir) == _fingerprint(ref_dir)


def test_reader_polling_a_training_run_leaves_it_intact(tmp_path, data_dir, reference_run):
    """Eval / demo / pruning open runs read-only: polled while it trains (checkpoints every
    step, asynchronous), the run finishes with the uninterrupted run's parameters."""
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen(_main_cmd(workdir, data_dir) + ["--config.train.ckpt_every=1"],
                            cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    loads = 0
    while proc.poll() is None:
        try:
            ckpt_lib.Checkpoints(workdir, read_only=True).latest_step()
            ckpt_lib.load_run(workdir)
            loads += 1
        except FileNotFoundError as e:  # nothing saved yet (not a step removed meanwhile)
            assert re.search("not a training run|no complete checkpoint", str(e)), e
            time.sleep(0.01)
        except ckpt_lib.CheckpointError:  # every step it saw was removed by the run meanwhile
            pass
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    assert loads > 0
    assert _fingerprint(workdir) == _fingerprint(reference_run)


def test_damaged_newest_checkpoint_is_set_aside_and_the_run_redone(tmp_path, data_dir,
                                                                   reference_run):
    """One flipped bit in the newest checkpoint of a finished run: the rerun says so, sets
    the step aside, resumes from the one before and ends with the uninterrupted parameters."""
    workdir = str(tmp_path / "run")
    shutil.copytree(reference_run, workdir)
    os.remove(os.path.join(workdir, "run_summary.json"))
    data = glob.glob(os.path.join(workdir, "checkpoints/12/state/**/d/*"), recursive=True)
    big = max(data, key=os.path.getsize)
    blob = bytearray(open(big, "rb").read())
    blob[len(blob) // 2] ^= 0x04
    open(big, "wb").write(bytes(blob))
    proc = subprocess.run(_main_cmd(workdir, data_dir), cwd=REPO, env=_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint step 12" in proc.stderr and "12.corrupt" in proc.stderr, proc.stderr[-3000:]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "12.corrupt"))
    assert _fingerprint(workdir) == _fingerprint(reference_run)


def test_rerun_of_a_finished_run_keeps_its_results(tmp_path, data_dir, reference_run):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference_run, workdir)
    with open(os.path.join(workdir, "run_summary.json")) as f:
        before = json.load(f)
    assert np.isfinite(before["final_metrics"]["loss"])
    summary = trainer_lib.train(tiny_config(data_dir), workdir)
    with open(os.path.join(workdir, "run_summary.json")) as f:
        assert json.load(f) == before == summary


def test_resume_with_a_changed_config_lists_the_changes(tmp_path, data_dir, reference_run):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference_run, workdir)
    c = tiny_config(data_dir, batch_size=4, steps=15)
    c.optim.lr = 0.5
    with pytest.raises(ValueError, match=r"Changed: optim\.lr: .* -> 0\.5; train\.batch_size: 8 "
                                         r"-> 4; train\.steps: 12 -> 15\. .*allow_config_change"):
        trainer_lib.train(c, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "9"]


def _gradient_is_zero(name: str) -> bool:
    """Key biases of attention without rotary positions (vision tower, compressors): softmax
    ignores a logit shift shared by all keys, so their gradient is float noise, which Adam
    scales up to full-size steps that differ with the reduction order."""
    return "language_model" not in name and "['bias']" in name and (
        "['k_proj']" in name or "['key']" in name)


def test_one_vs_eight_devices_give_equal_parameters(tmp_path, data_dir):
    """The same steps on 1 device and on 8 (dp and fsdp presets) give equal parameters."""
    from vlm_jax.train.checkpoint import load_run
    assert len(jax.devices()) == 8
    params = {}
    for name, mesh, preset in (("one", {"data": 1}, "dp"), ("dp8", {"data": -1}, "dp"),
                               ("fsdp8", {"fsdp": -1}, "fsdp")):
        c = tiny_config(data_dir, steps=4)
        c.mesh, c.sharding = mesh, preset
        trainer_lib.train(c, str(tmp_path / name))
        params[name] = load_run(str(tmp_path / name))[1]
    flat_one = jax.tree_util.tree_leaves_with_path(params["one"])
    for other in ("dp8", "fsdp8"):
        flat = dict(jax.tree_util.tree_leaves_with_path(params[other]))
        for path, a in flat_one:
            name = jax.tree_util.keystr(path)
            if _gradient_is_zero(name):
                continue
            np.testing.assert_allclose(a, flat[path], rtol=2e-4, atol=2e-5,
                                       err_msg=f"{other}: {jax.tree_util.keystr(path)}")


def test_optimizer_state_is_sharded_like_its_parameters(data_dir):
    """On a 4-device fsdp mesh every Adam mu / nu leaf (and, with accumulation, every
    accumulated gradient) is placed as the parameter it belongs to, lr groups included."""
    c = tiny_config(data_dir)
    c.mesh, c.sharding = {"fsdp": 4}, "fsdp"
    c.optim.update(grad_accum=2, lr_groups=((r"vision_tower", 0.1),))
    trainer = trainer_lib.Trainer(c, "", vocab_size=64)
    assert trainer.mesh.devices.size == 4
    params = {jax.tree_util.keystr(p): s for p, s in
              jax.tree_util.tree_leaves_with_path(trainer.state_shardings["params"])}
    checked = {"mu": set(), "nu": set(), "acc_grads": set()}
    state = trainer.init_state()
    for path, leaf in jax.tree_util.tree_leaves_with_path(state["opt_state"]):
        names = [getattr(k, "name", None) for k in path]
        slot = next((n for n in checked if n in names), None)
        if slot is None:
            assert leaf.sharding.is_fully_replicated, jax.tree_util.keystr(path)
            continue
        param = jax.tree_util.keystr(path[names.index(slot) + 1:])
        assert leaf.sharding.spec == params[param].spec, (jax.tree_util.keystr(path),
                                                          leaf.sharding.spec, params[param].spec)
        checked[slot].add(param)
    assert all(found == set(params) for found in checked.values()), {
        k: len(v) for k, v in checked.items()}
    assert sum("fsdp" in s.spec for s in params.values()) > 10  # the check is not vacuous


def test_train_step_applies_activation_sharding_constraints(data_dir):
    """The step is traced under the mesh, so `nn.with_logical_constraint` is live: its
    constraints are in the lowered program; "off" drops them, as "auto" does without tensor
    parallelism."""
    counts = {}
    for on in ("on", "off", "auto"):
        c = tiny_config(data_dir, activation_constraints=on)
        c.mesh, c.sharding = {"fsdp": -1}, "fsdp"
        trainer = trainer_lib.Trainer(c, "", vocab_size=64)
        batch = {k: jax.ShapeDtypeStruct((8,) + x.shape[1:], x.dtype, sharding=trainer.batch_sh[k])
                 for k, x in trainer.task.init_batch(1).items()}
        counts[on] = trainer.lower(trainer.abstract_state, batch).as_text().count(
            "sharding_constraint")
    assert counts["on"] > counts["off"] + 10 and counts["auto"] == counts["off"], counts


def test_nonfinite_loss_stops_with_last_good_checkpoint(tmp_path, data_dir):
    c = tiny_config(data_dir, steps=12, ckpt_every=1)
    c.optim.lr = 1e30
    c.optim.warmup_frac = 0.0
    c.optim.clip_norm = 0.0
    with pytest.raises(trainer_lib.NonFiniteLossError, match=r"loss is (nan|inf) at step \d+") as e:
        trainer_lib.train(c, str(tmp_path))
    last = ckpt_lib.Checkpoints(str(tmp_path)).latest_step()
    assert last is not None and f"step {last}" in str(e.value)
    from vlm_jax.train.checkpoint import load_run
    params = load_run(str(tmp_path))[1]
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))


def test_loss_guard_names_a_checkpoint_with_sane_weights(tmp_path, data_dir):
    """lr 1e6: the loss is still finite after the first update, then explodes. The guard
    stops the run, sets aside the checkpoints saved from the exploded weights and names the
    last one whose loss was good."""
    c = tiny_config(data_dir, steps=8, ckpt_every=1)
    c.optim.update(lr=1e6, warmup_frac=0.0, clip_norm=0.0)
    with pytest.raises(trainer_lib.LossDivergedError, match=r"loss is \S+ at step (\d+)") as e:
        trainer_lib.train(c, str(tmp_path))
    bad = int(re.search(r"at step (\d+)", str(e.value))[1])
    last = ckpt_lib.Checkpoints(str(tmp_path)).latest_step()
    assert last == bad - 2 and f"Last good checkpoint: step {last}" in str(e.value)
    assert os.path.isdir(os.path.join(str(tmp_path), "checkpoints", f"{bad - 1}.diverged"))
    params = ckpt_lib.load_run(str(tmp_path))[1]
    assert max(np.abs(x).max() for x in jax.tree_util.tree_leaves(params)) < 100


def test_loss_guard_stops_a_finite_explosion(tmp_path, data_dir):
    c = tiny_config(data_dir, steps=12, ckpt_every=4)
    c.optim.update(lr=30.0, warmup_frac=0.0, clip_norm=0.0)
    with pytest.raises(trainer_lib.LossDivergedError, match=r"diverged: above 10 x the running "
                                                            r"minimum"):
        trainer_lib.train(c, str(tmp_path))
    assert not os.path.exists(os.path.join(str(tmp_path), "run_summary.json"))


@pytest.mark.parametrize("key, value, message", [
    ("ckpt_every", 0, r"config\.train\.ckpt_every must be a positive integer, got 0"),
    ("steps", 0, r"config\.train\.steps must be a positive integer, got 0 \(0 would write the "
                 r"summary of an untrained model\)"),
    ("log_every", 0, r"config\.train\.log_every must be a positive integer")])
def test_step_counts_are_checked_up_front(tmp_path, data_dir, key, value, message):
    with pytest.raises(ValueError, match=message):
        trainer_lib.train(tiny_config(data_dir, **{key: value}), str(tmp_path))
    assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints"))


def test_unknown_config_keys_are_errors(tmp_path, data_dir):
    c = tiny_config(data_dir)
    c.train.stepz = 3
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stepz'\] in config.train"):
        trainer_lib.train(c, str(tmp_path))
    c = tiny_config(data_dir)
    c.optim.learning_rate = 3
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\] in config.optim"):
        trainer_lib.train(c, str(tmp_path / "b"))
    proc = subprocess.run(_main_cmd(str(tmp_path / "c"), data_dir) + ["--config.train.nope=1"],
                          cwd=REPO, env=_env(), capture_output=True, text=True)
    assert proc.returncode != 0 and "nope" in proc.stderr


def test_config_values_of_the_wrong_type_are_errors(tmp_path, data_dir):
    """The locked defaults check types too: the error names the key."""
    c = tiny_config(data_dir)
    c.train = ml_collections.ConfigDict(dict(c.train.to_dict(), steps="12"))
    with pytest.raises(ValueError, match=r"config\.train\.steps: .*<class 'str'>"):
        trainer_lib.train(c, str(tmp_path))
    assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints"))
