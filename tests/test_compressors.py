"""Token compressors: torch references for avgpool / tokenpacker / resampler, bad input, the
full VLM with QueCC (jit, gradients, text query wiring) and a few training steps per compressor.
"""

import dataclasses
import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

from vlm_jax.interop import quecc as interop
from vlm_jax.models import build, compressors, init_params, presets
from vlm_jax.models.config import CompressorConfig, ViTConfig

torch.manual_seed(0)
# A tiny CLIP-like tower with an 8 x 8 patch grid, so V = 1, 4, 16, 64 all fit.
CLIP_TINY_G8 = ViTConfig("clip", 64, 8, 32, 2, 4, 64, 1e-5)


def tiny_vlm(name: str, v: int | None, text_query: bool = True):
    cfg = presets.llava("clip-tiny", "qwen2-tiny", num_tokens=v, compressor=name)
    comp = dataclasses.replace(cfg.compressor, feature_layers=(0, 1), use_text_query=text_query)
    return dataclasses.replace(cfg, vision=CLIP_TINY_G8, compressor=comp)


def _apply(name, v, grid, c, x, xm=None, text=None, **kw):
    cfg = CompressorConfig(name=name, num_tokens=v, **kw)
    m = compressors.build(cfg, grid=grid, width=c, text_width=None if text is None else
                          text.shape[-1])
    params = nn.meta.unbox(jax.jit(m.init)(jax.random.key(1), x, xm, text)).get("params", {})
    return m, params, jax.jit(m.apply)({"params": params}, x, xm, text)


