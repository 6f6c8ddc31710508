"""`edgetune followers`: the real huggingface_hub client against the Hub test double (no mocks)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from huggingface_hub import HfApi

from edgetune import followers as fl
from edgetune import hub as hub_module
from edgetune.bundle import GATED_EMAIL_FIELD, BundleModel, build_bundle
from edgetune.cli.followers import followers
from edgetune.errors import DataError
from edgetune.licences import verify_licence
from edgetune.payments import read_payments
from edgetune.keys import generate_keypair
from tests.test_bundle import _gguf, _info

HANDLE = r"/user-access-request/handle$"


@pytest.fixture
def creator(hub, monkeypatch):
    """A creator with a gated (manual approval) repo; retries without waiting."""
    monkeypatch.setattr(hub_module, "BACKOFF_S", (0.0, 0.0, 0.0, 0.0))
    token = hub.add_user("creator")
    api = HfApi(token=token)
    repo = api.create_repo("coach").repo_id
    api.update_repo_settings(repo, gated="manual")
    return SimpleNamespace(token=token, api=api, repo=repo, hub=hub)


@pytest.fixture(scope="module")
def signed_bundle(tmp_path_factory):
    """A real bundle signed with the creator's key (about 1 s, once for the module)."""
    root = tmp_path_factory.mktemp("signed")
    keys = generate_keypair(root / "keys", "coach")
    model = BundleModel("Q4_K_M", _gguf(root / "m.gguf", 1), "qwen3", 4096, 10**9)
    bundle = build_bundle(root / "bundle", _info(version="1.0.0"), [model],
                          private_key=keys.private_key, passphrase=None).path
    manifest = json.loads((bundle / "edgetune.json").read_text())
    return SimpleNamespace(keys=keys, path=bundle, bundle_id=manifest["bundle_id"],
                           version=manifest["version"])


def _ask(c, user: str, payment: str | None = None, email: str | None = None) -> None:
    c.hub.add_user(user)
    c.hub.request_access(c.repo, user, fields={GATED_EMAIL_FIELD: payment} if payment else None,
                         email=email)


def _five(c) -> None:
    _ask(c, "ada")                                       # paid: username, other case in the CSV
    _ask(c, "bob", payment=" Bob@Example.com ")          # paid: the form's payment email
    _ask(c, "carol", email="carol@example.com")          # paid: the account email
    _ask(c, "dave", payment="dave@example.com")          # did not pay
    _ask(c, "erin")                                      # did not pay


