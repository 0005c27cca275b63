"""Benchmark readers on files in each benchmark's shipped layout, and their official metrics
against hand-computed scores."""

import base64
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import benchmarks as bl
from vlm_jax.eval import benchmark_metrics as bm
from vlm_jax.eval import benchmarks as be


def _img(path, color=(10, 20, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), color, np.uint8)).save(path)
    return path


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def _preds(items, texts):
    return {it["id"]: t for it, t in zip(items, texts)}


def test_gqa(tmp_path):
    q = _write(tmp_path / "testdev_balanced_questions.json", {
        "201": {"imageId": "n1", "question": "Is it red?", "answer": "no",
                "types": {"structural": "verify", "semantic": "attr"}},
        "202": {"imageId": "n2", "question": "What is it?", "answer": "table",
                "types": {"structural": "query"}},
        "203": {"imageId": "n1", "question": "Which side?", "answer": "left",
                "types": {"structural": "query"}}})
    items = bl.read("gqa", {"questions": q}, str(tmp_path / "images"))
    assert [it["id"] for it in items] == ["gqa:201", "gqa:202", "gqa:203"]
    assert items[0]["image"] == str(tmp_path / "images" / "n1.jpg")
    assert items[0]["question"] == "Is it red?\n" + bl.SHORT
    s = bm.score("gqa", items, _preds(items, ["No.", "Table", "right"]))
    assert s["score"] == pytest.approx(2 / 3)
    assert s["structural"] == {"query": 0.5, "verify": 1.0} and s["n"] == 3


def test_vqav2_and_test_dev(tmp_path):
    q = _write(tmp_path / "q.json", {"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "How many?", "question_id": 420},
        {"image_id": 7, "question": "Color?", "question_id": 70}]})
    ans = lambda xs: [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}  # noqa: E731
                      for i, a in enumerate(xs)]
    a = _write(tmp_path / "a.json", {"annotations": [
        {"question_id": 420, "image_id": 42, "answer_type": "number",
         "answers": ans(["2"] * 2 + ["3"] * 8)},
        {"question_id": 70, "image_id": 7, "answer_type": "other",
         "answers": ans(["red"] * 10)}]})
    items = bl.read("vqav2", {"questions": q, "annotations": a}, "/coco")
    assert items[0]["image"] == "/coco/COCO_val2014_000000000042.jpg"
    s = bm.score("vqav2", items, _preds(items, ["two", "Red."]))
    # "2" matches 2 of 10 humans: mean over the 10 leave-one-out subsets of min(n/3, 1):
    # 2 subsets (one "2" left out) hold 1 match, 8 hold 2 -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    assert s["answer_type"] == {"number": pytest.approx(0.6), "other": 1.0}
    assert s["score"] == pytest.approx(0.8)
    with pytest.raises(FileNotFoundError, match="test-dev has none"):
        bl.read("vqav2", {"questions": q}, "/coco")
    with pytest.raises(bl.BenchmarkFormatError, match=r"a\.json: .*no `annotations`"):
        _write(tmp_path / "a.json", {"questions": []})
        bl.read("vqav2", {"questions": q, "annotations": a}, "/coco")


