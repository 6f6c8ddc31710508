"""Licences and revocation lists: real keys, real signatures, no mocks."""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from edgetune import artifacts, licences
from edgetune.errors import (
    ConfigError,
    DataError,
    KeyFileError,
    OutputExistsError,
    VerificationError,
)
from edgetune.licences import dsse
from edgetune.licences import (
    LICENCE_TYPE,
    REVOCATIONS_TYPE,
    issue_from_csv,
    issue_licence,
    load_revocations,
    read_licence,
    revoke,
    safe_file_stem,
    verify_licence,
    write_licence,
)
from edgetune.keys import generate_keypair, key_id_of

BUNDLE = {"bundle_id": "ada-coach", "bundle_version": "1.2.0"}
NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    return generate_keypair(tmp_path_factory.mktemp("keys"), "creator")


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory):
    return generate_keypair(tmp_path_factory.mktemp("other"), "other")


def _issue(keys, tmp_path: Path, name: str = "ada", **changes) -> Path:
    fields = {**BUNDLE, "follower": "ada@example.com", "now": NOW, **changes}
    return write_licence(issue_licence(keys.private_key, None, **fields),
                         tmp_path / f"{name}.licence.json")


def _payload(path: Path) -> dict:
    return json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))


def _fails(path: Path, pub: Path, **kwargs) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        verify_licence(path, pub, **{**BUNDLE, "now": NOW, **kwargs})
    assert info.value.hint
    return info.value


def _reseal(path: Path, keys, change) -> None:
    """Edit the payload and sign it again with the creator key (a malformed but signed file)."""
    key, key_id = dsse.signing_key(keys.private_key, None)
    payload = _payload(path)
    change(payload)
    path.write_text(json.dumps(dsse.seal(LICENCE_TYPE, payload, key, key_id)))


# --- issue and verify --------------------------------------------------------------------------

