"""Where a chat turn ends: read from the model's own chat template, not assumed to be EOS.

Families differ: ChatML ends a turn with ``<|im_end|>`` (Qwen's EOS too), Llama 3 with
``<|eot_id|>``, Gemma with ``<end_of_turn>`` while its tokenizer's EOS is ``<eos>``. A runtime that
stops only at EOS runs on past a Gemma answer into a made-up next turn, so the stop strings given
to phone apps and the GGUF's end-of-generation tokens both need the template's own end of turn.

Written here because neither transformers nor llama.cpp exposes "the token that ends an assistant
turn" for a template: it is found by rendering one assistant turn and reading what follows it.
"""

from __future__ import annotations

_PROBE = "edgetune end of turn probe"


def end_of_turn(tokenizer) -> str | None:
    """The special token the chat template writes right after an assistant message, if any."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = _render_assistant_turn(tokenizer)
    if text is None or _PROBE not in text:
        return None
    after = text[text.rindex(_PROBE) + len(_PROBE):].lstrip(" ")
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    if not ids or ids[0] not in set(tokenizer.all_special_ids) | _added_special_ids(tokenizer):
        return None
    return tokenizer.convert_ids_to_tokens(ids[0])


def stop_strings(tokenizer) -> tuple[str, ...]:
    """What a runtime must stop at: the end of a turn first, then EOS (once each)."""
    found = [end_of_turn(tokenizer), tokenizer.eos_token]
    return tuple(dict.fromkeys(s for s in found if s))


def stop_token_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(s) for s in stop_strings(tokenizer)]


def _render_assistant_turn(tokenizer) -> str | None:
    from jinja2 import TemplateError

    turn = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    conversations = (turn, [{"role": "system", "content": "Be brief."}, *turn])
    for messages in conversations:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False)
        except (TemplateError, ValueError, TypeError):
            continue
    return None


def _added_special_ids(tokenizer) -> set[int]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {i for i, token in decoder.items() if getattr(token, "special", False)}
