"""Input data: the built-in synthetic VQA suite (TFDS), LLaVA / eval-file sources, tokenizers,
prompt templates and grain pipelines.

    cfg = vlm_jax.data.default_config()            # keys: see vlm_jax/data/config.py
    loader = vlm_jax.data.make_loader(cfg, split="train", batch_size=8, num_visual_tokens=16,
                                      image_size=32, normalization="clip", seed=0)
    batch = next(iter(loader))                      # keys: vlm_jax/batch.py

Names are imported on first use, so `python -m vlm_jax.data.synthetic` runs cleanly.
"""

import importlib

_EXPORTS = {
    "config": ("default_config", "check_config"),
    "pipeline": ("make_loader", "make_tokenizer", "make_source", "prepare_synthetic",
                 "split_batch", "Loader", "ARRAY_KEYS", "META_KEYS"),
    "transforms": ("NORMALIZATION",),
    "sources": ("DataError",),
    "templates": ("TEMPLATES", "ChatEncoder", "get_template"),
    "tokenizer": ("IMAGE_TOKEN", "HFTokenizer", "WordTokenizer"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"vlm_jax.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'vlm_jax.data' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
