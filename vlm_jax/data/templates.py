"""Prompt templates: a conversation -> token ids + a loss mask on the assistant's replies.

A conversation is a list of (user text, assistant reply) turns; the user text of the first
turn holds the `<image>` marker, which becomes exactly V placeholder ids. The loss mask is 1
on the reply tokens and on the reply's end token, 0 elsewhere.

- `plain`:     [bos] user "\\n" reply eos                           (synthetic suite)
- `vicuna_v1`: [bos] SYSTEM " USER: " user " ASSISTANT:" " " reply </s> "USER: " ...  (LLaVA v1)
- `qwen_chat`: <|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n user <|im_end|>\\n
               <|im_start|>assistant\\n reply <|im_end|> \\n ...
"""

from __future__ import annotations

import dataclasses

from vlm_jax.data.tokenizer import IMAGE_TOKEN, Tokenizer

VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's "
                 "questions.")


@dataclasses.dataclass(frozen=True)
class Template:
    """Text pieces around each turn; `end` None means the tokenizer's eos id."""

    name: str
    system: str
    user: str  # holds "{q}"
    assistant: str  # text after the user turn, before the reply
    reply: str  # holds "{a}"
    end: str | None
    after_end: str
    bos: bool
    needs_tokens: tuple[str, ...] = ()


TEMPLATES = {
    "plain": Template("plain", "", "{q}\n", "", "{a}", None, "", True),
    "vicuna_v1": Template("vicuna_v1", VICUNA_SYSTEM + " ", "USER: {q} ", "ASSISTANT:", " {a}",
                          None, "", True),
    "qwen_chat": Template(
        "qwen_chat", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
        "<|im_start|>user\n{q}<|im_end|>\n", "<|im_start|>assistant\n", "{a}", "<|im_end|>",
        "\n", False, needs_tokens=("<|im_start|>", "<|im_end|>")),
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


@dataclasses.dataclass
class Encoded:
    tokens: list[int]  # the whole conversation
    loss_mask: list[int]  # 1 on reply tokens and their end token
    prompt: list[int]  # the first turn up to the assistant's reply (a generation prompt)


class ChatEncoder:
    """Encodes conversations with one template and tokenizer; V placeholders per image."""

    def __init__(self, template: Template, tokenizer: Tokenizer, image_token_id: int,
                 num_visual_tokens: int):
        missing = [t for t in template.needs_tokens if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"template {template.name!r} needs token(s) {missing} that the "
                             f"tokenizer ({type(tokenizer).__name__}) does not have")
        self.t, self.tok = template, tokenizer
        self.image_ids = [int(image_token_id)] * int(num_visual_tokens)
        self.end_id = (tokenizer.eos_id if template.end is None
                       else tokenizer.token_to_id(template.end))
        self.bos = [tokenizer.bos_id] if template.bos and tokenizer.bos_id is not None else []

    def text(self, text: str) -> list[int]:
        """Token ids of `text`, each `<image>` marker replaced by the V placeholder ids."""
        ids: list[int] = []
        for k, chunk in enumerate(text.split(IMAGE_TOKEN)):
            if k:
                ids += self.image_ids
            if chunk:
                ids += self.tok.encode(chunk)
        return ids

    def conversation(self, turns: list[tuple[str, str]]) -> Encoded:
        if not turns:
            raise ValueError("a conversation needs at least one (user, assistant) turn")
        t = self.t
        tokens = self.bos + self.text(t.system)
        mask = [0] * len(tokens)
        prompt = None
        for user, reply in turns:
            head = self.text(t.user.format(q=user) + t.assistant)
            tokens += head
            mask += [0] * len(head)
            if prompt is None:
                prompt = list(tokens)
            body = self.text(t.reply.format(a=reply)) + [self.end_id]
            tokens += body
            mask += [1] * len(body)
            tail = self.text(t.after_end)
            tokens += tail
            mask += [0] * len(tail)
        return Encoded(tokens, mask, prompt)

    def question(self, text: str) -> list[int]:
        """The user's question alone ([bos] + text, markers removed): QueCC's text query."""
        return self.bos + self.tok.encode(text.replace(IMAGE_TOKEN, "").strip())