def test_vizwiz(tmp_path):
    a = _write(tmp_path / "val.json", [
        {"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answerable": 1,
         "answer_type": "other", "answers": [{"answer": "soup", "answer_confidence": "yes"}] * 3
         + [{"answer": "can", "answer_confidence": "maybe"}] * 7},
        {"image": "VizWiz_val_00000001.jpg", "question": "Brand?", "answerable": 0,
         "answer_type": "unanswerable",
         "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10}])
    items = bl.read("vizwiz", {"annotations": a}, "/vz")
    assert items[1]["id"] == "vizwiz:VizWiz_val_00000001" and "Unanswerable" in items[0]["question"]
    s = bm.score("vizwiz", items, _preds(items, ["soup", "Unanswerable"]))
    # 3 of 10 say soup: 3 subsets without a "soup" keep 2 matches (2/3), 7 keep 3 (1) -> 0.9.
    assert s["answer_type"] == {"other": pytest.approx(0.9), "unanswerable": 1.0}
    assert s["score"] == pytest.approx(0.95)


def test_scienceqa_img_subset(tmp_path):
    p = _write(tmp_path / "problems.json", {
        "1": {"question": "Which is a mammal?", "choices": ["frog", "whale"], "answer": 1,
              "hint": "Look closely.", "image": "image.png", "split": "test", "subject": "bio"},
        "2": {"question": "Text only?", "choices": ["a", "b"], "answer": 0, "hint": "",
              "image": None, "split": "test", "subject": "lang"},
        "3": {"question": "Pick C", "choices": ["x", "y", "z"], "answer": 2, "hint": "",
              "image": "image.png", "split": "test", "subject": "phys"},
        "4": {"question": "Val", "choices": ["x", "y"], "answer": 0, "hint": "",
              "image": "image.png", "split": "val", "subject": "phys"}})
    s = _write(tmp_path / "pid_splits.json", {"test": ["1", "2", "3"], "val": ["4"]})
    items = bl.read("scienceqa", {"problems": p, "pid_splits": s}, "/sqa")
    assert [it["id"] for it in items] == ["scienceqa:1", "scienceqa:3"]
    assert items[0]["question"] == ("Context: Look closely.\nWhich is a mammal?\nA. frog\n"
                                    "B. whale\n" + bl.LETTER)
    assert items[0]["image"] == "/sqa/test/1/image.png" and items[1]["answers"] == ["C"]
    sc = bm.score("scienceqa", items, _preds(items, ["B", "The answer is A."]))
    assert sc["score"] == 0.5 and sc["subject"] == {"bio": 1.0, "phys": 0.0}


def test_textvqa(tmp_path):
    a = _write(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": [
        {"question_id": 34602, "question": "what brand?", "image_id": "003a8ae2ef43b901",
         "answers": ["nous les gosses"] * 4 + ["dakota"] * 6}]})
    items = bl.read("textvqa", {"annotations": a}, "/tv/train_images")
    assert items[0]["image"] == "/tv/train_images/003a8ae2ef43b901.jpg"
    assert bm.score("textvqa", items, _preds(items, ["Dakota"]))["score"] == pytest.approx(1.0)
    assert bm.score("textvqa", items, _preds(items, ["nous les gosses"]))["score"] == 1.0
    assert bm.score("textvqa", items, _preds(items, ["x"]))["score"] == 0.0


def test_pope(tmp_path):
    lines = lambda rows: "\n".join(json.dumps(r) for r in rows) + "\n"  # noqa: E731
    rnd = _write(tmp_path / "coco_pope_random.json", lines([
        {"question_id": 1, "image": "COCO_val2014_1.jpg", "text": "Is there a dog?", "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_1.jpg", "text": "Is there a cat?", "label": "no"},
        {"question_id": 3, "image": "COCO_val2014_2.jpg", "text": "Is there a car?", "label": "yes"},
        {"question_id": 4, "image": "COCO_val2014_2.jpg", "text": "Is there a bus?", "label": "no"}]))
    adv = _write(tmp_path / "coco_pope_adversarial.json", lines([
        {"question_id": 1, "image": "COCO_val2014_3.jpg", "text": "Is there a cup?", "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_3.jpg", "text": "Is there a fork?", "label": "no"}]))
    items = bl.read("pope", {"random": rnd, "adversarial": adv}, "/coco")
    assert items[4]["id"] == "pope:adversarial/1"
    # LLaVA's parse: "There is not." -> no; "Yes, a dog." -> yes; "I see a car" -> yes.
    assert bm.pope_answer("There is not a cat.") == "no" and bm.pope_answer("Maybe") == "yes"
    s = bm.score("pope", items, _preds(items, ["Yes, a dog.", "Yes", "No", "No, there is not.",
                                               "yes", "yes"]))
    # random: tp=1 fp=1 fn=1 tn=1 -> P = R = F1 = 0.5; adversarial: tp=1 fp=1 -> P 0.5 R 1, F1 2/3.
    assert s["categories"]["random"]["f1"] == pytest.approx(0.5)
    assert s["categories"]["adversarial"]["f1"] == pytest.approx(2 / 3)
    assert s["categories"]["adversarial"]["yes_ratio"] == 1.0
    assert s["score"] == pytest.approx((0.5 + 2 / 3) / 2)
    with pytest.raises(bl.BenchmarkFormatError, match="coco_pope_random.json: line 1 is not JSON"):
        _write(tmp_path / "coco_pope_random.json", "not json\n")
        bl.read("pope", {"random": rnd}, "/coco")


def _mme_tree(root):
    for task in bl.MME_PERCEPTION + bl.MME_COGNITION:
        if task == "artwork":  # the images/ + questions_answers_YN/ layout
            _img(os.path.join(root, task, "images", "10002.jpg"))
            _write(os.path.join(root, task, "questions_answers_YN", "10002.txt"),
                   "Is this by Monet? Please answer yes or no.\tYes\n"
                   "Is this by Dali? Please answer yes or no.\tNo\n")
        else:
            _img(os.path.join(root, task, "000.png"))
            _write(os.path.join(root, task, "000.txt"),
                   "Q1? Please answer yes or no.\tYes\nQ2? Please answer yes or no.\tNo\n")


def test_mme(tmp_path):
    root = str(tmp_path / "MME_Benchmark_release_version")
    _mme_tree(root)
    items = bl.read("mme", {"root": root})
    assert len(items) == 28 and items[0]["meta"]["subtask"] == "existence"
    art = [it for it in items if it["meta"]["subtask"] == "artwork"]
    assert art[0]["image"].endswith("artwork/images/10002.jpg") and art[1]["answers"] == ["No"]
    preds = {it["id"]: it["answers"][0] for it in items}  # all right ...
    ex = [it["id"] for it in items if it["meta"]["subtask"] == "existence"]
    preds[ex[1]] = "Yes, there is."  # ... but one: existence acc 50, acc+ 0 -> 50
    code = [it["id"] for it in items if it["meta"]["subtask"] == "code_reasoning"]
    preds[code[0]] = "Not sure"  # "other": wrong -> code_reasoning 50 + 0
    s = bm.score("mme", items, preds)
    assert s["subtasks"]["existence"] == {"acc": 50.0, "acc_plus": 0.0, "score": 50.0}
    assert s["perception"] == pytest.approx(9 * 200 + 50)
    assert s["cognition"] == pytest.approx(3 * 200 + 50)
    assert s["score"] == pytest.approx((1850 + 650) / 2800)
    assert bm.mme_answer("No.") == "no" and bm.mme_answer("yes") == "yes"
    _write(os.path.join(root, "count", "000.txt"), "Q without answer\n")
    with pytest.raises(bl.BenchmarkFormatError, match=r"count/000.txt: line 1 is not"):
        bl.read("mme", {"root": root})


def _b64(color):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), color, np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _mmbench_tsv(path):
    rows = [("0", "What color?", "", "red", "blue", "green", "", "A", "color"),
            ("1000000", "What color?", "", "blue", "green", "red", "", "C", "color"),
            ("1", "Count?", "Two objects.", "1", "2", "", "", "B", "count"),
            ("1000001", "Count?", "Two objects.", "2", "1", "", "", "A", "count")]
    head = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\n"
    body = "".join("\t".join(r) + f"\t{_b64((i * 40, 0, 0))}\n" for i, r in enumerate(rows))
    return _write(path, head + body)


