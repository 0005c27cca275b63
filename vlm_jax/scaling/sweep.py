"""Sweeps over LLM size x visual tokens x compressor: train and evaluate every point, then fit.

A sweep config (see configs/sweep_tiny.py, configs/sweep_paper.py) holds `point` (the
train+eval config every point starts from), `sweep.grid` (llm presets, token counts,
compressors), optionally `pretrain` (a stage-0 run shared by all points, wired in through
`init_from`) and `executor`. A point may be a sequence of training stages: `point.stages` is a
list of dicts `{"name": ..., <keys overriding the point config>}`; stage k > 0 starts from
stage k-1's weights (`init_from` of its workdir) unless it sets `init_from` itself; the
evaluation reads the last stage. Layout:

    WORKDIR/pretrain/                          the shared stage-0 run
    WORKDIR/points/<name>/<stage>/stage.json   one finished stage (never redone)
    WORKDIR/points/<name>/result.json          one finished point (its presence means done)
    WORKDIR/results.{csv,json}                 the table; WORKDIR/fit.json, WORKDIR/plots/*.png

A single-stage point trains in its own directory. Points and stages already done are skipped,
so a killed sweep resumes where it stopped; a finished point's result is never rewritten.
The modes run points (`vlm_jax.modes.train_eval`) and hand `run_sweep` their `run` callable.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time

import ml_collections

from vlm_jax.config_args import merge_defaults
from vlm_jax.io import write_json_atomic
from vlm_jax.scaling import executors, report

log = logging.getLogger(__name__)

STAGE_RECORD = "stage.json"
RESULT = "result.json"


def default_config() -> ml_collections.ConfigDict:
    """`config.sweep`'s keys. `grid.llm`, `grid.num_tokens` and `grid.compressor` must be
    given (see `make_points`); `text_tokens` 0: the mean text length of the points."""
    return ml_collections.ConfigDict(dict(
        grid=dict(llm={}, num_tokens=(), compressor=(), compressor_at={}, llm_vars={},
                  llm_point={}),
        families=("reasoning", "ocr"), text_tokens=0.0, check_inputs=True))


def sweep_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.sweep` over `default_config()`; an unknown key is an error naming it."""
    return merge_defaults(config.sweep, default_config(), "sweep", whole=tuple(
        f"grid.{k}" for k in ("llm", "compressor_at", "llm_vars", "llm_point")))


def point_name(llm: str, num_tokens: int, compressor: str) -> str:
    return f"{llm}_V{num_tokens}_{compressor}".replace("/", "-")


