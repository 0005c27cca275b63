"""LLaVA conversation / eval-file sources on a tmp folder of real PNGs, and bad input."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from vlm_jax import data
from vlm_jax.data.sources import (
    DataError,
    LlavaConversationSource,
    MMBenchSource,
    VQAEvalSource,
    load_image,
)

COLORS = {"a.png": (255, 0, 0), "b.png": (0, 255, 0), "sub/c.png": (0, 0, 255)}


def _png(path, color, size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _conv(sid, image, q="<image>\nwhat color is it?", a="red", more=()):
    conv = [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    for q2, a2 in more:
        conv += [{"from": "human", "value": q2}, {"from": "gpt", "value": a2}]
    rec = {"id": sid, "conversations": conv}
    if image is not None:
        rec["image"] = image
    return rec


@pytest.fixture
def folder(tmp_path):
    for name, color in COLORS.items():
        _png(tmp_path / "images" / name, color)
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    records = [
        _conv("good1", "a.png"),
        _conv("good2", "sub/c.png", a="blue", more=[("and the shape?", "square")]),
        _conv("corrupt", "corrupt.png"),
        _conv("missing", "nope.png"),
        _conv("nomarker", "b.png", q="what color is it?"),
        _conv("twomarkers", "b.png", q="<image> <image>\nwhat?"),
        _conv("textonly", None),
        _conv("long", "b.png", a="red " * 400),
        {"id": "badroles", "image": "b.png", "conversations": [{"from": "gpt", "value": "x"},
                                                               {"from": "human", "value": "y"}]},
        _conv("good3", "b.png", a="green"),
    ]
    (tmp_path / "llava.json").write_text(json.dumps(records))
    (tmp_path / "llava.jsonl").write_text("\n".join(json.dumps(r) for r in records[:2]))
    return tmp_path


def test_conversation_source_raises_naming_sample_and_file(folder):
    with pytest.raises(DataError, match=r"'missing' in .*llava.json.*nope.png"):
        LlavaConversationSource(str(folder / "llava.json"), str(folder / "images"))
    good = [_conv("x", "a.png", q="what?")]
    (folder / "nomarker.json").write_text(json.dumps(good))
    with pytest.raises(DataError, match=r"'x' in .*nomarker.json.*<image>"):
        LlavaConversationSource(str(folder / "nomarker.json"), str(folder / "images"))


def test_conversation_source_skip_counts(folder):
    src = LlavaConversationSource(str(folder / "llava.json"), str(folder / "images"),
                                  on_error="skip")
    assert [src[i]["id"] for i in range(len(src))] == ["good1", "good2", "corrupt", "long",
                                                       "good3"]
    assert src.skipped == {"missing_image": 2, "no_image_marker": 2, "bad_format": 1}
    rec = src[1]
    assert rec["turns"] == [["<image>\nwhat color is it?", "blue"], ["and the shape?", "square"]]
    assert rec["question"] == "what color is it?" and rec["answers"] == ["blue"]
    np.testing.assert_array_equal(load_image(rec)[0, 0], COLORS["sub/c.png"])
    with pytest.raises(DataError, match=r"'corrupt' in .*corrupt.png.*\[corrupt_image\]"):
        load_image(src[2])
    jsonl = LlavaConversationSource(str(folder / "llava.jsonl"), str(folder / "images"))
    assert len(jsonl) == 2


def _llava_cfg(folder, on_error):
    cfg = data.default_config()
    cfg.source = "llava"
    cfg.files.train = str(folder / "llava.json")
    cfg.image_folder = str(folder / "images")
    cfg.on_error = on_error
    cfg.tokenizer.kind = "hf"
    from test_data_tokenizer import make_hf_tokenizer

    cfg.tokenizer.path = make_hf_tokenizer(folder / "tok")
    cfg.template = "vicuna_v1"
    cfg.max_text_len = 200
    return cfg


def test_llava_loader_skips_corrupt_and_long_with_counts(folder):
    loader = data.make_loader(_llava_cfg(folder, "skip"), split="train", batch_size=3,
                              num_visual_tokens=4, image_size=16, normalization="clip",
                              seed=0, shard_index=0, shard_count=1, mode="eval")
    batches = list(loader)
    ids = [i for b in batches for i, m in zip(b["id"], b["example_mask"]) if m]
    assert sorted(ids) == ["good1", "good2", "good3"]
    assert loader.skipped == {"missing_image": 2, "no_image_marker": 2, "bad_format": 1,
                              "corrupt_image": 1, "too_long": 1}
    b = batches[0]
    assert b["images"].shape == (3, 16, 16, 3) and b["tokens"].shape == (3, 204)


def test_llava_loader_raises_on_corrupt(folder):
    cfg = _llava_cfg(folder, "raise")
    cfg.files.train = str(folder / "two.json")
    (folder / "two.json").write_text(json.dumps([_conv("good1", "a.png"),
                                                 _conv("corrupt", "corrupt.png")]))
    loader = data.make_loader(cfg, split="train", batch_size=2, num_visual_tokens=4,
                              image_size=16, seed=0, shard_index=0, shard_count=1, mode="eval")
    with pytest.raises(DataError, match=r"'corrupt' in .*two.json"):
        list(loader)
    cfg.files.train = str(folder / "long.json")
    (folder / "long.json").write_text(json.dumps([_conv("long", "a.png", a="red " * 400)]))
    loader = data.make_loader(cfg, split="train", batch_size=1, num_visual_tokens=4,
                              image_size=16, seed=0, shard_index=0, shard_count=1, mode="eval")
    with pytest.raises(DataError, match=r"'long' in .*long.json.*max_text_len 200"):
        list(loader)


def test_vqa_eval_jsonl(folder):
    rows = [{"question_id": 7, "image": "a.png", "text": "What is written?",
             "answers": ["stop", "stop", "halt"] + ["stop"] * 7, "category": "textvqa"},
            {"question_id": 8, "image": "b.png", "text": "Is there a dog?", "label": "no"},
            {"question_id": 9, "image": "b.png", "question": "<image>\nWhich?",
             "answer": "left"},
            {"question_id": 10, "image": "gone.png", "text": "?"}]
    path = folder / "eval.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"10 in .*eval.jsonl"):
        VQAEvalSource(str(path), str(folder / "images"))
    src = VQAEvalSource(str(path), str(folder / "images"), on_error="skip", task="pope",
                        question_suffix="Answer the question using a single word or phrase.")
    assert len(src) == 3 and src.skipped == {"missing_image": 1}
    r = src[0]
    assert r["id"] == "7" and r["task"] == "textvqa" and r["answer"] == "stop"
    assert len(r["answers"]) == 10
    assert r["turns"][0][0] == ("<image>\nWhat is written?\nAnswer the question using a single "
                                "word or phrase.")
    assert src[1]["answers"] == ["no"] and src[1]["task"] == "pope"
    assert src[2]["question"].startswith("Which?")  # the file's own marker is not doubled
    assert src[2]["turns"][0][0].count("<image>") == 1


def _b64_png(color):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_mmbench_tsv(folder):
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage"
    rows = [f"1\tWhat color?\tLook closely.\tred\tgreen\tblue\t\tA\tcolor\t{_b64_png((255, 0, 0))}",
            "2\tWhich?\tnan\tx\ty\tnan\tnan\tB\tother\t!!notbase64png!!"]
    path = folder / "mmbench.tsv"
    path.write_text("\n".join([header, *rows]) + "\n")
    src = MMBenchSource(str(path))
    assert len(src) == 2
    r = src[0]
    assert r["question"].startswith("Look closely.\nWhat color?\nA. red\nB. green\nC. blue\n")
    assert "D." not in r["question"] and r["answer"] == "A" and r["task"] == "color"
    np.testing.assert_array_equal(load_image(r)[0, 0], (255, 0, 0))
    assert src[1]["question"].startswith("Which?\nA. x\nB. y\nAnswer with")
    with pytest.raises(DataError, match=r"'2' in .*mmbench.tsv.*\[corrupt_image\]"):
        load_image(src[1])


def test_unknown_split_and_bad_on_error(folder):
    cfg = _llava_cfg(folder, "raise")
    with pytest.raises(ValueError, match="no file for split 'validation'"):
        data.make_source(cfg, "validation")
    with pytest.raises(ValueError, match="on_error"):
        LlavaConversationSource(str(folder / "llava.json"), str(folder), on_error="ignore")


def test_malformed_jsonl_line_names_its_line_and_skip_covers_it(folder):
    good = [json.dumps(_conv("a", "a.png")), json.dumps(_conv("b", "b.png"))]
    lines = [good[0], "", '{"id": "broken", "conversations": [', "[1, 2]", good[1]]
    path = folder / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"'line 3' in .*broken\.jsonl: not valid JSON "
                                        r"\(Expecting value at column 36\)"):
        LlavaConversationSource(str(path), str(folder / "images"))
    src = LlavaConversationSource(str(path), str(folder / "images"), on_error="skip")
    assert [src[i]["id"] for i in range(len(src))] == ["a", "b"]
    assert src.skipped == {"bad_format": 2}
    eval_src = VQAEvalSource(str(path), str(folder / "images"), on_error="skip")
    assert eval_src.skipped["bad_format"] >= 2
    (folder / "broken.json").write_text('[{"id": 1},\n {"id": 2')
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON .* line 2"):
        LlavaConversationSource(str(folder / "broken.json"), str(folder / "images"))
