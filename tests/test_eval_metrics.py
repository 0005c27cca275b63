"""Evaluation metrics against hand-computed cases (pure Python, well under a second)."""

import pytest

from vlm_jax.eval.answer_metrics import (
    METRICS,
    aggregate,
    exact_match,
    extract_choice,
    get_metric,
    multiple_choice,
    normalize_answer,
    vqa_accuracy,
    yes_no,
    yes_no_scores,
)

# --- normalize_answer -------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("Two dogs.", "2 dogs"),          # number word -> digit, case, trailing full stop
    ("2 dogs", "2 dogs"),
    ("3.5", "3.5"),                   # decimal point kept (followed by a digit)
    ("3.5.", "3.5"),                  # the final period is not
    ("the cat", "cat"),               # articles dropped
    ("A  Cat\n", "cat"),              # whitespace collapsed, newline -> space
    ("an apple", "apple"),
    ("dont", "don't"),                # contractions restored
    ("isnt", "isn't"),
    ("couldnt've", "couldn't've"),    # either missing apostrophe of a double contraction
    ("couldn'tve", "couldn't've"),
    ("don't", "don't"),               # already contracted: unchanged
    ("black/white", "black white"),   # mark not touching a space -> space
    ("yes , sir!", "yes sir"),        # "," touches a space -> deleted (so is "!")
    ("1,000", "1000"),                # digit,digit -> every mark deleted
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),             # only zero..ten are mapped
    ("Mr. Smith's", "mr smith's"),    # apostrophes are not punctuation here
    ("   ", ""),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_rejects_non_str():
    with pytest.raises(TypeError, match="normalize_answer"):
        normalize_answer(3)


# --- exact_match / vqa_accuracy ---------------------------------------------------------------

def test_exact_match():
    assert exact_match("Two dogs.", "2 dogs") == 1.0
    assert exact_match("the cat", "cat") == 1.0
    assert exact_match("cat", "dog") == 0.0
    assert exact_match("Two dogs.", "2 dogs", normalize=False) == 0.0
    assert exact_match("cat", "cat", normalize=False) == 1.0


def test_vqa_accuracy_ten_answers_leave_one_out():
    answers = ["2"] * 2 + ["3"] * 8
    # Prediction "two" matches 2 of the 10 answers. Leaving out one of the 2 matches leaves
    # 1 match -> min(1/3, 1) = 1/3 (2 such subsets); leaving out one of the 8 others leaves
    # 2 matches -> 2/3 (8 subsets). Mean = (2 * 1/3 + 8 * 2/3) / 10 = (18/3) / 10 = 0.6.
    assert vqa_accuracy("two", answers) == pytest.approx(0.6, abs=1e-12)
    # 3 of 10: (3 * 2/3 + 7 * 1) / 10 = 0.9.
    assert vqa_accuracy("2", ["2"] * 3 + ["x"] * 7) == pytest.approx(0.9, abs=1e-12)
    # 4 of 10: every 9-subset still holds >= 3 matches -> 1.0.
    assert vqa_accuracy("2", ["2"] * 4 + ["x"] * 6) == 1.0
    # 1 of 10: (1 * 0 + 9 * 1/3) / 10 = 0.3.
    assert vqa_accuracy("2", ["2"] + ["x"] * 9) == pytest.approx(0.3, abs=1e-12)
    # 8 of 10 match "3": every subset has >= 7 -> 1.0; "4" matches none -> 0.0.
    assert vqa_accuracy("Three.", answers) == 1.0
    assert vqa_accuracy("4", answers) == 0.0


def test_vqa_accuracy_other_counts():
    assert vqa_accuracy("The Cat", ["cat"]) == 1.0            # one reference: exact match
    assert vqa_accuracy("dog", ["cat"]) == 0.0
    assert vqa_accuracy("cat", ["cat", "dog", "cat"]) == pytest.approx(2 / 3)  # min(2/3, 1)
    assert vqa_accuracy("cat", ["cat"] * 4 + ["dog"]) == 1.0   # min(4/3, 1)
    with pytest.raises(ValueError, match="answers"):
        vqa_accuracy("cat", [])
    with pytest.raises(ValueError, match="answers"):
        vqa_accuracy("cat", "cat")


