"""Persona files: each parses in its format, has its app's required fields, and prompts the model
exactly as its Jinja chat template does. Fixture provenance: tests/fixtures/personas/SOURCES.md."""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path

import pytest

from edgetune.errors import ConfigError
from edgetune.chat_format import (derive_chat_format, llmfarm_prompt_format, ollama_template,
                                  render_chat_template)
from edgetune.personas import (CHARACTER_CARD_FILE, LLMFARM_FILE, POCKETPAL_FILE, Persona,
                               ollama_path, persona_files)
from edgetune.tinymodel import CHATML_TEMPLATE

FIXTURES = Path(__file__).parent / "fixtures" / "personas"
FAMILIES = ["chatml", "llama3", "gemma2", "gemma3", "phi3", "qwen2"]
FOLDED = ("gemma2", "gemma3")  # no system block: the system text opens the first user turn
BOS = {"chatml": "", "llama3": "<|begin_of_text|>", "gemma2": "<bos>", "gemma3": "<bos>",
       "phi3": "<s>", "qwen2": ""}
STOPS = {"chatml": ["<|im_end|>"], "llama3": ["<|eot_id|>"], "gemma2": ["<end_of_turn>"],
         "gemma3": ["<end_of_turn>"], "phi3": ["<|end|>"], "qwen2": ["<|im_end|>"]}
SYSTEM = "You are Chef Pip, a cheerful cooking coach. Answer briefly (two sentences at most)."
USER, REPLY, USER2 = "How do I boil an egg?", "Simmer it for 9 minutes.", "And soft-boiled?"

# --- Required fields, written from each format's own source -------------------------------------
# PocketPal AI, src/utils/importUtils.ts: the non-optional members of `ImportedPal` (format v2.0);
# validateSinglePal rejects a pal without a non-empty `name` and `systemPrompt` or whose `version`
# does not start with "2.".
PAL_REQUIRED = {"version": str, "id": str, "name": str, "systemPrompt": str,
                "isSystemPromptChanged": bool, "useAIPrompt": bool, "parameters": dict,
                "parameterSchema": list, "source": str}
# src/types/pal.ts `greeting`; src/utils/completionSettingsVersions.ts (llama.rn setting names).
PAL_GREETING = {"text": str, "suggestedPrompts": list}
PAL_SETTINGS = {"temperature": float, "top_k": int, "top_p": float, "min_p": float,
                "penalty_repeat": float, "stop": list}
# Character Card V2, malfoyslastname/character-card-spec-v2 spec_v2.md, `TavernCardV2`
# (`character_book` is the only optional member of `data`).
CARD_TOP = {"spec": str, "spec_version": str, "data": dict}
CARD_DATA = {"name": str, "description": str, "personality": str, "scenario": str,
             "first_mes": str, "mes_example": str, "creator_notes": str, "system_prompt": str,
             "post_history_instructions": str, "alternate_greetings": list, "tags": list,
             "creator": str, "character_version": str, "extensions": dict}
# LLMFarm: keys force-cast (`as!`) when a chat loads, in llmfarm_core.swift AI.swift
# get_model_context_param_by_config / get_model_sample_param_by_config and LLMFarm
# AIChatModel.swift / FileHelper get_chats_list. Int32 needs a JSON integer, Float a number.
LLMFARM_REQUIRED = {"model": str, "model_inference": str, "prompt_format": str,
                    "reverse_prompt": str, "context": int, "n_batch": int, "temp": float,
                    "top_p": float, "repeat_last_n": int, "add_bos_token": bool,
                    "add_eos_token": bool, "parse_special_tokens": bool, "use_metal": bool,
                    "mmap": bool, "mlock": bool, "title": str, "icon": str, "grammar": str,
                    "numberOfThreads": int}
