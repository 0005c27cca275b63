"""Tokenizers (built-in word-level, local HF tokenizer.json) and prompt templates."""

import json

import numpy as np
import pytest
from test_data_synthetic import all_texts

from vlm_jax.data.synthetic import SyntheticConfig
from vlm_jax.data.templates import VICUNA_SYSTEM, ChatEncoder, get_template
from vlm_jax.data.tokenizer import IMAGE_TOKEN, HFTokenizer, WordTokenizer

HF_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN, "<|im_start|>", "<|im_end|>"]


def make_hf_tokenizer(folder, config: dict | None = None) -> str:
    """Trains a tiny byte-level BPE on a few sentences and writes a HF tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [VICUNA_SYSTEM, "how many red objects are there? what is written? yes no",
              "USER: ASSISTANT: system user assistant You are a helpful assistant.",
              "Describe the picture in detail. A cat sits on the mat."] * 5
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=HF_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "pad_token": "<pad>",
           "unk_token": "<unk>"} if config is None else config
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return str(folder)


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory):
    return HFTokenizer(make_hf_tokenizer(tmp_path_factory.mktemp("tok")))


def test_word_tokenizer_vocab_and_ids():
    tok = WordTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.image_token_id == tok.vocab_size - 1 == tok.token_to_id(IMAGE_TOKEN)
    assert tok.vocab_size <= 128  # fits the tiny presets' vocabulary
    assert WordTokenizer().vocab == tok.vocab  # deterministic


def test_word_tokenizer_round_trips_every_suite_text():
    tok = WordTokenizer()
    cfg = SyntheticConfig(tasks=("count", "exist", "attribute", "spatial", "compare", "ocr",
                                 "caption"))
    for text in all_texts(cfg, limit=700):
        ids = tok.encode(text)
        assert tok.unk_id not in ids, text
        assert tok.decode(ids) == text


def test_word_tokenizer_details():
    tok = WordTokenizer()
    ids = tok.encode("what is written? A7K")
    assert [tok.vocab[i] for i in ids[-3:]] == ["A", "7", "K"]
    assert tok.encode("a zebra")[-1] == tok.unk_id
    assert tok.encode(f"<s>{IMAGE_TOKEN}\nyes</s>") == [1, tok.image_token_id,
                                                        tok.token_to_id("\n"),
                                                        tok.token_to_id("yes"), 2]
    assert tok.decode([1, tok.token_to_id("yes"), 2, 0]) == "yes"
    assert tok.decode([1, tok.token_to_id("yes"), 2], skip_special=False) == "<s>yes</s>"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_hf_tokenizer_reads_local_files(hf_tok, tmp_path):
    text = "how many red objects are there?"
    assert hf_tok.decode(hf_tok.encode(text)) == text
    assert hf_tok.bos_id == hf_tok.token_to_id("<s>") and hf_tok.eos_id == hf_tok.token_to_id(
        "</s>")
    assert hf_tok.pad_id == hf_tok.token_to_id("<pad>")
    assert hf_tok.image_token_id == hf_tok.token_to_id(IMAGE_TOKEN) is not None
    assert hf_tok.encode(f"a{IMAGE_TOKEN}b").count(hf_tok.image_token_id) == 1
    no_eos = make_hf_tokenizer(tmp_path / "noeos", config={"bos_token": "<s>"})
    with pytest.raises(ValueError, match="no eos_token"):
        HFTokenizer(no_eos)
    bad = make_hf_tokenizer(tmp_path / "bad", config={"eos_token": "<nope>"})
    with pytest.raises(ValueError, match="not in its vocabulary"):
        HFTokenizer(bad)
    with pytest.raises(FileNotFoundError):
        HFTokenizer(str(tmp_path / "missing"))


def _masked_text(tok, enc):
    ids = np.asarray(enc.tokens)
    return tok.decode(ids[np.asarray(enc.loss_mask) == 1], skip_special=False)


def test_plain_template_with_word_tokenizer():
    tok = WordTokenizer()
    enc = ChatEncoder(get_template("plain"), tok, tok.image_token_id, num_visual_tokens=5)
    out = enc.conversation([[f"{IMAGE_TOKEN}\nhow many red objects are there?", "3"]])
    nl = tok.token_to_id("\n")
    assert out.tokens[:7] == [tok.bos_id] + [tok.image_token_id] * 5 + [nl]
    assert out.tokens[-2:] == [tok.token_to_id("3"), tok.eos_id]
    assert out.loss_mask == [0] * (len(out.tokens) - 2) + [1, 1]
    assert out.prompt == out.tokens[:-2]
    assert enc.question(f"{IMAGE_TOKEN}\nhow many?") == [tok.bos_id, *tok.encode("how many?")]


def test_vicuna_v1_template_matches_llava_text(hf_tok):
    v = 3
    enc = ChatEncoder(get_template("vicuna_v1"), hf_tok, hf_tok.image_token_id, v)
    turns = [[f"{IMAGE_TOKEN}\nWhat is written?", "A cat."], ["Describe the picture.", "yes"]]
    out = enc.conversation(turns)
    text = hf_tok.decode(out.tokens, skip_special=False)
    expected = (f"<s>{VICUNA_SYSTEM} USER: {IMAGE_TOKEN * v}\nWhat is written? ASSISTANT: "
                "A cat.</s>USER: Describe the picture. ASSISTANT: yes</s>")
    assert text == expected
    assert _masked_text(hf_tok, out) == " A cat.</s> yes</s>"
    assert out.tokens.count(hf_tok.image_token_id) == v
    assert hf_tok.decode(out.prompt, skip_special=False).endswith("What is written? ASSISTANT:")
    assert len(out.loss_mask) == len(out.tokens)


def test_qwen_chat_template(hf_tok):
    enc = ChatEncoder(get_template("qwen_chat"), hf_tok, hf_tok.image_token_id, 2)
    out = enc.conversation([[f"{IMAGE_TOKEN}\nhow many?", "3"]])
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                f"{IMAGE_TOKEN * 2}\nhow many?<|im_end|>\n<|im_start|>assistant\n3<|im_end|>\n")
    assert hf_tok.decode(out.tokens, skip_special=False) == expected
    assert _masked_text(hf_tok, out) == "3<|im_end|>"
    assert out.tokens[0] != hf_tok.bos_id  # Qwen adds no bos
    custom = ChatEncoder(get_template("qwen_chat", system="Be brief."), hf_tok, 0, 1)
    assert "Be brief." in hf_tok.decode(custom.conversation([["q", "a"]]).tokens, False)


def test_template_errors():
    tok = WordTokenizer()
    with pytest.raises(ValueError, match="needs token"):
        ChatEncoder(get_template("qwen_chat"), tok, tok.image_token_id, 4)
    with pytest.raises(ValueError, match="unknown prompt template"):
        get_template("chatml2")
