"""Pruning baselines and controls against hand-computed small cases (tiny models)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_eval import scaled_tiny_vlm

from vlm_jax import data, models
from vlm_jax.eval import generate
from vlm_jax.eval.evaluator import evaluate
from vlm_jax.models import init_params, presets
from vlm_jax.models import vit as vit_mod
from vlm_jax.models.vlm import VLM
from vlm_jax.pruning import PruneSpec, ScheduleError, schedules
from vlm_jax.pruning.calibration import random_calibration
from vlm_jax.pruning.prellm import (
    VisionZipVLM,
    pooling_config,
    tower_attention,
    visionzip_select,
)
from vlm_jax.pruning.selection import PIVOT_SCORE, dart_scores, random_scores


@pytest.fixture(scope="module")
def model():
    cfg = presets.llava("clip-tiny", "qwen2-tiny")  # 4 x 4 patches, 2 tower layers
    return cfg, init_params(cfg, 0)


def prompts(cfg, batch, num_visual, text=5, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, cfg.llm.vocab_size - 1, (batch, 2 + num_visual + text))
    tokens[:, 2:2 + num_visual] = cfg.image_token_id
    images = rng.normal(size=(batch, cfg.vision.image_size, cfg.vision.image_size, 3))
    return jnp.asarray(images, jnp.float32), jnp.asarray(tokens, jnp.int32)


# ---------------------------------------------------------------------------------- PyramidDrop

def test_pyramiddrop_halves_per_stage():
    assert schedules.pyramiddrop(8, 16) == (16, 16, 8, 8, 4, 4, 2, 2)
    assert schedules.pyramiddrop(6, 144, stages=3, ratio=0.5) == (144, 144, 72, 72, 36, 36)
    assert schedules.pyramiddrop(4, 10, stages=4, ratio=0.3) == (10, 3, 1, 0)  # round(0.9)=1
    assert schedules.pyramiddrop(4, 10, stages=1) == (10, 10, 10, 10)


@pytest.mark.parametrize("kw, match", [(dict(stages=5), "stages=5"), (dict(stages=0), "stages"),
                                       (dict(ratio=0.0), "ratio"), (dict(ratio=1.5), "ratio")])
def test_pyramiddrop_rejects_bad_settings(kw, match):
    with pytest.raises(ScheduleError, match=match):
        schedules.pyramiddrop(4, 16, **kw)


def test_pyramiddrop_from_config():
    cfg = dict(method="pyramiddrop", pyramiddrop_stages=2, pyramiddrop_ratio=0.25)
    assert schedules.from_config(cfg, 4, 16) == (16, 16, 4, 4)


# ------------------------------------------------------------------------------------ VisionZip

def test_visionzip_select_by_hand():
    features = jnp.asarray([[[i, 10.0 * i] for i in range(6)]], jnp.float32)  # [1, 6, 2]
    received = jnp.asarray([[0.1, 0.5, 0.2, 0.9, 0.05, 0.3]])
    # dominant: patches 3 and 1 (kept in original order: 1, 3); the rest is 0, 2, 4, 5 and the
    # targets are its 0th and 2nd entries (step 4 // 2), patches 0 and 4; patch 2's key is
    # closest to patch 0's, patch 5's to patch 4's.
    keys = jnp.asarray([[[1, 0], [5, 5], [0.9, 0.1], [-1, 3], [0, 1], [0.2, 1]]], jnp.float32)
    out = visionzip_select(features, received, keys, dominant=2, contextual=2)
    want = [[1, 10], [3, 30], [(0 + 2) / 2, (0 + 20) / 2], [(4 + 5) / 2, (40 + 50) / 2]]
    np.testing.assert_allclose(np.asarray(out[0]), want, rtol=1e-6)
    only = visionzip_select(features, received, keys, dominant=3, contextual=0)
    np.testing.assert_allclose(np.asarray(only[0]), [[1, 10], [3, 30], [5, 50]])


def test_visionzip_select_rejects_bad_counts():
    x = jnp.zeros((1, 6, 2))
    with pytest.raises(ValueError, match="contextual"):
        visionzip_select(x, jnp.zeros((1, 6)), x, dominant=4, contextual=3)
    with pytest.raises(ValueError, match="dominant"):
        visionzip_select(x, jnp.zeros((1, 6)), x, dominant=0, contextual=1)


def test_tower_attention_is_the_towers_own(model, monkeypatch):
    cfg, params = model
    captured = []

    def recording_attention(q, k, v, mask, impl="xla"):
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
        captured.append(np.asarray(jax.nn.softmax(scores, axis=-1)))
        return orig(q, k, v, mask, impl)

    orig = vit_mod.attention
    monkeypatch.setattr(vit_mod, "attention", recording_attention)
    images, _ = prompts(cfg, 2, 16)
    hidden = VLM(cfg).apply({"params": params}, images,
                            method=lambda m, im: m.vision_tower(im).hidden_states)
    for layer in range(cfg.vision.depth):
        probs, _ = tower_attention(cfg, params["vision_tower"][f"layers_{layer}"], hidden[layer])
        np.testing.assert_allclose(np.asarray(probs), captured[layer], atol=1e-6)


def test_visionzip_keeping_every_patch_is_the_plain_model(model):
    cfg, params = model
    images, tokens = prompts(cfg, 2, cfg.num_visual_tokens)
    plain = VLM(cfg).apply({"params": params}, images, tokens)
    zipped = VisionZipVLM(cfg, dominant=cfg.num_visual_tokens, contextual=0).apply(
        {"params": params}, images, tokens)
    np.testing.assert_allclose(np.asarray(zipped), np.asarray(plain), atol=1e-5)


def test_visionzip_vlm_feeds_the_selected_tokens(model):
    cfg, params = model
    images, tokens = prompts(cfg, 2, 6)
    vz = VisionZipVLM(cfg, dominant=4, contextual=2)
    got = vz.apply({"params": params}, images, method="encode_images")

    def by_hand(m, im):  # CLS attention of the layer that makes the selected features
        hidden = m.vision_tower(im).hidden_states
        probs, keys = tower_attention(cfg, params["vision_tower"]["layers_0"], hidden[0])
        x = visionzip_select(hidden[1][:, 1:], probs[:, :, 0, 1:].mean(1),
                             keys[:, 1:].mean(2), 4, 2)
        return m.multi_modal_projector(x)

    want = VLM(cfg).apply({"params": params}, images, method=by_hand)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    logits = vz.apply({"params": params}, images, tokens)
    assert logits.shape == (*tokens.shape, cfg.llm.vocab_size)
    with pytest.raises(ValueError, match="makes 6 visual tokens"):
        vz.apply({"params": params}, *prompts(cfg, 1, 5))


# -------------------------------------------------------------------------------------- pooling

def test_uniform_pooling_averages_2x2_windows(model):
    cfg, params = model
    pooled = pooling_config(cfg, 4)
    assert pooled.num_visual_tokens == 4
    images, _ = prompts(cfg, 1, 4)
    got = VLM(pooled).apply({"params": params}, images, method="encode_images")

    def by_hand(m, im):
        x = m.vision_tower(im).hidden_states[cfg.vision_feature_layer][:, 1:]  # [1, 16, C]
        grid = np.asarray(x).reshape(4, 4, -1)
        means = [grid[r:r + 2, c:c + 2].mean((0, 1)) for r in (0, 2) for c in (0, 2)]
        return m.multi_modal_projector(jnp.asarray(np.stack(means)[None]))

    want = VLM(cfg).apply({"params": params}, images, method=by_hand)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


@pytest.mark.parametrize("budget", [5, 9])
def test_uniform_pooling_rejects_budgets_the_grid_cannot_make(model, budget):
    with pytest.raises(ValueError, match=r"possible: \[16, 4, 1\]"):
        pooling_config(model[0], budget)


def test_prellm_methods_need_an_uncompressed_model(model):
    cfg = dataclasses.replace(model[0], compressor=dataclasses.replace(
        model[0].compressor, name="avgpool", num_tokens=4))
    with pytest.raises(ValueError, match="avgpool"):
        pooling_config(cfg, 4)


# ------------------------------------------------------------------------------ DART and random

def test_dart_scores_by_hand():
    # tokens 1-4 are visual; token 1 has the largest norm (the pivot with P = 1)
    x = jnp.asarray([[[9, 9], [3, 0], [1, 0.1], [0, 1], [1, 1], [-9, 0]]], jnp.float32)
    visual = jnp.asarray([[False, True, True, True, True, False]])
    s = np.asarray(dart_scores(x, visual, pivots=1))[0]
    assert s[1] == PIVOT_SCORE
    np.testing.assert_allclose(s[2:5], [-1 / np.sqrt(1.01), 0.0, -np.sqrt(0.5)], rtol=1e-6)
    # keeping 2: the pivot and token 3 (orthogonal to it); keeping 3 adds token 4
    assert set(np.argsort(-np.where(visual[0], s, -9))[:2].tolist()) == {1, 3}
    assert set(np.argsort(-np.where(visual[0], s, -9))[:3].tolist()) == {1, 3, 4}
    two = np.asarray(dart_scores(x, visual, pivots=2))[0]  # tokens 1 and 4 (norm 1.41 > 1.005)
    assert two[1] == two[4] == PIVOT_SCORE
    np.testing.assert_allclose(two[[2, 3]], [-1 / np.sqrt(1.01), -np.sqrt(0.5)], rtol=1e-6)


def test_random_scores_follow_the_visual_ordinal_not_the_offset():
    visual = jnp.asarray([[False, True, True, True, False, False],
                          [False, False, False, True, True, True]])
    s = np.asarray(random_scores(visual, 3, seed=0))
    np.testing.assert_array_equal(s[0, 1:4], s[1, 3:6])
    assert len(set(s[0, 1:4].tolist())) == 3
    assert not np.array_equal(s, np.asarray(random_scores(visual, 3, seed=1)))


class Recorder:
    """A LayerHook that drops nothing and keeps each layer's output `[B, L, D]` (and is its own
    pruning request, for `VLM.forward(prune=...)`)."""

    def __init__(self):
        self.outputs = []

    def hook(self, visual, valid, query=None, *, depth, num_visual):
        return self

    def start(self, seq_len, valid, cache):
        return ()

    def request(self, layer, state):
        return None

    def between(self, layer, x, positions, valid, state, importance):
        self.outputs.append(np.asarray(x))
        return x, positions, valid, state

    def finish(self, out, state):
        return out


@pytest.fixture(scope="module")
def deep():
    """A 4-layer LLM (V = 16) and a left-padded batch whose images sit at different offsets."""
    cfg = presets.llava("clip-tiny", "qwen2-tiny")
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, depth=4))
    calib = random_calibration(cfg, 3, prompt_len=7, max_pad=4, seed=3)
    batch = {k: jnp.asarray(v) for k, v in calib.items() if k != "answers"}
    return cfg, init_params(cfg, 0), batch


def pruned_index(cfg, params, batch, spec):
    return np.asarray(VLM(cfg).apply({"params": params}, batch["images"], batch["tokens"],
                                     batch["valid"], method="forward", prune=spec).index)


def hidden_after_layers(cfg, params, batch):
    rec = Recorder()
    VLM(cfg).apply({"params": params}, batch["images"], batch["tokens"], batch["valid"],
                   method="forward", prune=rec)
    return rec.outputs


def index_keeping(visual_row, kept):
    """Original slots of a row's survivors: every non-visual slot and the `kept` visual ones."""
    return sorted(set(np.flatnonzero(~visual_row).tolist()) | set(kept))