def test_mmbench_circular(tmp_path):
    tsv = _mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv")
    items = bl.read("mmbench", {"tsv": tsv})
    assert items[2]["question"] == "Two objects.\nCount?\nA. 1\nB. 2\n" + bl.LETTER
    assert [it["meta"]["group"] for it in items] == [0, 0, 1, 1] and "image_b64" in items[0]
    s = bm.score("mmbench", items, _preds(items, ["A", "C", "B", "B"]))
    # question 0: both variants right; question 1: its second variant wrong -> circular 1/2.
    assert s["score"] == 0.5 and s["plain_accuracy"] == 0.75
    assert s["categories"] == {"color": 1.0, "count": 0.0}
    bad = _write(tmp_path / "bad.tsv", "index\tquestion\n0\tx\n")
    with pytest.raises(bl.BenchmarkFormatError, match="bad.tsv: MMBench TSV needs columns"):
        bl.read("mmbench", {"tsv": bad})


def test_seed_image_questions(tmp_path):
    q = _write(tmp_path / "SEED-Bench.json", {
        "question_type": {"Scene Understanding": 1, "Instance Counting": 5},
        "questions": [
            {"answer": "B", "choice_a": "cat", "choice_b": "dog", "choice_c": "cow",
             "choice_d": "pig", "data_id": "1454426_2591111986.jpg", "data_type": "image",
             "question": "What animal?", "question_id": "101669", "question_type_id": 1},
            {"answer": "D", "choice_a": "1", "choice_b": "2", "choice_c": "3", "choice_d": "4",
             "data_id": "v1.mp4", "data_type": "video", "question": "Video?",
             "question_id": "9", "question_type_id": 10},
            {"answer": "C", "choice_a": "1", "choice_b": "2", "choice_c": "3", "choice_d": "4",
             "data_id": "77", "data_type": "image", "question": "How many?",
             "question_id": "5", "question_type_id": 5}]})
    items = bl.read("seed", {"questions": q}, "/seed/SEED-Bench-image")
    assert [it["id"] for it in items] == ["seed:101669", "seed:5"]
    assert items[1]["image"] == "/seed/SEED-Bench-image/77.jpg"
    s = bm.score("seed", items, _preds(items, ["B", "(D) 4"]))
    assert s["score"] == 0.5
    assert s["question_type"] == {"Instance Counting": 0.0, "Scene Understanding": 1.0}


