"""Evaluate a VLM on an eval loader: greedy answers, per-task metrics, and costs beside them.

Every result carries its cost: visual tokens, text tokens, per-component FLOPs
(vlm_jax.models.flops), measured time to first token and decode time per token.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from vlm_jax import batch as batch_lib
from vlm_jax import data as data_lib
from vlm_jax import models
from vlm_jax.config_args import merge_defaults
from vlm_jax.eval import answer_metrics
from vlm_jax.eval.generate import Generator
from vlm_jax.models import flops as flops_lib

log = logging.getLogger(__name__)

# Synthetic suite: task -> (metric, family). Other sources name their task in the config.
SYNTHETIC_TASKS = {
    "count": ("exact_match", "reasoning"), "exist": ("yes_no", "reasoning"),
    "attribute": ("exact_match", "reasoning"), "spatial": ("exact_match", "reasoning"),
    "compare": ("exact_match", "reasoning"), "ocr": ("exact_match", "ocr"),
    "caption": ("exact_match", "caption"),
}


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        split="test", batch_size=32, max_new_tokens=6, num_examples=-1,  # -1: the whole split
        tasks={},  # task -> (metric, family), overriding/adding to SYNTHETIC_TASKS
    ))


def task_table(eval_cfg) -> dict[str, tuple[str, str]]:
    table = dict(SYNTHETIC_TASKS)
    table.update({k: tuple(v) for k, v in dict(eval_cfg.get("tasks", {})).items()})
    return table


def evaluate(module: models.VLM, params: Any, loader: data_lib.Loader, *, max_new_tokens: int,
             tasks: dict[str, tuple[str, str]] | None = None, prune=None,
             num_examples: int = -1) -> dict:
    """Greedy-decodes every example of `loader` (eval mode) and scores it.

    Returns {"tasks", "families", "overall", "counts", "records", "cost"}.
    """
    tok = loader.tokenizer
    tasks = tasks or SYNTHETIC_TASKS
    gen = Generator(module, max_new_tokens, stop_ids=(tok.eos_id,), pad_id=tok.pad_id, prune=prune)
    records, prefill_s, decode_s, text_tokens = [], [], [], []
    keys = batch_lib.vlm_keys(module.cfg.uses_text_query)
    for batch in loader:
        arrays, meta = data_lib.split_batch(batch)
        inputs = batch_lib.model_inputs(arrays, keys)
        if not prefill_s:
            gen(params, inputs)  # compile; timings below are steady-state
        out = gen(params, inputs)
        prefill_s.append(out.prefill_s)
        decode_s.append(out.decode_s_per_token)
        keep = np.flatnonzero(arrays["example_mask"])
        n_prompt = arrays["valid"].sum(1) - (arrays["tokens"] == module.cfg.image_token_id).sum(1)
        for i in keep:
            task = str(meta["task"][i])
            if task not in tasks:
                raise ValueError(f"no metric for task {task!r} (example {meta['id'][i]}); add it "
                                 f"to eval.tasks as task: (metric, family)")
            metric, family = tasks[task]
            pred = tok.decode(out.tokens[i, : out.lengths[i]])
            example = {"answer": meta["answer"][i], "answers": list(meta["answers"][i])}
            records.append({"id": str(meta["id"][i]), "task": task, "family": family,
                            "score": answer_metrics.METRICS[metric](pred, example),
                            "prediction": pred, "answer": str(meta["answer"][i]),
                            "question": tok.decode(arrays["question"][i][
                                arrays["question_valid"][i]])})
            text_tokens.append(int(n_prompt[i]))
        if 0 < num_examples <= len(records):
            break
    if not records:
        raise ValueError("the eval loader yielded no examples")
    result = answer_metrics.aggregate([{k: r[k] for k in ("task", "family", "score")} for r in records])
    result["records"] = records
    result["cost"] = cost_report(module.cfg, float(np.mean(text_tokens)), prefill_s, decode_s,
                                 batch_size=loader.batch_size)
    return result


def cost_report(cfg, text_tokens: float, prefill_s: list[float], decode_s: list[float],
                batch_size: int, schedule=None) -> dict:
    """Visual / text tokens, per-component FLOPs per example, measured (warm) latencies of a
    batch: time to first token and decode time per token."""
    fl = flops_lib.vlm_flops(cfg, text_tokens=int(round(text_tokens)), schedule=schedule)
    return {"visual_tokens": cfg.num_visual_tokens, "text_tokens": text_tokens,
            "flops": {k: float(v) for k, v in fl.items()},
            "ttft_ms": 1e3 * float(np.median(prefill_s)),
            "decode_ms_per_token": 1e3 * float(np.median(decode_s)),
            "batch_size": batch_size, "timed_batches": len(prefill_s)}


def evaluate_config(config: ml_collections.ConfigDict, params: Any) -> dict:
    """Evaluates `params` of the model in `config` on `config.eval`."""
    ecfg = merge_defaults(config.get("eval", {}), default_config(), "eval", whole=("tasks",))
    from vlm_jax.train import data_feed
    feed = data_feed.make(config, split=ecfg.split, mode="eval", batch_size=ecfg.batch_size,
                          batch_key="eval.batch_size")
    module = models.build(config.model)
    result = evaluate(module, jax.device_put(params), feed.loader, max_new_tokens=ecfg.max_new_tokens,
                      tasks=task_table(ecfg), num_examples=ecfg.num_examples)
    log.info("eval %s: overall %.3f  %s", ecfg.split, result["overall"],
                 {k: round(v, 3) for k, v in result["tasks"].items()})
    return result


def evaluate_run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """mode=eval: evaluate the latest checkpoint in `workdir` (the config's eval section)."""
    from vlm_jax.io import write_json_atomic
    from vlm_jax.train.checkpoint import load_run
    _, params = load_run(workdir)
    result = evaluate_config(config, params)
    write_json_atomic(os.path.join(workdir, "eval.json"), {k: v for k, v in result.items()})
    return result
