"""The data config (an ml_collections ConfigDict) and its validation.

Keys (`default_config()` gives every one; unknown keys are an error):

- `source`: "synthetic" (the built-in suite, via TFDS) | "llava" (LLaVA conversation json /
  jsonl) | "vqa_eval" (LLaVA-style eval jsonl: GQA, TextVQA, POPE ...) | "mmbench" (TSV).
- `data_dir`: where the synthetic suite's TFDS files are generated (`~` expanded).
- `synthetic`: the suite's settings: `resolution` (px), `num_train`, `num_validation`,
  `num_test`, `seed`, `tasks` (subset of count, exist, attribute, spatial, compare, ocr,
  caption), `max_objects` (2-9), `ocr_min_len`, `ocr_max_len`, `ocr_scale` (0 = auto).
- `files`: split name -> annotation file, for the non-synthetic sources (any split names).
- `image_folder`: root that image paths in the annotation files are relative to.
- `task`: task name recorded on non-synthetic records ("" = the source's default).
- `question_suffix`: line appended to eval questions (vqa_eval / mmbench; "" = none, mmbench
  uses its standard suffix when "").
- `tokenizer.kind`: "builtin" (the suite's word tokenizer) | "hf" (`tokenizer.path`: a local
  tokenizer.json or its folder); `tokenizer.image_token`: the marker string ("<image>").
- `template`: "plain" | "vicuna_v1" | "qwen_chat" | "chat_template" (the tokenizer folder's own
  Jinja chat template); `system_prompt`: "" = template default.
- `max_text_len`: text tokens per sample (the static length is `L = V + max_text_len`).
- `max_question_len`: `Lq`, tokens of the question alone (QueCC's text query).
- `aspect`: "pad" (LLaVA: pad to square with the mean colour, then resize) | "resize".
- `on_error`: "raise" | "skip" (bad samples counted, logged and dropped).
- `worker_count`: grain worker processes (0 = in-process; skip counts are exact only then).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from vlm_jax.config_args import merge_defaults
from vlm_jax.data.synthetic import DEFAULT_TASKS, SyntheticConfig

SOURCES = ("synthetic", "llava", "vqa_eval", "mmbench")
ASPECTS = ("pad", "resize")
TOKENIZER_KINDS = ("builtin", "hf")


def default_config() -> ml_collections.ConfigDict:
    """Every data key with its default (the synthetic suite at 64 px, plain template)."""
    c = ml_collections.ConfigDict()
    c.source = "synthetic"
    c.data_dir = "~/vlm_jax_data/tfds"
    c.synthetic = ml_collections.ConfigDict(dict(
        resolution=64, num_train=4000, num_validation=500, num_test=500, seed=0,
        tasks=DEFAULT_TASKS, max_objects=8, ocr_min_len=2, ocr_max_len=4, ocr_scale=0,
        ocr_cell=0, eval_tasks=()))
    c.files = ml_collections.ConfigDict({"train": "", "validation": "", "test": ""})
    c.image_folder = ""
    c.task = ""
    c.question_suffix = ""
    c.tokenizer = ml_collections.ConfigDict(dict(kind="builtin", path="",
                                                 image_token="<image>"))
    c.template = "plain"
    c.system_prompt = ""
    c.max_text_len = 48
    c.max_question_len = 24
    c.aspect = "pad"
    c.on_error = "raise"
    c.worker_count = 0
    return c


def check_config(cfg: Any) -> ml_collections.ConfigDict:
    """Validates a data config (missing keys take their defaults; unknown keys and values of
    the wrong type are errors naming them); returns a full copy. `files` is taken whole."""
    full = merge_defaults(cfg, default_config(), "data", whole=("files",),
                          label="data config ")
    if full.source not in SOURCES:
        raise ValueError(f"data.source must be one of {SOURCES}, got {full.source!r}")
    if full.aspect not in ASPECTS:
        raise ValueError(f"data.aspect must be one of {ASPECTS}, got {full.aspect!r}")
    if full.tokenizer.kind not in TOKENIZER_KINDS:
        raise ValueError(f"data.tokenizer.kind must be one of {TOKENIZER_KINDS}, got "
                         f"{full.tokenizer.kind!r}")
    if full.on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error must be 'raise' or 'skip', got {full.on_error!r}")
    for key in ("max_text_len", "max_question_len"):
        if full[key] < 1:
            raise ValueError(f"data.{key} must be >= 1, got {full[key]}")
    synthetic_config(full)  # validates the suite settings
    return full


def synthetic_config(cfg: ml_collections.ConfigDict) -> SyntheticConfig:
    return SyntheticConfig(**cfg.synthetic.to_dict())
