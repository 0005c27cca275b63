"""The synthetic suite's question generators: each builds a scene *for* a chosen answer.

Every generator takes `(rng, stratum, max_objects)` and returns `(objects, question, answer)`.
`stratum` (the example's index within its task) fixes the answer of the yes/no tasks (even:
yes) and the count of `count` (stratum mod 7), so those answers are exactly balanced; the other
answers are drawn uniformly. Scenes are built constructively (the answer first, then objects
that make it true, then distractors that cannot change it), never by rejection.
"""

from __future__ import annotations

import numpy as np

from vlm_jax.data.scenes import COLORS, GRID, SHAPES, SIZES, Obj, place, plural, random_obj

MAX_COUNT = 6
RELATIONS = ("left of", "right of", "above", "below")
YES, NO = "yes", "no"


def _pick(rng: np.random.Generator, seq):
    return seq[rng.integers(len(seq))]


def _shuffle(rng, objs: list[Obj]) -> list[Obj]:
    return [objs[i] for i in rng.permutation(len(objs))]


def count(rng, stratum: int, max_objects: int):
    """'how many red objects are there?' -> '0'..'6'."""
    k = stratum % (min(MAX_COUNT, max_objects) + 1)
    kind = _pick(rng, ("color", "shape", "color_shape", "size"))
    pred = {}
    if "color" in kind:
        pred["color"] = _pick(rng, list(COLORS))
    if "shape" in kind:
        pred["shape"] = _pick(rng, SHAPES)
    if kind == "size":
        pred["size"] = _pick(rng, SIZES)
    n = int(rng.integers(max(k, 1), max_objects + 1))
    objs = [random_obj(rng, **pred) for _ in range(k)]
    objs += [random_obj(rng, exclude=lambda o: o.matches(**pred)) for _ in range(n - k)]
    desc = {"color": f"{pred.get('color')} objects", "shape": plural(pred.get("shape", "")),
            "color_shape": f"{pred.get('color')} {plural(pred.get('shape', ''))}",
            "size": f"{pred.get('size')} objects"}[kind]
    return place(rng, _shuffle(rng, objs)), f"how many {desc} are there?", str(k)


def exist(rng, stratum: int, max_objects: int):
    """'is there a red circle?' -> yes / no."""
    yes = stratum % 2 == 0
    kind = _pick(rng, ("color_shape", "size_shape", "size_color"))
    pred = {}
    if "color" in kind:
        pred["color"] = _pick(rng, list(COLORS))
    if "shape" in kind:
        pred["shape"] = _pick(rng, SHAPES)
    if "size" in kind:
        pred["size"] = _pick(rng, SIZES)
    n = int(rng.integers(1, max_objects + 1))
    objs = [random_obj(rng, **pred)] if yes else []
    objs += [random_obj(rng, exclude=lambda o: o.matches(**pred)) for _ in range(n - len(objs))]
    desc = {"color_shape": f"{pred.get('color')} {pred.get('shape')}",
            "size_shape": f"{pred.get('size')} {pred.get('shape')}",
            "size_color": f"{pred.get('size')} {pred.get('color')} object"}[kind]
    return place(rng, _shuffle(rng, objs)), f"is there a {desc}?", YES if yes else NO


def attribute(rng, stratum: int, max_objects: int):
    """'what color is the square?' -> 'red' (the referent is unique by construction)."""
    del stratum
    kind = _pick(rng, ("color", "shape", "size"))
    ref = random_obj(rng)
    if kind == "color":
        key, q, a = {"shape": ref.shape}, f"what color is the {ref.shape}?", ref.color
    elif kind == "shape":
        key, q, a = {"color": ref.color}, f"what shape is the {ref.color} object?", ref.shape
    else:
        key = {"color": ref.color, "shape": ref.shape}
        q, a = f"what size is the {ref.color} {ref.shape}?", ref.size
    n = int(rng.integers(1, max_objects + 1))
    objs = [ref] + [random_obj(rng, exclude=lambda o: o.matches(**key)) for _ in range(n - 1)]
    return place(rng, _shuffle(rng, objs)), q, a


def spatial(rng, stratum: int, max_objects: int):
    """'is the red circle left of the blue square?' -> yes / no."""
    yes = stratum % 2 == 0
    rel = _pick(rng, RELATIONS)
    a = random_obj(rng)
    b = random_obj(rng, exclude=lambda o: o.matches(color=a.color, shape=a.shape))
    # Cells: the two objects differ on the relation's axis; `lo` is the smaller coordinate.
    lo, hi = sorted(rng.choice(GRID, size=2, replace=False).tolist())
    other_a, other_b = (int(v) for v in rng.integers(GRID, size=2))
    a_first = (rel in ("left of", "above")) == yes  # a has the smaller coordinate
    ca, cb = (lo, hi) if a_first else (hi, lo)
    if rel in ("left of", "right of"):
        cells = [(other_a, ca), (other_b, cb)]
    else:
        cells = [(ca, other_a), (cb, other_b)]
    n = int(rng.integers(2, max_objects + 1))
    taken = lambda o: o.matches(color=a.color, shape=a.shape) or o.matches(color=b.color,
                                                                         shape=b.shape)
    objs = [a, b] + [random_obj(rng, exclude=taken) for _ in range(n - 2)]
    objs = place(rng, objs, cells + [None] * (n - 2))
    q = f"is the {a.color} {a.shape} {rel} the {b.color} {b.shape}?"
    return _shuffle(rng, objs), q, YES if yes else NO


def compare(rng, stratum: int, max_objects: int):
    """'are there more circles than squares?' -> yes / no (the two counts always differ)."""
    yes = stratum % 2 == 0
    attr = _pick(rng, ("shape", "color"))
    values = SHAPES if attr == "shape" else list(COLORS)
    v1, v2 = (values[i] for i in rng.choice(len(values), size=2, replace=False))
    top = min(4, max_objects)
    while True:  # two different counts that fit the scene (never rejected for max_objects >= 7)
        n1, n2 = sorted(rng.choice(top + 1, size=2, replace=False).tolist(), reverse=True)
        if n1 + n2 <= max_objects:
            break
    if not yes:
        n1, n2 = n2, n1
    n = int(rng.integers(max(n1 + n2, 1), max_objects + 1))
    objs = [random_obj(rng, **{attr: v1}) for _ in range(n1)]
    objs += [random_obj(rng, **{attr: v2}) for _ in range(n2)]
    objs += [random_obj(rng, exclude=lambda o: getattr(o, attr) in (v1, v2))
             for _ in range(n - n1 - n2)]
    if attr == "shape":
        q = f"are there more {plural(v1)} than {plural(v2)}?"
    else:
        q = f"are there more {v1} objects than {v2} objects?"
    return place(rng, _shuffle(rng, objs)), q, YES if yes else NO


def caption_scene(rng, stratum: int, max_objects: int):
    """A random scene; the question asks for its caption (filled in by the caller)."""
    del stratum
    n = int(rng.integers(1, max_objects + 1))
    return place(rng, [random_obj(rng) for _ in range(n)]), "describe the image.", None


SCENE_TASKS = {"count": count, "exist": exist, "attribute": attribute, "spatial": spatial,
               "compare": compare, "caption": caption_scene}
