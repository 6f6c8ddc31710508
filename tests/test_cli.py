"""The ``edgetune`` command line: Click's CliRunner, a temporary EDGETUNE_HOME, real keys and
real signed bundles built from small fake GGUFs. Errors are asserted as the exact ``Error:`` and
``Hint:`` lines and exit codes a user sees."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgetune import __version__
from edgetune.bundle import BundleInfo, BundleModel, build_bundle
from edgetune.cli import cli
from edgetune.errors import DataError, EdgetuneError
from edgetune.signing import SIGNATURE_FILE
from edgetune.keys import generate_keypair, key_id_of

REPO = Path(__file__).resolve().parents[1]
QUANTS = ("Q4_K_M", "Q8_0")
PASSPHRASE = "tr0ub4dor & 3 - cli test"
HEAVY = ("torch", "transformers", "llama_cpp", "trl", "peft", "model_signing")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own EDGETUNE_HOME, no debug mode and no passphrase from outside."""
    path = tmp_path / "home"
    monkeypatch.setenv("EDGETUNE_HOME", str(path))
    monkeypatch.delenv("EDGETUNE_DEBUG", raising=False)
    monkeypatch.delenv("EDGETUNE_KEY_PASSPHRASE", raising=False)
    return path


def _run(*args: str, **kwargs) -> click.testing.Result:
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def _err_lines(result: click.testing.Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(("Error:", "Hint:"))]


def _no_traceback(result: click.testing.Result) -> None:
    assert "Traceback" not in result.output
    assert "Traceback" not in result.stderr
    # an EdgetuneError is handled, never left for CliRunner to catch
    assert result.exception is None or isinstance(result.exception, SystemExit)


# --------------------------------------------------------------------------- help

