"""`edgetune chat` and `edgetune compare`: try a bundle's model in the terminal, and set its
answers beside the base model's. A thin Click layer over ``edgetune.chat``; the commands are
registered on the main group in ``edgetune.cli``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from edgetune.cli.base import echo
from edgetune.cli.options import public_key_option
from edgetune.errors import EdgetuneError

_COMMAND = re.compile(r"/\w+")
_QUANT_HELP = "Which GGUF of a bundle to load. Default: Q4_K_M, else the smallest."


def _stdin_is_tty() -> bool:
    return sys.stdin.isatty()


def _note(message: str) -> None:
    echo(message, err=True)


def _error(exc: EdgetuneError) -> None:
    _note(f"Error: {exc.message}")
    if exc.hint:
        _note(f"Hint: {exc.hint}")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--quant", default=None, help=_QUANT_HELP)
@public_key_option("The creator's public key: verify the bundle before loading it (on "
                   "failure, exits with `edgetune verify`'s code).")
@click.option("--system", default=None,
              help="System prompt to use instead of the persona's ('' for none).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Longest reply, in tokens.")
@click.option("--show-prompt", is_flag=True,
              help="Print the exact prompt the model sees (chat template applied) to stderr "
                   "before each reply.")
@click.option("--json", "as_json", is_flag=True,
              help="With piped input: one JSON line per prompt, {\"prompt\": ..., \"answer\": ...}.")
def chat(bundle, quant, public_key, system, max_tokens, show_prompt, as_json) -> None:
    """Chat with a bundle's model in the terminal, offline, as the persona it ships with.

    Uses the bundle's system prompt, sampling, stop strings and default context (capped at
    the model's trained context); the oldest exchanges are dropped when the conversation
    outgrows it. Type /reset to start over, /exit (or Ctrl-D, Ctrl-C) to leave. Without
    --public-key the bundle is not verified, and a warning says so.

    When stdin is not a terminal, each line is a prompt (one conversation; /reset works) and
    the answers go to stdout, everything else to stderr.

    \b
    Examples:
      edgetune chat edgetune-out/bundle --public-key ~/.edgetune/keys/edgetune.pub
      edgetune chat coach-bundle --quant Q8_0 --system "Answer in one sentence."
      printf 'Which is larger, 9.9 or 9.11?\\n' | edgetune chat edgetune-out/bundle --json
    """
    from edgetune.chat import ChatSession, load_bundle_runtime

    from edgetune.bundle import verify_bundle

    verified = verify_bundle(bundle, public_key) if public_key is not None else None
    rt = load_bundle_runtime(bundle, quant)
    if verified is not None:
        _note(f"Verified: {verified.bundle_id} {verified.version}, signed by key "
              f"{verified.key_id[:16]}…")
    else:
        _note(f"Warning: {bundle} is not verified; pass --key creator.pub to check its signature.")
    session = ChatSession(rt.model_path, rt.system_prompt if system is None else system,
                          sampling=rt.sampling, stop=rt.stop_strings, n_ctx=rt.default_context,
                          max_tokens=max_tokens)
    with session:
        if session.chat_template_sha256 != rt.chat_template_sha256:
            _note(f"Warning: {rt.model_path.name} carries another chat template than the one "
                  "the model was trained with (edgetune.json runtime.chat_template_sha256).")
        interactive = _stdin_is_tty()
        _note(f"{rt.name} {rt.version} · {rt.quant} · context {session.n_ctx} tokens · "
              "/reset starts over, /exit leaves")
        echo(f"{rt.name}: {rt.greeting}", err=not interactive)
        loop = _interactive if interactive else _piped
        code = loop(session, rt.name, show_prompt=show_prompt, as_json=as_json)
    if code:
        sys.exit(code)


def _turn(session, text: str, *, show_prompt: bool, echo) -> str | None:
    """One reply, streamed through ``echo``; None when it failed (the error is shown)."""
    try:
        pieces = []
        for piece in session.reply(text, on_prompt=_note if show_prompt else None):
            pieces.append(piece)
            echo(piece)
    except EdgetuneError as exc:
        _error(exc)
        return None
    info = session.last
    if info.dropped_turns:
        _note(f"(dropped the {info.dropped_turns} oldest exchange(s) to fit the context)")
    if info.finish_reason == "length":
        _note(f"(reply cut off at {session.max_tokens} tokens; see --max-tokens)")
    return "".join(pieces)


def _command(session, line: str) -> str | None:
    """Handle a slash command: "exit", "done" (handled), or None (not a command)."""
    if not _COMMAND.fullmatch(line):
        return None
    if line == "/exit":
        return "exit"
    if line == "/reset":
        session.reset()
        _note("(conversation cleared)")
    else:
        _note(f"unknown command {line}: /reset starts over, /exit leaves")
    return "done"


def _interactive(session, name: str, *, show_prompt: bool, as_json: bool) -> int:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            echo()
            return 0
        if not line:
            continue
        if (done := _command(session, line)) is not None:
            if done == "exit":
                return 0
            continue
        echo(f"{name}: ", nl=False)
        try:
            _turn(session, line, show_prompt=show_prompt, echo=lambda s: echo(s, nl=False))
        except KeyboardInterrupt:
            echo()
            return 0
        echo()


def _piped(session, name: str, *, show_prompt: bool, as_json: bool) -> int:
    failed = False
    try:
        for raw in sys.stdin:
            line = raw.strip()
            if not line:
                continue
            if (done := _command(session, line)) is not None:
                if done == "exit":
                    break
                continue
            stream = (lambda _s: None) if as_json else (lambda s: echo(s, nl=False))
            reply = _turn(session, line, show_prompt=show_prompt, echo=stream)
            if reply is None:
                failed = True
            elif as_json:
                echo(json.dumps({"prompt": line, "answer": reply}, ensure_ascii=False))
            else:
                echo()
    except KeyboardInterrupt:
        return 130
    return 1 if failed else 0


@click.command()
@click.argument("prompts", metavar="PROMPTS.txt", type=click.Path(path_type=Path))
@click.option("--base", required=True, type=click.Path(path_type=Path),
              help="The model before tuning: a GGUF file (the F16 or a quant) or a bundle folder.")
@click.option("--tuned", required=True, type=click.Path(path_type=Path),
              help="The tuned model: a bundle folder or a GGUF file.")
@click.option("--quant", default=None, help=_QUANT_HELP)
@click.option("--system", default=None,
              help="System prompt for both models. Default: the tuned bundle's persona prompt "
                   "(none when --tuned is a GGUF file).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Longest answer, in tokens.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of {\"prompt\", \"base\", \"tuned\"} instead of a table.")
def compare(prompts, base, tuned, quant, system, max_tokens, as_json) -> None:
    """Answer the same prompts with the base and the tuned model, side by side.

    PROMPTS.txt holds one prompt per line; blank lines and lines starting with # are skipped.
    Decoding is greedy (temperature 0, fresh context per prompt), so answers are reproducible.
    Each model is prompted through the chat template in its own GGUF, and both get the same
    system prompt: the tuned bundle's persona prompt, unless --system is given. A bundle's
    stop strings apply to its own answers; GGUF files stop at their end-of-turn token.
    Bundles are read, not verified: run `edgetune verify` for that.

    \b
    Examples:
      edgetune compare --base edgetune-out/gguf/edgetune-demo-F16.gguf \\
          --tuned edgetune-out/bundle prompts.txt
      edgetune compare --base Qwen3-0.6B-Q4_K_M.gguf --tuned coach-bundle prompts.txt --json
    """
    from rich.text import Text

    from edgetune.chat import compare as run_compare, model_source, read_prompts
    from edgetune.cli.console import build_events, print_table, stderr_console, stdout_console

    questions = read_prompts(prompts)
    base, tuned = model_source(base, quant), model_source(tuned, quant)  # errors before the view
    console = stderr_console()
    with build_events(console) as events:
        def progress(role: str, done: int, total: int) -> None:
            events.progress(role, done, total, "answers")

        result = run_compare(base, tuned, questions, quant=quant, system_prompt=system,
                             max_tokens=max_tokens, on_progress=progress)
    said = repr(result.system_prompt[:60] + ("…" if len(result.system_prompt) > 60 else ""))
    console.print(Text(f"System prompt for both: {said if result.system_prompt else 'none'}"))
    if as_json:
        echo(json.dumps(result.as_list(), indent=2, ensure_ascii=False))
        return
    from rich.table import Table

    table = Table(title="Greedy answers (temperature 0)", show_lines=True)
    table.add_column("prompt")
    table.add_column(f"base: {result.base.label}")
    table.add_column(f"tuned: {result.tuned.label}")
    for row in result.rows:  # Text(): answers are shown as written, never as rich markup
        table.add_row(Text(row.prompt), Text(row.base), Text(row.tuned))
    print_table(stdout_console(), table)
