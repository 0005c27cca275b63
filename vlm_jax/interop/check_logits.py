"""Numerical parity of vlm_jax against transformers on a local Hugging Face directory.

    python -m vlm_jax.interop.check_logits PATH [--prompt TEXT] [--image FILE.png]
        [--dtype float32|bfloat16] [--batch B] [--text-len L] [--pad P] [--atol A] [--kl-tol K]

Loads PATH with `vlm_jax.interop.hf.load` and with transformers (when installed), runs both on
the same inputs (a random image and random token ids unless `--image` / `--prompt` are given;
`--pad` left-pads all but the first row to exercise masks and explicit positions), and prints
JSON with the max |diff| over valid positions (outputs: logits for LLMs / LLaVA, every hidden
state and the pooled output for vision towers) and the KL divergence of the next-token
distributions. Exits 1 when `max|diff| > atol * max(1, max|reference|)` or `KL > kl_tol`.
The JSON says which layout it read (`"layout"`: "hf" or "llava_original").

transformers has no class for original-LLaVA (or QueCC-fork) checkpoints: for those the LLM
(the checkpoint's own `model.*` / `lm_head` tensors, which carry transformers' names) and the
vision tower (`mm_vision_tower`'s directory, or the checkpoint's tower tensors) are compared
part by part, and `"not_compared"` names what transformers cannot run (projector, QueCC).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import models
from vlm_jax.interop import hf, hf_config
from vlm_jax.interop.safetensors_io import Checkpoint, write_checkpoint
from vlm_jax.models.config import LLMConfig, ViTConfig, VLMConfig
from vlm_jax.models.llm import default_positions

_TOLERANCES = {"float32": (1e-4, 1e-6), "bfloat16": (5e-2, 5e-3), "float16": (1e-2, 1e-3)}
_IMAGE_STATS = {"clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
_TORCH_CLASS = {"CLIPModel": "CLIPVisionModel", "SiglipModel": "SiglipVisionModel"}


def make_inputs(cfg: Any, *, batch: int = 1, text_len: int = 8, pad: int = 0, seed: int = 0,
                text_ids: Sequence[int] | None = None, image: np.ndarray | None = None
                ) -> dict[str, np.ndarray]:
    """Model inputs as numpy: `images` [B, H, W, 3] (NHWC, normalised), `tokens` [B, L],
    `valid` [B, L] bool, `positions` [B, L]. Rows after the first are left-padded by `pad`.

    A VLM prompt is V placeholders followed by random text; `text_ids` (one row) replaces the
    random text (it keeps its own placeholders if it holds any).
    """
    rng = np.random.default_rng(seed)
    vision = cfg.vision if isinstance(cfg, VLMConfig) else cfg
    out: dict[str, np.ndarray] = {}
    if isinstance(vision, ViTConfig):
        size = vision.image_size
        out["images"] = (np.repeat(image[None], batch, 0) if image is not None else
                         rng.standard_normal((batch, size, size, 3))).astype(np.float32)
    if isinstance(cfg, ViTConfig):
        return out
    llm: LLMConfig = cfg.llm if isinstance(cfg, VLMConfig) else cfg
    image_id = cfg.image_token_id if isinstance(cfg, VLMConfig) else -1
    if text_ids is None:
        text = rng.integers(0, llm.vocab_size, (batch, text_len))
        text = np.where(text == image_id, (image_id + 1) % llm.vocab_size, text)
    else:
        text = np.repeat(np.asarray(text_ids)[None], batch, 0)
    if isinstance(cfg, VLMConfig) and not (text == image_id).any():
        text = np.concatenate([np.full((batch, cfg.num_visual_tokens), image_id), text], 1)
    length = text.shape[1] + pad
    tokens = np.zeros((batch, length), np.int64)
    valid = np.zeros((batch, length), bool)
    for b in range(batch):
        start = pad if b else 0
        tokens[b, start:start + text.shape[1]] = text[b]
        valid[b, start:start + text.shape[1]] = True
    if pad:  # row 0 is right-padded so every row has the same length
        valid[0, text.shape[1]:] = False
    out.update(tokens=tokens.astype(np.int32), valid=valid,
               positions=np.asarray(default_positions(jnp.asarray(valid))))
    return out


def run_vlm_jax(cfg: Any, params: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """vlm_jax outputs: `logits` [B, L, vocab], or `hidden` [depth+1, B, T, C] + `pooled`."""
    module = models.build(cfg)
    variables = {"params": params}
    if isinstance(cfg, ViTConfig):
        out = jax.jit(module.apply)(variables, jnp.asarray(inputs["images"]))
        return {"hidden": np.stack([np.asarray(h, np.float32) for h in out.hidden_states]),
                "pooled": np.asarray(out.pooled, np.float32)}
    tokens, valid = jnp.asarray(inputs["tokens"]), jnp.asarray(inputs["valid"])
    positions = jnp.asarray(inputs["positions"])
    if isinstance(cfg, VLMConfig):
        from vlm_jax.models.vlm import check_placeholders
        check_placeholders(inputs["tokens"], cfg.image_token_id, cfg.num_visual_tokens)
        question = {k: jnp.asarray(inputs[k]) for k in ("question", "question_valid")
                    if k in inputs}
        logits = jax.jit(lambda v, i, t, m, p, q: module.apply(v, images=i, tokens=t, valid=m,
                                                               positions=p, **q))(
            variables, jnp.asarray(inputs["images"]), tokens, valid, positions, question)
    else:
        def fwd(v, t, m, p):
            embeds = module.apply(v, t, method="embed")
            return module.apply(v, embeds, p, m).logits
        logits = jax.jit(fwd)(variables, tokens, valid, positions)
    return {"logits": np.asarray(logits, np.float32)}


def run_transformers(path: str, inputs: dict[str, np.ndarray],
                     dtype: str = "float32") -> dict[str, np.ndarray]:
    """The same outputs from transformers' model of `path` (eager attention, CPU)."""
    import torch
    import transformers

    arch = hf_config.architecture(hf.read_config(path), path)[0]
    cls = getattr(transformers, _TORCH_CLASS.get(arch, arch), None)
    if cls is None:
        raise ValueError(f"transformers has no class {arch!r}; cannot run {path!r} there")
    model = cls.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation="eager")
    model.eval()
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    with torch.no_grad():
        if "tokens" not in inputs:
            pixels = as_t(inputs["images"].transpose(0, 3, 1, 2)).to(getattr(torch, dtype))
            out = model(pixel_values=pixels, output_hidden_states=True)
            res = {"hidden": np.stack([h.float().numpy() for h in out.hidden_states])}
            if out.pooler_output is not None:
                res["pooled"] = out.pooler_output.float().numpy()
            return res
        kwargs = dict(input_ids=as_t(inputs["tokens"]).long(),
                      attention_mask=as_t(inputs["valid"]).long(),
                      position_ids=as_t(inputs["positions"]).long())
        if "images" in inputs:
            kwargs["pixel_values"] = as_t(inputs["images"].transpose(0, 3, 1, 2)).to(
                getattr(torch, dtype))
        return {"logits": model(**kwargs).logits.float().numpy()}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray],
            valid: np.ndarray | None = None) -> dict[str, float]:
    """max |diff| over valid positions, the reference's max |value|, and (for logits) the max
    over rows of KL(reference || ours) of the next-token distribution at the last valid token.
    """
    report = {"max_abs_diff": 0.0, "ref_max_abs": 0.0}
    for key, r in ref.items():
        if key not in ours:
            raise ValueError(f"vlm_jax produced no {key!r} output to compare")
        o = ours[key]
        if o.shape != r.shape:
            raise ValueError(f"{key}: vlm_jax shape {o.shape} != transformers shape {r.shape}")
        if key == "logits" and valid is not None:
            o, r = o[valid], r[valid]
        report["max_abs_diff"] = max(report["max_abs_diff"], float(np.abs(o - r).max()))
        report["ref_max_abs"] = max(report["ref_max_abs"], float(np.abs(r).max()))
    if "logits" in ref:
        last = (np.arange(valid.shape[1]) * valid).argmax(1) if valid is not None else None
        rows = np.arange(ref["logits"].shape[0])
        idx = last if last is not None else np.full(len(rows), -1)
        lp = _log_softmax(ref["logits"][rows, idx])
        lq = _log_softmax(ours["logits"][rows, idx])
        report["kl"] = float((np.exp(lp) * (lp - lq)).sum(-1).max())
    return report


