"""Loading a sharded checkpoint keeps about one copy of the parameters in memory.

The checkpoint is written shard by shard from random tensors (never all in memory), then
loaded in a fresh subprocess that reports the tracemalloc peak of numpy allocations and the
peak-RSS growth during `hf.load`, both relative to the loaded parameter bytes.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vlm_jax.interop import hf, hf_config, mappings
from vlm_jax.interop.safetensors_io import write_checkpoint
from vlm_jax.models.config import LLMConfig

_PROBE = r"""
import json, os, sys, tracemalloc
import numpy as np
import jax
from vlm_jax.interop import hf, hf_config

path = sys.argv[1]
hf.param_shapes(hf_config.llm_from_hf(hf.read_config(path)))  # warm up tracing
def status(key):  # kB figures of this process (VmHWM is per address space, unlike ru_maxrss,
    for line in open("/proc/self/status"):  # which Linux carries over from the forking parent)
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark to the current RSS
except OSError:
    pass
base = status("VmRSS")
tracemalloc.start()
cfg, params = hf.load(path)
_, traced_peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
peak_rss = status("VmHWM")
nbytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(params))
print(json.dumps({"param_bytes": nbytes, "traced_peak": traced_peak,
                  "rss_growth": peak_rss - base}))
"""


def _write_random_llm(cfg: LLMConfig, path: str, shard_bytes: int) -> int:
    """A random sharded Llama checkpoint written tensor by tensor; returns its float32 bytes."""
    entries = mappings.plan(hf._parts(cfg), hf.param_shapes(cfg))
    rng = np.random.default_rng(0)
    tensors = [(name, e.hf_shape,
                lambda s=e.hf_shape: rng.standard_normal(s, dtype=np.float32) * 0.02)
               for name, e in entries.items()]
    files = write_checkpoint(path, tensors, max_shard_bytes=shard_bytes)
    assert len(files) > 3
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config.to_hf(cfg), f)
    return sum(4 * int(np.prod(e.hf_shape)) for e in entries.values())


def _measure(tmp_path, cfg: LLMConfig, shards: int) -> dict:
    path = str(tmp_path / "ckpt")
    total = 4 * sum(int(np.prod(s)) for s in hf.param_shapes(cfg).values())
    written = _write_random_llm(cfg, path, shard_bytes=total // shards + 1)
    assert written == total
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    out = subprocess.run([sys.executable, "-c", _PROBE, path], capture_output=True, text=True,
                         env=env, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["param_bytes"] == total
    report["traced_ratio"] = report["traced_peak"] / total
    report["rss_ratio"] = report["rss_growth"] / total
    print(report)
    return report


def test_sharded_load_memory_small(tmp_path):
    # ~34 MB of float32 parameters in 8 shards.
    cfg = LLMConfig(family="llama", vocab_size=4096, width=256, depth=6, heads=4, kv_heads=2,
                    mlp_dim=1024, max_len=512)
    report = _measure(tmp_path, cfg, shards=8)
    assert report["traced_ratio"] <= 1.3, report
    assert report["rss_ratio"] <= 1.3, report


@pytest.mark.slow
def test_sharded_load_memory_large(tmp_path):
    # ~300 MB of float32 parameters in 8 shards; the biggest tensor is 11% of them.
    cfg = LLMConfig(family="llama", vocab_size=8192, width=1024, depth=5, heads=16, kv_heads=8,
                    mlp_dim=2816, max_len=512)
    report = _measure(tmp_path, cfg, shards=8)
    assert report["traced_ratio"] <= 1.3, report
    assert report["rss_ratio"] <= 1.3, report
