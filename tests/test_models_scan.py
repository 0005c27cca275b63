"""Scanned layers (`scan_layers`): the same numbers as per-layer layers, both parameter layouts
converting into each other, and pruning on scanned parameters."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlm_jax import models
from vlm_jax.eval import generate
from vlm_jax.models import presets
from vlm_jax.models.cache import init_cache
from vlm_jax.models.vlm import VLM
from vlm_jax.pruning import PruneSpec, cache_sizes
from vlm_jax.pruning.calibration import model_inputs, random_calibration
from vlm_jax.train import init_from
from vlm_jax.train.checkpoint import Checkpoints

DEPTH = 4


def _cfgs(remat=False):
    cfg = presets.llava("clip-tiny", "qwen2-tiny")
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, depth=DEPTH, remat=remat))
    scanned = dataclasses.replace(
        cfg, llm=dataclasses.replace(cfg.llm, scan_layers=True),
        vision=dataclasses.replace(cfg.vision, scan_layers=True, remat=remat))
    return cfg, scanned


@pytest.fixture(scope="module")
def model():
    cfg, scanned = _cfgs()
    params = models.init_params(cfg, 0)
    return cfg, scanned, params, models.to_layout(scanned, params)


@pytest.fixture(scope="module")
def batch(model):
    calib = random_calibration(model[0], 3, prompt_len=7, max_pad=4, seed=3)
    return {k: jnp.asarray(v) for k, v in calib.items() if k != "answers"}


def _forward(cfg, params, batch, **kw):
    return VLM(cfg).apply({"params": params}, batch["images"], batch["tokens"], batch["valid"],
                          method="forward", **kw)


def test_scanned_layout_stacks_every_layer(model):
    cfg, scanned, params, sparams = model
    assert "layers" in sparams["language_model"] and "layers_0" not in sparams["language_model"]
    assert "layers" in sparams["vision_tower"]
    q = sparams["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.shape == (DEPTH, *params["language_model"]["layers_0"]["self_attn"]["q_proj"]
                       ["kernel"].shape)
    np.testing.assert_array_equal(q[2], params["language_model"]["layers_2"]["self_attn"]
                                  ["q_proj"]["kernel"])
    # a scanned init has the layout to_layout gives
    fresh = models.abstract_params(scanned)
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(sparams)
    back = models.to_layout(cfg, sparams)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)
    assert jax.tree_util.tree_structure(models.unstack_layers(sparams)) == \
        jax.tree_util.tree_structure(params)


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_logits_and_gradients_equal_unscanned(batch, remat):
    cfg, scanned = _cfgs(remat)
    params = models.init_params(cfg, 1)
    sparams = models.to_layout(scanned, params)

    def loss(c, p):
        logits = _forward(c, p, batch).logits
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3] * batch["valid"])

    ref_logits = _forward(cfg, params, batch).logits
    np.testing.assert_allclose(np.asarray(_forward(scanned, sparams, batch).logits),
                               np.asarray(ref_logits), rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda p: loss(cfg, p))(params)
    gs = jax.grad(lambda p: loss(scanned, p))(sparams)
    gs = models.to_layout(cfg, gs)
    leaves = jax.tree_util.tree_leaves(g)
    assert sum(float(jnp.abs(x).sum()) for x in leaves) > 0
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(
        np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6), g, gs)


def test_checkpoint_round_trip_between_layouts(model, tmp_path):
    """A scanned run's checkpoint initialises a per-layer model and back (train.init_from)."""
    cfg, scanned, params, sparams = model
    for name, saved, target in (("scanned", sparams, params), ("unscanned", params, sparams)):
        ckpts = Checkpoints(str(tmp_path / name), async_save=False)
        ckpts.save(1, {"params": saved})
        ckpts.wait()
        ckpts.close()
        zeros = jax.tree_util.tree_map(jnp.zeros_like, target)
        loaded = init_from.apply(ml_collections.ConfigDict({"workdir": str(tmp_path / name)}),
                                 zeros)
        assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(target)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a),
                                                                          np.asarray(b)),
                               loaded, target)


@pytest.mark.parametrize("keep,query", [((16, 11, 6, 0), "text"), ((16, 16, 5, 5), "last")])
def test_pruned_prefill_on_scanned_params_equals_unscanned(model, batch, keep, query):
    cfg, scanned, params, sparams = model
    spec = PruneSpec(keep, query=query, record=True)
    n = batch["tokens"].shape[1]
    sizes = cache_sizes(spec, n, 2, DEPTH)
    ref, got = [jax.jit(lambda p, b, c=c: _forward(c, p, b, prune=spec,
                                                   cache=init_cache(c.llm, 3, sizes)))(p, batch)
                for c, p in ((cfg, params), (scanned, sparams))]
    np.testing.assert_array_equal(np.asarray(got.index), np.asarray(ref.index))
    np.testing.assert_allclose(np.asarray(got.logits), np.asarray(ref.logits), rtol=1e-5,
                               atol=1e-5)
    for a, b in zip(ref.importance, got.importance):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    for a, b in zip(ref.cache, got.cache):
        np.testing.assert_allclose(np.asarray(b.k), np.asarray(a.k), rtol=1e-5, atol=1e-5)
        assert int(a.end) == int(b.end)


@pytest.mark.parametrize("keep", [None, (16, 12, 6, 6)])
def test_scanned_generation_equals_unscanned(model, batch, keep):
    """Plain generation runs the scanned layers on a stacked cache; pruned generation runs the
    same stacked parameters layer by layer on per-layer caches. Both give the same tokens."""
    cfg, scanned, params, sparams = model
    spec = None if keep is None else PruneSpec(keep, query="text")
    inputs = model_inputs(batch)
    ref = generate.Generator(VLM(cfg), 3, prune=spec).tokens(params, inputs)
    got = generate.Generator(VLM(scanned), 3, prune=spec).tokens(sparams, inputs)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


def test_stacked_cache_needs_a_scanned_decoder(model, batch):
    cfg, scanned, params, _ = model
    stacked = init_cache(scanned.llm, 3, 40)
    with pytest.raises(ValueError, match="stacked cache needs a decoder with scan_layers"):
        _forward(cfg, params, batch, cache=stacked)


def test_pallas_pruning_that_cannot_run_raises(model, batch):
    """impl="pallas" on a backend the kernels do not lower to is an error, not a fallback."""
    cfg, _, params, _ = model
    if jax.default_backend() != "cpu":
        pytest.skip("checks the CPU backend, where the Pallas kernels cannot lower")
    with pytest.raises(ValueError, match="cannot lower on 'cpu'"):
        _forward(cfg, params, batch, prune=PruneSpec((16, 8, 8, 8), impl="pallas"))


def test_presets_scan_large_models_only():
    assert presets.get("vicuna-7b").scan_layers and presets.get("qwen1.5-0.5b").scan_layers
    assert presets.get("clip-l/14-336").scan_layers
    assert not presets.get("qwen2-tiny").scan_layers and not presets.get("clip-tiny").scan_layers