def within(report: dict[str, float], atol: float, kl_tol: float) -> bool:
    ok = report["max_abs_diff"] <= atol * max(1.0, report["ref_max_abs"])
    return ok and report.get("kl", 0.0) <= kl_tol


def _prompt_ids(path: str, prompt: str, cfg: Any) -> list[int]:
    from tokenizers import Tokenizer

    file = os.path.join(path, "tokenizer.json")
    if not os.path.exists(file):
        raise FileNotFoundError(f"--prompt needs {file}")
    tok = Tokenizer.from_file(file)
    pieces = prompt.split("<image>")
    if len(pieces) > 2 or (len(pieces) == 2 and not isinstance(cfg, VLMConfig)):
        raise ValueError("--prompt may hold one <image>, and only for a LLaVA model")
    ids = tok.encode(pieces[0]).ids
    if len(pieces) == 2:
        ids += [cfg.image_token_id] * cfg.num_visual_tokens
        ids += tok.encode(pieces[1], add_special_tokens=False).ids
    return ids


def _image(file: str, cfg: ViTConfig, path: str) -> np.ndarray:
    from PIL import Image

    mean, std = _IMAGE_STATS[cfg.family]
    pre = os.path.join(path, "preprocessor_config.json")
    if os.path.exists(pre):
        with open(pre) as f:
            p = json.load(f)
        mean, std = p.get("image_mean", mean), p.get("image_std", std)
    img = Image.open(file).convert("RGB").resize((cfg.image_size,) * 2, Image.BICUBIC)
    return ((np.asarray(img, np.float32) / 255.0 - mean) / std).astype(np.float32)


