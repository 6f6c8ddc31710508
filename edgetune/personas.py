"""One persona, in the files chat apps import, with prompts derived from the model's template.

``persona_files`` returns relative path -> bytes, deterministic (sorted keys, no timestamps):
``personas/pocketpal-pal.json`` (PocketPal AI Pal, format 2.0), ``personas/character-card-v2.json``
(ChatterUI, SillyTavern), ``personas/llmfarm-chat.json`` (for LLMFarm's ``chats/`` folder) and
``personas/ollama/{template,system,params,Modelfile}``. LLMFarm ignores the GGUF's template and
Ollama needs a Go one, so both come from the Jinja template: rendered around sentinel messages as
transformers renders it, the text between sentinels gives each role's prefix and suffix, and the
reduction is checked against a fresh rendering before use.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgetune.errors import ConfigError

POCKETPAL_FILE = "personas/pocketpal-pal.json"
CHARACTER_CARD_FILE = "personas/character-card-v2.json"
LLMFARM_FILE = "personas/llmfarm-chat.json"
# Ollama's files at the bundle (= Hugging Face repo) root: `ollama run hf.co/USER/REPO` reads
# `template`, `system` and `params` from there (hf.co docs, "Use Ollama with any GGUF Model on
# Hugging Face Hub"); the Modelfile beside them serves `ollama create NAME -f Modelfile`.
OLLAMA_DIR = ""


def _ollama_path(name: str) -> str:
    return posixpath.join(OLLAMA_DIR, name) if OLLAMA_DIR else name
# Longest text per field (characters), and most / longest entries of the list fields.
LIMITS = {"name": 64, "description": 500, "greeting": 2000, "system_prompt": 8000}
LIST_LIMITS = {"suggested_prompts": (8, 200), "tags": (16, 32)}
# Recommended sampling, by Ollama's option names (api/types.go Options), with their JSON types.
SAMPLING_KEYS: dict[str, type] = {"temperature": float, "top_p": float, "top_k": int,
                                  "min_p": float, "repeat_penalty": float}
# BOS text of the families whose templates write bos_token, keyed by their user marker.
_KNOWN_BOS = {"<|start_header_id|>": "<|begin_of_text|>", "<start_of_turn>": "<bos>",
              "<|user|>": "<s>"}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TEMPLATE_HINT = ("Use a ChatML (Qwen), Llama-3, Gemma or Phi-3 style chat template, or ship the "
                  "bundle without app persona files.")


@dataclass(frozen=True)
class Persona:
    """Who the model is in chat apps. Text is stripped; every problem is reported at once."""

    name: str
    system_prompt: str
    greeting: str = ""
    suggested_prompts: tuple[str, ...] = ()
    description: str = ""  # shown in app lists, never sent to the model
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        for f in (*LIMITS, "greeting", *LIST_LIMITS):
            many = f in LIST_LIMITS
            items = getattr(self, f) if many else [getattr(self, f)]
            if isinstance(items, str) or not isinstance(items, Sequence) or \
                    not all(isinstance(i, str) for i in items):
                problems.append(f"{f} must be {'a list of texts' if many else 'text'}")
                continue
            items = [i.replace("\r\n", "\n").strip() for i in items]
            object.__setattr__(self, f, tuple(items) if many else items[0])
        if problems := problems or _persona_problems(self):
            raise ConfigError("invalid persona: " + "; ".join(problems),
                              "Fix the persona's name, system prompt, greeting or prompts.")


def _persona_problems(p: Persona) -> list[str]:
    out = [f"{f} is empty" for f in ("name", "system_prompt") if not getattr(p, f)]
    out += [f"{f} has {len(getattr(p, f))} characters (at most {most})"
            for f, most in LIMITS.items() if len(getattr(p, f)) > most]
    if "\n" in p.name or "\t" in p.name:
        out.append("name must be a single line")
    for f, (most, longest) in LIST_LIMITS.items():
        items = getattr(p, f)
        if len(items) > most:
            out.append(f"{f} has {len(items)} entries (at most {most})")
        if any(not i or len(i) > longest for i in items):
            out.append(f"every entry of {f} must have 1 to {longest} characters")
        if len(set(items)) != len(items):
            out.append(f"{f} has duplicates")
    texts = (p.name, p.system_prompt, p.greeting, p.description, *p.suggested_prompts, *p.tags)
    if any(_CONTROL.search(t) for t in texts):
        out.append("text contains control characters")
    if '"""' in p.system_prompt:  # would end the Modelfile's SYSTEM """...""" early
        out.append('system_prompt must not contain """')
    if "{prompt}" in p.system_prompt:  # LLMFarm replaces it with the user's message
        out.append("system_prompt must not contain {prompt}")
    return out


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


