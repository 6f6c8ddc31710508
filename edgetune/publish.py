"""publish: a signed bundle becomes (or updates) a Hugging Face model repo.

The bundle folder is the repo's root: GGUFs, model card (README.md, with the Hub's metadata),
manifest, persona files (Ollama reads ``template``/``system``/``params`` there), report, and
``model.sig``. Publishing:

1. stamps the repo (and gating) into the bundle when it was built for another or none, and signs
   it again (``bundle.stamp_distribution``): what followers download verifies as it is;
2. checks the bundle against the creator's key. A bundle verified before and unchanged since
   (same size, mtime and inode for every file, same ``model.sig``) is not hashed again: the
   digests are read from a cache in ``~/.edgetune/cache/verified`` (git's index does the same);
3. compares it with the repo's newest commit, file by file: LFS files by sha256 (the signed
   digest, so nothing is hashed), small files by git blob id;
4. commits only what differs (and deletes what the bundle no longer has) in one commit, on top
   of the commit it compared with; then tags that commit with the bundle's version.

An unchanged bundle therefore sends no file content at all (a few metadata calls). An
interrupted upload resumes: LFS objects already on the Hub are skipped by the Hub's batch API,
and nothing is visible in the repo until the single commit at the end. A version is immutable:
publishing other files under a version that is already tagged is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune import hub, keys, paths, signing
from edgetune.errors import ConfigError, EdgetuneError

ACCESS = ("private", "gated", "public")
# The Hub's own file, and the creator's revocation list (pull.REVOCATIONS_FILE, uploaded
# beside the bundle, not signed into it): never deleted
_KEEP_REMOTE = {".gitattributes", "revocations.json"}


@dataclass(frozen=True)
class FileChange:
    path: str
    size: int
    action: str  # "upload", "unchanged" or "delete"


@dataclass
class PublishResult:
    repo: str
    version: str
    bundle_id: str
    url: str
    files: list[FileChange]
    commit: str | None  # the commit the version points at (None: dry run of a new repo)
    created_repo: bool = False
    tagged: bool = False  # a new tag was made
    stamped: bool = False  # the bundle was stamped with the repo and signed again
    dry_run: bool = False
    card: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def uploaded(self) -> list[FileChange]:
        return [f for f in self.files if f.action == "upload"]

    @property
    def bytes_uploaded(self) -> int:
        return sum(f.size for f in self.uploaded)

    def as_json(self) -> dict:
        return {"repo": self.repo, "version": self.version, "bundle_id": self.bundle_id,
                "url": self.url, "commit": self.commit, "created_repo": self.created_repo,
                "tagged": self.tagged, "stamped": self.stamped, "dry_run": self.dry_run,
                "files": [vars(f) for f in self.files],
                "uploaded_bytes": self.bytes_uploaded, "notes": self.notes}


def git_blob_id(path: Path) -> str:
    """The git object id of a file (what the Hub reports as ``oid`` for a regular file)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- digests of a verified bundle, cached ------------------------------------------------------

def _stat_key(root: Path, rels: list[str]) -> dict[str, list[int]]:
    out = {}
    for rel in rels:
        st = (root / rel).stat()
        out[rel] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return out


def _cache_file(root: Path) -> Path:
    return paths.cache_dir() / "verified" / (hashlib.sha256(str(root).encode()).hexdigest()[:32]
                                             + ".json")


def verified_digests(bundle: Path, public_key: Path) -> dict[str, str]:
    """``{path: sha256}`` of every signed file, after the bundle verified against ``public_key``.

    The full check hashes every byte (seconds per GB); when this bundle verified before with the
    same key and no file changed since (size, mtime, inode, and the same ``model.sig``), the
    digests recorded then are returned instead.
    """
    from edgetune.bundle import verify_bundle

    root = Path(bundle).resolve()
    key_id = keys.key_id_of(Path(public_key))
    cache = _cache_file(root)
    sig = root / signing.SIGNATURE_FILE
    try:
        known = json.loads(cache.read_text())
        present = [f for f in signing.scan_files(root) if f != signing.SIGNATURE_FILE]  # sorted
        if (known["key_id"] == key_id and known["sig_sha256"] == signing.sha256_file(sig)
                and sorted(known["digests"]) == present
                and known["stat"] == _stat_key(root, present)):
            return known["digests"]
    except (OSError, ValueError, KeyError, TypeError, EdgetuneError):
        pass
    verify_bundle(root, public_key)
    digests = signing.signed_digests(root)
    from edgetune.artifacts import write_json_atomic

    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache, {"key_id": key_id, "sig_sha256": signing.sha256_file(sig),
                              "digests": digests, "stat": _stat_key(root, sorted(digests))})
    return digests


