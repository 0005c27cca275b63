"""The synthetic suite written to disk in the formats real VLM data ships in.

`export_suite(cfg, root, ...)` writes the layout a `data_root` of the real data has (the
paper's sweep config reads the same paths, `training_layout` / `benchmark_layout`):

    LLaVA-Pretrain/blip_laion_cc_sbu_558k.json + images/   caption conversations (stage 1)
    llava_v1_5_mix665k.json + synthetic/                   question / answer mix (stage 2)
    eval/<benchmark>/...                                   test questions in each benchmark's
                                                           own layout (vlm_jax.data.benchmarks)

`benchmark_layout(root)` is ready for `config.eval.benchmarks` (kind, files, image_folder;
the family is the caller's). Test
examples go to the benchmarks whose question type they fit: open answers to GQA / VQAv2 /
VizWiz, the OCR task to TextVQA, yes/no to POPE, option letters (the answer plus distractors
from the same task's answers) to ScienceQA / MMBench (with circular variants) / SEED, and
MME's yes-and-no question pairs are asked about scenes' objects and texts.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os

import numpy as np
from PIL import Image

from vlm_jax.data import benchmarks as bl
from vlm_jax.data import scenes
from vlm_jax.data.synthetic import SyntheticConfig, generate_example
from vlm_jax.data.tokenizer import IMAGE_TOKEN

OPEN = ("count", "attribute", "spatial", "compare", "exist")
CHOICE = ("count", "attribute")


def _save(image: np.ndarray, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, **({"quality": 95} if path.endswith(".jpg") else {}))
    return path


def _dump(obj, path: str, lines: bool = False) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        if lines:
            f.write("".join(json.dumps(r) + "\n" for r in obj))
        else:
            json.dump(obj, f)
    return path


def training_layout(root: str) -> dict:
    """Stage 1 / stage 2 annotation files and the image folders their paths are relative to."""
    return {"pretrain": os.path.join(root, "LLaVA-Pretrain", "blip_laion_cc_sbu_558k.json"),
            "pretrain_images": os.path.join(root, "LLaVA-Pretrain", "images"),
            "mix": os.path.join(root, "llava_v1_5_mix665k.json"), "mix_images": root}


def _conversation(ex: dict, image: str, suffix: str = "") -> dict:
    question = ex["question"] + (f"\n{suffix}" if suffix else "")
    return {"id": ex["id"], "image": image, "conversations": [
        {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
        {"from": "gpt", "value": ex["answer"]}]}


def export_training(cfg: SyntheticConfig, root: str, num_pretrain: int, num_mix: int) -> dict:
    """Stage-1 captions and the stage-2 question mix (plus captions)."""
    lay = training_layout(root)
    pretrain, mix = [], []
    cap = dataclasses.replace(cfg, tasks=("caption",))
    for i in range(num_pretrain):
        ex = generate_example(cap, "train", i)
        _save(ex["image"], os.path.join(lay["pretrain_images"], f"{ex['id']}.png"))
        pretrain.append(_conversation(ex, f"{ex['id']}.png"))
    for i in range(num_mix):
        ex = generate_example(cfg, "train", i)
        rel = f"synthetic/{ex['id']}.png"
        _save(ex["image"], os.path.join(lay["mix_images"], rel))
        mix.append(_conversation(ex, rel, "" if ex["task"] == "caption" else bl.SHORT))
    _dump(pretrain, lay["pretrain"])
    _dump(mix, lay["mix"])
    return lay


def _options(ex: dict, pool: list[str], rng, n: int = 4) -> tuple[list[str], int]:
    others = [a for a in dict.fromkeys(pool) if a != ex["answer"]]
    picked = [others[i] for i in rng.permutation(len(others))[: n - 1]]
    options = picked + [ex["answer"]]
    order = rng.permutation(len(options))
    options = [options[i] for i in order]
    return options, options.index(ex["answer"])


def _mme_pairs(ex: dict) -> list[tuple[str, str]]:
    """A question answered yes and one answered no about the same image."""
    if ex["task"] == "ocr":
        wrong = ex["answer"][::-1] if ex["answer"][::-1] != ex["answer"] else ex["answer"] + "X"
        return [(f"is the text {ex['answer']}? Please answer yes or no.", "Yes"),
                (f"is the text {wrong}? Please answer yes or no.", "No")]
    objs = scenes.from_json(json.loads(ex["scene"]))
    present = {(o.color, o.shape) for o in objs}
    absent = next((c, s) for c in scenes.COLORS for s in scenes.SHAPES if (c, s) not in present)
    color, shape = sorted(present)[0]
    return [(f"is there a {color} {shape}? Please answer yes or no.", "Yes"),
            (f"is there a {absent[0]} {absent[1]}? Please answer yes or no.", "No")]


def benchmark_layout(root: str) -> dict:
    """name -> {kind, files, image_folder} of every benchmark under `root/eval` (LLaVA-1.5's
    evaluation files, each where its benchmark's download unpacks)."""
    e = os.path.join(root, "eval")
    j = os.path.join
    return {
        "gqa": {"kind": "gqa", "image_folder": j(e, "gqa", "images"),
                "files": {"questions": j(e, "gqa", "testdev_balanced_questions.json")}},
        "vqav2": {"kind": "vqav2", "image_folder": j(e, "vqav2", "val2014"), "files": {
            "questions": j(e, "vqav2", "v2_OpenEnded_mscoco_val2014_questions.json"),
            "annotations": j(e, "vqav2", "v2_mscoco_val2014_annotations.json")}},
        "vizwiz": {"kind": "vizwiz", "image_folder": j(e, "vizwiz", "val"),
                   "files": {"annotations": j(e, "vizwiz", "val.json")}},
        "scienceqa": {"kind": "scienceqa", "image_folder": j(e, "scienceqa", "images"), "files": {
            "problems": j(e, "scienceqa", "problems.json"),
            "pid_splits": j(e, "scienceqa", "pid_splits.json")}},
        "textvqa": {"kind": "textvqa", "image_folder": j(e, "textvqa", "train_images"),
                    "files": {"annotations": j(e, "textvqa", "TextVQA_0.5.1_val.json")}},
        "pope": {"kind": "pope", "image_folder": j(e, "pope", "val2014"),
                 "files": {c: j(e, "pope", f"coco_pope_{c}.json") for c in bl.POPE_CATEGORIES}},
        "mme": {"kind": "mme", "files": {"root": j(e, "MME_Benchmark_release_version")}},
        "mmbench": {"kind": "mmbench",
                    "files": {"tsv": j(e, "mmbench", "mmbench_dev_20230712.tsv")}},
        "seed": {"kind": "seed", "image_folder": j(e, "seed", "SEED-Bench-image"),
                 "files": {"questions": j(e, "seed", "SEED-Bench.json")}},
    }


class _Draw:
    """Test examples by task, handed out round-robin over the tasks asked for."""

    def __init__(self, cfg: SyntheticConfig):
        self.by_task: dict[str, list[dict]] = {}
        for i in range(cfg.num_test):
            ex = generate_example(cfg, "test", i)
            self.by_task.setdefault(ex["task"], []).append(ex)
        self.pools = {t: [e["answer"] for e in exs] for t, exs in self.by_task.items()}
        self.left = {t: iter(exs) for t, exs in self.by_task.items()}

    def __call__(self, tasks, n: int) -> list[dict]:
        got, live = [], [t for t in tasks if t in self.left]
        while len(got) < n and live:
            for t in list(live):
                ex = next(self.left[t], None)
                if ex is None:
                    live.remove(t)
                elif len(got) < n:
                    got.append(ex)
        if len(got) < n:
            raise ValueError(f"export: the test split has too few {tasks} examples for {n} "
                             "questions per benchmark (raise synthetic.num_test)")
        return got


def export_benchmarks(cfg: SyntheticConfig, root: str, n: int) -> dict:
    """`n` test questions per benchmark, written in its layout (`benchmark_layout(root)`)."""
    rng = np.random.default_rng(cfg.seed)
    draw, lay = _Draw(cfg), benchmark_layout(root)
    img = lambda name, *parts: os.path.join(lay[name]["image_folder"], *parts)  # noqa: E731
    files = {k: v["files"] for k, v in lay.items()}

    gqa = {}
    for ex in draw(OPEN, n):
        _save(ex["image"], img("gqa", f"{ex['id']}.jpg"))
        gqa[ex["id"]] = {"imageId": ex["id"], "question": ex["question"], "answer": ex["answer"],
                         "types": {"structural": "verify" if ex["answer"] in ("yes", "no")
                                   else "query", "semantic": ex["task"]}}
    _dump(gqa, files["gqa"]["questions"])

    qs, anns = [], []
    for k, ex in enumerate(draw(OPEN, n)):
        _save(ex["image"], img("vqav2", f"COCO_val2014_{k:012d}.jpg"))
        qs.append({"image_id": k, "question": ex["question"], "question_id": k * 10})
        anns.append({"question_id": k * 10, "image_id": k, "answer_type": ex["task"],
                     "answers": [{"answer": ex["answer"], "answer_confidence": "yes",
                                  "answer_id": i + 1} for i in range(10)]})
    _dump({"data_subtype": "val2014", "questions": qs}, files["vqav2"]["questions"])
    _dump({"annotations": anns}, files["vqav2"]["annotations"])

    rows = []
    for k, ex in enumerate(draw(OPEN, n)):
        name = f"VizWiz_val_{k:08d}.jpg"
        _save(ex["image"], img("vizwiz", name))
        rows.append({"image": name, "question": ex["question"], "answerable": 1,
                     "answer_type": ex["task"],
                     "answers": [{"answer": ex["answer"], "answer_confidence": "yes"}] * 10})
    _dump(rows, files["vizwiz"]["annotations"])

    data = []
    for ex in draw(("ocr",), n):
        _save(ex["image"], img("textvqa", f"{ex['id']}.jpg"))
        data.append({"question_id": len(data), "question": ex["question"], "image_id": ex["id"],
                     "answers": [ex["answer"]] * 10})
    _dump({"dataset_name": "textvqa", "data": data}, files["textvqa"]["annotations"])

    exist = draw(("exist",), n)
    for c, cat in enumerate(bl.POPE_CATEGORIES):
        lines = []
        for k, ex in enumerate(exist[c::3]):
            _save(ex["image"], img("pope", f"{ex['id']}.png"))
            lines.append({"question_id": k, "image": f"{ex['id']}.png", "text": ex["question"],
                          "label": ex["answer"]})
        _dump(lines, files["pope"][cat], lines=True)

    problems = {}
    for ex in draw(CHOICE, n):
        choices, answer = _options(ex, draw.pools[ex["task"]], rng)
        _save(ex["image"], img("scienceqa", "test", ex["id"], "image.png"))
        problems[ex["id"]] = {"question": ex["question"], "choices": choices, "answer": answer,
                              "hint": "", "image": "image.png", "split": "test",
                              "subject": ex["task"]}
    _dump(problems, files["scienceqa"]["problems"])
    _dump({"test": list(problems)}, files["scienceqa"]["pid_splits"])

    lines = ["index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage"]
    for k, ex in enumerate(draw(CHOICE, n)):
        options, answer = _options(ex, draw.pools[ex["task"]], rng)
        buf = io.BytesIO()
        Image.fromarray(ex["image"]).save(buf, format="PNG")
        image = base64.b64encode(buf.getvalue()).decode()
        for turn in range(2):  # the question and one circular variant (options rotated)
            rot = options[turn:] + options[:turn]
            lines.append("\t".join([str(k + turn * 1_000_000), ex["question"], "",
                                    *(rot + [""] * (4 - len(rot))),
                                    "ABCD"[rot.index(options[answer])], ex["task"], image]))
    os.makedirs(os.path.dirname(files["mmbench"]["tsv"]), exist_ok=True)
    with open(files["mmbench"]["tsv"], "w") as f:
        f.write("\n".join(lines) + "\n")

    questions = []
    for ex in draw(CHOICE, n):
        options, answer = _options(ex, draw.pools[ex["task"]], rng)
        options += [o for o in ("none", "other", "all", "both") if o not in options][
            : 4 - len(options)]
        _save(ex["image"], img("seed", f"{ex['id']}.png"))
        questions.append({"question_id": ex["id"], "question": ex["question"],
                          **{f"choice_{c}": o for c, o in zip("abcd", options)},
                          "answer": "ABCD"[answer], "data_id": f"{ex['id']}.png",
                          "data_type": "image", "question_type_id": 1 + CHOICE.index(ex["task"])})
    _dump({"questions": questions, "question_type": {"Instance Counting": 1,
                                                     "Instance Attributes": 2}},
          files["seed"]["questions"])

    mme = files["mme"]["root"]
    scene_pool, ocr_pool = draw(("exist", "count", "attribute"), 2), draw(("ocr",), 2)
    for task in bl.MME_PERCEPTION + bl.MME_COGNITION:  # 2 images per subtask, 2 questions each
        for ex in ocr_pool if task == "OCR" else scene_pool:
            _save(ex["image"], os.path.join(mme, task, f"{ex['id']}.png"))
            with open(os.path.join(mme, task, f"{ex['id']}.txt"), "w") as f:
                f.write("".join(f"{q}\t{a}\n" for q, a in _mme_pairs(ex)))
    return lay


def export_suite(cfg: SyntheticConfig, root: str, num_pretrain: int, num_mix: int,
                 per_benchmark: int) -> dict:
    """Training files and every benchmark's files under `root` (see the module docstring)."""
    out = export_training(cfg, root, num_pretrain, num_mix)
    out["benchmarks"] = export_benchmarks(cfg, root, per_benchmark)
    return out