def dart_keep_by_hand(x, visual, pivots, keep):
    """DART on one row: x `[L, D]` -> the kept visual slots (numpy, float64)."""
    vis = np.flatnonzero(visual)
    norm = np.linalg.norm(x.astype(np.float64), axis=-1)
    piv = vis[np.argsort(-norm[vis], kind="stable")[:pivots]]
    unit = x / norm[:, None]
    dup = {j: max(float(unit[j] @ unit[p]) for p in piv) for j in vis}
    ranked = sorted(vis, key=lambda j: (j not in piv, dup[j], j))
    return ranked[:keep]


@pytest.mark.parametrize("keep, pivots", [((16, 6, 6, 6), 2), ((16, 16, 5, 5), 3),
                                          ((16, 16, 16, 2), 4)])
def test_dart_prunes_by_duplication_of_the_hidden_states(deep, keep, pivots):
    """DART through the decoder's hook keeps the pivots and the tokens least similar to them,
    judged on the hidden states after the layer before the drop (an unpruned run's)."""
    cfg, params, batch = deep
    drop = next(i for i in range(1, 4) if keep[i] < keep[i - 1])
    x = hidden_after_layers(cfg, params, batch)[drop - 1]
    visual = np.asarray(batch["tokens"]) == cfg.image_token_id
    got = pruned_index(cfg, params, batch, PruneSpec(keep, score="dart", pivots=pivots))
    for b in range(len(visual)):
        kept = dart_keep_by_hand(x[b], visual[b], min(pivots, keep[drop]), keep[drop])
        assert got[b].tolist() == index_keeping(visual[b], kept)