def _walk(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _walk(command, (*path, name))


ALL_COMMANDS = [((), cli), *_walk(cli)]
LEAF_COMMANDS = [(p, c) for p, c in ALL_COMMANDS if not isinstance(c, click.Group)]


def _ids(items) -> list[str]:
    return [" ".join(p) or "edgetune" for p, _ in items]


def _squash(text: str) -> str:
    """Whitespace-normalised text: Click re-wraps docstring paragraphs to the terminal width."""
    return " ".join(text.split())


def test_command_tree_is_what_the_tests_cover():
    assert [" ".join(p) for p, _ in ALL_COMMANDS[1:]] == [
        "build", "chat", "compare", "eval", "followers", "followers accept", "followers grant",
        "followers list", "followers pending", "followers reject", "followers sync", "init", "keys",
        "keys new", "license", "license issue", "license revoke", "publish", "pull", "sign",
        "status", "targets", "train", "verify"]


@pytest.mark.parametrize(("path", "command"), ALL_COMMANDS, ids=_ids(ALL_COMMANDS))
def test_every_command_has_help(path, command):
    assert command.help, f"{' '.join(path)} has no docstring"
    first_line = command.help.strip().splitlines()[0]
    result = _run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: cli {' '.join(path)}".rstrip() + " [OPTIONS]")
    assert _squash(first_line) in _squash(result.output)
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("path", "command"), LEAF_COMMANDS, ids=_ids(LEAF_COMMANDS))
def test_every_leaf_command_help_has_an_example(path, command):
    result = _run(*path, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output, f"`edgetune {' '.join(path)} --help` shows no example"
    assert f"edgetune {' '.join(path)}" in result.output.split("Example", 1)[1]


def test_version():
    result = _run("--version")
    assert result.exit_code == 0
    assert result.output == f"edgetune, version {__version__}\n"


def test_help_loads_no_heavy_library():
    code = ("import sys; from edgetune.cli import cli; from click.testing import CliRunner; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_help_as_a_program(tmp_path: Path):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edgetune.cli", "--help"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: edgetune [OPTIONS] COMMAND [ARGS]...")
    for name in ("build", "eval", "keys", "targets", "verify"):
        assert re.search(rf"^  {name}\b", proc.stdout, re.M), name
    assert proc.stderr == ""
    assert time.monotonic() - start < 10


# --------------------------------------------------------------------------- keys new

def _pem_body(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]


def test_keys_new(tmp_path: Path):
    d = tmp_path / "k"
    result = _run("keys", "new", "--dir", d, "--name", "coach")
    assert result.exit_code == 0, result.stderr
    priv, pub = d / "coach.key", d / "coach.pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert priv.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----\n")
    key_id = key_id_of(pub)
    assert re.fullmatch(r"[0-9a-f]{64}", key_id)
    assert result.stdout.splitlines() == [
        f"private key: {priv} (keep it secret; never put it in a bundle)",
        f"public key:  {pub} (share it with your followers)",
        f"key id:      {key_id}",
    ]
    for line in _pem_body(priv):
        assert line not in result.output and line not in result.stderr
    assert sorted(os.listdir(d)) == ["coach.key", "coach.pub"]


def test_keys_new_default_dir_is_in_edgetune_home(home: Path):
    result = _run("keys", "new")
    assert result.exit_code == 0, result.stderr
    assert sorted(os.listdir(home / "keys")) == ["edgetune.key", "edgetune.pub"]
    assert f"private key: {home / 'keys' / 'edgetune.key'} " in result.output


def test_keys_new_refuses_to_overwrite(tmp_path: Path):
    d = tmp_path / "k"
    assert _run("keys", "new", "--dir", d, "--name", "n").exit_code == 0
    before = {p: (d / p).read_bytes() for p in ("n.key", "n.pub")}

    result = _run("keys", "new", "--dir", d, "--name", "n")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert _err_lines(result) == [
        f"Error: {d / 'n.key'} already exists; refusing to overwrite a key",
        "Hint: Pick another --name or directory, or pass --overwrite.",
    ]
    _no_traceback(result)
    assert {p: (d / p).read_bytes() for p in before} == before

    again = _run("keys", "new", "--dir", d, "--name", "n", "--overwrite")
    assert again.exit_code == 0, again.stderr
    assert (d / "n.key").read_bytes() != before["n.key"]
    assert f"key id:      {key_id_of(d / 'n.pub')}" in again.output


def test_keys_new_refuses_when_only_the_public_key_exists(tmp_path: Path):
    d = tmp_path / "k"
    d.mkdir()
    (d / "n.pub").write_text("not mine")
    result = _run("keys", "new", "--dir", d, "--name", "n")
    assert result.exit_code == 1
    # Not a key at all: reported as broken, not as a key that "exists" (issue 19)
    assert _err_lines(result)[0] == (f"Error: {d / 'n.pub'} exists but is broken (not a PEM "
                                     "public key): it is not a usable public key")
    assert not (d / "n.key").exists()


def test_keys_new_with_passphrase_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from cryptography.hazmat.primitives import serialization as ser

    monkeypatch.setenv("EDGETUNE_KEY_PASSPHRASE", PASSPHRASE)
    d = tmp_path / "k"
    result = _run("keys", "new", "--dir", d, "--name", "enc", "--passphrase")
    assert result.exit_code == 0, result.stderr
    pem = (d / "enc.key").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert stat.S_IMODE((d / "enc.key").stat().st_mode) == 0o600
    assert PASSPHRASE not in result.output and PASSPHRASE not in result.stderr
    with pytest.raises(TypeError):  # really needs the passphrase
        ser.load_pem_private_key(pem, None)
    ser.load_pem_private_key(pem, PASSPHRASE.encode())
    assert f"key id:      {key_id_of(d / 'enc.pub')}" in result.output


def test_keys_new_with_passphrase_prompt(tmp_path: Path):
    d = tmp_path / "k"
    result = _run("keys", "new", "--dir", d, "--name", "p", "--passphrase",
                  input=f"{PASSPHRASE}\n{PASSPHRASE}\n")
    assert result.exit_code == 0, result.output
    assert (d / "p.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert PASSPHRASE not in result.output and PASSPHRASE not in result.stderr


# --------------------------------------------------------------------------- verify

def _info() -> BundleInfo:
    return BundleInfo(
        name="cli-demo", bundle_id="cli-demo", version="0.3.1", creator_name="Ada",
        base_model="Qwen/Qwen3-0.6B", base_model_license="apache-2.0",
        chat_template="{% for m in messages %}{{ m.content }}{% endfor %}",
        stop_strings=("<|im_end|>",), default_context=2048,
        system_prompt="You are Ada's coach.", greeting="Hi!",
        training={"method": "grpo", "backend": "trl", "steps": 3, "dataset_rows": 10,
                  "rewards": ["format"]},
        eval_results={"quants": {q: {"ppl": 9.0 + i, "ram_needed_bytes": 10**8}
                                 for i, q in enumerate(QUANTS)}})


@pytest.fixture(scope="module")
def creator(tmp_path_factory: pytest.TempPathFactory):
    return generate_keypair(tmp_path_factory.mktemp("creator"), "creator")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory):
    return generate_keypair(tmp_path_factory.mktemp("stranger"), "stranger")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, creator) -> Path:
    src = tmp_path_factory.mktemp("ggufs")
    models = []
    for i, q in enumerate(QUANTS):
        gguf = src / f"m-{q}.gguf"
        gguf.write_bytes(b"GGUF" + hashlib.sha256(q.encode()).digest() * (100 + 40 * i))
        models.append(BundleModel(q, gguf, "qwen3", 2048, 10**8))
    return build_bundle(tmp_path_factory.mktemp("built") / "bundle", _info(), models,
                        private_key=creator.private_key).path


