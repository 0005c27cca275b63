"""The synthetic suite: determinism, balance, answers correct for the rendered scene, OCR."""

import collections
import json
import re

import numpy as np
import pytest

from vlm_jax.data import glyphs, scenes
from vlm_jax.data.synthetic import SyntheticConfig, generate_example, save_grid

CFG = SyntheticConfig(resolution=64, num_train=1200)
N = 1200


@pytest.fixture(scope="module")
def examples():
    return [generate_example(CFG, "train", i) for i in range(N)]


def _pred(desc: str) -> dict:
    """'large red objects' / 'red circles' / 'small blue object' -> attribute constraints."""
    pred = {}
    for w in desc.split():
        if w in scenes.COLORS:
            pred["color"] = w
        elif w in scenes.SIZES:
            pred["size"] = w
        elif w.rstrip("s") in scenes.SHAPES or w in scenes.SHAPES:
            pred["shape"] = w if w in scenes.SHAPES else w[:-1]
        else:
            assert w in ("object", "objects"), desc
    return pred


def _unique(objs, **attrs):
    hits = [o for o in objs if o.matches(**attrs)]
    assert len(hits) == 1, (attrs, objs)
    return hits[0]


def _answer_from_scene(q: str, objs) -> str:
    """Recomputes the answer from the scene description alone (independent of questions.py)."""
    yn = lambda b: "yes" if b else "no"
    if m := re.fullmatch(r"how many (.+) are there\?", q):
        return str(sum(o.matches(**_pred(m[1])) for o in objs))
    if m := re.fullmatch(r"is there a (.+)\?", q):
        return yn(any(o.matches(**_pred(m[1])) for o in objs))
    if m := re.fullmatch(r"what color is the (\w+)\?", q):
        return _unique(objs, shape=m[1]).color
    if m := re.fullmatch(r"what shape is the (\w+) object\?", q):
        return _unique(objs, color=m[1]).shape
    if m := re.fullmatch(r"what size is the (\w+) (\w+)\?", q):
        return _unique(objs, color=m[1], shape=m[2]).size
    if m := re.fullmatch(r"is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?",
                         q):
        a, b = _unique(objs, color=m[1], shape=m[2]), _unique(objs, color=m[4], shape=m[5])
        gap = {"left of": b.x - a.x, "right of": a.x - b.x, "above": b.y - a.y,
               "below": a.y - b.y}[m[3]]
        assert abs(gap) > 0.1  # never ambiguous: different grid column / row
        return yn(gap > 0)
    m = (re.fullmatch(r"are there more (\w+ objects) than (\w+ objects)\?", q)
         or re.fullmatch(r"are there more (\w+s) than (\w+s)\?", q))
    if m:
        n1 = sum(o.matches(**_pred(m[1])) for o in objs)
        n2 = sum(o.matches(**_pred(m[2])) for o in objs)
        assert n1 != n2
        return yn(n1 > n2)
    raise AssertionError(f"unparsed question {q!r}")


def _parse_caption(text: str) -> collections.Counter:
    words = {w: i for i, w in enumerate(scenes.NUMBER_WORDS)}
    out = collections.Counter()
    for part in re.split(r", | and ", text.rstrip(".")):
        num, size, color, shape = part.split()
        out[(size, color, shape.rstrip("s") if num != "a" else shape)] += words[num]
    return out


def read_ocr(image: np.ndarray, scale: int) -> str:
    """Reads the 5x7-font text back out of an OCR image by exact glyph matching."""
    dark = image.max(axis=2) < 128
    ys, xs = np.nonzero(dark)
    top = ys.min()  # every glyph inks its top row; not every glyph its left column
    for shift in range(glyphs.GLYPH_W):
        left = xs.min() - shift * scale
        if left < 0:
            break
        cells = dark[top:top + glyphs.GLYPH_H * scale:scale, left::scale]
        out, x = [], 0
        while x + glyphs.GLYPH_W <= cells.shape[1] and cells[:, x:].any():
            hits = [c for c, g in glyphs.GLYPHS.items()
                    if np.array_equal(g, cells[:, x:x + glyphs.GLYPH_W])]
            if len(hits) != 1:
                break
            out.append(hits[0])
            x += glyphs.GLYPH_W + 1
        else:
            redrawn = np.zeros_like(image)
            text = "".join(out)
            glyphs.render_text(redrawn, text, left, top, scale, (255, 255, 255))
            if np.array_equal(redrawn[..., 0] > 0, dark):
                return text
    raise AssertionError("no text found")


def test_deterministic_from_seed():
    a = generate_example(CFG, "train", 16)  # a scene task (16 % 6 tasks = compare)
    b = generate_example(CFG, "train", 16)
    assert all(np.array_equal(a[k], b[k]) if k == "image" else a[k] == b[k] for k in a)
    other_seed = generate_example(SyntheticConfig(resolution=64, seed=1), "train", 16)
    other_split = generate_example(CFG, "validation", 16)
    assert a["scene"] != other_seed["scene"] and a["scene"] != other_split["scene"]
    # Scenes do not depend on the resolution.
    assert generate_example(SyntheticConfig(resolution=32), "train", 16)["scene"] == a["scene"]


