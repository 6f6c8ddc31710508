"""Issue 19, as a careless user and an attacker would try it: a table anyone can extend.

Each case makes its files under ``tmp`` and returns the command line; the command must exit
with ``code``, its first ``Error:`` line must start with ``error`` (``{tmp}`` and ``{home}``
filled in), and nothing may escape as a Python exception (what would be a traceback on a
terminal). Build cases must stop before training: ``GRPO`` never appears. Output escaping and
the strict JSON reader have their own table in ``tests/test_redteam.py``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetune.bundle import BundleModel, build_bundle
from edgetune.cli import cli
from edgetune.keys import generate_keypair
from edgetune.licences import issue_licence, licence_id_of, revoke, write_licence
from tests.test_bundle import _gguf, _info

ISSUED = datetime.now(timezone.utc) - timedelta(days=1)


# --------------------------------------------------------------------------- set-ups

def _creator(tmp: Path):
    """A key pair and a bundle signed with it, as `edgetune build` leaves them."""
    pair = generate_keypair(tmp / "keys", "coach")
    model = BundleModel("Q4_K_M", _gguf(tmp / "m.gguf", 1), "qwen3", 4096, 10**9)
    bundle = build_bundle(tmp / "bundle", _info(version="1.0.0"), [model],
                          private_key=pair.private_key).path
    return pair, bundle


def _licence(pair, tmp: Path, follower: str) -> Path:
    envelope = issue_licence(pair.private_key, None, bundle_id="edgetune-demo",
                             bundle_version="1.0.0", follower=follower, now=ISSUED)
    return write_licence(envelope, tmp / f"{follower}.licence.json")


def _revoked_twice(tmp: Path):
    """Sequence 1 kept as old.json (revokes bo), then sequence 2 in revoked.json (revokes ada
    too): the creator's machine has seen sequence 2."""
    pair, bundle = _creator(tmp)
    ada, bo = _licence(pair, tmp, "ada"), _licence(pair, tmp, "bo")
    revoked = tmp / "revoked.json"
    revoke(pair.private_key, None, revoked, licence_ids=[licence_id_of(bo)],
           bundle_id="edgetune-demo")
    (tmp / "old.json").write_bytes(revoked.read_bytes())
    revoke(pair.private_key, None, revoked, licence_ids=[licence_id_of(ada)],
           bundle_id="edgetune-demo")
    return pair, bundle, ada


def older_list(tmp, home):
    pair, bundle, ada = _revoked_twice(tmp)
    return ["verify", bundle, "--public-key", pair.public_key, "--license", ada,
            "--revocations", tmp / "old.json"]


def list_left_out(tmp, home):
    pair, bundle, ada = _revoked_twice(tmp)
    return ["verify", bundle, "--public-key", pair.public_key, "--license", ada]


def revoke_from_an_older_list(tmp, home):
    pair, bundle, ada = _revoked_twice(tmp)
    return ["license", "revoke", "c" * 32, "--list", tmp / "old.json", "--bundle-id",
            "edgetune-demo", "--signing-key", pair.private_key]


