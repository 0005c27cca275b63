"""Prompt templates: a conversation -> token ids + a loss mask on the assistant's replies.

A conversation is a list of (user text, assistant reply) turns; the user text of the first
turn holds the `<image>` marker, which becomes exactly V placeholder ids. The loss mask is 1
on the tokens of each reply and of the reply's end token, 0 elsewhere.

The whole conversation is rendered as one string first and then tokenised, as the reference
code does, so ids match it token for token (a SentencePiece tokenizer gives "▁" to the start
of each string it encodes: encoding pieces separately would add one per piece):
- `plain`, `vicuna_v1`: LLaVA's `conv.get_prompt()` text, split at `<image>`, each chunk
  tokenised on its own and the chunks joined around the placeholders, as LLaVA's
  `tokenizer_image_token` does (its `-200` marker becomes V placeholder ids here).
- `qwen_chat` and `chat_template` (the tokenizer's own Jinja chat template, e.g. a llava-hf
  checkpoint's `chat_template.json`): what transformers' `apply_chat_template` renders,
  tokenised in one go with `<image>` as a token (a processor then expands it to V ids).

- `plain`:     [bos] user "\\n" reply eos                       (LLaVA's `plain` prompt)
- `vicuna_v1`: [bos] SYSTEM " USER: " user " ASSISTANT:" " " reply </s> "USER: " ...
- `qwen_chat`: <|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n user <|im_end|>\\n
               <|im_start|>assistant\\n reply <|im_end|> \\n ...
"""

from __future__ import annotations

import dataclasses

from vlm_jax.data.tokenizer import IMAGE_TOKEN, Tokenizer

# LLaVA's `vicuna_v1` / `v1` conversation (the one its v1.5 training and eval scripts use).
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's "
                 "questions.")
CHAT_TEMPLATE = "chat_template"


@dataclasses.dataclass(frozen=True)
class Template:
    """Text pieces around each turn; `end` (text) None means the tokenizer's eos token.

    `image_chunks`: tokenise the text between `<image>` markers separately (LLaVA's
    `tokenizer_image_token`) instead of in one go. `jinja`: render the tokenizer's chat
    template instead of the pieces.
    """

    name: str
    system: str
    user: str  # holds "{q}"
    assistant: str  # text after the user turn, before the reply
    reply: str  # holds "{a}"
    end: str | None
    after_end: str
    bos: bool
    needs_tokens: tuple[str, ...] = ()
    image_chunks: bool = True
    jinja: bool = False


TEMPLATES = {
    "plain": Template("plain", "", "{q}\n", "", "{a}", None, "", True),
    # LLaVA writes "</s>" as text, whatever the tokenizer's eos is
    "vicuna_v1": Template("vicuna_v1", VICUNA_SYSTEM + " ", "USER: {q} ", "ASSISTANT:", " {a}",
                          "</s>", "", True),
    "qwen_chat": Template(
        "qwen_chat", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
        "<|im_start|>user\n{q}<|im_end|>\n", "<|im_start|>assistant\n", "{a}", "<|im_end|>",
        "\n", False, needs_tokens=("<|im_start|>", "<|im_end|>"), image_chunks=False),
    CHAT_TEMPLATE: Template(CHAT_TEMPLATE, "", "", "", "", None, "", False, image_chunks=False,
                            jinja=True),
}


def get_template(name: str, system: str | None = None) -> Template:
    """The template called `name`; `system` replaces its system prompt when given."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES)}")
    t = TEMPLATES[name]
    if system is not None:
        if name == "qwen_chat":
            system = f"<|im_start|>system\n{system}<|im_end|>\n"
        elif name == "vicuna_v1":
            system = system + " "
        t = dataclasses.replace(t, system=system)
    return t


def image_first(text: str) -> str:
    """`<image>` moved to the front of a user text, on its own line (LLaVA's preprocessing)."""
    if IMAGE_TOKEN not in text:
        return text
    return f"{IMAGE_TOKEN}\n{text.replace(IMAGE_TOKEN, '').strip()}".strip()


@dataclasses.dataclass
class Encoded:
    tokens: list[int]  # the whole conversation
    loss_mask: list[int]  # 1 on reply tokens and their end token
    prompt: list[int]  # the first turn up to the assistant's reply (a generation prompt)


Span = tuple[int, int]


class ChatEncoder:
    """Encodes conversations with one template and tokenizer; V placeholders per image."""

    def __init__(self, template: Template, tokenizer: Tokenizer, image_token_id: int,
                 num_visual_tokens: int):
        missing = [t for t in template.needs_tokens if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"template {template.name!r} needs token(s) {missing} that the "
                             f"tokenizer ({type(tokenizer).__name__}) does not have")
        self.chat = None
        if template.jinja:
            from vlm_jax.data import chat_template

            self.chat = chat_template.ChatTemplate(tokenizer)
        self.t, self.tok = template, tokenizer
        self.image_ids = [int(image_token_id)] * int(num_visual_tokens)
        self.end_text = (tokenizer.id_to_token(tokenizer.eos_id) if template.end is None
                         else template.end)
        self.bos = [tokenizer.bos_id] if template.bos and tokenizer.bos_id is not None else []

    def encode(self, text: str, replies: list[Span] = ()) -> tuple[list[int], list[int]]:
        """(ids, mask) of `text`: `<image>` -> the V placeholder ids, mask 1 on the tokens that
        overlap a `replies` character span."""
        chunked = self.t.image_chunks or self.tok.image_token_id is None
        pieces = text.split(IMAGE_TOKEN) if chunked else [text]
        ids, mask, start = list(self.bos), [0] * len(self.bos), 0
        for k, piece in enumerate(pieces):
            if k:
                ids += self.image_ids
                mask += [0] * len(self.image_ids)
            for i, (a, b) in zip(*self.tok.encode_spans(piece)):
                a, b = a + start, b + start
                if not chunked and i == self.tok.image_token_id:
                    ids += self.image_ids
                    mask += [0] * len(self.image_ids)
                    continue
                ids.append(i)
                mask.append(int(any(a < e and b > s for s, e in replies)))
            start += len(piece) + len(IMAGE_TOKEN)
        return ids, mask

    def conversation(self, turns: list[tuple[str, str]]) -> Encoded:
        if not turns:
            raise ValueError("a conversation needs at least one (user, assistant) turn")
        turns = [(image_first(user), reply) for user, reply in turns]
        if self.chat is not None:
            text, prompt_text, replies = self.chat.render(turns, self.t.system or None)
            tokens, mask = self.encode(text, replies)
            return Encoded(tokens, mask, self.encode(prompt_text)[0])
        t = self.t
        text, replies, prompt_text = t.system, [], None
        for user, reply in turns:
            text += t.user.format(q=user) + t.assistant
            if prompt_text is None:
                prompt_text = text
            body = t.reply.format(a=reply) + self.end_text
            replies.append((len(text), len(text) + len(body)))
            text += body + t.after_end
        tokens, mask = self.encode(text, replies)
        return Encoded(tokens, mask, self.encode(prompt_text)[0])

    def question(self, text: str) -> list[int]:
        """The user's question alone ([bos] + text, markers removed): QueCC's text query (the
        QueCC reference re-tokenises the first user text after the image the same way)."""
        return self.bos + self.tok.encode(text.replace(IMAGE_TOKEN, "").strip())
