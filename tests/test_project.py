"""The project file (edgetune.yaml) and `edgetune init`: loading, every problem at once with its
line, paths relative to the file, and the precedence command line > file > defaults.

Precedence tests replace ``edgetune.pipeline.build`` to see the Project the CLI resolved (the
seam between the CLI and the pipeline); one slow test builds a real bundle from `edgetune init`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
import yaml
from click.testing import CliRunner

from edgetune.cli import cli
from edgetune.errors import ConfigError, EdgetuneError
from edgetune.project import Project, demo_project
from edgetune.profiles import available_profiles
from edgetune.project import DEFAULT_LICENSE_TERMS, PROJECT_FILE, TEMPLATES, Publish
from edgetune.project.init import init_project
from edgetune.project.load import load_project
from edgetune.project.schema import schema
from edgetune.training.config import TrainConfig


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No debug mode, and a working directory without an edgetune.yaml of its own."""
    monkeypatch.delenv("EDGETUNE_DEBUG", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


def _run(*args) -> click.testing.Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _err_lines(result: click.testing.Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(("Error:", "Hint:"))]


def _project_dir(tmp_path: Path, name: str = "coach") -> Path:
    init_project(tmp_path / name)
    return tmp_path / name


def _edit(config: Path, old: str, new: str) -> None:
    text = config.read_text()
    assert text.count(old) == 1, old
    config.write_text(text.replace(old, new))


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_project(path)
    assert err.value.message.splitlines()[1:] == [f"  {p}" for p in err.value.problems]
    return list(err.value.problems)


# --------------------------------------------------------------------------- init + load

def test_init_writes_a_project_that_loads_as_the_demo(tmp_path: Path):
    written = init_project(tmp_path / "coach")
    root = tmp_path / "coach"
    assert [(w.path, w.action) for w in written] == [
        (root / "data" / "qa.jsonl", "wrote"), (root / ".gitignore", "wrote"),
        (root / PROJECT_FILE, "wrote")]
    from edgetune.demo import DEMO_DATA

    assert (root / "data" / "qa.jsonl").read_bytes() == DEMO_DATA.read_bytes()
    ignored = (root / ".gitignore").read_text().splitlines()
    assert {"edgetune-out/", "*.key", "*.gguf", ".cache/"} <= set(ignored)

    loaded = load_project(root / PROJECT_FILE)
    # The demo, trained on the copied data under the folder's name, by "edgetune user": exactly
    # what `edgetune build --data coach/data/qa.jsonl --name coach` builds.
    assert loaded.project == dataclasses.replace(
        demo_project(), name="coach", data=root / "data" / "qa.jsonl", creator="edgetune user")
    assert loaded.targets == ("phone",) and loaded.publish is None
    assert loaded.persona_name == "coach" and loaded.persona_description == ""
    assert loaded.license_terms == DEFAULT_LICENSE_TERMS
    assert loaded.path == root / PROJECT_FILE


def test_init_project_is_what_the_command_line_builds(tmp_path: Path, captured):
    root = _project_dir(tmp_path)
    data = root / "data" / "qa.jsonl"
    _build_captured(captured, "--data", data, "--name", "coach")
    assert captured[-1].project == load_project(root / PROJECT_FILE).project


def test_a_name_with_quotes_round_trips(tmp_path: Path):
    init_project(tmp_path / "x", name='Dr. "Sums": maths')
    assert load_project(tmp_path / "x" / PROJECT_FILE).project.name == 'Dr. "Sums": maths'


def test_the_bundle_default_terms_are_ours():
    from edgetune.bundle import BundleInfo

    assert {f.name: f.default for f in dataclasses.fields(BundleInfo)}["license_terms"] == \
        DEFAULT_LICENSE_TERMS


def test_an_empty_project_file_is_the_demo(tmp_path: Path):
    (tmp_path / PROJECT_FILE).write_text("# nothing yet\n")
    loaded = load_project(tmp_path / PROJECT_FILE)
    assert loaded.project == demo_project()
    assert loaded.targets == ("phone",)


# --------------------------------------------------------------------------- the shipped template

def _template_keys() -> dict[str, int]:
    """"section.key" (or "targets") -> its line in the shipped template."""
    root = yaml.compose((TEMPLATES / PROJECT_FILE).read_text(), Loader=yaml.SafeLoader)
    keys = {}
    for section_node, body in root.value:
        section = section_node.value
        if isinstance(body, yaml.MappingNode):
            for key_node, _ in body.value:
                keys[f"{section}.{key_node.value}"] = key_node.start_mark.line
        else:
            keys[section] = section_node.start_mark.line
    return keys


def _comment_above(lines: list[str], index: int) -> str:
    above = []
    while index > 0 and lines[index - 1].strip().startswith("#"):
        index -= 1
        above.insert(0, lines[index].strip().lstrip("#").strip())
    return " ".join(above)


def _schema_keys() -> dict[str, object]:
    return {(f"{section}.{key}" if key else section): spec
            for section, keys in schema().items() for key, spec in keys.items()}


def test_the_template_holds_every_key_and_documents_each():
    lines = (TEMPLATES / PROJECT_FILE).read_text().splitlines()
    keys = _template_keys()
    assert list(keys) == list(_schema_keys()), "the template and the schema must list the same keys"
    for key, spec in _schema_keys().items():
        doc = _comment_above(lines, keys[key])
        assert "Default" in doc, f"{key}: its comment must give the default"
        allowed = available_profiles() if key == "targets" else spec.allowed
        for value in allowed:  # every allowed value is named
            shown = _yaml_word(value)
            assert re.search(rf"(?<![\w-]){re.escape(shown)}(?![\w-])", doc), f"{key}: {shown}"


def _yaml_word(value) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def test_the_train_section_matches_train_config():
    """Like torchtune's config test: a key the code does not take fails here, not in a build."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    train_keys = set(schema()["train"])
    assert train_keys <= set(fields)
    # Everything else is set elsewhere in the file: method.*, persona.system_prompt.
    assert set(fields) - train_keys == {"method", "rewards", "answer_format", "system_prompt"}
    # The template states TrainConfig's defaults, or null where edgetune fits the setting to the
    # model, the device and the data (training.defaults.FITTED).
    from edgetune.training.defaults import FITTED

    train = yaml.safe_load((TEMPLATES / PROJECT_FILE).read_text())["train"]
    assert train == {k: None if k in FITTED else fields[k].default for k in train}


def test_the_project_keys_match_project():
    attrs = {f.name for f in dataclasses.fields(Project)}
    from edgetune.project.load import _PROJECT_ATTRS

    assert set(_PROJECT_ATTRS.values()) <= attrs
    assert set(_PROJECT_ATTRS) <= set(_schema_keys())


# --------------------------------------------------------------------------- problems

BAD = """\
project:
  name: coach
  version: 1.0
  creater: me
data:
  path: missing.jsonl
  eval_fraction: 1.5
method:
  rewards: [correctness, corectness]
  answer_format: thinking
train:
  steps: ten
  setps: 3
  backend: unslot
  base_bits: 8
  answer_format: r1
persona:
  greeting: 3
  suggested_prompts: [a, a]
targets: [phnoe]
publish:
  repo: nouser
trian: {}
"""


def test_every_problem_is_reported_at_once_with_its_line(tmp_path: Path):
    path = tmp_path / PROJECT_FILE
    path.write_text(BAD)
    names = "desktop, phone, phone-4gb, phone-6gb, phone-8gb, tablet"
    where = str(path)
    assert _problems(path) == [f"{where}:{p}" for p in [
        '3: project.version: must be text like "1.0.0"; write it in quotes (YAML reads 1.0 as a '
        'number)',
        '4: project.creater: unknown key (did you mean "creator"?)',
        f"6: data.path: file not found: {tmp_path / 'missing.jsonl'} (paths are relative to the "
        "project file's folder)",
        "7: data.eval_fraction: must be a number above 0 and below 1, got 1.5",
        '9: method.rewards[1]: unknown entry "corectness" (did you mean "correctness"?) (choose '
        'from correctness, number, strict_format, soft_format, xml_count)',
        '10: method.answer_format: must be one of "auto", "reasoning", "think", "r1", got '
        '"thinking" (did you mean "think"?)',
        '12: train.steps: must be an integer >= 1, got "ten"',
        '13: train.setps: unknown key (did you mean "steps"?)',
        '14: train.backend: must be one of "auto", "trl", "unsloth", got "unslot" (did you mean '
        '"unsloth"?)',
        "15: train.base_bits: must be one of null, 4, 16, got 8",
        "16: train.answer_format: unknown key (it belongs in method: method.answer_format)",
        "18: persona.greeting: must be text, got 3",
        '19: persona.suggested_prompts[1]: "a" is listed twice',
        f'20: targets[0]: unknown target "phnoe" (did you mean "phone"?) (choose from {names}, '
        "or a profile .yaml path)",
        '22: publish.repo: must be a Hugging Face repo id like "user/name", got "nouser"',
        "23: trian: unknown section (did you mean \"train\"?) (sections: project, data, method, "
        "train, persona, targets, publish)",
    ]]


def test_the_cli_prints_every_problem_and_builds_nothing(tmp_path: Path, captured):
    path = tmp_path / PROJECT_FILE
    path.write_text(BAD)
    result = _run("build", "--config", path, "--out", tmp_path / "out")
    assert result.exit_code == 1 and not captured
    assert result.stderr.startswith(f"Error: invalid project file {path} (16 problems):\n"
                                    f"  {path}:3: project.version: ")
    assert f"  {path}:12: train.steps: must be an integer >= 1, got \"ten\"\n" in result.stderr
    assert _err_lines(result)[-1] == ("Hint: fix these in the file; `edgetune init DIR` writes a "
                                      "documented example")
    assert "Traceback" not in result.output + result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("text", "problem"), [
    ("train:\n  lora_rank: 8\n", 'train.lora_rank: unknown key (did you mean "lora_r"?)'),
    ("train:\n  learning-rate: 1.0e-5\n",
     'train.learning-rate: unknown key (did you mean "learning_rate"?)'),
    ("persona:\n  greting: hi\n", 'persona.greting: unknown key (did you mean "greeting"?)'),
    ("data:\n  steps: 3\n", "data.steps: unknown key (it belongs in train: train.steps)"),
    ("project:\n  colour: red\n", "project.colour: unknown key (project keys: name, version, "
                                  "creator, base_model, base_model_license, base_model_id, "
                                  "license_terms)"),
    ("target: [phone]\n", 'target: unknown section (did you mean "targets"?) (sections: project, '
                          'data, method, train, persona, targets, publish)'),
])
def test_unknown_keys_suggest_the_known_one(tmp_path: Path, text: str, problem: str):
    path = tmp_path / PROJECT_FILE
    path.write_text(text)
    assert _problems(path) == [f"{path}:{len(text.splitlines())}: {problem}"]


@pytest.mark.parametrize(("text", "problem"), [
    ("train: [1, 2]\n", "1: train: must be a mapping of keys, got a list"),
    ("- 1\n", "1: (top level): must be a mapping of sections (project, data, method, train, "
              "persona, targets, publish), got a list"),
    ("targets: phone\n", '1: targets: must be a non-empty list of target names, e.g. [phone], '
                         'got "phone"'),
    ("train:\n  steps: 2\n  steps: 3\n", "3: train.steps: duplicate key (also on line 2)"),
    ("train:\n  steps: 2.0\n", "2: train.steps: must be an integer >= 1, got 2.0"),
    ("train:\n  steps: true\n", "2: train.steps: must be an integer >= 1, got true"),
    ("train:\n  temperature: 0\n", "2: train.temperature: must be a number > 0, got 0"),
    ("train:\n  compile_generation: 1\n",
     "2: train.compile_generation: must be one of null, true, false, got 1"),
    ("project:\n  version: '1.0'\n",
     '2: project.version: must be a semantic version like "1.0.0", got "1.0"'),
    ("project:\n  name: '  '\n", '2: project.name: must be non-empty text, got "  "'),
    ("data:\n  path: qa.txt\n", '2: data.path: must be a .jsonl, .json, .csv file, got "qa.txt"'),
    ("publish:\n  gated: yes\n", '2: publish.gated: must be one of false, "auto", "manual", '
                                 'got true'),
    ("persona:\n  greeting: " + "x" * 2001 + "\n",
     "2: persona.greeting: greeting has 2001 characters (at most 2000)"),
    ("project:\n  name: " + "n" * 65 + "\n", "2: project.name: name has 65 characters (at most 64)"),
    ("persona:\n  system_prompt: 'Say \"\"\"'\n",
     '2: persona.system_prompt: system_prompt must not contain """'),
    ("persona:\n  system_prompt: hi\n  system_prompt_file: qa.txt\n",
     "3: persona.system_prompt_file: give system_prompt or system_prompt_file, not both"),
])
def test_each_kind_of_problem(tmp_path: Path, text: str, problem: str):
    (tmp_path / "qa.txt").write_text("hello\n")
    path = tmp_path / PROJECT_FILE
    path.write_text(text)
    assert _problems(path) == [f"{path}:{problem}"]


