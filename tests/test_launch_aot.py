"""launch/aot.py: the Trainer's train step compiled ahead of time for a TPU topology on this CPU
host (libtpu; no TPU), with the memory / cost report; sharding errors named before compiling.

The default tests compile a tiny VLM on v5e:2x2 with fsdp_tp through the CLI; the slow one
compiles the LLaVA-1.5-7B-shaped flagship (configs/flagship_llava7b.py) on v5e:4x4.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("libtpu")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "launch"), os.path.join(REPO, "configs")]
import aot  # noqa: E402
import tiny_vlm  # noqa: E402


def tiny_fsdp_tp(batch: int = 8, vocab: int = 128):
    """A tiny VLM (1+1 layers) on a 2x2 fsdp x tensor mesh; `vocab` rows in the LLM table."""
    c = tiny_vlm.get_config(f"llm=s,V=4,res=32,batch={batch},compressor=avgpool")
    c.model.vision.depth = c.model.llm.depth = 1
    c.model.compressor.feature_layers = (1,)
    c.model.llm.vocab_size = vocab
    c.mesh = {"fsdp": 2, "tensor": 2}
    c.sharding = "fsdp_tp"
    return c


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1",
                TF_CPP_MIN_LOG_LEVEL="3")


def test_cli_compiles_tiny_vlm_for_v5e_2x2_and_reports(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(tiny_fsdp_tp().to_json())
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "launch/aot.py", f"--config=configs/from_json.py:{path}",
         "--topology=v5e:2x2", f"--json_out={out}", "--config.train.batch_size=16"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads([s for s in proc.stdout.splitlines() if s.startswith("{")][-1])
    r = json.loads(out.read_text())
    assert line == r
    assert "memory per device" in proc.stdout and "XLA cost per device" in proc.stdout
    assert r["device_kind"] == "TPU v5 lite" and r["devices"] == 4
    assert r["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2} and r["batch_size"] == 16
    mem = r["memory_per_device"]
    assert mem["hbm"] == 16 * 2**30 and r["fits"] is True
    assert mem["total"] == (mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
                            + mem["generated_code"])
    assert mem["argument"] >= mem["state"] > 0  # the state is donated: aliased to the output
    assert mem["alias"] >= 0.9 * mem["state"]
    # Sharding shrinks the per-device state below a quarter of the whole (params + 2 moments).
    whole = 4 * 3 * r["params"]
    assert mem["state"] < 0.5 * whole
    cost = r["xla_cost_per_device"]
    assert cost["flops"] > 0 and cost["bytes accessed"] > 0
    # XLA's per-device FLOPs against the analytic model (forward + 2x backward over 4 devices).
    assert 0.9 < cost["flops"] / r["model_flops_per_device"] < 1.6
    assert r["roofline"]["compute_s"] > 0


def test_indivisible_parameter_is_named_before_compiling():
    with pytest.raises(ValueError, match=r"params\['language_model'\]\['embed_tokens'\]"
                                         r"\['embedding'\]: shape \(97, 48\).*axis 0 \(size 97\) "
                                         r"is not divisible by tensor=2"):
        aot.compile_train_step(tiny_fsdp_tp(vocab=97), "v5e:2x2")


def test_indivisible_batch_and_bad_topology_are_errors():
    with pytest.raises(ValueError, match=r"batch\['images'\]: shape \(6, 32, 32, 3\).*not "
                                         r"divisible by data=1 x fsdp=4"):
        c = tiny_fsdp_tp()
        c.mesh = {"fsdp": 4}
        aot.compile_train_step(c, "v5e:2x2", batch_size=6)
    with pytest.raises(ValueError, match="bad TPU topology 'v5e-16'"):
        aot.topology_devices("v5e-16")


@pytest.mark.slow  # ~5 CPU-minutes of XLA compilation
def test_flagship_llava7b_fits_v5e_4x4():
    """LLaVA-1.5-7B shape + QueCC at V=16, stage 2, fsdp over 16 chips, global batch 16
    (measured: 9.4 GiB of 16 per chip, 4.8 of them the sharded state)."""
    import flagship_llava7b

    c = flagship_llava7b.get_config("V=16,batch=16,fsdp=16,tp=1")
    trainer, compiled, timings = aot.compile_train_step(c, "v5e:4x4")
    r = aot.report(c, "v5e:4x4", trainer, compiled, timings)
    print("\n" + aot.format_report(r))
    assert 7.0e9 < r["params"] < 7.2e9 and r["trainable_params"] < r["params"]
    assert r["fits"] is True
    mem = r["memory_per_device"]
    # The f32 state (params + Adam moments of the trainable part) split 16 ways.
    expected_state = 4 * (r["params"] + 2 * r["trainable_params"]) / 16
    assert 0.95 < mem["state"] / expected_state < 1.05
    assert 1.0 < r["xla_cost_per_device"]["flops"] / r["model_flops_per_device"] < 1.6


def test_scanned_layers_compile_and_shard_the_stacked_params():
    """A tiny VLM with scanned tower and decoder compiles for v5e:2x2; its stacked params keep
    their logical sharding with the layer axis replicated."""
    c = tiny_fsdp_tp()
    c.model.vision.depth = c.model.llm.depth = 2
    c.model.vision.scan_layers = c.model.llm.scan_layers = True
    c.model.llm.remat = True
    trainer, compiled, timings = aot.compile_train_step(c, "v5e:2x2")
    r = aot.report(c, "v5e:2x2", trainer, compiled, timings)
    assert r["fits"] is True
    q = trainer.abstract_state["params"]["language_model"]["layers"]["self_attn"]["q_proj"]
    assert q["kernel"].shape[0] == 2 and q["kernel"].sharding.spec[0] is None
    assert "layers_0" not in trainer.abstract_state["params"]["vision_tower"]


def test_compile_effort_reaches_the_compile_and_is_checked():
    """`train.compile_effort` is XLA's exec_time_optimization_effort for the jitted step (the
    AOT tool compiles that same jit); a value outside [-1, 1] is an error naming the key."""
    c = tiny_fsdp_tp()
    c.train.compile_effort = -1.0
    trainer, compiled, timings = aot.compile_train_step(c, "v5e:2x2")
    r = aot.report(c, "v5e:2x2", trainer, compiled, timings)
    assert r["compile_effort"] == -1.0 and r["fits"] is True
    assert "exec_time_optimization_effort -1" in aot.format_report(r)
    lowered = trainer.lower(trainer.abstract_state, aot.abstract_batch(trainer, 8))
    options = dict(lowered._lowering._compiler_options_kvs)  # what jit hands to XLA
    assert options == {"exec_time_optimization_effort": -1.0}
    c.train.compile_effort = 2.0
    with pytest.raises(ValueError, match=r"config.train.compile_effort must be in \[-1, 1\]"):
        aot.compile_train_step(c, "v5e:2x2")