@pytest.fixture
def bundle(built: Path, tmp_path: Path) -> Path:
    """A fresh copy that a test may tamper with."""
    return Path(shutil.copytree(built, tmp_path / "bundle"))


def _tamper(bundle: Path) -> str:
    name = f"cli-demo-{QUANTS[-1]}.gguf"
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / name).write_bytes(bytes(data))
    return name


def test_verify_ok(bundle: Path, creator):
    result = _run("verify", bundle, "--public-key", creator.public_key)
    assert result.exit_code == 0, result.stderr
    files = [p for p in bundle.rglob("*") if p.is_file() and p.name != SIGNATURE_FILE]
    size = sum(p.stat().st_size for p in files)
    # 2 GGUFs, edgetune.json, README.md, eval.json, eval.md, eval.png, reward.png, report.html,
    # 7 persona files
    assert len(files) == 16
    assert result.stdout.startswith("OK:")
    assert result.stdout == (f"OK: cli-demo 0.3.1, 16 files, {size:,} bytes, "
                             f"signed by key {creator.key_id[:16]}…\n")
    assert result.stderr == ""
    _no_traceback(result)


def test_verify_ok_json(bundle: Path, creator):
    result = _run("verify", bundle, "--public-key", creator.public_key, "--json")
    assert result.exit_code == 0, result.stderr
    size = sum(p.stat().st_size for p in bundle.rglob("*")
               if p.is_file() and p.name != SIGNATURE_FILE)
    assert json.loads(result.stdout) == {"ok": True, "bundle_id": "cli-demo", "version": "0.3.1",
                                         "key_id": creator.key_id, "files": 16, "bytes": size}


def test_verify_tampered_file(bundle: Path, creator):
    name = _tamper(bundle)
    result = _run("verify", bundle, "--public-key", creator.public_key)
    assert result.exit_code == 5
    assert result.stdout == ""
    assert _err_lines(result) == [
        f"Error: {name}: content does not match its signed hash",
        "Hint: Re-download the bundle; this file was altered.",
    ]
    _no_traceback(result)


def test_verify_tampered_file_json(bundle: Path, creator):
    name = _tamper(bundle)
    result = _run("verify", bundle, "--public-key", creator.public_key, "--json")
    assert result.exit_code == 5
    report = json.loads(result.stdout)
    assert {k: report[k] for k in ("ok", "file", "exit_code")} == {
        "ok": False, "file": name, "exit_code": 5}
    assert report["error"] == f"{name}: content does not match its signed hash"
    assert "Error:" not in result.stderr
    _no_traceback(result)


def test_verify_missing_bundle(tmp_path: Path, creator):
    missing = tmp_path / "nope"
    result = _run("verify", missing, "--public-key", creator.public_key)
    assert result.exit_code == 2
    assert _err_lines(result) == [f"Error: bundle folder not found: {missing}",
                                  "Hint: Pass the bundle's folder."]
    _no_traceback(result)

    as_json = _run("verify", missing, "--public-key", creator.public_key, "--json")
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout) == {"ok": False, "error": f"bundle folder not found: {missing}",
                                          "file": None, "exit_code": 2}


def test_verify_wrong_public_key(bundle: Path, stranger):
    result = _run("verify", bundle, "--public-key", stranger.public_key)
    assert result.exit_code == 4
    assert result.stdout == ""
    errors = _err_lines(result)
    assert errors[0] == "Error: model.sig: the signature does not match the public key"
    assert errors[1] == ("Hint: Check that you have the creator's public key; otherwise the bundle "
                         "or its signature was altered after signing.")
    _no_traceback(result)


def test_verify_extra_file(bundle: Path, creator):
    (bundle / "notes.txt").write_text("sneaked in")
    result = _run("verify", bundle, "--public-key", creator.public_key)
    assert result.exit_code == 6
    assert _err_lines(result)[0] == "Error: notes.txt: file is not covered by the signature"
    _no_traceback(result)


def test_verify_missing_signed_file(bundle: Path, creator):
    (bundle / "README.md").unlink()
    result = _run("verify", bundle, "--public-key", creator.public_key)
    assert result.exit_code == 7
    assert _err_lines(result)[0] == "Error: README.md: signed file is missing"
    _no_traceback(result)


def test_verify_unsigned_bundle(bundle: Path, creator):
    (bundle / SIGNATURE_FILE).unlink()
    result = _run("verify", bundle, "--public-key", creator.public_key)
    assert result.exit_code == 3
    assert _err_lines(result)[0] == "Error: model.sig: the bundle is not signed"
    _no_traceback(result)