def valid_hf_repo(hf_repo: Any) -> bool:
    """True for a ``"user/repo"`` text as the bundle's ``distribution.hf_repo`` may hold it."""
    return isinstance(hf_repo, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", hf_repo) is not None


def pocketpal_default_model(hf_repo: str, model_file: str) -> dict[str, str]:
    """PocketPal's ``defaultModel`` for ``model_file`` downloaded from ``hf_repo``: PocketPal
    matches its ``id`` with ``"<repo>/<file>"`` (src/utils hfAsModel)."""
    return {"id": f"{hf_repo}/{model_file}", "author": hf_repo.split("/")[0],
            "name": model_file.removesuffix(".gguf"), "filename": model_file}


def restamp_pocketpal(pal_file: bytes, *, hf_repo: str, model_file: str) -> bytes:
    """The PocketPal Pal file ``pal_file`` with its ``defaultModel`` pointing at ``model_file``
    in ``hf_repo``, written exactly as ``persona_files`` writes it."""
    if not valid_hf_repo(hf_repo):
        raise ConfigError(f"hf_repo must look like 'user/repo', not {hf_repo!r}",
                          "Name the Hugging Face repository as USER/NAME.")
    try:
        pal = json.loads(pal_file)
    except ValueError as e:
        raise ConfigError(f"{POCKETPAL_FILE} is not valid JSON ({e})",
                          "Rebuild the bundle.") from None
    if not isinstance(pal, dict):
        raise ConfigError(f"{POCKETPAL_FILE} does not hold a Pal", "Rebuild the bundle.")
    pal["defaultModel"] = pocketpal_default_model(hf_repo, model_file)
    return _json(pal)


def _check_settings(persona: Persona, chat_template: Any, stops: Any, sampling: Any,
                    default_context: Any, model_file: Any, creator: Any, version: Any,
                    hf_repo: Any) -> dict[str, Any]:
    """Every problem with the bundle's settings, reported at once; returns the sampling."""
    problems, params = [], {}
    if not isinstance(chat_template, str) or not chat_template.strip():
        problems.append("the chat template is empty")
    if not isinstance(default_context, int) or isinstance(default_context, bool) or \
            default_context < 1:
        problems.append(f"default_context must be a positive integer, not {default_context!r}")
    elif len(persona.system_prompt) / 4 > default_context / 2:
        problems.append(f"the system prompt (about {len(persona.system_prompt) // 4} tokens) fills "
                        f"over half of the default context ({default_context} tokens)")
    if not isinstance(model_file, str) or not re.fullmatch(r"[A-Za-z0-9._-]+\.gguf", model_file):
        problems.append(f"model_file must be a .gguf file name, not {model_file!r}")
    if isinstance(stops, str) or not stops or \
            any(not isinstance(s, str) or not s or ";" in s or '"""' in s for s in stops):
        problems.append("stop_strings must be a list of texts without ';' (LLMFarm's separator) "
                        "or triple quotes")
    for label, value in (("creator", creator), ("version", version)):
        if not isinstance(value, str) or not value.strip() or _CONTROL.search(value) or \
                "\n" in value:
            problems.append(f"{label} must be a single line of text")
    if hf_repo is not None and not valid_hf_repo(hf_repo):
        problems.append(f"hf_repo must look like 'user/repo', not {hf_repo!r}")
    if not isinstance(sampling, Mapping):
        problems.append(f"sampling must map setting names to numbers, not {sampling!r}")
    for key, value in (sampling.items() if isinstance(sampling, Mapping) else ()):
        kind = SAMPLING_KEYS.get(key)
        if kind is None:
            problems.append(f"unknown sampling setting '{key}' (known: {', '.join(SAMPLING_KEYS)})")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or \
                (kind is int and value != int(value)) or (key == "top_p" and value > 1):
            problems.append(f"sampling {key}={value!r} is out of range")
        else:
            params[key] = kind(value)
    if problems:
        raise ConfigError("cannot write persona files: " + "; ".join(problems),
                          "Fix these bundle settings and run the bundle stage again.")
    return params


def persona_files(persona: Persona, *, chat_template: str, stop_strings: Sequence[str],
                  sampling: Mapping[str, Any], default_context: int, model_file: str,
                  creator: str, version: str, bos_token: str | None = None,
                  hf_repo: str | None = None) -> dict[str, bytes]:
    """Every app's persona file for ``persona`` running ``model_file`` (a GGUF at the bundle root).

    ``bos_token`` is the tokenizer's BOS text, which LLMFarm needs when the template writes it
    (known for Llama-3, Gemma and Phi-3). ``hf_repo`` ("user/repo") lets PocketPal select the
    model once it is downloaded from that repository.
    """
    stops = stop_strings if isinstance(stop_strings, str) else list(stop_strings)
    params = _check_settings(persona, chat_template, stops, sampling, default_context, model_file,
                             creator, version, hf_repo)
    fmt = derive_chat_format(chat_template)
    if fmt.bos and bos_token is None:
        bos_token = next((b for m, b in _KNOWN_BOS.items() if m in fmt.user_prefix), None)
        if bos_token is None:
            raise ConfigError("the chat template writes bos_token, whose text is unknown",
                              "Pass bos_token (tokenizer_config.json's 'bos_token').")
    system, template = persona.system_prompt, ollama_template(fmt)
    ctx = {"model_file": model_file, "default_context": default_context, "sampling": params,
           "stop_strings": stops}
    # Ollama: api/types.go Options (params names); parser/parser.go (Modelfile; a relative FROM
    # is resolved against the Modelfile's folder, cmd/cmd.go CreateRequest(filepath.Dir(...))).
    ollama_params = {"num_ctx": default_context, "stop": stops, **params}
    lines = [f"# {persona.name} {version} by {creator}, written by edgetune",
             f"FROM ./{posixpath.relpath(model_file, OLLAMA_DIR or '.')}",
             f'TEMPLATE """{template}"""', f'SYSTEM """{system}"""']
    for key, value in sorted(ollama_params.items()):
        for v in value if isinstance(value, list) else [value]:
            quoted = v if not isinstance(v, str) else f'"""{v}"""' if '"' in v else f'"{v}"'
            lines.append(f"PARAMETER {key} {quoted}")
    files = {
        POCKETPAL_FILE: _json(_pocketpal(persona, ctx, creator, hf_repo)),
        CHARACTER_CARD_FILE: _json(_character_card(persona, ctx, creator, version)),
        LLMFARM_FILE: _json(_llmfarm(persona, ctx, llmfarm_prompt_format(
            fmt, system, bos_token if fmt.bos else ""))),
        _ollama_path("template"): template.encode(), _ollama_path("system"): system.encode(),
        _ollama_path("params"): _json(ollama_params),
        _ollama_path("Modelfile"): ("\n".join(lines) + "\n").encode()}
    return dict(sorted(files.items()))


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _pocketpal(persona: Persona, ctx: dict, creator: str, hf_repo: str | None) -> dict:
    # PocketPal AI: src/utils/exportUtils.ts transformExportPal (format 2.0), importUtils.ts
    # validateSinglePal, src/types/pal.ts (greeting), completionSettingsVersions.ts (settings).
    names = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
             "repeat_penalty": "penalty_repeat"}
    pal: dict[str, Any] = {
        "version": "2.0", "name": persona.name, "description": persona.description,
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"edgetune:{creator}:{persona.name}")),
        "systemPrompt": persona.system_prompt, "originalSystemPrompt": persona.system_prompt,
        "isSystemPromptChanged": False, "useAIPrompt": False, "parameters": {},
        "parameterSchema": [], "source": "local", "capabilities": {}, "tags": list(persona.tags),
        "generation_settings": {**{names[k]: v for k, v in ctx["sampling"].items()},
                                "stop": ctx["stop_strings"]}}
    if persona.greeting or persona.suggested_prompts:
        pal["greeting"] = {"text": persona.greeting,
                           "suggestedPrompts": list(persona.suggested_prompts)}
    if hf_repo:
        pal["defaultModel"] = pocketpal_default_model(hf_repo, ctx["model_file"])
    return pal


