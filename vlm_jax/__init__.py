"""vlm_jax: a JAX framework for research on inference-optimal vision-language models."""

import os as _os

# TensorFlow is imported only by TFDS / clu (CPU); keep its start-up chatter out of the logs.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
