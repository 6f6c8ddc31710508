"""Red-team cases: what an attacker or a careless user can hand edgetune, and what it must say.

One table, one row per case: how to make the hostile input (a function of a fresh signed
bundle and its keys, returning the command line), the exit code, and a regex the output must
match (``\\A`` anchors it to the first line). Every case is also checked for what no input may
cause: a Python traceback, an exception escaping the command, or a raw control or bidi
character on screen. To add a case, add a row; issue 19 lists where these came from.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetune import hub as hubmod
from edgetune.bundle import BundleModel, build_bundle
from edgetune.cli import cli
from edgetune.keys import KeyPair, generate_keypair, load_private_key
from edgetune.licences import LICENCE_TYPE, issue_for_bundle, write_licence
from edgetune.licences.dsse import pae
from edgetune.signing import sign_bundle
from tests.test_bundle import _gguf, _info

REPO = "alice/coach"
# What must never reach a terminal raw (tab and new line are layout).
UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f]|"
                    "\r(?!\n)")
DEEP = "[" * 5000 + "]" * 5000  # past Python's recursion limit (1,000), under 64 KiB
HUGE = "1" * 5000  # past Python's 4,300-digit int limit


@dataclass
class World:
    """A fresh signed bundle, its keys and a scratch folder, for one case."""

    tmp: Path
    keys: KeyPair
    bundle: Path

    def verify(self, *extra: str) -> list[str]:
        return ["verify", str(self.bundle), "--public-key", str(self.keys.public_key), *extra]

    def manifest(self) -> dict:
        return json.loads((self.bundle / "edgetune.json").read_text())

    def resign(self, manifest_text: str) -> None:
        (self.bundle / "edgetune.json").write_text(manifest_text)
        sign_bundle(self.bundle, self.keys.private_key)

    def file(self, name: str, text: str) -> str:
        (self.tmp / name).write_text(text)
        return str(self.tmp / name)

    def signed_licence(self, name: str, payload: bytes) -> str:
        """A licence envelope around exactly these payload bytes, signed with the creator key."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        key = load_private_key(self.keys.private_key, None)
        sig = key.sign(pae(LICENCE_TYPE, payload), ec.ECDSA(hashes.SHA256()))
        return self.file(name, json.dumps({
            "payloadType": LICENCE_TYPE, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": "k", "sig": base64.b64encode(sig).decode()}]}))

    def licence_payload(self, **fields) -> dict:
        envelope = issue_for_bundle(self.keys.private_key, None, self.bundle, follower="ada")
        return {**json.loads(base64.b64decode(envelope["payload"])), **fields}


def _control_name(w: World) -> list[str]:
    (w.bundle / "x\r\033[2KOK: bundle 17 files verified\033[8m").write_text("hi")
    return w.verify()


def _bidi_name(w: World) -> list[str]:
    (w.bundle / "notes-\u202etxt.exe").write_text("hi")
    return w.verify()


def _duplicate_manifest_key(w: World) -> list[str]:
    text = json.dumps(w.manifest(), indent=2)
    w.resign(text.replace('"license_terms":', '"license_terms": "anything goes",\n  '
                          '"license_terms":', 1))
    return w.verify()


def _oversize_manifest(w: World) -> list[str]:
    manifest = w.manifest()
    manifest["training"]["padding"] = "x" * (2 << 20)  # `training` is open in the schema
    w.resign(json.dumps(manifest))
    return w.verify()


def _deep_manifest(w: World) -> list[str]:
    text = json.dumps(w.manifest())
    w.resign(text.replace('"training": {', f'"training": {{"deep": {DEEP}, ', 1))
    return w.verify()


def _duplicate_licence_key(w: World) -> list[str]:
    body = json.dumps(w.licence_payload(expires="2020-01-01"), sort_keys=True)
    body = body.replace('"expires": "2020-01-01"', '"expires": "2020-01-01", '
                        '"expires": "2999-12-31"')
    return w.verify("--license", w.signed_licence("dup.licence.json", body.encode()))


def _deep_licence(w: World) -> list[str]:
    return w.verify("--license", w.file("deep.licence.json", DEEP))


def _huge_number_licence(w: World) -> list[str]:
    body = json.dumps(w.licence_payload())[:-1] + f', "n": {HUGE}}}'
    return w.verify("--license", w.signed_licence("big.licence.json", body.encode()))


def _train_on(name: str, text: str) -> Callable[[World], list[str]]:
    def make(w: World) -> list[str]:
        return ["train", "--data", w.file(name, text), "--out", str(w.tmp / "adapter")]
    return make


def _issue_for_tampered(w: World) -> list[str]:
    manifest = w.manifest()
    manifest["version"] = "9.9.9"  # a licence for a release the creator never signed
    (w.bundle / "edgetune.json").write_text(json.dumps(manifest, indent=2))
    return ["license", "issue", str(w.bundle), "--follower", "ada", "--signing-key",
            str(w.keys.private_key), "--out", str(w.tmp / "licences")]


def _revoke_deep(w: World) -> list[str]:
    return ["license", "revoke", w.file("deep.licence.json", DEEP), "--list",
            str(w.tmp / "revoked.json"), "--bundle-id", "edgetune-demo", "--signing-key",
            str(w.keys.private_key)]


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[World], list[str]]
    code: int
    says: str  # re.search over the whole output (MULTILINE); \A: the first line


CASES = [
    Case("file name that rewrites the line", _control_name, 6,
         r"\AError: x\\r\\u001b\[2KOK: bundle 17 files verified\\u001b\[8m: file is not covered"),
    Case("file name with a bidi override", _bidi_name, 6, r"\AError: notes-\\u202etxt\.exe: "),
    Case("missing bundle path with control characters",
         lambda w: ["verify", "no\rOK", "--public-key", str(w.keys.public_key)], 2,
         r"\AError: bundle folder not found: no\\rOK"),
    Case("signed manifest with a duplicate key", _duplicate_manifest_key, 9,
         r'\AError: edgetune\.json: duplicate key "license_terms"'),
    Case("signed manifest over the size limit", _oversize_manifest, 9,
         r"\AError: edgetune\.json: .*over the 1 MiB limit for a manifest"),
    Case("signed manifest nested too deep", _deep_manifest, 9,
         r"\AError: edgetune\.json: nested deeper than 64 levels"),
    Case("signed licence with a duplicate key", _duplicate_licence_key, 16,
         r'\AError: .*dup\.licence\.json: malformed licence \(payload: duplicate key "expires"\)'),
    Case("licence nested too deep", _deep_licence, 16,
         r"\AError: .*deep\.licence\.json: malformed licence \(nested deeper than 64 levels\)"),
    Case("signed licence with a 5,000-digit number", _huge_number_licence, 16,
         r"\AError: .*big\.licence\.json: malformed licence \(payload: a number of 5,000 "),
    Case("JSONL data nested too deep", _train_on("deep.jsonl", DEEP + "\n"), 1,
         r"\AError: deep\.jsonl:1: not valid JSON \(nested deeper than 64 levels\)"),
    Case("JSONL data with a 5,000-digit number",
         _train_on("big.jsonl", f'{{"question": "q", "answer": {HUGE}}}\n'), 1,
         r"\AError: big\.jsonl:1: not valid JSON \(a number of 5,000 characters"),
    Case("JSON data nested too deep", _train_on("deep.json", DEEP), 1,
         r"\AError: deep\.json: not valid JSON \(nested deeper than 64 levels\)"),
    Case("JSONL data with a duplicate key",
         _train_on("dup.jsonl", '{"question": "q", "answer": "1", "answer": "2"}\n'), 1,
         r'\AError: dup\.jsonl:1: not valid JSON \(duplicate key "answer"\)'),
    Case("licence for a bundle whose manifest was altered", _issue_for_tampered, 5,
         r"\AError: edgetune\.json: content does not match its signed hash"),
    Case("revoking a licence file nested too deep", _revoke_deep, 1,
         r"\AError: .*deep\.licence\.json: not a licence file \(nested deeper than 64 levels\)"),
]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> KeyPair:
    return generate_keypair(tmp_path_factory.mktemp("keys"), "creator")


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys) -> Path:
    tmp = tmp_path_factory.mktemp("built")
    model = BundleModel("Q4_K_M", _gguf(tmp / "m.gguf", 1), "qwen3", 4096, 10**9)
    return build_bundle(tmp / "bundle", _info(version="1.0.0"), [model],
                        private_key=keys.private_key).path


@pytest.fixture
def world(tmp_path, keys, signed, monkeypatch) -> World:
    monkeypatch.delenv("EDGETUNE_DEBUG", raising=False)
    return World(tmp_path, keys, Path(shutil.copytree(signed, tmp_path / "bundle")))


def _check(result, code: int, says: str) -> None:
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{result.exception!r} escaped:\n{output}"
    assert "Traceback" not in output
    assert result.exit_code == code, output
    assert re.search(says, output, re.MULTILINE), output
    assert not UNSAFE.search(output), repr(output)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_redteam_case(world: World, case: Case):
    _check(CliRunner().invoke(cli, case.make(world)), case.code, case.says)


def test_debug_still_shows_the_traceback(world: World, monkeypatch):
    monkeypatch.setenv("EDGETUNE_DEBUG", "1")
    result = CliRunner().invoke(cli, _duplicate_manifest_key(world))
    assert type(result.exception).__name__ == "VerificationError"


def test_a_terminal_sees_the_hostile_name_escaped(world: World):
    """Through a real pseudo-terminal, where click keeps escape codes: the name that fakes an
    "OK" line on screen arrives escaped."""
    import pty
    import subprocess

    argv = _control_name(world)
    parent, child = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "edgetune", *argv], stdin=child,
                            stdout=child, stderr=child, env=env, close_fds=True)
    os.close(child)
    raw = b""
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    os.close(parent)
    assert proc.wait(timeout=60) == 6, raw
    assert b"\x1b" not in raw and b"\rOK" not in raw, raw
    assert b"Error: x\\r\\u001b[2KOK: bundle 17 files verified" in raw


