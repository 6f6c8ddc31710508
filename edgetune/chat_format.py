"""A Jinja chat template reduced to the literal text around each message, and the app prompt
formats written from that reduction.

LLMFarm ignores the GGUF's template and Ollama needs a Go one, so both come from the Jinja
template: rendered around sentinel messages as transformers renders it, the text between
sentinels gives each role's prefix and suffix, and the reduction is checked against a fresh
rendering before use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgetune.errors import ConfigError

_TEMPLATE_HINT = ("Use a ChatML (Qwen), Llama-3, Gemma or Phi-3 style chat template, or ship the "
                  "bundle without app persona files.")


def render_chat_template(chat_template: str, messages: Sequence[Mapping[str, str]], *,
                         add_generation_prompt: bool = True, bos_token: str = "",
                         eos_token: str = "", **special_tokens: str) -> str:
    """Render a Jinja chat template as transformers' ``apply_chat_template`` does.

    ``special_tokens``: the tokenizer's other special tokens by name (``unk_token``, ...), which
    transformers also passes to the template."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    # No strftime_now: templates that can fall back to a fixed date do, so output is stable.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, **kw: json.dumps(
        x, ensure_ascii=ensure_ascii, **kw)  # transformers' tojson: no HTML escaping
    env.globals["raise_exception"] = raise_exception
    return env.from_string(chat_template).render(
        messages=[dict(m) for m in messages], tools=None, documents=None,
        add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token,
        **special_tokens)


@dataclass(frozen=True)
class ChatFormat:
    """A chat template reduced to the literal text around each message."""

    bos: bool  # the template starts with bos_token
    system_prefix: str
    system_suffix: str
    fold_separator: str | None  # set: the system text opens the first user message, then this
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    generation: str  # the generation prompt after the last message

    def render(self, system: str, messages: Sequence[Mapping[str, str]], *,
               bos_token: str = "") -> str:
        """The prompt for ``system`` then user/assistant ``messages``, ready for generation."""
        out = [bos_token if self.bos else ""]
        if self.fold_separator is None and system:
            out.append(self.system_prefix + system + self.system_suffix)
        pending = system + self.fold_separator if self.fold_separator is not None and system else ""
        for m in messages:
            if m["role"] == "user":
                out.append(self.user_prefix + pending + m["content"] + self.user_suffix)
                pending = ""
            else:
                out.append(self.assistant_prefix + m["content"] + self.assistant_suffix)
        return "".join(out) + self.generation


_S, _U1, _A1, _U2, _BOS, _EOS = "SYSx7q", "USRx7q1", "ASTx7q", "USRx7q2", "<BOSx7q>", "<EOSx7q>"


def _cannot_map(why: str) -> ConfigError:
    return ConfigError(f"cannot derive app prompt formats from the chat template: {why}",
                       _TEMPLATE_HINT)


def _split(text: str, marks: Sequence[str]) -> list[str]:
    out, pos = [], 0
    for mark in marks:
        i = text.find(mark, pos)
        if i < 0 or text.count(mark) != 1:
            raise _cannot_map("it does not write each message once, verbatim and in order")
        out.append(text[pos:i])
        pos = i + len(mark)
    return [*out, text[pos:]]