def test_answers_balanced(examples):
    by_task = collections.defaultdict(collections.Counter)
    for ex in examples:
        by_task[ex["task"]][ex["answer"]] += 1
    for task in ("exist", "spatial", "compare"):
        yes, no = by_task[task]["yes"], by_task[task]["no"]
        assert abs(yes - no) <= 1 and yes + no == N // 6, (task, by_task[task])
    counts = by_task["count"]
    assert sorted(counts) == [str(k) for k in range(7)]
    assert max(counts.values()) - min(counts.values()) <= 1
    colors = {a: n for a, n in by_task["attribute"].items() if a in scenes.COLORS}
    assert len(colors) == 6 and min(colors.values()) >= 0.4 * max(colors.values())


def test_every_answer_matches_its_scene(examples):
    for ex in examples:
        if ex["task"] == "ocr":  # the scene is the characters' boxes, in reading order
            assert "".join(item["char"] for item in json.loads(ex["scene"])) == ex["answer"]
            continue
        objs = scenes.from_json(json.loads(ex["scene"]))
        assert 1 <= len(objs) <= CFG.max_objects
        assert len({(o.row, o.col) for o in objs}) == len(objs)  # one object per cell
        assert _parse_caption(ex["caption"]) == collections.Counter(
            (o.size, o.color, o.shape) for o in objs)
        if ex["task"] == "caption":
            assert ex["answer"] == ex["caption"]
        else:
            assert _answer_from_scene(ex["question"], objs) == ex["answer"], ex
        assert ex["answers"] == [ex["answer"]]


def test_rendered_pixels_match_scene(examples):
    """The pixel under each object's centre has the object's colour."""
    for ex in (e for e in examples[:300] if e["task"] != "ocr"):
        for o in scenes.from_json(json.loads(ex["scene"])):
            px = ex["image"][int(o.y * CFG.resolution), int(o.x * CFG.resolution)]
            assert np.abs(px.astype(int) - scenes.COLORS[o.color]).max() <= 12, (ex["id"], o)


@pytest.mark.parametrize("resolution", [32, 64, 160])
def test_ocr_text_is_legible(resolution):
    cfg = SyntheticConfig(resolution=resolution, tasks=("ocr",))
    seen = {}
    for i in range(40):
        ex = generate_example(cfg, "train", i)
        assert ex["image"].shape == (resolution, resolution, 3)
        assert 2 <= len(ex["answer"]) <= 4 and set(ex["answer"]) <= set(glyphs.ALPHABET)
        assert read_ocr(ex["image"], cfg.text_scale) == ex["answer"]
        seen[ex["answer"]] = ex["image"]
    assert len(seen) >= 38  # different strings, different images
    imgs = list(seen.values())
    assert not np.array_equal(imgs[0], imgs[1])


def test_glyphs_are_distinct():
    flat = {g.tobytes() for g in glyphs.GLYPHS.values()}
    assert len(flat) == len(glyphs.GLYPHS) == 36


def test_config_errors():
    with pytest.raises(ValueError, match="unknown task"):
        SyntheticConfig(tasks=("count", "nope"))
    with pytest.raises(ValueError, match="does not fit|more than"):
        SyntheticConfig(resolution=16, ocr_max_len=4, ocr_scale=1)
    with pytest.raises(ValueError, match="max_objects"):
        SyntheticConfig(max_objects=12)


def test_generation_is_cheap():
    import time

    cfg = SyntheticConfig(resolution=32)
    t = time.perf_counter()
    for i in range(500):
        generate_example(cfg, "train", i)
    assert time.perf_counter() - t < 10.0  # ~1 s on one core


def test_grid_png(tmp_path):
    path = tmp_path / "grid.png"
    save_grid(str(path), SyntheticConfig(resolution=32), rows=2, cols=2)
    from PIL import Image

    assert Image.open(path).size[0] > 200


def all_texts(cfg: SyntheticConfig, split: str = "train", limit: int = 2000) -> list[str]:
    """Questions, answers and captions of the first `limit` examples (vocab checks)."""
    out = []
    for i in range(min(limit, cfg.num_examples(split))):
        ex = generate_example(cfg, split, i)
        out += [ex["question"], ex["answer"], ex["caption"]]
    return out


def test_all_texts_cover_tasks():
    texts = all_texts(SyntheticConfig(tasks=("count", "ocr", "caption")), limit=30)
    assert any("how many" in t for t in texts) and any("what is written" in t for t in texts)


@pytest.mark.parametrize("max_objects", [2, 3, 5, 9])
def test_every_task_generates_at_any_allowed_max_objects(max_objects):
    cfg = SyntheticConfig(max_objects=max_objects, num_train=60)
    for i in range(60):
        ex = generate_example(cfg, "train", i)
        limit = cfg.ocr_max_len if ex["task"] == "ocr" else max_objects  # characters / objects
        assert len(json.loads(ex["scene"])) <= limit
