"""The built-in synthetic VQA suite: examples deterministic from (seed, split, index).

Tasks: `count`, `exist`, `attribute`, `spatial`, `compare` (reasoning over rendered scenes,
see questions.py), `ocr` (2-4 characters drawn with the built-in 5x7 font: "what is written?"),
and `caption` ("describe the image."). Every example also carries the scene's caption (for
pretraining a vision tower) and its scene as JSON (for checking answers).

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
    """A short random string in the 5x7 font on a light background at a random place."""
    n = int(rng.integers(cfg.ocr_min_len, cfg.ocr_max_len + 1))
    text = "".join(glyphs.ALPHABET[i] for i in rng.integers(len(glyphs.ALPHABET), size=n))
    res, scale = cfg.resolution, cfg.text_scale
    bg = tuple(int(v) for v in rng.integers(200, 256, size=3))
    fg = tuple(int(v) for v in rng.integers(0, 70, size=3))
    image = np.empty((res, res, 3), np.uint8)
    image[:] = bg
    if cfg.ocr_cell:
        cell, cells = cfg.ocr_cell, res // cfg.ocr_cell
        row, col = int(rng.integers(cells)), int(rng.integers(cells - n + 1))
        gw, gh = glyphs.GLYPH_W * scale, glyphs.GLYPH_H * scale
        for i, ch in enumerate(text):  # one character per cell, centred in it
            glyphs.render_text(image, ch, (col + i) * cell + (cell - gw) // 2,
                               row * cell + (cell - gh) // 2, scale, fg)
        return image, text
    w, h = glyphs.text_size(text, scale)
    x, y = int(rng.integers(1, res - w)), int(rng.integers(1, res - h))
    glyphs.render_text(image, text, x, y, scale, fg)
    return image, text


def generate_example(cfg: SyntheticConfig, split: str, index: int) -> dict[str, Any]:
    """Example `index` of `split`: image uint8 `[R, R, 3]`, question, answer(s), task, ..."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
    rng = np.random.default_rng((cfg.seed, SPLITS[split], index))
    split_tasks = cfg.split_tasks(split)
    task = split_tasks[index % len(split_tasks)]
    stratum = index // len(split_tasks)
    if task == "ocr":
        image, text = _ocr(rng, cfg)
        objs, question, answer, caption = [], OCR_QUESTION, text, f"the text {text}."
    else:
        objs, question, answer = questions.SCENE_TASKS[task](rng, stratum, cfg.max_objects)
        image = scenes.render(objs, cfg.resolution)
        caption = scenes.caption(objs)
        answer = caption if answer is None else answer
    return {"id": f"{split}-{index:07d}", "image": image, "question": question,
            "answer": answer, "answers": [answer], "task": task, "caption": caption,
            "scene": json.dumps(scenes.to_json(objs), separators=(",", ":"))}


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