def test_yaml_syntax_errors_name_the_line(tmp_path: Path):
    path = tmp_path / PROJECT_FILE
    path.write_text("train:\n  steps: 3\n   seed: 1\n")
    with pytest.raises(ConfigError) as err:
        load_project(path)
    assert err.value.message == f"{path}:3: not valid YAML (mapping values are not allowed here)"


def test_a_missing_project_file(tmp_path: Path):
    result = _run("build", "--config", tmp_path / "nope.yaml")
    assert result.exit_code == 1
    assert _err_lines(result) == [f"Error: {tmp_path / 'nope.yaml'}: project file not found",
                                  "Hint: create one with `edgetune init DIR`, or check the path"]


# --------------------------------------------------------------------------- values and paths

def test_paths_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "proj"
    (root / "conf").mkdir(parents=True)
    (root / "shared").mkdir()
    (root / "shared" / "qa.csv").write_text("question,answer\n1+1?,2\n2+2?,4\n")
    (root / "shared" / "cot.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (root / "conf" / "persona.txt").write_text("  Be brief.\n")
    (root / "conf" / "mine.yaml").write_text(
        Path(__file__).resolve().parents[1].joinpath("quant_profiles", "tablet.yaml").read_text()
        .replace("name: tablet", "name: mine"))
    config = root / "conf" / PROJECT_FILE
    config.write_text("data:\n  path: ../shared/qa.csv\n  sft_data: ../shared/cot.jsonl\n"
                      "persona:\n  system_prompt_file: persona.txt\n"
                      "targets: [mine.yaml, phone]\n")
    monkeypatch.chdir(tmp_path)  # not the file's folder
    loaded = load_project(Path("proj/conf") / PROJECT_FILE)
    assert loaded.project.data == root / "shared" / "qa.csv"
    assert loaded.project.data.is_absolute()
    assert loaded.project.sft_data == root / "shared" / "cot.jsonl"
    assert loaded.project.name == "qa"  # named after the data, as --data does
    assert loaded.project.system_prompt == loaded.project.train.system_prompt == "Be brief."
    assert loaded.project.train.answer_format == "r1"  # auto, after an SFT warm start
    assert loaded.targets == (str(root / "conf" / "mine.yaml"), "phone")


def test_a_base_model_folder_beside_the_file_is_a_path_else_a_hub_id(tmp_path: Path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    path = tmp_path / PROJECT_FILE
    path.write_text("project:\n  base_model: models/mine\n")
    assert load_project(path).project.base_model == str(tmp_path / "models" / "mine")
    path.write_text("project:\n  base_model: Qwen/Qwen2.5-1.5B-Instruct\n")
    assert load_project(path).project.base_model == "Qwen/Qwen2.5-1.5B-Instruct"


def test_settings_reach_the_project(tmp_path: Path):
    root = _project_dir(tmp_path)
    config = root / PROJECT_FILE
    _edit(config, "  steps: 30\n", "  steps: 12\n")
    _edit(config, "learning_rate: null", "learning_rate: 1e-5")  # YAML 1.1 reads this as text
    _edit(config, "rewards: [correctness, number, strict_format, soft_format, xml_count]",
          "rewards: [correctness, strict_format]")
    _edit(config, "answer_format: auto", "answer_format: think")
    _edit(config, "  base_bits: null", "  base_bits: 4")
    _edit(config, "version: 0.1.0", "version: 1.2.0-rc.1")
    _edit(config, "  name: null", "  name: Coach")
    _edit(config, 'description: ""', "description: Sums, kindly.")
    _edit(config, "reasoning_field: null", "reasoning_field: why")
    _edit(config, "targets: [phone]", "targets: [tablet, phone-4gb]")
    _edit(config, "repo: null", "repo: alice/coach")
    _edit(config, "gated: false", "gated: manual")
    loaded = load_project(config)
    train = loaded.project.train
    assert (train.steps, train.learning_rate, train.rewards, train.answer_format,
            train.base_bits) == (12, 1e-5, ("correctness", "strict_format"), "think", 4)
    assert loaded.project.version == "1.2.0-rc.1"
    assert loaded.project.columns.reasoning == "why"
    assert (loaded.persona_name, loaded.persona_description) == ("Coach", "Sums, kindly.")
    assert loaded.targets == ("tablet", "phone-4gb")
    assert loaded.publish == Publish(repo="alice/coach", private=True, gated="manual")


# --------------------------------------------------------------------------- edgetune init (CLI)

def test_init_prints_what_it_wrote_and_the_next_command(tmp_path: Path):
    result = _run("init", tmp_path / "coach")
    assert result.exit_code == 0, result.output
    root = tmp_path / "coach"
    assert result.stdout.splitlines() == [
        f"wrote    {root / 'data' / 'qa.jsonl'}", f"wrote    {root / '.gitignore'}",
        f"wrote    {root / PROJECT_FILE}",
        f"Next: edit {root / PROJECT_FILE}, then run: edgetune build --config {root / PROJECT_FILE}"]


def test_init_here_suggests_a_plain_build():
    result = _run("init")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "Next: edit edgetune.yaml, then run: edgetune build"
    assert load_project(PROJECT_FILE).project.name == "cwd"


def test_init_refuses_an_existing_project_file(tmp_path: Path):
    root = tmp_path / "coach"
    assert _run("init", root).exit_code == 0
    (root / PROJECT_FILE).write_text("train:\n  steps: 3\n")
    (root / "data" / "qa.jsonl").write_text('{"question": "mine?", "answer": "1"}\n')
    result = _run("init", root)
    assert result.exit_code == 1
    assert _err_lines(result) == [f"Error: {root / PROJECT_FILE} already exists",
                                  "Hint: pass --force to replace it (data and .gitignore are "
                                  "kept), or choose another folder"]
    assert (root / PROJECT_FILE).read_text() == "train:\n  steps: 3\n"

    result = _run("init", root, "--force", "--name", "again")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:3] == [f"kept     {root / 'data' / 'qa.jsonl'}",
                                              f"kept     {root / '.gitignore'}",
                                              f"replaced {root / PROJECT_FILE}"]
    assert (root / "data" / "qa.jsonl").read_text() == '{"question": "mine?", "answer": "1"}\n'
    assert load_project(root / PROJECT_FILE).project.name == "again"


def test_init_adds_only_missing_lines_to_a_gitignore(tmp_path: Path):
    root = tmp_path / "coach"
    root.mkdir()
    (root / ".gitignore").write_text("*.gguf\nnotes/")
    init_project(root)
    lines = (root / ".gitignore").read_text().splitlines()
    assert lines[:3] == ["*.gguf", "notes/", "# added by edgetune init"]
    assert lines.count("*.gguf") == 1 and "*.key" in lines and "edgetune-out/" in lines


def test_init_into_a_file_is_refused(tmp_path: Path):
    (tmp_path / "f").write_text("")
    result = _run("init", tmp_path / "f")
    assert result.exit_code == 2  # Click: a folder is expected


# --------------------------------------------------------------------------- build: precedence

class _Captured(EdgetuneError):
    pass


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[SimpleNamespace]:
    """What `edgetune build` hands to pipeline.build; the build itself stops there."""
    calls: list[SimpleNamespace] = []

    def fake_build(project, profile, out, **kwargs):
        calls.append(SimpleNamespace(project=project, profile=profile, out=out, **kwargs))
        raise _Captured("captured")

    monkeypatch.setattr("edgetune.pipeline.build", fake_build)
    return calls


def _build_captured(captured: list, *args) -> click.testing.Result:
    result = _run("build", *args)
    assert _err_lines(result) == ["Error: captured"], result.output + result.stderr
    return result


def test_no_project_file_builds_the_demo_exactly_as_before(captured):
    result = _build_captured(captured, "--target", "phone")
    assert captured[-1].project == demo_project()
    assert captured[-1].profile.name == "phone"
    assert "note:" not in result.stderr
    _build_captured(captured)
    assert captured[-1].project == demo_project() and captured[-1].profile.name == "phone"


def _old_cli_project(data=None, base_model=None, name=None, system_prompt=None, sft_data=None,
                     question_field="question", steps=None) -> Project:
    """The Project `build` made before project files (edgetune 0.1.0's cli.build)."""
    from edgetune.data import Columns

    project = demo_project()
    if data is not None:
        project = dataclasses.replace(project, data=data, base_model=base_model,
                                      name=name or data.stem, creator="edgetune user")
    elif base_model is not None:
        project = dataclasses.replace(project, base_model=base_model)
    if base_model is not None:
        # Since "Real weights, part 1": a real base is neither credited to the demo's creator
        # nor assumed to carry the demo's licence (the build reads it from the model's card).
        project = dataclasses.replace(project, creator="edgetune user", base_model_license=None)
    if name:
        project = dataclasses.replace(project, name=name)
    project = dataclasses.replace(project, columns=Columns(question=question_field))
    train = project.train
    if system_prompt is not None:
        project = dataclasses.replace(project, system_prompt=system_prompt)
        train = dataclasses.replace(train, system_prompt=system_prompt)
    if sft_data is not None:
        train = dataclasses.replace(train, answer_format="r1")
    if steps is not None:
        train = dataclasses.replace(train, steps=steps)
    return dataclasses.replace(project, train=train, sft_data=sft_data)


def test_command_line_only_builds_as_before(tmp_path: Path, captured):
    data, cot, prompt = tmp_path / "qa.jsonl", tmp_path / "cot.jsonl", tmp_path / "p.txt"
    prompt.write_text("Be brief.\n")
    cases = [
        ({"base_model": "some/model"}, ["--base-model", "some/model"]),
        ({"name": "x"}, ["--name", "x"]),
        ({"data": data}, ["--data", data]),
        ({"data": data, "base_model": "m", "name": "n", "system_prompt": "Be brief.",
          "sft_data": cot, "question_field": "q", "steps": 3},
         ["--data", data, "--base-model", "m", "--name", "n", "--system-prompt-file", prompt,
          "--sft-data", cot, "--question-field", "q", "--steps", "3"]),
    ]
    for old, args in cases:
        _build_captured(captured, *args)
        # train_sources only records where each setting came from (not part of any stage key)
        built = dataclasses.replace(captured[-1].project, train_sources=())
        assert built == _old_cli_project(**old), args


def test_build_uses_the_project_file(tmp_path: Path, captured):
    root = _project_dir(tmp_path)
    config = root / PROJECT_FILE
    _edit(config, "  steps: 30\n", "  steps: 12\n")
    _edit(config, "backend: auto", "backend: trl")
    _edit(config, "targets: [phone]", "targets: [tablet]")
    _build_captured(captured, "--config", config, "--out", tmp_path / "out")
    call = captured[-1]
    assert dataclasses.replace(call.project, train_sources=()) == load_project(config).project
    assert dict(call.project.train_sources)["steps"] == "project file"
    assert call.project.train == dataclasses.replace(demo_project().train, steps=12, backend="trl")
    assert call.profile.name == "tablet" and call.out == tmp_path / "out"


def test_the_command_line_beats_the_file_beats_the_defaults(tmp_path: Path, captured):
    root = _project_dir(tmp_path)
    config = root / PROJECT_FILE
    _edit(config, "  steps: 30\n", "  steps: 12\n")
    _edit(config, "learning_rate: null", "learning_rate: 1.0e-5")
    _edit(config, "backend: auto", "backend: trl")
    _edit(config, "question_field: question", "question_field: prompt")
    _edit(config, "sft_steps: 60", "sft_steps: 9")
    _edit(config, "targets: [phone]", "targets: [tablet]")
    prompt = tmp_path / "p.txt"
    prompt.write_text("Be brief.\n")
    _build_captured(captured, "--config", config, "--steps", "7", "--target", "desktop",
                    "--name", "cli-name", "--system-prompt-file", prompt, "--base-bits", "16")
    call = captured[-1]
    project, train = call.project, call.project.train
    assert (train.steps, train.base_bits) == (7, 16)  # command line
    assert (train.learning_rate, train.backend) == (1e-5, "trl")  # file: a default --backend auto
    assert project.columns.question == "prompt" and project.sft_steps == 9  # does not clobber it
    assert train.lora_r == 16 and project.eval_fraction == 0.1  # defaults
    assert project.name == "cli-name"
    assert project.system_prompt == train.system_prompt == "Be brief."
    assert call.profile.name == "desktop"


def test_sft_data_on_the_command_line_picks_r1_unless_the_file_chose(tmp_path: Path, captured):
    root = _project_dir(tmp_path)
    config = root / PROJECT_FILE
    cot = tmp_path / "cot.jsonl"
    _build_captured(captured, "--config", config, "--sft-data", cot)
    assert captured[-1].project.train.answer_format == "r1"
    assert captured[-1].project.sft_data == cot
    _edit(config, "answer_format: auto", "answer_format: think")
    _build_captured(captured, "--config", config, "--sft-data", cot)
    assert captured[-1].project.train.answer_format == "think"
    _build_captured(captured, "--config", config, "--sft-data", cot, "--answer-format", "reasoning")
    assert captured[-1].project.train.answer_format == "reasoning"


def test_a_project_file_in_the_current_folder_is_used(tmp_path: Path, captured,
                                                      monkeypatch: pytest.MonkeyPatch):
    root = _project_dir(tmp_path)
    _edit(root / PROJECT_FILE, "targets: [phone]", "targets: [phone-8gb]")
    monkeypatch.chdir(root)
    result = _build_captured(captured, "--steps", "4")
    assert "note: using ./edgetune.yaml (pass --config to choose another project file)" in \
        " ".join(result.stderr.split())
    assert captured[-1].project.name == "coach" and captured[-1].project.train.steps == 4
    assert captured[-1].profile.name == "phone-8gb"
    assert captured[-1].project.data == root / "data" / "qa.jsonl"


def test_several_targets_build_each_into_its_own_folder(tmp_path: Path, captured):
    root = _project_dir(tmp_path)
    _edit(root / PROJECT_FILE, "targets: [phone]", "targets: [tablet, phone]")
    _build_captured(captured, "--config", root / PROJECT_FILE)
    assert captured[-1].profile.name == "tablet" and captured[-1].per_target is True
    _build_captured(captured, "--target", "phone-4gb")
    assert captured[-1].profile.name == "phone-4gb" and captured[-1].per_target is False


def test_an_unknown_command_line_target_is_refused_before_building(captured):
    result = _run("build", "--target", "phone", "--target", "nosuch")
    assert result.exit_code == 1 and not captured
    assert _err_lines(result)[0] == "Error: unknown target 'nosuch'"


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_init_then_build_makes_a_verified_bundle(demo_base, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    """`edgetune init coach && edgetune build --config coach/edgetune.yaml --steps 2`."""
    from edgetune.bundle import verify_bundle
    from edgetune.demo.model import RECIPE_VERSION

    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    # The demo base model the file asks for (base_model: null), already built this session.
    (home / "cache" / f"demo-base-v{RECIPE_VERSION}").symlink_to(demo_base)
    monkeypatch.setenv("EDGETUNE_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert _run("init", "coach").exit_code == 0
    result = _run("build", "--config", "coach/edgetune.yaml", "--steps", "2", "--out", "out")
    assert result.exit_code == 0, result.output + result.stderr + repr(result.exception)
    bundle = tmp_path / "out" / "bundle"
    # Q4_K_X ships (with its two recipe files) only where it beat Q4_K_M.
    mix = json.loads((bundle / "eval.json").read_text())["quants"]["Q4_K_X"]["mix"]
    shipped = ["Q4_K_X"] if mix["ships"] else []
    # 3 GGUFs (+ the mix and its 2 recipe files), 7 docs, 7 personas
    assert verify_bundle(bundle, home / "keys" / "edgetune.pub").files == 17 + 3 * len(shipped)
    manifest = json.loads((bundle / "edgetune.json").read_text())
    assert sorted(a["quant"] for a in manifest["artifacts"]) == ["Q4_K_M", *shipped, "Q5_K_M", "Q8_0"]
    assert (bundle / "coach-Q4_K_M.gguf").is_file()
    assert manifest["training"]["steps"] == 2 and manifest["version"] == "0.1.0"
    assert manifest["creator"]["name"] == "edgetune user"
    from edgetune.demo import SYSTEM_PROMPT

    assert (bundle / "system").read_text() == SYSTEM_PROMPT
