"""Model core: shapes, KV-cache decoding, padding, sharding, bad input."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import models, sharding
from vlm_jax.models import cache as cache_lib
from vlm_jax.models import llm as llm_lib
from vlm_jax.models import presets


def _tiny_vlm(**kw):
    return dataclasses.replace(presets.get("llava-tiny"), **kw)


def _left_padded_prompts(cfg, lengths, total, seed=0):
    """Left-padded prompts with V placeholders after a one-token prefix; returns tokens, valid."""
    rng = np.random.default_rng(seed)
    v = cfg.num_visual_tokens
    tokens = np.zeros((len(lengths), total), np.int32)
    valid = np.zeros((len(lengths), total), bool)
    for b, n_text in enumerate(lengths):
        row = [5] + [cfg.image_token_id] * v + list(rng.integers(1, 100, n_text))
        tokens[b, total - len(row):] = row
        valid[b, total - len(row):] = True
    return jnp.asarray(tokens), jnp.asarray(valid)


def test_build_shapes_and_presets():
    cfg = presets.get("llava-tiny")
    module = models.build(cfg)
    params = models.init_params(cfg)
    inputs = models.dummy_inputs(cfg, batch=2)
    logits = module.apply({"params": params}, **inputs)
    assert logits.shape == (2, inputs["tokens"].shape[1], cfg.llm.vocab_size)
    assert np.isfinite(np.asarray(logits)).all()
    # build() accepts a preset name and a plain dict.
    assert models.build("qwen2-tiny").cfg == presets.get("qwen2-tiny")
    assert models.build(models.to_dict(cfg)).cfg == cfg
    for name in presets.NAMES:
        assert presets.get(name) is not None
    big = presets.get("llava-1.5-7b")
    assert big.num_visual_tokens == 576 and big.vision.grid == 24


def test_vision_hidden_states_count():
    for name in ("clip-tiny", "siglip-tiny"):
        cfg = presets.get(name)
        out = models.build(cfg).apply({"params": models.init_params(cfg)},
                                      **models.dummy_inputs(cfg, 2))
        assert len(out.hidden_states) == cfg.depth + 1
        assert out.hidden_states[-1].shape == (2, cfg.num_positions, cfg.width)
        assert out.pooled.shape == (2, cfg.width)


@pytest.mark.parametrize("llm_name", ["qwen2-tiny", "llama-tiny"])
def test_kv_cache_decoding_matches_full_forward(llm_name):
    """Prefill + one-token decode steps give the full forward's logits, with left padding."""
    cfg = _tiny_vlm(llm=dataclasses.replace(presets.get(llm_name), vocab_size=129),
                    image_token_id=128)
    module = models.build(cfg)
    params = models.init_params(cfg, 1)
    tokens, valid = _left_padded_prompts(cfg, lengths=[3, 7, 5], total=cfg.num_visual_tokens + 9)
    images = jax.random.normal(jax.random.key(2), (3, 32, 32, 3))
    new = jax.random.randint(jax.random.key(3), (3, 4), 1, 100)
    positions = llm_lib.default_positions(valid)

    out = module.apply({"params": params}, images, tokens, valid, positions, method="forward")
    cache = cache_lib.init_cache(cfg.llm, 3, tokens.shape[1] + new.shape[1])
    pre = module.apply({"params": params}, images, tokens, valid, positions, cache=cache,
                       method="forward")
    v = np.asarray(valid)  # padded rows attend to nothing: their outputs are arbitrary
    np.testing.assert_allclose(np.asarray(pre.logits)[v], np.asarray(out.logits)[v], atol=1e-5,
                               rtol=1e-5)
    cache = pre.cache
    full_tokens, full_valid = tokens, valid
    last_pos = positions[:, -1:]
    for t in range(new.shape[1]):
        step = module.apply({"params": params}, new[:, t:t + 1], last_pos + 1, cache,
                            method="decode")
        cache, last_pos = step.cache, last_pos + 1
        full_tokens = jnp.concatenate([full_tokens, new[:, t:t + 1]], 1)
        full_valid = jnp.concatenate([full_valid, jnp.ones((3, 1), bool)], 1)
        ref = module.apply({"params": params}, images, full_tokens, full_valid, method="forward")
        np.testing.assert_allclose(step.logits[:, 0], ref.logits[:, -1], atol=1e-5, rtol=1e-5)


