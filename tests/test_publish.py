"""publish and pull, end to end: the real huggingface_hub client against the Hub test double
(tests/hub_server.py), real signed bundles, real verification. Only the network edge is a double.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgetune import hub as hubmod
from edgetune.bundle import BundleModel, build_bundle, verify_bundle
from edgetune.cli import cli
from edgetune.licences import issue_for_bundle, write_licence
from edgetune.keys import generate_keypair
from tests.test_bundle import QUANTS, _gguf, _info

REPO = "alice/coach"


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(hubmod, "BACKOFF_S", (0.0, 0.0, 0.0, 0.0))


@pytest.fixture(autouse=True)
def _own_home(monkeypatch, tmp_path):
    """A home per test: pull remembers creator keys per repo there, and every test here
    publishes the same repo name (CI shares one EDGETUNE_HOME across the whole run)."""
    monkeypatch.setenv("EDGETUNE_HOME", str(tmp_path / "edgetune-home"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_keypair(tmp_path_factory.mktemp("keys"), "creator")


def _models(folder: Path, seed: int = 0) -> list[BundleModel]:
    folder.mkdir(parents=True, exist_ok=True)
    return [BundleModel(q, _gguf(folder / f"model-{q}.gguf", seed + i, 40_000 + 1000 * i), "qwen3",
                        40960, (i + 1) * 500_000_000) for i, q in enumerate(QUANTS)]


def _bundle(tmp_path: Path, keys, *, version: str = "1.0.0", seed: int = 0, name: str = "b") -> Path:
    return build_bundle(tmp_path / name, _info(version=version, bundle_id="coach"),
                        _models(tmp_path / f"q-{name}", seed), private_key=keys.private_key).path


@pytest.fixture
def alice(hub, monkeypatch):
    token = hub.add_user("alice")
    monkeypatch.setenv("HF_TOKEN", token)
    return token


def _run(*args: str, env: dict | None = None):
    result = CliRunner(env=env).invoke(cli, list(args))
    return result


def _publish(bundle: Path, keys, *extra: str, env: dict | None = None):
    return _run("publish", str(bundle), "--repo", REPO, "--key", str(keys.private_key), *extra,
                env=env)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}


def _front_matter(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


# --------------------------------------------------------------------------- publish

def test_publish_gated_creates_the_repo_uploads_the_signed_bundle_and_tags_it(
        hub, alice, keys, tmp_path):
    bundle = _bundle(tmp_path, keys)
    result = _publish(bundle, keys, "--gated")
    assert result.exit_code == 0, result.output
    assert alice not in result.output

    # The bundle now names the repo, is signed again, and verifies.
    manifest = json.loads((bundle / "edgetune.json").read_text())
    assert manifest["distribution"]["hf_repo"] == REPO and manifest["distribution"]["gated"]
    verify_bundle(bundle, keys.public_key)
    # The repo holds exactly the bundle (plus the Hub's .gitattributes), byte for byte.
    remote = hub.repo_files(REPO)
    assert {k: v for k, v in remote.items() if k != ".gitattributes"} == _files(bundle)
    # Tagged with the version, at the repo's newest commit.
    from huggingface_hub import HfApi

    api = HfApi(token=alice)
    info = api.model_info(REPO)
    assert hub.tags(REPO) == {"1.0.0": info.sha}
    assert info.gated == "manual" and not info.private
    card = _front_matter(remote["README.md"].decode())
    assert card["base_model"] == "Qwen/Qwen3-0.6B" and "gguf" in card["tags"]
    assert card["quantized_by"] == "Ada | Coach"
    assert "Email used for payment" in card["extra_gated_fields"]
    text = remote["README.md"].decode()
    assert f"ollama run hf.co/{REPO}:Q4_K_M" in text and f"llama-cli -hf {REPO}:Q4_K_M" in text
    assert "1 file" not in result.output and "Published" in result.output


def test_republishing_an_unchanged_bundle_sends_no_file_content(hub, alice, keys, tmp_path):
    bundle = _bundle(tmp_path, keys)
    assert _publish(bundle, keys, "--private").exit_code == 0
    hub.reset_stats()
    result = _publish(bundle, keys, "--private", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["uploaded_bytes"] == 0 and not out["tagged"] and not out["stamped"]
    assert all(f["action"] == "unchanged" for f in out["files"])
    s = hub.stats
    assert (s.lfs_bytes_received, s.regular_bytes_received, s.preupload_sample_bytes,
            s.commits) == (0, 0, 0, 0)
    assert all(r.method in ("GET", "HEAD") for r in s.requests)  # reads only


def test_a_new_version_uploads_only_the_changed_files(hub, alice, keys, tmp_path):
    first = _bundle(tmp_path, keys, version="1.0.0")
    assert _publish(first, keys).exit_code == 0
    second = _bundle(tmp_path, keys, version="1.1.0", name="b2")
    # one quant re-made, the others identical
    changed = sorted(second.glob("*-Q4_K_M.gguf"))[0]
    changed.write_bytes(changed.read_bytes()[:-7] + b"changed")
    from edgetune.bundle import resign_bundle

    resign_bundle(second, keys.private_key)
    hub.reset_stats()
    result = _publish(second, keys, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    uploaded = {f["path"] for f in out["files"] if f["action"] == "upload"}
    ggufs = {p for p in uploaded if p.endswith(".gguf")}
    assert ggufs == {changed.name}
    assert hub.stats.lfs_bytes_received == changed.stat().st_size
    assert hub.stats.commits == 1
    assert set(hub.tags(REPO)) == {"1.0.0", "1.1.0"}
    # the old version is still downloadable by its tag
    old = hub.repo_files(REPO, rev="1.0.0")
    assert old[changed.name] == (first / changed.name).read_bytes()


def test_same_version_with_other_files_is_refused_and_nothing_is_sent(hub, alice, keys, tmp_path):
    first = _bundle(tmp_path, keys)
    assert _publish(first, keys).exit_code == 0
    other = _bundle(tmp_path, keys, seed=50, name="other")  # same version, other GGUFs
    hub.reset_stats()
    result = _publish(other, keys)
    assert result.exit_code == 1
    assert "version 1.0.0 is already published with other files" in result.output
    assert "raise project.version" in result.output
    assert hub.stats.lfs_bytes_received == 0 and hub.stats.commits == 0


def test_dry_run_lists_files_and_card_and_changes_nothing(hub, alice, keys, tmp_path):
    bundle = _bundle(tmp_path, keys)
    before = _files(bundle)
    result = _publish(bundle, keys, "--gated", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {f["path"] for f in out["files"]} == set(before)
    assert all(f["action"] == "upload" for f in out["files"])
    assert "extra_gated_fields" in out["card"] and REPO in out["card"]
    assert "would be created" in out["notes"][0]
    assert _files(bundle) == before  # not stamped
    assert all(r.method in ("GET", "HEAD") for r in hub.stats.requests)
    # plain text: one line per file, then the card
    text = _publish(bundle, keys, "--dry-run").output
    assert all(f"  {name}" in text or name in text for name in before)
    assert "--- README.md (model card) ---" in text


def test_interrupted_upload_resumes_without_sending_uploaded_files_again(hub, alice, keys, tmp_path):
    bundle = _bundle(tmp_path, keys)
    hub.fail_next("POST", r"^/api/models/alice/coach/commit/", status=500)  # not retried: the commit
    failed = _publish(bundle, keys)
    assert failed.exit_code == 1 and "HTTP 500" in failed.output
    assert "a rerun continues where this one stopped" in failed.output
    sent = hub.stats.lfs_bytes_received
    assert sent > 0  # the GGUFs reached the Hub before the commit failed
    assert hub.stats.commits == 0
    again = _publish(bundle, keys)
    assert again.exit_code == 0, again.output
    assert hub.stats.lfs_bytes_received == sent  # not sent twice
    assert {k for k in hub.repo_files(REPO)} >= set(_files(bundle))


def test_transient_errors_are_retried(hub, alice, keys, tmp_path):
    bundle = _bundle(tmp_path, keys)
    hub.fail_next("GET", r"^/api/models/alice/coach$", status=503, times=2)
    result = _publish(bundle, keys)
    assert result.exit_code == 0, result.output
    assert "trying again" in result.output


def test_refusals_name_the_fix_and_never_print_the_token(hub, keys, tmp_path, monkeypatch):
    bundle = _bundle(tmp_path, keys)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    before = _files(bundle)
    no_token = _publish(bundle, keys)
    assert no_token.exit_code == 1 and "no Hugging Face token found" in no_token.output
    assert _files(bundle) == before
    assert "HF_TOKEN" in no_token.output
    bad = "hf_" + "x" * 30
    before = _files(bundle)
    refused = _publish(bundle, keys, "--token", bad)
    assert refused.exit_code == 1 and "token was refused (HTTP 401)" in refused.output
    assert bad not in refused.output and "Traceback" not in refused.output
    assert _files(bundle) == before  # refused before the bundle was stamped
    bob = hub.add_user("bob")
    hub.add_user("alice")  # the repo's owner exists; bob is not them
    other = _publish(bundle, keys, "--token", bob)  # bob may not create repos under alice/
    assert other.exit_code == 1 and "(HTTP 403)" in other.output and bob not in other.output
    assert _run("publish", str(bundle), "--repo", "not a repo", "--key",
                str(keys.private_key)).exit_code == 1


# --------------------------------------------------------------------------- pull

@pytest.fixture
def published(hub, alice, keys, tmp_path):
    bundle = _bundle(tmp_path, keys)
    assert _publish(bundle, keys, "--gated").exit_code == 0
    return bundle


def _pull(target: str, keys, out: Path, *extra: str, token: str | None):
    env = {"HF_TOKEN": token} if token else {"HF_TOKEN": ""}
    return _run("pull", target, "--key", str(keys.public_key), "--out", str(out), *extra, env=env)


def test_pull_one_quant_verifies_and_checks_the_licence(hub, published, keys, tmp_path):
    follower = hub.add_user("fan")
    hub.request_access(REPO, "fan")
    from huggingface_hub import HfApi

    HfApi(token=hub.token_of("alice")).accept_access_request(REPO, "fan")
    licence = write_licence(issue_for_bundle(keys.private_key, None, published, follower="fan"),
                            tmp_path / "fan.licence.json")
    out = tmp_path / "mine"
    result = _pull(f"{REPO}:Q4_K_M", keys, out, "--license", str(licence), "--json", token=follower)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["quants"] == ["Q4_K_M"] and info["licence"] == "fan"
    assert not list(out.glob("*Q8_0*")) and list(out.glob("*Q4_K_M.gguf"))
    assert not (out / ".cache").exists() and not out.with_name("mine.partial").exists()
    assert verify_bundle(out, keys.public_key, partial=True).missing
    full = _pull(REPO, keys, tmp_path / "all", token=follower)
    assert full.exit_code == 0, full.output
    verify_bundle(tmp_path / "all", keys.public_key)  # every file: the whole bundle


def test_pull_refuses_without_access_and_with_a_wrong_key(hub, published, keys, tmp_path):
    stranger = hub.add_user("stranger")
    gated = _pull(REPO, keys, tmp_path / "x", token=stranger)
    assert gated.exit_code == 1 and "has not been granted" in gated.output
    assert "request access on" in gated.output and stranger not in gated.output
    missing = _pull("alice/nothing", keys, tmp_path / "y", token=stranger)
    assert missing.exit_code == 1 and "repository not found" in missing.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    owner = hub.token_of("alice")
    other = generate_keypair(tmp_path / "k", "other")
    wrong = _run("pull", REPO, "--key", str(other.public_key), "--out", str(tmp_path / "z"),
                 env={"HF_TOKEN": owner})
    assert wrong.exit_code == 4 and "signature" in wrong.output
    assert not (tmp_path / "z").exists() and not (tmp_path / "z.partial").exists()


def test_pull_of_a_tampered_repo_fails_and_leaves_nothing(hub, published, keys, tmp_path):
    from huggingface_hub import CommitOperationAdd, HfApi

    owner = hub.token_of("alice")
    name = sorted(p.name for p in published.glob("*Q4_K_M.gguf"))[0]
    evil = tmp_path / "evil.gguf"
    evil.write_bytes((published / name).read_bytes()[:-1] + b"!")
    HfApi(token=owner).create_commit(REPO, [CommitOperationAdd(name, str(evil))],
                                     commit_message="swap")
    result = _pull(f"{REPO}:Q4_K_M", keys, tmp_path / "t", token=owner)
    assert result.exit_code == 5, result.output
    assert name in result.output
    assert not (tmp_path / "t").exists() and not (tmp_path / "t.partial").exists()


def test_the_creator_key_is_remembered_and_a_new_one_refused(hub, published, keys, tmp_path):
    owner = hub.token_of("alice")
    assert _pull(REPO, keys, tmp_path / "p1", token=owner).exit_code == 0
    again = _run("pull", REPO, "--out", str(tmp_path / "p2"), env={"HF_TOKEN": owner})
    assert again.exit_code == 0, again.output  # no --key: the remembered one
    other = generate_keypair(tmp_path / "k", "other")
    changed = _run("pull", REPO, "--key", str(other.public_key), "--out", str(tmp_path / "c"),
                   env={"HF_TOKEN": owner})
    assert changed.exit_code == 1 and "not the one used before" in changed.output


def test_a_cut_download_still_ends_verified(hub, published, keys, tmp_path):
    owner = hub.token_of("alice")
    hub.cut_download(r"Q8_0\.gguf$", after_bytes=1000)
    result = _pull(REPO, keys, tmp_path / "cut", token=owner)
    assert result.exit_code == 0, result.output
    verify_bundle(tmp_path / "cut", keys.public_key)


def test_unknown_quant_lists_the_available_ones(hub, published, keys, tmp_path):
    owner = hub.token_of("alice")
    result = _pull(f"{REPO}:Q2_K", keys, tmp_path / "q", token=owner)
    assert result.exit_code == 1 and "has no Q2_K quant" in result.output
    assert "Q4_K_M" in result.output
    shutil.rmtree(tmp_path / "q.partial", ignore_errors=True)