def test_verify_missing_public_key_file(bundle: Path, tmp_path: Path):
    result = _run("verify", bundle, "--public-key", tmp_path / "nope.pub")
    assert result.exit_code == 1
    assert _err_lines(result)[0] == f"Error: public key file not found: {tmp_path / 'nope.pub'}"
    _no_traceback(result)


def test_verify_requires_key(bundle: Path):
    result = _run("verify", bundle)
    assert result.exit_code == 2  # Click usage error
    assert "Missing option '--public-key' / '--key'" in result.stderr


def _hinted_commands(hint_line: str) -> list[str]:
    return re.findall(r"`?edgetune ([a-z][a-z-]*)", hint_line)


@pytest.mark.parametrize("case", ["unsigned", "missing-public-key"])
def test_hints_only_name_existing_commands(case: str, bundle: Path, creator, tmp_path: Path):
    """A hint telling the user to run `edgetune X` must name a command that exists."""
    if case == "unsigned":
        (bundle / SIGNATURE_FILE).unlink()
        result = _run("verify", bundle, "--public-key", creator.public_key)
    else:
        result = _run("verify", bundle, "--public-key", tmp_path / "nope.pub")
    hints = [line for line in _err_lines(result) if line.startswith("Hint:")]
    assert hints
    named = [c for h in hints for c in _hinted_commands(h)]
    assert named, hints  # both hints do point the user at a command
    for command in named:
        assert command in cli.commands, f"hint names a command that does not exist: {hints}"


# --------------------------------------------------------------------------- build: bad input

@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def _build(*args, out: Path) -> click.testing.Result:
    start = time.monotonic()
    result = _run("build", *args, "--out", out)
    assert time.monotonic() - start < 5, "bad input must fail before any model work"
    return result


def _nothing_created(home: Path, out: Path) -> None:
    assert not (home / "keys").exists(), "a failed build created a key pair"
    assert not out.exists(), "a failed build created its output folder"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_build_unknown_target(home: Path, out: Path):
    result = _build("--target", "nosuch", out=out)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert _err_lines(result) == ["Error: unknown target 'nosuch'",
                                  "Hint: choose one of: desktop, phone, phone-4gb, phone-6gb, "
                                  "phone-8gb, tablet"]
    _no_traceback(result)
    _nothing_created(home, out)


def test_build_missing_data_file(home: Path, out: Path, tmp_path: Path):
    missing = tmp_path / "missing.jsonl"
    result = _build("--data", missing, out=out)
    assert result.exit_code == 1
    assert _err_lines(result) == [
        f"Error: {missing}: file not found",
        "Hint: Check the path; it is relative to the current directory.",
    ]
    _no_traceback(result)
    _nothing_created(home, out)


def test_build_bad_row(home: Path, out: Path, tmp_path: Path):
    data = _write(tmp_path / "qa.jsonl",
                  '{"question": "1+1?", "answer": "2"}\n{"question": "2+2?"}\n'
                  '{"question": "3+3?", "answer": "6"}\n')
    result = _build("--data", data, out=out)
    assert result.exit_code == 1
    assert _err_lines(result) == [
        "Error: qa.jsonl:2: field 'answer' is missing",
        "Hint: Fields in this row: 'question'. Use --question-field / --answer-field to name the "
        "fields holding the question and answer.",
    ]
    _no_traceback(result)
    _nothing_created(home, out)


def test_build_bad_json_line(home: Path, out: Path, tmp_path: Path):
    data = _write(tmp_path / "qa.jsonl", '{"question": "1+1?", "answer": "2"}\n{"question": \n')
    result = _build("--data", data, out=out)
    assert result.exit_code == 1
    assert _err_lines(result)[0].startswith("Error: qa.jsonl:2: not valid JSON (")
    _nothing_created(home, out)


def test_build_empty_data_file(home: Path, out: Path, tmp_path: Path):
    data = _write(tmp_path / "empty.jsonl", "")
    result = _build("--data", data, out=out)
    assert result.exit_code == 1
    assert _err_lines(result) == [f"Error: {data}: has no rows",
                                  "Hint: Add at least one row with a question and an answer."]
    _no_traceback(result)
    _nothing_created(home, out)


def test_build_single_row_cannot_be_split(home: Path, out: Path, tmp_path: Path):
    data = _write(tmp_path / "one.jsonl", '{"question": "1+1?", "answer": "2"}\n')
    result = _build("--data", data, out=out)
    assert result.exit_code == 1
    assert _err_lines(result)[0] == ("Error: need at least 2 rows to split into train and eval, "
                                     "got 1")
    _nothing_created(home, out)


