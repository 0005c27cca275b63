"""`config.mode == "prune_search"`: search (or evaluate) a pruning schedule and report its cost.

    python -m vlm_jax.main --config=configs/prune_gsearch.py --workdir=DIR

Config keys (defaults in `default_config`; unknown keys are errors):
- `model`: preset name or model dict, used when `checkpoint` is empty (random init,
  `init_seed`). `checkpoint`: a training run directory (its latest orbax checkpoint and config,
  via `vlm_jax.train.checkpoint.load_run`, read-only) or a Hugging Face directory (`config.json` +
  safetensors, via `vlm_jax.interop.hf.load`).
- `calib.source`: "random" (synthetic prompts; `answers` = the unpruned model's greedy answers,
  so accuracy is agreement with it) or "eval" (the training run's eval split through
  `vlm_jax.eval.evaluator.evaluate`, metric = overall task score; needs a training run dir).
  `calib.num_examples`, `batch_size`, `prompt_len`, `answer_len`, `max_pad`, `seed` (random);
  `split`, `max_new_tokens` (eval).
- `prune.method`: gsearch | psigmoid | fastv | explicit | full | file; `metric`: accuracy |
  loglik (random source); `query`: last | text; `impl`: xla | pallas | pallas_interpret;
  G-Search: `eps`, `grid` (counts) or `grid_fractions`; P-Sigmoid: `budget`, `budget_kind`
  (tokens: average kept visual tokens | flops: LLM prefill FLOPs), `n_trials`, `sampler`
  (tpe | gp), `seed`; fixed schedules: `fastv_k`, `fastv_r`, `keep`, `psigmoid_k/l0/b`,
  `schedule_file`; `timing_runs` (TTFT median over runs), `diagnostics` (Kendall tau).

Writes `DIR/schedule.json` (the schedule, search parameters and log), `DIR/report.json`
(unpruned and pruned cost reports, one format) and `DIR/kendall_tau.json`; metric values are
cached in `DIR/metric_cache.json` and the optuna study journaled in `DIR/optuna.journal`, so
a rerun resumes.
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import ml_collections
import numpy as np

from vlm_jax import batch as batch_lib
from vlm_jax import models
from vlm_jax.config_args import merge_defaults
from vlm_jax.eval import generate
from vlm_jax.io import write_json_atomic
from vlm_jax.pruning import calibration as calib_lib
from vlm_jax.pruning import diagnostics, report, schedules
from vlm_jax.pruning.forward import PruneSpec
from vlm_jax.pruning.gsearch import EvalCache, MetricFn, default_grid, g_search
from vlm_jax.pruning.psigmoid import psigmoid_search
from vlm_jax.train.checkpoint import load_run

log = logging.getLogger(__name__)


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        mode="prune_search", model="llava-tiny", init_seed=0, checkpoint="",
        calib=dict(source="random", num_examples=16, batch_size=8, prompt_len=8, answer_len=4,
                   max_pad=3, seed=0, split="test", max_new_tokens=6),
        prune=dict(method="gsearch", metric="accuracy", query="last", impl="xla", eps=0.0,
                   grid=(), grid_fractions=(0, 1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4,
                                            7 / 8, 1), budget=0.5, budget_kind="tokens",
                   n_trials=30, sampler="tpe", seed=0, fastv_k=2, fastv_r=0.5, keep=(),
                   psigmoid_k=1.0, psigmoid_l0=2.0, psigmoid_b=0.25, schedule_file="",
                   timing_runs=5, diagnostics=True)))


def checked_config(config) -> ml_collections.ConfigDict:
    """config merged over the defaults; an unknown key raises naming its section."""
    return merge_defaults(config, default_config(), "", whole=("model",))


def load_model(config) -> tuple[models.VLMConfig, dict, ml_collections.ConfigDict | None]:
    """(model config, params, training config or None) from `checkpoint` or random init."""
    path = os.path.expanduser(config.checkpoint)
    if not path:
        cfg = models.from_dict(config.model)
        return cfg, models.init_params(cfg, int(config.init_seed)), None
    if os.path.isdir(os.path.join(path, "checkpoints")):  # a run dir also holds a config.json
        train_cfg, params = load_run(path)
        return models.from_dict(train_cfg.model), params, train_cfg
    if os.path.exists(os.path.join(path, "config.json")):
        from vlm_jax.interop import hf
        cfg, params = hf.load(path)
        return cfg, params, None
    raise FileNotFoundError(f"config.checkpoint={path!r} is neither a Hugging Face directory "
                            "(config.json) nor a training run directory (checkpoints/)")


def _eval_calibration(cfg, params, train_cfg, c):
    """(calibration arrays, metric_fn) from the training run's eval split."""
    from vlm_jax.eval.evaluator import evaluate
    from vlm_jax.train import data_feed
    if train_cfg is None:
        raise ValueError("calib.source='eval' needs config.checkpoint to be a training run "
                         "directory (its config names the data)")
    loader = data_feed.make(train_cfg, split=c.calib.split, mode="eval",
                            batch_size=c.calib.batch_size, batch_key="calib.batch_size").loader
    calib = batch_lib.model_inputs(next(iter(loader)))
    module = models.build(cfg)

    def metric_fn(keep):
        spec = PruneSpec(tuple(keep), c.prune.query, c.prune.impl)
        return evaluate(module, params, loader, max_new_tokens=c.calib.max_new_tokens,
                        prune=spec, num_examples=c.calib.num_examples)["overall"]

    return calib, metric_fn


