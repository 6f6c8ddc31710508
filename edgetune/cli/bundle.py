"""Bundle commands: signing keys, verify, re-sign, and follower licences.

A thin Click layer over ``edgetune.signing``, ``edgetune.bundle`` and ``edgetune.licences``;
registered on the main group in ``edgetune.cli``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from edgetune.cli.base import echo
from edgetune.cli.options import (json_option, passphrase_for, public_key_option,
                                  signing_key_option)
from edgetune.errors import EdgetuneError
from edgetune.keys import default_private_key


@click.group()
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
    from edgetune.keys import generate_keypair

    secret = None
    if passphrase:
        secret = os.environ.get("EDGETUNE_KEY_PASSPHRASE") or click.prompt(
            "Passphrase", hide_input=True, confirmation_prompt=True)
    pair = generate_keypair(directory or paths.keys_dir(), name, secret, overwrite=overwrite)
    echo(f"private key: {pair.private_key} (keep it secret; never put it in a bundle)")
    echo(f"public key:  {pair.public_key} (share it with your followers)")
    echo(f"key id:      {pair.key_id}")



@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@public_key_option("The creator's public key (.pub), which checks the signature.",
                   type=click.Path(path_type=Path), required=True)
@click.option("--license", "--licence", "licence", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also check this follower licence against the bundle.")
@click.option("--revocations", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The creator's signed revocation list (with --license). Needed once this "
                   "machine has seen one of this creator's lists; an older one is refused.")
@json_option("Print the result as JSON.")
def verify(bundle, public_key, licence, revocations, as_json) -> None:
    """Check a bundle's signature, every file's hash, and its manifest. Works offline.

    With --license, also check that the licence is signed by the same creator, is for this
    bundle and version, has not expired and is not in --revocations, a list at least as new as
    the newest of this creator's lists this machine has seen. Exits 0 when everything
    holds; otherwise prints the offending file and exits non-zero (codes: mobile_bundle/SPEC.md).

    \b
    Examples:
      edgetune verify edgetune-out/bundle --public-key ~/.edgetune/keys/edgetune.pub
      edgetune verify bundle --public-key coach.pub --license ada.licence.json \\
          --revocations revoked.json
    """
    from edgetune.bundle import verify_bundle

    if revocations is not None and licence is None:
        raise click.UsageError("--revocations needs --license (the licence to check against it)")
    try:
        result = verify_bundle(bundle, public_key)
        info = None
        if licence is not None:
            from edgetune.licences import newest_revocations, verify_licence

            info = verify_licence(licence, public_key, bundle_id=result.bundle_id,
                                  bundle_version=result.version,
                                  revocations=newest_revocations(revocations, public_key))
    except EdgetuneError as exc:
        if as_json:  # scripts always get JSON on stdout, whatever failed
            echo(json.dumps({"ok": False, "error": exc.message,
                                   "file": getattr(exc, "path", None),
                                   "exit_code": exc.exit_code}))
            sys.exit(exc.exit_code)
        raise
    if as_json:
        payload = {"ok": True, "bundle_id": result.bundle_id, "version": result.version,
                   "key_id": result.key_id, "files": result.files, "bytes": result.bytes}
        if info is not None:
            payload["licence"] = {"licence_id": info.licence_id, "follower": info.follower,
                                  "expires": info.expires, "devices": info.devices}
        echo(json.dumps(payload))
        return
    echo(f"OK: {result.bundle_id} {result.version}, {result.files} files, "
               f"{result.bytes:,} bytes, signed by key {result.key_id[:16]}…")
    if info is not None:
        echo(f"Licence OK: {info.follower}, "
                   + (f"valid until {info.expires}" if info.expires else "no expiry")
                   + (f", {info.devices} device(s)" if info.devices else ""))


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@signing_key_option()
def sign(bundle, private_key) -> None:
    """Sign a bundle again after editing it (model card, persona files, a GGUF).

    Refreshes every artifact's sha256 and size in edgetune.json, then rewrites model.sig over
    all files, and verifies the result when the .pub sits next to the key.

    \b
    Example:
      edgetune sign edgetune-out/bundle
    """
    from edgetune.bundle import resign_bundle
    from edgetune.preflight import check_output

    check_output(bundle, "BUNDLE")  # it is rewritten in place
    key = private_key or default_private_key()
    result = resign_bundle(bundle, key, passphrase_for(key))
    echo(f"Signed: {result.bundle_id} {result.version} with key {result.key_id[:16]}…")


@click.group("license")
def license_group() -> None:
    """Per-follower licences: small signed files bound to one bundle version, checked offline."""


@license_group.command("issue")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--follower", default=None, help="Who the licence is for (e-mail, username, ...).")
@click.option("--from-csv", "from_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Issue one licence per row: columns follower[,expires][,devices].")
@click.option("--expires", default=None, help="Last valid day (YYYY-MM-DD, UTC) or a UTC time.")
@click.option("--devices", type=click.IntRange(min=1), default=None,
              help="Devices the follower may use (recorded for apps; not enforceable offline).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("licences"),
              show_default=True, help="Folder for the <follower>.licence.json files.")
@signing_key_option()
def license_issue(bundle, follower, from_csv, expires, devices, out, private_key) -> None:
    """Issue follower licences for BUNDLE (its folder or edgetune.json).

    Licences are kept outside the signed bundle: send each follower their own file.

    \b
    Examples:
      edgetune license issue edgetune-out/bundle --follower ada@example.com --expires 2027-06-30
      edgetune license issue edgetune-out/bundle --from-csv followers.csv --out licences
    """
    from edgetune.licences import issue_for_bundle, issue_from_csv, safe_file_stem, write_licence

    if (follower is None) == (from_csv is None):
        raise click.UsageError("pass exactly one of --follower or --from-csv")
    if from_csv is not None and (expires or devices):
        raise click.UsageError("with --from-csv, put expires/devices in the CSV's columns")
    from edgetune.preflight import check_output

    check_output(out)
    key = private_key or default_private_key()
    secret = passphrase_for(key)
    if from_csv is not None:
        written = issue_from_csv(key, secret, bundle, from_csv, out)
        echo(f"Issued {len(written)} licences into {out}")
        return
    envelope = issue_for_bundle(key, secret, bundle, follower=follower, expires=expires,
                                devices=devices)
    out.mkdir(parents=True, exist_ok=True)
    path = write_licence(envelope, out / f"{safe_file_stem(follower)}.licence.json")
    echo(f"Issued {path} for {follower}")


@license_group.command("revoke")
@click.argument("licences", nargs=-1, required=True)
@click.option("--list", "revocations", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="The revocation list to create or extend (signed).")
@click.option("--bundle-id", required=True, help="The bundle_id the licences were issued for.")
@signing_key_option()
def license_revoke(licences, revocations, bundle_id, private_key) -> None:
    """Revoke licences (files or 32-hex licence ids) in a signed revocation list.

    Publish the list next to the bundle (not inside it), e.g. as revocations.json in the
    bundle's repo (`hf upload USER/NAME revoked.json revocations.json`), which `pull` checks
    licences against. Apps and this machine refuse a list older than one they have seen.

    \b
    Example:
      edgetune license revoke licences/ada@example.com.licence.json --list revoked.json \\
          --bundle-id coach-pip
    """
    from edgetune.licences import licence_id_of, revoke

    ids = [item if Path(item).suffix != ".json" and not Path(item).exists()
           else licence_id_of(Path(item)) for item in licences]
    key = private_key or default_private_key()
    result = revoke(key, passphrase_for(key), revocations, licence_ids=ids, bundle_id=bundle_id)
    echo(f"{revocations}: {len(result.entries)} revoked (sequence {result.sequence})")