def test_consoles_print_markup_and_control_characters_literally():
    """The rich consoles' edge: a Hub user name or a path holding rich markup or escape codes
    prints as written, in a line and in a table, on a terminal with colours."""
    import io

    from rich.table import Table

    from edgetune.cli.console import stdout_console

    buffer = io.StringIO()
    console = stdout_console(file=buffer, force_terminal=True, width=200, highlight=False)
    hostile = "[bold]Eve[/bold] [/oops] \x1b[2K\u202e"  # (rich itself drops \r)
    console.print(hostile)
    table = Table()
    table.add_column("full name")
    table.add_row(hostile)
    console.print(table)
    out = buffer.getvalue()
    assert out.count("[bold]Eve[/bold] [/oops] \\u001b[2K\\u202e") == 2
    assert "\x1b[2K" not in out and "\u202e" not in out


def test_token_redaction_covers_underscores():
    token = "hf_live_AbC_123_xyz_7890"
    assert token not in hubmod.redact(f"refused {token} here")
    assert hubmod.redact(f"refused {token} here") == "refused hf_*** here"


# ------------------------------------------------------------- with the Hub test double

@pytest.fixture
def hub_world(hub, world: World, monkeypatch) -> World:
    monkeypatch.setattr(hubmod, "BACKOFF_S", (0.0, 0.0, 0.0, 0.0))
    monkeypatch.setenv("EDGETUNE_HOME", str(world.tmp / "home"))
    monkeypatch.setenv("HF_TOKEN", hub.add_user("alice"))
    return world