def test_random_keep_prunes_the_same_grid_positions_in_every_row(deep):
    cfg, params, batch = deep
    keep = (16, 16, 6, 3)
    visual = np.asarray(batch["tokens"]) == cfg.image_token_id
    got = pruned_index(cfg, params, batch, PruneSpec(keep, score="random", seed=7))
    # by hand: the draws of the seed plus the layer index, ranked by visual ordinal
    first = np.asarray(jax.random.uniform(jax.random.key(7 + 1), (16,)))
    alive = np.sort(np.argsort(-first, kind="stable")[:6])  # ordinals after layer 1
    second = np.asarray(jax.random.uniform(jax.random.key(7 + 2), (6,)))
    alive = alive[np.sort(np.argsort(-second, kind="stable")[:3])]
    for b in range(len(visual)):
        start = int(np.argmax(visual[b]))
        assert got[b].tolist() == index_keeping(visual[b], (start + alive).tolist())
    other = pruned_index(cfg, params, batch, PruneSpec(keep, score="random", seed=8))
    assert not np.array_equal(other, got)


def test_dart_and_random_ask_no_layer_for_attention(deep):
    """Neither needs an attention map: every layer runs plain attention (the fused path where
    the model has one), unless importance is recorded for diagnostics."""
    cfg, _, batch = deep
    visual = batch["tokens"] == cfg.image_token_id
    for score in ("dart", "random"):
        pruner = PruneSpec((16, 8, 4, 2), score=score).hook(visual, batch["valid"], depth=4,
                                                            num_visual=16)
        state = pruner.start(batch["tokens"].shape[1], batch["valid"], None)
        assert [pruner.request(layer, state) for layer in range(4)] == [None] * 4
    attention = PruneSpec((16, 16, 4, 4)).hook(visual, batch["valid"], depth=4, num_visual=16)
    state = attention.start(batch["tokens"].shape[1], batch["valid"], None)
    assert [attention.request(layer, state) is not None for layer in range(4)] == [
        False, True, False, False]


