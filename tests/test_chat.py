"""`edgetune chat` and `edgetune compare` on the demo build's real signed bundle and GGUFs:
real llama.cpp, piped stdin, the exact `Error:` lines and exit codes a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetune import chat as chat_lib
from edgetune.cli import cli
from edgetune.cli.base import CliGroup
from edgetune.cli.chat import chat, compare
from edgetune.errors import ConfigError, DataError, ModelError

PROMPTS = ["Which is larger, 9.9 or 9.11?", "It is 3 degrees and drops by 8. What is it now?"]
# The main group with the two commands, built aside so the shared `cli` stays as it is.
GROUP = CliGroup(name="cli", commands={**cli.commands, "chat": chat, "compare": compare})


def _run(*args, input: str | None = None):
    return CliRunner().invoke(GROUP, [str(a) for a in args], input=input)


def _err_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(("Error:", "Hint:"))]


def _no_traceback(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture(scope="module")
def bundle(demo_build) -> Path:
    out, _, _ = demo_build
    return out / "bundle"


@pytest.fixture(scope="module")
def manifest(bundle) -> dict:
    return json.loads((bundle / "edgetune.json").read_text())


@pytest.fixture(scope="module")
def ggufs(demo_build, bundle) -> tuple[Path, Path]:
    out, _, _ = demo_build
    return out / "gguf" / "edgetune-demo-F16.gguf", bundle / "edgetune-demo-Q4_K_M.gguf"


# --------------------------------------------------------------------------- help

@pytest.mark.parametrize("name", ["chat", "compare"])
def test_help_has_an_example(name):
    result = _run(name, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: cli {name} [OPTIONS]")
    assert f"edgetune {name}" in result.output.split("Example", 1)[1]


def test_compare_help_says_both_models_get_the_same_system_prompt():
    text = " ".join(_run("compare", "--help").output.split())
    assert "both get the same system prompt: the tuned bundle's persona prompt" in text
    assert "greedy (temperature 0" in text


# --------------------------------------------------------------------------- chat

def test_chat_piped_answers_every_line_with_the_persona(bundle, manifest):
    persona = manifest["persona"]
    result = _run("chat", bundle, "--json", "--show-prompt", "--max-tokens", "24",
                  input="\n".join(PROMPTS) + "\n\n")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["prompt"] for line in lines] == PROMPTS
    assert all(isinstance(line["answer"], str) and line["answer"] for line in lines)
    err = result.stderr.splitlines()
    assert err[0] == (f"Warning: {bundle} is not verified; pass --key creator.pub to check its "
                      "signature.")
    assert f"{persona['name']}: {persona['greeting']}" in err
    assert "edgetune-demo 0.1.0 · Q4_K_M · context 1024 tokens" in result.stderr  # trained: 1024
    # the demo's template is ChatML: the persona's prompt is the system turn, byte for byte
    assert f"<|im_start|>system\n{persona['system_prompt']}<|im_end|>\n" in result.stderr


def test_chat_plain_piped_output_is_the_answers_only(bundle):
    result = _run("chat", bundle, "--max-tokens", "8", input=PROMPTS[0] + "\n/exit\n" + PROMPTS[1])
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n") and "Hi! Ask me" not in result.stdout
    assert result.stdout.count("\n") >= 1  # one answer; /exit stopped before the second


@pytest.mark.parametrize("reset", [True, False])
def test_chat_reset_clears_the_history(bundle, reset):
    lines = ["first question here", *(["/reset"] if reset else []), "second question"]
    result = _run("chat", bundle, "--json", "--show-prompt", "--max-tokens", "8",
                  input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
    # printed prompts: the first holds the first question; after /reset the second does not
    assert result.stderr.count("first question here") == (1 if reset else 2)
    assert ("(conversation cleared)" in result.stderr) == reset


def test_chat_verifies_with_key_and_picks_the_quant(demo_build, bundle):
    _, public_key, _ = demo_build
    result = _run("chat", bundle, "--key", public_key, "--quant", "q8_0", "--json",
                  "--max-tokens", "4", input=PROMPTS[0] + "\n")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("Verified: edgetune-demo-")
    assert "not verified" not in result.stderr
    assert " · Q8_0 · " in result.stderr
    assert len(result.stdout.splitlines()) == 1


def test_chat_with_the_wrong_key_exits_with_the_verifiers_code(bundle, tmp_path):
    from edgetune.keys import generate_keypair

    other = generate_keypair(tmp_path / "keys", "other", None).public_key
    result = _run("chat", bundle, "--key", other, input=PROMPTS[0] + "\n")
    assert result.exit_code == 4
    assert _err_lines(result)[0] == "Error: model.sig: the signature does not match the public key"
    assert result.stdout == "" and "Hi! Ask me" not in result.stderr  # the model never loaded
    _no_traceback(result)


def test_chat_missing_bundle(tmp_path, demo_build):
    missing = tmp_path / "nope"
    result = _run("chat", missing, input="hi\n")
    assert result.exit_code == 1
    assert _err_lines(result) == [f"Error: bundle folder not found: {missing}",
                                  "Hint: Pass the bundle's folder."]
    _no_traceback(result)
    _, public_key, _ = demo_build
    verified = _run("chat", missing, "--key", public_key, input="hi\n")
    assert verified.exit_code == 2  # as `edgetune verify` reports it
    assert _err_lines(verified)[0] == f"Error: bundle folder not found: {missing}"


def test_chat_unknown_quant_lists_the_available_ones(bundle, manifest):
    result = _run("chat", bundle, "--quant", "Q3_K_S", input="hi\n")
    assert result.exit_code == 1
    quants = ", ".join(a["quant"] for a in manifest["artifacts"])
    assert _err_lines(result) == [f"Error: quant Q3_K_S is not in {bundle}; it has {quants}",
                                  "Hint: Pick one of those with --quant."]
    _no_traceback(result)


def test_chat_interactive_shows_the_greeting_and_ends_on_exit(bundle, manifest, monkeypatch):
    monkeypatch.setattr("edgetune.cli.chat._stdin_is_tty", lambda: True)
    result = _run("chat", bundle, "--max-tokens", "4", input=f"{PROMPTS[0]}\n/exit\nnot read\n")
    assert result.exit_code == 0, result.output
    name, greeting = manifest["persona"]["name"], manifest["persona"]["greeting"]
    assert result.stdout.startswith(f"{name}: {greeting}\nyou> {name}: ")
    assert result.stdout.count("you> ") == 2


@pytest.mark.parametrize("stop", [KeyboardInterrupt, EOFError])
def test_chat_interactive_ctrl_c_and_eof_end_cleanly(bundle, monkeypatch, stop):
    monkeypatch.setattr("edgetune.cli.chat._stdin_is_tty", lambda: True)

    def interrupted(_prompt=""):
        raise stop

    monkeypatch.setattr("builtins.input", interrupted)
    result = _run("chat", bundle)
    assert result.exit_code == 0
    _no_traceback(result)


# --------------------------------------------------------------------------- library

def test_session_prompt_is_the_gguf_template_rendered_as_transformers_does(bundle, manifest):
    from edgetune.chat_format import render_chat_template

    rt = chat_lib.load_bundle_runtime(bundle)
    assert rt.quant == "Q4_K_M" and rt.quants == tuple(a["quant"] for a in manifest["artifacts"])
    with chat_lib.ChatSession(rt.model_path, rt.system_prompt, sampling=chat_lib.GREEDY,
                              n_ctx=rt.default_context, max_tokens=8) as session:
        assert session.chat_template_sha256 == manifest["runtime"]["chat_template_sha256"]
        first = "".join(session.reply(PROMPTS[0]))
        expected = render_chat_template(session.chat_template, [
            {"role": "system", "content": rt.system_prompt},
            {"role": "user", "content": PROMPTS[0]}, {"role": "assistant", "content": first},
            {"role": "user", "content": PROMPTS[1]}])
        assert session.prompt_text(PROMPTS[1]) == expected
        session.reset()
        assert session.history == []
        assert session.prompt_text(PROMPTS[1]) == render_chat_template(session.chat_template, [
            {"role": "system", "content": rt.system_prompt},
            {"role": "user", "content": PROMPTS[1]}])


def test_greedy_answer_matches_the_accuracy_path(ggufs, manifest):
    """`answer` and accuracy.py's create_chat_completion see the same prompt and decode alike."""
    from edgetune import llamacpp

    f16, _ = ggufs
    system = manifest["persona"]["system_prompt"]
    llm = llamacpp.open_gguf(f16, n_ctx=1024)
    try:
        reply = llm.create_chat_completion(
            [{"role": "system", "content": system}, {"role": "user", "content": PROMPTS[0]}],
            temperature=0.0, top_k=1, max_tokens=48, seed=0)
    finally:
        llm.close()
    assert chat_lib.answer(f16, PROMPTS[0], system, max_tokens=48) == \
        reply["choices"][0]["message"]["content"]


