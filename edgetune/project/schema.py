"""Every key a project file may hold, with its check, and the check of a whole document.

Each problem is collected as ``(line, "<key>: <what>")`` so that ``load_project`` can report
them all at once; a wrong value's message says what is allowed and suggests a close match.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.errors import ConfigError


class _Invalid(Exception):
    """A wrong value; the message says what is allowed. ``got``: append the value given."""

    def __init__(self, message: str, *, got: bool = True, index: int | None = None):
        super().__init__(message)
        self.got = got
        self.index = index  # the list entry at fault, for its own line


@dataclass(frozen=True)
class _Field:
    check: Callable[[Any, Path], Any]  # (value, the file's folder) -> the value to use
    allowed: tuple = ()  # the values a choice accepts (the scaffold's comment names them all)


def show(value: Any) -> str:
    """A value as the file would spell it, for messages."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _suggest(word: Any, choices) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [c for c in choices if isinstance(c, str)], n=1)
    return f" (did you mean {show(close[0])}?)" if close else ""


def _optional(inner: _Field) -> _Field:
    return _Field(lambda v, base: None if v is None else inner.check(v, base), inner.allowed)


def _integer(minimum: int) -> _Field:
    def check(v, base):
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise _Invalid(f"must be an integer >= {minimum}")
        return v
    return _Field(check)


def _number(above: float, below: float | None = None) -> _Field:
    wanted = (f"a number above {above:g} and below {below:g}" if below is not None
              else f"a number > {above:g}")

    def check(v, base):
        if isinstance(v, str):  # YAML 1.1 reads 5e-4 (no dot) as text
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v <= above or (below is not None and v >= below):
            raise _Invalid(f"must be {wanted}")
        return float(v)
    return _Field(check)


def _text(*, empty: bool = False) -> _Field:
    def check(v, base):
        if not isinstance(v, str) or (not empty and not v.strip()):
            raise _Invalid("must be text" if empty else "must be non-empty text")
        return v.strip()
    return _Field(check)


def _choice(*values) -> _Field:
    def check(v, base):
        for x in values:
            if type(v) is type(x) and v == x:  # by type too: YAML's true is not 1, nor 4.0 4
                return x
        raise _Invalid(f"must be one of {', '.join(show(x) for x in values)}, got {show(v)}"
                       f"{_suggest(v, values)}", got=False)
    return _Field(check, values)


def _boolean() -> _Field:
    def check(v, base):
        if not isinstance(v, bool):
            raise _Invalid("must be true or false")
        return v
    return _Field(check, (True, False))


def _texts(choices: tuple[str, ...] = (), *, non_empty: bool = False) -> _Field:
    def check(v, base):
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v) \
                or (non_empty and not v):
            raise _Invalid(f"must be a {'non-empty ' if non_empty else ''}list of texts")
        for i, x in enumerate(v):
            if choices and x not in choices:
                raise _Invalid(f"unknown entry {show(x)}{_suggest(x, choices)} (choose from "
                               f"{', '.join(choices)})", got=False, index=i)
            if x in v[:i]:
                raise _Invalid(f"{show(x)} is listed twice", got=False, index=i)
        return tuple(x.strip() for x in v)
    return _Field(check, choices)


def _file(*suffixes: str) -> _Field:
    def check(v, base):
        if not isinstance(v, str) or not v.strip():
            raise _Invalid("must be a file path (relative to this file's folder)")
        path = Path(os.path.normpath(base / Path(v).expanduser()))
        if not path.is_file():
            raise _Invalid(f"file not found: {path} (paths are relative to the project "
                           f"file's folder)", got=False)
        if suffixes and path.suffix.lower() not in suffixes:
            raise _Invalid(f"must be a {', '.join(suffixes)} file, got {show(v)}", got=False)
        return path
    return _Field(check)


def _model() -> _Field:
    def check(v, base):
        v = _text().check(v, base)
        local = Path(os.path.normpath(base / Path(v).expanduser()))
        return str(local) if local.is_dir() else v  # a folder beside this file, else a hub id
    return _Field(check)


_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")


def _version() -> _Field:
    def check(v, base):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            raise _Invalid(f"must be text like \"1.0.0\"; write it in quotes (YAML reads {v} as a "
                           f"number)", got=False)
        if not isinstance(v, str) or not _SEMVER.fullmatch(v):
            raise _Invalid("must be a semantic version like \"1.0.0\"")
        return v
    return _Field(check)


def _repo() -> _Field:
    def check(v, base):
        if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", v):
            raise _Invalid('must be a Hugging Face repo id like "user/name"')
        return v
    return _Field(check)


def _targets() -> _Field:
    def check(v, base):
        from edgetune.profiles import available_profiles, load_profile

        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            raise _Invalid("must be a non-empty list of target names, e.g. [phone]")
        names, out = available_profiles(), []
        for i, x in enumerate(v):
            if x.endswith((".yaml", ".yml")):  # a profile file of one's own, beside this one
                path = Path(os.path.normpath(base / Path(x).expanduser()))
                if not path.is_file():
                    raise _Invalid(f"profile file not found: {path}", got=False, index=i)
                load_profile(str(path))  # its own problems, with its own file name
                x = str(path)
            elif x not in names:
                raise _Invalid(f"unknown target {show(x)}{_suggest(x, names)} (choose from "
                               f"{', '.join(names)}, or a profile .yaml path)", got=False, index=i)
            if x in out:
                raise _Invalid(f"{show(v[i])} is listed twice", got=False, index=i)
            out.append(x)
        return tuple(out)
    return _Field(check, ())


