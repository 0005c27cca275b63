"""The official metric of each benchmark of the LLaVA-1.5 suite, on (item, prediction) pairs.

`score(kind, items, predictions) -> dict`: `score` (in [0, 1], the number the benchmark
reports, as a fraction), `n`, and the breakdown the benchmark reports. Items come from
`vlm_jax.data.benchmarks.read`; `predictions` maps item id -> generated text.

- gqa: exact match of the lower-cased prediction without its trailing period (the GQA
  evaluation on LLaVA's converted answers); per structural type.
- vqav2, vizwiz, textvqa: VQA accuracy (`answer_metrics.vqa_accuracy`, official normalisation);
  per answer type where the file has one.
- scienceqa, seed: accuracy of the option letter read from the prediction
  (`answer_metrics.extract_choice`); per subject / question type.
- mmbench: circular accuracy (a question counts only if every circular variant of it,
  same `index % 1e6`, is right) and plain accuracy; per category.
- pope: LLaVA's POPE evaluation: the first sentence, commas removed, is "no" if it holds the
  word no / not, else "yes"; accuracy, precision, recall, F1, yes ratio per category; `score`
  is the mean F1 over categories.
- mme: per subtask acc (per question) + acc+ (per image: both questions right), each in
  percent; a prediction is yes / no if it is that word, else by its first 4 characters, else
  wrong. `perception` (10 subtasks, of 2000) and `cognition` (4, of 800) apart; `score` is
  their sum over 2800.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

from vlm_jax.data import benchmarks as bench_lib
from vlm_jax.eval import answer_metrics


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def _by(items, values, key: str) -> dict[str, float]:
    groups = collections.defaultdict(list)
    for it, v in zip(items, values):
        groups[it["meta"].get(key, "")].append(v)
    return {k: _mean(v) for k, v in sorted(groups.items()) if k}


def gqa_correct(prediction: str, answer: str) -> float:
    return float(prediction.strip().rstrip(".").lower() == answer.strip().lower())


def pope_answer(prediction: str) -> str:
    """LLaVA's POPE parse: first sentence, no commas; "no" if it has the word no/not."""
    text = prediction.split(".")[0].replace(",", "")
    words = text.split()
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def mme_answer(prediction: str) -> str:
    """MME's parse: "yes" / "no" as the whole answer, else by its first 4 characters."""
    p = prediction.strip().lower()
    if p in ("yes", "no"):
        return p
    head = p[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def _choice_correct(it, pred) -> float:
    letters = list(bench_lib.LETTERS[: len(it["meta"]["options"])])
    return answer_metrics.multiple_choice(pred, dict(zip(letters, it["meta"]["options"])), it["answers"][0])


def _pope(items, preds) -> dict:
    out, f1s = {}, []
    for cat in dict.fromkeys(it["meta"]["category"] for it in items):
        sub = [(it, p) for it, p in zip(items, preds) if it["meta"]["category"] == cat]
        s = answer_metrics.yes_no_scores([pope_answer(p) for _, p in sub],
                                  [it["answers"][0] for it, _ in sub])
        out[cat] = {k: s[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio", "n")}
        f1s.append(s["f1"])
    return {"score": _mean(f1s), "accuracy": _mean(v["accuracy"] for v in out.values()),
            "categories": out}


def _mme(items, preds) -> dict:
    right = [float(mme_answer(p) == it["answers"][0].lower()) for it, p in zip(items, preds)]
    tasks = {}
    for task in bench_lib.MME_PERCEPTION + bench_lib.MME_COGNITION:
        rows = [(it, r) for it, r in zip(items, right) if it["meta"]["subtask"] == task]
        if not rows:
            continue
        per_image = collections.defaultdict(list)
        for it, r in rows:
            per_image[it["meta"]["image_key"]].append(r)
        acc = 100 * _mean(r for _, r in rows)
        acc_plus = 100 * _mean(float(all(v)) for v in per_image.values())
        tasks[task] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}
    perception = sum(tasks[t]["score"] for t in bench_lib.MME_PERCEPTION if t in tasks)
    cognition = sum(tasks[t]["score"] for t in bench_lib.MME_COGNITION if t in tasks)
    return {"score": (perception + cognition) / (200 * len(tasks)), "perception": perception,
            "cognition": cognition, "subtasks": tasks}


def _mmbench(items, preds) -> dict:
    right = [_choice_correct(it, p) for it, p in zip(items, preds)]
    groups = collections.defaultdict(list)
    cats = {}
    for it, r in zip(items, right):
        groups[it["meta"]["group"]].append(r)
        cats[it["meta"]["group"]] = it["meta"].get("category", "")
    circular = {g: float(all(v)) for g, v in groups.items()}
    per_cat = collections.defaultdict(list)
    for g, v in circular.items():
        per_cat[cats[g]].append(v)
    return {"score": _mean(circular.values()), "plain_accuracy": _mean(right),
            "questions": len(groups), "categories": {k: _mean(v) for k, v in per_cat.items() if k}}


def score(kind: str, items: Sequence[dict], predictions: Mapping[str, str]) -> dict:
    """The benchmark's official score of `predictions` (item id -> text) on `items`."""
    missing = [it["id"] for it in items if it["id"] not in predictions]
    if missing:
        raise ValueError(f"{kind}: no prediction for {len(missing)} item(s), e.g. {missing[:3]}")
    preds = [predictions[it["id"]] for it in items]
    if kind == "pope":
        out = _pope(items, preds)
    elif kind == "mme":
        out = _mme(items, preds)
    elif kind == "mmbench":
        out = _mmbench(items, preds)
    elif kind == "gqa":
        right = [gqa_correct(p, it["answers"][0]) for it, p in zip(items, preds)]
        out = {"score": _mean(right), "structural": _by(items, right, "structural")}
    elif kind in ("vqav2", "vizwiz", "textvqa"):
        acc = [answer_metrics.vqa_accuracy(p, it["answers"]) for it, p in zip(items, preds)]
        out = {"score": _mean(acc), "answer_type": _by(items, acc, "answer_type")}
    elif kind in ("scienceqa", "seed"):
        right = [_choice_correct(it, p) for it, p in zip(items, preds)]
        key = "subject" if kind == "scienceqa" else "question_type"
        out = {"score": _mean(right), key: _by(items, right, key)}
    else:
        raise ValueError(f"unknown benchmark kind {kind!r}; known: {sorted(bench_lib.READERS)}")
    return {**out, "n": len(items)}


# The cheap per-record metric the evaluator applies while generating (the official score
# above replaces it).
RECORD_METRIC = {"gqa": "exact_match", "vqav2": "vqa", "vizwiz": "vqa", "textvqa": "vqa",
                 "pope": "yes_no", "mme": "exact_match", "mmbench": "exact_match",
                 "scienceqa": "exact_match", "seed": "exact_match"}