def test_history_drops_the_oldest_turns_to_fit_the_context(ggufs):
    _, q4 = ggufs
    with chat_lib.ChatSession(q4, "Be brief.", sampling=chat_lib.GREEDY, n_ctx=160,
                              max_tokens=40) as session:
        dropped, prompts = [], []
        for i in range(6):
            "".join(session.reply(f"Question {i}: what is {i} plus {i * 3}?", prompts.append))
            assert session.last.prompt_tokens + session.max_tokens <= session.n_ctx
            dropped.append(session.last.dropped_turns)
        assert sum(dropped) > 0
        assert "Question 0:" in prompts[0] and "Question 0:" not in prompts[-1]
        assert prompts[-1].startswith("<|im_start|>system\nBe brief.<|im_end|>")
        assert session.history[-2]["content"] == "Question 5: what is 5 plus 15?"
        with pytest.raises(ConfigError, match="the context holds 160"):
            "".join(session.reply("word " * 400))
        assert session.history[-2]["content"] == "Question 5: what is 5 plus 15?"  # unchanged


def test_read_prompts(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("\ufeff# demo prompts\n\n  Which is larger, 9.9 or 9.11?  \n#x\nHi\n",
                    encoding="utf-8")
    assert chat_lib.read_prompts(path) == ["Which is larger, 9.9 or 9.11?", "Hi"]
    path.write_text("# only a comment\n\n")
    with pytest.raises(DataError, match="no prompts in"):
        chat_lib.read_prompts(path)


def test_model_source_refuses_a_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"nope")
    with pytest.raises(ModelError, match="is not a GGUF file"):
        chat_lib.model_source(path)


