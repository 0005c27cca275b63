"""Task metrics for VLM evaluation: VQA accuracy, exact match, multiple choice, yes/no (POPE).

Every metric is pure Python on strings. `METRICS[name](prediction, example) -> float` gives one
calling convention so an evaluator picks a metric by name per task; `aggregate` turns
per-example records into per-task, per-family and overall means.

Answer normalisation follows the official VQA evaluation (VQA-Challenge `vqaEval.py`), which
every LLaVA-style paper reports with:
  1. newlines/tabs become spaces, surrounding whitespace is dropped, text is lower-cased;
  2. punctuation: each mark in `_PUNCT` is deleted if it touches a space somewhere in the text
     (or the text holds a digit-comma-digit group such as "1,000"), otherwise it becomes a
     space ("black/white" -> "black white", "1,000" -> "1000"); then every period not followed
     by a digit is deleted, so "3.5" keeps its decimal point but "dogs." loses its full stop;
  3. per word: number words zero..ten (and "none") become digits, the articles a/an/the are
     dropped, and apostrophe-less contractions get their apostrophes back ("dont" -> "don't");
  4. words are re-joined with single spaces.
Unlike the official script (which skips step 2-3 when all ten human answers agree) we always
normalise both prediction and references, as LLaVA's EvalAI answer processor does; this only
ever turns a spurious mismatch into a match.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

# --- VQA answer normalisation -----------------------------------------------------------------

_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
          "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})

# Contracted forms the official evaluation restores. Each is reached from any spelling that
# lacks exactly one of its apostrophes ("couldn't've" from "couldnt've" and "couldn'tve").
# Left out on purpose, to score exactly as the official script does: its capitalised keys
# ("Im", "Ive", "Id've") never fire after lower-casing, and "she's"/"let's" map to themselves.
# (It spells "somebody'd" as "somebodyd"; we restore the apostrophe instead: same matches.)
_CONTRACTED_FORMS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't
mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've
should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd
someone'd've someone'll someone's something'd something'd've something'll that's there'd
there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've
we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've
who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll
y'all'd've you'd you'd've you'll you're you've
""".split()


def _contraction_table(forms: Sequence[str]) -> dict[str, str]:
    table = {}
    for form in forms:
        for i, ch in enumerate(form):
            if ch == "'":
                table[form[:i] + form[i + 1:]] = form
    return table


_CONTRACTIONS = _contraction_table(_CONTRACTED_FORMS)


def _strip_punctuation(text: str) -> str:
    """Step 2 of the module docstring (the official `processPunctuation`)."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCT:
        touches_space = (mark + " ") in text or (" " + mark) in text
        out = out.replace(mark, "" if (touches_space or delete_all) else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def normalize_answer(text: str) -> str:
    """Official VQA answer normalisation (see module docstring): "Two dogs." -> "2 dogs"."""
    if not isinstance(text, str):
        raise TypeError(f"metrics.normalize_answer: expected str, got {type(text).__name__}")
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    words = []
    for word in _strip_punctuation(text).split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


# --- Open-ended answers -----------------------------------------------------------------------

def exact_match(prediction: str, answer: str, normalize: bool = True) -> float:
    """1.0 if prediction equals answer (both normalised unless `normalize=False`), else 0.0."""
    if normalize:
        return float(normalize_answer(prediction) == normalize_answer(answer))
    return float(prediction == answer)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against human answers (all normalised).

    10 answers (VQAv2 / TextVQA / VizWiz): the official leave-one-out mean, i.e. the mean over the
    10 subsets of 9 answers of min(#subset answers equal to the prediction / 3, 1).
    1 answer: exact match. Any other count: min(#answers equal to the prediction / 3, 1).
    """
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError(f"metrics.vqa_accuracy: `answers` must be a non-empty list of str, "
                         f"got {answers!r}")
    pred = normalize_answer(prediction)
    hits = [normalize_answer(a) == pred for a in answers]
    if len(hits) == 1:
        return float(hits[0])
    n_match = sum(hits)
    if len(hits) != 10:
        return min(n_match / 3.0, 1.0)
    # Leaving out a matching answer leaves n_match - 1 matches among the other nine.
    return sum(min((n_match - h) / 3.0, 1.0) for h in hits) / len(hits)


