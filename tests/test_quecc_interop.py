"""QueCC against an independent PyTorch implementation written from docs/algorithms.md section 2.

The torch module uses the reference's parameter names; its local windows are expressed as an
attention mask over all G*G tokens (token (r, s) may be seen by cell (r // k, s // k) only),
so the window bookkeeping is checked independently of our einops layout.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from vlm_jax.interop import quecc as interop
from vlm_jax.models import build, dummy_inputs, presets
from vlm_jax.models.vlm import Projector

torch.manual_seed(0)


def _mlp(c_in: int, c: int) -> tnn.Sequential:
    return tnn.Sequential(tnn.Linear(c_in, c), tnn.GELU(), tnn.Linear(c, c),
                          tnn.LayerNorm(c, eps=1e-6))


class TorchQueCC(tnn.Module):
    """docs/algorithms.md section 2 in PyTorch (batch-first)."""

    def __init__(self, c, c_multi, d_llm, grid, k, heads=8, text=True):
        super().__init__()
        self.grid, self.k = grid, k
        if text:
            self.text_projection = tnn.Sequential(tnn.Linear(d_llm, c), tnn.LayerNorm(c, eps=1e-6))
        self.q_proj, self.k_proj, self.v_proj = _mlp(c, c), _mlp(c_multi, c), _mlp(c_multi, c)
        self.q_downsample = tnn.Conv2d(c, c, k, stride=k, groups=c)
        self.clip_attn = tnn.MultiheadAttention(c, heads, batch_first=True)
        with torch.no_grad():  # LayerNorms / biases away from their trivial init
            for p in self.parameters():
                if p.ndim == 1:
                    p.add_(0.2 * torch.randn_like(p))

    def forward(self, x, x_multi, text=None):
        b, n, c = x.shape
        g, k = self.grid, self.k
        if text is not None:
            x = x + self.text_projection(text)[:, None, :]
        q = self.q_proj(x).transpose(1, 2).reshape(b, c, g, g)
        q = self.q_downsample(q)  # [b, c, h, w]
        q = q.flatten(2).transpose(1, 2)  # [b, V, c], row-major cells
        rows = torch.arange(g).repeat_interleave(g)  # token t = r * g + s
        cols = torch.arange(g).repeat(g)
        side = g // k
        cell = (rows // k) * side + cols // k  # [g*g]
        blocked = cell[None, :] != torch.arange(side * side)[:, None]  # [V, g*g] True = hidden
        out, _ = self.clip_attn(q, self.k_proj(x_multi), self.v_proj(x_multi),
                                attn_mask=blocked, need_weights=False)
        return out


def _state(m: tnn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}


def _inputs(b, g, c, c_multi, d, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(b, g * g, c)).astype(np.float32),
            rng.normal(size=(b, g * g, c_multi)).astype(np.float32),
            rng.normal(size=(b, d)).astype(np.float32))


@pytest.mark.parametrize("grid,k,batch,heads", [
    (6, 1, 2, 8), (6, 2, 1, 8), (6, 3, 3, 4), (6, 6, 2, 8), (4, 2, 2, 2), (12, 4, 1, 8)])
@pytest.mark.parametrize("text", [True, False])
def test_matches_torch_reference(grid, k, batch, heads, text):
    c, c_multi, d = 16, 48, 24
    ref = TorchQueCC(c, c_multi, d, grid, k, heads, text).eval()
    x, xm, t = _inputs(batch, grid, c, c_multi, d, seed=grid * 10 + k)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(xm),
                   torch.from_numpy(t) if text else None).numpy()
    module, params = interop.from_torch(_state(ref), grid=grid, heads=heads)
    assert module.cfg.use_text_query is text
    assert module.cfg.num_tokens == (grid // k) ** 2
    got = jax.jit(lambda p, a, b_, c_: module.apply({"params": p}, x=a, x_multi=b_, text=c_))(
        params, x, xm, t if text else None)
    assert got.shape == (batch, (grid // k) ** 2, c)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_text_query_changes_output_and_round_trip():
    ref = TorchQueCC(16, 32, 8, 4, 2, 8, text=True)
    sd = _state(ref)
    module, params = interop.from_torch(sd, grid=4, kernel=2)
    x, xm, t = _inputs(2, 4, 16, 32, 8)
    a = module.apply({"params": params}, x, xm, t)
    b = module.apply({"params": params}, x, xm, t[::-1])
    assert not np.allclose(np.asarray(a[0]), np.asarray(b[0]), atol=1e-4)
    back = interop.to_torch(params)
    assert sorted(back) == sorted(sd)
    for key in sd:
        np.testing.assert_array_equal(back[key], sd[key], err_msg=key)


def test_vlm_compressor_params_have_the_reference_layout():
    """Our VLM's `compressor` subtree converts to the reference names and back unchanged."""
    cfg = presets.llava("clip-tiny", "qwen2-tiny", num_tokens=4, compressor="quecc")
    cfg = dataclasses.replace(
        cfg, compressor=dataclasses.replace(cfg.compressor, feature_layers=(0, 1)))
    abstract = jax.eval_shape(build(cfg).init, jax.random.key(0), **dummy_inputs(cfg))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32),
                          nn.meta.unbox(abstract["params"]["compressor"]))
    sd = interop.to_torch(params)
    assert "text_projection.0.weight" in sd and sd["k_proj.0.weight"].shape == (32, 64)
    ref = TorchQueCC(32, 64, 32, 4, 2, 8, text=True)
    ref.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=True)
    module, back = interop.from_torch(sd, grid=4)
    flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(v)
                         for p, v in jax.tree_util.tree_leaves_with_path(tree)}
    fa, fb = flat(params), flat(back)
    assert sorted(fa) == sorted(fb)
    for key in fa:
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