# Ollama api/types.go `Options` (and its embedded `Runner`): JSON names of the params blob.
OLLAMA_OPTIONS = {"num_ctx": int, "stop": list, "temperature": float, "top_p": float,
                  "top_k": int, "min_p": float, "repeat_penalty": float, "repeat_last_n": int,
                  "seed": int, "num_predict": int, "mirostat": int}


def template(family: str) -> str:
    return (FIXTURES / f"{family}.jinja").read_bytes().decode()


def ollama_fixture(name: str) -> str:
    return (FIXTURES / "ollama" / name).read_bytes().decode()


def make_files(family: str = "chatml", persona: Persona | None = None, **overrides) -> dict:
    args = dict(chat_template=template(family), stop_strings=STOPS[family],
                sampling={"temperature": 0.6, "top_p": 0.95, "top_k": 40},
                default_context=4096, model_file="ChefPip-Q4_K_M.gguf", creator="Ada",
                version="1.2.0")
    persona = persona or Persona(name="Chef Pip", system_prompt=SYSTEM,
                                 greeting="Hi! What are we cooking?",
                                 suggested_prompts=("Boil an egg", "Quick pasta"),
                                 description="A cheerful cooking coach.", tags=("cooking",))
    return persona_files(persona, **{**args, **overrides})


def check_types(obj: dict, spec: dict) -> None:
    for key, kind in spec.items():
        assert key in obj, key
        value = obj[key]
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        assert ok and not (kind in (int, float) and isinstance(value, bool)), (key, value)


# --- A small interpreter for the Go text/template subset chat templates use ---------------------
_ACTION = re.compile(r"\{\{(- )?(.*?)( -)?\}\}", re.S)


def go_render(tmpl: str, data: dict) -> str:
    """text, {{ .X }}, $.X, $v := / = , if / else if / else, range, eq, not, trim markers."""
    tokens: list[tuple[str, str, bool]] = []
    pos = 0
    for m in _ACTION.finditer(tmpl):
        text = tmpl[pos:m.start()]
        text = text.lstrip() if tokens and tokens[-1][2] else text
        tokens += [("text", text.rstrip() if m.group(1) else text, False),
                   ("act", m.group(2).strip(), bool(m.group(3)))]
        pos = m.end()
    tokens.append(("text", tmpl[pos:].lstrip() if tokens and tokens[-1][2] else tmpl[pos:], False))

    def parse(i: int) -> tuple[list, int, str | None]:
        nodes: list = []
        while i < len(tokens):
            kind, body, _ = tokens[i]
            i += 1
            word = body.split(" ", 1)[0]
            if kind == "text":
                nodes.append(("text", body))
            elif word in ("end", "else"):
                return nodes, i, body
            elif word == "if":
                branches, cond = [], body[3:]
                while True:
                    block, i, stop = parse(i)
                    branches.append((cond, block))
                    if stop and stop.startswith("else if "):
                        cond = stop[8:]
                        continue
                    if stop == "else":
                        block, i, stop = parse(i)
                        branches.append(("true", block))
                    break
                nodes.append(("if", branches))
            elif word == "range":
                block, i, _ = parse(i)
                nodes.append(("range", body[6:], block))
            else:
                nodes.append(("expr", body))
        return nodes, i, None

    variables: dict = {}

    def term(t: str, dot):
        if t.startswith('"'):
            return json.loads(t)
        if t == "true":
            return True
        if t.startswith("$."):
            return data[t[2:]]
        if t.startswith("$"):
            return variables[t]
        return dot if t == "." else dot[t[1:]]

    def expr(e: str, dot):
        words = re.findall(r'"(?:[^"\\]|\\.)*"|\S+', e)
        if len(words) > 2 and words[1] in (":=", "="):
            variables[words[0]] = expr(" ".join(words[2:]), dot)
            return None
        if words[0] == "eq":
            return term(words[1], dot) == term(words[2], dot)
        if words[0] == "not":
            return not term(words[1], dot)
        assert len(words) == 1, e
        return term(words[0], dot)

    def run(nodes: list, dot, out: list) -> None:
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "expr":
                value = expr(node[1], dot)
                out.append("" if value is None else str(value))
            elif node[0] == "if":
                for cond, block in node[1]:
                    if expr(cond, dot):
                        run(block, dot, out)
                        break
            else:
                for item in term(node[1], dot):
                    run(node[2], item, out)

    out: list[str] = []
    run(parse(0)[0], data, out)
    return "".join(out)