# --- Multiple choice --------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _option_map(options: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """{letter: option text}; list options get letters A, B, ...; None/NaN options are dropped
    (MMBench tables leave unused options empty)."""
    if isinstance(options, Mapping):
        items = list(options.items())
    elif isinstance(options, Sequence) and not isinstance(options, str):
        if len(options) > len(_LETTERS):
            raise ValueError(f"metrics: at most {len(_LETTERS)} options, got {len(options)}")
        items = list(zip(_LETTERS, options))
    else:
        raise ValueError(f"metrics: `options` must be a dict letter->text or a list, got {options!r}")
    out = {}
    for key, text in items:
        if not (isinstance(key, str) and len(key) == 1 and key.upper() in _LETTERS):
            raise ValueError(f"metrics: option key must be a single letter A-Z, got {key!r}")
        if not _is_missing(text):
            out[key.upper()] = str(text)
    if not out:
        raise ValueError(f"metrics: no usable option in {options!r}")
    return out


def _phrase_in(phrase: str, text: str) -> bool:
    return bool(phrase) and re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def extract_choice(prediction: str, options: Mapping[str, str] | Sequence[str]) -> str | None:
    """The option letter a free-form prediction picks, or None if it picks none unambiguously.

    Tried in order: a bare letter ("B", "b", "B.", "(B)"); a leading marked letter ("B) text",
    "B. text", "B: text", "(B) text", "[B] text"); "answer is B" / "Answer: (B)" (capital letter,
    so "the answer is a cat" is not read as A); the option
    text itself (normalised exact match, then the one option whose text appears in the
    prediction; of nested matches such as "red" in "dark red" the longest wins).
    """
    opts = _option_map(options)
    text = prediction.strip()
    bare = text.strip(" .:)(][").upper()
    if bare in opts:
        return bare
    lead = re.match(r"^\s*(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Z])[.):])(?:\s|$)", text)
    if lead:
        letter = next(g for g in lead.groups() if g).upper()
        if letter in opts:
            return letter
    said = re.search(r"(?i:\banswer)(?:\s+is)?\s*:?\s*\(?([A-Z])\)?(?![\w'])", text)
    if said and said.group(1).upper() in opts:
        return said.group(1).upper()
    norm_pred = normalize_answer(text)
    norm_opts = {k: normalize_answer(v) for k, v in opts.items()}
    exact = [k for k, v in norm_opts.items() if v and v == norm_pred]
    if len(exact) == 1:
        return exact[0]
    found = [k for k, v in norm_opts.items() if _phrase_in(v, norm_pred)]
    # Drop options whose text lies inside another found option's text ("red" in "dark red").
    found = [k for k in found
             if not any(j != k and norm_opts[k] != norm_opts[j] and _phrase_in(norm_opts[k],
                                                                              norm_opts[j])
                        for j in found)]
    return found[0] if len(found) == 1 else None


def _resolve_letter(answer: str, opts: dict[str, str]) -> str:
    """The gold letter: a letter among the options, or (fallback) an option's exact text."""
    key = answer.strip().strip("().").upper()
    if key in opts:
        return key
    by_text = [k for k, v in opts.items() if normalize_answer(v) == normalize_answer(answer)]
    if len(by_text) == 1:
        return by_text[0]
    raise ValueError(f"metrics.multiple_choice: answer {answer!r} is neither an option letter "
                     f"{sorted(opts)} nor the text of exactly one option")


def multiple_choice(prediction: str, options: Mapping[str, str] | Sequence[str],
                    answer_letter: str) -> float:
    """1.0 if `extract_choice(prediction, options)` is `answer_letter`, else 0.0."""
    opts = _option_map(options)
    return float(extract_choice(prediction, opts) == _resolve_letter(answer_letter, opts))


# --- Yes / no (POPE) --------------------------------------------------------------------------

def yes_no(prediction: str) -> str | None:
    """"yes"/"no" from the first word of the prediction that is yes or no (any case), else None.

    "No, there is not." -> "no"; "I think yes" -> "yes"; "There is a dog." -> None.
    """
    for word in re.findall(r"[a-z]+", prediction.lower()):
        if word in ("yes", "no"):
            return word
    return None


def _label(label: str, where: str) -> str:
    if not isinstance(label, str) or label.strip().lower() not in ("yes", "no"):
        raise ValueError(f"metrics.{where}: label must be 'yes' or 'no', got {label!r}")
    return label.strip().lower()


