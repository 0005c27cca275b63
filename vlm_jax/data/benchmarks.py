"""Readers for the LLaVA-1.5 evaluation suite, each from the files the benchmark ships.

`read(kind, files, image_folder) -> list[dict]`: one item per question, `{"id", "benchmark",
"image" (a path) or "image_b64", "question" (the prompt text, options and instruction
included, no <image> marker), "answers" (list of str), "meta" (what the metric reads)}`.
Kinds and the files they read (`files` keys):

- `gqa`: `questions` = testdev_balanced_questions.json, {qid: {imageId, question, answer,
  types: {structural, ...}}}; images `<folder>/<imageId>.jpg`.
- `vqav2`: `questions` = v2_OpenEnded_mscoco_<subtype>_questions.json ({questions: [{image_id,
  question, question_id}], data_subtype}) and `annotations` = v2_mscoco_<subtype>_annotations.json
  ({annotations: [{question_id, answers: [{answer}], answer_type}]}); images
  `<folder>/COCO_<subtype>_<image_id:012d>.jpg`. Test-dev has no annotations (EvalAI scores it).
- `vizwiz`: `annotations` = val.json, [{image, question, answers: [{answer}], answer_type,
  answerable}].
- `scienceqa`: `problems` = problems.json ({pid: {question, choices, answer (index), hint,
  image, split}}) and optional `pid_splits` = pid_splits.json; the IMG subset (problems with an
  image) of split `test`; images `<folder>/<split>/<pid>/<image>`.
- `textvqa`: `annotations` = TextVQA_0.5.1_val.json ({data: [{question_id, question, image_id,
  answers}]}); images `<folder>/<image_id>.jpg`.
- `pope`: one jsonl per category (`random`, `popular`, `adversarial`: coco_pope_<cat>.json),
  lines {question_id, image, text, label}.
- `mme`: `root` = MME_Benchmark_release_version/: per subtask either `images/` +
  `questions_answers_YN/*.txt` or images and `*.txt` side by side; each txt line
  "question<TAB>Yes|No".
- `mmbench`: `tsv` = MMBench dev TSV (index, question, hint, A-D, answer, category, image
  base64); circular variants share `index % 1_000_000`.
- `seed`: `questions` = SEED-Bench.json ({questions: [{question_id, question, choice_a..d,
  answer, data_id, data_type, question_type_id}], question_type: {name: id}}); image questions
  only; images `<folder>/<data_id>`.

A missing file raises FileNotFoundError and a file in another layout `BenchmarkFormatError`,
both naming the path. `read_all(config.eval.benchmarks)` reads every configured benchmark and
checks its images exist (before anything compiles).
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from vlm_jax.config_args import merge_defaults

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
VIZWIZ = "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT
LETTERS = "ABCDEFGH"
MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
                  "landmark", "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation",
                 "code_reasoning")


class BenchmarkFormatError(ValueError):
    """A benchmark file that is not in the layout its benchmark ships."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = path


def _need(path: str, what: str) -> str:
    if not path or not os.path.exists(os.path.expanduser(path)):
        raise FileNotFoundError(f"{what}: no such file or directory {path!r}")
    return os.path.expanduser(path)


def _load_json(path: str, what: str):
    path = _need(path, what)
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(path, f"not JSON ({e})") from None


def _jsonl(path: str, what: str) -> list[dict]:
    path = _need(path, what)
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise BenchmarkFormatError(path, f"line {n} is not JSON ({e})") from None
    return rows


def _field(row: dict, key: str, path: str, where: str):
    if not isinstance(row, dict) or key not in row:
        raise BenchmarkFormatError(path, f"{where} has no `{key}` (the benchmark's layout)")
    return row[key]


def _item(bench, qid, image, question, answers, **meta) -> dict:
    key = "image_b64" if meta.pop("b64", False) else "image"
    return {"id": f"{bench}:{qid}", "benchmark": bench, key: image, "question": question,
            "answers": [str(a) for a in answers], "meta": meta}


def _options_prompt(question: str, options: list[str], hint: str = "") -> str:
    lines = ([f"Context: {hint}"] if hint else []) + [question]
    lines += [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines + [LETTER])


def read_gqa(files, folder, bench="gqa"):
    path = files.get("questions", "")
    data = _load_json(path, "gqa questions")
    if not isinstance(data, dict):
        raise BenchmarkFormatError(path, "expected {question_id: {imageId, question, answer}}")
    out = []
    for qid, q in data.items():
        where = f"question {qid}"
        out.append(_item(bench, qid, os.path.join(folder, f"{_field(q, 'imageId', path, where)}.jpg"),
                         f"{_field(q, 'question', path, where)}\n{SHORT}",
                         [_field(q, "answer", path, where)],
                         structural=q.get("types", {}).get("structural", "")))
    return out


