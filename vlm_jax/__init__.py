"""vlm_jax: a JAX framework for research on inference-optimal vision-language models."""

import os as _os

# TensorFlow is imported only by TFDS / clu (CPU); keep its start-up chatter out of the logs.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# numpy / scipy BLAS only ever sees tiny arrays here (JAX does the heavy math): its threads cost
# more than they give, e.g. the scaling-law L-BFGS fit ran 35x slower with them on 2 busy cores.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _no_accelerator() -> bool:
    """No TPU (/dev/accel*, /dev/vfio) and no NVIDIA GPU device node on this host."""
    import glob
    return not (glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
                or glob.glob("/dev/nvidia[0-9]*"))


# libtpu is installed for ahead-of-time TPU compilation; on a host with no accelerator JAX
# would still try to start it and print a page of INVALID_ARGUMENT errors before using the
# CPU. Pick the CPU directly (set JAX_PLATFORMS yourself to choose otherwise). AOT compilation
# for a TPU topology (launch/aot.py) still loads libtpu.
if "JAX_PLATFORMS" not in _os.environ and _no_accelerator():
    _os.environ["JAX_PLATFORMS"] = "cpu"
    import sys as _sys
    if "jax" in _sys.modules:  # imported first: its flags have read the environment already
        _sys.modules["jax"].config.update("jax_platforms", "cpu")