def yes_no_scores(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """POPE scores with "yes" as the positive class.

    An unparseable prediction (no yes/no word) counts as wrong: it is never a true positive,
    true negative or false positive, so on a "yes" label it is a false negative. Any 0/0 ratio
    is 0.0. Returns accuracy, precision, recall, f1, yes_ratio (share of predictions parsed as
    "yes") and the counts n, tp, fp, tn, fn, unparsed.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"metrics.yes_no_scores: {len(predictions)} predictions but "
                         f"{len(labels)} labels")
    if not predictions:
        raise ValueError("metrics.yes_no_scores: no predictions")
    tp = fp = tn = fn = unparsed = n_yes = 0
    for pred_text, label in zip(predictions, labels):
        pred, gold = yes_no(pred_text), _label(label, "yes_no_scores")
        unparsed += pred is None
        n_yes += pred == "yes"
        if gold == "yes":
            tp += pred == "yes"
            fn += pred != "yes"
        else:
            fp += pred == "yes"
            tn += pred == "no"
    n = len(predictions)
    div = lambda a, b: a / b if b else 0.0
    precision, recall = div(tp, tp + fp), div(tp, tp + fn)
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall,
            "f1": div(2 * precision * recall, precision + recall), "yes_ratio": n_yes / n,
            "n": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "unparsed": unparsed}


# --- Registry: metric(prediction, example) -> float -------------------------------------------

def _field(example: Mapping, key: str, metric: str):
    if key not in example:
        raise ValueError(f"metrics[{metric!r}]: example lacks key {key!r} (has {sorted(example)})")
    return example[key]


def _vqa_metric(prediction: str, example: Mapping) -> float:
    answers = example["answers"] if "answers" in example else [_field(example, "answer", "vqa")]
    return vqa_accuracy(prediction, answers)


def _exact_match_metric(prediction: str, example: Mapping) -> float:
    if "answer" in example:
        return exact_match(prediction, example["answer"])
    answers = _field(example, "answers", "exact_match")
    return max((exact_match(prediction, a) for a in answers), default=0.0)


def _multiple_choice_metric(prediction: str, example: Mapping) -> float:
    return multiple_choice(prediction, _field(example, "options", "multiple_choice"),
                           _field(example, "answer", "multiple_choice"))


def _yes_no_metric(prediction: str, example: Mapping) -> float:
    return float(yes_no(prediction) == _label(_field(example, "answer", "yes_no"), "yes_no"))


METRICS: dict[str, Callable[[str, Mapping], float]] = {
    "vqa": _vqa_metric,  # example["answers"] (list) or example["answer"]
    "exact_match": _exact_match_metric,  # example["answer"] (or best over example["answers"])
    "multiple_choice": _multiple_choice_metric,  # example["options"], example["answer"] (letter)
    "yes_no": _yes_no_metric,  # example["answer"] in {"yes", "no"}
}


def get_metric(name: str) -> Callable[[str, Mapping], float]:
    """METRICS[name], with an error listing the known names."""
    if name not in METRICS:
        raise ValueError(f"metrics: unknown metric {name!r}; known: {sorted(METRICS)}")
    return METRICS[name]


# --- Aggregation ------------------------------------------------------------------------------

def aggregate(records: Sequence[Mapping]) -> dict:
    """Summarise per-example records `{"task", "family", "score"}`.

    Returns {"tasks": {task: mean score}, "families": {family: mean of its task means},
    "overall": mean of task means, "counts": {"tasks": {task: n}, "families": {family: n},
    "total": n}}. Records that also carry "prediction" and "label" (yes/no tasks) add
    {"yes_no": {task: yes_no_scores(...)}} for every task whose records all carry them.
    A task must belong to one family.
    """
    if not records:
        raise ValueError("metrics.aggregate: no records")
    scores: dict[str, list[float]] = {}
    family_of: dict[str, str] = {}
    yn: dict[str, tuple[list[str], list[str]] | None] = {}
    for i, rec in enumerate(records):
        for key in ("task", "family", "score"):
            if key not in rec:
                raise ValueError(f"metrics.aggregate: record {i} lacks {key!r}: {dict(rec)!r}")
        task, family, score = rec["task"], rec["family"], float(rec["score"])
        if not math.isfinite(score):
            raise ValueError(f"metrics.aggregate: record {i} (task {task!r}) score is {score}")
        if family_of.setdefault(task, family) != family:
            raise ValueError(f"metrics.aggregate: task {task!r} is in families "
                             f"{family_of[task]!r} and {family!r} (record {i})")
        scores.setdefault(task, []).append(score)
        has_yn = "prediction" in rec and "label" in rec
        if task not in yn:
            yn[task] = ([], []) if has_yn else None
        if yn[task] is not None and has_yn:
            yn[task][0].append(rec["prediction"])
            yn[task][1].append(rec["label"])
        else:
            yn[task] = None
    task_means = {t: sum(s) / len(s) for t, s in scores.items()}
    fam_tasks: dict[str, list[str]] = {}
    for task, family in family_of.items():
        fam_tasks.setdefault(family, []).append(task)
    out = {
        "tasks": task_means,
        "families": {f: sum(task_means[t] for t in ts) / len(ts) for f, ts in fam_tasks.items()},
        "overall": sum(task_means.values()) / len(task_means),
        "counts": {"tasks": {t: len(s) for t, s in scores.items()},
                   "families": {f: sum(len(scores[t]) for t in ts) for f, ts in fam_tasks.items()},
                   "total": len(records)},
    }
    yes_no_tasks = {t: yes_no_scores(*pl) for t, pl in yn.items() if pl is not None}
    if yes_no_tasks:
        out["yes_no"] = yes_no_tasks
    return out