def _subset(src: Checkpoint, dst: str, prefix: str, skip: tuple[str, ...], config: dict) -> str:
    """`dst`: the tensors of `src` under `prefix` (stripped), except `skip`, + `config`."""
    names = [k for k in src.keys() if k.startswith(prefix) and not k.startswith(skip)]
    read = lambda k: lambda: next(src.iter_tensors([k]))[1]
    write_checkpoint(dst, [(k[len(prefix):], src.shape(k), read(k)) for k in names], None)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return dst


def check_original(path: str, cfg: VLMConfig, params: Any, args, atol: float,
                   kl_tol: float) -> dict:
    """Part-by-part parity of an original-LLaVA checkpoint against transformers."""
    ckpt, tower = Checkpoint(path), hf.TOWER_PREFIX
    with tempfile.TemporaryDirectory() as tmp:
        # the checkpoint's own config.json (its LLM keys are transformers'), as that LLM
        family = cfg.llm.family
        arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[family]
        config = {**hf.read_config(path), "architectures": [arch], "model_type": family}
        llm_dir = _subset(ckpt, os.path.join(tmp, "llm"), "", ("model.mm_projector.", tower),
                          config)
        source = hf.tower_source(params["vision_tower"])
        if source is None or not os.path.isdir(source):
            source = _subset(ckpt, os.path.join(tmp, "tower"), tower[:-len("vision_model.")], (),
                             hf_config.to_hf(cfg.vision))
        parts = {}
        for name, sub_cfg, sub_params, ref_dir in (
                ("llm", cfg.llm, params["language_model"], llm_dir),
                ("vision_tower", cfg.vision, params["vision_tower"], source)):
            ids = (_prompt_ids(path, args.prompt, sub_cfg) if args.prompt and name == "llm"
                   else None)
            image = _image(args.image, cfg.vision, path) if args.image else None
            inputs = make_inputs(sub_cfg, batch=args.batch, text_len=args.text_len, pad=args.pad,
                                 seed=args.seed, text_ids=ids, image=image)
            report = compare(run_vlm_jax(sub_cfg, sub_params, inputs),
                             run_transformers(ref_dir, inputs, args.dtype), inputs.get("valid"))
            parts[name] = {**report, "ok": within(report, atol, kl_tol)}
    not_compared = ["multi_modal_projector"]
    if cfg.compressor.name != "identity":
        not_compared.append(f"compressor ({cfg.compressor.name})")
    return {"layout": "llava_original", "parts": parts, "not_compared": not_compared,
            "max_abs_diff": max(p["max_abs_diff"] for p in parts.values()),
            "ok": all(p["ok"] for p in parts.values())}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlm_jax.interop.check_logits",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("path")
    ap.add_argument("--prompt")
    ap.add_argument("--image")
    ap.add_argument("--dtype", default="float32", choices=sorted(_TOLERANCES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--text-len", type=int, default=8)
    ap.add_argument("--pad", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--atol", type=float)
    ap.add_argument("--kl-tol", type=float)
    args = ap.parse_args(argv)
    atol, kl_tol = _TOLERANCES[args.dtype]
    atol = args.atol if args.atol is not None else atol
    kl_tol = args.kl_tol if args.kl_tol is not None else kl_tol
    if args.dtype == "float32":  # full-precision matmuls on every backend
        jax.config.update("jax_default_matmul_precision", "highest")
    cfg, params = hf.load(args.path)
    cfg = hf_config.with_dtype(cfg, args.dtype)
    layout = hf_config.architecture(hf.read_config(args.path), args.path)[1]
    if layout == "llava_original":
        try:
            report = check_original(args.path, cfg, params, args, atol, kl_tol)
        except ImportError as e:
            print(json.dumps({"error": f"transformers / torch unavailable: {e}"}))
            return 2
        print(json.dumps({**report, "atol": atol, "kl_tol": kl_tol}))
        return 0 if report["ok"] else 1
    vision = cfg.vision if isinstance(cfg, VLMConfig) else cfg
    inputs = make_inputs(
        cfg, batch=args.batch, text_len=args.text_len, pad=args.pad, seed=args.seed,
        text_ids=_prompt_ids(args.path, args.prompt, cfg) if args.prompt else None,
        image=_image(args.image, vision, args.path) if args.image else None)
    ours = run_vlm_jax(cfg, params, inputs)
    try:
        ref = run_transformers(args.path, inputs, args.dtype)
    except ImportError as e:
        print(json.dumps({"error": f"transformers / torch unavailable: {e}"}))
        return 2
    report = compare(ours, ref, inputs.get("valid"))
    ok = within(report, atol, kl_tol)
    print(json.dumps({"layout": "hf", **report, "atol": atol, "kl_tol": kl_tol, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