def test_left_padding_does_not_change_valid_logits():
    cfg = presets.get("llava-tiny")
    module, params = models.build(cfg), models.init_params(cfg)
    tokens, valid = _left_padded_prompts(cfg, lengths=[4], total=cfg.num_visual_tokens + 5)
    padded, pvalid = _left_padded_prompts(cfg, lengths=[4], total=cfg.num_visual_tokens + 11)
    images = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    a = module.apply({"params": params}, images, tokens, valid)
    b = module.apply({"params": params}, images, padded, pvalid)
    np.testing.assert_allclose(a[:, -5:], b[:, -5:], atol=1e-5)


def test_placeholder_count_mismatch_is_a_clear_error():
    cfg = presets.get("llava-tiny")
    module, params = models.build(cfg), models.init_params(cfg)
    inputs = models.dummy_inputs(cfg, batch=2)
    tokens = np.asarray(inputs["tokens"]).copy()
    tokens[1, 0] = 7  # one placeholder short
    with pytest.raises(ValueError, match=r"prompt 1 holds 15 image placeholder tokens.*16"):
        module.apply({"params": params}, inputs["images"], jnp.asarray(tokens))


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="unknown key.*'hidden'"):
        models.from_dict({"kind": "llm", "hidden": 3})
    with pytest.raises(ValueError, match="heads 4 is not a multiple of kv_heads 3"):
        models.LLMConfig(heads=4, kv_heads=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        presets.get("gpt-5")
    with pytest.raises(ValueError, match=r"images must be \[B, 32, 32, 3\]"):
        cfg = presets.get("clip-tiny")
        models.build(cfg).apply({"params": models.init_params(cfg)}, jnp.zeros((1, 16, 16, 3)))


def test_bfloat16_compute_keeps_float32_params():
    cfg = presets.get("llava-tiny")
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, dtype="bfloat16"),
                              vision=dataclasses.replace(cfg.vision, dtype="bfloat16"))
    params = models.init_params(cfg)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype("float32")}
    ref = models.build(presets.get("llava-tiny")).apply({"params": params},
                                                        **models.dummy_inputs(cfg, 2))
    out = models.build(cfg).apply({"params": params}, **models.dummy_inputs(cfg, 2))
    assert out.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(out - ref))) < 0.05 * float(jnp.max(jnp.abs(ref))) + 0.05


def test_fsdp_tp_sharded_forward_equals_single_device():
    assert len(jax.devices()) == 8, "conftest forces 8 CPU devices"
    cfg = presets.llava("clip-tiny", "qwen2-tiny")
    # Widths that divide the mesh: 2-way fsdp x 4-way tensor.
    llm = dataclasses.replace(cfg.llm, width=64, heads=8, kv_heads=4, mlp_dim=128, vocab_size=132)
    cfg = dataclasses.replace(cfg, llm=llm, image_token_id=131)
    module = models.build(cfg)
    inputs = models.dummy_inputs(cfg, batch=4)
    inputs["images"] = jax.random.normal(jax.random.key(1), inputs["images"].shape)
    params = models.init_params(cfg, 3)
    ref = module.apply({"params": params}, **inputs)

    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    rules = sharding.rules_for("fsdp_tp")
    abstract = jax.eval_shape(
        lambda: module.init(jax.random.key(0), **models.dummy_inputs(cfg, 1))["params"])
    shardings = sharding.logical_shardings(abstract, mesh, rules)
    sharded = jax.device_put(params, shardings)
    in_sh = {k: sharding.batch_sharding(mesh, rules, v.ndim) for k, v in inputs.items()}

    @jax.jit
    def fwd(p, x):
        with nn.logical_axis_rules(rules):
            return module.apply({"params": p}, **x)

    out = fwd(sharded, jax.device_put(inputs, in_sh))
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)
    # Every large parameter is really split across devices.
    for path, leaf in jax.tree_util.tree_leaves_with_path(sharded):
        if leaf.size >= 64 * 64:
            shard = leaf.addressable_shards[0].data
            assert shard.size < leaf.size, f"{jax.tree_util.keystr(path)} is not sharded"
    q = sharded["language_model"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
    assert q.addressable_shards[0].data.shape == (32, 16)  # embed/2 (fsdp), heads/4 (tensor)