def ollama_render(tmpl: str, messages: list[dict]) -> str:
    """ollama template/template.go Execute for a Messages template: .System joins the system
    messages, .Messages keeps every message (system ones included)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    msgs = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    return go_render(tmpl, {"System": system, "Messages": msgs, "Response": ""})


def llmfarm_render(prompt_format: str, users: list[str], replies: list[str]) -> str:
    """The text LLMFarm evaluates: llmfarm_core AI.swift get_system_prompt (the system block ends
    at its first ')' and the character after it is dropped, then leading spaces), evaluated once;
    then LLMBase.tokenizePrompt per user message; replies enter without their end token."""
    head, fmt = "", prompt_format
    if "[system](" in fmt:
        begin = fmt.index("[system](") + len("[system](")
        end = fmt.index(")", begin)
        head, fmt = fmt[begin:end], fmt[end + 2:].lstrip(" \t")
    out = head
    for i, user in enumerate(users):
        out += fmt.replace("{{prompt}}", user).replace("{prompt}", user).replace("\\n", "\n")
        out += replies[i] if i < len(replies) else ""
    return out


def jinja(family: str, messages: list[dict], bos: str = "") -> str:
    if family == "gemma2":  # Gemma 2 refuses the system role; Gemma 3 folds it the same way
        system, first, *rest = messages
        messages = [{"role": "user", "content": system["content"] + "\n\n" + first["content"]},
                    *rest]
    return render_chat_template(template(family), messages, add_generation_prompt=True,
                                bos_token=bos)


ONE_TURN = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
TWO_TURNS = [*ONE_TURN, {"role": "assistant", "content": REPLY},
             {"role": "user", "content": USER2}]
OLLAMA_TEST_CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello, how are you?"},
    {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
    {"role": "user", "content": "I'd like to show off how chat templating works!"}]


# --- Fixtures and the interpreter are what they claim ------------------------------------------
def test_chatml_fixture_is_the_project_template():
    assert template("chatml") == CHATML_TEMPLATE


@pytest.mark.parametrize("name", ["chatml", "llama3-instruct", "phi-3"])
def test_go_interpreter_renders_ollamas_templates_as_ollama_expects(name):
    published = ollama_fixture(f"{name}.gotmpl")
    expected = ollama_fixture(f"{name}.system-user-assistant-user")
    assert ollama_render(published, OLLAMA_TEST_CHAT) == expected


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gemma2"] + ["mistral"])
def test_render_chat_template_matches_transformers(family):
    from transformers.utils.chat_template_utils import render_jinja_template

    chat = TWO_TURNS[1:] if family == "mistral" else TWO_TURNS
    for gen in (True, False):
        want = render_jinja_template([chat], chat_template=template(family),
                                     add_generation_prompt=gen, bos_token="<B>", eos_token="<E>")
        assert render_chat_template(template(family), chat, add_generation_prompt=gen,
                                    bos_token="<B>", eos_token="<E>") == want[0][0]


# --- Derived prompts match the model's template ------------------------------------------------
@pytest.mark.parametrize("family, ollama_name", [("chatml", "chatml"), ("qwen2", "chatml"),
                                                  ("llama3", "llama3-instruct"), ("phi3", "phi-3")])
def test_our_ollama_template_renders_like_ollamas_published_one(family, ollama_name):
    ours = make_files(family)[ollama_path("template")].decode()
    expected = ollama_fixture(f"{ollama_name}.system-user-assistant-user")
    assert ollama_render(ours, OLLAMA_TEST_CHAT) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_ollama_template_round_trips_the_jinja_template(family):
    ours = make_files(family)[ollama_path("template")].decode()
    # Ollama's runner adds BOS itself (tokenizer.ggml.add_bos_token), so the template has none.
    assert ollama_render(ours, ONE_TURN) == jinja(family, ONE_TURN)
    assert ollama_render(ours, TWO_TURNS) == jinja(family, TWO_TURNS)
    assert BOS[family] == "" or BOS[family] not in ours


@pytest.mark.parametrize("family", FAMILIES)
def test_llmfarm_prompt_round_trips_the_jinja_template(family):
    farm = json.loads(make_files(family)[LLMFARM_FILE])
    fmt = farm["prompt_format"]
    assert farm["add_bos_token"] is False  # the BOS text sits in the system block instead
    # LLMFarm's system block ends at the first ')', so ours carries U+FF09 (a folded system
    # prompt lives in the per-turn format and keeps its ')').
    system = SYSTEM if family in FOLDED else SYSTEM.replace(")", "\uff09")
    one, two = ({**ONE_TURN[0], "content": system}, *ONE_TURN[1:]), TWO_TURNS[1:]
    assert llmfarm_render(fmt, [USER], []) == jinja(family, list(one), BOS[family])
    if family not in FOLDED:  # LLMFarm repeats a folded system prompt in every turn
        assert llmfarm_render(fmt, [USER, USER2], [REPLY]) == \
            jinja(family, [one[0], *two], BOS[family])


def test_llmfarm_keeps_a_system_prompt_with_parentheses_inside_its_block():
    fmt = llmfarm_prompt_format(derive_chat_format(template("chatml")), "Be (very) kind.", "")
    assert llmfarm_render(fmt, ["Hi"], []).startswith("<|im_start|>system\nBe (very\uff09 kind.")


@pytest.mark.parametrize("family", FOLDED)
def test_gemma_templates_fold_the_system_prompt_into_the_first_user_turn(family):
    fmt = derive_chat_format(template(family))
    assert (fmt.bos, fmt.fold_separator, fmt.user_prefix) == (True, "\n\n", "<start_of_turn>user\n")
    assert "{{ $system := .System }}" in ollama_template(fmt)


def test_bos_text_comes_from_the_family_or_the_caller():
    farm = json.loads(make_files("llama3")[LLMFARM_FILE])
    assert farm["prompt_format"].startswith("[system](<|begin_of_text|><|start_header_id|>system")
    custom = json.loads(make_files("llama3", bos_token="<BOS>")[LLMFARM_FILE])
    assert custom["prompt_format"].startswith("[system](<BOS><|start_header_id|>")
    unknown = "{{ bos_token }}" + CHATML_TEMPLATE
    with pytest.raises(ConfigError, match="bos_token") as e:
        make_files(chat_template=unknown)
    assert "tokenizer_config.json" in e.value.hint


@pytest.mark.parametrize("bad, why", [
    ("mistral", "BOS/EOS tokens between messages"),
    ("{{ messages[0]['content'] }}", "each message once"),
    ("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}", "each message once"),
    ("{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}{% if m['content'] == "
     "'Hi there' %}!{% endif %}\n{% endfor %}", "depends on message content"),
    ("{% for m in messages %}", "rendering failed"),
])
def test_a_template_that_cannot_be_mapped_is_refused_clearly(bad, why):
    chat_template = template(bad) if bad == "mistral" else bad
    with pytest.raises(ConfigError, match=why) as e:
        make_files(chat_template=chat_template)
    assert "ChatML" in e.value.hint


# --- Every file parses and carries its format's required fields --------------------------------
def test_files_and_names():
    files = make_files()
    assert sorted(files) == sorted([POCKETPAL_FILE, CHARACTER_CARD_FILE, LLMFARM_FILE,
                                    *(ollama_path(n) for n in
                                      ("template", "system", "params", "Modelfile"))])
    assert all(isinstance(b, bytes) for b in files.values())
    # Ollama reads template/system/params at the repo root; the app files live under personas/.
    assert {p for p in files if "/" not in p} == {"template", "system", "params", "Modelfile"}
    assert all(p.startswith("personas/") for p in files if "/" in p)


def test_pocketpal_pal_has_its_required_fields():
    pal = json.loads(make_files()[POCKETPAL_FILE])
    check_types(pal, PAL_REQUIRED)
    assert pal["version"].startswith("2.") and pal["name"] and pal["systemPrompt"] == SYSTEM
    assert pal["source"] in ("local", "palshub")
    check_types(pal["greeting"], PAL_GREETING)
    assert pal["greeting"]["suggestedPrompts"] == ["Boil an egg", "Quick pasta"]
    settings = pal["generation_settings"]
    assert set(settings) <= set(PAL_SETTINGS)
    check_types(settings, {k: PAL_SETTINGS[k] for k in settings})
    assert settings["stop"] == ["<|im_end|>"] and "defaultModel" not in pal
    with_repo = json.loads(make_files(hf_repo="ada/chef-pip-GGUF")[POCKETPAL_FILE])
    assert with_repo["defaultModel"]["id"] == "ada/chef-pip-GGUF/ChefPip-Q4_K_M.gguf"


def test_character_card_has_the_v2_fields():
    card = json.loads(make_files()[CHARACTER_CARD_FILE])
    check_types(card, CARD_TOP)
    assert (card["spec"], card["spec_version"]) == ("chara_card_v2", "2.0")
    check_types(card["data"], CARD_DATA)
    data = card["data"]
    assert all(isinstance(x, str) for x in data["alternate_greetings"] + data["tags"])
    assert (data["name"], data["system_prompt"], data["first_mes"]) == \
        ("Chef Pip", SYSTEM, "Hi! What are we cooking?")
    assert (data["creator"], data["character_version"]) == ("Ada", "1.2.0")
    assert "edgetune" in data["extensions"]  # namespaced, as the spec asks


def test_llmfarm_chat_has_the_fields_llmfarm_force_casts():
    farm = json.loads(make_files()[LLMFARM_FILE])
    check_types(farm, LLMFARM_REQUIRED)
    assert farm["model"] == "ChefPip-Q4_K_M.gguf" and farm["model_inference"] == "llama"
    assert "{{prompt}}" in farm["prompt_format"] and farm["reverse_prompt"] == "<|im_end|>"
    assert isinstance(farm["temp"], float) and farm["context"] == 4096 and farm["top_k"] == 40


def test_ollama_files_and_modelfile():
    files = make_files(sampling={"temperature": 1, "top_p": 0.9})
    params = json.loads(files[ollama_path("params")])
    assert set(params) <= set(OLLAMA_OPTIONS)
    check_types(params, {k: OLLAMA_OPTIONS[k] for k in params})
    assert params == {"num_ctx": 4096, "stop": ["<|im_end|>"], "temperature": 1.0, "top_p": 0.9}
    assert files[ollama_path("system")].decode() == SYSTEM
    # Modelfile grammar (ollama parser/parser.go): INSTRUCTION value; "..." or """...""" values.
    text = files[ollama_path("Modelfile")].decode()
    command = re.compile(r'(?ms)^#[^\n]*\n|^(FROM|TEMPLATE|SYSTEM|PARAMETER)[ \t]+(?:(\w+)[ \t]+)?'
                         r'(?:"""(.*?)"""(?=\s)|"([^"\n]*)"|([^\s"][^\n]*))\n')
    commands, pos = [], 0
    for m in command.finditer(text):
        assert m.start() == pos, text[pos:m.start()]
        pos = m.end()
        if m.group(1):
            value = next(g for g in m.groups()[2:] if g is not None)
            commands.append((m.group(1), m.group(2), value))
    assert pos == len(text)
    (_, _, source), = [c for c in commands if c[0] == "FROM"]
    # FROM is resolved against the Modelfile's folder (cmd.go: CreateRequest(filepath.Dir(...))).
    assert posixpath.normpath(source) == "ChefPip-Q4_K_M.gguf"
    values = {c[0]: c[2] for c in commands if c[0] in ("TEMPLATE", "SYSTEM")}
    assert values == {"TEMPLATE": files[ollama_path("template")].decode(), "SYSTEM": SYSTEM}
    assert sorted((c[1], c[2]) for c in commands if c[0] == "PARAMETER") == \
        [("num_ctx", "4096"), ("stop", "<|im_end|>"), ("temperature", "1.0"), ("top_p", "0.9")]


def test_bytes_are_deterministic():
    a = make_files("llama3")
    b = make_files("llama3", sampling={"top_k": 40, "top_p": 0.95, "temperature": 0.6})
    assert a == b and list(a) == sorted(a)
    assert not any(re.search(rb"\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d", v) for v in a.values())


# --- Validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    ({"name": "  "}, "name is empty"),
    ({"system_prompt": ""}, "system_prompt is empty"),
    ({"name": "x" * 65}, "name has 65 characters"),
    ({"system_prompt": "x" * 8001}, "at most 8000"),
    ({"name": "Chef\nPip"}, "single line"),
    ({"suggested_prompts": ("a",) * 9}, "at most 8"),
    ({"suggested_prompts": ("a", "a")}, "duplicates"),
    ({"suggested_prompts": ("",)}, "1 to 200 characters"),
    ({"suggested_prompts": "Boil an egg"}, "list of texts"),
    ({"greeting": None}, "greeting must be text"),
    ({"system_prompt": 'Say """hi"""'}, '"""'),
    ({"system_prompt": "Repeat {prompt}"}, "{prompt}"),
    ({"description": "bell\x07"}, "control characters"),
])
def test_persona_validation(fields, message):
    base = {"name": "Chef Pip", "system_prompt": SYSTEM}
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        Persona(**{**base, **fields})
    assert e.value.hint