def test_llava_checkpoint_split():
    c, c_multi, d, g, k = 16, 32, 24, 6, 3
    quecc = TorchQueCC(c, c_multi, d, g, k, 8, text=True)
    seq = tnn.Sequential(quecc, tnn.Linear(c, d), tnn.GELU(), tnn.Linear(d, d))
    sd = {f"model.mm_projector.{k_}": v for k_, v in _state(seq).items()}
    sd["model.layers.0.self_attn.q_proj.weight"] = np.zeros((d, d), np.float32)  # ignored
    module, qparams, proj = interop.from_llava(sd, grid=g)
    x, xm, t = _inputs(2, g, c, c_multi, d)
    with torch.no_grad():
        h = quecc(torch.from_numpy(x), torch.from_numpy(xm), torch.from_numpy(t))
        want = seq[3](seq[2](seq[1](h))).numpy()
    z = module.apply({"params": qparams}, x, xm, t)
    got = Projector(d).apply({"params": proj}, z)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_import_errors_name_the_key():
    sd = _state(TorchQueCC(16, 32, 8, 4, 2, 8, text=True))
    with pytest.raises(KeyError, match="unknown QueCC key.*extra.weight"):
        interop.from_torch({**sd, "extra.weight": np.zeros(3)}, grid=4)
    missing = {k: v for k, v in sd.items() if k != "v_proj.2.bias"}
    with pytest.raises(KeyError, match="missing.*v_proj.2.bias"):
        interop.from_torch(missing, grid=4)
    bad = {**sd, "q_proj.2.weight": np.zeros((16, 15), np.float32)}
    with pytest.raises(ValueError, match=r"'q_proj.2.weight' has shape \(16, 15\), expected"):
        interop.from_torch(bad, grid=4)
    with pytest.raises(ValueError, match="kernel=4 but q_downsample.weight"):
        interop.from_torch(sd, grid=4, kernel=4)
    with pytest.raises(ValueError, match="kernel 2 does not divide grid 5"):
        interop.from_torch(sd, grid=5)
    with pytest.raises(KeyError, match="use_text_query=False"):
        interop.from_torch(sd, grid=4, use_text_query=False)
    with pytest.raises(ValueError, match="not divisible by heads=3"):
        interop.from_torch(sd, grid=4, heads=3)
    module, params = interop.from_torch(sd, grid=4)
    x, xm, t = _inputs(2, 4, 16, 32, 8)
    with pytest.raises(ValueError, match=r"`x_multi` must be \[B, 16, 32\], got \(2, 16, 16\)"):
        module.apply({"params": params}, x, xm[..., :16], t)
    with pytest.raises(ValueError, match=r"`x` must be \[B, 16, 16\]"):
        module.apply({"params": params}, xm, xm, t)
    with pytest.raises(ValueError, match="needs `text`"):
        module.apply({"params": params}, x, xm, None)
    with pytest.raises(ValueError, match="needs `text`"):
        module.apply({"params": params}, x, xm, jnp.zeros((2, 9)))
    llava = {f"model.mm_projector.0.{k}": v for k, v in sd.items()}
    with pytest.raises(KeyError, match=r"missing mm_projector.1.weight"):
        interop.split_llava_projector(llava)
    with pytest.raises(KeyError, match=r"unexpected projector key 'model.mm_projector.2.weight'"):
        interop.split_llava_projector({**llava, "model.mm_projector.2.weight": np.zeros(2)})