def test_round_trip_and_format(keys, tmp_path: Path):
    path = _issue(keys, tmp_path, expires="2026-12-31", devices=3)
    info = verify_licence(path, keys.public_key, **BUNDLE, now=NOW)
    assert (info.bundle_id, info.bundle_version, info.follower) == (
        "ada-coach", "1.2.0", "ada@example.com")
    assert (info.issued, info.expires, info.devices) == ("2026-06-01T12:00:00Z", "2026-12-31", 3)
    assert info.expires_at == datetime(2027, 1, 1, tzinfo=timezone.utc)
    assert info.key_id == key_id_of(keys.public_key) and len(info.licence_id) == 32
    envelope = json.loads(path.read_text())
    assert envelope["payloadType"] == "application/vnd.edgetune.licence+json"
    assert envelope["signatures"][0]["keyid"] == info.key_id
    assert _payload(path) == {
        "licence_version": "1.0", "licence_id": info.licence_id, "bundle_id": "ada-coach",
        "bundle_version": "1.2.0", "follower": "ada@example.com",
        "issued": "2026-06-01T12:00:00Z", "expires": "2026-12-31", "devices": 3,
        "key_id": info.key_id}
    assert read_licence(path, keys.public_key) == info
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_signature_is_plain_dsse_over_pae(keys, tmp_path: Path):
    """An app can check a licence with nothing but the DSSE spec and ECDSA P-256/SHA-256."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    envelope = json.loads(_issue(keys, tmp_path).read_text())
    body = base64.b64decode(envelope["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(LICENCE_TYPE), LICENCE_TYPE.encode(), len(body), body)
    pub = serialization.load_pem_public_key(keys.public_key.read_bytes())
    pub.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae,  # type: ignore[call-arg]
               ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]


def test_optional_fields_are_omitted_and_ids_unique(keys, tmp_path: Path):
    a, b = _issue(keys, tmp_path, "a"), _issue(keys, tmp_path, "b")
    assert "expires" not in _payload(a) and "devices" not in _payload(a)
    assert _payload(a)["licence_id"] != _payload(b)["licence_id"]
    info = verify_licence(a, keys.public_key, **BUNDLE)  # no expiry: valid at any time
    assert info.expires is None and info.expires_at is None and info.devices is None


def test_a_date_lasts_until_the_end_of_that_day_utc(keys, tmp_path: Path):
    path = _issue(keys, tmp_path, expires=date(2026, 12, 31))
    verify_licence(path, keys.public_key, **BUNDLE,
                   now=datetime(2026, 12, 31, 23, 59, 59, tzinfo=timezone.utc))
    err = _fails(path, keys.public_key, now=datetime(2027, 1, 1, tzinfo=timezone.utc))
    assert err.exit_code == 13 and "2026-12-31" in str(err)
    # the same instant seen from another time zone
    err = _fails(path, keys.public_key,
                 now=datetime(2027, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1))))
    assert err.exit_code == 13


def test_a_date_time_is_stored_in_utc(keys, tmp_path: Path):
    path = _issue(keys, tmp_path, expires="2026-07-01T10:00:00.9+02:00")
    assert _payload(path)["expires"] == "2026-07-01T08:00:00Z"
    verify_licence(path, keys.public_key, **BUNDLE,
                   now=datetime(2026, 7, 1, 7, 59, 59, tzinfo=timezone.utc))
    assert _fails(path, keys.public_key,
                  now=datetime(2026, 7, 1, 8, tzinfo=timezone.utc)).exit_code == 13


@pytest.mark.parametrize("change, field", [
    ({"follower": "  "}, "follower"), ({"follower": "a\nb"}, "follower"),
    ({"follower": "x" * 257}, "follower"), ({"bundle_id": "Ada Coach"}, "bundle_id"),
    ({"bundle_version": "1.2"}, "bundle_version"), ({"expires": "31/12/2026"}, "expires"),
    ({"expires": "2026-02-30"}, "expires"), ({"expires": "2026-05-31"}, "already past"),
    ({"expires": datetime(2027, 1, 1)}, "time zone"), ({"devices": 0}, "devices"),
    ({"devices": "two"}, "devices"), ({"devices": True}, "devices")])
def test_issue_refuses_bad_fields(keys, change: dict, field: str):
    with pytest.raises(ConfigError, match=field):
        issue_licence(keys.private_key, None, **{**BUNDLE, "follower": "ada", "now": NOW,
                                                 **change})


def test_passphrase_key(tmp_path: Path):
    kp = generate_keypair(tmp_path, "enc", passphrase=PASSPHRASE)
    with pytest.raises(KeyFileError) as info:
        issue_licence(kp.private_key, "wrong", **BUNDLE, follower="ada")
    assert PASSPHRASE not in str(info.value) + str(info.value.hint)
    with pytest.raises(KeyFileError, match="passphrase"):
        issue_licence(kp.private_key, None, **BUNDLE, follower="ada")
    licence = issue_licence(kp.private_key, PASSPHRASE, **BUNDLE, follower="ada")
    path = write_licence(licence, tmp_path / "ada.licence.json")
    assert verify_licence(path, kp.public_key, **BUNDLE).follower == "ada"


def test_write_licence_never_overwrites(keys, tmp_path: Path):
    path = _issue(keys, tmp_path)
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        _issue(keys, tmp_path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_write_works_where_hard_links_do_not(keys, tmp_path: Path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(artifacts.os, "link", no_links)  # e.g. a FAT-formatted USB stick
    path = _issue(keys, tmp_path)
    assert verify_licence(path, keys.public_key, **BUNDLE, now=NOW).follower == "ada@example.com"
    with pytest.raises(OutputExistsError):
        _issue(keys, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


# --- failure codes -----------------------------------------------------------------------------

def test_wrong_key_is_12(keys, other, tmp_path: Path):
    err = _fails(_issue(keys, tmp_path), other.public_key)
    assert err.exit_code == 12 and err.path.endswith("ada.licence.json")


def test_edited_payload_is_12(keys, tmp_path: Path):
    path = _issue(keys, tmp_path)
    envelope = json.loads(path.read_text())
    payload = _payload(path)
    payload["bundle_version"] = "9.9.9"
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    path.write_text(json.dumps(envelope))
    assert _fails(path, keys.public_key).exit_code == 12


def test_payload_naming_another_key_is_12(keys, tmp_path: Path):
    path = _issue(keys, tmp_path)
    _reseal(path, keys, lambda p: p.update(key_id="0" * 64))
    assert _fails(path, keys.public_key).exit_code == 12


def test_expired_is_13(keys, tmp_path: Path):
    path = _issue(keys, tmp_path, expires="2026-06-30")
    assert _fails(path, keys.public_key,
                  now=datetime(2026, 7, 1, tzinfo=timezone.utc)).exit_code == 13


@pytest.mark.parametrize("bound", [{"bundle_id": "other-model"}, {"bundle_version": "1.2.1"},
                                   {"bundle_version": "1.2.0+build.1"}])
def test_other_bundle_or_version_is_14(keys, tmp_path: Path, bound: dict):
    err = _fails(_issue(keys, tmp_path), keys.public_key, **bound)
    assert err.exit_code == 14 and "ada-coach 1.2.0" in str(err)


def test_revoked_is_15(keys, tmp_path: Path):
    path = _issue(keys, tmp_path)
    revocations = tmp_path / "revocations.json"
    revoke(keys.private_key, None, revocations, licence_ids=[_payload(path)["licence_id"]],
           bundle_id="ada-coach", now=NOW)
    assert _fails(path, keys.public_key, revocations=revocations).exit_code == 15
    loaded = load_revocations(revocations, keys.public_key)
    assert _fails(path, keys.public_key, revocations=loaded).exit_code == 15
    # revocation wins over expiry: the stronger statement is reported
    late = datetime(2099, 1, 1, tzinfo=timezone.utc)
    assert _fails(path, keys.public_key, revocations=loaded, now=late).exit_code == 15


@pytest.mark.parametrize("content", ["", "{not json", "[]", '{"payloadType": 1}',
                                     '{"payload": "", "signatures": []}'])
def test_garbage_is_16(keys, tmp_path: Path, content: str):
    path = tmp_path / "bad.licence.json"
    path.write_text(content)
    assert _fails(path, keys.public_key).exit_code == 16


def test_missing_file_is_16(keys, tmp_path: Path):
    assert _fails(tmp_path / "absent.licence.json", keys.public_key).exit_code == 16


def test_revocation_list_passed_as_licence_is_16(keys, tmp_path: Path):
    revocations = tmp_path / "revocations.json"
    revoke(keys.private_key, None, revocations, licence_ids=["a" * 32], bundle_id="ada-coach")
    err = _fails(revocations, keys.public_key)
    assert err.exit_code == 16 and "payloadType" in str(err)


def test_two_signatures_are_16(keys, tmp_path: Path):
    path = _issue(keys, tmp_path)
    envelope = json.loads(path.read_text())
    envelope["signatures"] *= 2
    path.write_text(json.dumps(envelope))
    assert _fails(path, keys.public_key).exit_code == 16


@pytest.mark.parametrize("change", [
    lambda p: p.update(extra="field"), lambda p: p.pop("follower"),
    lambda p: p.update(licence_version="2.0"), lambda p: p.update(devices=0),
    lambda p: p.update(expires="2026-13-01"), lambda p: p.update(expires="tomorrow"),
    lambda p: p.update(issued="2026-06-01"), lambda p: p.update(licence_id="xyz")])
def test_signed_but_malformed_payload_is_16(keys, tmp_path: Path, change):
    path = _issue(keys, tmp_path)
    _reseal(path, keys, change)
    assert _fails(path, keys.public_key).exit_code == 16


def test_exit_codes_do_not_clash_with_bundle_codes():
    codes = [licences.EXIT_BAD_SIGNATURE, licences.EXIT_EXPIRED, licences.EXIT_OTHER_BUNDLE,
             licences.EXIT_REVOKED, licences.EXIT_MALFORMED]
    assert codes == [12, 13, 14, 15, 16]


# --- revocation lists --------------------------------------------------------------------------

def test_revoke_grows_the_list_and_its_sequence(keys, tmp_path: Path):
    path = tmp_path / "revocations.json"
    first = revoke(keys.private_key, None, path, licence_ids=["a" * 32], bundle_id="ada-coach",
                   now=NOW)
    assert (first.sequence, [e.licence_id for e in first.entries]) == (1, ["a" * 32])
    later = NOW + timedelta(days=1)
    second = revoke(keys.private_key, None, path, licence_ids=["a" * 32, "b" * 32],
                    bundle_id="other-model", now=later)
    assert second.sequence == 2 and second.issued == "2026-06-02T12:00:00Z"
    assert [(e.licence_id, e.bundle_id) for e in second.entries] == [
        ("a" * 32, "ada-coach"), ("b" * 32, "other-model")]
    assert load_revocations(path, keys.public_key) == second
    before = path.read_bytes()
    same = revoke(keys.private_key, None, path, licence_ids=["b" * 32], bundle_id="other-model")
    assert same == second and path.read_bytes() == before  # nothing new: untouched
    envelope = json.loads(before)
    assert envelope["payloadType"] == REVOCATIONS_TYPE
    assert json.loads(base64.b64decode(envelope["payload"]))["sequence"] == 2


def test_older_list_is_refused_with_min_sequence(keys, tmp_path: Path):
    path = tmp_path / "revocations.json"
    revoke(keys.private_key, None, path, licence_ids=["a" * 32], bundle_id="ada-coach")
    old = path.read_bytes()
    revoke(keys.private_key, None, path, licence_ids=["b" * 32], bundle_id="ada-coach")
    assert load_revocations(path, keys.public_key, min_sequence=2).sequence == 2
    path.write_bytes(old)  # someone serves the older list, without the second revocation
    with pytest.raises(VerificationError) as info:
        load_revocations(path, keys.public_key, min_sequence=2)
    assert info.value.exit_code == 16 and "older" in str(info.value)


def test_revocation_list_must_be_signed_by_the_same_key(keys, other, tmp_path: Path):
    foreign = tmp_path / "revocations.json"
    revoke(other.private_key, None, foreign, licence_ids=["a" * 32], bundle_id="ada-coach")
    with pytest.raises(VerificationError) as info:
        load_revocations(foreign, keys.public_key)
    assert info.value.exit_code == 12
    assert _fails(_issue(keys, tmp_path), keys.public_key, revocations=foreign).exit_code == 12
    loaded = load_revocations(foreign, other.public_key)
    assert _fails(_issue(keys, tmp_path, "b"), keys.public_key,
                  revocations=loaded).exit_code == 12
    with pytest.raises(VerificationError) as info:  # nor may a creator extend another's list
        revoke(keys.private_key, None, foreign, licence_ids=["b" * 32], bundle_id="ada-coach")
    assert info.value.exit_code == 12


def test_revoke_refuses_bad_ids(keys, tmp_path: Path):
    path = tmp_path / "revocations.json"
    for ids in ([], ["ABC"], ["a" * 31]):
        with pytest.raises(ConfigError):
            revoke(keys.private_key, None, path, licence_ids=ids, bundle_id="ada-coach")
    with pytest.raises(ConfigError):
        revoke(keys.private_key, None, path, licence_ids=["a" * 32], bundle_id="Bad Id")
    assert not path.exists()


# --- CSV ---------------------------------------------------------------------------------------

def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "followers.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_issues_one_verifiable_file_per_follower(keys, tmp_path: Path):
    rows = ("follower,expires,devices\n"
            "ada@example.com,2026-12-31,2\n"
            " bob_hf ,,\n"
            '"Zoë, the runner",2027-01-01T00:00:00Z,1\n')
    out = tmp_path / "licences"
    paths = issue_from_csv(keys.private_key, None, ("ada-coach", "1.2.0"),
                           _csv(tmp_path, rows), out, now=NOW)
    assert [p.name for p in paths] == ["ada@example.com.licence.json", "bob_hf.licence.json",
                                       "Zo_the_runner.licence.json"]
    infos = [verify_licence(p, keys.public_key, **BUNDLE, now=NOW) for p in paths]
    assert [(i.follower, i.expires, i.devices) for i in infos] == [
        ("ada@example.com", "2026-12-31", 2), ("bob_hf", None, None),
        ("Zoë, the runner", "2027-01-01T00:00:00Z", 1)]
    assert len({i.licence_id for i in infos}) == 3
    assert sorted(os.listdir(out)) == sorted(p.name for p in paths)  # nothing half-written


def test_csv_follower_column_alone_and_bundle_folder(keys, tmp_path: Path):
    from edgetune.bundle import BundleModel, build_bundle
    from tests.test_bundle import _gguf, _info

    model = BundleModel("Q4_K_M", _gguf(tmp_path / "m.gguf", 1), "qwen3", 4096, 10**9)
    bundle = build_bundle(tmp_path / "bundle", _info(bundle_id="ada-coach", version="1.2.0"),
                          [model], private_key=keys.private_key).path  # signed: it verifies
    paths = issue_from_csv(keys.private_key, None, bundle, _csv(tmp_path, "Follower\nada\n"),
                           tmp_path / "out")
    assert verify_licence(paths[0], keys.public_key, **BUNDLE).follower == "ada"
    paths = issue_from_csv(keys.private_key, None, bundle / "edgetune.json",
                           _csv(tmp_path, "follower\nbob\n"), tmp_path / "out")
    assert paths[0].name == "bob.licence.json"


def test_csv_refuses_bad_bundle_ids(keys, tmp_path: Path):
    with pytest.raises(ConfigError, match="semver"):
        issue_from_csv(keys.private_key, None, ("ada-coach", "v1"),
                       _csv(tmp_path, "follower\nada\n"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_csv_refuses_a_bundle_signed_with_another_key(keys, other, tmp_path: Path):
    (tmp_path / "edgetune.json").write_text(json.dumps({
        "bundle_id": "ada-coach", "version": "1.2.0",
        "creator": {"name": "Ada", "key_id": key_id_of(other.public_key)}}))
    with pytest.raises(ConfigError, match="another|not this key"):
        issue_from_csv(keys.private_key, None, tmp_path / "edgetune.json",
                       _csv(tmp_path, "follower\nada\n"), tmp_path / "out")


def test_csv_reports_every_bad_row_with_row_and_column(keys, tmp_path: Path):
    rows = ("follower,expires,devices\n"
            "ada,2026-12-31,2\n"        # row 2: fine
            ",2026-12-31,1\n"           # row 3: no follower
            "bob,31/12/2026,1\n"        # row 4
            "carol,,zero\n"             # row 5
            "ada,,\n"                   # row 6: duplicate of row 2
            "dan,2026-01-01,\n"         # row 7: already expired
            "erin,,1,extra\n")          # row 8: too many cells
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        issue_from_csv(keys.private_key, None, ("ada-coach", "1.2.0"), _csv(tmp_path, rows),
                       out, now=NOW)
    message = str(info.value)
    for expected in ("row 3, column follower", "row 4, column expires: '31/12/2026'",
                     "row 5, column devices: 'zero'", "row 6, column follower: 'ada' "
                     "duplicates row 2", "row 7, column expires: 2026-01-01 is already past",
                     "row 8: more cells"):
        assert expected in message
    assert "row 2" not in message.replace("duplicates row 2", "")
    assert not out.exists()


def test_csv_duplicates_include_file_name_collisions(keys, tmp_path: Path):
    with pytest.raises(DataError, match="row 3, column follower: 'Ada Lovelace' duplicates "
                                        "row 2"):
        issue_from_csv(keys.private_key, None, ("ada-coach", "1.2.0"),
                       _csv(tmp_path, "follower\nada/lovelace\nAda Lovelace\n"), tmp_path / "o")


@pytest.mark.parametrize("text", ["", "name,email\nada,a@x\n", "follower,follower\nada,ada\n",
                                  "follower\n"])
def test_csv_bad_header_or_empty(keys, tmp_path: Path, text: str):
    with pytest.raises(DataError):
        issue_from_csv(keys.private_key, None, ("ada-coach", "1.2.0"), _csv(tmp_path, text),
                       tmp_path / "out")


def test_csv_never_overwrites_and_writes_nothing_then(keys, tmp_path: Path):
    out = tmp_path / "out"
    issue_from_csv(keys.private_key, None, ("ada-coach", "1.2.0"),
                   _csv(tmp_path, "follower\nada\n"), out)
    before = (out / "ada.licence.json").read_bytes()
    with pytest.raises(OutputExistsError, match="ada.licence.json"):
        issue_from_csv(keys.private_key, None, ("ada-coach", "1.2.0"),
                       _csv(tmp_path, "follower\nbob\nada\n"), out)
    assert sorted(os.listdir(out)) == ["ada.licence.json"]
    assert (out / "ada.licence.json").read_bytes() == before


def test_csv_thousand_followers(keys, tmp_path: Path):
    rows = "follower,expires,devices\n" + "".join(
        f"user{i}@example.com,2027-01-{i % 28 + 1:02d},{i % 3 + 1}\n" for i in range(1000))
    started = time.perf_counter()
    paths = issue_from_csv(keys.private_key, None, ("ada-coach", "1.2.0"),
                           _csv(tmp_path, rows), tmp_path / "out", now=NOW)
    elapsed = time.perf_counter() - started
    assert len(paths) == len(set(paths)) == 1000
    assert elapsed < 10  # measured 0.5-1 s; the key is loaded once, not per row
    info = verify_licence(paths[999], keys.public_key, **BUNDLE, now=NOW)
    assert (info.follower, info.expires, info.devices) == ("user999@example.com",
                                                           "2027-01-20", 1)


@pytest.mark.parametrize("follower, stem", [
    ("ada@example.com", "ada@example.com"), ("../../etc/passwd", "etc_passwd"),
    ("CON", "_CON"), ("nul.txt", "_nul.txt"), ("...", "follower"), ("a b\\c", "a_b_c")])
def test_safe_file_stem(follower: str, stem: str):
    assert safe_file_stem(follower) == stem


# --- the revocation floor (issue 19) ------------------------------------------------------------

def _two_sequences(keys, tmp_path: Path) -> tuple[Path, Path]:
    """old.json at sequence 1, new.json at sequence 2 (which also revokes "b" * 32)."""
    new = tmp_path / "new.json"
    revoke(keys.private_key, None, new, licence_ids=["a" * 32], bundle_id="ada-coach")
    old = tmp_path / "old.json"
    old.write_bytes(new.read_bytes())
    revoke(keys.private_key, None, new, licence_ids=["b" * 32], bundle_id="ada-coach")
    return old, new


def test_an_older_list_than_one_seen_is_refused_and_so_is_none(keys, tmp_path: Path):
    from edgetune.licences import newest_revocations

    old, new = _two_sequences(keys, tmp_path)  # revoke() raised this machine's floor to 2
    with pytest.raises(VerificationError) as older:
        newest_revocations(old, keys.public_key)
    assert older.value.exit_code == 16 and older.value.path == str(old)
    assert "revocation list sequence 1 is older than sequence 2 seen on" in older.value.message
    with pytest.raises(VerificationError) as none:
        newest_revocations(None, keys.public_key)
    assert none.value.exit_code == 16 and "no revocation list given" in none.value.message
    assert newest_revocations(new, keys.public_key).sequence == 2
    # Another creator's floor is its own: a key never seen needs no list.
    assert newest_revocations(None, generate_keypair(tmp_path / "k", "x").public_key) is None


def test_a_follower_machine_learns_the_floor_from_the_first_list_it_checks(keys, tmp_path: Path,
                                                                          monkeypatch):
    from edgetune.licences import newest_revocations

    old, new = _two_sequences(keys, tmp_path)
    monkeypatch.setenv("EDGETUNE_HOME", str(tmp_path / "follower"))  # a machine that saw none
    assert newest_revocations(old, keys.public_key).sequence == 1  # all it knows: accepted
    assert newest_revocations(new, keys.public_key).sequence == 2
    with pytest.raises(VerificationError, match="sequence 1 is older than sequence 2"):
        newest_revocations(old, keys.public_key)
    carried = load_revocations(new, keys.public_key)
    with pytest.raises(VerificationError, match="older than sequence 2 in this bundle's repo"):
        newest_revocations(old, keys.public_key, carried=(carried, "alice/coach"))


def test_a_broken_floor_record_fails_closed(keys, tmp_path: Path):
    from edgetune.licences import floor, newest_revocations

    _old, new = _two_sequences(keys, tmp_path)
    record = floor.floor_file(key_id_of(keys.public_key))
    assert json.loads(record.read_text())["sequence"] == 2
    record.write_text("{\"sequence\": ")
    with pytest.raises(ConfigError, match="record of the newest revocation list seen is unreadable"):
        newest_revocations(new, keys.public_key)


def test_revoke_refuses_to_extend_a_list_older_than_one_it_signed(keys, tmp_path: Path):
    old, new = _two_sequences(keys, tmp_path)
    with pytest.raises(ConfigError, match="old.json is sequence 1, but this machine has "
                                          "sequence 2 seen on"):
        revoke(keys.private_key, None, old, licence_ids=["c" * 32], bundle_id="ada-coach")
    with pytest.raises(ConfigError, match="does not exist, but this machine has sequence 2"):
        revoke(keys.private_key, None, tmp_path / "fresh.json", licence_ids=["c" * 32],
               bundle_id="ada-coach")
    assert revoke(keys.private_key, None, new, licence_ids=["c" * 32],
                  bundle_id="ada-coach").sequence == 3
