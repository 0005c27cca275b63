"""Tokenizers with one interface: `encode(text) -> list[int]`, `encode_spans(text) -> (ids,
[(start, end)] character spans)`, `decode(ids) -> str`, `pad_id`, `bos_id` (None when the
tokenizer has none), `eos_id`, `image_token_id` (None when absent), `vocab_size`,
`token_to_id(token) -> int | None`, `id_to_token(id) -> str`, `special_tokens` (their texts),
`chat_template` (a Jinja chat template, or None).

- `WordTokenizer`: the built-in word-level vocabulary of the synthetic suite (its fixed word
  list, punctuation, `\\n`, the OCR characters 0-9 A-Z), with `<pad> <s> </s> <unk>` first and
  `<image>` last (`image_token_id == vocab_size - 1`).
- `HFTokenizer`: a local Hugging Face `tokenizer.json` (+ optional `tokenizer_config.json` /
  `special_tokens_map.json` naming bos/eos/pad/unk, and a chat template from
  `chat_template.jinja`, `chat_template.json` or `tokenizer_config.json`), read with the
  `tokenizers` library.
"""

from __future__ import annotations

import json
import os
import re
from typing import Protocol

from vlm_jax.data import glyphs, questions, scenes

IMAGE_TOKEN = "<image>"


class Tokenizer(Protocol):
    pad_id: int
    bos_id: int | None
    eos_id: int
    image_token_id: int | None
    vocab_size: int

    special_tokens: tuple[str, ...]
    chat_template: str | None

    def encode(self, text: str) -> list[int]: ...

    def encode_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]]]: ...

    def decode(self, ids) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...

    def id_to_token(self, i: int) -> str: ...


_FUNCTION_WORDS = ("how many are there is a the what color shape size of more than objects "
                   "object written describe image and text yes no left right above below").split()
_PUNCT = ("?", ".", ",")


def synthetic_words() -> list[str]:
    """The suite's word list, in a fixed order (duplicates dropped)."""
    words = [*_FUNCTION_WORDS, *scenes.SHAPES, *map(scenes.plural, scenes.SHAPES),
             *scenes.COLORS, *scenes.SIZES, *scenes.NUMBER_WORDS]
    for rel in questions.RELATIONS:
        words += rel.split()
    return list(dict.fromkeys(words))


class WordTokenizer:
    """Word-level tokenizer over a closed vocabulary; unknown words map to `<unk>`.

    A word absent from the vocabulary but made only of 0-9 / A-Z is spelled one character per
    token, and `decode` joins consecutive character tokens without a space ("A7K" round-trips;
    the price: "3 4" decodes as "34", which the suite never produces).
    """

    SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")

    def __init__(self, words: list[str] | None = None):
        words = synthetic_words() if words is None else list(words)
        vocab = [*self.SPECIALS, "\n", *_PUNCT, *words, *glyphs.ALPHABET, IMAGE_TOKEN]
        dup = {w for w in vocab if vocab.count(w) > 1}
        if dup:
            raise ValueError(f"WordTokenizer vocabulary has duplicate entries {sorted(dup)}")
        self.vocab = vocab
        self._ids = {w: i for i, w in enumerate(vocab)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(4)
        self.image_token_id = len(vocab) - 1
        self.vocab_size = len(vocab)
        self._chars = set(glyphs.ALPHABET)
        specials = [*self.SPECIALS, IMAGE_TOKEN]
        self.special_tokens = tuple(specials)
        self.chat_template = None
        self._special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")")

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)

    def id_to_token(self, i: int) -> str:
        return self.vocab[int(i)]

    def encode(self, text: str) -> list[int]:
        return self.encode_spans(text)[0]

    def encode_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids, spans, pos = [], [], 0
        for part in self._special_re.split(text):
            if part in self._ids and part.startswith("<"):
                ids.append(self._ids[part])
                spans.append((pos, pos + len(part)))
                pos += len(part)
                continue
            for m in re.finditer(r"\n|[A-Za-z0-9]+|[^\sA-Za-z0-9]", part):
                piece, start = m.group(), pos + m.start()
                if piece in self._ids:
                    ids.append(self._ids[piece])
                    spans.append((start, m.end() + pos))
                elif set(piece) <= self._chars:
                    ids += [self._ids[c] for c in piece]
                    spans += [(start + j, start + j + 1) for j in range(len(piece))]
                else:
                    ids.append(self.unk_id)
                    spans.append((start, m.end() + pos))
            pos += len(part)
        return ids, spans

    def decode(self, ids, skip_special: bool = True) -> str:
        out, prev = [], None  # prev: kind of the previous piece
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            tok = self.vocab[i]
            special = tok in self.SPECIALS or tok == IMAGE_TOKEN
            if special and skip_special:
                continue
            kind = ("special" if special else "nl" if tok == "\n" else "punct" if tok in _PUNCT
                    else "char" if tok in self._chars else "word")
            space = (prev in ("word", "char", "punct") and kind in ("word", "char")
                     and not (prev == "char" and kind == "char"))
            out.append((" " if space else "") + tok)
            prev = kind
        return "".join(out)


def read_chat_template(folder: str) -> str | None:
    """The Jinja chat template a Hugging Face folder carries (`chat_template.jinja`, else
    `chat_template.json`, else `tokenizer_config.json`'s `chat_template`; of a list of named
    templates, the one called "default"), or None."""
    file = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(file):
        with open(file) as f:
            return f.read()
    for name in ("chat_template.json", "tokenizer_config.json"):
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            continue
        with open(file) as f:
            value = json.load(f).get("chat_template")
        if isinstance(value, list):
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
            if "default" not in named:
                raise ValueError(f"{file}: chat_template lists {sorted(named)} but no 'default'")
            value = named["default"]
        if value is not None:
            if not isinstance(value, str):
                raise ValueError(f"{file}: chat_template must be a string, got "
                                 f"{type(value).__name__}")
            return value
    return None


def _token_content(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


class HFTokenizer:
    """A Hugging Face fast tokenizer from a local `tokenizer.json` (file or its directory)."""

    def __init__(self, path: str, image_token: str = IMAGE_TOKEN):
        import tokenizers

        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no tokenizer.json at {path!r}")
        self.path = file
        self._tok = tokenizers.Tokenizer.from_file(file)
        special = {}
        folder = os.path.dirname(file)
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
            cfg_file = os.path.join(folder, name)
            if os.path.isfile(cfg_file):
                with open(cfg_file) as f:
                    cfg = json.load(f)
                for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
                    if key in cfg:
                        special[key] = _token_content(cfg[key])
        ids = {k: self._require(v, k) for k, v in special.items() if v is not None}
        if "eos_token" not in ids:
            raise ValueError(f"tokenizer at {folder!r} names no eos_token (tokenizer_config.json "
                             "or special_tokens_map.json); templates need one")
        self.eos_id = ids["eos_token"]
        self.bos_id = ids.get("bos_token")
        self.pad_id = ids.get("pad_token", ids.get("unk_token", self.eos_id))
        self.image_token_id = self._tok.token_to_id(image_token)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.special_tokens = tuple(t.content for t in
                                    self._tok.get_added_tokens_decoder().values() if t.special)
        self.chat_template = read_chat_template(folder)

    def _require(self, token: str, key: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"{key} {token!r} of {self.path!r} is not in its vocabulary")
        return i

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(int(i))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, [tuple(o) for o in enc.offsets]

    def decode(self, ids, skip_special: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)