def test_all_persona_problems_are_reported_together():
    with pytest.raises(ConfigError) as e:
        Persona(name="", system_prompt="", greeting="g" * 2001)
    assert all(s in str(e.value) for s in ("name is empty", "system_prompt is empty", "greeting"))


def test_persona_strips_and_freezes():
    p = Persona(name=" Pip ", system_prompt=" Be kind.\r\nBe brief. ", suggested_prompts=[" Hi "])
    assert (p.name, p.system_prompt, p.suggested_prompts) == \
        ("Pip", "Be kind.\nBe brief.", ("Hi",))
    with pytest.raises(AttributeError):
        p.name = "Other"  # type: ignore[misc]


@pytest.mark.parametrize("overrides, message", [
    ({"sampling": {"temprature": 0.7}}, "unknown sampling setting 'temprature'"),
    ({"sampling": {"top_p": 1.5}}, "top_p=1.5 is out of range"),
    ({"sampling": {"top_k": 0.5}}, "top_k=0.5"),
    ({"sampling": {"temperature": True}}, "temperature=True"),
    ({"default_context": 0}, "default_context must be a positive integer"),
    ({"default_context": 32}, "over half of the default context"),
    ({"model_file": "../model.gguf"}, "model_file must be a .gguf file name"),
    ({"sampling": [0.7]}, "sampling must map setting names to numbers"),
    ({"chat_template": "  "}, "the chat template is empty"),
    ({"stop_strings": []}, "stop_strings"),
    ({"stop_strings": "<|im_end|>"}, "stop_strings must be a list"),
    ({"stop_strings": ["a;b"]}, "without ';'"),
    ({"creator": "Ada\nLovelace"}, "creator must be a single line"),
    ({"version": ""}, "version must be a single line"),
    ({"hf_repo": "no-slash"}, "hf_repo"),
])
def test_persona_files_validation(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        make_files(**overrides)
    assert e.value.hint
