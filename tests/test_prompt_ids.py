"""Prompt ids token for token against the reference constructions.

- `plain`, `vicuna_v1`: LLaVA's conversation text (`conv.get_prompt()`, written here from its
  documented format) tokenised the way LLaVA's `tokenizer_image_token` does (each chunk
  between `<image>` markers through the tokenizer with its special tokens, BOS kept once,
  a -200 marker at the image).
- `qwen_chat`, `chat_template`: transformers' `apply_chat_template` on the same tokenizer
  (a processor then expands `<image>` to V placeholder ids).
Tokenizers are built here with the `tokenizers` library: Llama style (SentencePiece-like BPE
with "▁" prepended, legacy normalizer or Metaspace pre-tokenizer) and Qwen style (byte-level
BPE, ChatML special tokens, no BOS).
"""

import json
import shutil

import pytest
import transformers as tf
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from vlm_jax.data.templates import VICUNA_SYSTEM, ChatEncoder, get_template
from vlm_jax.data.tokenizer import IMAGE_TOKEN, HFTokenizer

V, PLACEHOLDER, MARKER = 3, 5, -200
CORPUS = [VICUNA_SYSTEM, "USER: ASSISTANT: What is written? What color is the cube?",
          "Describe the picture. \n A cat sits on the mat. yes no red blue two three",
          "You are a helpful assistant. system user assistant"] * 8
TURNS = [[f"What is written in the picture? {IMAGE_TOKEN}", "A cat."],
         ["Describe the picture.", "Two red cubes\nand a ball."]]
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")
# llava-hf style: typed content, image parts first, assistant text in generation tags.
LLAVA_HF = ("{% for m in messages %}{{ m['role'].upper() + ': ' }}"
            "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}"
            "{{ '<image>\n' }}{% endfor %}"
            "{% if m['role'] == 'assistant' %}{% generation %}"
            "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}"
            "{{ c['text'] + eos_token }}{% endfor %}{% endgeneration %}{{ ' ' }}"
            "{% else %}{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}"
            "{{ c['text'] + ' ' }}{% endfor %}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def _llama(folder, style: str, image_token: bool) -> str:
    specials = ["<unk>", "<s>", "</s>"] + ([IMAGE_TOKEN] if image_token else [])
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # trained word by word (merges never span a "▁" inside), as SentencePiece's are
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    if style == "legacy":  # Llama / Vicuna tokenizer.json: normalizer prepends "▁"
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = None
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:  # newer Llama tokenizers: Metaspace, "▁" on the first piece only
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                     split=False)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}))
    return str(folder)


def _qwen(folder) -> str:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {"llama_legacy": _llama(root / "legacy", "legacy", image_token=False),
            "llama_metaspace": _llama(root / "metaspace", "metaspace", image_token=True),
            "qwen": _qwen(root / "qwen")}


def _reference_tokenizer(folder: str):
    return tf.PreTrainedTokenizerFast.from_pretrained(folder)


# ---- LLaVA's construction -------------------------------------------------------------------

def llava_prompt(template: str, turns, generation: bool, eos: str = "</s>") -> str:
    """LLaVA's conversation text: `<image>` moved to the front of the first user message."""
    first = turns[0][0].replace(IMAGE_TOKEN, "").strip()
    turns = [(f"{IMAGE_TOKEN}\n{first}", turns[0][1]), *turns[1:]]
    if template == "plain":  # LLaVA's generation prompt; a reply and eos follow it here
        text = turns[0][0] + "\n"
        return text if generation else text + turns[0][1] + eos
    text = VICUNA_SYSTEM + " "
    for user, reply in turns:
        text += "USER: " + user + " "
        if generation:
            return text + "ASSISTANT:"
        text += "ASSISTANT: " + reply + "</s>"
    return text


def tokenizer_image_token(prompt: str, tok, image_id: int = MARKER) -> list[int]:
    chunks = [tok(chunk).input_ids for chunk in prompt.split(IMAGE_TOKEN)]
    bos = 1 if chunks[0] and chunks[0][0] == tok.bos_token_id else 0
    ids = chunks[0][:1] if bos else []
    for k, chunk in enumerate(chunks):
        if k:
            ids.append(image_id)
        ids += chunk[bos:]
    return ids