def test_prepare_writes_one_eval_file_and_names_bad_input(tmp_path):
    tsv = _mmbench_tsv(tmp_path / "mmb.tsv")
    vz = _write(tmp_path / "val.json", [{"image": "a.jpg", "question": "Q?", "answers": [
        {"answer": "x"}] * 10}])
    _img(str(tmp_path / "vz" / "a.jpg"))
    cfg = {"mmbench": {"kind": "mmbench", "files": {"tsv": tsv}, "family": "reasoning"},
           "vizwiz": {"kind": "vizwiz", "files": {"annotations": vz}, "family": "reasoning",
                      "image_folder": str(tmp_path / "vz"), "limit": 1}}
    path, read = be.prepare(cfg, str(tmp_path / "out"))
    rows = [json.loads(line) for line in open(path)]
    assert [r["category"] for r in rows] == ["mmbench"] * 4 + ["vizwiz"]
    assert all(os.path.isfile(r["image"]) for r in rows) and rows[4]["answers"] == ["x"] * 10
    assert Image.open(rows[1]["image"]).getpixel((0, 0)) == (40, 0, 0)
    cfg["vizwiz"]["image_folder"] = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"eval.benchmarks.vizwiz: 1 image\(s\) missing"):
        bl.read_all(cfg)
    cfg["vizwiz"]["files"]["annotations"] = str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        bl.read_all(cfg)
    with pytest.raises(ValueError, match="needs `kind` and `family`"):
        bl.read_all({"x": {"kind": "gqa"}})
