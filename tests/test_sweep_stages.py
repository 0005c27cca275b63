"""Multi-stage sweep points: stage configs, input checks before any compile, stage resumption,
results kept on reruns; executors get `run` from the modes (no import back)."""

import ast
import json
import os
import pathlib
import sys

import ml_collections
import pytest

from vlm_jax import modes
from vlm_jax.scaling import executors, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import tiny_vlm  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def two_stage_config(data_dir: str) -> ml_collections.ConfigDict:
    c = tiny_vlm.get_config(f"llm=s,V=4,res=32,batch=8,steps=2,data_dir={data_dir}")
    c.data.synthetic.update(num_train=64, num_validation=8, num_test=8)
    c.train.update(log_every=1, ckpt_every=2, async_ckpt=False)
    c.eval.update(batch_size=8, max_new_tokens=2)
    c.stages = [dict(name="align", stage=1, optim=dict(frozen=None, lr=1e-3)),
                dict(name="tune", stage=2, train=dict(steps=3), optim=dict(lr=2e-5))]
    return c


def test_stage_configs_merge_and_chain(tmp_path):
    c = two_stage_config(str(tmp_path))
    stages = sweep.stage_configs(c, "/w/p")
    assert [(n, d) for n, _, d in stages] == [("align", "/w/p/align"), ("tune", "/w/p/tune")]
    align, tune = stages[0][1], stages[1][1]
    assert align.mode == tune.mode == "train" and "stages" not in align
    assert (align.stage, align.optim.lr, align.optim.frozen, align.train.steps) == (1, 1e-3, None, 2)
    assert (tune.stage, tune.optim.lr, tune.train.steps) == (2, 2e-5, 3)
    assert tune.optim.weight_decay == c.optim.weight_decay  # merged key by key, not replaced
    assert "init_from" not in align
    assert tune.init_from.workdir == "/w/p/align" and list(tune.init_from.map) == [["", ""]]
    c.stages = [dict(name="a"), dict(name="a")]
    with pytest.raises(ValueError, match=r"stages\[1\] needs a unique `name`"):
        sweep.stage_configs(c, "/w/p")
    del c.stages
    assert [(n, d) for n, _, d in sweep.stage_configs(c, "/w/p")] == [("train", "/w/p")]


def test_sweep_keys_checked_against_the_defaults(tmp_path):
    import sweep_tiny
    c = sweep_tiny.get_config("smoke=1")
    assert len(sweep.make_points(c, str(tmp_path))) > 1
    c.sweep.grid.tokens = (4,)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tokens'\] in config\.sweep\.grid"):
        sweep.make_points(c, str(tmp_path))
    del c.sweep.grid.tokens
    del c.sweep.grid.num_tokens
    with pytest.raises(ValueError, match=r"config\.sweep\.grid needs llm, num_tokens"):
        sweep.make_points(c, str(tmp_path))


def test_missing_inputs_named_before_any_compile(tmp_path, monkeypatch):
    c = two_stage_config(str(tmp_path / "tfds"))
    c.stages[0]["data"] = dict(source="llava", files=dict(train=str(tmp_path / "no.json")),
                               image_folder=str(tmp_path / "imgs"))
    c.stages[0]["init_from"] = [dict(hf=str(tmp_path / "qwen"), map=[["language_model", ""]])]
    c.stages[1]["init_from"] = dict(workdir=str(tmp_path / "nowhere"))
    compiled = []
    monkeypatch.setattr("vlm_jax.train.trainer.train", lambda *a: compiled.append(a))
    with pytest.raises(FileNotFoundError) as e:
        modes.train_eval(c, str(tmp_path / "point"))
    msg = str(e.value)
    for needle in ("data.files.train = " + str(tmp_path / "no.json"),
                   "data.image_folder = " + str(tmp_path / "imgs"),
                   "init_from[0].hf = " + str(tmp_path / "qwen" / "config.json"),
                   "stage 'tune': init_from.workdir = " + str(tmp_path / "nowhere")):
        assert needle in msg
    assert not compiled and not (tmp_path / "point").exists()


