"""The ``edgetune`` command: a thin Click layer over the pipeline's stage functions.

Heavy libraries (torch, transformers, llama_cpp) load inside commands, so ``--help`` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from edgetune import __version__
from edgetune.errors import EdgetuneError


class _Cli(click.Group):
    """Turns EdgetuneError into ``Error:`` / ``Hint:`` lines and its exit code; no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgetuneError as exc:
            if os.environ.get("EDGETUNE_DEBUG"):
                raise
            click.echo(f"Error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"Hint: {exc.hint}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Cli)
@click.version_option(__version__, prog_name="edgetune")
def cli() -> None:
    """Turn your own Q&A into a small, signed reasoning model that runs offline on a phone.

    \b
    Quick start (built-in demo, no config):
      edgetune build --target phone
    Set EDGETUNE_DEBUG=1 to see tracebacks.
    """


@cli.command()
@click.option("--target", default="phone", show_default=True,
              help="Device profile from quant_profiles/ (or a YAML path).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Q&A file (.jsonl, .json, .csv). Default: the built-in demo questions.")
@click.option("--question-field", default="question", show_default=True)
@click.option("--answer-field", default="answer", show_default=True,
              help="Column with the final answer (GSM8K '#### 42' answers are understood).")
@click.option("--base-model", default=None,
              help="HF model dir or hub id, e.g. Qwen/Qwen2.5-3B-Instruct. Default: the demo model.")
@click.option("--name", default=None, help="Model name, used in file names and the bundle id.")
@click.option("--system-prompt-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="System prompt used in training and as the persona prompt.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="GRPO steps.")
@click.option("--backend", type=click.Choice(["auto", "trl", "unsloth"]), default="auto",
              show_default=True, help="Training backend.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("edgetune-out"),
              show_default=True, help="Output directory (one folder per stage).")
@click.option("--key", type=click.Path(path_type=Path), default=None,
              help="Private signing key. Default: ~/.edgetune/keys/edgetune.key, created if missing.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def build(target, data, question_field, answer_field, base_model, name, system_prompt_file, steps,
          backend, out, key, overwrite, as_json) -> None:
    """Run the whole pipeline: train, merge, convert, quantise, evaluate, bundle and sign.

    \b
    Examples:
      edgetune build --target phone                      # the built-in demo
      edgetune build --data qa.jsonl --base-model Qwen/Qwen2.5-1.5B-Instruct \\
          --system-prompt-file persona.txt --name coach-bot --steps 300
    """
    import dataclasses

    from edgetune.console import RichEvents, console, eval_table
    from edgetune.data import Columns
    from edgetune.pipeline import build as run_build, demo_project
    from edgetune.profiles import load_profile

    profile = load_profile(target)
    project = demo_project()
    if data is not None:
        project = dataclasses.replace(project, data=data, base_model=base_model,
                                      name=name or data.stem, creator="edgetune user")
    elif base_model is not None:
        project = dataclasses.replace(project, base_model=base_model)
    if name:
        project = dataclasses.replace(project, name=name)
    project = dataclasses.replace(project, columns=Columns(question=question_field,
                                                           answer=answer_field))
    train_cfg = project.train
    if system_prompt_file is not None:
        prompt = system_prompt_file.read_text().strip()
        project = dataclasses.replace(project, system_prompt=prompt)
        train_cfg = dataclasses.replace(train_cfg, system_prompt=prompt)
    train_cfg = dataclasses.replace(train_cfg, backend=backend,
                                    **({"steps": steps} if steps else {}))
    project = dataclasses.replace(project, train=train_cfg)
    passphrase = os.environ.get("EDGETUNE_KEY_PASSPHRASE") or None

    with RichEvents() as events:
        result = run_build(project, profile, out, key=key, passphrase=passphrase,
                           overwrite=overwrite, events=events)
    if as_json:
        click.echo(json.dumps({"bundle": str(result.bundle.path), "bundle_id": result.bundle.bundle_id,
                               "key_id": result.bundle.key_id, "public_key": str(result.public_key),
                               "eval": result.eval_report}, indent=2))
        return
    console.print(eval_table(result.eval_report))
    console.print(f"[bold green]Bundle:[/] {result.bundle.path}")
    console.print(f"Verify: edgetune verify {result.bundle.path} --key {result.public_key}")


@cli.group()
def keys() -> None:
    """Signing keys (ECDSA P-256) for bundles."""


@keys.command("new")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write NAME.key and NAME.pub. Default: ~/.edgetune/keys")
@click.option("--name", default="edgetune", show_default=True)
@click.option("--passphrase", is_flag=True,
              help="Encrypt the private key (asked for, or EDGETUNE_KEY_PASSPHRASE).")
@click.option("--overwrite", is_flag=True, help="Replace an existing key pair.")
def keys_new(directory, name, passphrase, overwrite) -> None:
    """Create a signing key pair (private key file mode 0600).

    \b
    Example:
      edgetune keys new --dir keys --name coach
    """
    from edgetune import paths
    from edgetune.signing import generate_keypair

    secret = None
    if passphrase:
        secret = os.environ.get("EDGETUNE_KEY_PASSPHRASE") or click.prompt(
            "Passphrase", hide_input=True, confirmation_prompt=True)
    pair = generate_keypair(directory or paths.keys_dir(), name, secret, overwrite=overwrite)
    click.echo(f"private key: {pair.private_key} (keep it secret; never put it in a bundle)")
    click.echo(f"public key:  {pair.public_key} (share it with your followers)")
    click.echo(f"key id:      {pair.key_id}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "public_key", type=click.Path(path_type=Path), required=True,
              help="The creator's public key (.pub).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(bundle, public_key, as_json) -> None:
    """Check a bundle's signature, every file's hash, and its manifest. Works offline.

    Exits 0 when the bundle is intact; otherwise prints the offending file and exits non-zero
    (codes are listed in mobile_bundle/SPEC.md).

    \b
    Example:
      edgetune verify edgetune-out/bundle --key ~/.edgetune/keys/edgetune.pub
    """
    from edgetune.bundle import verify_bundle

    try:
        result = verify_bundle(bundle, public_key)
    except EdgetuneError as exc:
        if as_json:  # scripts always get JSON on stdout, whatever failed
            click.echo(json.dumps({"ok": False, "error": exc.message,
                                   "file": getattr(exc, "path", None),
                                   "exit_code": exc.exit_code}))
            sys.exit(exc.exit_code)
        raise
    if as_json:
        click.echo(json.dumps({"ok": True, "bundle_id": result.bundle_id, "version": result.version,
                               "key_id": result.key_id, "files": result.files,
                               "bytes": result.bytes}))
    else:
        click.echo(f"OK: {result.bundle_id} {result.version}, {result.files} files, "
                   f"{result.bytes:,} bytes, signed by key {result.key_id[:16]}…")


@cli.command()
def targets() -> None:
    """List the device profiles in quant_profiles/.

    \b
    Example:
      edgetune targets
      edgetune build --target desktop
    """
    from edgetune.profiles import available_profiles, load_profile

    for name in available_profiles():
        p = load_profile(name)
        click.echo(f"{name:<10} {', '.join(p.quants):<24} ctx {p.context_length:<6} {p.description}")


def main() -> None:
    # Library progress bars and advisories would interleave with our own live view.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    cli(prog_name="edgetune")


if __name__ == "__main__":
    main()
