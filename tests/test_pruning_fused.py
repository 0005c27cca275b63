"""Fused attention in a pruned prefill: layers that do not score run Pallas flash attention,
the scoring layer the importance kernel, and no `[L, L]` array is left in the program.

On CPU both kernels run through the Pallas interpreter (`attention_impl="flash_interpret"`,
`PruneSpec(impl="pallas_interpret")`): the same kernel bodies, tiled the same way, lowered as
loops over tiles. What is checked here is that program (its StableHLO); the Triton / Mosaic
lowerings of the same kernels are the `"flash"` / `"pallas"` impls on a GPU or TPU.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.eval import generate
from vlm_jax.models import init_params, presets
from vlm_jax.models.layers import flash_causal_attention
from vlm_jax.models.vlm import VLM
from vlm_jax.pruning import PruneSpec
from vlm_jax.pruning.calibration import model_inputs, random_calibration


def tiny(attention_impl):
    cfg = presets.llava("clip-tiny", "qwen2-tiny")  # V = 16
    return dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, depth=4,
                                                            attention_impl=attention_impl))


@pytest.fixture(scope="module")
def params():
    return init_params(tiny("xla"), 0)


def inputs(cfg, text, seed=3):
    calib = random_calibration(cfg, 2, prompt_len=text, max_pad=4, seed=seed)
    return {k: jnp.asarray(v) for k, v in model_inputs(calib).items()}


def square_buffers(hlo: str, n: int) -> list[str]:
    """Tensor types in a lowered program with at least two dimensions of size >= n."""
    shapes = re.findall(r"tensor<((?:\d+x)+)[a-z]\w*>", hlo)
    return sorted({s for s in shapes if sum(int(d) >= n for d in s.rstrip("x").split("x")) >= 2})


def test_flash_attention_matches_xla_in_a_pruned_forward_and_generation(params):
    spec = PruneSpec((16, 16, 6, 3), "text", impl="pallas_interpret")
    x = inputs(tiny("xla"), 7)
    outs, toks = {}, {}
    for impl in ("xla", "flash_interpret"):
        cfg = tiny(impl)
        outs[impl] = VLM(cfg).apply({"params": params}, x["images"], x["tokens"], x["valid"],
                                    method="forward", prune=spec)
        toks[impl] = np.asarray(generate.Generator(VLM(cfg), 3, prune=spec).tokens(params, x))
    ref, got = outs["xla"], outs["flash_interpret"]
    np.testing.assert_array_equal(np.asarray(got.index), np.asarray(ref.index))
    real = np.take_along_axis(np.asarray(x["valid"]), np.asarray(ref.index), 1)
    np.testing.assert_allclose(np.asarray(got.logits)[real], np.asarray(ref.logits)[real],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(toks["flash_interpret"], toks["xla"])


def test_flash_attention_refuses_to_lower_where_it_cannot():
    """The tests run on CPU (conftest), where the Triton kernel does not lower."""
    assert jax.default_backend() == "cpu"
    q = jnp.zeros((1, 8, 2, 16))
    with pytest.raises(ValueError, match="flash attention: the Pallas kernel cannot lower"):
        flash_causal_attention(q, q, q, jnp.ones((1, 8), bool), "flash")


@pytest.mark.parametrize("attention_impl, importance_impl, square", [
    ("flash_interpret", "pallas_interpret", False),  # the fused path: no [L, L] anywhere
    ("flash_interpret", "xla", True),  # the scoring layer's reference builds [B, H, L, L]
    ("xla", "pallas_interpret", True),  # the other layers' XLA attention does
])
def test_lowered_pruned_prefill_has_no_square_buffer(params, attention_impl, importance_impl,
                                                     square):
    """The generation prefill (KV cache, first token) of a pruned schedule, lowered, holds no
    array with two axes as long as the shortest sequence present (`L - V + keep[-1]` > the
    kernels' 128-token tiles) exactly when both kernels are on."""
    cfg = tiny(attention_impl)
    x = inputs(cfg, 200)
    length = x["tokens"].shape[1]
    spec = PruneSpec((16, 8, 8, 4), "last", impl=importance_impl)
    shortest = length - 16 + spec.keep[-1]
    assert shortest > 128
    hlo = generate.prefill.lower(VLM(cfg), 4, spec, params, x).as_text()
    found = square_buffers(hlo, shortest)
    assert bool(found) == square, found