def _key_file(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def keys_new_over_an_empty_key(tmp, home):
    _key_file(tmp / "k" / "edgetune.key")
    return ["keys", "new", "--dir", tmp / "k"]


def build_with_an_empty_key(tmp, home):
    return ["build", "--out", tmp / "out", "--signing-key", _key_file(tmp / "k" / "edgetune.key")]


def build_with_a_stray_pub(tmp, home):
    pair = generate_keypair(tmp / "k", "a")
    other = generate_keypair(tmp / "k2", "a")
    pair.public_key.write_bytes(other.public_key.read_bytes())
    return ["build", "--out", tmp / "out", "--signing-key", pair.private_key]


def build_with_a_wrong_passphrase(tmp, home):
    generate_keypair(home / "keys", "edgetune", "the right one")  # the default key
    os.environ["EDGETUNE_KEY_PASSPHRASE"] = "a wrong one"  # restored by the test
    return ["build", "--out", tmp / "out"]


def _a_file(tmp: Path) -> Path:
    (tmp / "file").write_text("not a folder\n")
    return tmp / "file"


def build_out_inside_a_file(tmp, home):
    return ["build", "--out", _a_file(tmp) / "out"]


def license_out_inside_a_file(tmp, home):
    pair, bundle = _creator(tmp)
    return ["license", "issue", bundle, "--follower", "ada", "--signing-key", pair.private_key,
            "--out", _a_file(tmp) / "out"]


def eval_out_inside_a_file(tmp, home):
    return ["eval", tmp / "F16.gguf", tmp / "Q4_K_M.gguf", "--out", _a_file(tmp) / "out"]


def init_inside_a_file(tmp, home):  # no check of its own: the CLI's last net names the path
    return ["init", _a_file(tmp) / "coach"]


def _latin1(tmp: Path) -> Path:
    (tmp / "persona.txt").write_bytes("Tu es l'entraîneur d'Ada.".encode("latin-1"))
    return tmp / "persona.txt"


def build_prompt_not_utf8(tmp, home):
    return ["build", "--out", tmp / "out", "--system-prompt-file", _latin1(tmp)]


def eval_prompt_not_utf8(tmp, home):
    return ["eval", tmp / "F16.gguf", tmp / "Q4_K_M.gguf", "--out", tmp / "out",
            "--system-prompt-file", _latin1(tmp)]


def train_prompt_not_utf8(tmp, home):
    return ["train", "--out", tmp / "out", "--system-prompt-file", _latin1(tmp)]


def _model(tmp: Path, config: dict, weights: bool) -> Path:
    (tmp / "m").mkdir()
    (tmp / "m" / "config.json").write_text(json.dumps(config))
    if weights:
        (tmp / "m" / "model.safetensors").write_bytes(b"\0" * 8)
    return tmp / "m"


def train_model_without_model_type(tmp, home):
    model = _model(tmp, {"architectures": ["LlamaForCausalLM"], "hidden_size": 64}, True)
    return ["train", "--base-model", model, "--out", tmp / "out", "--steps", "1"]


def train_model_without_weights(tmp, home):
    model = _model(tmp, {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, False)
    return ["train", "--base-model", model, "--out", tmp / "out", "--steps", "1"]


def _eval_data(tmp: Path, name: str, text: str) -> list:
    (tmp / name).write_text(text, encoding="utf-8")
    return ["eval", tmp / "F16.gguf", tmp / "Q4_K_M.gguf", "--out", tmp / "out",
            "--data", tmp / name, "--all-rows"]


def data_one_question_two_answers(tmp, home):
    rows = [("What is 1+1?", "2"), ("What is 2+1?", "3"), ("what is 1+1? ", "999")]
    return _eval_data(tmp, "qa.jsonl", "".join(json.dumps({"question": q, "answer": a}) + "\n"
                                               for q, a in rows))


def data_nul_in_a_csv_question(tmp, home):
    return _eval_data(tmp, "qa.csv", "question,answer\nWhat is 1+1?,2\nWhat\0 is 2+2?,4\n")


def data_a_row_over_the_limit(tmp, home):
    return _eval_data(tmp, "qa.jsonl", json.dumps({"question": "Hi?", "answer": "1"}) + "\n"
                      + json.dumps({"question": "x" * 150_000 + "?", "answer": "2"}) + "\n")


CASES = [
    # case, exit code, first Error: line (its start)
    (older_list, 16, "Error: {tmp}/old.json: revocation list sequence 1 is older than "
                     "sequence 2 seen on "),
    (list_left_out, 16, "Error: no revocation list given, but this machine has sequence 2 "
                        "seen on "),
    (revoke_from_an_older_list, 1, "Error: {tmp}/old.json is sequence 1, but this machine has "
                                   "sequence 2 seen on "),
    (keys_new_over_an_empty_key, 1, "Error: {tmp}/k/edgetune.key exists but is broken "
                                    "(empty, 0 bytes)"),
    (build_with_an_empty_key, 1, "Error: private key file {tmp}/k/edgetune.key is empty"),
    (build_with_a_stray_pub, 1, "Error: {tmp}/k/a.pub is not the public key of {tmp}/k/a.key"),
    (build_with_a_wrong_passphrase, 1, "Error: wrong passphrase for {home}/keys/edgetune.key"),
    (build_out_inside_a_file, 1, "Error: --out {tmp}/file/out: {tmp}/file is a file, not a "
                                 "folder"),
    (license_out_inside_a_file, 1, "Error: --out {tmp}/file/out: {tmp}/file is a file"),
    (eval_out_inside_a_file, 1, "Error: --out {tmp}/file/out: {tmp}/file is a file"),
    (init_inside_a_file, 1, "Error: {tmp}/file/coach"),
    (build_prompt_not_utf8, 1, "Error: --system-prompt-file {tmp}/persona.txt: not UTF-8 text "
                               "(byte 0xee at offset 13)"),
    (eval_prompt_not_utf8, 1, "Error: --system-prompt-file {tmp}/persona.txt: not UTF-8 text"),
    (train_prompt_not_utf8, 1, "Error: --system-prompt-file {tmp}/persona.txt: not UTF-8 text"),
    (train_model_without_model_type, 1, "Error: {tmp}/m/config.json has no model_type"),
    (train_model_without_weights, 1, "Error: {tmp}/m has a config.json but no weights"),
    (data_one_question_two_answers, 1, "Error: qa.jsonl:3 has the question of qa.jsonl:1 with "
                                       "another answer ('999' here, '2' there)"),
    (data_nul_in_a_csv_question, 1, "Error: qa.csv:3: field 'question' has a control character "
                                    "(U+0000 at character 5)"),
    (data_a_row_over_the_limit, 1, "Error: qa.jsonl:2: row is 150,002 characters long, over "
                                   "the limit of 100,000"),
]


@pytest.mark.parametrize("case, code, error", CASES, ids=[c[0].__name__ for c in CASES])
def test_case(case, code, error, tmp_path, monkeypatch):
    home = Path(os.environ["EDGETUNE_HOME"])
    monkeypatch.setenv("EDGETUNE_KEY_PASSPHRASE", "")
    monkeypatch.setattr(os, "environ", os.environ)  # a case may set a variable: undone below
    before = dict(os.environ)
    try:
        args = [str(a) for a in case(tmp_path, home)]
        result = CliRunner().invoke(cli, args)
    finally:
        os.environ.clear()
        os.environ.update(before)
    output = result.output  # stdout and stderr, as a terminal shows them
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{case.__name__}: {result.exception!r}"  # a traceback on a terminal
    assert "Traceback" not in output
    lines = output.splitlines()
    first = next((line for line in lines if line.startswith("Error:")), lines[0] if lines else "")
    assert first.startswith(error.format(tmp=tmp_path, home=home)), output
    assert result.exit_code == code, output
    assert "GRPO" not in output  # stopped before any training


def test_a_group_readable_key_is_warned_about(tmp_path):
    pair, bundle = _creator(tmp_path)
    pair.private_key.chmod(0o644)
    result = CliRunner().invoke(cli, ["sign", str(bundle), "--signing-key",
                                      str(pair.private_key)])
    assert result.exit_code == 0, result.output
    assert f"Warning: {pair.private_key} can be read by other users of this machine (mode " \
           f"0644)" in result.stderr
    pair.private_key.chmod(0o600)
    quiet = CliRunner().invoke(cli, ["sign", str(bundle), "--signing-key", str(pair.private_key)])
    assert quiet.exit_code == 0 and "Warning" not in quiet.stderr


# --------------------------------------------------------------------------- pull: the repo's list

def test_pull_checks_the_licence_against_the_list_published_in_the_repo(hub, tmp_path,
                                                                        monkeypatch):
    """The creator revokes on their machine and uploads the list beside the bundle; a follower
    who never saw it gets the revocation through pull, and an older list is refused there."""
    from huggingface_hub import HfApi

    from edgetune.licences import issue_for_bundle
    from tests.test_publish import REPO, _bundle, _publish

    creator_home, follower_home = tmp_path / "creator-home", tmp_path / "follower-home"
    monkeypatch.setenv("EDGETUNE_HOME", str(creator_home))
    monkeypatch.setenv("HF_TOKEN", hub.add_user("alice"))
    pair = generate_keypair(tmp_path / "keys", "creator")
    bundle = _bundle(tmp_path, pair)
    assert _publish(bundle, pair).exit_code == 0
    fan = write_licence(issue_for_bundle(pair.private_key, None, bundle, follower="fan"),
                        tmp_path / "fan.licence.json")
    listed = tmp_path / "revoked.json"
    revoke(pair.private_key, None, listed, licence_ids=["c" * 32], bundle_id="coach")
    (tmp_path / "old.json").write_bytes(listed.read_bytes())
    revoke(pair.private_key, None, listed, licence_ids=[licence_id_of(fan)], bundle_id="coach")
    HfApi(token=hub.token_of("alice")).upload_file(path_or_fileobj=str(listed),
                                                   path_in_repo="revocations.json", repo_id=REPO)
    assert _publish(_bundle(tmp_path, pair, version="1.0.1", seed=3, name="b2"),
                    pair).exit_code == 0
    assert "revocations.json" in hub.repo_files(REPO)  # a new version keeps the list

    monkeypatch.setenv("EDGETUNE_HOME", str(follower_home))

    def pull(out: str, *extra):
        return CliRunner().invoke(cli, ["pull", REPO, "--public-key", str(pair.public_key),
                                        "--license", str(fan), "--revision", "1.0.0",
                                        "--out", str(tmp_path / out), *map(str, extra)])

    revoked = pull("p1")  # no --revocations: the repo's list, which revokes this licence
    assert revoked.exit_code == 15, revoked.output
    assert "has been revoked" in revoked.output and "Traceback" not in revoked.output
    older = pull("p2", "--revocations", tmp_path / "old.json")
    assert older.exit_code == 16, older.output
    assert f"revocation list sequence 1 is older than sequence 2 in this bundle's repo " \
           f"({REPO} revocations.json at " in older.output
    for out in ("p1", "p2"):
        assert not list(tmp_path.glob(f"{out}*")), "a pull that failed leaves nothing"
    # The follower's machine now knows sequence 2: the older list is refused offline too.
    offline = CliRunner().invoke(cli, ["verify", str(bundle), "--public-key",
                                       str(pair.public_key), "--license", str(fan),
                                       "--revocations", str(tmp_path / "old.json")])
    assert offline.exit_code == 16, offline.output
    assert "older than sequence 2 seen on" in offline.output
