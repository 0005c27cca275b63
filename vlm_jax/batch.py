"""The batch contract: a batch's array keys are the argument names of the model call it feeds.

Every producer (the data pipeline, calibration sets, benchmarks) emits these keys and every
consumer (objectives, the evaluator, generation, pruning) reads them; nothing renames.

| key              | dtype / shape          | read by                                          |
|------------------|------------------------|--------------------------------------------------|
| `images`         | float32 `[B, H, W, 3]` | `VLM.__call__` / `ImageTextPair.__call__`        |
| `tokens`         | int32 `[B, L]`         | `VLM.__call__` (V image placeholders each)       |
| `valid`          | bool `[B, L]`          | `VLM.__call__` (False on padding)                |
| `question`       | int32 `[B, Lq]`        | `VLM.__call__` when `VLMConfig.uses_text_query`  |
| `question_valid` | bool `[B, Lq]`         | as `question`                                    |
| `text_tokens`    | int32 `[B, Lt]`        | `ImageTextPair.__call__` (stage 0 captions)      |
| `text_valid`     | bool `[B, Lt]`         | as `text_tokens`                                 |
| `loss_mask`      | float32 `[B, L]`       | the next-token objective                         |
| `example_mask`   | bool `[B]`             | the evaluator (False on rows padding a batch)    |
| `patch_labels`   | int32 `[B, P, 4]`      | stage 0's patch-label probe (synthetic suite)    |

`positions` is never in a batch: the model derives it from `valid`. A model's own inputs are
`VLM_KEYS` (`VLM_TEXT_QUERY_KEYS` only when the config reads the question), `PAIR_KEYS` for
stage 0.
"""

from __future__ import annotations

VLM_KEYS = ("images", "tokens", "valid")
VLM_TEXT_QUERY_KEYS = ("question", "question_valid")
PAIR_KEYS = ("images", "text_tokens", "text_valid")
LOSS_MASK = "loss_mask"
EXAMPLE_MASK = "example_mask"
PATCH_LABELS = "patch_labels"
META_KEYS = ("id", "task", "answer", "answers")  # object arrays `[B]`; never jitted


def vlm_keys(uses_text_query: bool) -> tuple[str, ...]:
    """The VLM call's batch keys for a model that does (or does not) read the question."""
    return VLM_KEYS + (VLM_TEXT_QUERY_KEYS if uses_text_query else ())


def model_inputs(batch: dict, keys: tuple[str, ...] = VLM_KEYS + VLM_TEXT_QUERY_KEYS) -> dict:
    """The entries of `batch` among `keys` (the model call's keyword arguments)."""
    return {k: batch[k] for k in keys if k in batch}