def _csv(tmp_path: Path, text: str, name: str = "payments.csv", bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def _paid(tmp_path: Path) -> Path:
    return _csv(tmp_path, "HF_Username, Email ,amount\n"
                          "ADA,,9.99\n"
                          "\n"
                          ", BOB@example.com ,9.99\n"
                          ",  CAROL@Example.COM,5\n"
                          "zed,,9.99\n", bom=True)


def _run(c, *args, token: str | None = None, env: dict | None = None):
    argv = [str(a) for a in args]
    if token is not False:
        argv += ["--token", token or c.token]
    result = CliRunner(env=env).invoke(followers, argv)
    assert c.token not in result.output + result.stderr
    return result


def _json(result) -> dict:
    return json.loads(result.stdout)


def _names(c, status: str) -> list[str]:
    return sorted(r.username for r in fl.list_requests(c.api, c.repo, status))


def _access_calls(c) -> list:
    return [r for r in c.hub.stats.requests if "/user-access-request/" in r.path]


# --- sync ---------------------------------------------------------------------------------------

def test_sync_accepts_exactly_the_paid(creator, tmp_path):
    c = creator
    _five(c)
    paid = _paid(tmp_path)

    dry = _run(c, "sync", c.repo, "--paid", paid, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "Dry run, nothing changed" in dry.stdout and "3 would be accepted" in dry.stdout
    assert _names(c, "pending") == ["ada", "bob", "carol", "dave", "erin"]

    first = _run(c, "sync", c.repo, "--paid", paid)
    assert first.exit_code == 0, first.output
    out = first.stdout
    assert "3 accepted, 2 not in payments (left pending)" in out
    assert "Accepted: ada, bob, carol" in out
    assert "dave" in out and "erin" in out and "dave@example.com" in out  # the unmatched listed
    assert _names(c, "accepted") == ["ada", "bob", "carol"]
    assert _names(c, "pending") == ["dave", "erin"]

    second = _run(c, "sync", c.repo, "--paid", paid, "--reject-unpaid", "--json")
    assert second.exit_code == 0, second.output
    report = _json(second)
    assert report["ok"] and report["accepted"] == [] and report["rejected"] == ["dave", "erin"]
    assert [r["username"] for r in report["not_in_payments"]] == ["dave", "erin"]
    assert {r["action"] for r in report["not_in_payments"]} == {"rejected"}
    assert sorted(report["already_accepted"]) == ["ada", "bob", "carol"]
    assert _names(c, "rejected") == ["dave", "erin"] and _names(c, "pending") == []

    c.hub.reset_stats()
    third = _run(c, "sync", c.repo, "--paid", paid, "--json")
    assert third.exit_code == 0 and _json(third)["accepted"] == []
    assert all(r.method == "GET" for r in _access_calls(c))  # a rerun only lists


def test_sync_function_conflicts_and_rejected_payers(creator, tmp_path):
    c = creator
    _ask(c, "ada", payment="shared@example.com")
    _ask(c, "mallory", payment="SHARED@example.com")  # typed someone else's payment email
    _ask(c, "erin")
    c.api.reject_access_request(c.repo, "erin", rejection_reason="no payment yet")
    payments = read_payments(_csv(tmp_path, "email,hf_username\nshared@example.com,\n,erin\n"))

    result = fl.sync(c.api, c.repo, payments)
    assert result.ok and result.accepted == [] and result.unpaid == []
    assert [r.username for r in result.conflicts] == ["ada", "mallory"]  # neither: ambiguous
    assert [r.username for r in result.rejected_paid] == ["erin"]
    assert _names(c, "pending") == ["ada", "mallory"]

    again = fl.sync(c.api, c.repo, payments, recheck_rejected=True)
    assert [r.username for r in again.accepted] == ["erin"]
    assert _names(c, "accepted") == ["erin"]


def test_sync_survives_a_transient_500_and_one_user_failing(creator, tmp_path):
    c = creator
    _five(c)
    c.hub.fail_next("POST", HANDLE, status=500)  # once: retried
    result = _run(c, "sync", c.repo, "--paid", _paid(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert _json(result)["accepted"] == ["ada", "bob", "carol"]
    assert [r.status for r in _access_calls(c) if r.method == "POST"] == [500, 200, 200, 200]
    assert "trying again" in result.stderr

    for user in ("fay", "gus", "hal"):
        _ask(c, user)
    c.hub.fail_next("POST", HANDLE, status=503, times=5)  # every attempt for the first user
    paid = _csv(tmp_path, "hf_username\nfay\ngus\nhal\n", name="more.csv")
    failed = _run(c, "sync", c.repo, "--paid", paid)
    assert failed.exit_code == 1
    assert "2 accepted" in failed.stdout and "1 failed" in failed.stdout
    assert "fay" in failed.stderr and "HTTP 503" in failed.stderr
    assert _names(c, "pending") == ["dave", "erin", "fay"]  # gus and hal were not lost

    rerun = _run(c, "sync", c.repo, "--paid", paid, "--json")
    assert rerun.exit_code == 0 and _json(rerun)["accepted"] == ["fay"]


def test_sync_issues_verifiable_licences_and_keeps_existing(creator, tmp_path, signed_bundle):
    c, b = creator, signed_bundle
    _five(c)
    out = tmp_path / "licences"
    args = ["sync", c.repo, "--paid", _paid(tmp_path), "--licences-for", b.path,
            "--licences-dir", out, "--key", b.keys.private_key]
    result = _run(c, *args)
    assert result.exit_code == 0, result.output
    assert "3 accepted" in result.stdout and "3 licences written" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "ada.licence.json", "bob.licence.json", "carol.licence.json"]
    for user in ("ada", "bob", "carol"):
        info = verify_licence(out / f"{user}.licence.json", b.keys.public_key,
                              bundle_id=b.bundle_id, bundle_version=b.version)
        assert info.follower == user

    _ask(c, "zed")  # paid earlier (in the CSV), requests now
    before = (out / "ada.licence.json").read_bytes()
    again = _run(c, *args, "--json")
    assert again.exit_code == 0, again.output
    report = _json(again)
    assert report["accepted"] == ["zed"]
    assert [Path(p).name for p in report["licences"]["written"]] == ["zed.licence.json"]
    assert len(report["licences"]["kept"]) == 3
    assert (out / "ada.licence.json").read_bytes() == before  # never overwritten

    text = _run(c, *args)
    assert "4 kept, not overwritten (already there)" in text.stdout

    # a licence binds one exact version: files of another release are kept, and flagged
    batch = fl.issue_licences(b.keys.private_key, None, (b.bundle_id, "9.9.9"),
                              ["ada", "newbie"], out)
    assert [p.name for p in batch.written] == ["newbie.licence.json"]
    assert [p.name for p in batch.other_release] == ["ada.licence.json"]


def test_sync_licences_default_to_a_folder_per_release(creator, tmp_path, signed_bundle,
                                                       monkeypatch):
    c, b = creator, signed_bundle
    _ask(c, "ada")
    monkeypatch.chdir(tmp_path)
    result = _run(c, "sync", c.repo, "--paid", _csv(tmp_path, "hf_username\nada\n"),
                  "--licences-for", b.path / "edgetune.json", "--key", b.keys.private_key)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "licences" / f"{b.bundle_id}-{b.version}" / "ada.licence.json").is_file()


def test_sync_with_the_wrong_key_changes_nothing(creator, tmp_path, signed_bundle):
    c = creator
    _five(c)
    other = generate_keypair(tmp_path / "other", "other")
    result = _run(c, "sync", c.repo, "--paid", _paid(tmp_path), "--licences-for",
                  signed_bundle.path, "--key", other.private_key)
    assert result.exit_code == 1 and "not this key" in result.stderr
    assert _access_calls(c) == [] and _names(c, "pending") == ["ada", "bob", "carol", "dave",
                                                               "erin"]


# --- accept / reject / grant / list --------------------------------------------------------------

def test_accept_reject_grant_and_list(creator):
    c = creator
    _ask(c, "u1", payment="u1@example.com")
    _ask(c, "u2")
    _ask(c, "u3")
    c.hub.add_user("frank")

    pending = _run(c, "pending", c.repo, "--json")
    assert pending.exit_code == 0
    rows = _json(pending)["requests"]
    assert [r["username"] for r in rows] == ["u1", "u2", "u3"]
    assert rows[0]["payment_email"] == "u1@example.com" and rows[0]["status"] == "pending"
    assert rows[0]["requested_at"]

    table = _run(c, "pending", c.repo)
    assert "u1@example.com" in table.stdout and "u3" in table.stdout

    accepted = _run(c, "accept", c.repo, "u1", "U2", "--json")
    assert accepted.exit_code == 0, accepted.output
    assert [(r["user"], r["ok"], r["changed"]) for r in _json(accepted)["results"]] == [
        ("u1", True, True), ("u2", True, True)]

    mixed = _run(c, "accept", c.repo, "u1", "nobody", "--json")
    assert mixed.exit_code == 1
    results = _json(mixed)["results"]
    assert results[0] == {"user": "u1", "action": "accept", "ok": True, "changed": False,
                          "detail": "already accepted"}
    assert not results[1]["ok"] and "no access request" in results[1]["detail"]

    rejected = _run(c, "reject", c.repo, "u3", "--reason", "not yet")
    assert rejected.exit_code == 0 and "✓ u3: rejected" in rejected.stdout

    granted = _run(c, "grant", c.repo, "frank")
    assert granted.exit_code == 0 and "frank: granted" in granted.stdout
    twice = _run(c, "grant", c.repo, "frank", "--json")
    assert twice.exit_code == 0 and _json(twice)["results"][0]["detail"] == "already has access"
    ghost = _run(c, "grant", c.repo, "ghost")
    assert ghost.exit_code == 1 and "HTTP 404" in ghost.stdout and "1 failed" in ghost.stdout

    listed = _run(c, "list", c.repo, "--json")
    assert {r["username"]: r["status"] for r in _json(listed)["requests"]} == {
        "u1": "accepted", "u2": "accepted", "frank": "accepted", "u3": "rejected"}
    only = _run(c, "list", c.repo, "--status", "rejected", "--json")
    assert [r["username"] for r in _json(only)["requests"]] == ["u3"]
    assert "No pending access requests" in _run(c, "pending", c.repo).stdout


def test_progress_bar_for_many_accepts(creator, tmp_path):
    c = creator
    users = [f"f{i}" for i in range(8)]
    for user in users:
        _ask(c, user)
    result = _run(c, "accept", c.repo, *users)
    assert result.exit_code == 0 and _names(c, "accepted") == sorted(users)


# --- errors -----------------------------------------------------------------------------------

def test_bad_token_is_refused_and_never_printed(creator, tmp_path):
    c = creator
    bad = "hf_" + "x1" * 17
    for result in (_run(c, "pending", c.repo, token=bad),
                   _run(c, "sync", c.repo, "--paid", _paid(tmp_path), "--json", token=False,
                        env={"HF_TOKEN": bad})):
        assert result.exit_code == 1
        assert "token was refused" in result.stderr
        assert bad not in result.output + result.stderr
    assert json.loads(result.stdout)["ok"] is False  # --json: an error is JSON too

    none = _run(c, "pending", c.repo, token=False)
    assert none.exit_code == 1 and "no Hugging Face token" in none.stderr


def test_hub_refusals_are_clear(creator):
    c = creator
    other = c.hub.add_user("intruder")
    forbidden = _run(c, "accept", c.repo, "x", token=other)
    assert forbidden.exit_code == 1 and "HTTP 403" in forbidden.stderr
    assert other not in forbidden.output + forbidden.stderr

    c.api.create_repo("open")
    open_ = _run(c, "pending", "creator/open")
    assert open_.exit_code == 1 and "not a gated repo" in open_.stderr
    assert "Hint:" in open_.stderr and "Traceback" not in open_.output

    missing = _run(c, "list", c.repo + "-nope")
    assert missing.exit_code == 1 and "not found" in missing.stderr

    bad_id = _run(c, "pending", "no-slash")
    assert bad_id.exit_code == 1 and "not a Hugging Face repo id" in bad_id.stderr


@pytest.mark.parametrize("text, where, what", [
    ("name,amount\nada,1\n", "payments.csv:1:", "no hf_username or email column"),
    ("\n\nhf_username\n", "payments.csv:4:", "no payments listed"),
    ("hf_username,email\nada,\n\nbob,b@x.io,extra\n", "payments.csv:4:", "3 cells"),
    ('hf_username,email\nada,\n"bob,b@x.io\n', "payments.csv:3:", "malformed CSV"),
    ("hf_username\nada@example.com\n", "payments.csv:2:", "put it in the email column"),
    ("email\nnot-an-email\n", "payments.csv:2:", "not an email address"),
    ("hf_username,email,amount\n,,,\n,,9.99\n", "payments.csv:3:", "no hf_username and no email"),
    ("email,EMAIL\na@b.c,\n", "payments.csv:1:", "2 email columns"),
])
def test_bad_payments_csv_names_file_and_line(creator, tmp_path, text, where, what):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError) as info:
        read_payments(path)
    assert where in info.value.message and what in info.value.message and info.value.hint
    result = _run(creator, "sync", creator.repo, "--paid", path)
    assert result.exit_code == 1 and where in result.stderr and "Traceback" not in result.output
    assert _access_calls(creator) == []  # checked before any Hub call


def test_payments_csv_tolerates_bom_blank_lines_and_semicolons(tmp_path):
    path = _csv(tmp_path, "Amount;HF Username;E-Mail\n\n9;@Ada;\n9;;Bob@Example.com \n", bom=True)
    payments = read_payments(path)
    assert payments.usernames == {"ada"} and payments.emails == {"bob@example.com"}
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("email\nzoë@example.com\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv:2: not UTF-8"):
        read_payments(latin1)


# --- scale ------------------------------------------------------------------------------------

def test_thousand_pending_requests_sync_quickly(creator, tmp_path, signed_bundle):
    c, b = creator, signed_bundle
    users = [f"follower{i:04d}" for i in range(1000)]
    for user in users:
        _ask(c, user, payment=f"{user}@example.com")
    paid = _csv(tmp_path, "hf_username,email\n" + "".join(
        f"{u},\n" if i % 2 else f",{u.upper()}@EXAMPLE.COM\n" for i, u in enumerate(users)))
    out = tmp_path / "licences"

    started = time.perf_counter()
    result = _run(c, "sync", c.repo, "--paid", paid, "--licences-for", b.path,
                  "--licences-dir", out, "--key", b.keys.private_key)
    elapsed = time.perf_counter() - started

    print(f"\nfollowers sync: 1,000 pending requests accepted, 1,000 licences written in "
          f"{elapsed:.2f} s")
    assert result.exit_code == 0, result.output
    assert "1000 accepted, 0 not in payments" in result.stdout
    assert "1000 licences written" in result.stdout
    assert elapsed < 30
    assert len(list(out.iterdir())) == 1000
    assert _names(c, "accepted") == users and _names(c, "pending") == []


def test_a_refusal_mid_way_stops_and_reports_every_user(creator):
    c = creator
    users = ["p1", "p2", "p3", "p4"]
    for user in users:
        _ask(c, user)
    c.hub.fail_next("POST", HANDLE, status=403)  # e.g. the token lost its write role
    result = _run(c, "accept", c.repo, *users, "--json")
    assert result.exit_code == 1 and "HTTP 403" in result.stderr
    report = _json(result)
    assert report["ok"] is False and "HTTP 403" in report["error"] and report["hint"]
    assert [r["detail"].startswith("not attempted") for r in report["results"]] == [
        False, True, True, True]
    assert _names(c, "pending") == users  # nothing half-done, a rerun does it all


def test_the_hub_down_for_several_users_in_a_row_stops_the_loop(creator):
    c = creator
    users = [f"q{i}" for i in range(6)]
    for user in users:
        _ask(c, user)
    attempts = len(hub_module.BACKOFF_S) + 1
    c.hub.fail_next("POST", HANDLE, status=502, times=attempts * fl.MAX_CONSECUTIVE_TRANSIENT)
    result = fl.handle(c.api, c.repo, users, "accept")
    assert result.error is not None and "in a row" in result.error.message
    assert [o.detail.split(" ")[0] for o in result.outcomes] == [
        "creator/coach:", "creator/coach:", "creator/coach:", "not", "not", "not"]
    assert "HTTP 502" in result.outcomes[0].detail
    assert fl.handle(c.api, c.repo, users, "accept").ok  # the rerun finishes the job
