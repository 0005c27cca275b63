"""The paper's grid: CLIP ViT-L/14-336 + QueCC at V in {1, 4, 16, 36, 64, 144, 576} x LLM size.

    --config=configs/quecc_grid.py:llm=qwen1.5-0.5b,V=16
    --config=configs/quecc_grid.py:llm=qwen2-tiny,V=4          (tiny: CPU, 8x8 patch grid)

Options (`key=value`, comma-separated): `llm` (an LLM preset), `V` (visual tokens; must be
(G/k)^2 with k dividing the grid G), `compressor` (quecc | tokenpacker | resampler | avgpool),
`text_query` (1/0, QueCC's question query), `full` (compressor at V = G*G: `identity`, i.e. plain
LLaVA as in the reference sweep, or the compressor itself with k = 1).
`sweep(arg)` lists the arg strings of the whole grid (`sweep("tiny")` for the CPU grid).
Only `model` and `name` are set here; training / data keys come from the configs that use this.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from vlm_jax.config_args import parse_arg
from vlm_jax.models import presets
from vlm_jax.models.compressors import window_size
from vlm_jax.models.config import ViTConfig, to_dict

LLMS = ("qwen1.5-0.5b", "qwen1.5-1.8b", "qwen1.5-4b", "qwen1.5-7b")
TOKENS = (1, 4, 16, 36, 64, 144, 576)
VISION = "clip-l/14-336"
# CPU grid: a 2-layer CLIP-like tower on 64 px images with 8 px patches (8x8 grid).
TINY_LLMS = ("qwen2-tiny", "llama-tiny")
TINY_TOKENS = (1, 4, 16, 64)
TINY_VISION = ViTConfig("clip", 64, 8, 32, 2, 4, 64, 1e-5)
TINY_FEATURE_LAYERS = (0, 1)  # embeddings and the penultimate layer (the tower has 2)

def model_config(llm: str, v: int, compressor: str = "quecc", text_query: bool = True,
                 full: str = "identity"):
    """The VLMConfig of one grid point."""
    tiny = llm in TINY_LLMS
    vision = TINY_VISION if tiny else presets.VISION[VISION]
    grid = vision.grid
    window_size(v, grid, f"{compressor} (llm={llm})")
    name = full if v == grid * grid else compressor
    cfg = presets.llava(VISION, llm, None if name == "identity" else v, name)
    comp = dataclasses.replace(cfg.compressor, use_text_query=text_query)
    if tiny:
        comp = dataclasses.replace(comp, feature_layers=TINY_FEATURE_LAYERS)
    return dataclasses.replace(cfg, vision=vision, compressor=comp)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, llm=LLMS[0], V=16, compressor="quecc", text_query=True, full="identity")
    cfg = model_config(a.llm, a.V, a.compressor, a.text_query, a.full)
    config = ml_collections.ConfigDict()
    config.name = f"{cfg.compressor.name}_{a.llm}_v{a.V}"
    config.model = to_dict(cfg)
    return config


def sweep(arg: str | None = None) -> list[str]:
    """Arg strings of every grid point: the paper's grid, or the CPU one with `"tiny"`."""
    llms, tokens = (TINY_LLMS, TINY_TOKENS) if arg == "tiny" else (LLMS, TOKENS)
    return [f"llm={llm},V={v}" for llm in llms for v in tokens]
