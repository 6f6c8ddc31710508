"""The project file: ``edgetune.yaml`` holds what to build, so a build is one short command.

``load_project`` reads it into a ``ProjectFile``: the pipeline's ``Project`` plus the targets and
publish settings. Every problem is reported at once, each as ``<file>:<line>: <key>: <what>``.
``resolve_project`` applies the precedence: command line > project file > defaults, where the
defaults are those of a build without a file (the built-in demo). ``init_project`` writes a
documented example project. Paths in the file are relative to the file's folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune import resources
from edgetune.errors import ConfigError, OutputExistsError
from edgetune.data import Columns
from edgetune.training.config import TrainConfig

PROJECT_FILE = "edgetune.yaml"
TEMPLATES = resources.templates_dir()
DEFAULT_TARGETS = ("phone",)
DEFAULT_LICENSE_TERMS = "All rights reserved by the creator."  # BundleInfo's default


@dataclass(frozen=True)
class Publish:
    """Where the bundle goes on the Hugging Face Hub: recorded in the bundle at build time, and
    ``edgetune publish``'s default repo and access (gated: manual approval)."""

    repo: str  # "user/name"
    private: bool = True
    gated: bool | str = False  # False, "auto" or "manual", as the Hub's gated setting


@dataclass(frozen=True)
class ProjectFile:
    """A resolved project: what ``build`` needs, and what the file (and command line) set."""

    project: Project
    targets: tuple[str, ...] = DEFAULT_TARGETS  # profile names or profile YAML paths; first is built
    publish: Publish | None = None
    license_terms: str = DEFAULT_LICENSE_TERMS
    persona_name: str = ""  # the name chat apps show; defaults to project.name
    persona_description: str = ""
    path: Path | None = None  # the project file; None when there is none
    settings: Mapping[str, Any] = field(default_factory=dict, compare=False)  # "section.key": value


# --------------------------------------------------------------------------- the schema

@dataclass(frozen=True)
class Project:
    """What to build: the creator's data, base model, persona and training settings."""

    name: str
    data: Path
    base_model: str | None = None  # None: the built-in demo base model
    columns: Columns = Columns()
    system_prompt: str = ""
    greeting: str = "Hi! Ask me a question."
    suggested_prompts: tuple[str, ...] = ()  # shown as starters by phone apps (persona files)
    creator: str = "edgetune user"
    base_model_license: str = "other"
    version: str = "0.1.0"
    eval_fraction: float = 0.1
    train: TrainConfig = field(default_factory=TrainConfig)
    sft_data: Path | None = None  # <think>-style examples for an SFT warm start before GRPO
    sft_format: str = "auto"
    sft_steps: int = 60
    license_terms: str = "All rights reserved by the creator."
    persona_name: str | None = None  # the name chat apps show; None: the project's name
    persona_description: str = ""  # one line for app lists, never sent to the model
    publish: Publish | None = None  # the Hub repo the bundle is for: stamped into its manifest


def demo_project() -> Project:
    from edgetune.demo import DEMO_DATA, DEMO_NAME, SYSTEM_PROMPT

    return Project(name=DEMO_NAME, data=DEMO_DATA, system_prompt=SYSTEM_PROMPT,
                   greeting="Hi! Ask me which number is larger, or a short word problem.",
                   suggested_prompts=("Which is larger, 9.9 or 9.11?",
                                      "It is 3 degrees and drops by 8. What is it now?"),
                   creator="edgetune demo", base_model_license="apache-2.0",
                   train=TrainConfig(system_prompt=SYSTEM_PROMPT))


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


