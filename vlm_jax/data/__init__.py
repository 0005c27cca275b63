"""Input data: the built-in synthetic VQA suite (TFDS), LLaVA / eval-file sources, tokenizers,
prompt templates and grain pipelines.

    cfg = vlm_jax.data.default_config()            # keys: see vlm_jax/data/config.py
    loader = vlm_jax.data.make_loader(cfg, split="train", batch_size=8, num_visual_tokens=16,
                                      image_size=32, normalization="clip", seed=0)
    batch = next(iter(loader))                      # contract: see vlm_jax/data/pipeline.py
"""

from vlm_jax.data.config import check_config, default_config
from vlm_jax.data.pipeline import (
    ARRAY_KEYS,
    Loader,
    make_loader,
    make_source,
    make_tokenizer,
    prepare_synthetic,
    split_batch,
)
from vlm_jax.data.sources import DataError
from vlm_jax.data.templates import TEMPLATES, ChatEncoder, get_template
from vlm_jax.data.tokenizer import IMAGE_TOKEN, HFTokenizer, WordTokenizer
from vlm_jax.data.transforms import META_KEYS, NORMALIZATION

__all__ = ["default_config", "check_config", "make_loader", "make_tokenizer", "make_source",
           "prepare_synthetic", "split_batch", "Loader", "ARRAY_KEYS", "META_KEYS",
           "NORMALIZATION", "DataError", "TEMPLATES", "ChatEncoder", "get_template",
           "IMAGE_TOKEN", "HFTokenizer", "WordTokenizer"]
