"""The Hub test double (tests/hub_server.py), driven only through the real `huggingface_hub` client.

Each test proves a route works, or a rejection happens, the way the 1.33 client sees it, so the
tests of `edgetune publish`, `followers` and `pull` can trust the double.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    BadRequestError,
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from tests.hub_server import DEFAULT_GITATTRIBUTES

README = b"# Bundle\n\nA tiny signed model.\n"


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _calls(hub, method: str, fragment: str) -> list[int]:
    """Statuses of the recorded requests with this method whose path contains `fragment`."""
    return [r.status for r in hub.stats.requests if r.method == method and fragment in r.path]


@pytest.fixture
def alice(hub):
    return HfApi(token=hub.add_user("alice"))  # no endpoint: the fixture points the client at the double


@pytest.fixture
def bundle(tmp_path):
    """A folder to publish: a text file (regular upload) and a small .gguf (LFS by .gitattributes)."""
    folder = tmp_path / "bundle"
    (folder / "weights").mkdir(parents=True)
    (folder / "README.md").write_bytes(README)
    (folder / "weights" / "model.gguf").write_bytes(os.urandom(300_000))
    return folder


def _gated_repo(api: HfApi) -> str:
    """A repo with one file, gated with manual approval."""
    repo_id = api.create_repo("gated").repo_id
    api.upload_file(path_or_fileobj=b"weights", path_in_repo="model.txt", repo_id=repo_id)
    api.update_repo_settings(repo_id, gated="manual")
    return repo_id


def test_fixture_points_the_whole_client_at_the_double(hub):
    import huggingface_hub
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import _git_credential

    assert constants.ENDPOINT == _git_credential.ENDPOINT == os.environ["HF_ENDPOINT"] == hub.endpoint
    assert constants.HF_HUB_CACHE.startswith(os.environ["HF_HOME"]) and get_token() is None
    token = hub.add_user("alice")
    assert huggingface_hub.whoami(token=token)["name"] == "alice"  # the module-level HfApi too
    assert [r.path for r in hub.stats.requests] == ["/api/whoami-v2"]


def test_upload_folder_round_trip_and_unchanged_reupload(hub, alice, bundle, tmp_path):
    gguf = (bundle / "weights" / "model.gguf").read_bytes()
    repo_id = alice.create_repo("bundle", private=True).repo_id
    assert repo_id == "alice/bundle"
    assert alice.create_repo(repo_id, exist_ok=True).repo_id == repo_id  # 409 -> exist_ok

    first = alice.upload_folder(repo_id=repo_id, folder_path=bundle)

    assert hub.stats.commits == 1
    assert hub.stats.lfs_bytes_received == len(gguf)
    assert hub.stats.regular_bytes_received == len(README)
    assert hub.stats.preupload_sample_bytes == len(README) + 512
    assert hub.repo_files(repo_id) == {".gitattributes": DEFAULT_GITATTRIBUTES, "README.md": README,
                                       "weights/model.gguf": gguf}
    token = alice.token
    assert open(hf_hub_download(repo_id, "README.md", token=token), "rb").read() == README
    assert open(hf_hub_download(repo_id, "weights/model.gguf", token=token), "rb").read() == gguf
    snapshot = snapshot_download(repo_id, token=token, local_dir=tmp_path / "pulled")
    assert (tmp_path / "pulled" / "weights" / "model.gguf").read_bytes() == gguf
    assert snapshot == str(tmp_path / "pulled")

    tree = {e.path: e for e in alice.list_repo_tree(repo_id, recursive=True)}
    assert isinstance(tree["weights"], RepoFolder)
    model = tree["weights/model.gguf"]
    assert isinstance(model, RepoFile) and model.size == len(gguf)
    assert model.lfs.sha256 == hashlib.sha256(gguf).hexdigest() and model.lfs.size == len(gguf)
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{model.lfs.sha256}\nsize {len(gguf)}\n"
    assert model.blob_id == _git_oid(pointer.encode()) and model.lfs.pointer_size == len(pointer)
    assert tree["README.md"].blob_id == _git_oid(README) and tree["README.md"].lfs is None
    assert [e.path for e in alice.list_repo_tree(repo_id)] == [".gitattributes", "README.md", "weights"]
    info = alice.get_paths_info(repo_id, ["README.md", "weights", "absent.txt"])
    assert [(type(e), e.path) for e in info] == [(RepoFile, "README.md"), (RepoFolder, "weights")]
    assert alice.model_info(repo_id, files_metadata=True).siblings[2].lfs.sha256 == model.lfs.sha256

    # The same folder again: the LFS batch offers no upload and the client skips the no-op commit.
    puts_before = len(_calls(hub, "PUT", "/_lfs/"))
    second = alice.upload_folder(repo_id=repo_id, folder_path=bundle)
    assert second.oid == first.oid
    assert hub.stats.commits == 1 and hub.stats.lfs_bytes_received == len(gguf)
    assert len(_calls(hub, "POST", "/lfs/objects/batch")) == 2
    assert len(_calls(hub, "PUT", "/_lfs/")) == puts_before


def test_tags_refs_and_commit_history(hub, alice):
    repo_id = alice.create_repo("tagged").repo_id
    v1 = alice.upload_file(path_or_fileobj=b"one", path_in_repo="notes.txt", repo_id=repo_id).oid
    alice.create_tag(repo_id, tag="v1")
    alice.upload_file(path_or_fileobj=b"two", path_in_repo="notes.txt", repo_id=repo_id)

    refs = alice.list_repo_refs(repo_id)
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", v1)]
    assert [b.name for b in refs.branches] == ["main"] and hub.tags(repo_id) == {"v1": v1}
    with pytest.raises(HfHubHTTPError) as duplicate:
        alice.create_tag(repo_id, tag="v1")
    assert duplicate.value.response.status_code == 409
    alice.create_tag(repo_id, tag="v1", exist_ok=True)

    assert open(hf_hub_download(repo_id, "notes.txt", revision="v1"), "rb").read() == b"one"
    assert hub.repo_files(repo_id)["notes.txt"] == b"two"
    commits = alice.list_repo_commits(repo_id)
    assert [c.title for c in commits][-1] == "initial commit" and commits[1].commit_id == v1

    alice.delete_tag(repo_id, tag="v1")
    assert alice.list_repo_refs(repo_id).tags == []


def test_commit_rejections(hub, alice, tmp_path):
    repo_id = alice.create_repo("strict").repo_id
    start = alice.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id=repo_id).oid
    alice.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id=repo_id)

    with pytest.raises(HfHubHTTPError, match="A commit has happened since") as stale:
        alice.create_commit(repo_id, [CommitOperationAdd("c.txt", b"c")], commit_message="c", parent_commit=start)
    assert stale.value.response.status_code == 412
    with pytest.raises(RemoteEntryNotFoundError):
        alice.create_commit(repo_id, [CommitOperationDelete("absent.txt")], commit_message="rm")

    # Uploaded to another repo only: this repo does not have the LFS object, as on the Hub.
    elsewhere = alice.create_repo("elsewhere").repo_id
    operation = CommitOperationAdd("model.gguf", os.urandom(2_000))
    alice.preupload_lfs_files(elsewhere, additions=[operation])
    with pytest.raises(BadRequestError, match="LFS pointer pointed to a file that does not exist"):
        alice.create_commit(repo_id, [operation], commit_message="borrowed LFS object")

    lied = CommitOperationAdd("lied.gguf", b"the real bytes")
    lied.upload_info.sha256 = hashlib.sha256(b"announced bytes").digest()
    with pytest.raises(RuntimeError, match="Error while uploading 'lied.gguf'") as mismatch:
        alice.create_commit(repo_id, [lied], commit_message="mismatch")
    assert isinstance(mismatch.value.__cause__, BadRequestError)
    assert set(hub.repo_files(repo_id)) == {".gitattributes", "a.txt", "b.txt"}


def test_authentication_and_visibility(hub, alice):
    bob = HfApi(endpoint=hub.endpoint, token=hub.add_user("bob"))
    assert alice.whoami()["name"] == "alice" and bob.whoami()["name"] == "bob"

    with pytest.raises(HfHubHTTPError, match="Invalid user token") as bad:
        HfApi(token="hf_" + "0" * 32).whoami()
    assert bad.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as bad_on_public_route:
        HfApi(token="hf_forged").list_repo_refs("alice/anything")
    assert bad_on_public_route.value.response.status_code == 401
    assert not isinstance(bad_on_public_route.value, RepositoryNotFoundError)
    with pytest.raises(RepositoryNotFoundError):
        alice.model_info("alice/missing")

    repo_id = alice.create_repo("secret", private=True).repo_id
    alice.upload_file(path_or_fileobj=b"hidden", path_in_repo="x.txt", repo_id=repo_id)
    assert alice.model_info(repo_id).private is True
    for attempt in (lambda: bob.model_info(repo_id),
                    lambda: hf_hub_download(repo_id, "x.txt", token=bob.token),
                    lambda: hf_hub_download(repo_id, "x.txt", token=False)):
        with pytest.raises(RepositoryNotFoundError):
            attempt()
    with pytest.raises(HfHubHTTPError) as foreign:
        bob.create_repo("alice/intruder")
    assert foreign.value.response.status_code == 403

    public = alice.create_repo("open").repo_id
    alice.upload_file(path_or_fileobj=b"hello", path_in_repo="hi.txt", repo_id=public)
    assert open(hf_hub_download(public, "hi.txt", token=False), "rb").read() == b"hello"
    with pytest.raises(HfHubHTTPError) as not_owner:
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=public)
    assert not_owner.value.response.status_code == 403


def test_gated_download_needs_accepted_request(hub, alice):
    bob = HfApi(token=hub.add_user("bob"))
    repo_id = _gated_repo(alice)
    assert bob.model_info(repo_id).gated == "manual"  # the card is public, the files are not
    with pytest.raises(GatedRepoError):
        bob.auth_check(repo_id)

    with pytest.raises(GatedRepoError) as not_approved:
        hf_hub_download(repo_id, "model.txt", token=bob.token)
    assert not_approved.value.response.status_code == 403
    with pytest.raises(GatedRepoError) as anonymous:
        hf_hub_download(repo_id, "model.txt", token=False)
    assert anonymous.value.response.status_code == 401

    hub.request_access(repo_id, "bob")
    alice.accept_access_request(repo_id, "bob")
    bob.auth_check(repo_id)
    assert open(hf_hub_download(repo_id, "model.txt", token=bob.token), "rb").read() == b"weights"


def test_access_request_api(hub, alice):
    for user in ("carol", "dave", "erin", "frank"):
        hub.add_user(user)
    bob = HfApi(token=hub.add_user("bob"))
    repo_id = _gated_repo(alice)
    hub.request_access(repo_id, "carol", fields={"use": "research"}, email="carol@example.com")
    hub.request_access(repo_id, "dave")
    hub.request_access(repo_id, "erin")

    pending = list(alice.list_pending_access_requests(repo_id))  # 1.33 yields lazily
    assert [r.username for r in pending] == ["carol", "dave", "erin"]
    assert (pending[0].fields, pending[0].email, pending[0].status) == ({"use": "research"}, "carol@example.com",
                                                                        "pending")
    alice.accept_access_request(repo_id, "carol")
    alice.reject_access_request(repo_id, "dave", rejection_reason="not now")
    alice.grant_access(repo_id, "frank")  # no request needed
    assert [r.username for r in alice.list_accepted_access_requests(repo_id)] == ["carol", "frank"]
    assert [r.username for r in alice.list_rejected_access_requests(repo_id)] == ["dave"]
    assert [r.username for r in alice.list_pending_access_requests(repo_id)] == ["erin"]
    alice.cancel_access_request(repo_id, "carol")
    assert [r.username for r in alice.list_pending_access_requests(repo_id)] == ["carol", "erin"]

    def status_of(call) -> int:
        with pytest.raises(HfHubHTTPError) as error:
            call()
        return error.value.response.status_code

    assert status_of(lambda: list(bob.list_pending_access_requests(repo_id))) == 403
    assert status_of(lambda: alice.accept_access_request(repo_id, "bob")) == 404  # bob never asked
    assert status_of(lambda: alice.accept_access_request(repo_id, "nobody")) == 404
    assert status_of(lambda: alice.grant_access(repo_id, "frank")) == 400  # already has access
    open_repo = alice.create_repo("open").repo_id
    assert status_of(lambda: list(alice.list_pending_access_requests(open_repo))) == 400  # not gated


def test_transient_errors_are_retried_by_the_client(hub, alice, bundle):
    gguf = (bundle / "weights" / "model.gguf").read_bytes()
    repo_id = alice.create_repo("flaky").repo_id
    hub.fail_next("POST", r"/preupload/", status=429)
    hub.fail_next("PUT", r"^/_lfs/", status=500)

    alice.upload_folder(repo_id=repo_id, folder_path=bundle)

    # http_backoff retries both, after Retry-After + 1 s and after 1 s
    assert _calls(hub, "POST", "/preupload/") == [429, 200]
    assert _calls(hub, "PUT", "/_lfs/") == [500, 200]
    assert hub.stats.lfs_bytes_received == len(gguf)  # the injected failure did not count
    assert hub.repo_files(repo_id)["weights/model.gguf"] == gguf


def test_cut_download_resumes_with_a_range_request(hub, alice, tmp_path):
    """http_get resumes inside the same hf_hub_download call, from the bytes it has written, and
    it writes in 10 MiB pieces (constants.DOWNLOAD_CHUNK_SIZE): a cut before the first 10 MiB
    restarts from 0 (a plain 200), so resuming with Range takes a file over 10 MiB."""
    big = os.urandom(12 * 1024 * 1024)
    (tmp_path / "big.gguf").write_bytes(big)
    repo_id = alice.create_repo("cut").repo_id
    alice.upload_file(path_or_fileobj=tmp_path / "big.gguf", path_in_repo="big.gguf", repo_id=repo_id)
    hub.cut_download(r"/resolve/main/big\.gguf$", after_bytes=11 * 1024 * 1024)

    path = hf_hub_download(repo_id, "big.gguf", token=alice.token)

    assert open(path, "rb").read() == big
    assert _calls(hub, "GET", "/resolve/main/big.gguf") == [200, 206]  # cut, then resumed by Range


def test_thousand_pending_requests_listed_and_accepted_quickly(hub, alice):
    repo_id = _gated_repo(alice)
    users = [f"follower{i:04d}" for i in range(1000)]
    for user in users:
        hub.add_user(user)
        hub.request_access(repo_id, user)

    started = time.perf_counter()
    pending = list(alice.list_pending_access_requests(repo_id))
    for request in pending:
        alice.accept_access_request(repo_id, request.username)
    elapsed = time.perf_counter() - started

    print(f"\nlisted and accepted {len(pending)} access requests in {elapsed:.2f} s")
    assert len(pending) == 1000 and elapsed < 30
    assert [r.username for r in alice.list_accepted_access_requests(repo_id)] == users
