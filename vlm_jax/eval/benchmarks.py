"""Evaluate a VLM on benchmarks read from their own files, scored with their official metrics.

`config.eval.benchmarks`: name -> {"kind" (a `vlm_jax.data.benchmarks` reader), "files",
"image_folder", "family" (e.g. reasoning | ocr), "limit" (first N questions; -1 = all)}.
`prepare` reads every benchmark (`vlm_jax.data.benchmarks.read_all`: errors name the file,
every image must exist); the items go to one LLaVA-style eval jsonl so a single loader and
one compiled generator serve all of them. `evaluate_benchmarks` generates, scores each
benchmark with `benchmark_metrics.score`, and reports `tasks` (benchmark -> official score),
`families` (mean of a family's benchmarks), `overall` and `benchmarks` (the full breakdowns).
"""

from __future__ import annotations

import base64
import copy
import json
import os
from typing import Any

import ml_collections

from vlm_jax.data import benchmarks as bench_lib
from vlm_jax.eval import benchmark_metrics
from vlm_jax.eval.evaluator import evaluate_config


def prepare(benchmarks: Any, out_dir: str) -> tuple[str, dict]:
    """Writes `out_dir/benchmarks.jsonl` (+ decoded base64 images); returns it and `read_all`."""
    read = bench_lib.read_all(benchmarks)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "benchmarks.jsonl")
    with open(path + ".tmp", "w") as f:
        for name, (_, items) in read.items():
            for it in items:
                image = it.get("image")
                if image is None:  # MMBench ships its images inside the TSV
                    folder = os.path.join(out_dir, "benchmark_images", name)
                    os.makedirs(folder, exist_ok=True)
                    image = os.path.join(folder, it["id"].split(":", 1)[1].replace("/", "_"))
                    with open(image, "wb") as img:
                        img.write(base64.b64decode(it["image_b64"]))
                f.write(json.dumps({"question_id": it["id"], "image": os.path.abspath(image),
                                    "text": it["question"], "answers": it["answers"],
                                    "category": name}) + "\n")
    os.replace(path + ".tmp", path)
    return path, read


def eval_config(config: ml_collections.ConfigDict, jsonl: str, read: dict
                ) -> ml_collections.ConfigDict:
    """`config` evaluating the prepared jsonl (its own data keys, source vqa_eval)."""
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        cfg.data.source = "vqa_eval"
        cfg.data.files = ml_collections.ConfigDict({"test": jsonl})
        cfg.data.image_folder, cfg.data.task, cfg.data.question_suffix = "", "", ""
        ev = {k: v for k, v in cfg.eval.to_dict().items() if k != "benchmarks"}
        ev.update(split="test", num_examples=-1, tasks={
            name: (benchmark_metrics.RECORD_METRIC[spec["kind"]], spec["family"])
            for name, (spec, _) in read.items()})
        cfg.eval = ml_collections.ConfigDict(ev)
    return cfg


def evaluate_benchmarks(config: ml_collections.ConfigDict, params: Any, workdir: str) -> dict:
    """Generates on every benchmark of `config.eval.benchmarks` and scores them officially."""
    jsonl, read = prepare(config.eval.benchmarks, workdir)
    result = evaluate_config(eval_config(config, jsonl, read), params)
    predictions = {r["id"]: r["prediction"] for r in result["records"]}
    scores = {name: benchmark_metrics.score(spec["kind"], items, predictions)
              for name, (spec, items) in read.items()}
    families: dict[str, list[float]] = {}
    for name, (spec, _) in read.items():
        families.setdefault(spec["family"], []).append(scores[name]["score"])
    tasks = {name: s["score"] for name, s in scores.items()}
    result.update(tasks=tasks, benchmarks=scores,
                  families={f: sum(v) / len(v) for f, v in families.items()},
                  overall=sum(tasks.values()) / len(tasks))
    return result