# --- publishing ---------------------------------------------------------------------------------

def _remote_files(client, repo: str, revision: str, note) -> dict[str, Any]:
    from huggingface_hub.hf_api import RepoFile

    entries = hub.retrying(lambda: list(client.list_repo_tree(repo, revision=revision,
                                                              recursive=True)),
                           what="listing the repo's files", on_retry=note)
    return {e.path: e for e in entries if isinstance(e, RepoFile)}


def _same(local: Path, sha256: str, remote) -> bool:
    if remote is None:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == sha256
    return remote.size == local.stat().st_size and remote.blob_id == git_blob_id(local)


def _changes(root: Path, digests: dict[str, str], remote: dict[str, Any]) -> list[FileChange]:
    local = {**digests, signing.SIGNATURE_FILE: signing.sha256_file(root / signing.SIGNATURE_FILE)}
    changes = [FileChange(rel, (root / rel).stat().st_size,
                          "unchanged" if _same(root / rel, sha, remote.get(rel)) else "upload")
               for rel, sha in sorted(local.items())]
    changes += [FileChange(rel, remote[rel].size, "delete") for rel in sorted(remote)
                if rel not in local and rel not in _KEEP_REMOTE]
    return changes


def _repo_state(client, repo: str, note):
    """``(info, head sha)`` of the repo's main branch, or ``(None, None)`` when it does not exist."""
    from huggingface_hub import errors as hf

    try:
        info = hub.retrying(lambda: client.model_info(repo), what="reading the repo", on_retry=note)
    except hf.RepositoryNotFoundError:
        return None, None
    return info, info.sha


def _tag_target(client, repo: str, tag: str, note) -> str | None:
    refs = hub.retrying(lambda: client.list_repo_refs(repo), what="reading the repo's tags",
                        on_retry=note)
    return next((t.target_commit for t in refs.tags if t.name == tag), None)


