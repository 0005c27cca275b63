"""A built-in 5x7 bitmap font (A-Z, 0-9) for the synthetic OCR task: no font file needed.

`render_text(canvas, text, x, y, scale, color)` stamps `text` into a uint8 `[H, W, 3]` canvas,
each font pixel a `scale x scale` block, glyphs one font pixel apart.
"""

from __future__ import annotations

import numpy as np

GLYPH_W, GLYPH_H = 5, 7

_ROWS = {
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "####. #...# #...# #...# #...# #...# ####.",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
}

GLYPHS: dict[str, np.ndarray] = {
    ch: np.array([[c == "#" for c in row] for row in rows.split()], bool)
    for ch, rows in _ROWS.items()
}
ALPHABET = "".join(sorted(GLYPHS))  # digits then capitals


def text_size(text: str, scale: int) -> tuple[int, int]:
    """(width, height) in pixels of `text` at `scale`."""
    n = len(text)
    return (n * GLYPH_W + max(n - 1, 0)) * scale, GLYPH_H * scale


def render_text(canvas: np.ndarray, text: str, x: int, y: int, scale: int,
                color: tuple[int, int, int]) -> None:
    """Stamps `text` (characters of ALPHABET) into `canvas` `[H, W, 3]` at top-left (x, y)."""
    w, h = text_size(text, scale)
    if x < 0 or y < 0 or x + w > canvas.shape[1] or y + h > canvas.shape[0]:
        raise ValueError(f"text {text!r} at ({x}, {y}) scale {scale} ({w}x{h} px) does not fit "
                         f"in a {canvas.shape[1]}x{canvas.shape[0]} image")
    for i, ch in enumerate(text):
        if ch not in GLYPHS:
            raise ValueError(f"character {ch!r} has no glyph; known: {ALPHABET}")
        mask = np.kron(GLYPHS[ch], np.ones((scale, scale), bool))
        x0 = x + i * (GLYPH_W + 1) * scale
        canvas[y:y + h, x0:x0 + GLYPH_W * scale][mask] = color
