"""Hugging Face commands: publish a bundle, pull one. A thin Click layer over
``edgetune.publish`` and ``edgetune.pull``; ``followers`` lives in ``edgetune.cli.followers``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgetune.cli.base import echo
from edgetune.cli.options import (json_option, passphrase_for, public_key_option,
                                  signing_key_option)
from edgetune.keys import default_private_key
from edgetune.report import human_size

_TOKEN = click.option("--token", default=None, metavar="TOKEN",
                      help="Hugging Face token. Default: HF_TOKEN, else the token file of "
                           "`hf auth login`. Never printed.")


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo", default=None, metavar="USER/NAME",
              help="The model repo. Default: the repo the bundle was built for (publish.repo).")
@click.option("--private", "access", flag_value="private",
              help="Only you can see the repo (the default for a new repo).")
@click.option("--gated", "access", flag_value="gated",
              help="Public page; files only for followers you accept (edgetune followers).")
@click.option("--public", "access", flag_value="public", help="Anyone can download.")
@click.option("--dry-run", is_flag=True,
              help="Print the files that would be uploaded and the model card; change nothing.")
@signing_key_option()
@click.option("--public-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The creator's public key, which checks the signed bundle before upload. "
                   "Default: the .pub beside --signing-key.")
@_TOKEN
@json_option("Print the result as JSON.")
def publish(bundle, repo, access, dry_run, private_key, public_key, token, as_json) -> None:
    """Publish a signed bundle as a Hugging Face model repo, tagged with its version.

    Creates the repo if needed (private by default; --gated: anyone may ask, you accept paying
    followers), records the repo in the bundle's manifest, model card and PocketPal file and
    signs it again, then uploads only the files that differ from the repo. Publishing the same
    bundle again uploads nothing; an interrupted upload continues when run again.

    \b
    Examples:
      edgetune publish edgetune-out/bundle --repo coach-ada/marathon-coach --gated
      edgetune publish edgetune-out/bundle --repo coach-ada/marathon-coach --dry-run
    """
    from edgetune.bundle import read_manifest
    from rich.text import Text

    from edgetune.cli.console import stderr_console
    from edgetune.publish import publish as run_publish

    console = stderr_console()
    manifest = read_manifest(Path(bundle).resolve())
    dist = manifest.get("distribution") or {}
    repo = repo or dist.get("hf_repo")
    if not repo:
        raise click.UsageError("--repo USER/NAME is needed: the bundle was built for no repo")
    access = access or ("gated" if dist.get("gated") else "private")
    private_key = private_key or default_private_key()
    passphrase = None if dry_run else passphrase_for(private_key)
    result = run_publish(bundle, repo, access=access, token=token, private_key=private_key,
                         passphrase=passphrase, public_key=public_key, dry_run=dry_run,
                         on_note=lambda m: console.print(m, style="dim", highlight=False))
    if as_json:
        echo(json.dumps({**result.as_json(), **({"card": result.card} if dry_run else {})}))
        return
    if dry_run:
        echo(f"Dry run: {repo} ({access}), version {result.version}")
        for f in result.files:
            echo(f"  {f.action:<9} {human_size(f.size):>10}  {f.path}")
        for n in result.notes:
            echo(f"note: {n}")
        echo("\n--- README.md (model card) ---\n" + result.card)
        return
    up = result.uploaded
    console.print(Text.assemble(("Published", "bold green"), f" {repo} {result.version}: "
                                f"{len(up)} file(s) uploaded "
                  f"({human_size(result.bytes_uploaded)}), "
                  f"{sum(f.action == 'unchanged' for f in result.files)} unchanged"
                  + (f", {sum(f.action == 'delete' for f in result.files)} deleted"
                     if any(f.action == 'delete' for f in result.files) else "")),
                  highlight=False)
    console.print(f"  commit {result.commit[:12] if result.commit else '-'}, tag {result.version}"
                  f"{' (new)' if result.tagged else ''}; {result.url}", highlight=False)
    for n in result.notes:
        console.print(f"  note: {n}", highlight=False)


@click.command()
@click.argument("target", metavar="USER/NAME[:QUANT]")
@public_key_option("The creator's public key (.pub), which checks the download. Needed the "
                   "first time; remembered per repo.")
@click.option("--license", "--licence", "licence", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), default=None, help="Your licence file: checked before success.")
@click.option("--revocations", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="The creator's revocation list (with --license). Default: "
                                 "the repo's revocations.json, if the creator published one.")
@click.option("--revision", default=None, help="A version tag or commit. Default: the newest.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the bundle. Default: NAME (or NAME-QUANT).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
@_TOKEN
@json_option("Print the result as JSON.")
def pull(target, public_key, licence, revocations, revision, out, overwrite, token, as_json) -> None:
    """Download a published bundle (or one quant of it) and verify it before saying it is there.

    Checks the creator's signature, every file's hash, the manifest and, with --license, your
    licence; a download that fails is deleted. Gated repos need the token of an account the
    creator accepted (HF_TOKEN).

    \b
    Examples:
      edgetune pull coach-ada/marathon-coach:Q4_K_M --public-key coach.pub \\
          --license ada.licence.json
      edgetune chat marathon-coach-Q4_K_M
    """
    from rich.text import Text

    from edgetune.cli.console import stderr_console
    from edgetune.pull import pull as run_pull

    console = stderr_console()
    if revocations is not None and licence is None:
        raise click.UsageError("--revocations needs --license")
    result = run_pull(target, out=out, key=public_key, licence=licence, revocations=revocations,
                      revision=revision, token=token, overwrite=overwrite,
                      on_note=lambda m: console.print(m, style="dim", highlight=False))
    if as_json:
        echo(json.dumps({"repo": result.repo, "revision": result.revision,
                               "path": str(result.path), "bundle_id": result.bundle_id,
                               "version": result.version, "quants": list(result.quants),
                               "files": result.files, "bytes": result.bytes,
                               "key_id": result.key_id, "licence": result.licence_follower}))
        return
    console.print(Text.assemble(
        ("Verified", "bold green"), f" {result.bundle_id} {result.version} from {result.repo} "
        f"({', '.join(result.quants)}): {result.files} files, {human_size(result.bytes)}, "
        f"signed by key {result.key_id[:16]}… -> {result.path}"), highlight=False)
    if result.licence_follower:
        console.print(f"Licence OK: {result.licence_follower}"
                      + (f", valid until {result.licence_expires}" if result.licence_expires
                         else ""), highlight=False)
    console.print(f"Chat with it: edgetune chat {result.path}", highlight=False)