def _show(value: Any) -> str:
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
    return f" (did you mean {_show(close[0])}?)" if close else ""


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
        raise _Invalid(f"must be one of {', '.join(_show(x) for x in values)}, got {_show(v)}"
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
                raise _Invalid(f"unknown entry {_show(x)}{_suggest(x, choices)} (choose from "
                               f"{', '.join(choices)})", got=False, index=i)
            if x in v[:i]:
                raise _Invalid(f"{_show(x)} is listed twice", got=False, index=i)
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
            raise _Invalid(f"must be a {', '.join(suffixes)} file, got {_show(v)}", got=False)
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
                raise _Invalid(f"unknown target {_show(x)}{_suggest(x, names)} (choose from "
                               f"{', '.join(names)}, or a profile .yaml path)", got=False, index=i)
            if x in out:
                raise _Invalid(f"{_show(v[i])} is listed twice", got=False, index=i)
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
            "base_model": _optional(_model()), "base_model_license": _text(),
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
        },
        "train": {
            "steps": _integer(1), "learning_rate": _number(0), "num_generations": _integer(2),
            "prompts_per_step": _integer(1), "gradient_accumulation_steps": _integer(1),
            "max_prompt_length": _integer(1), "max_completion_length": _integer(8),
            "lora_r": _integer(1), "lora_alpha": _integer(1), "temperature": _number(0),
            "seed": _integer(0), "backend": _choice("auto", "trl", "unsloth"),
            "base_bits": _choice(None, 4, 16), "checkpoint_every": _integer(0),
            "sft_batch_size": _integer(1), "max_seq_length": _integer(8),
            "compile_generation": _choice(None, True, False), "gpus": _integer(1),
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
# Keys whose value goes straight onto the Project.
_PROJECT_ATTRS = {
    "project.name": "name", "project.version": "version", "project.creator": "creator",
    "project.base_model": "base_model", "project.base_model_license": "base_model_license",
    "data.path": "data", "data.eval_fraction": "eval_fraction", "data.sft_data": "sft_data",
    "data.sft_format": "sft_format", "data.sft_steps": "sft_steps",
    "persona.greeting": "greeting", "persona.suggested_prompts": "suggested_prompts",
}


# --------------------------------------------------------------------------- reading

def load_project(path: str | Path) -> ProjectFile:
    """Read and validate a project file; every problem is reported in one ConfigError."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConfigError(f"{where}: project file not found",
                          hint="create one with `edgetune init DIR`, or check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot be read ({exc})", hint="save it as UTF-8 text") from None
    doc, lines, problems = _compose(text, where)
    base = Path(os.path.abspath(path)).parent
    settings = _validate(doc, lines, base, problems)
    resolved = _resolve(settings, path)
    _check_persona(resolved, lines, problems)  # invalid values were left out: defaults stand in
    if problems:
        problems.sort(key=lambda p: p[0])
        lines_out = [f"{where}:{line}: {message}" for line, message in problems]
        n = len(lines_out)
        err = ConfigError(f"invalid project file {where} ({n} problem{'s' if n > 1 else ''}):\n  "
                          + "\n  ".join(lines_out),
                          hint="fix these in the file; `edgetune init DIR` writes a documented "
                               "example")
        err.problems = tuple(lines_out)
        raise err
    return resolved


def resolve_project(path: str | Path | None, overrides: Mapping[str, Any]) -> ProjectFile:
    """The project file's settings (if any) with ``overrides`` ("section.key": value) on top.

    Overrides come from the command line: paths relative to the current directory, values
    already checked by the option types.
    """
    settings = dict(load_project(path).settings) if path is not None else {}
    settings.update(overrides)
    return _resolve(settings, Path(path) if path is not None else None)


def _compose(text: str, where: str) -> tuple[Any, dict[str, int], list[tuple[int, str]]]:
    """The YAML as plain values, the line of every key ("train.steps", "targets[1]"), and
    duplicate-key problems."""
    import yaml
    from yaml.constructor import SafeConstructor

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{at}: not valid YAML ({getattr(exc, 'problem', None) or exc})",
                          hint="fix the YAML syntax (indent with spaces; quote text with ': ')"
                          ) from None
    constructor = SafeConstructor()
    lines: dict[str, int] = {}
    problems: list[tuple[int, str]] = []

    def walk(node, path: str) -> Any:
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = walk(key_node, path)
                key = key if isinstance(key, str) else _show(key)
                child = f"{path}.{key}" if path else key
                line = key_node.start_mark.line + 1
                if key in out:
                    problems.append((line, f"{child}: duplicate key (also on line {lines[child]})"))
                    continue
                lines[child] = line
                out[key] = walk(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                lines[f"{path}[{i}]"] = item.start_mark.line + 1
                items.append(walk(item, f"{path}[{i}]"))
            return items
        try:
            return constructor.construct_object(node)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}:{node.start_mark.line + 1}: {path}: unsupported value "
                              f"({getattr(exc, 'problem', None) or exc})",
                              hint="use plain YAML values: text, numbers, true/false, null, "
                                   "lists and mappings") from None

    return (None if root is None else walk(root, "")), lines, problems


def _validate(doc: Any, lines: dict[str, int], base: Path,
              problems: list[tuple[int, str]]) -> dict[str, Any]:
    keys = schema()
    settings: dict[str, Any] = {}

    def problem(path: str, message: str) -> None:
        problems.append((lines.get(path, 1), f"{path}: {message}"))

    if doc is None:
        return settings
    if not isinstance(doc, dict):
        problem("(top level)", f"must be a mapping of sections ({', '.join(SECTIONS)}), "
                               f"got {_show(doc)}")
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
            problem(section, f"must be a mapping of keys, got {_show(body)}")
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
                problem(path, f"{exc}, got {_show(value)}" if exc.got else str(exc))
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


def _resolve(settings: Mapping[str, Any], path: Path | None) -> ProjectFile:
    """Defaults, then ``settings``: a build without a file gets exactly the CLI's old project."""

    s = {k: v for k, v in settings.items() if v is not None}
    project = demo_project()
    if "data.path" in s:  # the creator's data: named after it, no longer the demo's creator
        data = Path(s["data.path"])
        project = dataclasses.replace(project, data=data, name=data.stem, creator="edgetune user")
    system_prompt = s.get("persona.system_prompt", project.system_prompt)
    answer_format = s.get("method.answer_format", "auto")
    if answer_format == "auto":
        # After SFT on <think> data the model writes <think>CoT</think> answer: reward that.
        answer_format = "r1" if "data.sft_data" in s else project.train.answer_format
    train = {k.removeprefix("train."): v for k, v in s.items() if k.startswith("train.")}
    if "method.rewards" in s:
        train["rewards"] = tuple(s["method.rewards"])
    project = dataclasses.replace(
        project, system_prompt=system_prompt,
        columns=Columns(question=s.get("data.question_field", "question"),
                        answer=s.get("data.answer_field", "answer"),
                        reasoning=s.get("data.reasoning_field")),
        train=dataclasses.replace(project.train, system_prompt=system_prompt,
                                  answer_format=answer_format, **train),
        license_terms=s.get("project.license_terms", DEFAULT_LICENSE_TERMS),
        persona_name=s.get("persona.name"), persona_description=s.get("persona.description", ""),
        **{attr: s[key] for key, attr in _PROJECT_ATTRS.items() if key in s})
    publish = (Publish(repo=s["publish.repo"], private=s.get("publish.private", True),
                       gated=s.get("publish.gated", False)) if "publish.repo" in s else None)
    project = dataclasses.replace(project, publish=publish)  # the bundle records the repo
    return ProjectFile(project=project, targets=tuple(s.get("targets", DEFAULT_TARGETS)),
                       publish=publish,
                       license_terms=s.get("project.license_terms", DEFAULT_LICENSE_TERMS),
                       persona_name=s.get("persona.name", project.name),
                       persona_description=s.get("persona.description", ""),
                       path=path, settings=dict(settings))


def _check_persona(resolved: ProjectFile, lines: dict[str, int],
                   problems: list[tuple[int, str]]) -> None:
    """The limits chat apps' persona files impose (edgetune.personas), checked before a build."""
    from edgetune.personas import Persona

    p = resolved.project
    try:
        Persona(name=resolved.persona_name, system_prompt=p.system_prompt, greeting=p.greeting,
                suggested_prompts=p.suggested_prompts, description=resolved.persona_description)
    except ConfigError as exc:
        for part in exc.message.removeprefix("invalid persona: ").split("; "):
            key = next((k for k in ("suggested_prompts", "system_prompt", "description",
                                    "greeting", "name") if k in part), None)
            path = f"persona.{key}" if key else "persona"
            if key == "name" and path not in lines:
                path = "project.name"  # the persona is named after the project
            if key == "system_prompt" and path not in lines:
                path = "persona.system_prompt_file"
            problems.append((lines.get(path, lines.get("persona", 1)), f"{path}: {part}"))


# --------------------------------------------------------------------------- edgetune init

@dataclass(frozen=True)
class Written:
    path: Path
    action: str  # "wrote", "replaced", "kept" or "updated"


GITIGNORE_TEMPLATE = "gitignore"  # shipped without the dot, so it never applies to this repo


def init_project(directory: str | Path, *, name: str | None = None,
                 force: bool = False) -> list[Written]:
    """Write ``edgetune.yaml``, example Q&A data and a ``.gitignore`` into ``directory``.

    An existing ``edgetune.yaml`` is refused unless ``force``; existing data is never
    overwritten, and an existing ``.gitignore`` only gains the lines it lacks.
    """
    from edgetune.demo import DEMO_DATA

    directory = Path(directory)
    config = directory / PROJECT_FILE
    if directory.exists() and not directory.is_dir():
        raise OutputExistsError(f"{directory} is a file", hint="choose a folder for the project")
    if config.exists() and not force:
        raise OutputExistsError(f"{config} already exists",
                                hint="pass --force to replace it (data and .gitignore are kept), "
                                     "or choose another folder")
    name = name or Path(os.path.abspath(directory)).name or "my-model"
    written: list[Written] = []
    data = directory / "data" / "qa.jsonl"
    if data.exists():
        written.append(Written(data, "kept"))
    else:
        data.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEMO_DATA, data)
        written.append(Written(data, "wrote"))
    written.append(_gitignore(directory / ".gitignore"))
    text = (TEMPLATES / PROJECT_FILE).read_text(encoding="utf-8")
    existed = config.exists()
    config.write_text(text.replace('"{{name}}"', json.dumps(name, ensure_ascii=False)),
                      encoding="utf-8")
    written.append(Written(config, "replaced" if existed else "wrote"))
    return written


def _gitignore(path: Path) -> Written:
    template = (TEMPLATES / GITIGNORE_TEMPLATE).read_text(encoding="utf-8")
    if not path.exists():
        path.write_text(template, encoding="utf-8")
        return Written(path, "wrote")
    current = path.read_text(encoding="utf-8", errors="replace")
    have = {line.strip() for line in current.splitlines()}
    missing = [line for line in template.splitlines()
               if line.strip() and not line.startswith("#") and line.strip() not in have]
    if not missing:
        return Written(path, "kept")
    sep = "" if current.endswith("\n") or not current else "\n"
    path.write_text(current + sep + "# added by edgetune init\n" + "\n".join(missing) + "\n",
                    encoding="utf-8")
    return Written(path, "updated")
