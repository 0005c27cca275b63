"""The no-argument pruning benchmark's table, on a tiny model trained for one step."""

import json
import os
import sys

import numpy as np
import pytest

from vlm_jax.bench import pruning_suite
from vlm_jax.eval.evaluator import SYNTHETIC_TASKS
from vlm_jax.train import trainer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs"))
import prune_bench  # noqa: E402

KINDS = ("unpruned", "fastv", "dart", "random", "pyramiddrop", "psigmoid", "gsearch",
         "visionzip", "pooling")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    c = prune_bench.get_config(f"width=32,heads=2,kv_heads=1,depth=2,vis_width=8,res=36,"
                               f"steps=1,batch=8,data_dir={tmp / 'tfds'}")
    c.data.synthetic.update(num_train=16, num_validation=8, num_test=12)
    c.train.update(ckpt_every=1)
    c.mode = "train"
    run = tmp / "run"
    trainer.train(c, str(run))
    return run, pruning_suite.main([
        "--workdir", str(run), "--as_is", "--n_calib", "4", "--n_score", "8", "--batch", "4",
        "--timing_batch", "4", "--trials", "2", "--grid", "0,1", "--runs", "1",
        "--max_new_tokens", "2", "--pivots", "2", "--psigmoid_budget", "0.6"])


def test_every_baseline_and_control_is_a_row(table):
    run, out = table
    names = out["methods"]
    assert [n.split()[0] for n in names] == list(KINDS)
    rows = json.load(open(out["table"]))["rows"]
    by_kind = {r["method"].split()[0]: r for r in rows}
    fastv = by_kind["fastv"]["keep"]
    assert fastv == [144, 36] and by_kind["dart"]["keep"] == by_kind["random"]["keep"] == fastv
    assert by_kind["pyramiddrop"]["keep"] == [144, 72]
    assert by_kind["visionzip"]["method"] == "visionzip 30+6"
    assert by_kind["visionzip"]["keep"] == by_kind["pooling"]["keep"] == [36, 36]
    assert {r["family"] for r in rows} == {"unpruned", "schedule", "selection", "before-LLM"}


def test_cost_table_columns_are_computed(table):
    run, out = table
    saved = json.load(open(out["table"]))
    rows, base = saved["rows"], saved["rows"][0]
    assert saved["summary"] == json.loads(json.dumps({k: v for k, v in out.items()
                                                      if k != "table"}))
    for r in rows:
        assert r["equivalent_tokens"] == pytest.approx(np.mean(r["keep"]))
        assert r["prefill_flops"] > 0 and r["ttft_ms"] > 0 and r["decode_ms_per_token"] > 0
        assert 0 <= r["score"] <= 1 and r["tasks"]
        reasoning = [s for t, s in r["tasks"].items()
                     if SYNTHETIC_TASKS[t][1] == "reasoning" and t != "spatial"]
        assert r["score_without_spatial"] == pytest.approx(np.mean(reasoning))
    for r in rows[1:]:
        assert r["prefill_flops"] < base["prefill_flops"]
        assert r["flops_speedup"] == pytest.approx(base["prefill_flops"] / r["prefill_flops"])
        assert r["ttft_speedup"] == pytest.approx(base["ttft_ms"] / r["ttft_ms"])
        assert r["efficiency"] == pytest.approx(r["ttft_speedup"] / r["flops_speedup"])
        assert r["drop_points"] == pytest.approx(100 * (base["score"] - r["score"]))
        assert r["task_drop_points"] == pytest.approx(
            {t: 100 * (base["tasks"][t] - s) for t, s in r["tasks"].items()})
        assert r["drop_points_without_spatial"] == pytest.approx(
            100 * (base["score_without_spatial"] - r["score_without_spatial"]))
    same = [r["prefill_flops"] for r in rows if r["keep"] == rows[1]["keep"]]
    assert len(same) == 3 and len(set(same)) == 1  # FastV, DART, random: one schedule, one cost
    assert out["min_efficiency"] == min(r["efficiency"] for r in rows[1:])
    with open(run / "pruning_speedup_vs_drop.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_too_few_new_tokens_for_a_decode_time_is_an_error(table):
    with pytest.raises(ValueError, match="--max_new_tokens=1"):
        pruning_suite.main(["--workdir", str(table[0]), "--max_new_tokens", "1"])


@pytest.mark.parametrize("flag, value, match", [
    ("--budget", "144", r"--budget=144: .* between 1 and 143 of the model's 144"),
    ("--budget", "0", "--budget=0"), ("--psigmoid_budget", "1.5", "--psigmoid_budget=1.5")])
def test_budgets_no_method_can_meet_are_errors(table, flag, value, match):
    with pytest.raises(ValueError, match=match):
        pruning_suite.main(["--workdir", str(table[0]), "--as_is", flag, value])