def calibration(cfg, params, train_cfg, c) -> tuple[dict, MetricFn]:
    """(calibration arrays, `metric_fn(keep) -> float`) for the checked config `c`."""
    if c.calib.source == "eval":
        if c.prune.metric != "accuracy":
            raise ValueError("calib.source='eval' scores task accuracy; set prune.metric="
                             "'accuracy'")
        return _eval_calibration(cfg, params, train_cfg, c)
    if c.calib.source != "random":
        raise ValueError(f"calib.source must be 'random' or 'eval', got {c.calib.source!r}")
    calib = calib_lib.random_calibration(cfg, c.calib.num_examples, c.calib.prompt_len,
                                       c.calib.answer_len, c.calib.max_pad, c.calib.seed)
    calib = calib_lib.with_model_answers(cfg, params, calib, c.calib.batch_size)
    return calib, calib_lib.make_metric(cfg, params, calib, c.prune.metric, c.prune.query,
                                      c.prune.impl, c.calib.batch_size)


def ttft(cfg, params, batch: dict, specs: dict[str, PruneSpec | None], runs: int
         ) -> dict[str, float]:
    """Median seconds of a jitted (pruned) prefill + first token on `batch`, per named spec
    (None: unpruned), timed round-robin."""
    module, inputs = models.build(cfg), calib_lib.model_inputs(batch)
    fns = {name: functools.partial(generate.prefill, module, 1, spec, params, inputs)
           for name, spec in specs.items()}
    return report.measure_interleaved(fns, runs)


def find_schedule(p: ml_collections.ConfigDict, metric: MetricFn, depth: int, v: int, text: int,
                  llm_cfg, workdir: str | None = None) -> tuple[tuple[int, ...], dict]:
    """(keep counts per layer, search info) of the method `p` (config.prune) names: searched
    on `metric` (gsearch, psigmoid; the optuna study is journaled in `workdir` if given) or
    fixed. `text`: prompt text tokens, for FLOPs budgets."""
    if p.method == "gsearch":
        grid = list(p.grid) or default_grid(v, tuple(p.grid_fractions))
        result = g_search(metric, depth, v, grid, float(p.eps),
                          log=lambda e: log.info("G-Search %s", e))
        return result.keep, {"params": result.params, "log": result.log}
    if p.method == "psigmoid":
        if p.budget_kind not in ("tokens", "flops"):
            raise ValueError(f"prune.budget_kind must be 'tokens' or 'flops', got "
                             f"{p.budget_kind!r}")
        # budget given as a fraction of the unpruned cost (<= 1) or as an absolute cost
        cost_fn = schedules.average_kept if p.budget_kind == "tokens" else (
            lambda keep: report.prefill_flops(llm_cfg, text, v, keep))
        full_cost = cost_fn(schedules.full(depth, v))
        budget = float(p.budget) * full_cost if p.budget <= 1 else float(p.budget)
        storage = None
        if workdir:
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend
            storage = JournalStorage(JournalFileBackend(os.path.join(workdir, "optuna.journal")))
        result = psigmoid_search(metric, depth, v, budget, cost_fn, int(p.n_trials), p.sampler,
                                 int(p.seed), storage=storage)
        return result.keep, {"params": result.params, "log": result.log}
    return schedules.from_config(p, depth, v), {}


def run(config, workdir: str) -> dict:
    """Searches/evaluates the schedule `config.prune` names; returns the report dict."""
    c = checked_config(config)
    os.makedirs(workdir, exist_ok=True)
    cfg, params, train_cfg = load_model(c)
    params = jax.device_put(params)
    depth, v = cfg.llm.depth, cfg.num_visual_tokens
    calib, metric_fn = calibration(cfg, params, train_cfg, c)
    metric = EvalCache(metric_fn, os.path.join(workdir, "metric_cache.json"))
    p = c.prune
    text = int(np.median(np.asarray(calib["valid"]).sum(1))) - v
    keep, info = find_schedule(p, metric, depth, v, text, cfg.llm, workdir)
    schedules.save(os.path.join(workdir, "schedule.json"), keep, method=p.method, **info)
    timing = {k: np.asarray(x[:c.calib.batch_size]) for k, x in calib.items() if k != "answers"}
    name = "task_score" if c.calib.source == "eval" else p.metric
    times = ttft(cfg, params, timing, {"unpruned": None, "pruned": PruneSpec(keep, p.query,
                                                                              p.impl)},
                 p.timing_runs)
    base = report.make_report("unpruned", cfg.llm, schedules.full(depth, v), text, v, name,
                              metric(schedules.full(depth, v)), times["unpruned"])
    pruned = report.make_report(p.method, cfg.llm, keep, text, v, name, metric(keep),
                                times["pruned"], baseline=base)
    print(report.format_table([base, pruned]), flush=True)
    out = {"unpruned": base.to_dict(), "pruned": pruned.to_dict()}
    if p.diagnostics:
        imp = diagnostics.layer_importance(cfg, params, timing, p.query, "xla")
        tau = diagnostics.kendall_tau_matrix(imp)
        out["kendall_tau_adjacent"] = diagnostics.adjacent_tau(tau)
        write_json_atomic(os.path.join(workdir, "kendall_tau.json"),
                          {"matrix": tau.tolist(), "adjacent": out["kendall_tau_adjacent"]})
    write_json_atomic(os.path.join(workdir, "report.json"), out, indent=1)
    return out