def _publish(w: World, *extra: str):
    return CliRunner().invoke(cli, ["publish", str(w.bundle), "--repo", REPO, "--key",
                                    str(w.keys.private_key), *extra])


def test_publish_dry_run_works_offline_with_a_token(hub, hub_world: World):
    hub.stop()  # nothing listens any more: connections are refused
    result = _publish(hub_world, "--dry-run")
    _check(result, 0, r"^Dry run: alice/coach \(private\), version 1\.0\.0$")
    assert re.search(r"^note: cannot reach the Hugging Face Hub .*every file is listed",
                     result.output, re.MULTILINE), result.output


def test_pull_with_a_hostile_licence_leaves_nothing(hub_world: World):
    w = hub_world
    assert _publish(w).exit_code == 0
    out = w.tmp / "pulled"
    result = CliRunner().invoke(cli, ["pull", REPO, "--key", str(w.keys.public_key), "--out",
                                      str(out), "--license",
                                      w.file("deep.licence.json", DEEP)])
    _check(result, 16, r"^Error: .*deep\.licence\.json: malformed licence \(nested deeper")
    assert not out.exists() and not out.with_name("pulled.partial").exists()


def test_pull_prints_names_with_markup_as_written(hub_world: World):
    w = hub_world
    assert _publish(w).exit_code == 0
    licence = write_licence(issue_for_bundle(w.keys.private_key, None, w.bundle,
                                             follower="[bold]Eve[/bold]"),
                            w.tmp / "eve.licence.json")
    out = w.tmp / "out[/x]"
    result = CliRunner().invoke(cli, ["pull", REPO, "--key", str(w.keys.public_key), "--out",
                                      str(out), "--license", str(licence)])
    _check(result, 0, r"^Licence OK: \[bold\]Eve\[/bold\]$")
    assert re.search(r"^Verified .* -> .*out\[/x\]$", result.output, re.MULTILINE), result.output


def test_every_cli_line_goes_through_the_escaping_edge():
    """Commands print with ``cli.base.echo`` and consoles from ``cli.console`` (both escape),
    never with click.echo or a Console of their own, so no new command can forget."""
    import edgetune.cli

    cli_dir = Path(edgetune.cli.__file__).parent
    raw = {path.name: line for path in sorted(cli_dir.glob("*.py"))
           for line in path.read_text().splitlines()
           if (path.name != "base.py" and re.search(r"click\.s?echo\(", line))
           or (path.name != "console.py" and re.search(r"\bConsole\(", line))}
    assert raw == {}
