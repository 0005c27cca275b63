"""Per-example processing for grain: image -> normalised float, conversation -> static tokens.

`Prepare` (a grain MapTransform) turns a source record into fixed-shape numpy arrays keyed as
`vlm_jax.batch` says (see `pipeline.py`); `DropSkipped` filters the records a bad sample became
under `on_error="skip"`; `Collate` batches (and pads the last eval batch with masked rows).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from collections.abc import Sequence

import grain.python as grain
import numpy as np
from PIL import Image

from vlm_jax.batch import META_KEYS
from vlm_jax.data.sources import DataError, load_image
from vlm_jax.data.synthetic import PATCH_HEADS, patch_labels
from vlm_jax.data.templates import ChatEncoder

NORMALIZATION = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def mean_std(normalization) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 `[3]` from a name in NORMALIZATION or a (mean, std) pair."""
    if isinstance(normalization, str):
        if normalization not in NORMALIZATION:
            raise ValueError(f"unknown normalization {normalization!r}; known: "
                             f"{sorted(NORMALIZATION)} or a (mean, std) pair")
        normalization = NORMALIZATION[normalization]
    mean, std = (np.asarray(v, np.float32).reshape(3) for v in normalization)
    return mean, std


@functools.lru_cache(maxsize=16)
def _normalize_table(mean: bytes, std: bytes) -> np.ndarray:
    """float32 `[256 * 3]`: entry 3 v + c = (v / 255 - mean[c]) / std[c], in float32 exactly
    as `(np.float32(image) / 255.0 - mean) / std` computes it (so a lookup is bit-identical)."""
    mean, std = np.frombuffer(mean, np.float32), np.frombuffer(std, np.float32)
    values = np.arange(256, dtype=np.float32)[:, None] / 255.0
    return ((values - mean) / std).reshape(-1)


_CHANNEL = np.arange(3, dtype=np.uint16)


