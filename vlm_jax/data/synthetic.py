"""The built-in synthetic VQA suite: examples deterministic from (seed, split, index).

Tasks: `count`, `exist`, `attribute`, `spatial`, `compare` (reasoning over rendered scenes,
see questions.py), `ocr` (2-4 characters drawn with the built-in 5x7 font: "what is written?"),
and `caption` ("describe the image."). Every example also carries the scene's caption (for
pretraining a vision tower) and its scene as JSON (for checking answers and for the tower's
per-patch labels, `patch_labels`): the objects, or for OCR each character's box.

Example i of a split is generated from `np.random.default_rng((seed, split_code, i))` alone, so
any subset can be generated in any order; scenes do not depend on the resolution.

    python -m vlm_jax.data.synthetic --grid docs/synthetic_grid.png [--resolution 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from typing import Any

import numpy as np

from vlm_jax.data import glyphs, questions, scenes

REASONING_TASKS = ("count", "exist", "attribute", "spatial", "compare")
DEFAULT_TASKS = REASONING_TASKS + ("ocr",)
TASKS = DEFAULT_TASKS + ("caption",)
SPLITS = {"train": 0, "validation": 1, "test": 2}
OCR_QUESTION = "what is written?"


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What the suite generates. `ocr_scale` 0 means max(1, resolution // 64).

    `eval_tasks` (empty: `tasks`) are the validation and test splits' tasks, e.g. the train
    mix without its captions; a task listed twice gets twice the questions.

    `ocr_cell` > 0 puts each OCR character in its own `ocr_cell`-pixel cell of a grid aligned
    with the image's top-left corner (e.g. the vision tower's patches): a character is then
    read from one patch, and a compressor that merges patches merges characters. 0: the text
    sits at any pixel offset, characters one font pixel apart.
    """

    resolution: int = 64
    num_train: int = 4000
    num_validation: int = 500
    num_test: int = 500
    seed: int = 0
    tasks: tuple[str, ...] = DEFAULT_TASKS
    max_objects: int = 8
    ocr_min_len: int = 2
    ocr_max_len: int = 4
    ocr_scale: int = 0
    ocr_cell: int = 0
    eval_tasks: tuple[str, ...] = ()

    def __post_init__(self):
        for key in ("tasks", "eval_tasks"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
            unknown = set(getattr(self, key)) - set(TASKS)
            if unknown or (key == "tasks" and not self.tasks):
                raise ValueError(f"synthetic.{key} {getattr(self, key)} has unknown task(s) "
                                 f"{sorted(unknown)} or is empty; known: {TASKS}")
        if not 16 <= self.resolution <= 1024:
            raise ValueError(f"synthetic.resolution must be in [16, 1024], got {self.resolution}")
        if not 2 <= self.max_objects <= scenes.GRID**2:
            raise ValueError(f"synthetic.max_objects must be in [2, {scenes.GRID**2}], "
                             f"got {self.max_objects}")
        if not 1 <= self.ocr_min_len <= self.ocr_max_len:
            raise ValueError(f"need 1 <= ocr_min_len <= ocr_max_len, got {self.ocr_min_len}, "
                             f"{self.ocr_max_len}")
        w, _ = glyphs.text_size("X" * self.ocr_max_len, self.text_scale)
        if self.ocr_cell:
            gw, gh = glyphs.GLYPH_W * self.text_scale, glyphs.GLYPH_H * self.text_scale
            if self.ocr_cell < max(gw, gh) + 1 or self.ocr_cell * self.ocr_max_len > \
                    self.resolution:
                raise ValueError(f"synthetic.ocr_cell = {self.ocr_cell} px must hold a glyph "
                                 f"({gw}x{gh} px at scale {self.text_scale}) with a margin, "
                                 f"and {self.ocr_max_len} cells must fit in "
                                 f"{self.resolution} px")
        elif w > self.resolution - 2:
            raise ValueError(f"{self.ocr_max_len} characters at scale {self.text_scale} are "
                             f"{w} px wide: more than a {self.resolution} px image holds")

    @property
    def text_scale(self) -> int:
        return self.ocr_scale or max(1, self.resolution // 64)

    def split_tasks(self, split: str) -> tuple[str, ...]:
        """The tasks of `split`, taken in turn: `eval_tasks` (when set) outside train."""
        return self.tasks if split == "train" or not self.eval_tasks else self.eval_tasks

    def num_examples(self, split: str) -> int:
        return {"train": self.num_train, "validation": self.num_validation,
                "test": self.num_test}[split]


def _ocr(rng: np.random.Generator, cfg: SyntheticConfig):
    """A short random string in the 5x7 font on a light background at a random place:
    (image, text, each character's box `[x0, y0, x1, y1]` as fractions of the image)."""
    n = int(rng.integers(cfg.ocr_min_len, cfg.ocr_max_len + 1))
    text = "".join(glyphs.ALPHABET[i] for i in rng.integers(len(glyphs.ALPHABET), size=n))
    res, scale = cfg.resolution, cfg.text_scale
    bg = tuple(int(v) for v in rng.integers(200, 256, size=3))
    fg = tuple(int(v) for v in rng.integers(0, 70, size=3))
    image = np.empty((res, res, 3), np.uint8)
    image[:] = bg
    gw, gh = glyphs.GLYPH_W * scale, glyphs.GLYPH_H * scale
    if cfg.ocr_cell:
        cell, cells = cfg.ocr_cell, res // cfg.ocr_cell
        row, col = int(rng.integers(cells)), int(rng.integers(cells - n + 1))
        corners = [((col + i) * cell + (cell - gw) // 2, row * cell + (cell - gh) // 2)
                   for i in range(n)]
    else:
        w, h = glyphs.text_size(text, scale)
        x, y = int(rng.integers(1, res - w)), int(rng.integers(1, res - h))
        corners = [(x + i * (gw + scale), y) for i in range(n)]
    for ch, (x, y) in zip(text, corners):
        glyphs.render_text(image, ch, x, y, scale, fg)
    boxes = [[x / res, y / res, (x + gw) / res, (y + gh) / res] for x, y in corners]
    return image, text, boxes


def generate_example(cfg: SyntheticConfig, split: str, index: int) -> dict[str, Any]:
    """Example `index` of `split`: image uint8 `[R, R, 3]`, question, answer(s), task, ..."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
    rng = np.random.default_rng((cfg.seed, SPLITS[split], index))
    split_tasks = cfg.split_tasks(split)
    task = split_tasks[index % len(split_tasks)]
    stratum = index // len(split_tasks)
    if task == "ocr":
        image, text, boxes = _ocr(rng, cfg)
        question, answer, caption = OCR_QUESTION, text, f"the text {text}."
        scene = [{"char": ch, "box": box} for ch, box in zip(text, boxes)]
    else:
        objs, question, answer = questions.SCENE_TASKS[task](rng, stratum, cfg.max_objects)
        image = scenes.render(objs, cfg.resolution)
        caption = scenes.caption(objs)
        answer = caption if answer is None else answer
        scene = scenes.to_json(objs)
    return {"id": f"{split}-{index:07d}", "image": image, "question": question,
            "answer": answer, "answers": [answer], "task": task, "caption": caption,
            "scene": json.dumps(scene, separators=(",", ":"))}


# Per-patch label heads of `patch_labels`: name -> number of classes (0 = nothing there).
PATCH_HEADS = {"color": len(scenes.COLORS) + 1, "shape": len(scenes.SHAPES) + 1,
               "size": len(scenes.SIZES) + 1, "char": len(glyphs.ALPHABET) + 1}


def patch_labels(scene: str, grid: int) -> np.ndarray:
    """int32 `[grid * grid, len(PATCH_HEADS)]`: for each patch of a `grid x grid` patch grid
    (row-major), the class of what the patch shows, per head of `PATCH_HEADS`.

    A scene object labels the patches its bounding square overlaps (its colour, shape and
    size; 1-based, 0 = nothing); an OCR character labels the patches whose centres lie in its
    glyph box. `scene` is an example's "scene" JSON.
    """
    items = json.loads(scene)
    centres = (np.arange(grid) + 0.5) / grid
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    labels = np.zeros((grid, grid, len(PATCH_HEADS)), np.int32)
    colors = list(scenes.COLORS)
    for item in items:
        if "char" in item:
            x0, y0, x1, y1 = item["box"]
            inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
            labels[inside, 3] = glyphs.ALPHABET.index(item["char"]) + 1
        else:
            o = scenes.Obj(**item)
            reach = o.r + 0.5 / grid  # object's half-width + the patch's
            inside = (np.abs(xs - o.x) < reach) & (np.abs(ys - o.y) < reach)
            labels[inside, :3] = (colors.index(o.color) + 1, scenes.SHAPES.index(o.shape) + 1,
                                  scenes.SIZES.index(o.size) + 1)
    return labels.reshape(grid * grid, len(PATCH_HEADS))


def save_grid(path: str, cfg: SyntheticConfig | None = None, rows: int = 4, cols: int = 4,
              split: str = "train", scale: int = 0) -> None:
    """A `rows x cols` sheet of examples with their question and answer, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = cfg or SyntheticConfig()
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows))
    for i, ax in enumerate(np.ravel(axes)):
        ex = generate_example(cfg, split, i)
        ax.imshow(ex["image"], interpolation="nearest")
        title = textwrap.fill(f"[{ex['task']}] {ex['question']} -> {ex['answer']}", 44)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"synthetic VQA suite, {cfg.resolution} px, seed {cfg.seed}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", required=True, help="output PNG path")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default=",".join(TASKS))
    args = p.parse_args(argv)
    cfg = SyntheticConfig(resolution=args.resolution, seed=args.seed,
                          tasks=tuple(args.tasks.split(",")))
    save_grid(args.grid, cfg)
    print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