def substitute(tree, values: dict[str, str]):
    """Every string of a JSON tree with `{key}` replaced by `values[key]` (other text kept)."""
    if isinstance(tree, dict):
        return {k: substitute(v, values) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [substitute(v, values) for v in tree]
    if isinstance(tree, str):
        for key, value in values.items():
            tree = tree.replace("{" + key + "}", value)
    return tree


def make_points(config: ml_collections.ConfigDict, workdir: str
                ) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, full point config) for every grid point, in grid order.

    `sweep.grid.llm`: name -> LLM config; `{llm}` in any string of the point (e.g. a checkpoint
    path) becomes the name, and `{VAR}` becomes `sweep.grid.llm_vars[name][VAR]` (optional;
    e.g. a checkpoint directory whose name has dots, which config keys cannot).
    `sweep.grid.llm_point` (optional): name -> keys merged into that LLM's points (mesh ...).
    `sweep.grid.compressor_at` (optional): "V" -> the compressor used at that token count
    instead (e.g. the plain projector at full resolution).
    """
    grid = sweep_config(config).grid
    if not (grid.llm and grid.num_tokens and grid.compressor):
        raise ValueError("config.sweep.grid needs llm, num_tokens and compressor, got "
                         f"{grid.llm and list(grid.llm)}, {grid.num_tokens}, {grid.compressor}")
    llms = dict(grid.llm)  # name -> LLM config dict
    per_llm = {k: dict(v) for k, v in dict(grid.llm_point).items()}
    unknown = sorted(set(per_llm) - set(llms))
    if unknown:
        raise ValueError(f"sweep.grid.llm_point names LLM(s) {unknown} not in sweep.grid.llm")
    at = {int(k): v for k, v in dict(grid.compressor_at).items()}
    points = []
    for (llm, llm_cfg), v, comp in itertools.product(llms.items(), grid.num_tokens, grid.compressor):
        comp = at.get(int(v), comp)
        values = {"llm": llm, **dict(dict(grid.llm_vars).get(llm, {}))}
        tree = substitute(_merge(config.point.to_dict(), per_llm.get(llm, {})), values)
        cfg = ml_collections.ConfigDict(tree)
        with cfg.unlocked():
            cfg.mode = "train_eval"
            cfg.llm_name = llm
            cfg.model.llm = dict(llm_cfg)
            cfg.model.compressor.num_tokens = int(v)
            cfg.model.compressor.name = comp
            if config.get("pretrain") is not None:
                cfg.init_from = ml_collections.ConfigDict(dict(
                    workdir=os.path.join(workdir, "pretrain"),
                    map=(("vision_tower", "image_tower"),)))
        points.append((point_name(llm, int(v), comp), cfg))
    return points


def _merge(base: dict, over: dict) -> dict:
    """`base` with `over`'s keys replacing its own, nested dicts merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def stage_configs(config: ml_collections.ConfigDict, workdir: str
                  ) -> list[tuple[str, ml_collections.ConfigDict, str]]:
    """(stage name, its train config, its workdir) for every stage of a point, in order.

    Without `config.stages` the point is one stage trained in `workdir` itself.
    """
    base = config.to_dict()
    stages = base.pop("stages", None)
    base["mode"] = "train"
    if not stages:
        return [("train", ml_collections.ConfigDict(base), workdir)]
    out, names = [], set()
    for k, stage in enumerate(stages):
        stage = dict(stage)
        name = stage.pop("name", None)
        if not isinstance(name, str) or not name or "/" in name or name in names:
            raise ValueError(f"config.stages[{k}] needs a unique `name` (no '/'), got {name!r}")
        names.add(name)
        merged = _merge(base, stage)
        if k > 0 and "init_from" not in stage:
            merged["init_from"] = {"workdir": out[-1][2], "map": [["", ""]]}
        out.append((name, ml_collections.ConfigDict(merged), os.path.join(workdir, name)))
    return out


def input_paths(stages) -> list[tuple[str, str, str]]:
    """(stage, config key, path) of every file or directory the stages read."""
    out = []
    for name, cfg, _ in stages:
        data = cfg.get("data", {})
        if data and data.get("source", "synthetic") != "synthetic":
            for split, path in dict(data.get("files", {})).items():
                if path and split == "train":
                    out.append((name, f"data.files.{split}", path))
            if data.get("image_folder"):
                out.append((name, "data.image_folder", data.image_folder))
        if data and data.get("tokenizer", {}).get("kind") == "hf":
            out.append((name, "data.tokenizer.path", data.tokenizer.path))
        inits = cfg.get("init_from") or []
        for i, spec in enumerate(inits if isinstance(inits, (list, tuple)) else [inits]):
            key = f"init_from[{i}]" if isinstance(inits, (list, tuple)) else "init_from"
            if spec.get("hf"):
                out.append((name, f"{key}.hf", os.path.join(spec["hf"], "config.json")))
            elif spec.get("workdir"):
                out.append((name, f"{key}.workdir", spec["workdir"]))
    return out


def missing_inputs(stages, planned: tuple[str, ...] = ()) -> list[str]:
    """Lines naming every input path of `stages` that is not there (gs:// paths and the
    workdirs in `planned`, which earlier stages or the sweep make, are not checked)."""
    bad = []
    for stage, key, path in input_paths(stages):
        full = os.path.expanduser(path)
        if "://" in full or any(os.path.normpath(full) == os.path.normpath(p) for p in planned):
            continue
        if not os.path.exists(full):
            bad.append(f"stage {stage!r}: {key} = {path} does not exist")
    return bad


def check_inputs(stages, planned: tuple[str, ...] = ()) -> None:
    """Raises FileNotFoundError naming every missing input (before anything compiles)."""
    bad = missing_inputs(stages, planned)
    if bad:
        raise FileNotFoundError("missing input(s):\n  " + "\n  ".join(bad))