def _expand(ids: list[int], image_id: int) -> list[int]:
    out = []
    for i in ids:
        out += [PLACEHOLDER] * V if i == image_id else [i]
    return out


def _llava_reference(template, turns, tok):
    """(tokens, mask, prompt) LLaVA builds; the mask from prompt lengths, turn by turn."""
    tokens = _expand(tokenizer_image_token(llava_prompt(template, turns, False, tok.eos_token),
                                           tok), MARKER)
    prompt = _expand(tokenizer_image_token(llava_prompt(template, turns, True), tok), MARKER)
    mask = [0] * len(tokens)
    for k in range(len(turns) if template == "vicuna_v1" else 1):
        start = len(_expand(tokenizer_image_token(
            llava_prompt(template, turns[:k + 1], True) if k == 0 else
            llava_prompt(template, turns[:k], False) + "USER: " + turns[k][0] + " ASSISTANT:",
            tok), MARKER))
        end = len(_expand(tokenizer_image_token(
            llava_prompt(template, turns[:k + 1], False, tok.eos_token), tok), MARKER))
        mask[start:end] = [1] * (end - start)
    return tokens, mask, prompt


@pytest.mark.parametrize("name", ["llama_legacy", "llama_metaspace", "qwen"])
@pytest.mark.parametrize("template", ["plain", "vicuna_v1"])
def test_llava_templates_match_tokenizer_image_token(folders, name, template):
    tok, ref_tok = HFTokenizer(folders[name]), _reference_tokenizer(folders[name])
    turns = TURNS if template == "vicuna_v1" else TURNS[:1]
    enc = ChatEncoder(get_template(template), tok, PLACEHOLDER, V).conversation(turns)
    tokens, mask, prompt = _llava_reference(template, turns, ref_tok)
    assert enc.tokens == tokens
    assert enc.prompt == prompt
    assert enc.loss_mask == mask
    if name != "qwen":  # SentencePiece style: never two "▁" in a row (one per encoded string)
        pieces = ref_tok.convert_ids_to_tokens(enc.tokens)
        assert pieces[0] == "<s>" and "▁▁" not in "".join(pieces)


@pytest.mark.parametrize("name", ["llama_legacy", "llama_metaspace", "qwen"])
def test_quecc_question_equals_the_fork_query(folders, name):
    """The fork decodes the ids after the image, keeps the text between the first newline and
    "ASSISTANT", and tokenises it again (with BOS where the tokenizer adds one)."""
    tok, ref_tok = HFTokenizer(folders[name]), _reference_tokenizer(folders[name])
    ids = tokenizer_image_token(llava_prompt("vicuna_v1", TURNS, False), ref_tok)
    after = ids[len(ids) - ids[::-1].index(MARKER):]
    text = ref_tok.decode(after, skip_special_tokens=True)
    query = text[text.find("\n") + 1:text.find("ASSISTANT")].strip()
    want = ref_tok(query).input_ids
    question = TURNS[0][0].replace(IMAGE_TOKEN, "").strip()  # what the sources store
    encoder = ChatEncoder(get_template("vicuna_v1"), tok, PLACEHOLDER, V)
    assert query == question
    assert encoder.question(question) == want


# ---- transformers' apply_chat_template ---------------------------------------------------------

def _messages(turns, typed: bool):
    out = []
    for k, (user, reply) in enumerate(turns):
        if typed:
            text = user.replace(IMAGE_TOKEN, "").strip() if k == 0 else user
            parts = [{"type": "image"}] if k == 0 else []
            out += [{"role": "user", "content": [*parts, {"type": "text", "text": text}]},
                    {"role": "assistant", "content": [{"type": "text", "text": reply}]}]
        else:
            text = f"{IMAGE_TOKEN}\n{user.replace(IMAGE_TOKEN, '').strip()}" if k == 0 else user
            out += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
    return out


def _apply(ref_tok, messages, **kw):
    return ref_tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)


