"""Import / export of the reference PyTorch QueCC compressor (locuslab/llava-token-compression).

Reference parameter names (torch layouts: `nn.Linear.weight` is `[out, in]`):
  text_projection.0 (Linear D_llm->C), text_projection.1 (LayerNorm)   [only with the text query]
  q_proj / k_proj / v_proj .0 (Linear), .2 (Linear), .3 (LayerNorm)   [.1 is the GELU]
  q_downsample.weight [C, 1, k, k], q_downsample.bias [C]             (depthwise Conv2d)
  clip_attn.in_proj_weight [3C, C], clip_attn.in_proj_bias [3C], clip_attn.out_proj.{weight,bias}
In original-LLaVA checkpoints the module sits first in `model.mm_projector`, an
`nn.Sequential(QueCC, Linear(C->D), GELU, Linear(D->D))`: keys `model.mm_projector.0.<above>`,
`model.mm_projector.1.*` (our projector's `linear_1`) and `model.mm_projector.3.*` (`linear_2`);
stage-1 `mm_projector.bin` holds exactly those keys. `split_llava_projector` takes them apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import numpy as np
from flax import traverse_util

from vlm_jax.interop import mappings
from vlm_jax.models.compressors import QueCC, window_size
from vlm_jax.models.config import CompressorConfig

_PART = (mappings.Part("", "", mappings.QUECC),)


def _need(sd: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in sd:
        raise KeyError(f"QueCC state dict is missing {key!r} (have {sorted(sd)[:8]}...)")
    return np.asarray(sd[key])


def _shapes(module: QueCC) -> dict[str, tuple[int, ...]]:
    """Flattened param path -> shape of `module`, nothing computed."""
    g, c = module.grid, module.width
    x = jax.ShapeDtypeStruct((1, g * g, c), np.float32)
    xm = jax.ShapeDtypeStruct((1, g * g, module.multi_width), np.float32)
    text = (jax.ShapeDtypeStruct((1, module.text_width), np.float32)
            if module.cfg.use_text_query else None)
    abstract = jax.eval_shape(lambda a, b, t: module.init(jax.random.key(0), a, b, t), x, xm, text)
    flat = traverse_util.flatten_dict(abstract["params"], sep="/")
    return {k: tuple(getattr(v, "value", v).shape) for k, v in flat.items()}


def from_torch(state_dict: Mapping[str, np.ndarray], *, grid: int, kernel: int | None = None,
               heads: int = 8, use_text_query: bool | None = None, eps: float = 1e-6):
    """A reference QueCC state dict -> `(module, params)`.

    Widths come from the shapes (C from `clip_attn.out_proj.weight`, C_multi from
    `k_proj.0.weight`, D_llm from `text_projection.0.weight`); `kernel` defaults to the conv's
    (and must equal it when given; the reference uses stride = kernel). `use_text_query=None`
    means: on iff `text_projection.*` keys are present. Then
    `module.apply({"params": params}, x=[B, G*G, C], x_multi=[B, G*G, C_multi],
    text=[B, D_llm]) -> [B, (G/k)^2, C]`. Names go through `mappings.QUECC`.
    """
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    has_text = any(k.startswith("text_projection.") for k in sd)
    text = has_text if use_text_query is None else bool(use_text_query)
    c = _need(sd, "clip_attn.out_proj.weight").shape[0]
    c_multi = _need(sd, "k_proj.0.weight").shape[-1]
    d = _need(sd, "text_projection.0.weight").shape[-1] if text else None
    conv_k = _need(sd, "q_downsample.weight").shape[-1]
    k = conv_k if kernel is None else kernel
    if k != conv_k:
        raise ValueError(f"kernel={kernel} but q_downsample.weight has shape "
                         f"{sd['q_downsample.weight'].shape} (kernel {conv_k})")
    if grid % k:
        raise ValueError(f"kernel {k} does not divide grid {grid}")
    if c % heads:
        raise ValueError(f"QueCC width C={c} is not divisible by heads={heads}")
    cfg = CompressorConfig(name="quecc", num_tokens=(grid // k) ** 2, use_text_query=text,
                           heads=heads, norm_eps=eps)
    module = QueCC(cfg=cfg, grid=grid, width=c, text_width=d, multi_width=c_multi)
    entries = mappings.plan(_PART, _shapes(module))
    missing = sorted(set(entries) - set(sd))
    unknown = sorted(set(sd) - set(entries))
    if missing:
        raise KeyError(f"QueCC state dict is missing {missing}")
    if unknown:
        hint = " (text_projection.* present but use_text_query=False)" if has_text and not text \
            else ""
        raise KeyError(f"unknown QueCC key(s) {unknown}{hint}")
    flat: dict[str, np.ndarray] = {}
    for key, entry in entries.items():
        if sd[key].shape != entry.hf_shape:
            raise ValueError(f"QueCC key {key!r} has shape {sd[key].shape}, expected "
                             f"{entry.hf_shape} (C={c}, C_multi={c_multi}, D_llm={d}, k={k})")
        for path, value in zip(entry.paths, entry.transform.to_ours(sd[key].astype(np.float32))):
            flat[path] = np.ascontiguousarray(value)
    return module, traverse_util.unflatten_dict(flat, sep="/")


def to_torch(params: Mapping) -> dict[str, np.ndarray]:
    """Our QueCC params -> the reference state dict (numpy, torch layouts).

    Also takes `tokenpacker` params (no `q_downsample`, no `text_projection`).
    """
    flat = {k: np.asarray(v, np.float32)
            for k, v in traverse_util.flatten_dict(dict(params), sep="/").items()}
    entries = mappings.plan(_PART, {k: v.shape for k, v in flat.items()})
    return {key: np.ascontiguousarray(e.transform.to_hf(*[flat[p] for p in e.paths]))
            for key, e in entries.items()}


_PROJ_KEY = re.compile(r"^(?P<prefix>.*?)mm_projector\.(?P<idx>\d+)\.(?P<rest>.+)$")


def split_llava_projector(state_dict: Mapping[str, np.ndarray]):
    """An original-LLaVA (QueCC fork) state dict -> `(quecc_state_dict, projector_params)`.

    Keys `<prefix>mm_projector.0.*` are the QueCC module (returned with the prefix stripped, for
    `from_torch`), `.1.*` and `.3.*` the `mlp2x_gelu` linears, returned as
    `{"linear_1": {"kernel", "bias"}, "linear_2": {...}}` for `vlm_jax.models.vlm.Projector`.
    Keys outside `mm_projector` (LLM, vision tower) are ignored; anything else under it raises.
    """
    quecc: dict[str, np.ndarray] = {}
    linears: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        m = _PROJ_KEY.match(key)
        if not m:
            continue
        idx, rest = int(m["idx"]), m["rest"]
        if idx == 0:
            quecc[rest] = np.asarray(value)
        elif idx in (1, 3) and rest in ("weight", "bias"):
            name = "linear_1" if idx == 1 else "linear_2"
            v = np.asarray(value, np.float32)
            linears.setdefault(name, {})["kernel" if rest == "weight" else "bias"] = \
                np.ascontiguousarray(v.T if rest == "weight" else v)
        else:
            raise KeyError(f"unexpected projector key {key!r}: expected mm_projector.0.* "
                           "(QueCC), mm_projector.{1,3}.{weight,bias} (mlp2x_gelu)")
    if not quecc:
        raise KeyError("no `mm_projector.0.*` (QueCC) keys in the state dict")
    for name in ("linear_1", "linear_2"):
        for p in ("kernel", "bias"):
            if p not in linears.get(name, {}):
                idx = 1 if name == "linear_1" else 3
                raise KeyError(f"missing mm_projector.{idx}."
                               f"{'weight' if p == 'kernel' else 'bias'} ({name})")
    c = linears["linear_1"]["kernel"].shape[0]
    c_q = quecc.get("clip_attn.out_proj.weight", np.zeros((c,))).shape[0]
    if c != c_q:
        raise ValueError(f"mm_projector.1.weight takes C={c} inputs but QueCC outputs C={c_q}")
    return quecc, linears


def from_llava(state_dict: Mapping[str, np.ndarray], *, grid: int, kernel: int | None = None,
               heads: int = 8, use_text_query: bool | None = None):
    """`(module, quecc_params, projector_params)` from an original-LLaVA QueCC checkpoint.

    In a `vlm_jax.models.VLM` they go to `params["compressor"]` and
    `params["multi_modal_projector"]`.
    """
    quecc, projector = split_llava_projector(state_dict)
    module, params = from_torch(quecc, grid=grid, kernel=kernel, heads=heads,
                                use_text_query=use_text_query)
    return module, params, projector


__all__ = ["from_torch", "to_torch", "split_llava_projector", "from_llava", "window_size"]
