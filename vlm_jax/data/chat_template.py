"""A tokenizer's Jinja chat template rendered as transformers' `apply_chat_template` does.

Same Jinja settings (sandboxed, `trim_blocks`, `lstrip_blocks`, `loopcontrols`,
`raise_exception`), same variables (`messages`, `add_generation_prompt`, `bos_token`,
`eos_token`). Templates that loop over typed content parts (llava-hf's: `{"type": "image"}`,
`{"type": "text", "text": ...}`) get messages in that form, with the image part first; others
get plain strings holding the `<image>` marker. `{% generation %}...{% endgeneration %}`
marks the assistant text (the loss mask); without it the mask covers each reply's text and the
special token right after it (e.g. `<|im_end|>`).
"""

from __future__ import annotations

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from vlm_jax.data.tokenizer import IMAGE_TOKEN, Tokenizer

_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters around generated text


class _Generation(Extension):
    """`{% generation %}body{% endgeneration %}` renders body between two sentinels."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        mark = lambda s: nodes.Output([nodes.TemplateData(s)]).set_lineno(lineno)
        return [mark(_OPEN), *body, mark(_CLOSE)]


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _strip_marks(text: str) -> tuple[str, list[tuple[int, int]]]:
    """Text without the sentinels and the spans they enclosed."""
    out, spans, start = [], [], None
    n = 0
    for ch in text:
        if ch == _OPEN:
            start = n
        elif ch == _CLOSE:
            spans.append((start, n))
        else:
            out.append(ch)
            n += 1
    return "".join(out), spans


class ChatTemplate:
    """`render(turns, system) -> (text, generation prompt text, reply character spans)`."""

    def __init__(self, tokenizer: Tokenizer):
        source = tokenizer.chat_template
        if not source:
            raise ValueError(f"template 'chat_template' needs a tokenizer with a chat template "
                             f"({getattr(tokenizer, 'path', type(tokenizer).__name__)!r} has "
                             "none: chat_template.jinja, chat_template.json or "
                             "tokenizer_config.json's chat_template)")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[_Generation, "jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise
        self.template = env.from_string(source)
        self.typed = "'type'" in source or '"type"' in source or ".type" in source
        self.tok = tokenizer
        name = lambda i: tokenizer.id_to_token(i) if i is not None else ""
        self.specials = dict(bos_token=name(tokenizer.bos_id), eos_token=name(tokenizer.eos_id))
        self.generation_tags = "generation" in source

    def _message(self, role: str, text: str) -> dict:
        if not self.typed:
            return {"role": role, "content": text}
        parts = [{"type": "image"}] * text.count(IMAGE_TOKEN)
        rest = text.replace(IMAGE_TOKEN, "").strip() if parts else text
        return {"role": role, "content": [*parts, {"type": "text", "text": rest}]}

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.template.render(messages=messages, add_generation_prompt=generation_prompt,
                                    **self.specials)

    def render(self, turns: list[tuple[str, str]], system: str | None = None
               ) -> tuple[str, str, list[tuple[int, int]]]:
        messages = [self._message("system", system)] if system else []
        for user, reply in turns:
            messages += [self._message("user", user), self._message("assistant", reply)]
        text, spans = _strip_marks(self._render(messages, False))
        prompt, _ = _strip_marks(self._render(messages[:len(messages) - 2 * len(turns) + 1],
                                              True))
        if not self.generation_tags:
            spans, pos = [], 0
            for _, reply in turns:
                start = text.find(reply, pos)
                if start < 0:
                    raise ValueError(f"the chat template's output does not contain the reply "
                                     f"{reply!r} verbatim; cannot mask it")
                end = start + len(reply)
                end += next((len(s) for s in self.tok.special_tokens if s and
                             text.startswith(s, end)), 0)
                spans.append((start, end))
                pos = end
        return text, prompt, spans
