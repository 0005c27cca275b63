"""Per-family score, standard error and image-blind prior of one evaluation's records.

A family's score is the mean of its tasks' mean scores (as `answer_metrics.aggregate` reports it), so
its standard error combines the tasks' sample variances: `sqrt(sum_t var_t / n_t) / T`. The
blind prior is the best score an answer chosen without the image can reach on the same
questions: per question type, the single answer that scores best on that type's questions.
A question's type is its text with every word that is an answer of some record (or its plural)
masked (the suite's answers are its colours, shapes, sizes, counts, ...: "what color is the
circle?" and "what color is the square?" are one type), so the prior cannot memorise
individual questions. With few questions per type the prior is biased upwards (the best of
several answers on a small sample), which only makes a comparison against it stricter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from vlm_jax.eval import answer_metrics

_WORD = re.compile(r"[a-z0-9]+")


def _is_answer_word(word: str, answer_words: set[str]) -> bool:
    """An answer word or its plural ("circles" when "circle" is an answer)."""
    return word in answer_words or (word.endswith("s") and word[:-1] in answer_words) or (
        word.endswith("es") and word[:-2] in answer_words)


def question_type(question: str, answer_words: set[str]) -> str:
    """`question` with answer words (and their plurals) replaced by '_' (lower case,
    punctuation dropped)."""
    return " ".join("_" if _is_answer_word(w, answer_words) else w
                    for w in _WORD.findall(question.lower()))


def blind_scores(records: Sequence[Mapping], metric_of: Mapping[str, str]) -> dict[str, float]:
    """task -> the best image-blind score on its records (each needs question and answer).

    metric_of: task -> metric name of `answer_metrics.METRICS` used to score candidate answers.
    """
    answer_words = {w for r in records for w in _WORD.findall(str(r["answer"]).lower())}
    by_type: dict[tuple[str, str], list[Mapping]] = {}
    for r in records:
        by_type.setdefault((r["task"], question_type(r["question"], answer_words)), []).append(r)
    totals: dict[str, list[float]] = {}
    for (task, _), recs in by_type.items():
        score = answer_metrics.get_metric(metric_of[task])
        candidates = sorted({str(r["answer"]) for r in recs})
        best = max(sum(score(c, {"answer": r["answer"], "answers": [r["answer"]]}) for r in recs)
                   for c in candidates)
        t = totals.setdefault(task, [0.0, 0.0])
        t[0] += best
        t[1] += len(recs)
    return {task: s / n for task, (s, n) in totals.items()}


def family_stats(records: Sequence[Mapping], metric_of: Mapping[str, str]) -> dict[str, float]:
    """{'score_<family>', 'stderr_<family>', 'blind_<family>', 'n_<family>'} for every family.

    records: per-question dicts with task, family, score, question and answer (the
    evaluator's records). metric_of: task -> metric name (for the blind prior).
    """
    if not records:
        raise ValueError("family_stats: no records")
    for i, r in enumerate(records):
        missing = [k for k in ("task", "family", "score", "question", "answer") if k not in r]
        if missing:
            raise ValueError(f"family_stats: record {i} lacks {missing}")
    scores: dict[str, dict[str, list[float]]] = {}
    for r in records:
        scores.setdefault(r["family"], {}).setdefault(r["task"], []).append(float(r["score"]))
    blind = blind_scores(records, metric_of)
    out = {}
    for fam, tasks in sorted(scores.items()):
        means = [np.mean(s) for s in tasks.values()]
        var = sum(np.var(s, ddof=1) / len(s) if len(s) > 1 else math.inf for s in tasks.values())
        out[f"score_{fam}"] = float(np.mean(means))
        out[f"stderr_{fam}"] = float(math.sqrt(var) / len(tasks))
        out[f"blind_{fam}"] = float(np.mean([blind[t] for t in tasks]))
        out[f"n_{fam}"] = sum(len(s) for s in tasks.values())
    return out