def read_vqav2(files, folder, bench="vqav2"):
    qpath, apath = files.get("questions", ""), files.get("annotations", "")
    qs = _load_json(qpath, "vqav2 questions")
    questions = _field(qs, "questions", qpath, "the file")
    if not apath:
        raise FileNotFoundError(f"vqav2: no `annotations` file given for {qpath} (test-dev has "
                                "none: its answers are scored by the EvalAI server; use val)")
    anns = _field(_load_json(apath, "vqav2 annotations"), "annotations", apath, "the file")
    by_id = {_field(a, "question_id", apath, "an annotation"): a for a in anns}
    subtype = qs.get("data_subtype", "val2014")
    out = []
    for q in questions:
        qid = _field(q, "question_id", qpath, "a question")
        if qid not in by_id:
            raise BenchmarkFormatError(apath, f"no annotation for question_id {qid}")
        ann = by_id[qid]
        answers = [_field(a, "answer", apath, f"annotation {qid}")
                   for a in _field(ann, "answers", apath, f"annotation {qid}")]
        image = os.path.join(folder, f"COCO_{subtype}_{int(q['image_id']):012d}.jpg")
        out.append(_item(bench, qid, image, f"{_field(q, 'question', qpath, 'a question')}\n{SHORT}",
                         answers, answer_type=ann.get("answer_type", "")))
    return out


def read_vizwiz(files, folder, bench="vizwiz"):
    path = files.get("annotations", "")
    rows = _load_json(path, "vizwiz annotations")
    if not isinstance(rows, list):
        raise BenchmarkFormatError(path, "expected a list of {image, question, answers}")
    out = []
    for k, r in enumerate(rows):
        where = f"entry {k}"
        answers = [_field(a, "answer", path, where) for a in _field(r, "answers", path, where)]
        image = _field(r, "image", path, where)
        out.append(_item(bench, os.path.splitext(image)[0], os.path.join(folder, image),
                         f"{_field(r, 'question', path, where)}\n{VIZWIZ}", answers,
                         answer_type=r.get("answer_type", "")))
    return out


def read_scienceqa(files, folder, bench="scienceqa", split="test"):
    path = files.get("problems", "")
    problems = _load_json(path, "scienceqa problems")
    if not isinstance(problems, dict):
        raise BenchmarkFormatError(path, "expected {pid: {question, choices, answer, image}}")
    pids = list(problems)
    if files.get("pid_splits"):
        pids = _field(_load_json(files["pid_splits"], "scienceqa pid_splits"), split,
                      files["pid_splits"], "the file")
    out = []
    for pid in pids:
        p = problems.get(pid)
        if p is None:
            raise BenchmarkFormatError(path, f"pid_splits lists {pid}, absent here")
        where = f"problem {pid}"
        if not p.get("image") or p.get("split", split) != split:
            continue  # the IMG subset of the split
        choices = list(_field(p, "choices", path, where))
        answer = _field(p, "answer", path, where)
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise BenchmarkFormatError(path, f"{where}: `answer` must index `choices`")
        out.append(_item(bench, pid, os.path.join(folder, split, pid, p["image"]),
                         _options_prompt(_field(p, "question", path, where), choices,
                                         p.get("hint") or ""),
                         [LETTERS[answer]], options=choices, subject=p.get("subject", "")))
    return out


def read_textvqa(files, folder, bench="textvqa"):
    path = files.get("annotations", "")
    data = _field(_load_json(path, "textvqa annotations"), "data", path, "the file")
    return [_item(bench, _field(r, "question_id", path, "an entry"),
                  os.path.join(folder, f"{_field(r, 'image_id', path, 'an entry')}.jpg"),
                  f"{_field(r, 'question', path, 'an entry')}\n{SHORT}",
                  _field(r, "answers", path, "an entry")) for r in data]


POPE_CATEGORIES = ("random", "popular", "adversarial")


def read_pope(files, folder, bench="pope"):
    cats = [c for c in files if files[c]]
    unknown = sorted(set(cats) - set(POPE_CATEGORIES))
    if unknown or not cats:
        raise ValueError(f"pope: files keys must be among {POPE_CATEGORIES}, got {sorted(files)}")
    out = []
    for cat in cats:
        path = files[cat]
        for r in _jsonl(path, f"pope {cat}"):
            label = str(_field(r, "label", path, "a line")).lower()
            if label not in ("yes", "no"):
                raise BenchmarkFormatError(path, f"label {label!r} is not yes/no")
            out.append(_item(bench, f"{cat}/{_field(r, 'question_id', path, 'a line')}",
                             os.path.join(folder, _field(r, "image", path, "a line")),
                             _field(r, "text", path, "a line"), [label], category=cat))
    return out


