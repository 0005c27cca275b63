"""TPU lowering of the Pallas kernels, proven on a CPU host by ahead-of-time compilation for a
TPU topology (Mosaic compiles the kernels; no TPU needed).

Needs libtpu (requirements-test.txt pins it; skipped only when it is absent). libtpu takes a
process lock file (/tmp/libtpu_lockfile) when it loads; ALLOW_MULTIPLE_LIBTPU_LOAD lets several
test processes (pytest-xdist workers, other jobs) load it at once. Lowering must happen under
`jax.set_mesh` of the TPU devices: Pallas asks the mesh's device kind for TPU facts.
"""

import functools
import os

import pytest

pytest.importorskip("libtpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from vlm_jax.kernels.importance_attention import importance_attention  # noqa: E402
from vlm_jax.kernels.importance_attention.kernel import importance_attention_kernel  # noqa: E402
from vlm_jax.kernels.topk_compact import topk_compact  # noqa: E402


@functools.cache
def _mesh(topology: str) -> Mesh:
    devices = topologies.get_topology_desc(topology, "tpu").devices
    return Mesh(devices[:1], ("x",))


def _compile_for_tpu(fn, shapes, topology="v5e:2x2") -> str:
    """AOT-compile `fn` on one chip of `topology` for abstract inputs; returns the HLO text."""
    mesh = _mesh(topology)
    sharding = NamedSharding(mesh, PartitionSpec())
    args = [jax.ShapeDtypeStruct(s, d, sharding=sharding) for s, d in shapes]
    with jax.set_mesh(mesh):
        compiled = jax.jit(fn).lower(*args).compile()
    assert mesh.devices.flat[0].platform == "tpu"
    return compiled.as_text()


@pytest.mark.parametrize("topology,causal,dtype,length,block", [
    ("v5e:2x2", True, jnp.bfloat16, 1000, 128),  # ragged length, GQA
    ("v5e:2x2", False, jnp.float32, 600, 256),
    ("v6e:2x2", True, jnp.bfloat16, 2048, 512),
])
def test_importance_attention_compiles_for_tpu(topology, causal, dtype, length, block):
    b, h, kv, dh = 1, 8, 2, 128

    def fn(q, k, v, w, valid):
        return importance_attention(q, k, v, w, key_valid=valid, causal=causal, impl="pallas",
                                    backend="tpu", block_q=block, block_k=block)

    hlo = _compile_for_tpu(fn, [((b, length, h, dh), dtype), ((b, length, kv, dh), dtype),
                                ((b, length, kv, dh), dtype), ((b, length), jnp.float32),
                                ((b, length), jnp.bool_)], topology)
    assert hlo.count("custom_call_target=\"tpu_custom_call\"") == 2  # both passes are Mosaic


def test_mosaic_rejects_a_bad_block_shape():
    """The AOT check has teeth: a key tile of 64 lanes breaks Mosaic's (8, 128) rule."""
    fn = functools.partial(importance_attention_kernel, causal=True, scale=0.1, offset=0,
                           block_q=64, block_k=64, backend="tpu", interpret=False)
    shapes = [((1, 2, 128, 128), jnp.float32)] * 3 + [
        ((1, 1, 128), jnp.int32), ((1, 128, 1), jnp.float32), ((1, 2), jnp.int32)]
    with pytest.raises(Exception, match="divisible by 8 and 128"):
        _compile_for_tpu(fn, shapes)


@pytest.mark.parametrize("length,num_visual,keep,width", [
    (1024, 576, 144, 4096),  # LLaVA-1.5 shape, hidden width a multiple of 512
    (300, 100, 33, 200),  # widths that are not multiples of 128
])
def test_topk_compact_compiles_for_tpu(length, num_visual, keep, width):
    b = 2

    def fn(scores, start, hidden, hidden32, positions, valid, keys):
        return topk_compact(scores, start, keep, [hidden, hidden32, positions, valid, keys],
                            impl="pallas", backend="tpu")

    hlo = _compile_for_tpu(fn, [
        ((b, num_visual), jnp.float32), ((b,), jnp.int32), ((b, length, width), jnp.bfloat16),
        ((b, length, width), jnp.float32), ((b, length), jnp.int32), ((b, length), jnp.bool_),
        ((b, length, 8, 128), jnp.bfloat16)])
    assert hlo.count("custom_call_target=\"tpu_custom_call\"") == 6  # select + 5 gathers