def test_spec_rejects_unknown_scores():
    with pytest.raises(ValueError, match="score must be one of"):
        PruneSpec((4, 2), score="norm")
    with pytest.raises(ValueError, match="pivots must be >= 1"):
        PruneSpec((4, 2), score="dart", pivots=0)


# ----------------------------------------------------------------------------- batch invariance

def _answers_at_batch_1_and_8(module, spec, cfg, params, num_visual):
    images, tokens = prompts(cfg, 8, num_visual, text=6, seed=5)
    valid = np.ones(tokens.shape, bool)
    valid[3, :2] = False  # a left-padded row
    gen = generate.Generator(module, 4, prune=spec)
    whole = np.asarray(gen.tokens(params, {"images": images, "tokens": tokens,
                                           "valid": jnp.asarray(valid)}))
    one = np.concatenate([np.asarray(gen.tokens(params, {
        "images": images[i:i + 1], "tokens": tokens[i:i + 1],
        "valid": jnp.asarray(valid[i:i + 1])})) for i in range(8)])
    return whole, one


@pytest.mark.parametrize("name", ["fastv", "pyramiddrop", "dart", "random", "visionzip",
                                  "pooling"])
def test_pruned_answers_do_not_depend_on_the_batch(model, name):
    cfg, params = model
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, depth=4))
    params = init_params(cfg, 1)
    v = cfg.num_visual_tokens
    module, spec, n = VLM(cfg), None, v
    if name == "fastv":
        spec = PruneSpec(schedules.fastv(4, v, 1, 0.75))
    elif name == "pyramiddrop":
        spec = PruneSpec(schedules.pyramiddrop(4, v))
    elif name in ("dart", "random"):
        spec = PruneSpec(schedules.fastv(4, v, 1, 0.75), score=name, pivots=2)
    elif name == "visionzip":
        module, n = VisionZipVLM(cfg, dominant=3, contextual=1), 4
    else:
        module, n = VLM(pooling_config(cfg, 4)), 4
    whole, one = _answers_at_batch_1_and_8(module, spec, cfg, params, n)
    np.testing.assert_array_equal(whole, one)


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    # 3x the init: greedy answers vary with the input, and the schedules change some of them
    return scaled_tiny_vlm(tmp_path_factory.mktemp("tfds"), 8, 16, scale=3)


@pytest.mark.parametrize("score", ["attention", "dart", "random"])
def test_pruned_evaluation_is_the_same_at_batch_1_and_8(eval_setup, score):
    """The evaluator (the runner's and the benchmark's scoring path: loader, padding, stop
    tokens, metrics) under a schedule gives the same answers and scores at batch 1 and 8."""
    c, cfg, params = eval_setup
    module = models.build(cfg)
    spec = PruneSpec(schedules.fastv(cfg.llm.depth, cfg.num_visual_tokens, 1, 0.75),
                     score=score, pivots=1)
    loader = lambda b: data.make_loader(
        c.data, split="test", batch_size=b, num_visual_tokens=cfg.num_visual_tokens,
        image_size=cfg.vision.image_size, image_token_id=cfg.image_token_id, mode="eval")
    results = {b: evaluate(module, params, loader(b), max_new_tokens=4, prune=spec)
               for b in (1, 8)}
    one, eight = results[1]["records"], results[8]["records"]
    assert len(one) == len(eight) == 16
    assert [r["id"] for r in one] == [r["id"] for r in eight]
    assert [r["prediction"] for r in one] == [r["prediction"] for r in eight]
    assert results[1]["tasks"] == results[8]["tasks"]
    assert len({r["prediction"] for r in one}) > 1  # the answers say something