def derive_chat_format(chat_template: str) -> ChatFormat:
    """Find each role's prefix and suffix by rendering ``chat_template`` around sentinels."""
    def render(msgs: list[dict[str, str]], gen: bool = True, strict: bool = True) -> str:
        try:
            return render_chat_template(chat_template, msgs, add_generation_prompt=gen,
                                        bos_token=_BOS, eos_token=_EOS)
        except Exception as e:  # noqa: BLE001 - whatever breaks in the template, say so
            if strict:
                raise _cannot_map(f"rendering failed ({e})") from None
            return ""

    user1 = [{"role": "user", "content": _U1}]
    rest = [{"role": "assistant", "content": _A1}, {"role": "user", "content": _U2}]
    full = render([{"role": "system", "content": _S}, *user1, *rest], strict=False)
    manual = _S not in full  # no system role (Gemma 2 refuses it): fold it into the first turn
    if manual:
        full = render([{"role": "user", "content": _S + "\n\n" + _U1}, *rest])
    p0, p1, p2, p3, p4 = _split(full, [_S, _U1, _A1, _U2])
    bos, p0 = p0.startswith(_BOS), p0.removeprefix(_BOS)
    b_pre = _split(render(user1), [_U1])[0].removeprefix(_BOS)
    d_tail = _split(render(user1, gen=False), [_U1])[1].removesuffix(_EOS)
    if any(_BOS in p or _EOS in p for p in (p0, p1, p2, p3, p4, b_pre, d_tail)):
        raise _cannot_map("it writes BOS/EOS tokens between messages")
    # Gemma 3 puts the system text inside the first user turn itself.
    fold = "\n\n" if manual else p1 if p0 == b_pre and not p1.endswith(b_pre) else None
    us = d_tail if p2.startswith(d_tail) and p4.startswith(d_tail) else \
        os.path.commonprefix([p2, p4])
    if fold is not None:
        up, sp, ss = p0, "", ""
    else:  # a default system prompt in user-only chats (Qwen) hides b_pre: turns end alike
        up = next((c for c in (b_pre, p3.removeprefix(us)) if p1.endswith(c) and p3.endswith(c)),
                  os.path.commonprefix([p1[::-1], p3[::-1]])[::-1])
        sp, ss = p0, p1[:len(p1) - len(up)]
    if not p3.endswith(up):
        raise _cannot_map("user turns do not start with the same text")
    fmt = ChatFormat(bos, sp, ss, fold, up, us, p2[len(us):], p3[:len(p3) - len(up)], p4[len(us):])
    # The reduction must reproduce the template on other text, or the template is not linear.
    system, chat = "Be kind.", [{"role": "user", "content": "Hi there"},
                                {"role": "assistant", "content": "Hello!"},
                                {"role": "user", "content": "How are you?"}]
    ref = [{"role": "user", "content": f"{system}\n\nHi there"}, *chat[1:]] if manual else \
        [{"role": "system", "content": system}, *chat]
    if fmt.render(system, chat, bos_token=_BOS) != render(ref):
        raise _cannot_map("it depends on message content or position beyond role prefixes")
    return fmt


def ollama_template(fmt: ChatFormat) -> str:
    """An Ollama Go template (text/template) that renders chats exactly as ``fmt`` does."""
    if any("{{" in s or "}}" in s for s in (fmt.system_prefix, fmt.system_suffix, fmt.user_prefix,
           fmt.fold_separator or "", fmt.user_suffix, fmt.assistant_prefix,
           fmt.assistant_suffix, fmt.generation)):
        raise _cannot_map("its markers contain '{{' or '}}'")
    fold = "" if fmt.fold_separator is None else \
        '{{ if $system }}{{ $system }}' + fmt.fold_separator + '{{ $system = "" }}{{ end }}'
    turns = ('{{ range .Messages }}{{ if eq .Role "user" }}' + fmt.user_prefix + fold +
             '{{ .Content }}' + fmt.user_suffix + '{{ else if eq .Role "assistant" }}' +
             fmt.assistant_prefix + '{{ .Content }}' + fmt.assistant_suffix +
             '{{ end }}{{ end }}' + fmt.generation)
    if fmt.fold_separator is not None:
        return '{{ $system := .System }}' + turns
    return '{{ if .System }}' + fmt.system_prefix + '{{ .System }}' + fmt.system_suffix + \
        '{{ end }}' + turns


def llmfarm_prompt_format(fmt: ChatFormat, system: str, bos_text: str) -> str:
    """LLMFarm's ``prompt_format``: ``[system](...)`` evaluated once, then one format per turn.

    llmfarm_core's ``get_system_prompt`` (AI.swift) ends the system block at its first ')' and
    drops the character after it, so a ')' in the system prompt becomes U+FF09. The model's end
    token never enters LLMFarm's context, so when the system block ends with the assistant's end
    marker, that marker moves to the start of each turn. A folded system prompt (Gemma) has no
    block of its own and is repeated in every turn.
    """
    turn = "{{prompt}}" + fmt.user_suffix + fmt.generation
    if fmt.fold_separator is not None:
        head, turn = bos_text, fmt.user_prefix + system + fmt.fold_separator + turn
    else:
        head = bos_text + fmt.system_prefix + system.replace(")", "\uff09") + fmt.system_suffix
        end, turn = fmt.assistant_suffix, fmt.user_prefix + turn
        if end and head.endswith(end):
            head, turn = head[:-len(end)], end + turn
    if ")" in head or turn[:1] in (" ", "\t"):
        raise _cannot_map("its markers cannot be written in LLMFarm's prompt format")
    return f"[system]({head})\n{turn}" if head else turn