def publish(bundle: Path, repo: str, *, access: str = "private", token: str | None = None,
            private_key: Path, passphrase: str | None = None, public_key: Path | None = None,
            dry_run: bool = False, on_note: Callable[[str], None] | None = None) -> PublishResult:
    """Publish ``bundle`` as the Hub repo ``repo`` (``access``: private, gated or public)."""
    from edgetune.bundle import read_manifest, card_for_repo, stamp_distribution

    note = on_note or (lambda _msg: None)
    hub.check_repo_id(repo)
    if access not in ACCESS:
        raise ConfigError(f"access must be one of {', '.join(ACCESS)}, not {access!r}")
    root = Path(bundle).resolve()
    if not (root / "edgetune.json").is_file():
        raise ConfigError(f"{bundle}: not a bundle folder (no edgetune.json)",
                          hint="pass the bundle folder edgetune build wrote, e.g. edgetune-out/bundle")
    public_key = Path(public_key) if public_key else Path(private_key).with_suffix(".pub")
    if not public_key.is_file():
        raise ConfigError(f"{public_key}: the creator's public key is missing",
                          hint="pass --public-key, or keep the .pub beside the private key")
    token = hub.resolve_token(token)
    client = hub.api(token)
    gated = access == "gated"
    offline = None  # a dry run works without the network: why the repo was not compared
    if token:  # a refused token is said plainly, before the bundle is touched
        try:
            with hub.errors(repo):
                hub.whoami(client, note, retry=not dry_run)
        except hub.HubUnreachable as exc:
            if not dry_run:
                raise
            offline = f"{exc.message}: the repo was not compared, every file is listed"
    elif not dry_run:
        raise hub.HubError("no Hugging Face token found", hint=hub.LOGIN_HINT)

    manifest = read_manifest(root)
    version, bundle_id = manifest["version"], manifest["bundle_id"]
    result = PublishResult(repo=repo, version=version, bundle_id=bundle_id, url=hub.repo_url(repo),
                           files=[], commit=None, dry_run=dry_run)
    if dry_run:
        result.card = card_for_repo(root, hf_repo=repo, gated=gated)
    else:
        result.stamped = stamp_distribution(root, hf_repo=repo, gated=gated,
                                            private_key=private_key, passphrase=passphrase)
        if result.stamped:
            note(f"recorded {repo} in the bundle (manifest, model card, PocketPal) and signed it "
                 "again")
        result.card = (root / "README.md").read_text(encoding="utf-8")
    note("checking the bundle's signature and files")
    digests = verified_digests(root, public_key)

    with hub.errors(repo, writing=not dry_run):
        info, head = _repo_state(client, repo, note) if token and not offline else (None, None)
        remote = _remote_files(client, repo, head, note) if head else {}
        result.files = _changes(root, digests, remote)
        if dry_run:
            if offline:
                result.notes.append(offline)
            elif info is None:
                result.notes.append("the repo does not exist yet (or the token cannot see it): "
                                    "it would be created" if token else
                                    "no token: the repo was not compared, every file is listed")
            return result
        if info is None:
            note(f"creating {access} repo {repo}")
            hub.retrying(lambda: client.create_repo(repo, private=access == "private",
                                                    exist_ok=True), what="creating the repo",
                         on_retry=note)
            result.created_repo = True
            info, head = _repo_state(client, repo, note)
            remote = _remote_files(client, repo, head, note)
            result.files = _changes(root, digests, remote)
        _settle_access(client, repo, info, access, note, result)
        tagged_at = _tag_target(client, repo, version, note)
        todo = [f for f in result.files if f.action != "unchanged"]
        if todo and tagged_at is not None:
            raise hub.HubError(
                f"{repo}: version {version} is already published with other files "
                f"({len(todo)} differ, e.g. {todo[0].path})",
                hint="published versions do not change: raise project.version in edgetune.yaml "
                     "and build again")
        result.commit = head
        if todo:
            result.commit = _commit(client, repo, root, todo, head, manifest, note)
        else:
            note("nothing to upload: the repo already holds this bundle")
        if tagged_at is None:
            hub.retrying(lambda: client.create_tag(repo, tag=version, revision=result.commit,
                                                   tag_message=f"edgetune bundle {bundle_id}"),
                         what="tagging the version", on_retry=note)
            result.tagged = True
        elif tagged_at != result.commit:
            result.notes.append(f"tag {version} points at {tagged_at[:12]}, which holds the same "
                                "files")
    return result


def _settle_access(client, repo: str, info, access: str, note, result: PublishResult) -> None:
    """Make the repo private / gated as asked; never opens a repo up without being asked."""
    private, gated = bool(getattr(info, "private", False)), getattr(info, "gated", False)
    settings: dict[str, Any] = {}
    if access == "private" and not private:
        settings["private"] = True
    if access in ("gated", "public") and private:
        settings["private"] = False
    if access == "gated" and gated != "manual":
        settings["gated"] = "manual"
    if access == "public" and gated:
        settings["gated"] = False
    if settings:
        note("repo settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
        hub.retrying(lambda: client.update_repo_settings(repo, **settings),
                     what="changing the repo's settings", on_retry=note)
        result.notes.append("changed " + ", ".join(f"{k} to {v}" for k, v in settings.items()))


def _commit(client, repo: str, root: Path, todo: list[FileChange], head: str, manifest: dict,
            note) -> str:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.utils import enable_progress_bars

    uploads = [f for f in todo if f.action == "upload"]
    note(f"uploading {len(uploads)} file(s), {sum(f.size for f in uploads):,} bytes"
         + (f"; deleting {len(todo) - len(uploads)}" if len(todo) > len(uploads) else ""))
    operations = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(root / f.path))
                  if f.action == "upload" else CommitOperationDelete(path_in_repo=f.path)
                  for f in todo]
    enable_progress_bars()  # huggingface_hub's per-file upload bars, on stderr
    # Not retried as a whole: the LFS transfers inside retry themselves, and a rerun of publish
    # resumes (uploaded objects are skipped). parent_commit: refuse if the repo moved meanwhile.
    info = client.create_commit(
        repo, operations=operations, parent_commit=head,
        commit_message=f"{manifest['name']} {manifest['version']} ({manifest['bundle_id']})",
        commit_description="Published with edgetune publish: a signed bundle; "
                           "verify with `edgetune verify` or `edgetune pull`.")
    return info.oid