@pytest.mark.parametrize("grid,k", [(6, 1), (6, 2), (6, 3), (6, 6), (8, 4)])
def test_avgpool_matches_torch(grid, k):
    x = np.random.default_rng(0).normal(size=(2, grid * grid, 5)).astype(np.float32)
    _, _, got = _apply("avgpool", (grid // k) ** 2, grid, 5, x)
    t = torch.from_numpy(x).reshape(2, grid, grid, 5).permute(0, 3, 1, 2)
    want = F.avg_pool2d(t, k, k).flatten(2).transpose(1, 2).numpy()
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


class TorchTokenPacker(tnn.Module):
    """bilinear(x) -> q_proj; keys / values of x_multi in the k x k window under each cell."""

    def __init__(self, c, c_multi, grid, k, heads):
        super().__init__()
        mlp = lambda c_in: tnn.Sequential(tnn.Linear(c_in, c), tnn.GELU(), tnn.Linear(c, c),
                                          tnn.LayerNorm(c, eps=1e-6))
        self.q_proj, self.k_proj, self.v_proj = mlp(c), mlp(c_multi), mlp(c_multi)
        self.clip_attn = tnn.MultiheadAttention(c, heads, batch_first=True)
        self.grid, self.k = grid, k

    def forward(self, x, x_multi):
        b, _, c = x.shape
        g, k, s = self.grid, self.k, self.grid // self.k
        small = F.interpolate(x.transpose(1, 2).reshape(b, c, g, g), size=(s, s),
                              mode="bilinear", align_corners=False, antialias=False)
        q = self.q_proj(small.flatten(2).transpose(1, 2)).reshape(b * s * s, 1, c)
        win = lambda t: t.reshape(b, s, k, s, k, c).permute(0, 1, 3, 2, 4, 5).reshape(
            b * s * s, k * k, c)
        out, _ = self.clip_attn(q, win(self.k_proj(x_multi)), win(self.v_proj(x_multi)),
                                need_weights=False)
        return out.reshape(b, s * s, c)


@pytest.mark.parametrize("grid,k", [(6, 2), (6, 3), (8, 4), (6, 6), (4, 1)])
def test_tokenpacker_matches_torch(grid, k):
    c, cm = 16, 32
    rng = np.random.default_rng(grid + k)
    x = rng.normal(size=(2, grid * grid, c)).astype(np.float32)
    xm = rng.normal(size=(2, grid * grid, cm)).astype(np.float32)
    m = compressors.build(CompressorConfig("tokenpacker", (grid // k) ** 2), grid=grid, width=c)
    params = nn.meta.unbox(jax.jit(m.init)(jax.random.key(1), x, xm))["params"]
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape),
                          params)  # LayerNorms / biases off their trivial init
    ref = TorchTokenPacker(c, cm, grid, k, 8)
    ref.load_state_dict({n: torch.tensor(v) for n, v in interop.to_torch(params).items()})
    got = jax.jit(m.apply)({"params": params}, x, xm)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(xm)).numpy()
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_resampler_matches_torch():
    c, grid, v, heads = 16, 6, 9, 4
    x = np.random.default_rng(3).normal(size=(3, grid * grid, c)).astype(np.float32)
    _, p, got = _apply("resampler", v, grid, c, x, heads=heads)
    mha = tnn.MultiheadAttention(c, heads, batch_first=True)
    a = p["attn"]
    tt = lambda z: torch.tensor(np.asarray(z))
    mha.load_state_dict({
        "in_proj_weight": tt(np.concatenate([a[n]["kernel"].T for n in ("query", "key", "value")])),
        "in_proj_bias": tt(np.concatenate([a[n]["bias"] for n in ("query", "key", "value")])),
        "out_proj.weight": tt(a["out_proj"]["kernel"].T), "out_proj.bias": tt(a["out_proj"]["bias"])})
    ln = lambda z, n: F.layer_norm(z, (c,), tt(p[n]["scale"]), tt(p[n]["bias"]), 1e-6)
    with torch.no_grad():
        q = ln(tt(p["queries"]), "ln_q").expand(3, v, c)
        kv = ln(torch.from_numpy(x), "ln_kv")
        want = mha(q, kv, kv, need_weights=False)[0].numpy()
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(compressors.REGISTRY))
def test_compressor_inputs_table_says_what_each_module_reads(name):
    """`COMPRESSOR_INPUTS` (through `reads_multi` / `reads_text`) is what the modules do: an
    input it names is required (missing: an error) and changes the output; one it does not
    name is never needed."""
    from vlm_jax.models.config import COMPRESSOR_INPUTS
    assert set(COMPRESSOR_INPUTS) == set(compressors.REGISTRY)
    rng = np.random.default_rng(0)
    grid, c, d = 4, 8, 6
    x, xm = (rng.normal(size=(2, 16, w)).astype(np.float32) for w in (c, 2 * c))
    cfg = CompressorConfig(name=name, num_tokens=None if name == "identity" else 4, heads=2)
    m = compressors.build(cfg, grid=grid, width=c, text_width=d)
    given = {"x_multi": xm if cfg.reads_multi else None,
             "text": rng.normal(size=(2, d)).astype(np.float32) if cfg.reads_text else None}
    params = m.init(jax.random.key(0), x, **given)
    out = m.apply(params, x, **given)
    for key, reads in (("x_multi", cfg.reads_multi), ("text", cfg.reads_text)):
        if not reads:
            continue
        with pytest.raises((ValueError, TypeError, AttributeError)):
            m.apply(params, x, **dict(given, **{key: None}))
        other = m.apply(params, x, **dict(given, **{key: given[key] + 1.0}))
        assert not np.allclose(np.asarray(other), np.asarray(out)), key
    assert tiny_vlm(name, None if name == "identity" else 4).uses_text_query == cfg.reads_text
    assert not CompressorConfig(name=name, use_text_query=False).reads_text


def test_bad_input_errors():
    build_ = lambda name, v, **kw: compressors.build(CompressorConfig(name, v, **kw), grid=8,
                                                     width=32, text_width=16, multi_width=64)
    for name in ("avgpool", "resampler", "tokenpacker", "quecc"):
        with pytest.raises(ValueError, match=r"V=5 does not fit a 8x8 patch grid.*\[64, 16, 4, 1\]"):
            build_(name, 5)
        with pytest.raises(ValueError, match="V=9 does not fit"):
            build_(name, 9)  # 3 does not divide 8
    with pytest.raises(ValueError, match="width C=32 is not divisible by heads=5"):
        build_("quecc", 16, heads=5)
    with pytest.raises(ValueError, match="unknown compressor 'nope'"):
        build_("nope", 16)
    with pytest.raises(ValueError, match="identity compressor keeps all 64"):
        build_("identity", 16)
    with pytest.raises(ValueError, match="needs text_width"):
        compressors.build(CompressorConfig("quecc", 4), grid=8, width=32, text_width=None)
    m = build_("quecc", 16)
    x, xm, t = jnp.ones((2, 64, 32)), jnp.ones((2, 64, 64)), jnp.ones((2, 16))
    params = jax.eval_shape(m.init, jax.random.key(0), x, xm, t)  # errors raise while tracing
    apply = lambda *a: jax.eval_shape(m.apply, params, *a)
    assert apply(x, xm, t).shape == (2, 16, 32)
    with pytest.raises(ValueError, match=r"quecc with use_text_query=True needs `text`.*got None"):
        apply(x, xm, None)
    with pytest.raises(ValueError, match=r"`x` must be \[B, 64, 32\], got \(2, 64, 16\)"):
        apply(x[..., :16], xm, t)
    with pytest.raises(ValueError, match=r"`x_multi` must be \[B, 64, 64\], got \(2, 64, 32\)"):
        apply(x, xm[..., :32], t)
    with pytest.raises(ValueError, match=r"quecc: `x_multi` \[B, 64, C\] is required"):
        apply(x, None, t)
    nq = build_("quecc", 16, use_text_query=False)
    p = jax.eval_shape(nq.init, jax.random.key(0), x, xm)["params"]
    assert "text_projection" not in p and "q_downsample" in p
    cfg = tiny_vlm("quecc", 16)
    inputs = _vlm_inputs(cfg, 1)
    del inputs["question"], inputs["question_valid"]
    with pytest.raises(ValueError, match="uses a text query: pass `question`"):
        jax.eval_shape(build(cfg).init, jax.random.key(0), **inputs)


def _vlm_inputs(cfg, batch, seed=0):
    rng = np.random.default_rng(seed)
    v = cfg.num_visual_tokens
    tokens = np.concatenate([np.full((batch, v), cfg.image_token_id), rng.integers(
        1, 100, (batch, 4))], axis=1).astype(np.int32)
    question = rng.integers(1, 100, (batch, 5)).astype(np.int32)
    valid = np.ones((batch, 5), bool)
    valid[0, 3:] = False  # right padding in the first row
    return {"images": rng.normal(size=(batch, 64, 64, 3)).astype(np.float32), "tokens": tokens,
            "question": question, "question_valid": valid}


@pytest.fixture(scope="module")
def base_params():
    """Vision tower, projector and LLM of the tiny 8x8-grid VLM (shared by every compressor)."""
    return init_params(tiny_vlm("identity", None), 0)


def vlm_params(cfg, base):
    """`base` plus freshly initialised compressor params for `cfg` (the VLM's own layout)."""
    m = compressors.build(cfg.compressor, grid=cfg.vision.grid, width=cfg.vision.width,
                          text_width=cfg.llm.width,
                          multi_width=cfg.vision.width * len(cfg.compressor.feature_layers))
    g = cfg.vision.grid**2
    x = jnp.zeros((1, g, cfg.vision.width))
    xm = jnp.zeros((1, g, cfg.vision.width * len(cfg.compressor.feature_layers)))
    comp = nn.meta.unbox(jax.jit(m.init)(jax.random.key(1), x, xm, jnp.zeros((1, cfg.llm.width))))
    params = dict(base)
    if comp.get("params"):
        params["compressor"] = comp["params"]
    want = jax.eval_shape(build(cfg).init, jax.random.key(0), **_vlm_inputs(cfg, 1))["params"]
    assert jax.tree.structure(nn.meta.unbox(want)) == jax.tree.structure(params)
    return params


def test_vlm_with_quecc_jits_and_differentiates(base_params):
    cfg = tiny_vlm("quecc", 4)
    model = build(cfg)
    params = vlm_params(cfg, base_params)
    inputs = _vlm_inputs(cfg, 2)
    fwd = jax.jit(lambda p, **kw: model.apply({"params": p}, **kw))
    logits = fwd(params, **inputs)
    assert logits.shape == (2, 4 + 4, cfg.llm.vocab_size)
    other = dict(inputs, question=inputs["question"][:, ::-1])
    assert not np.allclose(np.asarray(fwd(params, **other)[0, :4]), np.asarray(logits[0, :4]),
                           atol=1e-6)
    # Padding after the question's last real token does not change anything.
    padded = dict(inputs, question=inputs["question"].copy())
    padded["question"][0, 3:] = 7
    np.testing.assert_allclose(np.asarray(fwd(params, **padded)), np.asarray(logits), atol=1e-6)

    def loss(comp):
        out = model.apply({"params": {**params, "compressor": comp}}, **inputs)
        return jnp.mean(jax.nn.logsumexp(out, -1) - out[..., 0])

    grads = jax.jit(jax.grad(loss))(params["compressor"])
    for name in ("text_projection", "q_proj", "k_proj", "v_proj", "q_downsample", "clip_attn"):
        g = jax.tree.leaves(grads[name])
        assert all(np.isfinite(np.asarray(a)).all() for a in g), name
        assert max(float(jnp.abs(a).max()) for a in g) > 0, name


def train(name, v, base, steps=20):
    """Adam (lr 1e-2) on compressor + projector only, for the next-token loss of the token
    right after the image: 5 for bright images, 9 for dark ones. The frozen random LLM gets a
    25x embedding table (std 0.5) so that its tied-embedding logits can become confident.

    Returns (losses, accuracy of the last step)."""
    cfg = tiny_vlm(name, v)
    base = dict(base, language_model=jax.tree.map(lambda a: a, base["language_model"]))
    base["language_model"]["embed_tokens"] = {
        "embedding": base["language_model"]["embed_tokens"]["embedding"] * 25}
    model, params = build(cfg), vlm_params(cfg, base)
    inputs = _vlm_inputs(cfg, 4)
    sign = np.array([1, -1, 1, -1], np.float32)[:, None, None, None]
    inputs["images"] = np.abs(inputs["images"]) * sign
    n_img = cfg.num_visual_tokens
    inputs["tokens"][:, n_img] = np.where(sign[:, 0, 0, 0] > 0, 5, 9)
    target = jnp.asarray(inputs["tokens"][:, n_img])
    trainable = {k: params[k] for k in ("compressor", "multi_modal_projector") if k in params}
    frozen = {k: params[k] for k in params if k not in trainable}

    def loss_fn(tr):
        logits = model.apply({"params": {**frozen, **tr}}, **inputs)[:, n_img - 1]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == target)

    opt = optax.adam(1e-2)

    @jax.jit
    def step(tr, state):
        (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(tr)
        upd, state = opt.update(g, state, tr)
        return optax.apply_updates(tr, upd), state, loss, acc

    tr, state, losses = trainable, opt.init(trainable), []
    for _ in range(steps):
        tr, state, loss, acc = step(tr, state)
        losses.append(float(loss))
    if "compressor" in tr:  # every compressor parameter learns (at V = G*G a window holds
        # one token, so the query side of an attention compressor gets no gradient)
        moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), tr["compressor"],
                             trainable["compressor"])
        full = v == cfg.vision.grid**2 and name != "resampler"
        assert (max if full else min)(jax.tree.leaves(moved)) > 0, moved
    return losses, float(acc)


