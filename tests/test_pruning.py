"""In-LLM visual-token pruning: equivalences against independent references (tiny models)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.eval import generate
from vlm_jax.models import init_params, presets
from vlm_jax.models import llm as llm_mod
from vlm_jax.models.cache import init_cache
from vlm_jax.models.layers import attention_weights, causal_mask
from vlm_jax.models.llm import default_positions
from vlm_jax.models.vlm import VLM
from vlm_jax.pruning import PruneSpec, ScheduleError, cache_sizes, schedules
from vlm_jax.pruning.calibration import model_inputs, random_calibration

DEPTH = 4


@pytest.fixture(scope="module")
def model():
    cfg = presets.llava("clip-tiny", "qwen2-tiny")
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, depth=DEPTH))
    return cfg, init_params(cfg, 0)


@pytest.fixture(scope="module")
def batch(model):
    cfg, _ = model
    calib = random_calibration(cfg, 3, prompt_len=7, max_pad=4, seed=3)
    calib["valid"][0, :] = True  # row 0 unpadded, the others padded by different amounts
    first = np.argmax(calib["tokens"] == cfg.image_token_id, axis=1)
    assert len(set(first.tolist())) > 1, "visual tokens must sit at different offsets"
    return {k: jnp.asarray(v) for k, v in calib.items() if k != "answers"}


def forward(cfg, params, batch, **kw):
    return VLM(cfg).apply({"params": params}, batch["images"], batch["tokens"], batch["valid"],
                          method="forward", **kw)


def jit_forward(cfg, params, batch, prune=None, **kw):
    """`forward` under jit (the spec static, arrays traced)."""
    fn = jax.jit(lambda p, b, kw: forward(cfg, p, b, prune=prune, **kw))
    return fn(params, batch, kw)


class Capture:
    """Replaces the LLM's causal self-attention to record explicit probabilities `[B, KV, G, Lq, Lk]`."""

    def __init__(self, monkeypatch):
        self.probs, self._orig = [], llm_mod.causal_attention
        monkeypatch.setattr(llm_mod, "causal_attention", self)

    def __call__(self, q, k, v, valid, impl="xla"):
        b, lq, h, dh = q.shape
        self.probs.append(np.asarray(attention_weights(
            q.reshape(b, lq, k.shape[2], h // k.shape[2], dh), k, causal_mask(valid))))
        return self._orig(q, k, v, valid, impl)


def importance_by_hand(probs, rows):
    """probs `[B, KV, G, Lq, Lk]`, rows `[B, Lq]` -> `[B, Lk]` head-mean of row-summed mass."""
    b, kv, g = probs.shape[:3]
    return np.einsum("bkgqs,bq->bs", probs.astype(np.float64), rows.astype(np.float64)) / (kv * g)


def rows_by_hand(query, visual, valid):
    rows = np.zeros_like(valid)
    for b in range(len(valid)):
        real = np.flatnonzero(valid[b])
        if query == "last":
            rows[b, real[-1]] = True
        else:
            after = np.arange(valid.shape[1]) > np.flatnonzero(visual[b])[-1]
            rows[b] = valid[b] & ~visual[b] & after
    return rows


def top_visual(imp, candidates, k):
    """The k candidates with the largest importance (earlier index first on ties)."""
    idx = np.flatnonzero(candidates)
    order = np.argsort(-imp[idx], kind="stable")
    return set(idx[order[:k]].tolist())


def masked_reference(cfg, params, batch, keep, query, monkeypatch):
    """Full-length forward that hides removed tokens as keys instead of removing them."""
    cap = Capture(monkeypatch)
    tokens, valid = np.asarray(batch["tokens"]), np.asarray(batch["valid"])
    visual = tokens == cfg.image_token_id
    rows = rows_by_hand(query, visual, valid)
    alive = np.ones_like(valid)

    def run(vlm):
        x = vlm.embed_inputs(batch["images"], batch["tokens"])
        positions = default_positions(batch["valid"])
        lm = vlm.language_model
        for layer_id, layer in enumerate(lm.layers):
            if layer_id > 0 and keep[layer_id] < keep[layer_id - 1]:
                imp = importance_by_hand(cap.probs[-1], rows)
                for b in range(len(tokens)):
                    cand = visual[b] & alive[b]
                    survivors = top_visual(imp[b], cand, keep[layer_id])
                    for j in np.flatnonzero(cand):
                        alive[b, j] = j in survivors
            x = layer(x, positions, jnp.asarray(valid & alive)).hidden
        return lm.head(lm.norm(x))

    logits = VLM(cfg).apply({"params": params}, method=run)
    return np.asarray(logits), alive


def test_keep_all_is_identical(model, batch):
    cfg, params = model
    ref = jit_forward(cfg, params, batch)
    out = jit_forward(cfg, params, batch, prune=PruneSpec(schedules.full(DEPTH, 16), "text"))
    np.testing.assert_array_equal(np.asarray(out.logits), np.asarray(ref.logits))
    np.testing.assert_array_equal(np.asarray(out.index),
                                  np.broadcast_to(np.arange(ref.logits.shape[1]), out.index.shape))


@pytest.mark.parametrize("keep,query", [((16, 11, 6, 0), "text"), ((16, 5, 5, 2), "last"),
                                        ((16, 9, 3, 3), "text")])
def test_removal_equals_masking(model, batch, keep, query, monkeypatch):
    cfg, params = model
    out = jit_forward(cfg, params, batch, prune=PruneSpec(keep, query=query))
    ref_logits, alive = masked_reference(cfg, params, batch, keep, query, monkeypatch)
    valid = np.asarray(batch["valid"])
    index = np.asarray(out.index)
    assert out.logits.shape[1] == valid.shape[1] - 16 + keep[-1]
    for b in range(valid.shape[0]):
        np.testing.assert_array_equal(index[b], np.flatnonzero(alive[b]))
        real = valid[b, index[b]]
        np.testing.assert_allclose(np.asarray(out.logits)[b][real],
                                   ref_logits[b, index[b]][real], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("keep,query", [(None, "last"), ((16, 16, 8, 8), "last"),
                                        ((16, 10, 4, 1), "text")])
def test_cached_generation_equals_uncached(model, batch, keep, query):
    cfg, params = model
    spec, steps = None if keep is None else PruneSpec(keep, query=query), 4
    gen = generate.Generator(VLM(cfg), steps, prune=spec)
    cached = np.asarray(gen.tokens(params, model_inputs(batch)))
    tokens, valid = np.asarray(batch["tokens"]), np.asarray(batch["valid"])
    b, n = tokens.shape
    rows = rows_by_hand(query, tokens == cfg.image_token_id, valid)
    # The whole sequence is recomputed for every new token; slots not generated yet sit on the
    # right as padding (causal: they change nothing before them), so one compile serves all.
    full = np.concatenate([tokens, np.zeros((b, steps), np.int32)], 1)
    fwd = jax.jit(lambda t, v: forward(
        cfg, params, {**batch, "tokens": t, "valid": v}, prune=spec,
        query=jnp.asarray(np.pad(rows, ((0, 0), (0, steps))))).logits)
    out_len = n + steps - (0 if keep is None else 16 - keep[-1])
    for t in range(steps):
        full_valid = np.concatenate([valid, np.arange(steps)[None].repeat(b, 0) < t], 1)
        logits = fwd(jnp.asarray(full), jnp.asarray(full_valid))
        full[:, n + t] = np.asarray(jnp.argmax(logits[:, out_len - steps - 1 + t], -1))
    np.testing.assert_array_equal(cached, full[:, n:])
    compiled = generate.prefill._cache_size(), generate.decode._cache_size()
    other = {**batch, "images": batch["images"] + 1.0}
    generate.Generator(VLM(cfg), steps, prune=spec).tokens(params, model_inputs(other))
    # one compile per schedule, shared by generators
    assert (generate.prefill._cache_size(), generate.decode._cache_size()) == compiled


@pytest.mark.parametrize("keep", [None, (16, 12, 6, 6)])
def test_right_padding_generates_what_left_padding_does(model, batch, keep):
    cfg, params = model
    spec = None if keep is None else PruneSpec(keep, query="text")
    valid = np.asarray(batch["valid"])
    pads = (~valid).sum(1)
    assert pads.max() > 0, "some row must be padded"
    right = {k: jnp.asarray(np.stack([np.roll(row, -p) for row, p in zip(np.asarray(v), pads)]))
             if k in ("tokens", "valid") else v for k, v in batch.items()}
    assert np.asarray(right["valid"])[:, 0].all() and not np.asarray(right["valid"])[:, -1].all()
    gen = generate.Generator(VLM(cfg), 3, prune=spec)
    np.testing.assert_array_equal(np.asarray(gen.tokens(params, model_inputs(right))),
                                  np.asarray(gen.tokens(params, model_inputs(batch))))


def test_time_to_first_token_is_the_first_generated_token(model, batch):
    """`prefill(module, 1, spec, ...)` (what the pruning report times) compiles once and gives
    the first token of a longer generation."""
    cfg, params = model
    spec, inputs = PruneSpec((16, 8, 8, 4)), model_inputs(batch)
    first, _, _ = generate.prefill(VLM(cfg), 1, spec, params, inputs)
    compiled = generate.prefill._cache_size()
    again, _, _ = generate.prefill(VLM(cfg), 1, spec, params, inputs)
    assert generate.prefill._cache_size() == compiled
    longer = np.asarray(generate.Generator(VLM(cfg), 3, prune=spec).tokens(params, inputs))
    np.testing.assert_array_equal(np.asarray(first), longer[:, 0])
    np.testing.assert_array_equal(np.asarray(again), longer[:, 0])


def test_pruned_cache_sizes_per_layer(model, batch):
    cfg, params = model
    spec = PruneSpec((16, 12, 4, 4))
    n = batch["tokens"].shape[1]
    sizes = cache_sizes(spec, n, 3, DEPTH)
    assert sizes == [n + 3, n - 4 + 3, n - 12 + 3, n - 12 + 3]
    out = jit_forward(cfg, params, batch, prune=spec, cache=init_cache(cfg.llm, 3, sizes))
    assert [int(c.end) for c in out.cache] == [n, n - 4, n - 12, n - 12]
    too_small = init_cache(cfg.llm, 3, [n] * DEPTH)
    too_small[1] = init_cache(cfg.llm, 3, n - 5)[0]
    with pytest.raises(ValueError, match="cache of layer 1 has"):
        forward(cfg, params, batch, prune=spec, cache=too_small)


@pytest.mark.parametrize("k,ratio", [(1, 0.5), (3, 0.25)])
def test_fastv_selection_matches_explicit_attention(model, batch, k, ratio, monkeypatch):
    cfg, params = model
    keep = schedules.fastv(DEPTH, 16, k, ratio)
    out = jit_forward(cfg, params, batch, prune=PruneSpec(keep))
    cap = Capture(monkeypatch)
    forward(cfg, params, batch)  # unpruned, recording every layer's probabilities
    assert len(cap.probs) == DEPTH
    tokens, valid = np.asarray(batch["tokens"]), np.asarray(batch["valid"])
    visual = tokens == cfg.image_token_id
    last = valid.shape[1] - 1  # left padding: the last real token is the last position
    imp = cap.probs[k - 1][:, :, :, last].mean(axis=(1, 2))  # [B, L]
    for b in range(len(tokens)):
        kept_visual = set(np.asarray(out.index)[b].tolist()) & set(np.flatnonzero(visual[b]))
        assert kept_visual == top_visual(imp[b], visual[b], keep[-1])


@pytest.mark.parametrize("keep,match", [
    ((16, 16, 17, 8), "layer 2 keeps 17 tokens, more than layer 1"),
    ((16, 16, 8), "has 3 layers but the LLM has 4"),
    ((16, 16, -1, -1), "layer 2 keeps a negative count"),
    ((17, 17, 8, 8), "layer 0 keeps 17 visual tokens but only 16 exist"),
    ((12, 12, 8, 8), "layer 0 keeps 12 of 16"),
    ((16, 16, 8.5, 8), "layer 2 keeps 8.5"),
])
def test_bad_schedules_fail_before_compilation(model, batch, keep, match):
    cfg, params = model
    with pytest.raises(ScheduleError, match=match):
        def fn(p, t, v):
            return forward(cfg, p, {**batch, "tokens": t, "valid": v},
                           prune=PruneSpec(keep)).logits
        jax.jit(fn).lower(params, batch["tokens"], batch["valid"])


def test_spec_rejects_unknown_options():
    with pytest.raises(ValueError, match="query must be one of"):
        PruneSpec((4, 2), query="all")
    with pytest.raises(ValueError, match="unknown pruning impl"):
        PruneSpec((4, 2), impl="triton")


def test_pallas_kernels_match_xla(model, batch):
    """impl="pallas_interpret" (the vlm_jax.kernels Pallas kernels, interpreted on CPU) selects
    the same tokens and gives the same logits as the jnp path."""
    cfg, params = model
    keep = (16, 7, 7, 3)
    ref = jit_forward(cfg, params, batch, prune=PruneSpec(keep, "text"))
    out = jit_forward(cfg, params, batch, prune=PruneSpec(keep, "text", impl="pallas_interpret"))
    np.testing.assert_array_equal(np.asarray(out.index), np.asarray(ref.index))
    real = np.take_along_axis(np.asarray(batch["valid"]), np.asarray(ref.index), 1)
    np.testing.assert_allclose(np.asarray(out.logits)[real], np.asarray(ref.logits)[real],
                               rtol=1e-5, atol=1e-5)
