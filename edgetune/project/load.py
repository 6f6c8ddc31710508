"""Reading a project file: ``load_project`` validates it and reports every problem at once,
each as ``<file>:<line>: <key>: <what>``; ``resolve_project`` puts the command line on top.

Precedence: command line > project file > defaults, where the defaults are those of a build
without a file (the built-in demo).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgetune.data import Columns
from edgetune.errors import ConfigError
from edgetune.project import DEFAULT_LICENSE_TERMS, DEFAULT_TARGETS, ProjectFile, Publish, demo_project
from edgetune.project.schema import show, validate

# Keys whose value goes straight onto the Project.
_PROJECT_ATTRS = {
    "project.name": "name", "project.version": "version", "project.creator": "creator",
    "project.base_model": "base_model", "project.base_model_license": "base_model_license",
    "project.base_model_id": "base_model_id", "method.warm_start": "warm_start",
    "data.path": "data", "data.eval_fraction": "eval_fraction", "data.sft_data": "sft_data",
    "data.sft_format": "sft_format", "data.sft_steps": "sft_steps",
    "persona.greeting": "greeting", "persona.suggested_prompts": "suggested_prompts",
}


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
    settings = validate(doc, lines, base, problems)
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
    sources = {k: "project file" for k, v in settings.items() if v is not None}
    settings.update(overrides)
    sources.update({k: "flag" for k, v in overrides.items() if v is not None})
    resolved = _resolve(settings, Path(path) if path is not None else None)
    train_sources = tuple(sorted((k.removeprefix("train."), where) for k, where in sources.items()
                                 if k.startswith("train.")))
    project = dataclasses.replace(resolved.project, train_sources=train_sources)
    return dataclasses.replace(resolved, project=project)


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
                key = key if isinstance(key, str) else show(key)
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


def _resolve(settings: Mapping[str, Any], path: Path | None) -> ProjectFile:
    """Defaults, then ``settings``: a build without a file gets exactly the CLI's old project."""

    s = {k: v for k, v in settings.items() if v is not None}
    project = demo_project()
    if "data.path" in s:  # the creator's data: named after it, no longer the demo's creator
        data = Path(s["data.path"])
        project = dataclasses.replace(project, data=data, name=data.stem, creator="edgetune user")
    if s.get("project.base_model") is not None:  # not the demo's base, creator nor licence
        project = dataclasses.replace(project, creator="edgetune user", base_model_license=None)
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