# --- multiple choice --------------------------------------------------------------------------

OPTIONS = {"A": "a red apple", "B": "dark red", "C": "red", "D": "blue sky"}


@pytest.mark.parametrize("prediction, letter", [
    ("B", "B"),
    ("b", "B"),
    ("B.", "B"),
    ("(B)", "B"),
    ("B) dark red", "B"),
    ("B. dark red", "B"),
    ("B: because it is dark", "B"),
    ("(D) the sky", "D"),
    ("[C] red", "C"),
    ("The answer is C.", "C"),
    ("Answer: (D)", "D"),
    ("Blue sky", "D"),                        # option text itself (normalised)
    ("It is a red apple.", "A"),              # one option's text inside the prediction
    ("dark red", "B"),                        # exact text beats "red" being inside it
    ("The colour is dark red.", "B"),         # nested: "red" lies inside "dark red" -> B
    ("E", None),                              # not an option
    ("I do not know", None),
    ("red or blue sky", None),                # two unrelated options named -> ambiguous
    ("The answer is a red apple", "A"),       # "a" (article) is not read as letter A
])
def test_extract_choice(prediction, letter):
    assert extract_choice(prediction, OPTIONS) == letter


def test_extract_choice_list_options_and_missing():
    assert extract_choice("C", ["cat", "dog", "bird"]) == "C"
    assert extract_choice("dog", ["cat", "dog", "bird"]) == "B"
    assert extract_choice("D", ["cat", "dog", "bird"]) is None
    # MMBench leaves unused options empty (None / NaN): they cannot be chosen.
    assert extract_choice("D", {"A": "x", "B": "y", "C": None, "D": float("nan")}) is None


def test_multiple_choice():
    assert multiple_choice("B) dark red", OPTIONS, "B") == 1.0
    assert multiple_choice("(C)", OPTIONS, "B") == 0.0
    assert multiple_choice("nonsense", OPTIONS, "B") == 0.0
    assert multiple_choice("B", OPTIONS, "dark red") == 1.0   # gold given as option text
    with pytest.raises(ValueError, match="neither an option letter"):
        multiple_choice("B", OPTIONS, "Z")
    with pytest.raises(ValueError, match="single letter"):
        multiple_choice("B", {"AB": "x"}, "A")


# --- yes / no ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction, parsed", [
    ("No, there is not.", "no"),
    ("Yes.", "yes"),
    ("YES", "yes"),
    ("I think yes, there is a dog", "yes"),
    ("There is no dog. Yes.", "no"),       # first yes/no word wins
    ("Nobody knows", None),                # whole words only
    ("There is a dog.", None),
    ("", None),
])
def test_yes_no(prediction, parsed):
    assert yes_no(prediction) == parsed


def test_yes_no_scores_hand_table():
    # pred   : yes  yes  no   yes  no   ???  no   yes
    # label  : yes  no   yes  yes  no   yes  no   no
    # outcome: TP   FP   FN   TP   TN   FN*  TN   FP      (* unparsed -> wrong, a missed yes)
    preds = ["Yes", "yes, it is", "No.", "yes", "no", "maybe", "No, there is not", "Yes!"]
    labels = ["yes", "no", "yes", "yes", "no", "yes", "no", "No"]
    s = yes_no_scores(preds, labels)
    assert (s["tp"], s["fp"], s["tn"], s["fn"], s["unparsed"], s["n"]) == (2, 2, 2, 2, 1, 8)
    assert s["accuracy"] == pytest.approx(4 / 8)       # (TP + TN) / n
    assert s["precision"] == pytest.approx(2 / 4)      # TP / (TP + FP)
    assert s["recall"] == pytest.approx(2 / 4)         # TP / (TP + FN)
    assert s["f1"] == pytest.approx(0.5)               # 2PR / (P + R)
    assert s["yes_ratio"] == pytest.approx(4 / 8)      # 4 predictions parsed as "yes"