@pytest.mark.parametrize("name", ["qwen"])
def test_qwen_chat_matches_apply_chat_template(folders, name):
    tok, ref_tok = HFTokenizer(folders[name]), _reference_tokenizer(folders[name])
    system = [{"role": "system", "content": "You are a helpful assistant."}]
    messages = system + _messages(TURNS, typed=False)
    image = ref_tok.convert_tokens_to_ids(IMAGE_TOKEN)
    want = _expand(_apply(ref_tok, messages, chat_template=CHATML)["input_ids"], image)
    enc = ChatEncoder(get_template("qwen_chat"), tok, PLACEHOLDER, V).conversation(TURNS)
    assert enc.tokens == want
    want_prompt = _expand(_apply(ref_tok, messages[:2], chat_template=CHATML,
                                 add_generation_prompt=True)["input_ids"], image)
    assert enc.prompt == want_prompt
    masked = [t for t, m in zip(enc.tokens, enc.loss_mask) if m]
    assert ref_tok.decode(masked) == "".join(f"{r}<|im_end|>" for _, r in TURNS)
    runs = sum(1 for k, m in enumerate(enc.loss_mask) if m and (k == 0 or not enc.loss_mask[k - 1]))
    assert runs == len(TURNS)


@pytest.mark.parametrize("name", ["llama_metaspace", "qwen"])
@pytest.mark.parametrize("where", ["chat_template.json", "tokenizer_config.json",
                                   "chat_template.jinja"])
def test_checkpoint_chat_template_matches_apply_chat_template(folders, tmp_path, name, where):
    """A llava-hf checkpoint's own template, picked up from its folder; the loss mask is
    transformers' assistant mask (the template's generation tags)."""
    folder = tmp_path / "ckpt"
    shutil.copytree(folders[name], folder)
    if where == "chat_template.jinja":
        (folder / where).write_text(LLAVA_HF)
    elif where == "chat_template.json":
        (folder / where).write_text(json.dumps({"chat_template": LLAVA_HF}))
    else:
        cfg = json.loads((folder / where).read_text())
        (folder / where).write_text(json.dumps({**cfg, "chat_template": LLAVA_HF}))
    tok = HFTokenizer(str(folder))
    assert tok.chat_template == LLAVA_HF
    ref_tok = _reference_tokenizer(folders[name])
    messages = _messages(TURNS, typed=True)
    ref = _apply(ref_tok, messages, chat_template=LLAVA_HF, return_assistant_tokens_mask=True)
    image = ref_tok.convert_tokens_to_ids(IMAGE_TOKEN)
    mask = []
    for i, m in zip(ref["input_ids"], ref["assistant_masks"]):
        mask += [0] * V if i == image else [m]
    enc = ChatEncoder(get_template("chat_template"), tok, PLACEHOLDER, V).conversation(TURNS)
    assert enc.tokens == _expand(ref["input_ids"], image)
    assert enc.loss_mask == mask and sum(mask) > 0
    prompt = _apply(ref_tok, messages[:1], chat_template=LLAVA_HF, add_generation_prompt=True)
    assert enc.prompt == _expand(prompt["input_ids"], image)


def test_chat_template_errors(folders):
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        ChatEncoder(get_template("chat_template"), HFTokenizer(folders["qwen"]), PLACEHOLDER, V)


def test_image_marker_moves_to_the_front_of_its_turn():
    """LLaVA's preprocessing: `<image>` anywhere in the user text -> "<image>\n" + the rest."""
    from vlm_jax.data.tokenizer import WordTokenizer

    tok = WordTokenizer()
    enc = ChatEncoder(get_template("plain"), tok, tok.image_token_id, V)
    front = enc.conversation([[f"{IMAGE_TOKEN}\nhow many objects are there?", "3"]])
    for user in (f"how many objects are there? {IMAGE_TOKEN}",
                 f"how many {IMAGE_TOKEN} objects are there?"):
        moved = enc.conversation([[user, "3"]])
        assert (moved.tokens, moved.loss_mask) == (front.tokens, front.loss_mask)
    assert front.tokens[1:1 + V + 1] == [tok.image_token_id] * V + [tok.token_to_id("\n")]