# --------------------------------------------------------------------------- compare

def _prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("# the seed's demo\n" + "\n\n".join(PROMPTS) + "\n")
    return path


def test_compare_json_is_one_entry_per_prompt_and_reproducible(ggufs, tmp_path):
    f16, q4 = ggufs
    args = ("compare", "--base", f16, "--tuned", q4, _prompts_file(tmp_path), "--json",
            "--max-tokens", "32")
    first, second = _run(*args), _run(*args)
    assert first.exit_code == 0, first.output
    rows = json.loads(first.stdout)
    assert [r["prompt"] for r in rows] == PROMPTS
    assert all(set(r) == {"prompt", "base", "tuned"} and r["base"] and r["tuned"] for r in rows)
    assert second.stdout == first.stdout
    assert "System prompt for both: none" in first.stderr  # --tuned is a GGUF file


def test_compare_table_with_a_bundle_uses_its_persona(ggufs, bundle, manifest, tmp_path):
    f16, _ = ggufs
    result = _run("compare", "--base", f16, "--tuned", bundle, _prompts_file(tmp_path),
                  "--max-tokens", "8")
    assert result.exit_code == 0, result.output
    assert "Greedy answers (temperature 0)" in result.stdout
    assert "tuned: edgetune-demo" in result.stdout and "Q4_K_M" in result.stdout
    assert "9.11?" in result.stdout
    said = " ".join(result.stderr.split())
    assert f"System prompt for both: '{manifest['persona']['system_prompt'][:60]}…'" in said


def test_compare_tuned_bundle_answers_like_its_gguf_with_the_persona(ggufs, bundle, manifest):
    f16, q4 = ggufs
    by_bundle = chat_lib.compare(f16, bundle, PROMPTS[:1], max_tokens=16)
    by_file = chat_lib.compare(f16, q4, PROMPTS[:1], max_tokens=16,
                               system_prompt=manifest["persona"]["system_prompt"])
    assert by_bundle.as_list() == by_file.as_list()
    assert by_bundle.system_prompt == manifest["persona"]["system_prompt"]


@pytest.mark.parametrize("content", [None, "", "# just a comment\n\n"])
def test_compare_missing_or_empty_prompts_file(ggufs, tmp_path, content):
    f16, q4 = ggufs
    path = tmp_path / "prompts.txt"
    if content is not None:
        path.write_text(content)
    result = _run("compare", "--base", f16, "--tuned", q4, path)
    assert result.exit_code == 1
    what = f"prompts file not found: {path}" if content is None else f"no prompts in {path}"
    assert _err_lines(result) == [
        f"Error: {what}",
        "Hint: Write one prompt per line; blank lines and lines starting with # are ignored."]
    assert result.stdout == ""
    _no_traceback(result)


def test_compare_missing_model(ggufs, tmp_path):
    f16, _ = ggufs
    missing = tmp_path / "base.gguf"
    result = _run("compare", "--base", missing, "--tuned", f16, _prompts_file(tmp_path))
    assert result.exit_code == 1
    assert _err_lines(result) == [f"Error: model file not found: {missing}",
                                  "Hint: Pass a .gguf file or a bundle folder."]