def schema() -> dict[str, dict[str, _Field]]:
    """Every key a project file may hold, by section, with its check ("targets" is a list)."""
    from edgetune.training.rewards import ANSWER_FORMATS, REWARD_NAMES
    from edgetune.sft_data import SFT_FORMATS
    from edgetune.training.config import METHODS

    return {
        "project": {
            "name": _text(), "version": _version(), "creator": _text(),
            "base_model": _optional(_model()), "base_model_license": _optional(_text()),
            "base_model_id": _optional(_text()),
            "license_terms": _text(),
        },
        "data": {
            "path": _optional(_file(".jsonl", ".json", ".csv")), "question_field": _text(),
            "answer_field": _text(), "reasoning_field": _optional(_text()),
            "eval_fraction": _number(0, 1), "sft_data": _optional(_file(".jsonl", ".json", ".csv")),
            "sft_format": _choice("auto", *SFT_FORMATS), "sft_steps": _integer(1),
        },
        "method": {
            "name": _choice(*(m for m in METHODS if m != "sft")),  # SFT is data.sft_data's warm start
            "rewards": _texts(REWARD_NAMES, non_empty=True),
            "answer_format": _choice("auto", *ANSWER_FORMATS),
            "warm_start": _choice("auto", "always", "never"),
        },
        "train": {
            "steps": _integer(1), "learning_rate": _optional(_number(0)),
            "num_generations": _optional(_integer(2)),
            "prompts_per_step": _integer(1), "gradient_accumulation_steps": _integer(1),
            "max_prompt_length": _integer(1), "max_completion_length": _optional(_integer(8)),
            "lora_r": _optional(_integer(1)), "lora_alpha": _optional(_integer(1)), "temperature": _number(0),
            "seed": _integer(0), "backend": _choice("auto", "trl", "unsloth"),
            "base_bits": _choice(None, 4, 16), "checkpoint_every": _integer(0),
            "sft_batch_size": _integer(1), "max_seq_length": _integer(8),
            "compile_generation": _choice(None, True, False),
            "autocast_generation": _choice(None, True, False), "gpus": _integer(1),
        },
        "persona": {
            "name": _optional(_text()), "system_prompt": _optional(_text()),
            "system_prompt_file": _optional(_file()), "greeting": _text(empty=True),
            "suggested_prompts": _texts(), "description": _text(empty=True),
        },
        "targets": {"": _targets()},  # a list, not a section
        "publish": {"repo": _optional(_repo()), "private": _boolean(),
                    "gated": _choice(False, "auto", "manual")},
    }


SECTIONS = ("project", "data", "method", "train", "persona", "targets", "publish")


def validate(doc: Any, lines: dict[str, int], base: Path,
              problems: list[tuple[int, str]]) -> dict[str, Any]:
    """The valid settings of ``doc`` ("section.key": value); each invalid one is left out and
    added to ``problems`` at its line, so that every problem is reported at once."""
    keys = schema()
    settings: dict[str, Any] = {}

    def problem(path: str, message: str) -> None:
        problems.append((lines.get(path, 1), f"{path}: {message}"))

    if doc is None:
        return settings
    if not isinstance(doc, dict):
        problem("(top level)", f"must be a mapping of sections ({', '.join(SECTIONS)}), "
                               f"got {show(doc)}")
        return settings
    for section, body in doc.items():
        if section not in keys:
            problem(section, f"unknown section{_suggest(section, SECTIONS)} (sections: "
                             f"{', '.join(SECTIONS)})")
            continue
        if section == "targets":
            entries = {"": body}
        elif body is None:
            continue  # an empty section: its defaults
        elif not isinstance(body, dict):
            problem(section, f"must be a mapping of keys, got {show(body)}")
            continue
        else:
            entries = body
        for key, value in entries.items():
            path = f"{section}.{key}" if key else section
            spec = keys[section].get(key)
            if spec is None:
                problem(path, "unknown key" + _misplaced(key, section, keys))
                continue
            try:
                settings[path] = spec.check(value, base)
            except _Invalid as exc:
                if exc.index is not None:
                    path = f"{path}[{exc.index}]"
                problem(path, f"{exc}, got {show(value)}" if exc.got else str(exc))
            except ConfigError as exc:  # a target's own profile file
                problem(path, exc.message.replace("\n", "\n  "))
    prompt_file = settings.pop("persona.system_prompt_file", None)
    if prompt_file is not None:
        if settings.get("persona.system_prompt") is not None:
            problem("persona.system_prompt_file", "give system_prompt or system_prompt_file, "
                                                  "not both")
        else:
            text = _read_prompt(prompt_file)
            if text:
                settings["persona.system_prompt"] = text
            else:
                problem("persona.system_prompt_file", f"{prompt_file} is empty or not UTF-8 text")
    return settings


def _misplaced(key: str, section: str, known: dict) -> str:
    elsewhere = [other for other, keys in known.items() if key in keys and other != section]
    if elsewhere:
        return f" (it belongs in {elsewhere[0]}: {elsewhere[0]}.{key})"
    return _suggest(key, [k for k in known[section] if k]) or \
        f" ({section} keys: {', '.join(k for k in known[section] if k)})"


def _read_prompt(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""