# Default suite: every compressor once and every V once; the full matrix runs with -m slow.
FAST = [("avgpool", 16), ("resampler", 1), ("tokenpacker", 64), ("quecc", 4), ("identity", None)]
FULL = [(n, v) for n in ("avgpool", "resampler", "tokenpacker", "quecc") for v in (1, 4, 16, 64)]


@pytest.mark.parametrize("name,v", FAST)
def test_compressor_trains(name, v, base_params):
    losses, acc = train(name, v, base_params)
    assert losses[-1] < 0.1 * losses[0] and acc == 1.0, (losses, acc)


@pytest.mark.slow
@pytest.mark.parametrize("name,v", [c for c in FULL if c not in FAST])
def test_compressor_trains_full_grid(name, v, base_params):
    losses, acc = train(name, v, base_params)
    assert losses[-1] < 0.1 * losses[0] and acc == 1.0, (losses, acc)


def _load_config_module():
    path = pathlib.Path(__file__).parents[1] / "configs" / "quecc_grid.py"
    spec = importlib.util.spec_from_file_location("quecc_grid", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quecc_grid_config():
    mod = _load_config_module()
    runs = mod.sweep()
    assert len(runs) == 4 * 7 and "llm=qwen1.5-7b,V=576" in runs
    cfg = mod.get_config("llm=qwen1.5-1.8b,V=16")
    model_cfg = build(cfg.model).cfg
    assert cfg.name == "quecc_qwen1.5-1.8b_v16"
    assert model_cfg.compressor.name == "quecc" and model_cfg.num_visual_tokens == 16
    assert model_cfg.compressor.feature_layers == (12, 16, 22, 23)
    assert model_cfg.vision.grid == 24 and model_cfg.llm.width == 2048
    assert build(mod.get_config("llm=qwen1.5-0.5b,V=576").model).cfg.compressor.name == "identity"
    k1 = build(mod.get_config("llm=qwen1.5-0.5b,V=576,full=quecc").model).cfg
    assert k1.compressor.name == "quecc" and k1.num_visual_tokens == 576
    with pytest.raises(ValueError, match="V=5 does not fit"):
        mod.get_config("llm=qwen1.5-0.5b,V=5")
    with pytest.raises(ValueError, match="unknown key"):
        mod.get_config("llm=qwen1.5-0.5b,tokens=5")
    tiny = mod.sweep("tiny")
    assert len(tiny) == 2 * 4
    for arg in tiny:  # every tiny grid point builds (abstractly) with the right V
        cfg = mod.get_config(arg)
        model = build(cfg.model)
        out = jax.eval_shape(model.init, jax.random.key(0), **_vlm_inputs(model.cfg, 1))
        assert "vision_tower" in out["params"]
        assert model.cfg.num_visual_tokens == int(arg.split("V=")[1])


@pytest.mark.parametrize("name", ["quecc", "tokenpacker", "resampler"])
def test_params_carry_logical_axes(name):
    cfg = tiny_vlm(name, 16)
    boxed = jax.eval_shape(build(cfg).init, jax.random.key(0), **_vlm_inputs(cfg, 1))
    leaves = jax.tree_util.tree_leaves_with_path(
        boxed["params"]["compressor"], is_leaf=lambda a: isinstance(a, nn.Partitioned))
    assert leaves
    for path, leaf in leaves:
        assert isinstance(leaf, nn.Partitioned), jax.tree_util.keystr(path)
        assert len(leaf.names) == leaf.value.ndim and any(leaf.names), jax.tree_util.keystr(path)


def test_quecc_vlm_sharded_forward_equals_single_device(base_params):
    from vlm_jax import sharding

    cfg = tiny_vlm("quecc", 16)
    model, params = build(cfg), vlm_params(cfg, base_params)
    inputs = _vlm_inputs(cfg, 2)
    fwd = jax.jit(lambda p, kw: model.apply({"params": p}, **kw))
    want = fwd(params, inputs)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    rules = sharding.rules_for("fsdp_tp")
    # The compressor sharded by its logical axes; the rest (vocab 129) replicated.
    boxed = jax.eval_shape(model.init, jax.random.key(0), **_vlm_inputs(cfg, 1))["params"]
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = {k: sharding.logical_shardings(boxed[k], mesh, rules) if k == "compressor" else
                 jax.tree.map(lambda _: replicated, params[k]) for k in params}
    sharded = jax.device_put(params, shardings)
    conv = sharded["compressor"]["q_downsample"]["kernel"]
    assert conv.addressable_shards[0].data.shape == (2, 2, 1, 16)  # vis_embed over fsdp
    in_sh = {k: sharding.batch_sharding(mesh, rules, np.ndim(v)) for k, v in inputs.items()}

    @jax.jit
    def fwd_sharded(p, kw):
        with nn.logical_axis_rules(rules):
            return model.apply({"params": p}, **kw)

    got = fwd_sharded(sharded, jax.device_put(inputs, in_sh))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