def _mtime(path) -> float:
    return os.path.getmtime(path)


def test_two_stage_point_resumes_per_stage_and_keeps_results(tmp_path, data_dir, capsys):
    c = two_stage_config(data_dir)
    work = tmp_path / "point"
    row = modes.train_eval(c, str(work))
    where = (f"result: {work / 'result.json'} (the table row), scores: {work / 'eval.json'}, "
             f"training: {work / 'align' / 'run_summary.json'}, "
             f"{work / 'tune' / 'run_summary.json'}")
    assert capsys.readouterr().out.splitlines()[-1] == where  # it ends saying where
    align, tune = work / "align" / "stage.json", work / "tune" / "stage.json"
    rec = [json.loads(p.read_text()) for p in (align, tune)]
    assert [s["name"] for s in row["stages"]] == ["align", "tune"]
    assert [s["final_step"] for s in rec] == [2, 3]
    assert rec[0]["param_fingerprint"] != rec[1]["param_fingerprint"]
    assert row["param_fingerprint"] == rec[1]["param_fingerprint"]
    assert all(s["wall_time_s"] > 0 and s["train_loss"] > 0 for s in row["stages"])
    assert row["train_loss"] == rec[1]["train_loss"] and row["train_steps"] == 3
    assert 0 <= row["score"] <= 1

    # A rerun of the finished point keeps its metrics: nothing is rewritten.
    stamp = _mtime(work / "result.json")
    assert modes.train_eval(c, str(work)) == row and _mtime(work / "result.json") == stamp
    assert capsys.readouterr().out.splitlines()[-1] == where

    # Killed during its eval: the stages are not redone and the train loss is kept.
    stamps = (_mtime(align), _mtime(tune))
    os.remove(work / "result.json")
    again = modes.train_eval(c, str(work))
    assert (_mtime(align), _mtime(tune)) == stamps
    assert again["train_loss"] == row["train_loss"] and again["stages"] == row["stages"]

    # Killed after stage 2's last checkpoint, before its record: stage 1 is not redone, stage 2
    # resumes at its last step (no step left) and keeps the loss of its earlier run.
    os.remove(work / "result.json")
    os.remove(tune)
    third = modes.train_eval(c, str(work))
    assert _mtime(align) == stamps[0]
    t = json.loads(tune.read_text())
    assert t["resumed_from_step"] == 3 and t["train_loss"] == rec[1]["train_loss"]
    assert t["param_fingerprint"] == rec[1]["param_fingerprint"]
    assert third["score"] == row["score"]


def test_inprocess_executor_runs_the_callable_it_is_given(tmp_path):
    calls = []
    ex = executors.make("inprocess", run=lambda cfg, wd: calls.append((cfg.mode, wd)))
    ex.run("p", ml_collections.ConfigDict(dict(mode="train_eval")), str(tmp_path / "p"))
    assert calls == [("train_eval", str(tmp_path / "p"))]
    assert json.loads((tmp_path / "p" / "config.json").read_text()) == {"mode": "train_eval"}
    with pytest.raises(ValueError, match="needs `run`"):
        executors.make("inprocess")


def _imports(path: pathlib.Path) -> set[str]:
    """Every module a file imports, at top level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_scaling_and_pod_never_import_the_modes():
    pkg = pathlib.Path(REPO) / "vlm_jax"
    files = [*sorted((pkg / "scaling").glob("*.py")), pkg / "pod.py"]
    for f in files:
        bad = {m for m in _imports(f) if m in ("vlm_jax.modes", "vlm_jax.main")
               or m.startswith("vlm_jax.modes.")}
        assert not bad, f"{f} imports {bad} (the modes import scaling, never the reverse)"
    assert "vlm_jax.scaling.executors" not in _imports(pkg / "pod.py")
    assert not any("launch" in m for f in files for m in _imports(f))
