"""The trainer's feed: each process reads global batch / process count, never a floored share."""

import os
import sys

import jax
import pytest

from vlm_jax.train import data_feed

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs"))
import tiny_vlm  # noqa: E402


def _config(tmp_path, batch: int):
    c = tiny_vlm.get_config(f"llm=s,V=4,res=32,batch={batch},steps=2,data_dir={tmp_path}")
    c.data.synthetic.num_train = 24
    c.data.synthetic.num_validation = 8
    c.data.synthetic.num_test = 8
    return c


def test_global_batch_must_divide_by_the_process_count(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    with pytest.raises(ValueError, match=r"batch_size=8 .* 3 JAX processes"):
        data_feed.make(_config(tmp_path, 8))


def test_each_process_reads_its_share_of_the_global_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    feed = data_feed.make(_config(tmp_path, 8))
    assert feed.loader.batch_size == 4


def test_eval_batch_must_divide_by_the_process_count(tmp_path, monkeypatch):
    from vlm_jax.eval import evaluator
    c = _config(tmp_path, 8)
    c.eval.batch_size = 6
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    with pytest.raises(ValueError, match=r"eval\.batch_size=6 .* 4 JAX processes"):
        evaluator.evaluate_config(c, params=None)