def normalize_image(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 `[..., 3]` -> float32 `(image / 255 - mean) / std`, by table lookup."""
    table = _normalize_table(np.asarray(mean, np.float32).tobytes(),
                             np.asarray(std, np.float32).tobytes())
    index = image.astype(np.uint16)
    index *= 3
    index += _CHANNEL
    return np.take(table, index)


def process_image(image: np.ndarray, size: int, aspect: str, mean: np.ndarray,
                  std: np.ndarray) -> np.ndarray:
    """uint8 `[h, w, 3]` -> float32 `[size, size, 3]`, normalised.

    aspect "pad": pad to a square with the mean colour (centred), then resize (LLaVA's
    `pad`); "resize": resize straight to the square. Bicubic resampling; PIL is skipped
    when the image already has the target size.
    """
    if aspect not in ("pad", "resize"):
        raise ValueError(f"aspect must be 'pad' or 'resize', got {aspect!r}")
    image = np.asarray(image, np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [h, w, 3], got shape {image.shape}")
    if image.shape[:2] != (size, size):
        img = Image.fromarray(image)
        if aspect == "pad" and img.width != img.height:
            side = max(img.width, img.height)
            fill = tuple(int(round(float(m) * 255)) for m in mean)
            square = Image.new("RGB", (side, side), fill)
            square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
            img = square
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        image = np.asarray(img)
    return normalize_image(image, mean, std)


def pad_to(ids: Sequence[int], length: int, pad_id: int, left: bool = False):
    """(ids padded to `length`, valid mask) as int32 / bool `[length]`."""
    n = len(ids)
    out = np.full(length, pad_id, np.int32)
    valid = np.zeros(length, bool)
    sl = slice(length - n, length) if left else slice(0, n)
    out[sl], valid[sl] = ids, True
    return out, valid


@dataclasses.dataclass(frozen=True)
class Skipped:
    reason: str


class Prepare(grain.MapTransform):
    """Record -> fixed-shape example (images, tokens, valid, loss_mask, question, ...).

    Train mode: `tokens` is the whole conversation (right-padded) with its `loss_mask`; eval
    mode: `tokens` is the generation prompt (left-padded), no `loss_mask`."""

    def __init__(self, encoder: ChatEncoder, *, image_size: int, aspect: str, normalization,
                 num_visual_tokens: int, max_text_len: int, max_question_len: int,
                 eval_mode: bool, on_error: str, patch_grid: int = 0):
        self.encoder = encoder
        self.patch_grid = patch_grid
        self.image_size, self.aspect = image_size, aspect
        self.mean, self.std = mean_std(normalization)
        self.v = num_visual_tokens
        self.seq_len = num_visual_tokens + max_text_len
        self.max_text_len, self.question_len = max_text_len, max_question_len
        self.eval_mode, self.on_error = eval_mode, on_error
        self.skipped: collections.Counter = collections.Counter()

    def map(self, record: dict):
        try:
            return self._prepare(record)
        except DataError as e:
            if self.on_error == "raise":
                raise
            self.skipped[e.reason] += 1
            logging.warning("skipping %s", e)
            return Skipped(e.reason)

    def _prepare(self, rec: dict) -> dict:
        enc = self.encoder.conversation(rec["turns"])
        n_img = enc.tokens.count(self.encoder.image_ids[0]) if self.v else 0
        if n_img != self.v:
            raise DataError("no_image_marker", rec["id"], rec["file"],
                            f"prompt holds {n_img} image placeholders, expected {self.v}")
        n_text = len(enc.tokens) - self.v
        if n_text > self.max_text_len:
            raise DataError("too_long", rec["id"], rec["file"],
                            f"{n_text} text tokens > max_text_len {self.max_text_len}")
        question = self.encoder.question(rec["question"])
        if len(question) > self.question_len:
            raise DataError("too_long", rec["id"], rec["file"], f"question has {len(question)} "
                            f"tokens > max_question_len {self.question_len}")
        image = process_image(load_image(rec), self.image_size, self.aspect, self.mean,
                              self.std)
        pad_id = self.encoder.tok.pad_id
        q, q_valid = pad_to(question, self.question_len, pad_id)
        ex = {"images": image, "question": q, "question_valid": q_valid,
              "example_mask": np.bool_(True), "id": rec["id"], "task": rec["task"],
              "answer": rec["answer"], "answers": list(rec["answers"])}
        if self.eval_mode:  # the generation prompt: what the model reads before answering
            ex["tokens"], ex["valid"] = pad_to(enc.prompt, self.seq_len, pad_id, left=True)
        else:
            ex["tokens"], ex["valid"] = pad_to(enc.tokens, self.seq_len, pad_id)
            ex["loss_mask"] = np.zeros(self.seq_len, np.float32)
            ex["loss_mask"][:len(enc.loss_mask)] = enc.loss_mask
        if self.patch_grid:
            if "scene" not in rec:
                raise DataError("no_scene", rec["id"], rec["file"], "patch labels need the "
                                "synthetic suite's scene; this record has none")
            ex["patch_labels"] = patch_labels(rec["scene"], self.patch_grid)
        return ex

    def blank(self) -> dict:
        """A fully masked example (`example_mask` False) for padding eval batches: V
        placeholders (so the model's placeholder check holds), a zero image, no loss."""
        pad_id, v, img = self.encoder.tok.pad_id, self.v, self.encoder.image_ids[:1]
        tokens, valid = pad_to(img * v, self.seq_len, pad_id, left=self.eval_mode)
        q, q_valid = pad_to([pad_id], self.question_len, pad_id)
        ex = {"images": np.zeros((self.image_size, self.image_size, 3), np.float32),
              "tokens": tokens, "valid": valid, "question": q, "question_valid": q_valid,
              "example_mask": np.bool_(False), "id": "", "task": "", "answer": "", "answers": []}
        if not self.eval_mode:
            ex["loss_mask"] = np.zeros(self.seq_len, np.float32)
        if self.patch_grid:
            ex["patch_labels"] = np.zeros((self.patch_grid**2, len(PATCH_HEADS)), np.int32)
        return ex


class DropSkipped(grain.FilterTransform):
    def filter(self, element) -> bool:
        return not isinstance(element, Skipped)


class Collate:
    """Stacks examples; object arrays for META_KEYS; pads a short batch with `blank`."""

    def __init__(self, batch_size: int, blank: dict):
        self.batch_size, self.blank = batch_size, blank

    def __call__(self, examples: Sequence[dict]) -> dict:
        examples = list(examples)
        n = len(examples)
        if n < self.batch_size:  # only the last eval batch (train drops the remainder)
            examples += [self.blank] * (self.batch_size - n)
        out = {}
        for key in examples[0]:
            if key in META_KEYS:
                arr = np.empty(len(examples), object)
                for i, e in enumerate(examples):
                    arr[i] = tuple(e[key]) if key == "answers" else e[key]
                out[key] = arr
            else:
                out[key] = np.stack([e[key] for e in examples])
        return out
