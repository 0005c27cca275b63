"""What `python -m vlm_jax.main` runs, by `config.mode` (importable without absl flags).

The modes sit on top of the package: they import train, eval, scaling and pruning, and nothing
imports them (sweeps receive `run` as a callable).
"""

from __future__ import annotations

import logging
import os
import time

import ml_collections

log = logging.getLogger(__name__)

MODES = ("train", "eval", "train_eval", "sweep", "prune_search")


def run(config: ml_collections.ConfigDict, workdir: str):
    """Dispatches on `config.mode`; returns the mode's result."""
    mode = config.get("mode", "train")
    if mode == "train":
        from vlm_jax.train.trainer import train
        return train(config, workdir)
    if mode == "eval":
        from vlm_jax.eval.evaluator import evaluate_run
        return evaluate_run(config, workdir)
    if mode == "train_eval":
        return train_eval(config, workdir)
    if mode == "sweep":
        from vlm_jax.scaling.executors import DryRunDone
        from vlm_jax.scaling.sweep import run_sweep
        try:
            return run_sweep(config, workdir, run=run)
        except DryRunDone as e:  # the plan and every command were printed; nothing ran
            print(f"# {e}")
            return {"dry_run": str(e)}
    if mode == "prune_search":
        from vlm_jax.pruning import run as prune_run
        return prune_run(config, workdir)
    raise ValueError(f"config.mode must be one of {MODES}, got {mode!r}")


def run_stage(name: str, config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains one stage (resuming) unless its `stage.json` says it is done; returns that record."""
    from vlm_jax.io import write_json_atomic
    from vlm_jax.scaling import sweep
    from vlm_jax.train.trainer import train

    record_path = os.path.join(workdir, sweep.STAGE_RECORD)
    done = sweep.read_done(record_path)
    if done is not None:
        log.info("stage %s done (%s), not redone", name, record_path)
        return done
    previous = sweep.read_done(os.path.join(workdir, "run_summary.json"))
    resumed = sweep.latest_step_on_disk(workdir)
    t0 = time.time()
    summary = train(config, workdir)
    record = sweep.stage_record(name, workdir, summary, previous, time.time() - t0, resumed)
    write_json_atomic(record_path, record)
    return record


def train_eval(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """mode=train_eval: every stage of `config` (resuming; see vlm_jax.scaling.sweep), then the
    evaluation of the last one; writes `eval.json` and `result.json` (one table row).

    A point whose `result.json` exists is done: its row is returned and nothing is rewritten.
    Every stage's inputs are checked before the first compile.
    """
    from vlm_jax import models
    from vlm_jax.eval.evaluator import evaluate_config
    from vlm_jax.io import write_json_atomic
    from vlm_jax.scaling import param_count, sweep
    from vlm_jax.train.checkpoint import load_run

    done = sweep.read_done(os.path.join(workdir, sweep.RESULT))
    if done is not None:
        log.info("train_eval: %s is finished; its result is kept", workdir)
        _print_where(workdir, sweep.stage_configs(config, workdir))
        return done
    stages = sweep.stage_configs(config, workdir)
    sweep.check_inputs(stages, planned=tuple(d for _, _, d in stages))
    eval_config = ml_collections.ConfigDict({k: v for k, v in config.to_dict().items()
                                             if k != "stages"})
    benchmarks = eval_config.get("eval", {}).get("benchmarks")
    if benchmarks:
        from vlm_jax.data.benchmarks import read_all
        from vlm_jax.eval import benchmarks as bench_eval
        read_all(benchmarks)  # every file and image there, before any compile
    records = [run_stage(name, cfg, d) for name, cfg, d in stages]
    _, params = load_run(stages[-1][2])
    if benchmarks:
        result = bench_eval.evaluate_benchmarks(eval_config, params, workdir)
    else:
        result = evaluate_config(eval_config, params)
    cfg = models.from_dict(config.model)
    row = sweep.result_row(config, workdir, records, result, param_count(cfg.llm), cfg)
    write_json_atomic(os.path.join(workdir, "eval.json"), result)
    write_json_atomic(os.path.join(workdir, sweep.RESULT), row)
    _print_where(workdir, stages)
    return row


def _print_where(workdir: str, stages) -> None:
    """The last line of a train_eval: where its row, scores and training records are."""
    from vlm_jax.scaling import sweep
    trained = ", ".join(os.path.join(d, "run_summary.json") for _, _, d in stages)
    print(f"result: {os.path.join(workdir, sweep.RESULT)} (the table row), scores: "
          f"{os.path.join(workdir, 'eval.json')}, training: {trained}", flush=True)
