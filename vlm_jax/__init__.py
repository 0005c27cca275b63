"""vlm_jax: a JAX framework for research on inference-optimal vision-language models."""

import os as _os

# TensorFlow is imported only by TFDS / clu (CPU); keep its start-up chatter out of the logs.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# numpy / scipy BLAS only ever sees tiny arrays here (JAX does the heavy math): its threads cost
# more than they give, e.g. the scaling-law L-BFGS fit ran 35x slower with them on 2 busy cores.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