def read_mme(files, folder, bench="mme"):
    root = _need(files.get("root", ""), "mme root")
    out = []
    for task in MME_PERCEPTION + MME_COGNITION:
        tdir = os.path.join(root, task)
        if not os.path.isdir(tdir):
            raise FileNotFoundError(f"mme: subtask folder {tdir!r} missing")
        qa_dir = os.path.join(tdir, "questions_answers_YN")
        img_dir = os.path.join(tdir, "images") if os.path.isdir(qa_dir) else tdir
        txts = sorted(glob.glob(os.path.join(qa_dir if os.path.isdir(qa_dir) else tdir, "*.txt")))
        if not txts:
            raise BenchmarkFormatError(tdir, "no question .txt files")
        for txt in txts:
            stem = os.path.splitext(os.path.basename(txt))[0]
            images = [p for p in glob.glob(os.path.join(img_dir, stem + ".*"))
                      if not p.endswith(".txt")]
            if not images:
                raise FileNotFoundError(f"mme: no image {stem}.* beside {txt}")
            with open(txt) as f:
                lines = [ln.rstrip("\n") for ln in f if ln.strip()]
            for n, line in enumerate(lines):
                q, sep, a = line.partition("\t")
                if not sep or a.strip() not in ("Yes", "No"):
                    raise BenchmarkFormatError(txt, f"line {n + 1} is not 'question<TAB>Yes|No'")
                out.append(_item(bench, f"{task}/{stem}/{n}", images[0], q.strip(),
                                 [a.strip()], subtask=task, image_key=f"{task}/{stem}"))
    return out


def read_mmbench(files, folder, bench="mmbench"):
    path = _need(files.get("tsv", ""), "mmbench tsv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    need = {"index", "question", "image", "A", "B", "answer"}
    if not rows or not need <= set(rows[0]):
        raise BenchmarkFormatError(path, f"MMBench TSV needs columns {sorted(need)}, has "
                                   f"{sorted(rows[0]) if rows else 'no rows'}")
    present = lambda v: v is not None and v.strip() not in ("", "nan")  # noqa: E731
    out = []
    for r in rows:
        options = [r[c].strip() for c in "ABCD" if present(r.get(c))]
        hint = r["hint"].strip() if present(r.get("hint")) else ""
        prompt = "\n".join(([hint] if hint else []) + [r["question"].strip()]
                           + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)] + [LETTER])
        out.append(_item(bench, r["index"], r["image"].strip(), prompt, [r["answer"].strip()],
                         b64=True, options=options, group=int(r["index"]) % 1_000_000,
                         category=r.get("category", "")))
    return out


def read_seed(files, folder, bench="seed"):
    path = files.get("questions", "")
    data = _load_json(path, "seed questions")
    questions = _field(data, "questions", path, "the file")
    type_name = {v: k for k, v in data.get("question_type", {}).items()}
    out = []
    for q in questions:
        where = f"question {q.get('question_id')}"
        if q.get("data_type", "image") != "image":
            continue  # video questions are not part of the image benchmark
        options = [_field(q, f"choice_{c}", path, where) for c in "abcd"]
        image = os.path.join(folder, _field(q, "data_id", path, where))
        if not os.path.splitext(image)[1]:
            image += ".jpg"
        out.append(_item(bench, _field(q, "question_id", path, where), image,
                         _options_prompt(_field(q, "question", path, where), options),
                         [_field(q, "answer", path, where)], options=options,
                         question_type=type_name.get(q.get("question_type_id"), "")))
    return out


READERS: dict[str, Callable[..., list[dict]]] = {
    "gqa": read_gqa, "vqav2": read_vqav2, "vizwiz": read_vizwiz, "scienceqa": read_scienceqa,
    "textvqa": read_textvqa, "pope": read_pope, "mme": read_mme, "mmbench": read_mmbench,
    "seed": read_seed,
}


def read(kind: str, files: dict, image_folder: str = "", name: str | None = None) -> list[dict]:
    """The items of one benchmark (see the module docstring for `files`)."""
    if kind not in READERS:
        raise ValueError(f"unknown benchmark kind {kind!r}; known: {sorted(READERS)}")
    items = READERS[kind](dict(files), os.path.expanduser(image_folder or ""), bench=name or kind)
    if not items:
        raise BenchmarkFormatError(str(dict(files)), f"{kind}: no question read")
    return items


def benchmark_defaults() -> ml_collections.ConfigDict:
    """The keys of one `eval.benchmarks` entry; `kind` and `family` must be given."""
    return ml_collections.ConfigDict(dict(kind="", files={}, image_folder="", family="",
                                          limit=-1))


def read_all(benchmarks: Any) -> dict[str, tuple[dict, list[dict]]]:
    """name -> (its settings, its items); raises naming the file at fault."""
    out = {}
    for name, spec in dict(benchmarks).items():
        spec = merge_defaults(spec, benchmark_defaults(), f"eval.benchmarks.{name}",
                              whole=("files",)).to_dict()
        if not spec["kind"] or not spec["family"]:
            raise ValueError(f"eval.benchmarks.{name}: needs `kind` and `family`; keys "
                             f"{sorted(spec)}")
        items = read(spec["kind"], spec["files"], spec["image_folder"], name=name)
        limit = int(spec["limit"])
        items = items[:limit] if limit > 0 else items
        missing = [it["image"] for it in items if "image" in it and not os.path.isfile(it["image"])]
        if missing:
            raise FileNotFoundError(f"eval.benchmarks.{name}: {len(missing)} image(s) missing, "
                                    f"e.g. {missing[:3]}")
        out[name] = (spec, items)
    return out
