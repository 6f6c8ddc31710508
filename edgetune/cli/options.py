"""Option decorators and prompts that several commands share."""

from __future__ import annotations

import os
from pathlib import Path

import click

from edgetune.keys import is_encrypted


def passphrase_for(private_key: Path) -> str | None:
    """EDGETUNE_KEY_PASSPHRASE, else a prompt when the key file is encrypted. Never echoed."""
    secret = os.environ.get("EDGETUNE_KEY_PASSPHRASE")
    if secret:
        return secret
    # On stderr: stdout may carry --json output.
    return (click.prompt(f"Passphrase for {private_key}", hide_input=True, err=True)
            if is_encrypted(private_key) else None)


private_key_option = click.option(
    "--key", "private_key", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The creator's private key. Default: ~/.edgetune/keys/edgetune.key "
         "(passphrase from EDGETUNE_KEY_PASSPHRASE, or asked for).")