def point_inputs(config: ml_collections.ConfigDict, name: str, point: ml_collections.ConfigDict,
                 workdir: str):
    """The stages of one point of a sweep and the workdirs the sweep itself makes."""
    point_dir = os.path.join(workdir, "points", name)
    stages = stage_configs(point, point_dir)
    planned = tuple(d for _, _, d in stages)
    if config.get("pretrain") is not None:
        planned += (os.path.join(workdir, "pretrain"),)
    return point_dir, stages, planned


def plan(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Lines: per point and stage, its workdir, steps, data files, init_from, missing inputs."""
    lines = []
    for name, spec in dict(config.point.get("eval", {}).get("benchmarks", {})).items():
        files = ", ".join(str(v) for v in dict(spec.get("files", {})).values())
        lines.append(f"eval {name} ({spec.get('kind')}, {spec.get('family')}): {files}")
    for name, point in make_points(config, workdir):
        point_dir, stages, planned = point_inputs(config, name, point, workdir)
        lines.append(f"point {name}: {point_dir}")
        for stage, cfg, d in stages:
            lines.append(f"  stage {stage}: {d} (steps {cfg.train.steps}, batch "
                         f"{cfg.train.batch_size}, lr {cfg.optim.lr})")
            for _, key, path in input_paths([(stage, cfg, d)]):
                lines.append(f"    {key}: {path}")
        lines += [f"    MISSING {m}" for m in missing_inputs(stages, planned)]
    return lines


def read_done(path: str) -> dict | None:
    """The JSON record at `path` (local or gs://) if that step is done, else None."""
    if "://" in path:  # a pod's workdir
        from etils import epath
        p = epath.Path(path)
        return json.loads(p.read_text()) if p.exists() else None
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def latest_step_on_disk(workdir: str) -> int | None:
    """The newest committed checkpoint step under `workdir/checkpoints` (read-only look)."""
    path = os.path.join(workdir, "checkpoints")
    steps = [int(n) for n in (os.listdir(path) if os.path.isdir(path) else []) if n.isdigit()]
    return max(steps, default=None)


def stage_record(name: str, workdir: str, summary: dict, previous: dict | None,
                 wall_time_s: float, resumed_from: int | None) -> dict:
    """What a finished stage leaves in `stage.json`. `previous`: an earlier run summary, whose
    loss is kept when this run had no step left to train (killed after its last checkpoint)."""
    loss = summary["final_metrics"].get("loss")
    if loss is None and previous:
        loss = previous.get("final_metrics", {}).get("loss")
    return {"name": name, "workdir": workdir, "param_fingerprint": summary["param_fingerprint"],
            "final_step": summary["final_step"], "train_loss": loss,
            "wall_time_s": wall_time_s, "resumed_from_step": resumed_from}


def result_row(config: ml_collections.ConfigDict, workdir: str, stages: list[dict],
               result: dict, n_params: int, cfg) -> dict:
    """One table row of a finished point: its grid coordinates, scores, costs and stages."""
    cost = result["cost"]
    last = stages[-1]
    return {"name": os.path.basename(os.path.normpath(workdir)), "llm": config.get("llm_name", ""),
            "N": n_params, "V": cfg.num_visual_tokens, "compressor": cfg.compressor.name,
            "text_tokens": cost["text_tokens"], "score": result["overall"],
            "families": result["families"], "tasks": result["tasks"],
            "benchmarks": result.get("benchmarks", {}), "ttft_ms": cost["ttft_ms"],
            "decode_ms_per_token": cost["decode_ms_per_token"],
            "prefill_gflops": cost["flops"]["total"] / 1e9, "flops": cost["flops"],
            "train_loss": last["train_loss"], "train_steps": last["final_step"],
            "param_fingerprint": last["param_fingerprint"], "stages": stages,
            "train_wall_time_s": sum(s["wall_time_s"] for s in stages),
            **_family_columns(config, result)}


def _family_columns(config: ml_collections.ConfigDict, result: dict) -> dict:
    """`score_<family>`, `stderr_<family>`, `blind_<family>` from the eval's per-question records
    of the configured eval tasks (benchmark scores carry their own official metrics instead)."""
    from vlm_jax.eval.evaluator import task_table
    from vlm_jax.eval.families import family_stats
    metric_of = {t: m for t, (m, _) in task_table(config.get("eval", {})).items()}
    records = [r for r in result.get("records", ()) if r.get("task") in metric_of]
    return family_stats(records, metric_of) if records else {}


def run_sweep(config: ml_collections.ConfigDict, workdir: str, run: executors.Run | None = None
              ) -> dict:
    """Runs every missing point with the configured executor, then tabulates and fits.

    `run(config, workdir)` runs one point in this process (the inprocess executor's).
    Every point's inputs are checked first (`sweep.check_inputs`, default on), so a missing
    file is reported before any compile or pod; a dry run prints the whole plan instead.
    """
    t0 = time.time()
    config = ml_collections.ConfigDict(substitute(config.to_dict(), {"workdir": workdir}))
    if config.get("assets") is not None:  # a rehearsal's stand-in data and checkpoints
        from vlm_jax.scaling import rehearsal
        rehearsal.build(config.assets)
    executor = executors.make(config.get("executor", "inprocess"), run)
    dry_run = getattr(executor, "dry_run", False)
    points = make_points(config, workdir)
    if dry_run:
        print("\n".join(["# sweep plan", *plan(config, workdir)]))
    elif sweep_config(config).check_inputs:
        bad = [m for name, p in points for m in missing_inputs(*point_inputs(config, name, p,
                                                                             workdir)[1:])]
        if bad:
            raise FileNotFoundError("sweep inputs missing (nothing was started):\n  "
                                    + "\n  ".join(sorted(set(bad))))
        benchmarks = config.point.get("eval", {}).get("benchmarks")
        if benchmarks:  # read once (every point evaluates the same files), images checked
            from vlm_jax.data.benchmarks import read_all
            read_all(benchmarks)
    os.makedirs(os.path.join(workdir, "points"), exist_ok=True)
    if config.get("pretrain") is not None:
        pre_dir = os.path.join(workdir, "pretrain")
        if not os.path.exists(os.path.join(pre_dir, "run_summary.json")):
            log.info("sweep: stage-0 pretraining in %s", pre_dir)
            executor.run("pretrain", config.pretrain, pre_dir)
    failed = []
    for name, cfg in points:
        point_dir = os.path.join(workdir, "points", name)
        if os.path.exists(os.path.join(point_dir, RESULT)):
            log.info("sweep: %s done, skipping", name)
            continue
        log.info("sweep: running %s", name)
        try:
            executor.run(name, cfg, point_dir)
        except executors.PointFailed as e:
            log.error("%s", e)
            failed.append(e)
    executor.wait()
    if failed:
        raise executors.PointFailed(
            ", ".join(e.name for e in failed), "; ".join(e.log for e in failed),
            f"{len(failed)} of {len(points)} point(s); rerun the same command to resume")
    rows = collect(workdir, [n for n, _ in points])
    summary = tabulate_and_fit(config, workdir, rows)
    summary["wall_time_s"] = time.time() - t0
    write_json_atomic(os.path.join(workdir, "sweep_summary.json"), summary)
    print(format_summary(summary))
    print(f"results: {os.path.join(workdir, 'results.csv')} (and results.json), fit: "
          f"{os.path.join(workdir, 'fit.json')}, plots: {os.path.join(workdir, 'plots')}/",
          flush=True)
    return summary


def collect(workdir: str, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        path = os.path.join(workdir, "points", name, "result.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"sweep point {name} has no result ({path}); did it fail?")
        with open(path) as f:
            rows.append(json.load(f))
    return rows


def tabulate_and_fit(config, workdir: str, rows: list[dict]) -> dict:
    """Writes results.{csv,json}, fit.json and the plots (vlm_jax.scaling.report)."""
    sweep = sweep_config(config)
    families = list(sweep.families)
    q = float(sweep.text_tokens or sum(r["text_tokens"] for r in rows) / len(rows))
    return report.tabulate_and_fit(workdir, rows, families, q)


format_summary = report.format_summary
