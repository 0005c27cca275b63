"""Scenes of 1-8 coloured shapes on a 3x3 grid: sampling, rendering and captions.

A scene is a list of `Obj`; each object sits in its own cell of a `GRID x GRID` grid (so
left/right/above/below between two objects in different columns/rows is unambiguous), with a
random offset inside the cell. Rendering draws at 2-4x and box-downsamples (anti-aliasing), so a
scene renders the same way at any resolution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38), "green": (22, 163, 74), "blue": (37, 99, 235),
    "yellow": (234, 196, 8), "purple": (147, 51, 234), "orange": (249, 115, 22),
}
SIZES = ("small", "large")
RADIUS = {"small": 0.22, "large": 0.40}  # in cell units
GRID = 3
BACKGROUND = (236, 236, 236)
NUMBER_WORDS = ("zero", "a", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclasses.dataclass(frozen=True)
class Obj:
    """One object: attributes, grid cell, and centre (x, y) / radius r as image fractions."""

    shape: str
    color: str
    size: str
    row: int = 0
    col: int = 0
    x: float = 0.0
    y: float = 0.0

    @property
    def r(self) -> float:
        return RADIUS[self.size] / GRID

    def matches(self, **attrs) -> bool:
        return all(getattr(self, k) == v for k, v in attrs.items())


Pred = Callable[[Obj], bool]


def random_obj(rng: np.random.Generator, exclude: Pred | None = None, **fixed) -> Obj:
    """A random object with the `fixed` attributes, for which `exclude(obj)` is False."""
    for _ in range(1000):
        obj = Obj(shape=fixed.get("shape", SHAPES[rng.integers(len(SHAPES))]),
                  color=fixed.get("color", list(COLORS)[rng.integers(len(COLORS))]),
                  size=fixed.get("size", SIZES[rng.integers(len(SIZES))]))
        if exclude is None or not exclude(obj):
            return obj
    raise ValueError(f"no object with {fixed} avoids the exclusion")  # only a generator bug


def place(rng: np.random.Generator, objs: list[Obj],
          cells: list[tuple[int, int] | None] | None = None) -> list[Obj]:
    """Puts objects in distinct grid cells (`cells[i]` fixes object i's cell; None is free)."""
    if len(objs) > GRID * GRID:
        raise ValueError(f"{len(objs)} objects do not fit a {GRID}x{GRID} grid")
    cells = list(cells or [None] * len(objs))
    taken = {c for c in cells if c is not None}
    free = [c for c in np.ndindex(GRID, GRID) if c not in taken]
    order = rng.permutation(len(free))
    k = 0
    out = []
    for obj, cell in zip(objs, cells):
        if cell is None:
            cell, k = free[order[k]], k + 1
        slack = 0.5 - RADIUS[obj.size] - 0.04  # keep the object inside its cell
        dx, dy = rng.uniform(-slack, slack, size=2)
        out.append(dataclasses.replace(obj, row=int(cell[0]), col=int(cell[1]),
                                       x=(cell[1] + 0.5 + dx) / GRID,
                                       y=(cell[0] + 0.5 + dy) / GRID))
    return out


def supersample(resolution: int) -> int:
    """Drawing scale: 4x for small images, 2x from 256 px (cost grows with the canvas)."""
    return 4 if resolution < 256 else 2


def render(objs: list[Obj], resolution: int) -> np.ndarray:
    """uint8 `[resolution, resolution, 3]` picture of the scene."""
    n = resolution * supersample(resolution)
    img = Image.new("RGB", (n, n), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in objs:
        x, y, r, c = o.x * n, o.y * n, o.r * n, COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=c)
        elif o.shape == "square":
            s = 0.85 * r
            draw.rectangle([x - s, y - s, x + s, y + s], fill=c)
        elif o.shape == "triangle":
            draw.polygon([(x, y - r), (x + 0.95 * r, y + 0.75 * r), (x - 0.95 * r, y + 0.75 * r)],
                         fill=c)
        elif o.shape == "diamond":
            draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=c)
        else:
            raise ValueError(f"unknown shape {o.shape!r}; known: {SHAPES}")
    return np.asarray(img.resize((resolution, resolution), Image.Resampling.BOX))


def plural(shape: str) -> str:
    return shape + "s"


def caption(objs: list[Obj]) -> str:
    """'two small red circles, a large blue square and a small green triangle.'"""
    groups: dict[tuple[str, str, str], int] = {}
    for o in sorted(objs, key=lambda o: (o.row, o.col)):
        key = (o.size, o.color, o.shape)
        groups[key] = groups.get(key, 0) + 1
    parts = [f"{NUMBER_WORDS[n]} {s} {c} {plural(sh) if n > 1 else sh}"
             for (s, c, sh), n in groups.items()]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text + "."


def to_json(objs: list[Obj]) -> list[dict]:
    return [dataclasses.asdict(o) for o in objs]


def from_json(items: list[dict]) -> list[Obj]:
    return [Obj(**d) for d in items]
