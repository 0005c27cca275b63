"""Hugging Face checkpoints <-> vlm_jax `(cfg, params)`.

`load(path)` reads a local directory (config.json + model.safetensors, or sharded
model-0000i-of-0000n.safetensors + model.safetensors.index.json) of
`LlavaForConditionalGeneration`, `LlamaForCausalLM`, `Qwen2ForCausalLM`, `CLIPVisionModel`
(or a full `CLIPModel`, whose vision part is taken), `SiglipVisionModel` (or `SiglipModel`), or
an original-LLaVA-repository checkpoint (`LlavaLlamaForCausalLM`, `LlavaQwenForCausalLM`; see
`load_llava_original`). It returns a vlm_jax config dataclass and a float32 numpy pytree shaped
exactly like `vlm_jax.models.init_params(cfg)`. Tensors are read one at a time and converted to
their final layout at once.

`save(cfg, params, path)` writes config.json + model.safetensors (sharded past
`max_shard_bytes`) in the layout transformers 5.x writes, which `from_pretrained` loads.
Name mapping: `vlm_jax.interop.mappings` (one table per family, used both ways).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from vlm_jax import models
from vlm_jax.interop import hf_config, mappings
from vlm_jax.interop.safetensors_io import Checkpoint, write_checkpoint
from vlm_jax.io import read_json
from vlm_jax.models.config import LLMConfig, ViTConfig, VLMConfig

Config = ViTConfig | LLMConfig | VLMConfig
_MAX_LISTED = 6


def read_config(path: str) -> dict[str, Any]:
    """The parsed `config.json` of a checkpoint directory."""
    file = os.path.join(path, "config.json")
    if not os.path.exists(file):
        raise FileNotFoundError(f"no config.json in {path!r}")
    return read_json(file)  # a malformed file is an error naming it


def param_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Flattened ("/"-joined) parameter path -> shape of `init_params(cfg)`, nothing computed."""
    abstract = jax.eval_shape(lambda: models.init_params(cfg))
    flat = traverse_util.flatten_dict(models.unstack_layers(abstract), sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def _parts(cfg: Config) -> tuple[mappings.Part, ...]:
    if isinstance(cfg, VLMConfig):
        return mappings.llava_parts(cfg.vision.family)
    if isinstance(cfg, ViTConfig):
        return (mappings.Part("", "", mappings.VISION[cfg.family]),)
    return (mappings.Part("", "", mappings.DECODER),)


def _listing(names: Sequence[str]) -> str:
    more = f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return f"{list(names[:_MAX_LISTED])}{more}"


def read_params(ckpt: Checkpoint, parts: Sequence[mappings.Part],
                shapes: Mapping[str, tuple[int, ...]],
                aliases: Sequence[tuple[str, str]] = (),
                ignored: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Flat vlm_jax params read from `ckpt` through `parts`' tables.

    Checks names and shapes from the file headers first (missing, unexpected, mis-shaped
    tensors are errors naming them), then reads tensor by tensor.
    """
    entries = mappings.plan(parts, shapes)
    skip = re.compile("|".join((*mappings.ALWAYS_IGNORED, *ignored)))
    chosen: dict[str, str] = {}  # canonical name -> name in the file
    unexpected = []
    for key in ckpt.keys():
        name = mappings.rename(key, aliases)
        if skip.search(name):
            continue
        entry = entries.get(name)
        if entry is None:
            unexpected.append(key)
            continue
        if name in chosen:
            raise ValueError(f"{ckpt.directory}: tensors {chosen[name]!r} and {key!r} are the same "
                             f"parameter ({name!r})")
        chosen[name] = key
        if ckpt.shape(key) != entry.hf_shape:
            raise ValueError(
                f"{ckpt.file_of(key)}: tensor {key!r} has shape {list(ckpt.shape(key))} but "
                f"config.json implies {list(entry.hf_shape)} (vlm_jax {list(entry.paths)} "
                f"{[list(shapes[p]) for p in entry.paths]})")
    if unexpected:
        raise ValueError(
            f"{ckpt.directory}: unexpected tensor(s) {_listing(unexpected)} (in "
            f"{os.path.basename(ckpt.file_of(unexpected[0]))}): a model built from config.json "
            f"has no such parameter; expected names look like {_listing(sorted(entries))}")
    missing = [n for n in entries if n not in chosen]
    if missing:
        raise ValueError(f"{ckpt.directory}: missing tensor(s) {_listing(missing)} that a model "
                         f"built from config.json needs (vlm_jax {list(entries[missing[0]].paths)})")
    names = {key: name for name, key in chosen.items()}
    flat: dict[str, np.ndarray] = {}
    for key, array in ckpt.iter_tensors(list(names)):
        entry = entries[names[key]]
        for path, value in zip(entry.paths, entry.transform.to_ours(array)):
            flat[path] = np.ascontiguousarray(value, dtype=np.float32)
        del array
    return flat


def _vision_section(d: dict, name: str, family: str) -> dict:
    if name in ("CLIPModel", "SiglipModel"):
        sub = dict(d.get("vision_config") or {})
        sub.setdefault("model_type", f"{family}_vision_model")
        return sub
    return d


def load(path: str, *, vision_path: str | None = None,
         image_token_id: int | None = None) -> tuple[Config, dict]:
    """`(cfg, params)` from a local Hugging Face directory.

    Original-LLaVA checkpoints are detected from config.json and go to `load_llava_original`
    (`vision_path`, `image_token_id` are passed on; other architectures ignore them).
    """
    d = read_config(path)
    where = os.path.join(path, "config.json")
    name, kind, family = hf_config.architecture(d, where)
    if kind == "llava_original":
        return load_llava_original(path, vision_path, image_token_id)
    aliases, ignored = (), ()
    if kind == "llava":
        cfg = hf_config.vlm_from_hf(d, where)
        aliases = mappings.LLAVA_ALIASES
    elif kind == "llm":
        cfg = hf_config.llm_from_hf(d, where, family)
    else:
        cfg = hf_config.vision_from_hf(_vision_section(d, name, family), where)
        aliases, ignored = mappings.VISION_ALIASES, mappings.FULL_MODEL_IGNORED
    if isinstance(cfg, (LLMConfig, VLMConfig)) and _llm(cfg).tie_embeddings:
        ignored = (*ignored, r"(^|\.)lm_head\.weight$")  # a stored copy of the tied table
    flat = read_params(Checkpoint(path), _parts(cfg), param_shapes(cfg), aliases, ignored)
    params = models.to_layout(cfg, traverse_util.unflatten_dict(flat, sep="/"))
    if kind == "vision":
        _remember_tower(params, os.path.abspath(path))
    return cfg, params


def _llm(cfg: LLMConfig | VLMConfig) -> LLMConfig:
    return cfg.llm if isinstance(cfg, VLMConfig) else cfg


def _infer_clip(ckpt: Checkpoint, prefix: str) -> ViTConfig:
    """A CLIP tower config from the tensor shapes under `prefix` (head dim 64, as every
    OpenAI CLIP tower has; pass `vision_path` for anything else)."""
    shape = lambda n: ckpt.shape(prefix + n)
    width, _, patch, _ = shape("embeddings.patch_embedding.weight")
    positions = shape("embeddings.position_embedding.weight")[0]
    grid = int(round((positions - 1) ** 0.5))
    layers = {int(m.group(1)) for k in ckpt.keys()
              if (m := re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", k))}
    return ViTConfig("clip", image_size=grid * patch, patch_size=patch, width=width,
                     depth=len(layers), heads=width // 64,
                     mlp_dim=shape("encoder.layers.0.mlp.fc1.weight")[0], norm_eps=1e-5)


TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
_TOWER_DIR = "vision_tower"  # where `save(..., write_tower=True)` puts the tower
_TOWER_SOURCES: dict[int, tuple[weakref.ref, str]] = {}


def _tower_key(tower: Mapping) -> np.ndarray | None:
    leaves = jax.tree_util.tree_leaves(tower)
    return leaves[0] if leaves and isinstance(leaves[0], np.ndarray) else None


def _remember_tower(tower: Mapping, source: str) -> None:
    """Records where a loaded tower came from (a directory or Hub name the fork can open)."""
    leaf = _tower_key(tower)
    if leaf is not None:
        _TOWER_SOURCES[id(leaf)] = (weakref.ref(leaf), source)


def tower_source(tower: Mapping) -> str | None:
    """The directory (or Hub name) `load` read these tower params from, if they are unchanged."""
    leaf = _tower_key(tower)
    ref, source = _TOWER_SOURCES.get(id(leaf), (None, None)) if leaf is not None else (None, None)
    return source if ref is not None and ref() is leaf else None


def _local_tower(path: str, name: str | None) -> str | None:
    """The local tower directory of an original-LLaVA checkpoint: `mm_vision_tower` when it is
    one, else the `vision_tower/` folder `save(..., write_tower=True)` writes."""
    for candidate in (name, os.path.join(path, _TOWER_DIR)):
        if candidate and os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    return None


def _tower_config(path: str) -> tuple[Config, None]:
    """The config `load(path)` would return, without reading weights."""
    d = read_config(path)
    where = os.path.join(path, "config.json")
    name, kind, family = hf_config.architecture(d, where)
    if kind != "vision":
        return LLMConfig() if kind == "llm" else VLMConfig(), None
    return hf_config.vision_from_hf(_vision_section(d, name, family), where), None


def load_llava_original(path: str, vision_path: str | None = None,
                        image_token_id: int | None = None) -> tuple[VLMConfig, dict]:
    """`(cfg, params)` from an original-LLaVA-repository checkpoint, or the QueCC fork's.

    Layout (`mappings.original_llava_parts`): `model.embed_tokens`, `model.layers.*`,
    `model.norm`, `lm_head` (the LLM); `model.mm_projector.{0,2}` (mlp2x_gelu) or, with
    `mm_vision_token_compression_type: "quecc"`, `model.mm_projector.0.*` (QueCC) and
    `.{1,3}` (the linears); optionally the tower under
    `model.vision_tower.vision_tower.vision_model.*`. config.json carries `mm_vision_tower`,
    `mm_projector_type`, `mm_vision_select_layer`, `mm_vision_select_feature`, `mm_hidden_size`
    and the fork's `mm_vision_token_compression_*` / `mm_vision_output_*` keys.
    The tower's config (and, when the checkpoint holds no tower, its weights) come from
    `vision_path`, else from `mm_vision_tower` when that is a local directory; a tower stored in
    the checkpoint without either is read as a CLIP with head dim 64. The image placeholder id
    defaults to `vocab_size` (the original code splices at a `-200` marker instead).
    """
    d = read_config(path)
    where = os.path.join(path, "config.json")
    name, kind, family = hf_config.architecture(d, where)
    if kind != "llava_original":
        raise ValueError(f"{where}: architecture {name!r} is not an original-LLaVA checkpoint")
    _require_single_image(d, where)
    ckpt = Checkpoint(path)
    has_tower = any(k.startswith(TOWER_PREFIX) for k in ckpt.keys())
    tower_dir = vision_path or _local_tower(path, d.get("mm_vision_tower"))
    vision_params = None
    if tower_dir is not None:
        vcfg, vision_params = _tower_config(tower_dir) if has_tower else load(tower_dir)
        if not isinstance(vcfg, ViTConfig):
            raise ValueError(f"vision tower {tower_dir!r} holds {type(vcfg).__name__}, not a "
                             "CLIP / SigLIP vision tower")
    elif has_tower:
        vcfg = _infer_clip(ckpt, TOWER_PREFIX)
    else:
        raise ValueError(f"{where}: the checkpoint holds no vision tower and mm_vision_tower="
                         f"{d.get('mm_vision_tower')!r} is not a local directory; pass "
                         "vision_path= a local directory of that CLIP / SigLIP model")
    cfg = hf_config.original_llava_from_hf(d, family, vcfg, image_token_id, where)
    parts = mappings.original_llava_parts(vcfg.family, cfg.compressor.name)
    shapes = param_shapes(cfg)
    if not has_tower:
        parts = parts[1:]
        shapes = {k: v for k, v in shapes.items() if not k.startswith("vision_tower/")}
    ignored = (r"(^|\.)lm_head\.weight$",) if cfg.llm.tie_embeddings else ()
    flat = read_params(ckpt, parts, shapes, (), ignored)
    params = traverse_util.unflatten_dict(flat, sep="/")
    if not has_tower:
        params["vision_tower"] = vision_params
    source = os.path.abspath(tower_dir) if tower_dir and not has_tower else d.get("mm_vision_tower")
    if source:
        _remember_tower(params["vision_tower"], source)
    return cfg, params


def _require_single_image(d: dict, where: str) -> None:
    merge = d.get("mm_patch_merge_type") or "flat"
    aspect = str(d.get("image_aspect_ratio") or "pad")
    if merge != "flat" or aspect.startswith("anyres"):
        raise ValueError(f"{where}: mm_patch_merge_type={merge!r}, image_aspect_ratio={aspect!r}: "
                         "LLaVA-NeXT any-resolution tiling is not supported; vlm_jax reads "
                         "single-image LLaVA-1.5-style checkpoints")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt",
                   "chat_template.json", "chat_template.jinja")
FORMATS = ("hf", "llava_original")


def _check_params(cfg: Config, flat: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    shapes = param_shapes(cfg)
    missing = sorted(set(shapes) - set(flat))
    extra = sorted(set(flat) - set(shapes))
    if missing or extra:
        raise ValueError(f"params do not match the config: missing {_listing(missing)}, "
                         f"unexpected {_listing(extra)}")
    for p, shape in shapes.items():
        if tuple(np.shape(flat[p])) != shape:
            raise ValueError(f"param {p!r} has shape {list(np.shape(flat[p]))}, the config needs "
                             f"{list(shape)}")
    return shapes


def _write(path: str, parts, shapes, flat, config: dict, max_shard_bytes: int | None) -> None:
    entries = mappings.plan(parts, shapes)

    def producer(entry: mappings.Entry):
        return lambda: entry.transform.to_hf(*[np.asarray(flat[p], np.float32)
                                               for p in entry.paths])

    tensors = [(n, e.hf_shape, producer(e)) for n, e in entries.items()]
    os.makedirs(path, exist_ok=True)
    write_checkpoint(path, tensors, max_shard_bytes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def _copy_tokenizer(tokenizer: str, path: str) -> None:
    folder = os.path.dirname(tokenizer) if os.path.isfile(tokenizer) else tokenizer
    found = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(folder, n))]
    if "tokenizer.json" not in found and "tokenizer.model" not in found:
        raise FileNotFoundError(f"tokenizer={tokenizer!r}: no tokenizer.json or tokenizer.model "
                                f"in {folder!r}")
    for name in found:
        shutil.copyfile(os.path.join(folder, name), os.path.join(path, name))


def _write_tower(cfg: VLMConfig, tower: Mapping, path: str) -> str:
    """The tower as a transformers CLIP directory (weights, config, image processor)."""
    save(cfg.vision, tower, path)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    size = cfg.vision.image_size
    processor = {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
                 "size": {"shortest_edge": size}, "do_center_crop": True,
                 "crop_size": {"height": size, "width": size}, "do_rescale": True,
                 "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(mean),
                 "image_std": list(std), "do_convert_rgb": True, "resample": 3}
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump(processor, f, indent=2)
    return os.path.abspath(path)


def save(cfg: Any, params: Mapping, path: str, *, format: str = "hf",
         max_shard_bytes: int | None = None, tokenizer: str | None = None,
         vision_tower: str | None = None, write_tower: bool = False) -> None:
    """Writes config.json + safetensors (+ the tokenizer files of `tokenizer`, a folder).

    `format="hf"`: what transformers' `from_pretrained` loads (LLaVA, Llama, Qwen2, CLIP,
    SigLIP). `format="llava_original"` (VLMs): the original LLaVA repository's layout, with the
    QueCC fork's `mm_vision_token_compression_*` keys for a QueCC model. Its `mm_vision_tower`
    is `vision_tower` if given; else, with `write_tower=True`, the tower written as a
    transformers CLIP directory in `path/vision_tower`; else the directory (or Hub name) `load`
    read the tower from. The tower's tensors also go into the checkpoint when `mm_vision_tower`
    is not a local directory, so `load` can read the export back without the Hub.
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r}; known: {list(FORMATS)}")
    cfg = models.from_dict(cfg)
    flat = traverse_util.flatten_dict(models.unstack_layers(dict(params)), sep="/")
    if format == "hf":
        config = hf_config.to_hf(cfg)
        _write(path, _parts(cfg), _check_params(cfg, flat), flat, config, max_shard_bytes)
    else:
        if not isinstance(cfg, VLMConfig):
            raise ValueError(f"format='llava_original' saves VLMs; got {type(cfg).__name__}")
        shapes = _check_params(cfg, flat)
        config = hf_config.original_llava_to_hf(cfg, "")  # checks what the layout can hold
        vision_tower = vision_tower or tower_source(params["vision_tower"])
        if write_tower:
            vision_tower = _write_tower(cfg, params["vision_tower"], os.path.join(path, _TOWER_DIR))
        if vision_tower is None:
            raise ValueError("format='llava_original' records the tower the original code "
                             "opens (mm_vision_tower), and these tower params were not read "
                             "from a directory: pass vision_tower=DIR_OR_HUB_NAME or "
                             "write_tower=True")
        config["mm_vision_tower"] = vision_tower
        parts = mappings.original_llava_parts(cfg.vision.family, cfg.compressor.name)
        if os.path.isdir(vision_tower):
            parts = parts[1:]
            shapes = {k: v for k, v in shapes.items() if not k.startswith("vision_tower/")}
        _write(path, parts, shapes, flat, config, max_shard_bytes)
    if tokenizer is not None:
        _copy_tokenizer(tokenizer, path)


def add_image_token(cfg: VLMConfig, params: Mapping) -> tuple[VLMConfig, dict]:
    """Grows the LLM vocabulary by one row for the image placeholder (id = old vocab size).

    The new embedding row (and lm_head column) is the mean of the existing ones, as the
    llava-hf conversion does, so the model can be saved as a transformers LLaVA.
    """
    vocab = cfg.llm.vocab_size
    llm = dict(params["language_model"])
    table = np.asarray(llm["embed_tokens"]["embedding"], np.float32)
    llm["embed_tokens"] = {"embedding": np.concatenate([table, table.mean(0, keepdims=True)])}
    if not cfg.llm.tie_embeddings:
        kernel = np.asarray(llm["lm_head"]["kernel"], np.float32)
        llm["lm_head"] = {"kernel": np.concatenate([kernel, kernel.mean(1, keepdims=True)], 1)}
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, vocab_size=vocab + 1),
                              image_token_id=vocab)
    return cfg, {**params, "language_model": llm}