def test_yes_no_scores_unparsed_negative_and_zero_division():
    # Unparsed on a "no" label: wrong (not TN) but not a false positive either.
    s = yes_no_scores(["hmm", "no"], ["no", "no"])
    assert (s["tp"], s["fp"], s["tn"], s["fn"], s["unparsed"]) == (0, 0, 1, 0, 1)
    assert s["accuracy"] == 0.5
    # No predicted yes and no gold yes: precision, recall and F1 are 0/0 -> 0.0.
    assert s["precision"] == s["recall"] == s["f1"] == 0.0 and s["yes_ratio"] == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        yes_no_scores(["yes", "no"], ["yes"])
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        yes_no_scores(["yes"], ["maybe"])


# --- registry ---------------------------------------------------------------------------------

def test_registry_calling_convention():
    assert set(METRICS) == {"vqa", "exact_match", "multiple_choice", "yes_no"}
    assert METRICS["vqa"]("two", {"answers": ["2"] * 2 + ["3"] * 8}) == pytest.approx(0.6)
    assert METRICS["vqa"]("the cat", {"answer": "cat"}) == 1.0
    assert METRICS["exact_match"]("Two dogs.", {"answer": "2 dogs"}) == 1.0
    assert METRICS["exact_match"]("dog", {"answers": ["cat", "dog"]}) == 1.0
    assert METRICS["multiple_choice"]("(B)", {"options": ["x", "y"], "answer": "B"}) == 1.0
    assert METRICS["yes_no"]("No, there is not", {"answer": "no"}) == 1.0
    assert METRICS["yes_no"]("unsure", {"answer": "no"}) == 0.0
    assert get_metric("vqa") is METRICS["vqa"]
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        get_metric("bleu")
    with pytest.raises(ValueError, match="lacks key 'options'"):
        METRICS["multiple_choice"]("B", {"answer": "B"})


# --- aggregate --------------------------------------------------------------------------------

def test_aggregate_two_families():
    records = (
        [{"task": "gqa", "family": "reasoning", "score": s} for s in (1.0, 0.0, 1.0, 1.0)]
        + [{"task": "pope", "family": "reasoning", "score": s, "prediction": p, "label": y}
           for s, p, y in ((1.0, "Yes", "yes"), (0.0, "yes", "no"))]
        + [{"task": "textvqa", "family": "ocr", "score": s} for s in (0.6, 0.0, 0.3)]
    )
    out = aggregate(records)
    # gqa 3/4 = 0.75; pope 1/2 = 0.5; textvqa 0.9/3 = 0.3.
    assert out["tasks"] == pytest.approx({"gqa": 0.75, "pope": 0.5, "textvqa": 0.3})
    # reasoning = mean of its task means (0.75 + 0.5) / 2 = 0.625; ocr = 0.3.
    assert out["families"] == pytest.approx({"reasoning": 0.625, "ocr": 0.3})
    # overall = mean of the three task means (0.75 + 0.5 + 0.3) / 3 = 1.55 / 3.
    assert out["overall"] == pytest.approx(1.55 / 3)
    assert out["counts"] == {"tasks": {"gqa": 4, "pope": 2, "textvqa": 3},
                             "families": {"reasoning": 6, "ocr": 3}, "total": 9}
    # Only pope's records carry prediction/label: one TP, one FP.
    assert set(out["yes_no"]) == {"pope"}
    assert out["yes_no"]["pope"]["precision"] == 0.5 and out["yes_no"]["pope"]["recall"] == 1.0


def test_aggregate_bad_records():
    with pytest.raises(ValueError, match="no records"):
        aggregate([])
    with pytest.raises(ValueError, match="record 1 lacks 'family'"):
        aggregate([{"task": "a", "family": "f", "score": 1.0}, {"task": "a", "score": 1.0}])
    with pytest.raises(ValueError, match="task 'a' is in families 'f' and 'g'"):
        aggregate([{"task": "a", "family": "f", "score": 1.0},
                   {"task": "a", "family": "g", "score": 0.0}])
    with pytest.raises(ValueError, match="score is nan"):
        aggregate([{"task": "a", "family": "f", "score": float("nan")}])