def test_build_question_field_not_in_data(home: Path, out: Path, tmp_path: Path):
    data = _write(tmp_path / "qa.jsonl", '{"question": "1+1?", "answer": "2"}\n'
                                         '{"question": "2+2?", "answer": "4"}\n')
    result = _build("--data", data, "--question-field", "q", out=out)
    assert result.exit_code == 1
    errors = _err_lines(result)
    assert errors[0] == "Error: qa.jsonl:1: field 'q' is missing"
    assert errors[1].startswith("Hint: Fields in this row: 'question', 'answer'.")
    _no_traceback(result)
    _nothing_created(home, out)


def test_build_csv_question_column_not_in_header(home: Path, out: Path, tmp_path: Path):
    data = _write(tmp_path / "qa.csv", "question,answer\n1+1?,2\n2+2?,4\n")
    result = _build("--data", data, "--question-field", "q", out=out)
    assert result.exit_code == 1
    assert _err_lines(result)[0] == ("Error: qa.csv:1: question column 'q' not found in the "
                                     "header (columns: 'question', 'answer')")
    _nothing_created(home, out)


def test_build_unsupported_data_type(home: Path, out: Path, tmp_path: Path):
    data = _write(tmp_path / "qa.txt", "1+1? 2\n")
    result = _build("--data", data, out=out)
    assert result.exit_code == 1
    assert _err_lines(result)[0] == f"Error: {data}: unsupported file type '.txt'"
    _nothing_created(home, out)


def test_build_refuses_existing_output(home: Path, out: Path, tmp_path: Path):
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    data = _write(tmp_path / "qa.jsonl", '{"question": "1+1?", "answer": "2"}\n'
                                         '{"question": "2+2?", "answer": "4"}\n')
    result = _build("--data", data, out=out)
    assert result.exit_code == 1
    assert _err_lines(result) == [f"Error: {out} already exists",
                                  "Hint: choose another --out directory, pass --resume to continue an "
                                  "interrupted build, or --overwrite to start again"]
    assert os.listdir(out) == ["keep.txt"]
    assert not (home / "keys").exists()


