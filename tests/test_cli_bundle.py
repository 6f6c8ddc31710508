"""`edgetune keys / sign / license / verify` end to end on a real signed bundle."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetune.bundle import build_bundle
from edgetune.cli import cli
from edgetune.licences import issue_licence, write_licence
from tests.test_bundle import _gguf, _info
from edgetune.bundle import BundleModel

SECRET = "a long passphrase nobody prints"


@pytest.fixture
def creator(tmp_path: Path):
    """A passphrase-protected key made by the CLI, and a bundle signed with it."""
    env = {"EDGETUNE_KEY_PASSPHRASE": SECRET}
    made = CliRunner(env=env).invoke(cli, ["keys", "new", "--dir", str(tmp_path / "keys"),
                                           "--name", "coach", "--passphrase"])
    assert made.exit_code == 0, made.output
    assert SECRET not in made.output
    key, pub = tmp_path / "keys" / "coach.key", tmp_path / "keys" / "coach.pub"
    model = BundleModel("Q4_K_M", _gguf(tmp_path / "m.gguf", 1), "qwen3", 4096, 10**9)
    bundle = build_bundle(tmp_path / "bundle", _info(version="1.0.0"), [model],
                          private_key=key, passphrase=SECRET).path
    return {"key": key, "pub": pub, "bundle": bundle, "env": env, "tmp": tmp_path}


def _run(creator, *args):
    result = CliRunner(env=creator["env"]).invoke(cli, [str(a) for a in args])
    assert SECRET not in result.output + (result.stderr or "")
    return result


def _verify(creator, *extra):
    return _run(creator, "verify", creator["bundle"], "--public-key", creator["pub"], "--json",
                *extra)


def test_issue_verify_and_revoke_a_licence(creator):
    out = creator["tmp"] / "licences"
    issued = _run(creator, "license", "issue", creator["bundle"], "--follower", "ada@example.com",
                  "--expires", "2999-12-31", "--devices", "2", "--signing-key", creator["key"],
                  "--out", out)
    assert issued.exit_code == 0, issued.output
    licence = out / "ada@example.com.licence.json"
    ok = _verify(creator, "--license", licence)
    assert ok.exit_code == 0, ok.output
    payload = json.loads(ok.stdout)
    assert payload["licence"]["follower"] == "ada@example.com"
    assert payload["licence"]["devices"] == 2 and payload["licence"]["expires"] == "2999-12-31"

    revoked = creator["tmp"] / "revoked.json"
    result = _run(creator, "license", "revoke", licence, "--list", revoked,
                  "--bundle-id", "edgetune-demo", "--signing-key", creator["key"])
    assert result.exit_code == 0, result.output
    refused = _verify(creator, "--license", licence, "--revocations", revoked)
    assert refused.exit_code == 15
    assert json.loads(refused.stdout)["file"] == str(licence)
    # The bundle itself still verifies: revocation is about the licence, not the files.
    assert _verify(creator).exit_code == 0


def test_licences_from_csv(creator):
    csv = creator["tmp"] / "followers.csv"
    csv.write_text("follower,expires,devices\nbo,2999-01-01,1\ncy,,\n")
    result = _run(creator, "license", "issue", creator["bundle"], "--from-csv", csv,
                  "--signing-key", creator["key"], "--out", creator["tmp"] / "many")
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (creator["tmp"] / "many").iterdir())
    assert files == ["bo.licence.json", "cy.licence.json"]
    for name in files:
        assert _verify(creator, "--license", creator["tmp"] / "many" / name).exit_code == 0
    bad = creator["tmp"] / "bad.csv"
    bad.write_text("follower,devices\nzed,many\n")
    result = _run(creator, "license", "issue", creator["bundle"], "--from-csv", bad,
                  "--signing-key", creator["key"], "--out", creator["tmp"] / "none")
    assert result.exit_code == 1 and "row 2" in result.stderr and "devices" in result.stderr
    assert not (creator["tmp"] / "none").exists()


@pytest.mark.parametrize("change, code", [
    ({"bundle_version": "1.0.1"}, 14),  # another version of the same bundle
    ({"bundle_id": "someone-else"}, 14),
    ({"expires": "2020-01-01", "now": datetime(2019, 6, 1, tzinfo=timezone.utc)}, 13),
])
def test_licence_refusals(creator, change, code):
    fields = {"bundle_id": "edgetune-demo", "bundle_version": "1.0.0", "follower": "dee",
              **change}
    envelope = issue_licence(creator["key"], SECRET, **fields)
    path = write_licence(envelope, creator["tmp"] / "dee.licence.json")
    result = _verify(creator, "--license", path)
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["ok"] is False


def test_licence_from_another_creator_is_refused(creator, tmp_path):
    other = CliRunner().invoke(cli, ["keys", "new", "--dir", str(tmp_path / "k2"), "--name", "x"])
    assert other.exit_code == 0
    envelope = issue_licence(tmp_path / "k2" / "x.key", None, bundle_id="edgetune-demo",
                             bundle_version="1.0.0", follower="eve",
                             now=datetime.now(timezone.utc) - timedelta(days=1))
    path = write_licence(envelope, tmp_path / "eve.licence.json")
    assert _verify(creator, "--license", path).exit_code == 12


def test_sign_again_after_an_edit(creator):
    bundle = creator["bundle"]
    (bundle / "README.md").write_text("# A better card\n")
    gguf = next(bundle.glob("*.gguf"))
    gguf.write_bytes(gguf.read_bytes() + b"requantised")
    assert _verify(creator).exit_code == 5
    result = _run(creator, "sign", bundle, "--signing-key", creator["key"])
    assert result.exit_code == 0, result.output
    assert _verify(creator).exit_code == 0
    manifest = json.loads((bundle / "edgetune.json").read_text())
    assert manifest["artifacts"][0]["size"] == gguf.stat().st_size


def test_usage_errors(creator):
    both = _run(creator, "license", "issue", creator["bundle"], "--follower", "a",
                "--from-csv", creator["tmp"] / "m.gguf", "--signing-key", creator["key"])
    assert both.exit_code == 2 and "exactly one of --follower or --from-csv" in both.output
    lone = _verify(creator, "--revocations", creator["tmp"] / "r.json")
    assert lone.exit_code == 2 and "--revocations needs --license" in lone.output
    wrong = CliRunner().invoke(cli, ["license", "issue", str(creator["bundle"]), "--follower", "a",
                                     "--signing-key", str(creator["key"])], input="not it\n")
    assert wrong.exit_code == 1 and "wrong passphrase" in wrong.stderr


# --------------------------------------------------------------------------- key options

def _key_options(command=cli, path=()):
    """(command path, parameter name, option names) of every key option in the command tree."""
    for name, sub in getattr(command, "commands", {}).items():
        yield from _key_options(sub, (*path, name))
    for param in getattr(command, "params", []):
        if param.name in ("private_key", "public_key"):
            yield " ".join(path), param.name, param.opts


def test_every_key_option_says_which_key_it_is():
    """--signing-key is always the private key and --public-key the public one; --key, their
    old name, is a second spelling of the one key a command reads."""
    found = {(path, name): opts for path, name, opts in _key_options()}
    signing = {"build", "status", "sign", "license issue", "license revoke", "publish",
               "followers sync"}
    public = {"verify", "pull", "chat"}
    assert {p for p, n in found if n == "private_key"} == signing
    assert {p for p, n in found if n == "public_key"} == public | {"publish"}
    for path in signing:
        assert found[path, "private_key"] == ["--signing-key", "--key"], path
    for path in public:
        assert found[path, "public_key"] == ["--public-key", "--key"], path
    assert found["publish", "public_key"] == ["--public-key"]  # publish's --key signs
    for path, name, _ in _key_options():
        command = cli
        for part in path.split():
            command = command.commands[part]
        help_text = next(p.help for p in command.params if p.name == name)
        assert ("private key" if name == "private_key" else "public key") in help_text, path


def test_key_is_still_accepted(creator):
    """Scripts written for `--key` keep working: the same option under its old name."""
    assert _run(creator, "sign", creator["bundle"], "--key", creator["key"]).exit_code == 0
    old = _run(creator, "verify", creator["bundle"], "--key", creator["pub"], "--json")
    assert old.exit_code == 0 and json.loads(old.stdout)["ok"] is True


class _Stop(Exception):
    pass


@pytest.fixture
def build_calls(monkeypatch, tmp_path: Path) -> list[dict]:
    """What `edgetune build` hands to pipeline.build (which then stops), run in an empty folder."""
    calls: list[dict] = []

    def fake_build(project, profile, out, **kwargs):
        calls.append(kwargs)
        raise _Stop()

    monkeypatch.setattr("edgetune.pipeline.build", fake_build)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGETUNE_HOME", str(tmp_path / "home"))
    return calls


def test_build_asks_for_the_signing_key_passphrase_up_front(creator, build_calls):
    result = CliRunner().invoke(cli, ["build", "--signing-key", str(creator["key"]), "--verbose"],
                                input=SECRET + "\n")
    assert isinstance(result.exception, _Stop), result.output
    assert f"Passphrase for {creator['key']}" in result.stderr  # on stderr, never echoed
    assert SECRET not in result.output + result.stderr
    assert build_calls[-1]["key"] == creator["key"]
    assert build_calls[-1]["passphrase"] == SECRET and build_calls[-1]["verbose"] is True

    from_env = _run(creator, "build", "--key", creator["key"])
    assert isinstance(from_env.exception, _Stop) and "Passphrase" not in from_env.stderr
    assert build_calls[-1]["passphrase"] == SECRET and build_calls[-1]["verbose"] is False


def test_build_asks_no_passphrase_when_it_signs_nothing(creator, build_calls, tmp_path: Path):
    stops_early = CliRunner().invoke(cli, ["build", "--signing-key", str(creator["key"]),
                                           "--to", "evaluate"])
    assert isinstance(stops_early.exception, _Stop) and "Passphrase" not in stops_early.stderr
    assert build_calls[-1]["passphrase"] is None
    default_key = CliRunner().invoke(cli, ["build"])  # unencrypted, or made by the build itself
    assert isinstance(default_key.exception, _Stop) and "Passphrase" not in default_key.stderr
    assert build_calls[-1]["key"] is None and build_calls[-1]["passphrase"] is None
