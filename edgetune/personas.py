"""One persona, in the files chat apps import, with prompts derived from the model's template.

``persona_files`` returns relative path -> bytes, deterministic (sorted keys, no timestamps):
``personas/pocketpal-pal.json`` (PocketPal AI Pal, format 2.0), ``personas/character-card-v2.json``
(ChatterUI, SillyTavern), ``personas/llmfarm-chat.json`` (for LLMFarm's ``chats/`` folder) and
``personas/ollama/{template,system,params,Modelfile}``. The Ollama template and LLMFarm's prompt
format come from the Jinja chat template through ``edgetune.chat_format``.
"""

from __future__ import annotations

import json
import posixpath
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgetune import strict_json
from edgetune.chat_format import (ChatFormat, derive_chat_format, llmfarm_prompt_format,
                                  ollama_template, render_chat_template)
from edgetune.errors import ConfigError

# The chat-template names are here too: callers imported them from this module before it was two.
__all__ = ["CHARACTER_CARD_FILE", "LIMITS", "LIST_LIMITS", "LLMFARM_FILE", "OLLAMA_DIR",
           "POCKETPAL_FILE", "SAMPLING_KEYS", "ChatFormat", "Persona", "derive_chat_format",
           "llmfarm_prompt_format", "ollama_path", "ollama_template", "persona_files",
           "pocketpal_default_model", "render_chat_template", "restamp_pocketpal",
           "valid_hf_repo"]

POCKETPAL_FILE = "personas/pocketpal-pal.json"
CHARACTER_CARD_FILE = "personas/character-card-v2.json"
LLMFARM_FILE = "personas/llmfarm-chat.json"
# Ollama's files at the bundle (= Hugging Face repo) root: `ollama run hf.co/USER/REPO` reads
# `template`, `system` and `params` from there (hf.co docs, "Use Ollama with any GGUF Model on
# Hugging Face Hub"); the Modelfile beside them serves `ollama create NAME -f Modelfile`.
OLLAMA_DIR = ""


def ollama_path(name: str) -> str:
    """Where Ollama's file ``name`` lies in the bundle (``OLLAMA_DIR``)."""
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
        pal = strict_json.loads(pal_file, strict_json.PERSONA)
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
        ollama_path("template"): template.encode(), ollama_path("system"): system.encode(),
        ollama_path("params"): _json(ollama_params),
        ollama_path("Modelfile"): ("\n".join(lines) + "\n").encode()}
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