def _character_card(persona: Persona, ctx: dict, creator: str, version: str) -> dict:
    # Character Card V2: malfoyslastname/character-card-spec-v2 spec_v2.md (TavernCardV2). Its
    # description is prompt text, so ours goes to creator_notes (shown, never prompted).
    notes = [persona.description, *(f"Try: {p}" for p in persona.suggested_prompts),
             f"Model: {ctx['model_file']}"]
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": persona.name, "description": "", "personality": "", "scenario": "",
        "first_mes": persona.greeting, "mes_example": "",
        "creator_notes": "\n".join(n for n in notes if n), "system_prompt": persona.system_prompt,
        "post_history_instructions": "", "alternate_greetings": [], "tags": list(persona.tags),
        "creator": creator, "character_version": version, "extensions": {"edgetune": ctx}}}


def _llmfarm(persona: Persona, ctx: dict, prompt_format: str) -> dict:
    # LLMFarm: guinmoon/llmfarm_core.swift AI.swift get_model_context_param_by_config and
    # get_model_sample_param_by_config; LLMFarm AIChatModel.swift, Lib/ChatSettingsTemplate.swift.
    names = {"temperature": "temp", "top_p": "top_p", "top_k": "top_k",
             "repeat_penalty": "repeat_penalty"}  # LLMFarm has no min_p
    return {"title": persona.name, "icon": "ava0", "model": ctx["model_file"],
            "model_inference": "llama", "prompt_format": prompt_format,
            "reverse_prompt": ";".join(ctx["stop_strings"]), "context": ctx["default_context"],
            "n_batch": 512, "repeat_last_n": 64, "add_bos_token": False, "add_eos_token": False,
            "parse_special_tokens": True, "use_metal": True, "mmap": True, "mlock": False,
            "grammar": "<None>", "numberOfThreads": 0,
            **{names[k]: v for k, v in ctx["sampling"].items() if k in names}}
