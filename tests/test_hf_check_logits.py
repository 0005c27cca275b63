"""The logit checker CLI: `python -m vlm_jax.interop.check_logits PATH ...`."""

import dataclasses
import json
import os
import subprocess
import sys

import hf_tiny
import numpy as np
import pytest
import transformers as tf
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers

from vlm_jax.interop import check_logits, hf


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("llava"))
    hf_tiny.make(hf_tiny.llava(hf_tiny.clip_vision(), hf_tiny.llama_text()),
                 tf.LlavaForConditionalGeneration, path)
    words = ["[UNK]", "USER:", "ASSISTANT:", "what", "is", "in", "the", "picture", "?"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(os.path.join(path, "tokenizer.json"))
    return path


def _run(argv, capsys):
    code = check_logits.main(argv)
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_random_inputs_pass(llava_dir, capsys):
    code, report = _run([llava_dir, "--batch", "2", "--pad", "3"], capsys)
    assert code == 0 and report["ok"], report
    assert report["layout"] == "hf"
    assert report["max_abs_diff"] < 1e-4 and report["kl"] < 1e-6


def test_prompt_and_image(llava_dir, tmp_path, capsys):
    png = str(tmp_path / "img.png")
    rgb = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(png)
    code, report = _run([llava_dir, "--prompt", "USER: <image> what is in the picture ? "
                         "ASSISTANT:", "--image", png], capsys)
    assert code == 0 and report["ok"], report


def test_prompt_ids_and_image_conversion(llava_dir, tmp_path):
    cfg, _ = hf.load(llava_dir)
    ids = check_logits._prompt_ids(llava_dir, "USER: <image> what ?", cfg)
    v = cfg.num_visual_tokens
    assert ids == [1] + [cfg.image_token_id] * v + [3, 8]
    png = str(tmp_path / "white.png")
    Image.fromarray(np.full((10, 10, 3), 255, np.uint8)).save(png)
    img = check_logits._image(png, cfg.vision, llava_dir)
    assert img.shape == (32, 32, 3)
    np.testing.assert_allclose(img[0, 0], (1 - np.array(check_logits._IMAGE_STATS["clip"][0]))
                               / np.array(check_logits._IMAGE_STATS["clip"][1]), rtol=1e-5)


def test_real_mismatch_fails(llava_dir, capsys, monkeypatch):
    """A vlm_jax model that differs from the checkpoint (wrong rope theta) is caught."""
    load = hf.load

    def wrong_load(path):
        cfg, params = load(path)
        return dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, rope_theta=10.0)), params

    monkeypatch.setattr(hf, "load", wrong_load)
    code, report = _run([llava_dir], capsys)
    assert code == 1 and not report["ok"]
    assert report["max_abs_diff"] > 1e-2


def test_module_entry_point_exit_code(tmp_path):
    path = hf_tiny.make(hf_tiny.clip_vision(), tf.CLIPVisionModel, str(tmp_path / "clip"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "vlm_jax.interop.check_logits", path, "--batch", "2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    ok = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout.strip().splitlines()[-1])["ok"]
    bad = subprocess.run(cmd + ["--atol", "1e-12"], capture_output=True, text=True, cwd=root,
                         env=env, timeout=300)
    assert bad.returncode == 1, bad.stderr[-2000:]


def test_original_llava_fork_directory(tmp_path, capsys, monkeypatch):
    """A QueCC-fork checkpoint: the LLM and the tower are compared with transformers, the
    layout is named, and what transformers cannot run is listed."""
    from test_llava_original import make_fork_checkpoint

    path = make_fork_checkpoint(str(tmp_path), "qwen2")
    code, report = _run([path, "--batch", "2", "--pad", "2"], capsys)
    assert code == 0 and report["ok"], report
    assert report["layout"] == "llava_original"
    assert sorted(report["parts"]) == ["llm", "vision_tower"]
    assert report["not_compared"] == ["multi_modal_projector", "compressor (quecc)"]
    assert report["parts"]["llm"]["max_abs_diff"] < 1e-4
    load = hf.load  # a wrong reading of the LLM is caught in its part

    def wrong_load(p, **kw):
        cfg, params = load(p, **kw)
        if not hasattr(cfg, "llm"):  # the tower, read on the way
            return cfg, params
        return dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, rope_theta=10.0)), params

    monkeypatch.setattr(hf, "load", wrong_load)
    code, report = _run([path], capsys)
    assert code == 1 and not report["ok"]
    assert not report["parts"]["llm"]["ok"] and report["parts"]["vision_tower"]["ok"]