def test_build_bad_data_loads_no_heavy_library(tmp_path: Path, home: Path, out: Path):
    data = _write(tmp_path / "qa.jsonl", '{"question": "1+1?"}\n')
    code = ("import sys; from edgetune.cli import cli; from click.testing import CliRunner; "
            f"r = CliRunner().invoke(cli, ['build', '--data', {str(data)!r}, '--out', {str(out)!r}]); "
            "print(r.exit_code, r.stderr.splitlines()[-2]); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, env={**os.environ, "EDGETUNE_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["1 Error: qa.jsonl:1: field 'answer' is missing", "[]"]
    _nothing_created(home, out)


def test_build_bad_option_values_are_usage_errors(home: Path, out: Path):
    result = _build("--steps", "0", out=out)
    assert result.exit_code == 2
    assert "Invalid value for '--steps'" in result.stderr
    result = _build("--backend", "nosuch", out=out)
    assert result.exit_code == 2
    assert "Invalid value for '--backend'" in result.stderr
    _nothing_created(home, out)


def test_debug_mode_lets_the_error_propagate(home: Path, out: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EDGETUNE_DEBUG", "1")
    data = _write(tmp_path / "qa.jsonl", '{"question": "1+1?"}\n')
    result = _build("--data", data, out=out)
    assert result.exit_code == 1
    assert isinstance(result.exception, EdgetuneError)
    assert isinstance(result.exception, DataError)
    assert result.exception.message == "qa.jsonl:1: field 'answer' is missing"
    assert "Error:" not in result.stderr
    _nothing_created(home, out)


def test_debug_mode_unknown_target(out: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EDGETUNE_DEBUG", "1")
    result = _build("--target", "nosuch", out=out)
    assert isinstance(result.exception, EdgetuneError)
    assert str(result.exception) == "unknown target 'nosuch'"


# --------------------------------------------------------------------------- targets

def test_targets():
    result = _run("targets")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    by_name = {line.split()[0]: line for line in lines}
    assert list(by_name) == ["desktop", "phone", "phone-4gb", "phone-6gb", "phone-8gb", "tablet"]
    desktop, phone = by_name["desktop"], by_name["phone"]
    assert "Q4_K_M, Q4_K_X, Q4_0" in by_name["phone-4gb"] and "budget  2,288 MiB" in by_name["phone-4gb"]
    assert "Q4_K_M, Q4_K_X, Q5_K_M, Q8_0" in phone
    assert "ctx 2048" in phone
    assert "Mid-range phone (6 GB RAM)" in phone
    assert "ctx 8192" in desktop
    assert "Laptop or desktop with 16 GB RAM" in desktop


# --------------------------------------------------------------------------- output in a pipe

_LONG = "a-folder-name-long-enough-that-a-line-of-80-columns-could-never-hold-this-whole-path"


def _fake_build_with_events(tmp_path: Path):
    """A stand-in for pipeline.build: the events and result of a build, no model work."""
    from types import SimpleNamespace

    from edgetune.pipeline import BuildResult

    def metrics(size_mib: int, gate) -> dict:
        return {"size_bytes": size_mib * 2**20, "ram_needed_bytes": 3 * size_mib * 2**20,
                "ppl_ratio": 1.0123, "kld_mean": 0.0456, "top1": 0.987, "task_accuracy": 0.75,
                "decode_tps": 12345, "gate": gate}

    report = {"target": "phone", "quants": {
        "F16": metrics(9000, None), "Q4_K_M": metrics(2500, {"passed": True}),
        "Q8_0": metrics(4800, {"passed": False})}}

    def fake_build(project, profile, out, *, events, **kwargs):
        for stage in ("train", "quantise", "evaluate"):
            events.stage(stage, f"{stage} detail that goes on past the eightieth column: {_LONG}")
            for step in range(21):
                events.progress(stage, step, 20, f"step detail {step}")
            events.note(f"a note with [brackets] about {stage}")
            events.stage_done(stage, f"{stage} summary {_LONG}")
        return BuildResult(bundle=SimpleNamespace(path=tmp_path / _LONG / "bundle"),
                           public_key=tmp_path / _LONG / "edgetune.pub", eval_report=report)

    return fake_build


def test_build_output_in_a_pipe_is_plain_full_lines(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("edgetune.pipeline.build", _fake_build_with_events(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = CliRunner(env={"COLUMNS": "80", "NO_COLOR": None, "FORCE_COLOR": None}).invoke(
        cli, ["build", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    for stage in ("train", "quantise", "evaluate"):  # every stage by its whole name, on one line
        assert f"{stage:<9} {stage} detail that goes on past the eightieth column: {_LONG}" in lines
        assert f"{stage:<9} ✓ {stage} summary {_LONG} (0:00:00)" in lines
        assert f"note: a note with [brackets] about {stage}" in lines
        # progress: every tenth of the way, not every step
        assert [line for line in lines if line.startswith(f"{stage:<9} ") and "/20 " in line] == [
            f"{stage:<9} {n}/20 step detail {n}" for n in range(0, 21, 2)]
    rows = [line for line in lines if line.startswith(("│ Q4_K_M ", "│ Q8_0 ", "│ F16 "))]
    assert len(rows) == 3, result.stderr  # one line a quant: never wrapped at 80 columns
    assert all("…" not in line for line in lines)
    q4 = next(row for row in rows if "Q4_K_M" in row).split("│")
    assert [cell.strip() for cell in q4[1:-1]] == [
        "Q4_K_M", "2,500.0 MiB", "7,500.0 MiB", "1.0123", "0.0456", "98.7%", "75.0%", "12,345",
        "pass"]
    assert f"Bundle: {tmp_path / _LONG / 'bundle'}" in lines
    assert (f"Verify: edgetune verify {tmp_path / _LONG / 'bundle'} "
            f"--public-key {tmp_path / _LONG / 'edgetune.pub'}") in lines
    assert "\x1b[" not in result.stderr + result.stdout and result.stdout == ""


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"NO_COLOR": "1", "FORCE_COLOR": "1"}])
def test_no_color_means_no_escape_codes(env: dict, tmp_path: Path, monkeypatch):
    """Also where rich is told the console is a terminal (FORCE_COLOR): no colour, no live view."""
    monkeypatch.setattr("edgetune.pipeline.build", _fake_build_with_events(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = CliRunner(env=env).invoke(cli, ["build", "--out", str(tmp_path / "out")], color=True)
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.stderr + result.stdout
    assert f"{'quantise':<9} ✓ quantise summary {_LONG} (0:00:00)" in result.stderr.splitlines()
    status = CliRunner(env=env).invoke(cli, ["status", "--out", str(tmp_path / "out")], color=True)
    assert status.exit_code == 0, status.output
    assert "missing" in status.stdout and "\x1b[" not in status.stdout
    coloured = CliRunner(env={"NO_COLOR": None}).invoke(
        cli, ["status", "--out", str(tmp_path / "out")], color=True)
    assert "\x1b[" in coloured.stdout  # what NO_COLOR turned off


# --------------------------------------------------------------------------- eval

# A target that measures on short text (chunks of 64 tokens), so `edgetune eval` of the demo's
# F16 and Q8_0 on three questions takes seconds. "strict" fails Q8_0 on any KL divergence.
_TINY_TARGET = """name: {name}
description: eval tests
quants: [Q8_0]
context_length: 512
memory_budget_mb: 100
eval_context: 64
"""


@pytest.fixture
def eval_inputs(demo_build, tmp_path: Path) -> dict:
    out, _, _ = demo_build
    from edgetune.demo import DEMO_DATA

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(DEMO_DATA.read_text().splitlines(keepends=True)[:3]))
    lax = _write(tmp_path / "tiny.yaml", _TINY_TARGET.format(name="tiny"))
    strict = _write(tmp_path / "strict.yaml", _TINY_TARGET.format(name="tiny-strict")
                    + "thresholds:\n  Q8_0: {max_kld_mean: 0}\n")
    return {"f16": out / "gguf" / "edgetune-demo-F16.gguf",
            "q8": out / "quants" / "edgetune-demo-Q8_0.gguf",
            "q4": out / "quants" / "edgetune-demo-Q4_K_M.gguf",
            "imatrix": out / "quants" / "imatrix.gguf",
            "data": ["--data", rows, "--all-rows"], "lax": lax, "strict": strict,
            "out": tmp_path / "eval-out"}


def _eval(*args) -> click.testing.Result:
    return _run("eval", *args)


@pytest.mark.slow
def test_eval_writes_the_report_and_prints_the_tables(eval_inputs: dict):
    from edgetune.report import markdown_table, quant_chart

    e, out = eval_inputs, eval_inputs["out"]
    result = _eval(e["f16"], e["q8"], *e["data"], "--target", e["lax"], "--out", out)
    assert result.exit_code == 0, result.stderr
    _no_traceback(result)
    assert result.stdout == ""  # like build: human output on stderr
    assert "Quants vs F16 on held-out data (target tiny)" in result.stderr
    assert f"Report: {out / 'eval.json'} (table: eval.md, chart: eval.png)" in \
        result.stderr.splitlines()
    assert sorted(os.listdir(out)) == ["artifact.json", "eval.json", "eval.md", "eval.png"]
    report = json.loads((out / "eval.json").read_text())
    assert list(report["quants"]) == ["F16", "Q8_0"]
    assert (report["target"], report["eval_ctx"], report["context_length"]) == ("tiny", 64, 512)
    assert report["task_rows"] == 3 and report["gates_passed"] is True
    f16, q8 = report["quants"]["F16"], report["quants"]["Q8_0"]
    assert (f16["file"], q8["file"]) == ("edgetune-demo-F16.gguf", "edgetune-demo-Q8_0.gguf")
    assert q8["size_bytes"] == e["q8"].stat().st_size
    assert 0 < q8["kld_mean"] < 0.01 and 0.9 < q8["top1"] <= 1 and q8["ppl_base"] == f16["ppl"]
    assert q8["task_total"] == 3 and q8["decode_tps"] > 0 and q8["gate_passed"] is True
    assert (out / "eval.md").read_text() == markdown_table(report)
    assert (out / "eval.png").read_bytes() == quant_chart(report, out.parent / "c.png").read_bytes()
    again = _eval(e["f16"], e["q8"], *e["data"], "--target", e["lax"], "--out", out)
    assert again.exit_code == 1
    assert _err_lines(again) == [f"Error: {out} already exists",
                                 "Hint: choose another --out directory or pass --overwrite"]


@pytest.mark.slow
def test_eval_json_on_a_gate_failure(eval_inputs: dict):
    e, out = eval_inputs, eval_inputs["out"]
    result = _eval(e["f16"], e["q8"], *e["data"], "--target", e["strict"], "--out", out, "--json")
    assert result.exit_code == 1, result.stderr
    _no_traceback(result)
    report = json.loads(result.stdout)  # stdout is eval.json and nothing else
    assert result.stdout == (out / "eval.json").read_text()
    assert report["gates_passed"] is False and report["accepted_gate_failure"] is False
    assert report["quants"]["Q8_0"]["gate"]["reasons"][0].startswith("mean KLD ")
    assert "Failed quality gates" in result.stderr and "mean KLD" in result.stderr
    assert _err_lines(result) == [
        "Error: 1 of 1 quants failed the gates for target 'tiny-strict': Q8_0",
        "Hint: see the tables above and eval.md; choose another --target, or pass "
        "--accept-gate-failure to exit 0 anyway (recorded in eval.json)"]
    assert "**FAIL**" in (out / "eval.md").read_text() and (out / "eval.png").is_file()

    accepted = _eval(e["f16"], e["q8"], *e["data"], "--target", e["strict"], "--out", out,
                     "--overwrite", "--accept-gate-failure", "--json")
    assert accepted.exit_code == 0, accepted.stderr
    report = json.loads(accepted.stdout)
    assert report["gates_passed"] is False and report["accepted_gate_failure"] is True
    assert "shipped anyway" in (out / "eval.md").read_text()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no scratch


def _fake_quant(path: Path, tokens=("<unk>", "<s>", "</s>", "a"), **kwargs) -> Path:
    from tests.test_report import fake_gguf

    return fake_gguf(path, tokens=tokens, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "folder", "not-gguf", "f16-as-quant", "quant-first",
                                  "twice", "imatrix", "vocab", "architecture",
                                  "too-little-text"])
def test_eval_refuses_bad_input_before_measuring(case: str, eval_inputs: dict, tmp_path: Path):
    e = eval_inputs
    f16, q8 = e["f16"], e["q8"]
    args, target = [f16, q8], e["lax"]
    if case == "missing":
        args = [f16, tmp_path / "nope.gguf"]
        expected = [f"Error: {tmp_path / 'nope.gguf'}: file not found",
                    "Hint: Check the path; it is relative to the current directory."]
    elif case == "folder":
        args = [f16, tmp_path]
        expected = [f"Error: {tmp_path}: is a folder, not a GGUF file",
                    "Hint: Check the path; it is relative to the current directory."]
    elif case == "not-gguf":
        args = [_write(tmp_path / "model.gguf", "PK not a gguf"), q8]
        expected = [f"Error: {tmp_path / 'model.gguf'}: not a GGUF file",
                    "Hint: Pass .gguf files made by llama.cpp (edgetune build writes them to "
                    "gguf/ and quants/)."]
    elif case == "f16-as-quant":
        args = [f16, q8, f16]
        expected = [f"Error: {f16}: is the unquantised F16 model, not a quant",
                    "Hint: Pass the F16 GGUF once, first, and only quantised GGUFs after it."]
    elif case == "quant-first":
        args = [e["q4"], q8]
        expected = [f"Error: {e['q4']}: the first file must be the unquantised reference "
                    "(F16, BF16 or F32), not Q4_K_M",
                    "Hint: Pass the F16 GGUF first, then the quantised GGUFs."]
    elif case == "twice":
        args = [f16, q8, q8]
        expected = [f"Error: {q8} and {q8} are both Q8_0",
                    "Hint: Evaluate them in separate runs, each with its own --out."]
    elif case == "imatrix":
        args = [f16, e["imatrix"]]
        expected = [f"Error: {e['imatrix']}: is a GGUF imatrix, not a model",
                    "Hint: Pass the F16 GGUF and quantised model GGUFs."]
    elif case == "vocab":
        args = [f16, _fake_quant(tmp_path / "other-Q8_0.gguf")]
        expected = ["Error: other-Q8_0.gguf does not share edgetune-demo-F16.gguf's vocabulary",
                    "Hint: Compare each quant with the F16 GGUF it was quantised from (KL "
                    "divergence compares them token by token)."]
    elif case == "architecture":
        import gguf

        field = gguf.GGUFReader(str(f16)).fields["tokenizer.ggml.tokens"]
        tokens = [bytes(field.parts[i]).decode() for i in field.data]
        args = [f16, _fake_quant(tmp_path / "qwen-Q8_0.gguf", tokens, architecture="qwen2")]
        expected = ["Error: qwen-Q8_0.gguf does not share edgetune-demo-F16.gguf's architecture",
                    "Hint: Compare each quant with the F16 GGUF it was quantised from (KL "
                    "divergence compares them token by token)."]
    else:
        target = "phone"  # chunks of 512 tokens: three questions (read as chats) are too few
        expected = ["Error: the 3 held-out rows make 357 tokens; measuring KL divergence at the "
                    "target's eval_context of 512 needs at least 1024",
                    "Hint: add rows (--all-rows uses every row of --data) or choose a target with "
                    "a smaller eval_context"]
    start = time.monotonic()
    result = _eval(*args, *e["data"], "--target", target, "--out", e["out"])
    assert time.monotonic() - start < 5, "bad input must fail before any measuring"
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert _err_lines(result) == expected
    _no_traceback(result)
    assert not e["out"].exists()


def test_eval_usage_errors(tmp_path: Path):
    one = _eval(tmp_path / "F16.gguf")
    assert one.exit_code == 2 and "Missing argument 'QUANTS...'" in one.stderr
    rows = _eval(tmp_path / "F16.gguf", tmp_path / "Q4.gguf", "--all-rows")
    assert rows.exit_code == 2 and "--all-rows needs --data" in rows.stderr
    bad = _eval(tmp_path / "F16.gguf", tmp_path / "Q4.gguf", "--target", "nosuch", "--out",
                tmp_path / "out")
    assert bad.exit_code == 1 and _err_lines(bad)[0] == "Error: unknown target 'nosuch'"
    assert not (tmp_path / "out").exists()
